//! API tokens for people: random 32 bytes shown once as hex, stored only as their SHA-256,
//! each with one role. Creating, listing, revoking and looking up a presented token: plain
//! functions on a connection, shared by the HTTP API and the `token` subcommands.

use std::fmt;
use std::str::FromStr;

use rand_core::RngCore;
use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The roles a token can carry (see DESIGN.md, "Identities and access").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
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

    /// Every role.
    pub const ALL: [TokenRole; 5] = [
        TokenRole::Admin,
        TokenRole::Publisher,
        TokenRole::Operator,
        TokenRole::Auditor,
        TokenRole::Restorer,
    ];
}

impl fmt::Display for TokenRole {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TokenRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        TokenRole::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown role {:?}: use admin, publisher, operator, auditor or restorer",
                    s.chars().take(32).collect::<String>()
                )
            })
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

/// Longest label a token may carry.
pub const MAX_LABEL_CHARS: usize = 128;

/// Why a token operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The label is empty, too long or holds control characters.
    #[error("invalid label: {0}")]
    Label(String),
    /// No token has this id.
    #[error("no token with id {0}")]
    NotFound(i64),
    /// The random generator failed.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// The database failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// A token as listed: never the token or its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    /// Its id.
    pub id: i64,
    /// Its role.
    pub role: TokenRole,
    /// What it is for.
    pub label: String,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Revocation time, Unix seconds; `None` while it is valid.
    pub revoked_at: Option<i64>,
}

/// Checks a label: 1 to [`MAX_LABEL_CHARS`] characters, no control characters.
pub fn check_label(label: &str) -> Result<(), TokenError> {
    let n = label.chars().count();
    if label.trim().is_empty() || n > MAX_LABEL_CHARS {
        return Err(TokenError::Label(format!(
            "give 1 to {MAX_LABEL_CHARS} characters (got {n})"
        )));
    }
    if label.chars().any(char::is_control) {
        return Err(TokenError::Label(
            "control characters are not allowed".into(),
        ));
    }
    Ok(())
}

/// Creates a token with `role` and `label`; returns its id and the token, which exists
/// nowhere else: show it once.
pub fn create_token(
    conn: &Connection,
    role: TokenRole,
    label: &str,
    now: i64,
) -> Result<(i64, ApiToken), TokenError> {
    check_label(label)?;
    let token = ApiToken::generate()?;
    let id = insert_token(conn, &token, role, label, now)?;
    Ok((id, token))
}

fn info_row(r: &rusqlite::Row) -> rusqlite::Result<TokenInfo> {
    let role: String = r.get(1)?;
    let role = role.parse::<TokenRole>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, e.into())
    })?;
    Ok(TokenInfo {
        id: r.get(0)?,
        role,
        label: r.get(2)?,
        created_at: r.get(3)?,
        revoked_at: r.get(4)?,
    })
}

/// Every token, oldest first.
pub fn list_tokens(conn: &Connection) -> Result<Vec<TokenInfo>, TokenError> {
    let mut stmt =
        conn.prepare("SELECT id, role, label, created_at, revoked_at FROM api_tokens ORDER BY id")?;
    let rows = stmt.query_map([], info_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Revokes a token (at once: every request looks the token up). Revoking a revoked token
/// changes nothing and returns it as it is.
pub fn revoke_token(conn: &Connection, id: i64, now: i64) -> Result<TokenInfo, TokenError> {
    conn.execute(
        "UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
        rusqlite::params![id, now],
    )?;
    conn.query_row(
        "SELECT id, role, label, created_at, revoked_at FROM api_tokens WHERE id = ?1",
        [id],
        info_row,
    )
    .optional()?
    .ok_or(TokenError::NotFound(id))
}

/// Whether a presented value has a token's shape: 64 lowercase hex digits.
pub fn looks_like_token(presented: &str) -> bool {
    presented.len() == 64
        && presented
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Finds the token a request presents. `None` for an unknown or malformed token; a revoked
/// one is returned with `revoked_at` set, for the caller to refuse. The stored hash is
/// compared in constant time after the indexed lookup.
pub fn lookup_token(conn: &Connection, presented: &str) -> Result<Option<TokenInfo>, TokenError> {
    if !looks_like_token(presented) {
        return Ok(None);
    }
    let hash = hash_token(presented);
    let row = conn
        .query_row(
            "SELECT id, role, label, created_at, revoked_at, token_sha256 FROM api_tokens
             WHERE token_sha256 = ?1",
            [&hash],
            |r| Ok((info_row(r)?, r.get::<_, String>(5)?)),
        )
        .optional()?;
    Ok(row.and_then(|(info, stored)| {
        bool::from(stored.as_bytes().ct_eq(hash.as_bytes())).then_some(info)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(crate::db::MIGRATIONS[0].sql).unwrap();
        c
    }

    #[test]
    fn created_tokens_are_found_until_revoked() {
        let c = db();
        let (id, t) = create_token(&c, TokenRole::Publisher, "ci", 10).unwrap();
        let found = lookup_token(&c, t.expose_dangerous()).unwrap().unwrap();
        assert_eq!(
            (found.id, found.role, found.revoked_at),
            (id, TokenRole::Publisher, None)
        );
        assert!(lookup_token(&c, &"0".repeat(64)).unwrap().is_none());
        assert!(lookup_token(&c, "short").unwrap().is_none());
        let r = revoke_token(&c, id, 20).unwrap();
        assert_eq!(r.revoked_at, Some(20));
        assert_eq!(revoke_token(&c, id, 30).unwrap().revoked_at, Some(20));
        assert_eq!(
            lookup_token(&c, t.expose_dangerous())
                .unwrap()
                .unwrap()
                .revoked_at,
            Some(20)
        );
        assert!(matches!(
            revoke_token(&c, 99, 1),
            Err(TokenError::NotFound(99))
        ));
        assert_eq!(list_tokens(&c).unwrap().len(), 1);
    }

    #[test]
    fn labels_and_roles_are_checked() {
        assert!(check_label("").is_err());
        assert!(check_label("a\nb").is_err());
        assert!(check_label(&"x".repeat(129)).is_err());
        check_label("release CI").unwrap();
        for r in TokenRole::ALL {
            assert_eq!(r.as_str().parse::<TokenRole>().unwrap(), r);
        }
        assert!("root".parse::<TokenRole>().is_err());
    }

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
