//! Who is calling a device endpoint: the [`SignedDevice`] extractor checks the request
//! signature of [`otter_keys::request`] against the key of an enrolled, unrevoked device,
//! the timestamp against the allowed clock skew, and the nonce against those seen within
//! the window (a second use is a replay). The database is reached only through
//! [`crate::db::Db::call`], off the executor.
//!
//! Answers, all 401 in JSON: `missing_signature`, `malformed_signature`, `unknown_device`,
//! `device_revoked`, `stale_request`, `digest_mismatch`, `invalid_signature`,
//! `replayed_request`. An API token does not stand in for a device signature.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpRequest};
use otter_keys::request::{
    check_device_id, verify_request, RequestError, SignatureHeaders, DEFAULT_MAX_SKEW_SECS,
};

use super::error::ApiError;
use super::AppState;
use crate::db::unix_now;
use crate::fleet::{device_key, record_request, RequestSeen};

/// How far a device's clock may be from the server's, in seconds, either way.
pub const MAX_SKEW_SECS: u64 = DEFAULT_MAX_SKEW_SECS;

/// A request whose signature an enrolled, unrevoked device made, seen for the first time,
/// with the body the signature covers.
#[derive(Debug)]
pub struct SignedDevice {
    /// The device's id.
    pub device_id: String,
    /// The request body, as signed.
    pub body: web::Bytes,
}

fn refused(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
}

fn signature_error(device: &str, e: RequestError) -> ApiError {
    if let RequestError::Random(_) = e {
        return ApiError::internal("checking a device signature", &e);
    }
    tracing::warn!(device, code = e.code(), error = %e, "device request refused");
    refused(e.code(), e.to_string())
}

fn body_error(e: actix_web::Error) -> ApiError {
    let status = e.as_response_error().status_code();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(status, "body_too_large", "the request body is too large")
    } else {
        ApiError::bad_request("invalid_body", format!("cannot read the request body: {e}"))
    }
}

async fn authenticate(req: HttpRequest, body: web::Bytes) -> Result<SignedDevice, ApiError> {
    let headers =
        SignatureHeaders::from_lookup(|name| req.headers().get(name).and_then(|v| v.to_str().ok()))
            .map_err(|e| signature_error("", e))?;
    check_device_id(&headers.device).map_err(|e| signature_error("", e))?;
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::internal("device authentication", &"no application state"))?;
    let id = headers.device.clone();
    let key = state
        .db
        .call(move |c| Ok(device_key(c, &id)))
        .await
        .map_err(|e| ApiError::unavailable("the device database", &e))?
        .map_err(|e| ApiError::internal("looking up a device", &e))?;
    let device = headers.device.as_str();
    let Some(key) = key else {
        tracing::warn!(device, "request signed by an unknown device");
        return Err(refused(
            "unknown_device",
            "no device with this id is enrolled: enroll the terminal again",
        ));
    };
    if key.revoked_at.is_some() {
        tracing::warn!(device, "request signed by a revoked device");
        return Err(refused(
            "device_revoked",
            "this device was revoked: enroll the terminal again with a new token",
        ));
    }
    let now = unix_now();
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.path(), |pq| pq.as_str());
    let verified = verify_request(
        &key.public_key,
        req.method().as_str(),
        path,
        &body,
        &headers,
        now,
        MAX_SKEW_SECS,
    )
    .map_err(|e| signature_error(device, e))?;
    let (id, nonce) = (verified.device.clone(), verified.nonce.clone());
    let seen = state
        .db
        .call(move |c| Ok(record_request(c, &id, &nonce, now, 2 * MAX_SKEW_SECS)))
        .await
        .map_err(|e| ApiError::unavailable("the device database", &e))?
        .map_err(|e| ApiError::internal("recording a device request", &e))?;
    if seen == RequestSeen::Replayed {
        tracing::warn!(device, "replayed device request refused");
        return Err(refused(
            "replayed_request",
            "this request was received before (same nonce): a replay is refused",
        ));
    }
    Ok(SignedDevice {
        device_id: verified.device,
        body,
    })
}

impl FromRequest for SignedDevice {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let body = web::Bytes::from_request(&req, payload);
        Box::pin(async move {
            let body = body.await.map_err(body_error)?;
            authenticate(req, body).await
        })
    }
}
