//! `GET /metrics`: Prometheus metrics in the text exposition format 0.0.4 (see
//! [`crate::metrics`]). It needs an API token (admin, operator or auditor): the device counts
//! by installed version tell an attacker which terminals run a vulnerable version, so they
//! are not public. Prometheus sends one with `authorization: {credentials_file: ...}`.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use super::auth::{Auth, Policy};
use super::error::ApiError;
use super::AppState;
use crate::metrics;
use crate::tokens::TokenRole;

/// Reading metrics: admin, operator and auditor.
pub struct ReadMetrics;
impl Policy for ReadMetrics {
    const ROLES: &'static [TokenRole] =
        &[TokenRole::Admin, TokenRole::Operator, TokenRole::Auditor];
    const WHAT: &'static str = "reading metrics";
}

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics` (admin, operator, auditor).
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn metrics(
    auth: Auth<ReadMetrics>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let _ = auth;
    let devices = match state.db.call(|c| Ok(metrics::device_counts(c)?)).await {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::error!(error = %e, "metrics: reading device counts failed");
            None
        }
    };
    let mut body = metrics::render(devices.as_ref());
    match state
        .db
        .call(|c| Ok(crate::alerts::render_metrics(c)))
        .await
    {
        Ok(Ok(text)) => body.push_str(&text),
        Ok(Err(e)) => tracing::error!(error = %e, "metrics: reading alerts failed"),
        Err(e) => tracing::error!(error = %e, "metrics: reading alerts failed"),
    }
    match state.repo.expiries().await {
        Ok(e) => body.push_str(&metrics::render_expiries(&e)),
        Err(e) => tracing::error!(error = %e, "metrics: reading metadata expiries failed"),
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .content_type(CONTENT_TYPE)
        .body(body))
}
