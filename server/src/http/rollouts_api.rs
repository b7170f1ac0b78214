//! `/api/v1/rollouts`: show and change the rollout of a release. Reading is for admin,
//! publisher, operator and auditor; changing (percent, groups, pause, resume, abort) for
//! admin and operator. The logic is in [`crate::rollout`].

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::auth::{Auth, Policy};
use super::error::ApiError;
use super::releases::repo_err;
use super::AppState;
use crate::audit::Actor;
use crate::rollout::{self, Change, Changed, RolloutError};
use crate::tokens::TokenRole;

/// Reading rollouts: admin, publisher, operator, auditor.
pub struct ReadRollouts;
impl Policy for ReadRollouts {
    const ROLES: &'static [TokenRole] = &[
        TokenRole::Admin,
        TokenRole::Publisher,
        TokenRole::Operator,
        TokenRole::Auditor,
    ];
    const WHAT: &'static str = "reading rollouts";
}

/// Changing rollouts: admin and operator.
pub struct ManageRollouts;
impl Policy for ManageRollouts {
    const ROLES: &'static [TokenRole] = &[TokenRole::Admin, TokenRole::Operator];
    const WHAT: &'static str = "changing rollouts";
}

/// Splits `a,b` into group names (empty items dropped).
pub fn split_groups(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_owned)
        .collect()
}

fn rollout_err(e: RolloutError) -> ApiError {
    match e {
        RolloutError::NotFound(m) => ApiError::not_found(m),
        RolloutError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
        RolloutError::Invalid(m) => ApiError::bad_request("invalid_rollout", m),
        RolloutError::Db(e) => ApiError::unavailable("the database", &e),
        RolloutError::Repo(e) => repo_err(e),
        other => ApiError::internal("the rollout change", &other),
    }
}

fn body_of<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
    shape: &str,
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request("invalid_request", format!("the body must be {shape}: {e}"))
    })
}

/// Body of `POST .../percent`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPercent {
    /// Whole percent, 0 to 100.
    pub percent: Option<u64>,
    /// Allow lowering the percent.
    #[serde(default)]
    pub force: bool,
}

/// Body of `POST .../groups`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetGroups {
    /// Group names; `[]` for none.
    pub groups: Option<Vec<String>>,
}

/// Body of `POST .../pause` and `.../abort` (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    /// Why, for the audit log.
    #[serde(default)]
    pub reason: Option<String>,
}

fn check_reason(r: Option<String>) -> Result<Option<String>, ApiError> {
    match r {
        Some(r) if r.chars().count() > 1024 || r.chars().any(char::is_control) => {
            Err(ApiError::bad_request(
                "invalid_request",
                "a reason is at most 1024 characters without control characters",
            ))
        }
        other => Ok(other),
    }
}

fn answer(c: Changed) -> HttpResponse {
    let versions = c
        .versions
        .map(|v| json!({"targets": v.targets, "snapshot": v.snapshot, "timestamp": v.timestamp}));
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({"rollout": c.rollout, "changed": c.changed, "versions": versions}))
}

/// `GET /api/v1/rollouts[?yanked=true]`: every release's rollout, newest first.
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn list(
    auth: Auth<ReadRollouts>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let _ = auth;
    let yanked = match req.query_string() {
        "" => false,
        "yanked=true" => true,
        "yanked=false" => false,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "the query may hold yanked=true only",
            ))
        }
    };
    let all = state
        .db
        .call(move |c| Ok(rollout::list(c, yanked)))
        .await
        .map_err(|e| ApiError::unavailable("the database", &e))?
        .map_err(rollout_err)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({ "rollouts": all })))
}

/// `GET /api/v1/rollouts/{name}/{version}`: the rollout: the operator's percent and
/// groups, status, what is signed, and the reported outcomes.
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn show(
    auth: Auth<ReadRollouts>,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let _ = auth;
    let (name, version) = path.into_inner();
    let info = state
        .db
        .call(move |c| Ok(rollout::show(c, &name, &version)))
        .await
        .map_err(|e| ApiError::unavailable("the database", &e))?
        .map_err(rollout_err)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({ "rollout": info })))
}

async fn run(
    state: &AppState,
    caller: i64,
    (name, version): (String, String),
    change: Change,
) -> Result<HttpResponse, ApiError> {
    let changed = rollout::change(
        &state.repo,
        &state.db,
        &name,
        &version,
        change,
        &Actor::token(caller),
    )
    .await
    .map_err(rollout_err)?;
    Ok(answer(changed))
}

/// `POST /api/v1/rollouts/{name}/{version}/percent` `{"percent": P, "force": false}`
/// (admin, operator): raises the percent; lowering it needs `"force": true`.
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn set_percent(
    auth: Auth<ManageRollouts>,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let shape = "{\"percent\": 0..100, \"force\": false}";
    let b: SetPercent = body_of(&body, shape)?;
    let percent = b.percent.ok_or_else(|| {
        ApiError::bad_request("invalid_request", format!("the body must be {shape}"))
    })?;
    let change = Change::SetPercent {
        percent,
        force: b.force,
    };
    run(&state, auth.caller.id, path.into_inner(), change).await
}

/// `POST /api/v1/rollouts/{name}/{version}/groups` `{"groups": ["a", "b"]}` (admin,
/// operator): replaces the groups.
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn set_groups(
    auth: Auth<ManageRollouts>,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let shape = "{\"groups\": [GROUP, ...]}";
    let b: SetGroups = body_of(&body, shape)?;
    let groups = b.groups.ok_or_else(|| {
        ApiError::bad_request("invalid_request", format!("the body must be {shape}"))
    })?;
    run(
        &state,
        auth.caller.id,
        path.into_inner(),
        Change::SetGroups(groups),
    )
    .await
}

/// `POST /api/v1/rollouts/{name}/{version}/pause` `[{"reason": "..."}]` (admin,
/// operator): signs percent 0 and no groups; the stored percent stays for resume.
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn pause(
    auth: Auth<ManageRollouts>,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let b: Reason = body_of(&body, "{\"reason\": TEXT} or empty")?;
    let reason = check_reason(b.reason)?;
    run(
        &state,
        auth.caller.id,
        path.into_inner(),
        Change::Pause { reason },
    )
    .await
}

/// `POST /api/v1/rollouts/{name}/{version}/resume` (admin, operator): signs the stored
/// percent and groups again, after a pause or an automatic halt.
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn resume(
    auth: Auth<ManageRollouts>,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let _: Reason = body_of(&body, "empty")?;
    run(&state, auth.caller.id, path.into_inner(), Change::Resume).await
}

/// `POST /api/v1/rollouts/{name}/{version}/abort` `[{"reason": "..."}]` (admin, operator):
/// signs percent 0 and no groups for good.
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn abort(
    auth: Auth<ManageRollouts>,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let b: Reason = body_of(&body, "{\"reason\": TEXT} or empty")?;
    let reason = check_reason(b.reason)?;
    run(
        &state,
        auth.caller.id,
        path.into_inner(),
        Change::Abort { reason },
    )
    .await
}
