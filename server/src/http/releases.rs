//! `/api/v1/releases`: publish (streaming upload), list, yank. The upload goes to a
//! temporary file in the data dir while it is hashed, never whole into memory, and stops
//! with 413 as soon as it passes the configured cap.

use std::collections::BTreeMap;

use actix_web::http::{header, StatusCode};
use actix_web::web;
use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::auth::{Auth, Publish, ReadReleases};
use super::error::ApiError;
use super::upload::{declared_length, spool_body};
use super::AppState;
use crate::bundle::{self, manifest::is_label, BundleError, Limits};
use crate::repo::release::NewRelease;
use crate::repo::RepoError;

/// Query of `POST /api/v1/releases`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishQuery {
    /// The channel the release goes to; `stable` when absent.
    pub channel: Option<String>,
    /// The rollout percent it starts at, 0 to 100; 100 when absent.
    pub percent: Option<u64>,
    /// Comma-separated groups whose devices get it whatever the percent.
    pub groups: Option<String>,
}

/// Maps repository errors to responses.
pub fn repo_err(e: RepoError) -> ApiError {
    match e {
        RepoError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
        RepoError::NotFound(m) => ApiError::not_found(m),
        RepoError::Store(e) => ApiError::unavailable("the object store", &e),
        RepoError::Db(e) => ApiError::unavailable("the database", &e),
        other => ApiError::internal("publishing", &other),
    }
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "upload_too_large",
        format!("the upload is larger than the server's cap of {limit} bytes (publishing.max_upload_bytes)"),
    )
}

/// `POST /api/v1/releases[?channel=C]` (admin, publisher): the body is the bundle. 201 with
/// the release and the new metadata versions.
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn publish(
    auth: Auth<Publish>,
    req: HttpRequest,
    mut body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let limits = state.publishing.clone();
    // Parsed here, after authentication.
    let query = web::Query::<PublishQuery>::from_query(req.query_string()).map_err(|e| {
        ApiError::bad_request(
            "invalid_request",
            format!("the query string is invalid: {e}"),
        )
    })?;
    let query = query.into_inner();
    let rollout = crate::rollout::RolloutSpec::new(
        query.percent.unwrap_or(100),
        query
            .groups
            .as_deref()
            .map(super::rollouts_api::split_groups)
            .unwrap_or_default(),
    )
    .map_err(|e| ApiError::bad_request("invalid_rollout", e.to_string()))?;
    let channel = query.channel.unwrap_or_else(|| "stable".into());
    if !is_label(&channel) {
        return Err(ApiError::bad_request(
            "invalid_channel",
            "a channel name is 1 to 64 of A-Z, a-z, 0-9, '.', '_', '-'",
        ));
    }
    let declared = declared_length(&req);
    if declared.is_some_and(|n| n > limits.max_upload_bytes) {
        return Err(too_large(limits.max_upload_bytes));
    }
    let spooled = spool_body(
        &mut body,
        state.upload_dir.clone(),
        "upload-",
        limits.max_upload_bytes,
        too_large,
        "spooling the upload",
    )
    .await?;
    if declared.is_some_and(|n| n != spooled.length) {
        return Err(ApiError::bad_request(
            "upload_incomplete",
            "the upload is shorter than its Content-Length",
        ));
    }
    let path = spooled.file.path().to_path_buf();
    let bundle_limits = Limits {
        max_unpacked_bytes: limits.max_unpacked_bytes,
        max_entries: limits.max_entries,
    };
    let checked = web::block(move || bundle::validate(&path, bundle_limits))
        .await
        .map_err(|e| ApiError::internal("checking the bundle", &e))?;
    let bundle = checked.map_err(|e| match e {
        BundleError::Io(io) => ApiError::internal("reading the upload", &io),
        other => ApiError::bad_request(other.code(), other.to_string()),
    })?;
    let (info, versions) = state
        .repo
        .publish_release(NewRelease {
            bundle,
            file: spooled.file.path().to_path_buf(),
            length: spooled.length,
            hashes: BTreeMap::from([
                ("sha256".to_string(), hex::encode(spooled.sha256)),
                ("sha512".to_string(), hex::encode(spooled.sha512)),
            ]),
            channel,
            published_by: auth.caller.id,
            rollout,
        })
        .await
        .map_err(repo_err)?;
    drop(spooled);
    tracing::info!(
        release = %info.name,
        version = %info.version,
        targets = versions.targets,
        by = auth.caller.id,
        "release published"
    );
    Ok(HttpResponse::build(StatusCode::CREATED)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({"release": info, "versions": {
            "targets": versions.targets, "snapshot": versions.snapshot, "timestamp": versions.timestamp,
        }})))
}

/// `GET /api/v1/releases`: every release, newest first, yanked ones included.
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn list(
    auth: Auth<ReadReleases>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let _ = auth;
    let releases = state.repo.list_releases().await.map_err(repo_err)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({ "releases": releases })))
}

/// `DELETE /api/v1/releases/{name}/{version}` (admin, publisher): yanks the release.
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn yank(
    auth: Auth<Publish>,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (name, version) = path.into_inner();
    let versions = state
        .repo
        .yank_release(&name, &version, &crate::audit::Actor::token(auth.caller.id))
        .await
        .map_err(repo_err)?;
    tracing::info!(release = %name, version = %version, targets = versions.targets, by = auth.caller.id, "release yanked");
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({"yanked": {"name": name, "version": version}, "versions": {
            "targets": versions.targets, "snapshot": versions.snapshot, "timestamp": versions.timestamp,
        }})))
}
