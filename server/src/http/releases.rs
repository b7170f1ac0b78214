//! `/api/v1/releases`: publish (streaming upload), list, yank. The upload goes to a
//! temporary file in the data dir while it is hashed, never whole into memory, and stops
//! with 413 as soon as it passes the configured cap.

use std::collections::BTreeMap;
use std::io::Write;

use actix_web::http::{header, StatusCode};
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256, Sha512};

use super::auth::{Auth, Publish, ReadReleases};
use super::error::ApiError;
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

/// What the spooling thread hands back.
struct Spooled {
    file: tempfile::NamedTempFile,
    length: u64,
    hashes: BTreeMap<String, String>,
}

/// Writes chunks to a temporary file on a blocking thread, hashing as it goes.
fn spool(
    dir: std::path::PathBuf,
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> std::io::Result<Spooled> {
    crate::store::create_dir_private(&dir)?;
    let mut file = tempfile::Builder::new()
        .prefix("upload-")
        .suffix(".part")
        .tempfile_in(&dir)?;
    let (mut s256, mut s512, mut length) = (Sha256::new(), Sha512::new(), 0u64);
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file.as_file_mut());
        while let Some(chunk) = rx.blocking_recv() {
            s256.update(&chunk);
            s512.update(&chunk);
            length += chunk.len() as u64;
            w.write_all(&chunk)?;
        }
        w.flush()?;
    }
    let hashes = BTreeMap::from([
        ("sha256".to_string(), hex::encode(s256.finalize())),
        ("sha512".to_string(), hex::encode(s512.finalize())),
    ]);
    Ok(Spooled {
        file,
        length,
        hashes,
    })
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
    let channel = query
        .into_inner()
        .channel
        .unwrap_or_else(|| "stable".into());
    if !is_label(&channel) {
        return Err(ApiError::bad_request(
            "invalid_channel",
            "a channel name is 1 to 64 of A-Z, a-z, 0-9, '.', '_', '-'",
        ));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_upload_bytes) {
        return Err(too_large(limits.max_upload_bytes));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let dir = state.upload_dir.clone();
    let writer = tokio::task::spawn_blocking(move || spool(dir, rx));
    let mut received = 0u64;
    let mut failure = None;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                failure = Some(ApiError::bad_request(
                    "upload_incomplete",
                    format!("the upload broke off: {e}"),
                ));
                break;
            }
        };
        received = received.saturating_add(chunk.len() as u64);
        if received > limits.max_upload_bytes {
            failure = Some(too_large(limits.max_upload_bytes));
            break;
        }
        if tx.send(chunk).await.is_err() {
            break;
        }
    }
    drop(tx);
    let spooled = writer
        .await
        .map_err(|e| ApiError::internal("spooling the upload", &e))?;
    if let Some(f) = failure {
        // The temporary file is removed when `spooled` drops.
        return Err(f);
    }
    let spooled = spooled.map_err(|e| ApiError::internal("spooling the upload", &e))?;
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
            hashes: spooled.hashes.clone(),
            channel,
            published_by: auth.caller.id,
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
        .yank_release(&name, &version)
        .await
        .map_err(repo_err)?;
    tracing::info!(release = %name, version = %version, targets = versions.targets, by = auth.caller.id, "release yanked");
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({"yanked": {"name": name, "version": version}, "versions": {
            "targets": versions.targets, "snapshot": versions.snapshot, "timestamp": versions.timestamp,
        }})))
}
