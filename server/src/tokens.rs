//! API tokens for people: random 32 bytes shown once as hex, stored only as their SHA-256,
//! each with one role. (Creating, listing, revoking and checking tokens on requests come with
//! the rest of issue 3.)

use std::fmt;

use rand_core::RngCore;
use rusqlite::Connection;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The roles a token can carry (see DESIGN.md, "Identities and access").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRole {
    /// Everything.
    Admin,
    /// Uploads and publishes bundles.
    Publisher,
    /// Runs rollouts.
    Operator,
    /// Reads everything, changes nothing.
    Auditor,
    /// Requests backup restores.
    Restorer,
}

impl TokenRole {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRole::Admin => "admin",
            TokenRole::Publisher => "publisher",
            TokenRole::Operator => "operator",
            TokenRole::Auditor => "auditor",
            TokenRole::Restorer => "restorer",
        }
    }
}

/// The operating system's random generator failed.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct RandomError(String);

/// Fills `buf` from the operating system's generator.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), RandomError> {
    rand_core::OsRng
        .try_fill_bytes(buf)
        .map_err(|e| RandomError(e.to_string()))
}

/// A secret API token. Zeroized on drop; `Debug` prints `<redacted>`; the value leaves only
/// through [`ApiToken::expose_dangerous`].
pub struct ApiToken(Zeroizing<String>);

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

impl ApiToken {
    /// A new random token: 32 bytes from the operating system, as 64 hex digits.
    pub fn generate() -> Result<ApiToken, RandomError> {
        let mut raw = Zeroizing::new([0u8; 32]);
        random_bytes(&mut raw[..])?;
        Ok(ApiToken(Zeroizing::new(hex::encode(&raw[..]))))
    }

    /// The token itself. Dangerous: show it once to the person it is for, log it never.
    pub fn expose_dangerous(&self) -> &str {
        &self.0
    }

    /// What the database keeps: hex SHA-256 of the token. A token is 256 random bits, so a
    /// fast hash is enough; no password hashing is needed.
    pub fn sha256_hex(&self) -> String {
        hash_token(&self.0)
    }
}

/// Hex SHA-256 of a presented token, to look it up.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Records a token's hash with its role and a label; returns its id.
pub fn insert_token(
    conn: &Connection,
    token: &ApiToken,
    role: TokenRole,
    label: &str,
    now: i64,
) -> rusqlite::Result<i64> {
    conn.execute(
        "INSERT INTO api_tokens (token_sha256, role, label, created_at) VALUES (?1, ?2, ?3, ?4)",
        rusqlite::params![token.sha256_hex(), role.as_str(), label, now],
    )?;
    Ok(conn.last_insert_rowid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex_and_never_debug_printed() {
        let a = ApiToken::generate().unwrap();
        let b = ApiToken::generate().unwrap();
        assert_eq!(a.expose_dangerous().len(), 64);
        assert!(a.expose_dangerous().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.expose_dangerous(), b.expose_dangerous());
        assert!(!format!("{a:?}").contains(a.expose_dangerous()));
        assert_eq!(a.sha256_hex(), hash_token(a.expose_dangerous()));
        assert_ne!(a.sha256_hex(), a.expose_dangerous());
    }
}
