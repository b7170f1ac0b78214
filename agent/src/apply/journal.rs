//! The apply journal (`journal.sqlite`, WAL, `synchronous=FULL`): one row per install or
//! rollback with its current step, and one row per component with its active and previous
//! versions. Every state change is its own committed transaction, written before the file
//! system step it announces (or after the step it records).

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use super::{ApplyError, HistoryEntry};

/// One operation row.
#[derive(Debug, Clone)]
pub(crate) struct Op {
    pub id: i64,
    pub component: String,
    pub op: String,
    pub kind: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub state: String,
    pub starts: u32,
    pub reason: Option<String>,
}

/// One component row.
#[derive(Debug, Clone, Default)]
pub(crate) struct Component {
    pub kind: String,
    pub active: Option<String>,
    pub previous: Option<String>,
}

pub(crate) struct Journal {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

const OP_COLUMNS: &str = "id, component, op, kind, from_version, to_version, state, starts, reason";

fn op_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Op> {
    Ok(Op {
        id: r.get(0)?,
        component: r.get(1)?,
        op: r.get(2)?,
        kind: r.get(3)?,
        from: r.get(4)?,
        to: r.get(5)?,
        state: r.get(6)?,
        starts: r.get(7)?,
        reason: r.get(8)?,
    })
}

impl Journal {
    fn err(&self, e: rusqlite::Error) -> ApplyError {
        ApplyError::Journal {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Opens (creating) the journal at `path`.
    pub(crate) fn open(path: &Path) -> Result<Journal, ApplyError> {
        let err = |e: rusqlite::Error| ApplyError::Journal {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(ApplyError::Journal {
                path: path.to_path_buf(),
                message: format!("could not switch to WAL mode (got {mode})"),
            });
        }
        conn.execute_batch(
            "PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS ops(
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 component TEXT NOT NULL,
                 op TEXT NOT NULL CHECK (op IN ('install', 'rollback')),
                 kind TEXT NOT NULL,
                 from_version TEXT,
                 to_version TEXT,
                 target TEXT,
                 state TEXT NOT NULL,
                 starts INTEGER NOT NULL DEFAULT 0,
                 reason TEXT,
                 started_at INTEGER NOT NULL,
                 updated_at INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS components(
                 name TEXT PRIMARY KEY,
                 kind TEXT NOT NULL,
                 active TEXT,
                 previous TEXT);",
        )
        .map_err(err)?;
        Ok(Journal {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Opens an existing journal read-only (no schema changes, no lock).
    pub(crate) fn open_read_only(path: &Path) -> Result<Journal, ApplyError> {
        let err = |e: rusqlite::Error| ApplyError::Journal {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(err)?;
        Ok(Journal {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Records a new operation in `state`; returns its id.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn begin(
        &self,
        component: &str,
        op: &str,
        kind: &str,
        from: Option<&str>,
        to: Option<&str>,
        target: Option<&str>,
        state: &str,
    ) -> Result<i64, ApplyError> {
        let t = now();
        self.conn
            .execute(
                "INSERT INTO ops(component, op, kind, from_version, to_version, target, state, started_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
                params![component, op, kind, from, to, target, state, t],
            )
            .map_err(|e| self.err(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Moves operation `id` to `state` (and records `reason` if given).
    pub(crate) fn set_state(
        &self,
        id: i64,
        state: &str,
        reason: Option<&str>,
    ) -> Result<(), ApplyError> {
        self.conn
            .execute(
                "UPDATE ops SET state = ?2, reason = COALESCE(?3, reason), updated_at = ?4 WHERE id = ?1",
                params![id, state, reason, now()],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Raises the start counter of `id` (state `checking`); returns the new count.
    pub(crate) fn bump_starts(&self, id: i64) -> Result<u32, ApplyError> {
        self.conn
            .query_row(
                "UPDATE ops SET starts = starts + 1, state = 'checking', updated_at = ?2
                 WHERE id = ?1 RETURNING starts",
                params![id, now()],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// Operation `id`.
    pub(crate) fn op(&self, id: i64) -> Result<Op, ApplyError> {
        self.conn
            .query_row(
                &format!("SELECT {OP_COLUMNS} FROM ops WHERE id = ?1"),
                params![id],
                op_row,
            )
            .map_err(|e| self.err(e))
    }

    /// Operations not in a final state, oldest first.
    pub(crate) fn open_ops(&self) -> Result<Vec<Op>, ApplyError> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {OP_COLUMNS} FROM ops WHERE state NOT IN ('committed', 'rolled_back', 'aborted') ORDER BY id"
            ))
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], op_row)
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// The row of `name` (empty when never installed).
    pub(crate) fn component(&self, name: &str) -> Result<Component, ApplyError> {
        Ok(self
            .conn
            .query_row(
                "SELECT kind, active, previous FROM components WHERE name = ?1",
                params![name],
                |r| {
                    Ok(Component {
                        kind: r.get(0)?,
                        active: r.get(1)?,
                        previous: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))?
            .unwrap_or_default())
    }

    /// Every component row: name, active, previous.
    pub(crate) fn components(&self) -> Result<Vec<(String, Component)>, ApplyError> {
        let mut st = self
            .conn
            .prepare("SELECT name, kind, active, previous FROM components ORDER BY name")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Component {
                        kind: r.get(1)?,
                        active: r.get(2)?,
                        previous: r.get(3)?,
                    },
                ))
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Forgets `version` as the previous version of `name` (its directory is going away).
    pub(crate) fn forget_previous(&self, name: &str, version: &str) -> Result<(), ApplyError> {
        self.conn
            .execute(
                "UPDATE components SET previous = NULL WHERE name = ?1 AND previous = ?2",
                params![name, version],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Ends operation `id` as committed and sets the component's active and previous
    /// versions, in one transaction.
    pub(crate) fn commit(
        &mut self,
        id: i64,
        name: &str,
        kind: &str,
        active: Option<&str>,
        previous: Option<&str>,
    ) -> Result<(), ApplyError> {
        let path = self.path.clone();
        let err = |e: rusqlite::Error| ApplyError::Journal {
            path: path.clone(),
            message: e.to_string(),
        };
        let tx = self.conn.transaction().map_err(err)?;
        tx.execute(
            "UPDATE ops SET state = 'committed', updated_at = ?2 WHERE id = ?1",
            params![id, now()],
        )
        .map_err(err)?;
        tx.execute(
            "INSERT INTO components(name, kind, active, previous) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET kind = ?2, active = ?3, previous = ?4",
            params![name, kind, active, previous],
        )
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// Sets the active version of `name` alone (repairing a link found out of step).
    pub(crate) fn set_active(&self, name: &str, active: Option<&str>) -> Result<(), ApplyError> {
        self.conn
            .execute(
                "UPDATE components SET active = ?2 WHERE name = ?1",
                params![name, active],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Recent operations, newest first.
    pub(crate) fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>, ApplyError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut st = self
            .conn
            .prepare(
                "SELECT id, component, op, from_version, to_version, state, starts, reason, target,
                        started_at, updated_at
                 FROM ops ORDER BY id DESC LIMIT ?1",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map(params![limit], |r| {
                Ok(HistoryEntry {
                    id: r.get(0)?,
                    component: r.get(1)?,
                    op: r.get(2)?,
                    from: r.get(3)?,
                    to: r.get(4)?,
                    state: r.get(5)?,
                    starts: r.get(6)?,
                    reason: r.get(7)?,
                    target: r.get(8)?,
                    started_at: r.get(9)?,
                    updated_at: r.get(10)?,
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }
}
