//! The fleet: enrollment tokens, enrolled devices with their keys, replay protection for
//! their signed requests, and what they report. Plain functions on a SQLite connection,
//! shared by the HTTP API and the `enroll-token` and `devices` subcommands; the signature
//! itself is checked by [`otter_keys::request`].
//!
//! - [`enrollment`]: single-use, expiring enrollment tokens (optionally bound to a group)
//!   and enrolling a device with one.
//! - [`devices`]: device keys, nonces, last seen, reports, listing and revoking.
//! - [`report`]: the report a device sends, with its limits.

pub mod devices;
pub mod enrollment;
pub mod report;

pub use devices::{
    device_key, list_devices, record_request, revoke_device, store_report, DeviceFilter,
    DeviceInfo, DeviceKey, RequestSeen,
};
pub use enrollment::{
    create_enrollment_token, enroll, enroll_with, enrollment_token, list_enrollment_tokens,
    revoke_enrollment_token, EnrollRequest, Enrolled, EnrollmentTokenInfo, DEFAULT_TOKEN_TTL_SECS,
    MAX_TOKEN_TTL_SECS, MIN_TOKEN_TTL_SECS,
};
pub use report::DeviceReport;

use crate::tokens::RandomError;

/// Longest hardware model or group name.
pub const MAX_NAME_LEN: usize = 64;

/// Why a fleet operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A group name is not acceptable.
    #[error("invalid group {0}")]
    InvalidGroup(String),
    /// A hardware model name is not acceptable.
    #[error("invalid hardware model {0}")]
    InvalidModel(String),
    /// A token lifetime is out of range.
    #[error("invalid expiry: {0}")]
    InvalidExpiry(String),
    /// The device's identity key is not an acceptable ed25519 public key.
    #[error("invalid public key: {0}")]
    InvalidPublicKey(String),
    /// The device's backup recipient is not an age X25519 recipient.
    #[error("invalid backup recipient: {0}")]
    InvalidRecipient(String),
    /// A report breaks its limits.
    #[error("invalid report: {0}")]
    InvalidReport(String),
    /// No enrollment token matches.
    #[error("the enrollment token is unknown: ask an operator for a new one (otter-server enroll-token create)")]
    TokenUnknown,
    /// The enrollment token was used already.
    #[error("the enrollment token was used already (tokens are single-use): ask an operator for a new one")]
    TokenUsed,
    /// The enrollment token expired.
    #[error("the enrollment token expired at {expired_at} (Unix seconds): ask an operator for a new one")]
    TokenExpired {
        /// When it expired.
        expired_at: i64,
    },
    /// The enrollment token was revoked.
    #[error("the enrollment token was revoked at {revoked_at} (Unix seconds): ask an operator for a new one")]
    TokenRevoked {
        /// When it was revoked.
        revoked_at: i64,
    },
    /// No enrollment token has this id.
    #[error("no enrollment token has id {0}: see `otter-server enroll-token list`")]
    EnrollmentTokenNotFound(i64),
    /// An enrollment token that was used already cannot be revoked.
    #[error("enrollment token {id} was used already, by device {device}: revoke the device instead (otter-server devices revoke {device})")]
    EnrollmentTokenUsed {
        /// The token's id.
        id: i64,
        /// The device it enrolled.
        device: String,
    },
    /// A device with this identity key is enrolled already.
    #[error("a device with this public key is enrolled already ({0}): enroll with a new identity, or revoke the old device")]
    KeyAlreadyEnrolled(String),
    /// No device has this id.
    #[error("no device with id {0:?}")]
    DeviceNotFound(String),
    /// The random generator failed.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// The database failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Stored JSON could not be written or read.
    #[error("stored JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// An audit entry that fails inside a fleet transaction fails it as a database error (the
/// transaction is not committed).
impl From<crate::audit::AuditError> for FleetError {
    fn from(e: crate::audit::AuditError) -> Self {
        match e {
            crate::audit::AuditError::Sqlite(e) => FleetError::Sqlite(e),
            other => FleetError::Sqlite(rusqlite::Error::ToSqlConversionFailure(Box::new(other))),
        }
    }
}

/// Checks a hardware model or group name: 1 to [`MAX_NAME_LEN`] characters of ASCII
/// letters, digits, `.`, `_` and `-`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<(), String> {
    let shown: String = name.chars().take(MAX_NAME_LEN + 8).collect();
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{shown:?}: use 1 to {MAX_NAME_LEN} characters of letters, digits, '.', '_' and '-', starting with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["pos-a", "lane.1", "A_b-3", &"x".repeat(64)] {
            check_name(ok).unwrap();
        }
        for bad in ["", "-x", ".x", "a b", "a/b", "a\n", &"x".repeat(65), "é"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
