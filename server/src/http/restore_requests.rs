//! Restore request routes: `POST|GET /api/v1/backups/{device}/restore-requests` (admin,
//! restorer) ask a device to restore a backup and list its requests;
//! `GET /api/v1/device/restore-requests` and `POST /api/v1/device/restore-requests/{id}`
//! (signed by the device) fetch the pending ones and report an outcome.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::auth::Auth;
use super::device_auth::SignedDevice;
use super::error::ApiError;
use super::AppState;
use crate::audit::Actor;
use crate::backups::requests::{self, RequestError, RestoreRequest, Which};
use crate::backups::restore_outcome::{self, OutcomeError, RestoreOutcome};
use crate::console::RequestRestore;
use crate::db::unix_now;

fn db_err(e: crate::db::DbError) -> ApiError {
    ApiError::unavailable("the database", &e)
}

fn req_err(e: RequestError) -> ApiError {
    ApiError::internal("storing a restore request", &e)
}

/// Body of `POST /api/v1/backups/{device}/restore-requests`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRequest {
    /// The backup's sequence, `"latest"`, or `"newest-verifying"` (a repair: the device
    /// restores the newest backup that verifies completely, walking back from the newest).
    pub backup: serde_json::Value,
    /// Why (1 to 512 characters).
    pub reason: String,
}

/// `POST /api/v1/backups/{device}/restore-requests` (admin, restorer): stores and audits a
/// restore request for a catalogued backup of the device.
pub async fn create(
    auth: Auth<RequestRestore>,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let device = path.into_inner();
    let b: NewRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_request",
            format!(
                "give {{\"backup\": SEQUENCE, \"latest\" or \"newest-verifying\", \
                 \"reason\": TEXT}}: {e}"
            ),
        )
    })?;
    let which = match &b.backup {
        serde_json::Value::String(s) if s == "latest" => Which::Latest,
        serde_json::Value::String(s) if s == "newest-verifying" => Which::NewestVerifying,
        serde_json::Value::Number(n) => match n.as_u64().filter(|s| *s >= 1) {
            Some(s) => Which::Sequence(s),
            None => {
                return Err(ApiError::bad_request(
                    "invalid_backup",
                    "backup: a sequence is a positive integer",
                ))
            }
        },
        _ => {
            return Err(ApiError::bad_request(
                "invalid_backup",
                "backup: give a sequence number, \"latest\" or \"newest-verifying\" (a repair)",
            ))
        }
    };
    let reason = b.reason.trim().to_owned();
    if reason.is_empty() || reason.chars().count() > 512 || reason.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_reason",
            "give a reason of 1 to 512 characters, without control characters",
        ));
    }
    let actor = Actor::token(auth.caller.id);
    let d = device.clone();
    let made = state
        .db
        .call(move |c| Ok(requests::create(c, &actor, &d, which, &reason, unix_now())))
        .await
        .map_err(db_err)?
        .map_err(req_err)?;
    let Some(req) = made else {
        return Err(ApiError::not_found(format!(
            "device {:?} has no such backup in the catalog",
            device.chars().take(64).collect::<String>()
        )));
    };
    tracing::info!(device = %req.device_id, sequence = req.sequence, request = req.id, "restore requested");
    Ok(HttpResponse::Created()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({ "request": req })))
}

/// `GET /api/v1/backups/{device}/restore-requests` (admin, restorer): the device's
/// requests, newest first.
pub async fn list(
    auth: Auth<RequestRestore>,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let _ = auth;
    let device = path.into_inner();
    let found = state
        .db
        .call(move |c| Ok(requests::list(c, &device, false)))
        .await
        .map_err(db_err)?
        .map_err(req_err)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({ "requests": found })))
}

/// `GET /api/v1/device/restore-requests` (signed by the device): its pending requests, each
/// marked delivered on its first fetch.
pub async fn pending(
    device: SignedDevice,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = device.device_id.clone();
    let found = state
        .db
        .call(move |c| {
            Ok(requests::mark_delivered(c, &id, unix_now())
                .and_then(|()| requests::list(c, &id, true)))
        })
        .await
        .map_err(db_err)?
        .map_err(req_err)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({ "requests": found })))
}

/// Body of `POST /api/v1/device/restore-requests/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    /// Whether the restore succeeded.
    pub ok: bool,
    /// What happened, for people.
    pub message: String,
    /// The same, structured (agents since migration 15; older ones send only the message).
    #[serde(default)]
    pub outcome: Option<RestoreOutcome>,
}

/// What [`finish`] found: the request finished, no such pending request, or an outcome that
/// does not fit the request.
enum Finished {
    Done(Box<RestoreRequest>),
    NotFound,
    Misfit(OutcomeError),
}

/// `POST /api/v1/device/restore-requests/{id}` (signed by the device): the outcome of one
/// of its pending requests, stored and audited. A structured `outcome` is checked (sizes,
/// counts, and that it fits the request) before anything is stored: 400 when it does not.
pub async fn finish(
    device: SignedDevice,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id: i64 = path
        .into_inner()
        .parse()
        .map_err(|_| ApiError::bad_request("invalid_request_id", "a request id is an integer"))?;
    let o: Outcome = serde_json::from_slice(&device.body).map_err(|e| {
        ApiError::bad_request(
            "invalid_outcome",
            format!(
                "give {{\"ok\": BOOL, \"message\": TEXT, \"outcome\": {{\"restored_sequence\": N, \
                 \"rows_lost\": [{{\"table\", \"rows\", \"live\", \"backup\"}}], \
                 \"refused\": [{{\"sequence\", \"reason\"}}]}} (optional)}}: {e}"
            ),
        )
    })?;
    let invalid = |e: OutcomeError| ApiError::bad_request("invalid_outcome", e.to_string());
    if let Some(out) = &o.outcome {
        out.check_bounds().map_err(invalid)?;
    }
    let dev = device.device_id.clone();
    let done = state
        .db
        .call(move |c| {
            if let Some(out) = &o.outcome {
                if let Some((sequence, repair)) = restore_outcome::pending_request(c, &dev, id)? {
                    if let Err(e) = out.check_against(sequence, repair, o.ok) {
                        return Ok(Ok(Finished::Misfit(e)));
                    }
                }
            }
            Ok(requests::finish_with_outcome(
                c,
                &dev,
                id,
                o.ok,
                &o.message,
                o.outcome.as_ref(),
                unix_now(),
            )
            .map(|r| r.map_or(Finished::NotFound, |r| Finished::Done(Box::new(r)))))
        })
        .await
        .map_err(db_err)?
        .map_err(req_err)?;
    let req = match done {
        Finished::Done(req) => req,
        Finished::Misfit(e) => return Err(invalid(e)),
        Finished::NotFound => {
            return Err(ApiError::not_found(format!(
                "no pending restore request {id} for this device"
            )))
        }
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({ "request": req })))
}
