//! Signed device requests: the signature every enrolled terminal puts on its API requests,
//! as pure functions (no clock, no network: the caller passes `now`).
//!
//! The device signs, with its ed25519 identity key, this signing string (UTF-8, every line
//! ending in `\n`, no trailing spaces):
//!
//! ```text
//! otter-device-request-v1
//! method:POST
//! path:/api/v1/device/report?x=1
//! timestamp:1767225600
//! nonce:0f1e2d3c4b5a69788796a5b4c3d2e1f0
//! content-digest:sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:
//! device:4c0ffee0d15ea5e0aa55aa55aa55aa55
//! keyid:<hex SHA-256 of the device's TUF key object>
//! ```
//!
//! and sends it with five headers: `Otter-Device` (the device id), `Otter-Timestamp` (Unix
//! seconds, UTC), `Otter-Nonce` (16 random bytes, 32 lower-case hex digits),
//! `Content-Digest` (RFC 9530: `sha-256=:BASE64:` of the body, padded standard base64) and
//! `Otter-Signature` (the 64-byte ed25519 signature, 128 lower-case hex digits).
//!
//! The verifier recomputes the digest from the body it received and the signing string from
//! the method and path it received, so any change to the method, path or query, timestamp,
//! nonce, body, device or key makes the signature fail. The first line separates this
//! signature from every other signature an Otter key makes. Replays within the allowed clock
//! skew are the verifier's to refuse, by remembering nonces: [`verify_request`] returns the
//! nonce for that.

use std::fmt;

use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

use crate::crypto::{PublicKey, SigningKey};

/// The first line of every signing string.
pub const DOMAIN: &str = "otter-device-request-v1\n";
/// Header carrying the device id.
pub const HEADER_DEVICE: &str = "Otter-Device";
/// Header carrying the request time, Unix seconds.
pub const HEADER_TIMESTAMP: &str = "Otter-Timestamp";
/// Header carrying the random nonce.
pub const HEADER_NONCE: &str = "Otter-Nonce";
/// Header carrying the body digest (RFC 9530).
pub const HEADER_CONTENT_DIGEST: &str = "Content-Digest";
/// Header carrying the signature.
pub const HEADER_SIGNATURE: &str = "Otter-Signature";
/// How far a request's timestamp may be from the verifier's clock by default, in seconds.
pub const DEFAULT_MAX_SKEW_SECS: u64 = 300;
/// Longest path (with query) that can be signed.
pub const MAX_PATH_LEN: usize = 2048;
/// Longest device id.
pub const MAX_DEVICE_ID_LEN: usize = 64;

/// Why a request could not be signed or was refused. Carries no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A header is missing.
    #[error("the {0} header is missing: device requests must be signed")]
    Missing(&'static str),
    /// A header, the method or the path does not have the required form.
    #[error("{what} is malformed: {reason}")]
    Malformed {
        /// The header or part.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The timestamp is older than the allowed skew.
    #[error("the request time {timestamp} is more than {max_skew} s before the server's clock ({now}): check the terminal's clock")]
    Stale {
        /// The request's timestamp.
        timestamp: i64,
        /// The verifier's clock.
        now: i64,
        /// The allowed skew.
        max_skew: u64,
    },
    /// The timestamp is further in the future than the allowed skew.
    #[error("the request time {timestamp} is more than {max_skew} s after the server's clock ({now}): check the terminal's clock")]
    Future {
        /// The request's timestamp.
        timestamp: i64,
        /// The verifier's clock.
        now: i64,
        /// The allowed skew.
        max_skew: u64,
    },
    /// The body's digest differs from the one signed.
    #[error("the Content-Digest does not match the body")]
    DigestMismatch,
    /// The signature does not verify with the device's key.
    #[error("the request signature does not verify with the device's key")]
    BadSignature,
    /// The random generator failed (signing only).
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
}

impl RequestError {
    /// A stable machine code for the HTTP edge.
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::Missing(_) => "missing_signature",
            RequestError::Malformed { .. } => "malformed_signature",
            RequestError::Stale { .. } | RequestError::Future { .. } => "stale_request",
            RequestError::DigestMismatch => "digest_mismatch",
            RequestError::BadSignature => "invalid_signature",
            RequestError::Random(_) => "internal",
        }
    }
}

fn malformed(what: &'static str, reason: impl Into<String>) -> RequestError {
    RequestError::Malformed {
        what,
        reason: reason.into(),
    }
}

/// The five header values of a signed request, as sent or as received.
#[derive(Clone, PartialEq, Eq)]
pub struct SignatureHeaders {
    /// `Otter-Device`.
    pub device: String,
    /// `Otter-Timestamp`.
    pub timestamp: String,
    /// `Otter-Nonce`.
    pub nonce: String,
    /// `Content-Digest`.
    pub content_digest: String,
    /// `Otter-Signature`.
    pub signature: String,
}

impl fmt::Debug for SignatureHeaders {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("SignatureHeaders")
            .field("device", &self.device)
            .field("timestamp", &self.timestamp)
            .field("nonce", &self.nonce)
            .finish_non_exhaustive()
    }
}

impl SignatureHeaders {
    /// The headers as (name, value) pairs, to add to a request.
    pub fn pairs(&self) -> [(&'static str, &str); 5] {
        [
            (HEADER_DEVICE, &self.device),
            (HEADER_TIMESTAMP, &self.timestamp),
            (HEADER_NONCE, &self.nonce),
            (HEADER_CONTENT_DIGEST, &self.content_digest),
            (HEADER_SIGNATURE, &self.signature),
        ]
    }

    /// Collects the headers through `get` (a header lookup by name, case-insensitive as
    /// HTTP requires); a missing one is an error naming it.
    pub fn from_lookup<'a>(
        mut get: impl FnMut(&'static str) -> Option<&'a str>,
    ) -> Result<Self, RequestError> {
        let mut one = |name| {
            get(name)
                .map(|v| v.trim().to_owned())
                .ok_or(RequestError::Missing(name))
        };
        Ok(SignatureHeaders {
            device: one(HEADER_DEVICE)?,
            timestamp: one(HEADER_TIMESTAMP)?,
            nonce: one(HEADER_NONCE)?,
            content_digest: one(HEADER_CONTENT_DIGEST)?,
            signature: one(HEADER_SIGNATURE)?,
        })
    }
}

/// What a verified request proved: the verifier remembers `nonce` for the skew window to
/// refuse replays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRequest {
    /// The device id.
    pub device: String,
    /// The signed time, Unix seconds.
    pub timestamp: i64,
    /// The nonce.
    pub nonce: String,
}

/// Padded standard base64 (RFC 4648 section 4), as RFC 9530 digests use.
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The `Content-Digest` value of a body: `sha-256=:BASE64:`.
pub fn content_digest(body: &[u8]) -> String {
    format!("sha-256=:{}:", base64_encode(&Sha256::digest(body)))
}

/// Checks a device id: 1 to [`MAX_DEVICE_ID_LEN`] characters of `a-z`, `0-9` and `-`.
pub fn check_device_id(id: &str) -> Result<(), RequestError> {
    if id.is_empty()
        || id.len() > MAX_DEVICE_ID_LEN
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(malformed(
            HEADER_DEVICE,
            format!("a device id is 1 to {MAX_DEVICE_ID_LEN} characters of a-z, 0-9 and -"),
        ));
    }
    Ok(())
}

fn check_method(method: &str) -> Result<(), RequestError> {
    if method.is_empty() || method.len() > 16 || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(malformed("the method", "1 to 16 upper-case ASCII letters"));
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), RequestError> {
    if !path.starts_with('/')
        || path.len() > MAX_PATH_LEN
        || !path.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(malformed(
            "the path",
            format!("an absolute path of at most {MAX_PATH_LEN} visible ASCII characters"),
        ));
    }
    Ok(())
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_nonce(nonce: &str) -> Result<(), RequestError> {
    if !is_lower_hex(nonce, 32) {
        return Err(malformed(HEADER_NONCE, "32 lower-case hex digits"));
    }
    Ok(())
}

fn parse_timestamp(text: &str) -> Result<i64, RequestError> {
    let ok = !text.is_empty()
        && text.len() <= 12
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    ok.then(|| text.parse::<i64>().ok())
        .flatten()
        .ok_or_else(|| malformed(HEADER_TIMESTAMP, "Unix seconds, decimal digits only"))
}

/// The exact bytes signed for a request (see the module documentation). Checks the shape of
/// every part, so that no part can smuggle a line break into another.
pub fn signing_string(
    method: &str,
    path_and_query: &str,
    timestamp: i64,
    nonce: &str,
    content_digest: &str,
    device: &str,
    key: &PublicKey,
) -> Result<String, RequestError> {
    check_method(method)?;
    check_path(path_and_query)?;
    check_nonce(nonce)?;
    check_device_id(device)?;
    if timestamp < 0 {
        return Err(malformed(HEADER_TIMESTAMP, "not before 1970"));
    }
    if !content_digest.starts_with("sha-256=:") || !content_digest.is_ascii() {
        return Err(malformed(
            HEADER_CONTENT_DIGEST,
            "sha-256=:BASE64: expected",
        ));
    }
    let keyid = key
        .key_id()
        .map_err(|e| malformed("the device key", e.to_string()))?;
    Ok(format!(
        "{DOMAIN}method:{method}\npath:{path_and_query}\ntimestamp:{timestamp}\nnonce:{nonce}\n\
         content-digest:{content_digest}\ndevice:{device}\nkeyid:{keyid}\n"
    ))
}

/// A fresh nonce: 16 bytes from the operating system, as 32 hex digits.
pub fn new_nonce() -> Result<String, RequestError> {
    let mut raw = [0u8; 16];
    OsRng
        .try_fill_bytes(&mut raw)
        .map_err(|e| RequestError::Random(e.to_string()))?;
    Ok(hex::encode(raw))
}

/// Signs a request of `device` at time `now` (Unix seconds) with a fresh nonce.
pub fn sign_request(
    key: &SigningKey,
    device: &str,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    now: i64,
) -> Result<SignatureHeaders, RequestError> {
    let nonce = new_nonce()?;
    sign_request_with_nonce(key, device, method, path_and_query, body, now, &nonce)
}

/// [`sign_request`] with a given nonce (tests; a real request needs a fresh one).
pub fn sign_request_with_nonce(
    key: &SigningKey,
    device: &str,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    now: i64,
    nonce: &str,
) -> Result<SignatureHeaders, RequestError> {
    let digest = content_digest(body);
    let text = signing_string(
        method,
        path_and_query,
        now,
        nonce,
        &digest,
        device,
        &key.public_key(),
    )?;
    Ok(SignatureHeaders {
        device: device.to_owned(),
        timestamp: now.to_string(),
        nonce: nonce.to_owned(),
        content_digest: digest,
        signature: hex::encode(key.sign_raw(text.as_bytes())),
    })
}

/// Verifies a received request against the device's public key: the headers' form, the
/// timestamp within `max_skew_secs` of `now` either way, the body's digest, and the
/// signature over method, path (with query), timestamp, nonce, digest, device and key id.
/// The caller must still refuse a nonce it has seen from this device within the window.
pub fn verify_request(
    public: &PublicKey,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    headers: &SignatureHeaders,
    now: i64,
    max_skew_secs: u64,
) -> Result<VerifiedRequest, RequestError> {
    check_device_id(&headers.device)?;
    check_nonce(&headers.nonce)?;
    let timestamp = parse_timestamp(&headers.timestamp)?;
    if !is_lower_hex(&headers.signature, 128) {
        return Err(malformed(HEADER_SIGNATURE, "128 lower-case hex digits"));
    }
    let skew = i64::try_from(max_skew_secs).unwrap_or(i64::MAX);
    if timestamp < now.saturating_sub(skew) {
        return Err(RequestError::Stale {
            timestamp,
            now,
            max_skew: max_skew_secs,
        });
    }
    if timestamp > now.saturating_add(skew) {
        return Err(RequestError::Future {
            timestamp,
            now,
            max_skew: max_skew_secs,
        });
    }
    if headers.content_digest != content_digest(body) {
        return Err(RequestError::DigestMismatch);
    }
    let text = signing_string(
        method,
        path_and_query,
        timestamp,
        &headers.nonce,
        &headers.content_digest,
        &headers.device,
        public,
    )?;
    public
        .verify(text.as_bytes(), &headers.signature)
        .map_err(|_| RequestError::BadSignature)?;
    Ok(VerifiedRequest {
        device: headers.device.clone(),
        timestamp,
        nonce: headers.nonce.clone(),
    })
}

/// Parses a device's ed25519 public key given as 64 lower-case hex digits, refusing
/// points that are not on the curve and weak (small-order) keys.
pub fn parse_device_public_key(hex_key: &str) -> Result<PublicKey, RequestError> {
    let bad = |reason: &str| malformed("the device public key", reason);
    if !is_lower_hex(hex_key, 64) {
        return Err(bad("64 lower-case hex digits (an ed25519 public key)"));
    }
    let mut raw = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut raw).map_err(|_| bad("not hex"))?;
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&raw)
        .map_err(|_| bad("not a valid ed25519 point"))?;
    if vk.is_weak() {
        return Err(bad("a weak (small-order) ed25519 key"));
    }
    Ok(PublicKey::ed25519(&raw))
}

#[cfg(test)]
mod tests;
