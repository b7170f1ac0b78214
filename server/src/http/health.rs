//! `GET /healthz`: the database answers and the store holds the timestamp; `warnings` lists
//! what needs a person soon (a root close to expiry). `GET /readyz`: the same checks, for
//! load balancers and orchestrators that tell readiness from liveness.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde_json::json;

use super::error::ApiError;
use super::AppState;
use crate::store::metadata_key;

/// Checks the database (the repository row can be read) and the object store (the
/// timestamp is there). 200 with the checks, or 503 `unhealthy` naming what failed.
#[tracing::instrument(skip_all)]
pub async fn healthz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let db = state
        .db
        .call(|c| {
            let n: i64 = c.query_row("SELECT COUNT(*) FROM repository", [], |r| r.get(0))?;
            Ok(n)
        })
        .await;
    let db_ok = match db {
        Ok(1) => true,
        Ok(n) => {
            tracing::error!(rows = n, "health check: the repository row is missing");
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "health check: the database failed");
            false
        }
    };
    let store_ok = match state.store.head(&metadata_key("timestamp.json")).await {
        Ok(Some(_)) => true,
        Ok(None) => {
            tracing::error!("health check: the store holds no timestamp.json");
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "health check: the object store failed");
            false
        }
    };
    let warnings: Vec<String> = state
        .repo
        .root_expiry_warning(otter_keys::time::UtcTime::now())
        .await
        .into_iter()
        .collect();
    let word = |ok: bool| if ok { "ok" } else { "failed" };
    if db_ok && store_ok {
        Ok(HttpResponse::Ok()
            .insert_header(("Cache-Control", "no-store"))
            .json(json!({
                "status": "ok",
                "checks": {"database": "ok", "store": "ok"},
                "warnings": warnings,
            })))
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy",
            format!(
                "database: {}, store: {}; the server log has the details",
                word(db_ok),
                word(store_ok)
            ),
        ))
    }
}

/// `GET /readyz`: ready to serve when the database answers and the object store holds the
/// timestamp (the checks of [`healthz`]); 503 `unhealthy` otherwise.
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    healthz(state).await
}
