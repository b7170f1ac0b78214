//! Backup maintenance over the API, and the admission of pack uploads:
//!
//! - `POST /api/v1/backup-maintenance/prune[?device=D][&dry_run=true]` (admin): retention,
//!   then garbage collection (see [`crate::backups::gc`]); audited. 200 with the report.
//! - `POST /api/v1/backup-maintenance/verify[?device=D]` (admin, auditor): the keyless
//!   verification of the catalog against the store (see [`crate::backups::verify`]),
//!   recorded per backup. 200 with the report, whose `ok` says whether every backup
//!   verified.
//!
//! [`admit_pack`] is the quota hook of the pack upload: 413 `backup_quota_exceeded` when the
//! pack would put the device over `backups.quota_bytes_per_device`, 503
//! `backup_pack_being_collected` while a prune is deleting that very
//! pack; nothing is stored in either case.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use otter_keys::envelope::PackId;
use serde::Deserialize;

use super::auth::{Auth, Policy};
use super::error::ApiError;
use super::AppState;
use crate::audit::Actor;
use crate::backups::gc::{plan_and_mark, sweep, GcError, PruneOptions};
use crate::backups::quota::{admit_pack as admission, Admission};
use crate::backups::verify::{verify as run_verify, VerifyError};
use crate::db::unix_now;
use crate::tokens::TokenRole;

/// Pruning backups: admin only.
pub struct PruneBackups;
impl Policy for PruneBackups {
    const ROLES: &'static [TokenRole] = &[TokenRole::Admin];
    const WHAT: &'static str = "pruning backups";
}

/// Verifying backups: admin and auditor.
pub struct VerifyBackups;
impl Policy for VerifyBackups {
    const ROLES: &'static [TokenRole] = &[TokenRole::Admin, TokenRole::Auditor];
    const WHAT: &'static str = "verifying backups";
}

/// Query of the prune endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneQuery {
    /// Only this device.
    pub device: Option<String>,
    /// Report only.
    #[serde(default)]
    pub dry_run: bool,
}

/// Query of the verify endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyQuery {
    /// Only this device.
    pub device: Option<String>,
}

fn query<T: serde::de::DeserializeOwned>(req: &HttpRequest, allowed: &str) -> Result<T, ApiError> {
    web::Query::<T>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_query",
                format!("the query may hold {allowed}: {e}"),
            )
        })
}

fn gc_err(e: GcError) -> ApiError {
    match e {
        GcError::UnknownDevice(_) => ApiError::not_found(e.to_string()),
        GcError::Db(e) => ApiError::unavailable("the database", &e),
        other => ApiError::internal("pruning backups", &other),
    }
}

/// `POST /api/v1/backup-maintenance/prune` (admin).
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn prune(
    auth: Auth<PruneBackups>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let q: PruneQuery = query(&req, "device and dry_run")?;
    let opts = PruneOptions {
        device: q.device,
        dry_run: q.dry_run,
        now: unix_now(),
        grace_secs: state.backups.unreferenced_pack_grace_secs,
    };
    // In this process, no manifest is being catalogued while the prune decides and marks;
    // the objects are deleted after, without holding up backups.
    let guard = state.backup_lock.lock().await;
    let (retention, o, actor) = (
        state.backups.retention.clone(),
        opts.clone(),
        Actor::token(auth.caller.id),
    );
    let planned = state
        .db
        .call(move |c| Ok(plan_and_mark(c, &retention, &o, &actor)))
        .await
        .map_err(|e| ApiError::unavailable("the database", &e))?;
    drop(guard);
    let mut report = planned.map_err(gc_err)?;
    if !opts.dry_run {
        report.store_errors = sweep(&state.db, &state.store, opts.device.as_deref())
            .await
            .map_err(gc_err)?;
    }
    tracing::info!(
        dry_run = report.dry_run,
        pruned = report.manifests_pruned,
        packs = report.packs_collected,
        bytes = report.bytes_freed,
        "backups pruned"
    );
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(report))
}

/// `POST /api/v1/backup-maintenance/verify` (admin, auditor).
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn verify(
    auth: Auth<VerifyBackups>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let _ = auth;
    let q: VerifyQuery = query(&req, "device")?;
    let receipt = state.receipt_key.public_key();
    let report = run_verify(
        &state.db,
        &state.store,
        &receipt,
        q.device.as_deref(),
        unix_now(),
    )
    .await
    .map_err(|e| match e {
        VerifyError::UnknownDevice(_) => ApiError::not_found(e.to_string()),
        VerifyError::Db(e) => ApiError::unavailable("the database", &e),
        other => ApiError::internal("verifying backups", &other),
    })?;
    if !report.ok {
        tracing::warn!(
            problems = report.problems.len(),
            "backup verification found problems"
        );
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(report))
}

/// The pack upload's admission check, before anything is stored (see the module docs).
pub async fn admit_pack(
    state: &AppState,
    device: &str,
    pack: PackId,
    length: u64,
) -> Result<(), ApiError> {
    let quota = state.backups.quota_bytes_per_device;
    let id = device.to_owned();
    let decided = state
        .db
        .call(move |c| Ok(admission(c, &id, &pack, length, quota)))
        .await
        .map_err(|e| ApiError::unavailable("the database", &e))?
        .map_err(|e| ApiError::internal("the backup catalog", &e))?;
    match decided {
        Admission::Admit => Ok(()),
        Admission::BeingCollected => {
            tracing::info!(device, %pack, "pack upload deferred: a prune is collecting it");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "backup_pack_being_collected",
                format!(
                    "pack {pack} is being garbage-collected by a prune right now; upload it \
                     again in a minute"
                ),
            ))
        }
        Admission::OverQuota {
            quota,
            stored,
            incoming,
        } => {
            tracing::warn!(device, %pack, quota, stored, incoming, "pack refused: over quota");
            Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "backup_quota_exceeded",
                format!(
                    "this device stores {stored} bytes of backups; this pack of {incoming} bytes \
                     would exceed its quota of {quota} bytes (backups.quota_bytes_per_device): \
                     an admin must prune old backups or raise the quota"
                ),
            ))
        }
    }
}
