//! `/api/v1/delegations`: delegated targets roles (see [`crate::repo::delegated`]). An admin
//! declares, replaces or removes a delegation; a publisher (or admin) uploads the role's
//! target files and its metadata, signed offline by the role's own keys.

use std::collections::BTreeMap;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::json;

use super::auth::{Auth, Policy};
use super::error::ApiError;
use super::releases::repo_err;
use super::upload::{declared_length, spool_body};
use super::AppState;
use crate::audit::Actor;
use crate::metrics::{record_publish, PublishKind};
use crate::repo::delegated::{
    check_role_name, check_target_path, DelegatedError, DelegationSpec,
    MAX_DELEGATED_METADATA_BYTES,
};
use crate::repo::Versions;
use crate::tokens::TokenRole;

/// Declaring, replacing and removing delegations: admin only (it changes who may sign).
pub struct ManageDelegations;
impl Policy for ManageDelegations {
    const ROLES: &'static [TokenRole] = &[TokenRole::Admin];
    const WHAT: &'static str = "declaring or removing delegations";
}

/// Uploading a delegated role's target files and signed metadata: admin and publisher.
pub struct UploadDelegated;
impl Policy for UploadDelegated {
    const ROLES: &'static [TokenRole] = &[TokenRole::Admin, TokenRole::Publisher];
    const WHAT: &'static str = "uploading delegated role files";
}

/// Listing delegations: whoever may list releases.
pub struct ReadDelegations;
impl Policy for ReadDelegations {
    const ROLES: &'static [TokenRole] = &[
        TokenRole::Admin,
        TokenRole::Publisher,
        TokenRole::Operator,
        TokenRole::Auditor,
    ];
    const WHAT: &'static str = "listing delegations";
}

/// Maps delegation errors to responses.
pub fn delegated_err(e: DelegatedError) -> ApiError {
    let status = match &e {
        DelegatedError::UnknownRole(_) => StatusCode::NOT_FOUND,
        DelegatedError::Rollback { .. } | DelegatedError::Conflict(_) => StatusCode::CONFLICT,
        DelegatedError::Repo(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    match e {
        DelegatedError::Repo(r) => repo_err(r),
        other => ApiError::new(status, other.code(), other.to_string()),
    }
}

fn versions_json(v: &Versions) -> serde_json::Value {
    json!({"targets": v.targets, "snapshot": v.snapshot, "timestamp": v.timestamp})
}

/// `GET /api/v1/delegations`: declared delegations, in priority order.
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn list(
    auth: Auth<ReadDelegations>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let _ = auth;
    let list = state.repo.list_delegations().await.map_err(delegated_err)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({ "delegations": list })))
}

/// `POST /api/v1/delegations` (admin): declares or replaces a delegation. The body is a
/// [`DelegationSpec`]. 201 when new, 200 when replaced.
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn declare(
    auth: Auth<ManageDelegations>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let spec: DelegationSpec = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_request",
            format!(
                "the body must be JSON {{\"name\", \"keys\": [TUF key objects], \"threshold\", \"paths\": [patterns], \"terminating\"}}: {e}"
            ),
        )
    })?;
    let (declared, versions) = state
        .repo
        .declare_delegation(spec, &Actor::token(auth.caller.id))
        .await
        .map_err(delegated_err)?;
    record_publish(PublishKind::Delegation);
    tracing::info!(role = %declared.delegation.name, by = auth.caller.id, "delegation declared");
    let status = if declared.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({
            "delegation": declared.delegation,
            "created": declared.created,
            "metadata_dropped": declared.metadata_dropped,
            "versions": versions_json(&versions),
        })))
}

/// `DELETE /api/v1/delegations/{name}` (admin): removes the delegation and its metadata from
/// the repository.
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn remove(
    auth: Auth<ManageDelegations>,
    name: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let name = name.into_inner();
    let versions = state
        .repo
        .remove_delegation(&name, &Actor::token(auth.caller.id))
        .await
        .map_err(delegated_err)?;
    record_publish(PublishKind::Delegation);
    tracing::info!(role = %name, by = auth.caller.id, "delegation removed");
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({"removed": name, "versions": versions_json(&versions)})))
}

/// `PUT /api/v1/delegations/{name}` (admin, publisher): the body is the role's metadata,
/// signed offline. 201 with the version accepted.
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn upload_metadata(
    auth: Auth<UploadDelegated>,
    req: HttpRequest,
    name: web::Path<String>,
    mut body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let name = name.into_inner();
    check_role_name(&name).map_err(delegated_err)?;
    let cap = MAX_DELEGATED_METADATA_BYTES;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "upload_too_large",
            format!("delegated metadata is at most {cap} bytes"),
        )
    };
    if declared_length(&req).is_some_and(|n| n > cap as u64) {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request("upload_incomplete", format!("the upload broke off: {e}"))
        })?;
        if bytes.len() + chunk.len() > cap {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    let (version, versions) = state
        .repo
        .accept_delegated(&name, bytes, &Actor::token(auth.caller.id))
        .await
        .map_err(delegated_err)?;
    record_publish(PublishKind::DelegatedRole);
    tracing::info!(role = %name, version, by = auth.caller.id, "delegated metadata accepted");
    Ok(HttpResponse::build(StatusCode::CREATED)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({
            "role": name,
            "version": version,
            "file": format!("/repo/metadata/{version}.{name}.json"),
            "versions": versions_json(&versions),
        })))
}

fn too_large_target(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "upload_too_large",
        format!("the upload is larger than the server's cap of {limit} bytes (publishing.max_upload_bytes)"),
    )
}

/// `PUT /api/v1/delegations/{name}/targets/{target}` (admin, publisher): stores a target
/// file for the role. 201 with the `length` and `hashes` its metadata must list.
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn upload_target(
    auth: Auth<UploadDelegated>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    mut body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (name, target) = path.into_inner();
    check_role_name(&name).map_err(delegated_err)?;
    check_target_path(&target).map_err(delegated_err)?;
    let cap = state.publishing.max_upload_bytes;
    let declared = declared_length(&req);
    if declared.is_some_and(|n| n > cap) {
        return Err(too_large_target(cap));
    }
    let spooled = spool_body(
        &mut body,
        state.upload_dir.clone(),
        "delegated-",
        cap,
        too_large_target,
        "spooling the upload",
    )
    .await?;
    if declared.is_some_and(|n| n != spooled.length) {
        return Err(ApiError::bad_request(
            "upload_incomplete",
            "the upload is shorter than its Content-Length",
        ));
    }
    let hashes = BTreeMap::from([
        ("sha256".to_string(), hex::encode(spooled.sha256)),
        ("sha512".to_string(), hex::encode(spooled.sha512)),
    ]);
    let stored = state
        .repo
        .store_delegated_target(
            &name,
            &target,
            spooled.file.path(),
            spooled.length,
            hashes,
            &Actor::token(auth.caller.id),
        )
        .await
        .map_err(delegated_err)?;
    drop(spooled);
    tracing::info!(role = %name, target = %stored.path, by = auth.caller.id, "delegated target stored");
    Ok(HttpResponse::build(StatusCode::CREATED)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({
            "role": name,
            "target": stored.path,
            "entry": {"length": stored.length, "hashes": stored.hashes},
        })))
}
