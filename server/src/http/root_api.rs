//! `PUT /api/v1/root`: an admin hands the server root version N+1, signed offline with
//! `otter-keys root rotate` (see [`crate::repo::rotation`]). The server checks it against the
//! root it trusts, switches to the online keys it names and re-signs under it.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpResponse};
use serde_json::json;

use super::auth::{Auth, Policy};
use super::error::ApiError;
use super::releases::repo_err;
use super::AppState;
use crate::audit::Actor;
use crate::repo::rotation::RotationError;
use crate::tokens::TokenRole;

/// Changing the repository's root of trust: admin only.
pub struct RotateRoot;
impl Policy for RotateRoot {
    const ROLES: &'static [TokenRole] = &[TokenRole::Admin];
    const WHAT: &'static str = "publishing a new root version";
}

/// Maps a refused rotation to its response.
pub fn rotation_err(e: RotationError) -> ApiError {
    let status = match &e {
        RotationError::Version { .. } | RotationError::MissingKeys(_) => StatusCode::CONFLICT,
        RotationError::Repo(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    match e {
        RotationError::Repo(r) => repo_err(r),
        other => ApiError::new(status, other.code(), other.to_string()),
    }
}

/// `PUT /api/v1/root` (admin): the body is `N+1.root.json`. 200 with the new versions and
/// the online roles whose key changed.
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn put_root(
    auth: Auth<RotateRoot>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let rotated = state
        .repo
        .rotate_root(body.to_vec(), &Actor::token(auth.caller.id))
        .await
        .map_err(rotation_err)?;
    tracing::info!(root = rotated.root, by = auth.caller.id, "root rotated");
    Ok(HttpResponse::build(StatusCode::OK)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({
            "root": rotated.root,
            "rotated_roles": rotated.rotated_roles,
            "versions": {
                "root": rotated.root,
                "targets": rotated.targets,
                "snapshot": rotated.snapshot,
                "timestamp": rotated.timestamp,
            },
        })))
}
