//! `/api/v1/audit`: reading the audit log (admin, auditor), with the head an operator
//! records elsewhere and a verification of the whole chain.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::auth::{Auth, Policy};
use super::error::ApiError;
use super::AppState;
use crate::audit;
use crate::tokens::TokenRole;

/// Reading the audit log: admin and auditor.
pub struct ReadAudit;
impl Policy for ReadAudit {
    const ROLES: &'static [TokenRole] = &[TokenRole::Admin, TokenRole::Auditor];
    const WHAT: &'static str = "reading the audit log";
}

/// Most entries in one answer.
pub const MAX_LIMIT: u32 = 1000;

/// Query of `GET /api/v1/audit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Entries after this sequence number [default: 0, from the start].
    pub after: Option<i64>,
    /// At most this many [default and most: 1000].
    pub limit: Option<u32>,
}

/// `GET /api/v1/audit[?after=SEQ][&limit=N]` (admin, auditor): `{entries: [...], head:
/// {seq, hash}}`, oldest first; page on with `after` = the last `seq` received.
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn list(
    auth: Auth<ReadAudit>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let _ = auth;
    let q = web::Query::<AuditQuery>::from_query(req.query_string()).map_err(|e| {
        ApiError::bad_request(
            "invalid_query",
            format!("the query may hold after and limit only: {e}"),
        )
    })?;
    let after = q.after.unwrap_or(0);
    let limit = q.limit.unwrap_or(MAX_LIMIT).clamp(1, MAX_LIMIT);
    let (entries, head) = state
        .db
        .call(move |c| Ok(audit::list(c, after, limit).and_then(|e| Ok((e, audit::head(c)?)))))
        .await
        .map_err(|e| ApiError::unavailable("the database", &e))?
        .map_err(|e| ApiError::internal("reading the audit log", &e))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({ "entries": entries, "head": head })))
}

/// `GET /api/v1/audit/verify` (admin, auditor): walks the whole chain; `{verified, head,
/// broken}` where `broken` names the first broken entry, or is `null`.
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn verify(
    auth: Auth<ReadAudit>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let _ = auth;
    let v = state
        .db
        .call(|c| Ok(audit::verify(c, None)))
        .await
        .map_err(|e| ApiError::unavailable("the database", &e))?
        .map_err(|e| ApiError::internal("verifying the audit log", &e))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(v))
}
