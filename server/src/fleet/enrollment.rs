//! Enrollment tokens and enrolling: an operator creates a single-use token (stored only as
//! its SHA-256, optionally bound to a group, expiring); a terminal presents it once with its
//! public keys and hardware model and becomes a device. Refusals change nothing.

use std::fmt;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use super::{check_name, FleetError};
use crate::tokens::{hash_token, looks_like_token, random_bytes, ApiToken};

/// Lifetime of a token when none is given: one day.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 86_400;
/// Shortest lifetime accepted.
pub const MIN_TOKEN_TTL_SECS: u64 = 60;
/// Longest lifetime accepted: 30 days.
pub const MAX_TOKEN_TTL_SECS: u64 = 30 * 86_400;

/// An enrollment token as listed: never the token or its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnrollmentTokenInfo {
    /// Its id.
    pub id: i64,
    /// The group a device enrolled with it joins.
    pub group: Option<String>,
    /// The API token that created it; `None` when made on the server host.
    pub created_by: Option<i64>,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
    /// When it was used; `None` while unused.
    pub used_at: Option<i64>,
    /// The device enrolled with it, once used.
    pub used_by_device: Option<String>,
    /// When it was revoked; a revoked token enrolls nothing.
    pub revoked_at: Option<i64>,
}

impl EnrollmentTokenInfo {
    /// `used`, `revoked`, `expired` (unused past its expiry at `now`) or `unused`.
    pub fn state(&self, now: i64) -> &'static str {
        if self.used_at.is_some() {
            "used"
        } else if self.revoked_at.is_some() {
            "revoked"
        } else if now >= self.expires_at {
            "expired"
        } else {
            "unused"
        }
    }
}

const TOKEN_COLUMNS: &str =
    "id, device_group, created_by, created_at, expires_at, used_at, used_by_device, revoked_at";

fn token_row(r: &rusqlite::Row) -> rusqlite::Result<EnrollmentTokenInfo> {
    Ok(EnrollmentTokenInfo {
        id: r.get(0)?,
        group: r.get(1)?,
        created_by: r.get(2)?,
        created_at: r.get(3)?,
        expires_at: r.get(4)?,
        used_at: r.get(5)?,
        used_by_device: r.get(6)?,
        revoked_at: r.get(7)?,
    })
}

/// Most enrollment tokens listed at once (the newest).
pub const MAX_LISTED_TOKENS: u32 = 1000;

/// The newest [`MAX_LISTED_TOKENS`] enrollment tokens, newest first (never a token or its
/// hash).
pub fn list_enrollment_tokens(conn: &Connection) -> Result<Vec<EnrollmentTokenInfo>, FleetError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {TOKEN_COLUMNS} FROM enrollment_tokens ORDER BY id DESC LIMIT ?1"
    ))?;
    let rows = stmt.query_map([MAX_LISTED_TOKENS], token_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The enrollment token `id`, if there is one.
pub fn enrollment_token(
    conn: &Connection,
    id: i64,
) -> Result<Option<EnrollmentTokenInfo>, FleetError> {
    Ok(conn
        .query_row(
            &format!("SELECT {TOKEN_COLUMNS} FROM enrollment_tokens WHERE id = ?1"),
            [id],
            token_row,
        )
        .optional()?)
}

/// Revokes the unused enrollment token `id` at `now`: an enrollment with it is refused from
/// then on. Returns its record and whether this call revoked it (`false`: it was revoked
/// already, and keeps its first revocation time). A used token cannot be revoked (revoke
/// the device it enrolled instead); callers audit only a new revocation.
pub fn revoke_enrollment_token(
    conn: &Connection,
    id: i64,
    now: i64,
) -> Result<(EnrollmentTokenInfo, bool), FleetError> {
    let info = enrollment_token(conn, id)?.ok_or(FleetError::EnrollmentTokenNotFound(id))?;
    if info.used_at.is_some() {
        return Err(FleetError::EnrollmentTokenUsed {
            id,
            device: info.used_by_device.clone().unwrap_or_default(),
        });
    }
    if info.revoked_at.is_some() {
        return Ok((info, false));
    }
    conn.execute(
        "UPDATE enrollment_tokens SET revoked_at = ?2
         WHERE id = ?1 AND revoked_at IS NULL AND used_at IS NULL",
        rusqlite::params![id, now],
    )?;
    let info = enrollment_token(conn, id)?.ok_or(FleetError::EnrollmentTokenNotFound(id))?;
    Ok((info, true))
}

/// Creates an enrollment token valid for `ttl_secs`; returns its record and the token,
/// which exists nowhere else: show it once.
pub fn create_enrollment_token(
    conn: &Connection,
    group: Option<&str>,
    ttl_secs: u64,
    created_by: Option<i64>,
    now: i64,
) -> Result<(EnrollmentTokenInfo, ApiToken), FleetError> {
    if let Some(g) = group {
        check_name(g).map_err(FleetError::InvalidGroup)?;
    }
    if !(MIN_TOKEN_TTL_SECS..=MAX_TOKEN_TTL_SECS).contains(&ttl_secs) {
        return Err(FleetError::InvalidExpiry(format!(
            "{ttl_secs} s is outside {MIN_TOKEN_TTL_SECS} s to {MAX_TOKEN_TTL_SECS} s (30 days)"
        )));
    }
    let token = ApiToken::generate()?;
    let expires_at = now.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX));
    conn.execute(
        "INSERT INTO enrollment_tokens (token_sha256, device_group, created_by, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        rusqlite::params![token.sha256_hex(), group, created_by, now, expires_at],
    )?;
    let info = EnrollmentTokenInfo {
        id: conn.last_insert_rowid(),
        group: group.map(str::to_owned),
        created_by,
        created_at: now,
        expires_at,
        used_at: None,
        used_by_device: None,
        revoked_at: None,
    };
    Ok((info, token))
}

/// What a terminal sends to enroll (body of `POST /api/v1/enroll`). `Debug` hides the token.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The enrollment token.
    pub token: String,
    /// The device's ed25519 identity key, 64 lower-case hex digits.
    pub public_key: String,
    /// The device's age X25519 backup recipient (`age1...`).
    pub backup_recipient: String,
    /// The terminal's hardware model.
    pub hardware_model: String,
}

impl fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("token", &"<redacted>")
            .field("public_key", &self.public_key)
            .field("backup_recipient", &self.backup_recipient)
            .field("hardware_model", &self.hardware_model)
            .finish()
    }
}

impl EnrollRequest {
    /// Checks the keys and model (not the token): what can be refused without the database.
    pub fn validate(&self) -> Result<(), FleetError> {
        otter_keys::request::parse_device_public_key(&self.public_key)
            .map_err(|e| FleetError::InvalidPublicKey(e.to_string()))?;
        let r = self.backup_recipient.trim();
        if r != self.backup_recipient || !r.starts_with("age1") {
            return Err(FleetError::InvalidRecipient(
                "an age X25519 recipient (age1...) is expected".into(),
            ));
        }
        r.parse::<otter_keys::age::x25519::Recipient>()
            .map_err(|_| FleetError::InvalidRecipient("not a valid age X25519 recipient".into()))?;
        check_name(&self.hardware_model).map_err(FleetError::InvalidModel)
    }
}

/// A device just enrolled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Enrolled {
    /// Its new id.
    pub device_id: String,
    /// The group it joined (the token's).
    pub group: Option<String>,
    /// Its hardware model.
    pub hardware_model: String,
    /// Enrollment time, Unix seconds.
    pub enrolled_at: i64,
    /// Its backups are write-only (the fleet's or its group's `[backups]` setting): it is
    /// told to keep no backup identity and to encrypt to the recovery key alone.
    pub backups_write_only: bool,
}

/// Enrolls a device: in one transaction, checks the token (known, unused, unexpired) and
/// that the identity key is new, records the device and marks the token used. Any refusal
/// leaves the database as it was. Not write-only; see [`enroll_with`].
pub fn enroll(
    conn: &mut Connection,
    req: &EnrollRequest,
    now: i64,
) -> Result<Enrolled, FleetError> {
    enroll_with(conn, req, now, |_| false)
}

/// [`enroll`], with `write_only` deciding from the token's group whether the device's
/// backups are write-only; the decision is recorded in the `device.enroll` audit entry.
pub fn enroll_with(
    conn: &mut Connection,
    req: &EnrollRequest,
    now: i64,
    write_only: impl Fn(Option<&str>) -> bool,
) -> Result<Enrolled, FleetError> {
    req.validate()?;
    if !looks_like_token(&req.token) {
        return Err(FleetError::TokenUnknown);
    }
    let hash = hash_token(&req.token);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (token_id, group, expires_at, used_at, revoked_at) = tx
        .query_row(
            "SELECT id, device_group, expires_at, used_at, revoked_at FROM enrollment_tokens
             WHERE token_sha256 = ?1",
            [&hash],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                ))
            },
        )
        .optional()?
        .ok_or(FleetError::TokenUnknown)?;
    if let Some(revoked_at) = revoked_at {
        return Err(FleetError::TokenRevoked { revoked_at });
    }
    if used_at.is_some() {
        return Err(FleetError::TokenUsed);
    }
    if now >= expires_at {
        return Err(FleetError::TokenExpired {
            expired_at: expires_at,
        });
    }
    let existing: Option<String> = tx
        .query_row(
            "SELECT device_id FROM devices WHERE public_key = ?1",
            [&req.public_key],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(id) = existing {
        return Err(FleetError::KeyAlreadyEnrolled(id));
    }
    let mut raw = [0u8; 16];
    random_bytes(&mut raw)?;
    let device_id = hex::encode(raw);
    let backups_write_only = write_only(group.as_deref());
    // A write-only device discards its backup identity when it learns this from the answer:
    // its recipient is not kept, so that nobody re-encrypts a backup to a key that is gone.
    let recipient = if backups_write_only {
        ""
    } else {
        req.backup_recipient.as_str()
    };
    tx.execute(
        "INSERT INTO devices (device_id, public_key, backup_recipient, hardware_model,
                              device_group, enrollment_token, enrolled_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        rusqlite::params![
            device_id,
            req.public_key,
            recipient,
            req.hardware_model,
            group,
            token_id,
            now
        ],
    )?;
    tx.execute(
        "UPDATE enrollment_tokens SET used_at = ?2, used_by_device = ?3 WHERE id = ?1",
        rusqlite::params![token_id, now, device_id],
    )?;
    crate::audit::append(
        &tx,
        &crate::audit::Actor::device(&device_id),
        "device.enroll",
        &format!("device:{device_id}"),
        &serde_json::json!({
            "hardware_model": req.hardware_model,
            "group": group,
            "enrollment_token": token_id,
            "public_key": req.public_key,
            "backups_write_only": backups_write_only,
        }),
        now,
    )?;
    tx.commit()?;
    Ok(Enrolled {
        device_id,
        group,
        hardware_model: req.hardware_model.clone(),
        enrolled_at: now,
        backups_write_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use otter_keys::crypto::SigningKey;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.pragma_update(None, "foreign_keys", "ON").unwrap();
        for m in crate::db::MIGRATIONS {
            c.execute_batch(m.sql).unwrap();
        }
        c
    }

    fn request(token: &str) -> EnrollRequest {
        EnrollRequest {
            token: token.into(),
            public_key: hex::encode(SigningKey::generate().public_bytes()),
            backup_recipient: otter_keys::age::x25519::Identity::generate()
                .to_public()
                .to_string(),
            hardware_model: "pos-a".into(),
        }
    }

    #[test]
    fn a_token_enrolls_once_into_its_group() {
        let mut c = db();
        let (info, t) = create_enrollment_token(&c, Some("lane-1"), 3600, None, 100).unwrap();
        assert_eq!(info.expires_at, 3700);
        let e = enroll(&mut c, &request(t.expose_dangerous()), 200).unwrap();
        assert_eq!(e.group.as_deref(), Some("lane-1"));
        assert!(!e.backups_write_only);
        assert_eq!(e.device_id.len(), 32);
        assert!(matches!(
            enroll(&mut c, &request(t.expose_dangerous()), 201),
            Err(FleetError::TokenUsed)
        ));
        let n: i64 = c
            .query_row("SELECT COUNT(*) FROM devices", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn the_write_only_decision_follows_the_group_and_is_audited() {
        let mut c = db();
        let (_, t) = create_enrollment_token(&c, Some("lab"), 3600, None, 100).unwrap();
        let e = enroll_with(&mut c, &request(t.expose_dangerous()), 200, |g| {
            g == Some("lab")
        })
        .unwrap();
        assert!(e.backups_write_only);
        let (_, t) = create_enrollment_token(&c, Some("shop"), 3600, None, 100).unwrap();
        let e = enroll_with(&mut c, &request(t.expose_dangerous()), 200, |g| {
            g == Some("lab")
        })
        .unwrap();
        assert!(!e.backups_write_only);
        let audited: Vec<String> = c
            .prepare("SELECT details FROM audit_log WHERE action = 'device.enroll' ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(audited.len(), 2);
        assert!(
            audited[0].contains("\"backups_write_only\":true"),
            "{}",
            audited[0]
        );
        assert!(
            audited[1].contains("\"backups_write_only\":false"),
            "{}",
            audited[1]
        );
    }

    #[test]
    fn refusals_change_nothing() {
        let mut c = db();
        let (_, t) = create_enrollment_token(&c, None, 60, None, 0).unwrap();
        assert!(matches!(
            enroll(&mut c, &request(t.expose_dangerous()), 60),
            Err(FleetError::TokenExpired { expired_at: 60 })
        ));
        let (_, t) = create_enrollment_token(&c, None, 60, None, 0).unwrap();
        let mut bad = request(t.expose_dangerous());
        bad.public_key = "00".repeat(32);
        assert!(matches!(
            enroll(&mut c, &bad, 1),
            Err(FleetError::InvalidPublicKey(_))
        ));
        let mut bad = request(t.expose_dangerous());
        bad.backup_recipient = "age1notarecipient".into();
        assert!(matches!(
            enroll(&mut c, &bad, 1),
            Err(FleetError::InvalidRecipient(_))
        ));
        assert!(matches!(
            enroll(&mut c, &request(&"0".repeat(64)), 1),
            Err(FleetError::TokenUnknown)
        ));
        let used: Option<i64> = c
            .query_row("SELECT MAX(used_at) FROM enrollment_tokens", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(used, None);
        // The still-valid token works after all that.
        let ok = request(t.expose_dangerous());
        enroll(&mut c, &ok, 2).unwrap();
        // The same identity key cannot enroll twice.
        let (_, t2) = create_enrollment_token(&c, None, 60, None, 0).unwrap();
        let mut again = ok.clone();
        again.token = t2.expose_dangerous().into();
        assert!(matches!(
            enroll(&mut c, &again, 3),
            Err(FleetError::KeyAlreadyEnrolled(_))
        ));
    }

    #[test]
    fn a_revoked_token_enrolls_nothing_and_a_used_one_cannot_be_revoked() {
        let mut c = db();
        let (a, ta) = create_enrollment_token(&c, Some("lane-1"), 3600, None, 100).unwrap();
        let (b, tb) = create_enrollment_token(&c, None, 3600, None, 100).unwrap();
        assert_eq!(a.state(100), "unused");
        let (r, new) = revoke_enrollment_token(&c, a.id, 150).unwrap();
        assert!(new);
        assert_eq!((r.revoked_at, r.state(150)), (Some(150), "revoked"));
        // Again: no change, the first time stays.
        let (r, new) = revoke_enrollment_token(&c, a.id, 160).unwrap();
        assert!(!new);
        assert_eq!(r.revoked_at, Some(150));
        assert!(matches!(
            enroll(&mut c, &request(ta.expose_dangerous()), 170),
            Err(FleetError::TokenRevoked { revoked_at: 150 })
        ));
        let n: i64 = c
            .query_row("SELECT COUNT(*) FROM devices", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0, "a refused enrollment records nothing");
        let e = enroll(&mut c, &request(tb.expose_dangerous()), 180).unwrap();
        assert!(matches!(
            revoke_enrollment_token(&c, b.id, 190),
            Err(FleetError::EnrollmentTokenUsed { id, ref device }) if id == b.id && *device == e.device_id
        ));
        assert!(matches!(
            revoke_enrollment_token(&c, 999, 190),
            Err(FleetError::EnrollmentTokenNotFound(999))
        ));
        let listed = list_enrollment_tokens(&c).unwrap();
        assert_eq!(
            listed.iter().map(|t| t.id).collect::<Vec<_>>(),
            [b.id, a.id]
        );
        assert_eq!(listed[0].state(200), "used");
        assert_eq!(
            listed[0].used_by_device.as_deref(),
            Some(e.device_id.as_str())
        );
        assert_eq!(listed[1].state(200), "revoked");
        let (x, _) = create_enrollment_token(&c, None, 60, None, 0).unwrap();
        assert_eq!(x.state(60), "expired");
    }

    #[test]
    fn lifetimes_and_groups_are_checked_and_debug_hides_the_token() {
        let c = db();
        assert!(create_enrollment_token(&c, None, 59, None, 0).is_err());
        assert!(create_enrollment_token(&c, None, MAX_TOKEN_TTL_SECS + 1, None, 0).is_err());
        assert!(create_enrollment_token(&c, Some("a b"), 3600, None, 0).is_err());
        let r = request(&"ab".repeat(32));
        assert!(!format!("{r:?}").contains("abab"));
    }
}
