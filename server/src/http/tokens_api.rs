//! `/api/v1/tokens`: create (the token is in the response, once), list and revoke API
//! tokens. The same operations as `otter-server token create|list|revoke`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::auth::{Auth, ManageTokens, ReadTokens};
use super::error::ApiError;
use super::AppState;
use crate::db::unix_now;
use crate::tokens::{check_label, create_token, list_tokens, revoke_token, TokenError, TokenRole};

/// Body of `POST /api/v1/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// The role: admin, publisher, operator, auditor or restorer.
    pub role: String,
    /// What the token is for.
    pub label: String,
}

fn token_err(e: TokenError) -> ApiError {
    match e {
        TokenError::Label(_) => ApiError::bad_request("invalid_label", e.to_string()),
        TokenError::NotFound(_) => ApiError::not_found(e.to_string()),
        other => ApiError::internal("the token operation", &other),
    }
}

/// Appends a token change to the audit log (inside the change's transaction).
fn audit_token(
    conn: &rusqlite::Connection,
    caller: i64,
    action: &str,
    id: i64,
    details: serde_json::Value,
    now: i64,
) -> Result<(), TokenError> {
    crate::audit::append(
        conn,
        &crate::audit::Actor::token(caller),
        action,
        &format!("token:{id}"),
        &details,
        now,
    )
    .map(|_| ())
    .map_err(|e| match e {
        crate::audit::AuditError::Sqlite(e) => TokenError::Sqlite(e),
        other => TokenError::Sqlite(rusqlite::Error::ToSqlConversionFailure(Box::new(other))),
    })
}

/// `POST /api/v1/tokens` (admin): 201 with `{id, role, label, token}`.
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn create(
    auth: Auth<ManageTokens>,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    // Parsed here, after authentication, so that anonymous callers learn nothing.
    let body: CreateToken = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_request",
            format!("the body must be {{\"role\": ROLE, \"label\": LABEL}}: {e}"),
        )
    })?;
    let role: TokenRole = body
        .role
        .parse()
        .map_err(|e: String| ApiError::bad_request("invalid_role", e))?;
    check_label(&body.label).map_err(token_err)?;
    let label = body.label.clone();
    let caller = auth.caller.id;
    let (id, token) = state
        .db
        .call(move |c| {
            let tx = c.transaction()?;
            let now = unix_now();
            let made = create_token(&tx, role, &label, now).and_then(|(id, token)| {
                audit_token(
                    &tx,
                    caller,
                    "token.create",
                    id,
                    json!({"role": role, "label": label}),
                    now,
                )?;
                Ok((id, token))
            });
            if made.is_ok() {
                tx.commit()?;
            }
            Ok(made)
        })
        .await
        .map_err(|e| ApiError::unavailable("the database", &e))?
        .map_err(token_err)?;
    tracing::info!(token_id = id, role = %role, by = auth.caller.id, "API token created");
    Ok(HttpResponse::build(StatusCode::CREATED)
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({
            "id": id,
            "role": role,
            "label": body.label,
            "token": token.expose_dangerous(),
        })))
}

/// `GET /api/v1/tokens` (admin, auditor): every token's id, role, label and times.
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn list(
    auth: Auth<ReadTokens>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let _ = auth;
    let tokens = state
        .db
        .call(|c| Ok(list_tokens(c)))
        .await
        .map_err(|e| ApiError::unavailable("the database", &e))?
        .map_err(token_err)?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({ "tokens": tokens })))
}

/// `DELETE /api/v1/tokens/{id}` (admin): revokes the token; 200 with its record.
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn revoke(
    auth: Auth<ManageTokens>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::bad_request("invalid_id", "a token id is a number"))?;
    let caller = auth.caller.id;
    let info = state
        .db
        .call(move |c| {
            let tx = c.transaction()?;
            let now = unix_now();
            let was_valid: Option<bool> = tx
                .query_row(
                    "SELECT revoked_at IS NULL FROM api_tokens WHERE id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .ok();
            let revoked = revoke_token(&tx, id, now).and_then(|info| {
                if was_valid == Some(true) {
                    audit_token(
                        &tx,
                        caller,
                        "token.revoke",
                        id,
                        json!({"role": info.role, "label": info.label}),
                        now,
                    )?;
                }
                Ok(info)
            });
            if revoked.is_ok() {
                tx.commit()?;
            }
            Ok(revoked)
        })
        .await
        .map_err(|e| ApiError::unavailable("the database", &e))?
        .map_err(token_err)?;
    tracing::info!(token_id = id, by = auth.caller.id, "API token revoked");
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(info))
}
