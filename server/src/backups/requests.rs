//! Restore requests: an admin or restorer asks a device to restore one of its catalogued
//! backups (a sequence, or the latest); the device fetches its pending requests through its
//! signed API, runs the restore and reports the outcome. Each change is stored and audited
//! in the same transaction.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use serde_json::json;

use crate::audit::{self, Actor};
use crate::backups::restore_outcome::RestoreOutcome;

/// The audit action of a new restore request.
pub const REQUESTED: &str = "backup.restore_request";
/// The audit action of a device's report on a request.
pub const FINISHED: &str = "backup.restore_result";
/// Longest reason or result message kept.
pub const MAX_TEXT: usize = 1000;

/// Why a request could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The database failed.
    #[error("the database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The audit log refused the entry.
    #[error("the audit log: {0}")]
    Audit(#[from] audit::AuditError),
}

/// Which backup to restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The newest catalogued backup of the device.
    Latest,
    /// This sequence.
    Sequence(u64),
    /// A repair: the newest backup that verifies, the device walking back from the newest
    /// catalogued one.
    NewestVerifying,
}

/// One restore request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoreRequest {
    /// Its id.
    pub id: i64,
    /// The device that restores.
    pub device_id: String,
    /// The backup's sequence.
    pub sequence: u64,
    /// The backup's manifest header hash (what the device must find).
    pub header_hash: String,
    /// Why.
    pub reason: String,
    /// Who asked (`token:ID`).
    pub requested_by: String,
    /// When, Unix seconds.
    pub requested_at: i64,
    /// `pending`, `done` or `failed`.
    pub status: String,
    /// A repair: the device restores the newest backup that verifies, starting at
    /// `sequence` and walking back.
    pub repair: bool,
    /// The device's message, once finished.
    pub result: Option<String>,
    /// When the device reported, Unix seconds.
    pub finished_at: Option<i64>,
    /// When the device first fetched it (`GET /api/v1/device/restore-requests`), Unix
    /// seconds; `None` while it has not.
    pub delivered_at: Option<i64>,
    /// The terminal's structured outcome, when it sent one (agents before it did not).
    pub outcome: Option<RestoreOutcome>,
}

const COLUMNS: &str = "id, device_id, sequence, header_hash, reason, requested_by, requested_at, status, result, finished_at, repair, delivered_at, outcome";

fn row(r: &rusqlite::Row) -> rusqlite::Result<RestoreRequest> {
    Ok(RestoreRequest {
        id: r.get(0)?,
        device_id: r.get(1)?,
        sequence: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
        header_hash: r.get(3)?,
        reason: r.get(4)?,
        requested_by: r.get(5)?,
        requested_at: r.get(6)?,
        status: r.get(7)?,
        result: r.get(8)?,
        finished_at: r.get(9)?,
        repair: r.get::<_, i64>(10)? != 0,
        delivered_at: r.get(11)?,
        outcome: RestoreOutcome::from_stored(r.get::<_, Option<String>>(12)?.as_deref()),
    })
}

fn clean(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(MAX_TEXT)
        .collect()
}

/// Stores a request for `device` and audits it, in one transaction. `None` when the device
/// has no such backup (or none at all for [`Which::Latest`]).
pub fn create(
    conn: &mut Connection,
    actor: &Actor,
    device: &str,
    which: Which,
    reason: &str,
    now: i64,
) -> Result<Option<RestoreRequest>, RequestError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: Option<(i64, String)> = match which {
        Which::Latest | Which::NewestVerifying => tx
            .query_row(
                "SELECT sequence, header_hash FROM backup_manifests WHERE device_id = ?1
                 ORDER BY sequence DESC LIMIT 1",
                [device],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?,
        Which::Sequence(s) => match i64::try_from(s) {
            Ok(s) => tx
                .query_row(
                    "SELECT sequence, header_hash FROM backup_manifests
                     WHERE device_id = ?1 AND sequence = ?2",
                    rusqlite::params![device, s],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?,
            Err(_) => None,
        },
    };
    let Some((sequence, hash)) = found else {
        return Ok(None);
    };
    let reason = clean(reason);
    tx.execute(
        "INSERT INTO restore_requests
             (device_id, sequence, header_hash, reason, requested_by, requested_at, status,
              repair)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7)",
        rusqlite::params![
            device,
            sequence,
            hash,
            reason,
            actor.id,
            now,
            i64::from(which == Which::NewestVerifying)
        ],
    )?;
    let id = tx.last_insert_rowid();
    audit::append(
        &tx,
        actor,
        REQUESTED,
        &format!("device:{device}"),
        &json!({"request": id, "sequence": sequence, "header_hash": hash, "reason": reason,
                "repair": which == Which::NewestVerifying}),
        now,
    )?;
    let req = tx.query_row(
        &format!("SELECT {COLUMNS} FROM restore_requests WHERE id = ?1"),
        [id],
        row,
    )?;
    tx.commit()?;
    Ok(Some(req))
}

/// The requests of `device`, newest first; only the pending ones when `pending_only`.
pub fn list(
    conn: &Connection,
    device: &str,
    pending_only: bool,
) -> Result<Vec<RestoreRequest>, RequestError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM restore_requests WHERE device_id = ?1
         AND (?2 = 0 OR status = 'pending') ORDER BY id DESC LIMIT 100"
    ))?;
    let rows = stmt.query_map(rusqlite::params![device, i64::from(pending_only)], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Records that `device` fetched its pending requests at `now` (the first fetch of each
/// counts): the console then shows them as delivered.
pub fn mark_delivered(conn: &Connection, device: &str, now: i64) -> Result<(), RequestError> {
    conn.execute(
        "UPDATE restore_requests SET delivered_at = ?2
         WHERE device_id = ?1 AND status = 'pending' AND delivered_at IS NULL",
        rusqlite::params![device, now],
    )?;
    Ok(())
}

/// Records the device's outcome of its pending request `id` and audits it, in one
/// transaction. `None` when the device has no pending request with this id.
pub fn finish(
    conn: &mut Connection,
    device: &str,
    id: i64,
    ok: bool,
    message: &str,
    now: i64,
) -> Result<Option<RestoreRequest>, RequestError> {
    finish_with_outcome(conn, device, id, ok, message, None, now)
}

/// [`finish`] with the terminal's structured outcome, already checked
/// ([`RestoreOutcome::check_bounds`], [`RestoreOutcome::check_against`]), stored as JSON
/// and audited with the message.
pub fn finish_with_outcome(
    conn: &mut Connection,
    device: &str,
    id: i64,
    ok: bool,
    message: &str,
    outcome: Option<&RestoreOutcome>,
    now: i64,
) -> Result<Option<RestoreRequest>, RequestError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let message = clean(message);
    let status = if ok { "done" } else { "failed" };
    let stored = outcome.and_then(|o| serde_json::to_string(o).ok());
    let n = tx.execute(
        "UPDATE restore_requests SET status = ?1, result = ?2, finished_at = ?3, outcome = ?6
         WHERE id = ?4 AND device_id = ?5 AND status = 'pending'",
        rusqlite::params![status, message, now, id, device, stored],
    )?;
    if n == 0 {
        return Ok(None);
    }
    audit::append(
        &tx,
        &Actor::device(device),
        FINISHED,
        &format!("device:{device}"),
        &json!({"request": id, "status": status, "result": message, "outcome": outcome}),
        now,
    )?;
    let req = tx.query_row(
        &format!("SELECT {COLUMNS} FROM restore_requests WHERE id = ?1"),
        [id],
        row,
    )?;
    tx.commit()?;
    Ok(Some(req))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(c: &Connection, device: &str, sequence: i64) {
        c.execute(
            "INSERT INTO backup_manifests (device_id, sequence, header_hash, header, created,
                 pack_count, total_pack_bytes, new_pack_bytes, body_length, manifest_length,
                 received_at, countersignature)
             VALUES (?1, ?2, ?3, x'00', 1, 0, 0, 0, 0, 0, 1, 'sig')",
            rusqlite::params![device, sequence, format!("{device}-{sequence}")],
        )
        .unwrap();
    }

    #[test]
    fn the_first_fetch_marks_pending_requests_delivered() {
        let d = tempfile::tempdir().unwrap();
        let db = crate::db::Db::open_blocking(&d.path().join("otter.db")).unwrap();
        db.with_conn_blocking(|c| -> Result<(), crate::db::DbError> {
            let c: &mut Connection = c;
            manifest(c, "till-1", 1);
            let who = Actor::token(1);
            let a = create(c, &who, "till-1", Which::Latest, "r", 10)
                .unwrap()
                .unwrap();
            assert_eq!(a.delivered_at, None);
            mark_delivered(c, "till-2", 11).unwrap();
            assert_eq!(list(c, "till-1", true).unwrap()[0].delivered_at, None);
            mark_delivered(c, "till-1", 12).unwrap();
            mark_delivered(c, "till-1", 13).unwrap();
            assert_eq!(list(c, "till-1", true).unwrap()[0].delivered_at, Some(12));
            let b = create(c, &who, "till-1", Which::NewestVerifying, "r", 14)
                .unwrap()
                .unwrap();
            finish(c, "till-1", a.id, true, "restored", 15)
                .unwrap()
                .unwrap();
            mark_delivered(c, "till-1", 16).unwrap();
            let all = list(c, "till-1", false).unwrap();
            assert_eq!(
                all.iter()
                    .map(|r| (r.id, r.delivered_at))
                    .collect::<Vec<_>>(),
                [(b.id, Some(16)), (a.id, Some(12))]
            );
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn requests_are_stored_audited_fetched_and_finished_once() {
        let d = tempfile::tempdir().unwrap();
        let db = crate::db::Db::open_blocking(&d.path().join("otter.db")).unwrap();
        db.with_conn_blocking(|c| -> Result<(), crate::db::DbError> {
            let c: &mut Connection = c;
            let who = Actor::token(3);
            assert_eq!(
                create(c, &who, "till-1", Which::Latest, "r", 10).unwrap(),
                None
            );
            manifest(c, "till-1", 1);
            manifest(c, "till-1", 2);
            manifest(c, "till-2", 1);
            assert_eq!(
                create(c, &who, "till-1", Which::Sequence(9), "r", 10).unwrap(),
                None
            );
            let audited = crate::audit::list(c, 0, 100).unwrap().len();
            let r = create(c, &who, "till-1", Which::Latest, "lost\nsales", 11)
                .unwrap()
                .unwrap();
            assert_eq!((r.sequence, r.header_hash.as_str()), (2, "till-1-2"));
            assert_eq!(
                (r.status.as_str(), r.reason.as_str()),
                ("pending", "lostsales")
            );
            assert_eq!(r.requested_by, "token:3");
            let old = create(c, &who, "till-1", Which::Sequence(1), "r", 12)
                .unwrap()
                .unwrap();
            assert!(!r.repair && !old.repair);
            let fix = create(c, &who, "till-1", Which::NewestVerifying, "r", 12)
                .unwrap()
                .unwrap();
            assert_eq!((fix.sequence, fix.repair), (2, true));
            assert_eq!(fix.header_hash, "till-1-2");
            assert_eq!(
                finish(c, "till-1", fix.id, true, "repaired", 13)
                    .unwrap()
                    .unwrap()
                    .result
                    .as_deref(),
                Some("repaired")
            );
            let entries = crate::audit::list(c, 0, 100).unwrap();
            assert_eq!(entries.len(), audited + 4);
            assert_eq!(entries.iter().filter(|e| e.action == FINISHED).count(), 1);
            let entries: Vec<_> = entries
                .into_iter()
                .filter(|e| e.action != FINISHED)
                .collect();
            assert!(entries.iter().all(|e| e.action == REQUESTED));
            assert_eq!(list(c, "till-1", true).unwrap().len(), 2);
            assert!(list(c, "till-2", true).unwrap().is_empty());
            // Another device cannot finish it; the device finishes it once.
            assert_eq!(finish(c, "till-2", r.id, true, "x", 20).unwrap(), None);
            let done = finish(c, "till-1", r.id, false, "integrity check failed", 21)
                .unwrap()
                .unwrap();
            assert_eq!(done.status, "failed");
            assert_eq!(done.result.as_deref(), Some("integrity check failed"));
            assert_eq!(finish(c, "till-1", r.id, true, "again", 22).unwrap(), None);
            let pending = list(c, "till-1", true).unwrap();
            assert_eq!(pending.iter().map(|p| p.id).collect::<Vec<_>>(), [old.id]);
            let last = crate::audit::list(c, 0, 100).unwrap().pop().unwrap();
            assert_eq!(last.action, FINISHED);
            Ok(())
        })
        .unwrap();
    }
}
