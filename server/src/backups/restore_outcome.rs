//! The structured outcome a terminal reports on a restore request (field `outcome` of
//! `POST /api/v1/device/restore-requests/{id}`, next to its message): the backup restored,
//! the rows lost per table, the backups a repair refused. Checked and bounded here before
//! [`super::requests::finish_with_outcome`] stores it (`restore_requests.outcome`,
//! migration 15); the console shows it instead of reading the message.

use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

/// Most tables a report may list with rows lost.
pub const MAX_TABLES: usize = 200;
/// Longest table name, in characters.
pub const MAX_TABLE_NAME: usize = 256;
/// Most refused backups a report may list.
pub const MAX_REFUSED: usize = 50;
/// Longest refusal reason, in characters.
pub const MAX_REASON: usize = 300;
/// Largest sequence or row count accepted (SQLite's integer range).
pub const MAX_NUMBER: u64 = i64::MAX.unsigned_abs();

/// What a restore request ended with, as the terminal reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreOutcome {
    /// The backup restored; absent when none was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_sequence: Option<u64>,
    /// Tables with more rows live than in the restored backup (empty: none lost); absent
    /// when the terminal could not count them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_lost: Option<Vec<TableLoss>>,
    /// Backups a repair refused, newest first, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<RefusedBackup>,
}

/// Rows a restore lost in one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableLoss {
    /// The table.
    pub table: String,
    /// Rows lost: `live - backup`.
    pub rows: u64,
    /// Its rows in the live database before the restore.
    pub live: u64,
    /// Its rows in the backup.
    pub backup: u64,
}

/// A backup a repair refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefusedBackup {
    /// Its sequence.
    pub sequence: u64,
    /// Why (as the terminal's verification said).
    pub reason: String,
}

/// Why a reported outcome is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("outcome: {0}")]
pub struct OutcomeError(pub String);

fn bad(text: impl Into<String>) -> OutcomeError {
    OutcomeError(text.into())
}

fn check_text(what: &str, text: &str, max: usize) -> Result<(), OutcomeError> {
    let n = text.chars().count();
    if n == 0 || n > max || text.chars().any(char::is_control) {
        return Err(bad(format!(
            "{what} must have 1 to {max} characters, without control characters"
        )));
    }
    Ok(())
}

impl RestoreOutcome {
    /// Checks sizes, counts and texts, on their own.
    pub fn check_bounds(&self) -> Result<(), OutcomeError> {
        if let Some(s) = self.restored_sequence {
            if s == 0 || s > MAX_NUMBER {
                return Err(bad("restored_sequence must be a positive backup sequence"));
            }
        }
        if let Some(lost) = &self.rows_lost {
            if lost.len() > MAX_TABLES {
                return Err(bad(format!(
                    "rows_lost lists {} tables; at most {MAX_TABLES}",
                    lost.len()
                )));
            }
            let mut seen = std::collections::BTreeSet::new();
            for t in lost {
                check_text("rows_lost[].table", &t.table, MAX_TABLE_NAME)?;
                if !seen.insert(t.table.as_str()) {
                    return Err(bad("rows_lost names a table twice"));
                }
                if t.live > MAX_NUMBER
                    || t.backup >= t.live
                    || t.live.checked_sub(t.backup) != Some(t.rows)
                {
                    return Err(bad(
                        "rows_lost[]: live must exceed backup and rows be live - backup",
                    ));
                }
            }
        }
        if self.refused.len() > MAX_REFUSED {
            return Err(bad(format!(
                "refused lists {} backups; at most {MAX_REFUSED}",
                self.refused.len()
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for r in &self.refused {
            if r.sequence == 0 || r.sequence > MAX_NUMBER || !seen.insert(r.sequence) {
                return Err(bad(
                    "refused[].sequence must be distinct positive backup sequences",
                ));
            }
            check_text("refused[].reason", &r.reason, MAX_REASON)?;
        }
        Ok(())
    }

    /// Checks it against the request it reports on: a restore of backup `sequence`, or a
    /// repair walking back from it; `ok` as reported.
    pub fn check_against(&self, sequence: u64, repair: bool, ok: bool) -> Result<(), OutcomeError> {
        match self.restored_sequence {
            Some(s) if !repair && s != sequence => {
                return Err(bad(format!(
                    "restored_sequence {s} is not the requested backup #{sequence}"
                )))
            }
            Some(s) if s > sequence => {
                return Err(bad(format!(
                    "restored_sequence {s} is newer than the repair's first backup #{sequence}"
                )))
            }
            None if ok => return Err(bad("a successful restore names restored_sequence")),
            _ => {}
        }
        if !self.refused.is_empty() && !repair {
            return Err(bad("only a repair refuses backups"));
        }
        let floor = self.restored_sequence.unwrap_or(0);
        if let Some(r) = self
            .refused
            .iter()
            .find(|r| r.sequence > sequence || r.sequence <= floor)
        {
            return Err(bad(format!(
                "refused backup #{} is outside the backups the repair tried (#{sequence} back to \
                 the restored one)",
                r.sequence
            )));
        }
        Ok(())
    }

    /// Reads a stored outcome; `None` when absent or unreadable.
    pub fn from_stored(text: Option<&str>) -> Option<RestoreOutcome> {
        serde_json::from_str(text?).ok()
    }
}

/// The sequence and repair flag of `device`'s pending request `id`, if it has one.
pub fn pending_request(
    c: &Connection,
    device: &str,
    id: i64,
) -> rusqlite::Result<Option<(u64, bool)>> {
    c.query_row(
        "SELECT sequence, repair FROM restore_requests
         WHERE id = ?1 AND device_id = ?2 AND status = 'pending'",
        rusqlite::params![id, device],
        |r| {
            Ok((
                u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                r.get::<_, i64>(1)? != 0,
            ))
        },
    )
    .optional()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Result<RestoreOutcome, serde_json::Error> {
        serde_json::from_value(v)
    }

    fn good() -> RestoreOutcome {
        parse(serde_json::json!({
            "restored_sequence": 3,
            "rows_lost": [{"table": "sales", "rows": 12, "live": 100, "backup": 88}],
            "refused": [{"sequence": 4, "reason": "pack 1f missing"}]
        }))
        .unwrap()
    }

    #[test]
    fn a_good_report_passes_and_round_trips() {
        let o = good();
        assert_eq!(o.check_bounds(), Ok(()));
        assert_eq!(o.check_against(4, true, true), Ok(()));
        let text = serde_json::to_string(&o).unwrap();
        assert_eq!(RestoreOutcome::from_stored(Some(&text)), Some(o));
        assert_eq!(RestoreOutcome::from_stored(Some("{")), None);
        assert_eq!(RestoreOutcome::from_stored(None), None);
        let empty = parse(serde_json::json!({})).unwrap();
        assert_eq!(empty.check_bounds(), Ok(()));
        assert!(empty.check_against(4, true, false).is_ok());
        assert!(empty.check_against(4, true, true).is_err());
    }

    #[test]
    fn shapes_sizes_and_counts_are_bounded() {
        assert!(parse(serde_json::json!({"restored": 3})).is_err());
        assert!(parse(serde_json::json!({"restored_sequence": -1})).is_err());
        assert!(parse(serde_json::json!({"rows_lost": {"sales": 3}})).is_err());
        let mut o = good();
        o.rows_lost.as_mut().unwrap()[0].rows = 11;
        assert!(o.check_bounds().is_err(), "rows must be live - backup");
        let mut o = good();
        o.rows_lost.as_mut().unwrap()[0].table = "x".repeat(MAX_TABLE_NAME + 1);
        assert!(o.check_bounds().is_err());
        let mut o = good();
        o.rows_lost.as_mut().unwrap()[0].table = "sa\nles".into();
        assert!(o.check_bounds().is_err());
        let mut o = good();
        let t = o.rows_lost.as_ref().unwrap()[0].clone();
        o.rows_lost.as_mut().unwrap().push(t);
        assert!(o.check_bounds().is_err(), "a table twice");
        let mut o = good();
        o.rows_lost = Some(
            (0..=MAX_TABLES)
                .map(|i| TableLoss {
                    table: format!("t{i}"),
                    rows: 1,
                    live: 1,
                    backup: 0,
                })
                .collect(),
        );
        assert!(o.check_bounds().is_err());
        let mut o = good();
        o.refused[0].reason = "y".repeat(MAX_REASON + 1);
        assert!(o.check_bounds().is_err());
        let mut o = good();
        o.refused = (1..=MAX_REFUSED as u64 + 1)
            .map(|s| RefusedBackup {
                sequence: s,
                reason: "r".into(),
            })
            .collect();
        assert!(o.check_bounds().is_err());
        let mut o = good();
        o.restored_sequence = Some(0);
        assert!(o.check_bounds().is_err());
    }

    #[test]
    fn the_outcome_must_fit_its_request() {
        let o = good();
        assert!(o.check_against(3, true, true).is_err(), "refused #4 > #3");
        assert!(o.check_against(4, false, true).is_err(), "not a repair");
        let mut o = good();
        o.refused.clear();
        assert!(o.check_against(3, false, true).is_ok());
        assert!(o.check_against(5, false, true).is_err(), "another backup");
        assert!(o.check_against(2, true, true).is_err(), "newer than asked");
        let mut o = good();
        o.refused[0].sequence = 2;
        assert!(
            o.check_against(4, true, true).is_err(),
            "older than restored"
        );
    }
}
