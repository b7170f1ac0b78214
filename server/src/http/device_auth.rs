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
    check_device_id, signing_string, verify_request, RequestError, SignatureHeaders,
    DEFAULT_MAX_SKEW_SECS,
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

/// The signature headers of `req` and the key of the enrolled, unrevoked device they name.
async fn device_of(
    req: &HttpRequest,
) -> Result<
    (
        SignatureHeaders,
        otter_keys::crypto::PublicKey,
        web::Data<AppState>,
    ),
    ApiError,
> {
    let headers =
        SignatureHeaders::from_lookup(|name| req.headers().get(name).and_then(|v| v.to_str().ok()))
            .map_err(|e| signature_error("", e))?;
    check_device_id(&headers.device).map_err(|e| signature_error("", e))?;
    let state = req
        .app_data::<web::Data<AppState>>()
        .cloned()
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
    Ok((headers, key.public_key, state))
}

fn path_of(req: &HttpRequest) -> &str {
    req.uri()
        .path_and_query()
        .map_or_else(|| req.path(), |pq| pq.as_str())
}

/// Records the nonce of a verified request; a second use is a replay.
async fn check_fresh(
    state: &AppState,
    verified: otter_keys::request::VerifiedRequest,
    now: i64,
) -> Result<String, ApiError> {
    let (id, nonce) = (verified.device.clone(), verified.nonce.clone());
    let seen = state
        .db
        .call(move |c| Ok(record_request(c, &id, &nonce, now, 2 * MAX_SKEW_SECS)))
        .await
        .map_err(|e| ApiError::unavailable("the device database", &e))?
        .map_err(|e| ApiError::internal("recording a device request", &e))?;
    if seen == RequestSeen::Replayed {
        tracing::warn!(device = verified.device, "replayed device request refused");
        return Err(refused(
            "replayed_request",
            "this request was received before (same nonce): a replay is refused",
        ));
    }
    Ok(verified.device)
}

async fn authenticate(req: HttpRequest, body: web::Bytes) -> Result<SignedDevice, ApiError> {
    let (headers, key, state) = device_of(&req).await?;
    let now = unix_now();
    let verified = verify_request(
        &key,
        req.method().as_str(),
        path_of(&req),
        &body,
        &headers,
        now,
        MAX_SKEW_SECS,
    )
    .map_err(|e| signature_error(&headers.device, e))?;
    let device_id = check_fresh(&state, verified, now).await?;
    Ok(SignedDevice { device_id, body })
}

/// Authenticates a device request before its body is read, for bodies streamed to disk: the
/// signed `Content-Digest` must be `expected_digest` (the caller then checks the body it
/// streams against that digest, e.g. a pack against its id). Same answers as
/// [`SignedDevice`], plus 401 `digest_mismatch` when the signed digest is another.
pub async fn authenticate_before_body(
    req: &HttpRequest,
    expected_digest: &str,
) -> Result<String, ApiError> {
    let (headers, key, state) = device_of(req).await?;
    let device = headers.device.as_str();
    if headers.content_digest != expected_digest {
        return Err(signature_error(device, RequestError::DigestMismatch));
    }
    let timestamp = parse_timestamp(&headers.timestamp)
        .ok_or_else(|| signature_error(device, malformed_timestamp()))?;
    let now = unix_now();
    let skew = i64::try_from(MAX_SKEW_SECS).unwrap_or(i64::MAX);
    if timestamp < now.saturating_sub(skew) {
        return Err(signature_error(
            device,
            RequestError::Stale {
                timestamp,
                now,
                max_skew: MAX_SKEW_SECS,
            },
        ));
    }
    if timestamp > now.saturating_add(skew) {
        return Err(signature_error(
            device,
            RequestError::Future {
                timestamp,
                now,
                max_skew: MAX_SKEW_SECS,
            },
        ));
    }
    let text = signing_string(
        req.method().as_str(),
        path_of(req),
        timestamp,
        &headers.nonce,
        &headers.content_digest,
        device,
        &key,
    )
    .map_err(|e| signature_error(device, e))?;
    let sig_ok = headers.signature.len() == 128
        && headers
            .signature
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !sig_ok {
        return Err(signature_error(
            device,
            RequestError::Malformed {
                what: "Otter-Signature",
                reason: "128 lower-case hex digits".into(),
            },
        ));
    }
    key.verify(text.as_bytes(), &headers.signature)
        .map_err(|_| signature_error(device, RequestError::BadSignature))?;
    let verified = otter_keys::request::VerifiedRequest {
        device: headers.device.clone(),
        timestamp,
        nonce: headers.nonce.clone(),
    };
    check_fresh(&state, verified, now).await
}

fn malformed_timestamp() -> RequestError {
    RequestError::Malformed {
        what: "Otter-Timestamp",
        reason: "Unix seconds, decimal digits only".into(),
    }
}

/// Unix seconds in the one form a signed request may use (as `otter_keys::request` does).
fn parse_timestamp(text: &str) -> Option<i64> {
    let ok = !text.is_empty()
        && text.len() <= 12
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    ok.then(|| text.parse::<i64>().ok()).flatten()
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
