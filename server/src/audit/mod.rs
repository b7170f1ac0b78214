//! The append-only, hash-chained audit log: every change (publish, yank, rollout change,
//! enrollment, token change, restore request) is appended with [`append`] in the same
//! database transaction as the change itself, and [`verify`] walks the chain.
//!
//! Entry `n` carries `hash = SHA-256(prev_hash || canonical entry bytes)`, where
//! `prev_hash` is entry `n - 1`'s hash (32 zero bytes for entry 1) and the entry bytes are
//! the canonical JSON of `{seq, at, actor, actor_name, action, subject, details}` (details as
//! the JSON text stored). Editing, deleting or reordering a row breaks the chain at that
//! row. Dropping the newest rows does not: that is detected only against a head (sequence
//! number and hash) recorded elsewhere, which [`verify`] takes as an anchor.

use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Longest subject or action accepted.
const MAX_SHORT: usize = 256;

/// What went wrong with the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The database failed.
    #[error("audit log database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// An entry could not be encoded.
    #[error("audit entry encoding: {0}")]
    Encode(String),
    /// An entry is not acceptable (empty or oversized action or subject).
    #[error("invalid audit entry: {0}")]
    Invalid(String),
}

/// An audit failure inside a database closure (such as the repository's commit hooks).
pub fn db_error(e: AuditError) -> crate::db::DbError {
    match e {
        AuditError::Sqlite(e) => crate::db::DbError::Sqlite(e),
        other => crate::db::DbError::Task(other.to_string()),
    }
}

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Actor {
    /// `token:ID`, `device:ID`, `host` (a command on the server host) or `server` (the server
    /// itself, e.g. an automatic rollout halt).
    pub id: String,
    /// A name for people: the token's label, the command run, ...
    pub name: Option<String>,
}

impl Actor {
    /// An API token; its label is looked up when the entry is appended.
    pub fn token(id: i64) -> Actor {
        Actor {
            id: format!("token:{id}"),
            name: None,
        }
    }

    /// An enrolled device.
    pub fn device(device_id: &str) -> Actor {
        Actor {
            id: format!("device:{device_id}"),
            name: None,
        }
    }

    /// A command run on the server host, e.g. `otter-server token create`.
    pub fn host(command: &str) -> Actor {
        Actor {
            id: "host".into(),
            name: Some(command.into()),
        }
    }

    /// The server itself.
    pub fn server(what: &str) -> Actor {
        Actor {
            id: "server".into(),
            name: Some(what.into()),
        }
    }
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Position in the chain, from 1 without gaps.
    pub seq: i64,
    /// Time, Unix seconds.
    pub at: i64,
    /// Who (see [`Actor::id`]).
    pub actor: String,
    /// Who, for people.
    pub actor_name: Option<String>,
    /// What, e.g. `release.publish`, `rollout.pause`, `token.create`.
    pub action: String,
    /// On what, e.g. `release:pinpad/1.2.0`, `token:7`, `device:ab12...`.
    pub subject: String,
    /// Details, canonical JSON text.
    pub details: String,
    /// The previous entry's hash, hex.
    pub prev_hash: String,
    /// This entry's hash, hex.
    pub hash: String,
}

/// The newest entry: what an operator records elsewhere to detect a truncated tail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Head {
    /// Its sequence number (0 for an empty log).
    pub seq: i64,
    /// Its hash ([`GENESIS`] for an empty log).
    pub hash: String,
}

impl std::fmt::Display for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

impl std::str::FromStr for Head {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (seq, hash) = s
            .split_once(':')
            .ok_or_else(|| "an anchor is SEQ:HASH, as audit verify prints it".to_string())?;
        let seq: i64 = seq
            .parse()
            .map_err(|_| format!("{seq:?} is not a sequence number"))?;
        if seq < 0 || hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("an anchor is SEQ:HASH with a 64-digit hex hash".into());
        }
        Ok(Head {
            seq,
            hash: hash.to_ascii_lowercase(),
        })
    }
}

/// The bytes hashed for an entry (after the previous hash).
fn entry_bytes(
    seq: i64,
    at: i64,
    actor: &str,
    actor_name: Option<&str>,
    action: &str,
    subject: &str,
    details: &str,
) -> Result<Vec<u8>, AuditError> {
    let v = json!({
        "seq": seq,
        "at": at,
        "actor": actor,
        "actor_name": actor_name,
        "action": action,
        "subject": subject,
        "details": details,
    });
    otter_keys::canonical::to_canonical_bytes(&v).map_err(|e| AuditError::Encode(e.to_string()))
}

/// `SHA-256(prev || bytes)`, hex; `None` when `prev` is not 64 hex digits.
fn chain_hash(prev: &str, bytes: &[u8]) -> Option<String> {
    let prev = hex::decode(prev).ok().filter(|p| p.len() == 32)?;
    let mut h = Sha256::new();
    h.update(&prev);
    h.update(bytes);
    Some(hex::encode(h.finalize()))
}

fn check_short(what: &str, v: &str) -> Result<(), AuditError> {
    if v.is_empty() || v.chars().count() > MAX_SHORT || v.chars().any(char::is_control) {
        return Err(AuditError::Invalid(format!(
            "{what} must be 1 to {MAX_SHORT} characters without control characters"
        )));
    }
    Ok(())
}

/// Appends an entry at `now`. Call it inside the transaction that makes the change, so that
/// the change and its entry commit together or not at all. A token actor's label is looked
/// up here.
pub fn append(
    conn: &Connection,
    actor: &Actor,
    action: &str,
    subject: &str,
    details: &Value,
    now: i64,
) -> Result<AuditEntry, AuditError> {
    check_short("the action", action)?;
    check_short("the subject", subject)?;
    let details = String::from_utf8(
        otter_keys::canonical::to_canonical_bytes(details)
            .map_err(|e| AuditError::Encode(e.to_string()))?,
    )
    .map_err(|e| AuditError::Encode(e.to_string()))?;
    let mut actor_name = actor.name.clone();
    if actor_name.is_none() {
        if let Some(id) = actor
            .id
            .strip_prefix("token:")
            .and_then(|i| i.parse::<i64>().ok())
        {
            actor_name = conn
                .query_row("SELECT label FROM api_tokens WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()?;
        }
    }
    let head = head(conn)?;
    let seq = head.seq + 1;
    let bytes = entry_bytes(
        seq,
        now,
        &actor.id,
        actor_name.as_deref(),
        action,
        subject,
        &details,
    )?;
    let hash = chain_hash(&head.hash, &bytes).ok_or_else(|| {
        AuditError::Encode(format!(
            "entry {} holds a malformed hash; run otter-server audit verify",
            head.seq
        ))
    })?;
    conn.execute(
        "INSERT INTO audit_log (seq, at, actor, actor_name, action, subject, details, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        rusqlite::params![
            seq,
            now,
            actor.id,
            actor_name,
            action,
            subject,
            details,
            head.hash,
            hash
        ],
    )?;
    Ok(AuditEntry {
        seq,
        at: now,
        actor: actor.id.clone(),
        actor_name,
        action: action.into(),
        subject: subject.into(),
        details,
        prev_hash: head.hash,
        hash,
    })
}

/// The newest entry's sequence number and hash.
pub fn head(conn: &Connection) -> Result<Head, AuditError> {
    Ok(conn
        .query_row(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| {
                Ok(Head {
                    seq: r.get(0)?,
                    hash: r.get(1)?,
                })
            },
        )
        .optional()?
        .unwrap_or(Head {
            seq: 0,
            hash: GENESIS.into(),
        }))
}

const COLUMNS: &str = "seq, at, actor, actor_name, action, subject, details, prev_hash, hash";

fn entry_row(r: &rusqlite::Row) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        seq: r.get(0)?,
        at: r.get(1)?,
        actor: r.get(2)?,
        actor_name: r.get(3)?,
        action: r.get(4)?,
        subject: r.get(5)?,
        details: r.get(6)?,
        prev_hash: r.get(7)?,
        hash: r.get(8)?,
    })
}

/// Up to `limit` entries with a sequence number above `after`, oldest first.
pub fn list(conn: &Connection, after: i64, limit: u32) -> Result<Vec<AuditEntry>, AuditError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT ?2"
    ))?;
    let rows = stmt.query_map(rusqlite::params![after, limit], entry_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The first place where the chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Broken {
    /// The sequence number of the first broken entry (where one is missing: the number
    /// expected there).
    pub seq: i64,
    /// What is wrong.
    pub reason: String,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Entries that chain correctly from the first.
    pub verified: i64,
    /// The newest entry.
    pub head: Head,
    /// The first break, if any.
    pub broken: Option<Broken>,
}

/// Walks the whole chain from entry 1: sequence numbers without gaps, each `prev_hash` the
/// previous hash, each hash recomputed. With `anchor` (a head recorded earlier), also checks
/// that the entry at the anchor's sequence number still exists with the anchor's hash, which
/// detects a truncated tail.
pub fn verify(conn: &Connection, anchor: Option<&Head>) -> Result<Verification, AuditError> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM audit_log ORDER BY seq"))?;
    let mut rows = stmt.query([])?;
    let mut prev = Head {
        seq: 0,
        hash: GENESIS.into(),
    };
    let mut broken = None;
    let mut anchor_seen = anchor.is_none_or(|a| a.seq == 0 && a.hash == GENESIS);
    while let Some(row) = rows.next()? {
        let e = entry_row(row)?;
        let fail = |reason: String| Broken { seq: e.seq, reason };
        if e.seq != prev.seq + 1 {
            broken = Some(if e.seq > prev.seq + 1 {
                Broken {
                    seq: prev.seq + 1,
                    reason: format!(
                        "entry {} is missing (entry {} follows entry {})",
                        prev.seq + 1,
                        e.seq,
                        prev.seq
                    ),
                }
            } else {
                fail(format!("entry {} is out of order", e.seq))
            });
            break;
        }
        if e.prev_hash != prev.hash {
            broken = Some(fail(format!(
                "its prev_hash is not entry {}'s hash: an entry before it was removed, \
                 replaced or reordered",
                prev.seq
            )));
            break;
        }
        let bytes = entry_bytes(
            e.seq,
            e.at,
            &e.actor,
            e.actor_name.as_deref(),
            &e.action,
            &e.subject,
            &e.details,
        )?;
        if chain_hash(&e.prev_hash, &bytes).as_deref() != Some(e.hash.as_str()) {
            broken = Some(fail(
                "its contents do not match its hash: the entry was altered".into(),
            ));
            break;
        }
        if let Some(a) = anchor {
            if a.seq == e.seq {
                if a.hash != e.hash {
                    broken = Some(fail(format!(
                        "its hash {} differs from the recorded anchor {}",
                        e.hash, a.hash
                    )));
                    break;
                }
                anchor_seen = true;
            }
        }
        prev = Head {
            seq: e.seq,
            hash: e.hash,
        };
    }
    if broken.is_none() && !anchor_seen {
        if let Some(a) = anchor {
            broken = Some(Broken {
                seq: a.seq,
                reason: format!(
                    "the log ends at entry {} but the recorded anchor names entry {}: \
                     entries were removed from the end",
                    prev.seq, a.seq
                ),
            });
        }
    }
    let verified = match &broken {
        Some(b) => b.seq - 1,
        None => prev.seq,
    };
    Ok(Verification {
        verified,
        head: head(conn)?,
        broken,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        for m in crate::db::MIGRATIONS {
            c.execute_batch(m.sql).unwrap();
        }
        c
    }

    fn filled(n: i64) -> Connection {
        let c = db();
        for i in 1..=n {
            append(
                &c,
                &Actor::host("test"),
                "token.create",
                &format!("token:{i}"),
                &json!({"role": "auditor", "n": i}),
                100 + i,
            )
            .unwrap();
        }
        c
    }

    fn unprotect(c: &Connection) {
        c.execute_batch("DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;")
            .unwrap();
    }

    #[test]
    fn an_intact_chain_verifies_and_links() {
        let c = filled(4);
        let v = verify(&c, None).unwrap();
        assert_eq!(v.verified, 4);
        assert_eq!(v.broken, None);
        let all = list(&c, 0, 100).unwrap();
        assert_eq!(all[0].prev_hash, GENESIS);
        for w in all.windows(2) {
            assert_eq!(w[1].prev_hash, w[0].hash);
        }
        assert_eq!(v.head.hash, all[3].hash);
        assert_eq!(list(&c, 2, 1).unwrap()[0].seq, 3);
        let anchor = Head {
            seq: 2,
            hash: all[1].hash.clone(),
        };
        assert_eq!(verify(&c, Some(&anchor)).unwrap().broken, None);
        assert_eq!(anchor.to_string().parse::<Head>().unwrap(), anchor);
    }

    #[test]
    fn the_triggers_refuse_edits() {
        let c = filled(2);
        assert!(c
            .execute("UPDATE audit_log SET details = '{}' WHERE seq = 1", [])
            .is_err());
        assert!(c
            .execute("DELETE FROM audit_log WHERE seq = 2", [])
            .is_err());
    }

    #[test]
    fn edits_deletions_reorders_and_truncation_are_found() {
        let c = filled(5);
        unprotect(&c);
        c.execute(
            "UPDATE audit_log SET details = '{\"role\":\"admin\"}' WHERE seq = 3",
            [],
        )
        .unwrap();
        let b = verify(&c, None).unwrap().broken.unwrap();
        assert_eq!(b.seq, 3, "{b:?}");

        let c = filled(5);
        unprotect(&c);
        c.execute("DELETE FROM audit_log WHERE seq = 2", [])
            .unwrap();
        let b = verify(&c, None).unwrap().broken.unwrap();
        assert_eq!(b.seq, 2, "{b:?}");

        // Renumbering after a deletion does not help: the chain breaks at the gap.
        let c = filled(5);
        unprotect(&c);
        c.execute_batch(
            "DELETE FROM audit_log WHERE seq = 2;
             UPDATE audit_log SET seq = seq - 1 WHERE seq > 2;",
        )
        .unwrap();
        let b = verify(&c, None).unwrap().broken.unwrap();
        assert_eq!(b.seq, 2, "{b:?}");

        // Swapping two entries' places.
        let c = filled(5);
        unprotect(&c);
        c.execute_batch(
            "UPDATE audit_log SET seq = 100 WHERE seq = 3;
             UPDATE audit_log SET seq = 3 WHERE seq = 4;
             UPDATE audit_log SET seq = 4 WHERE seq = 100;",
        )
        .unwrap();
        let b = verify(&c, None).unwrap().broken.unwrap();
        assert_eq!(b.seq, 3, "{b:?}");

        // Dropping the tail is found only against a recorded head.
        let c = filled(5);
        let anchor = verify(&c, None).unwrap().head;
        unprotect(&c);
        c.execute("DELETE FROM audit_log WHERE seq >= 4", [])
            .unwrap();
        assert_eq!(verify(&c, None).unwrap().broken, None);
        let b = verify(&c, Some(&anchor)).unwrap().broken.unwrap();
        assert_eq!(b.seq, 5, "{b:?}");
    }

    #[test]
    fn token_labels_are_looked_up_and_bad_entries_refused() {
        let c = db();
        let (id, _) =
            crate::tokens::create_token(&c, crate::tokens::TokenRole::Operator, "ops", 1).unwrap();
        let e = append(&c, &Actor::token(id), "x.y", "s", &json!({}), 5).unwrap();
        assert_eq!(e.actor_name.as_deref(), Some("ops"));
        assert_eq!(e.actor, format!("token:{id}"));
        assert!(append(&c, &Actor::token(id), "", "s", &json!({}), 5).is_err());
        assert!(append(&c, &Actor::token(id), "a", "s\n", &json!({}), 5).is_err());
        assert_eq!(head(&c).unwrap().seq, 1);
    }
}
