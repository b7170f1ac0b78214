//! Health checks of the terminal's live SQLite database: `PRAGMA quick_check` on a
//! schedule and the slower `PRAGMA integrity_check` in quiet hours (scheduled by
//! [`crate::integrity`]). The database is opened read-only and never modified; a database
//! SQLite calls corrupt or "not a database" is unhealthy, one that cannot be opened at all
//! is an error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

/// Most messages kept from one check.
const MAX_MESSAGES: usize = 20;

/// Which check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckLevel {
    /// `PRAGMA quick_check`: page structure, no index cross-check (fast).
    Quick,
    /// `PRAGMA integrity_check`: everything, including indexes (slow on big databases).
    Full,
}

impl CheckLevel {
    /// The pragma's name.
    pub fn pragma(self) -> &'static str {
        match self {
            CheckLevel::Quick => "quick_check",
            CheckLevel::Full => "integrity_check",
        }
    }
}

/// What SQLite said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DbHealth {
    /// `ok` from SQLite.
    pub ok: bool,
    /// Its messages (`ok`, or the problems found, at most 20).
    pub messages: Vec<String>,
}

/// Why a database could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum DbHealthError {
    /// The file does not exist or cannot be opened.
    #[error("cannot open the database {path} read-only: {source}; check [database] path (or [backup] database) in the agent's config")]
    Open {
        /// The database.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// The check did not complete (e.g. the database stayed locked).
    #[error("PRAGMA {pragma} on {path} did not complete: {source}")]
    Check {
        /// The database.
        path: PathBuf,
        /// The pragma.
        pragma: &'static str,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
}

fn corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// Runs the `level` check on `path`, read-only.
pub fn check_database(path: &Path, level: CheckLevel) -> Result<DbHealth, DbHealthError> {
    if !path.is_file() {
        return Err(DbHealthError::Open {
            path: path.to_path_buf(),
            source: rusqlite::Error::InvalidPath(path.to_path_buf()),
        });
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| DbHealthError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let run = || -> Result<Vec<String>, rusqlite::Error> {
        conn.busy_timeout(Duration::from_secs(30))?;
        let mut stmt = conn.prepare(&format!("PRAGMA {}({MAX_MESSAGES})", level.pragma()))?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect()
    };
    match run() {
        Ok(messages) => Ok(DbHealth {
            ok: messages.len() == 1 && messages[0] == "ok",
            messages,
        }),
        Err(e) if corruption(&e) => Ok(DbHealth {
            ok: false,
            messages: vec![e.to_string()],
        }),
        Err(source) => Err(DbHealthError::Check {
            path: path.to_path_buf(),
            pragma: level.pragma(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sound_database_is_ok_and_garbage_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("sales.db");
        let c = Connection::open(&db).unwrap();
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        drop(c);
        for level in [CheckLevel::Quick, CheckLevel::Full] {
            let h = check_database(&db, level).unwrap();
            assert!(h.ok, "{h:?}");
        }
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, vec![0x5au8; 8192]).unwrap();
        let h = check_database(&junk, CheckLevel::Quick).unwrap();
        assert!(!h.ok, "{h:?}");
        assert!(check_database(&dir.path().join("missing.db"), CheckLevel::Quick).is_err());
    }
}
