//! A consistent snapshot of a live SQLite database, taken with SQLite's online backup API in
//! the agent's own process.
//!
//! The whole database is copied with one `sqlite3_backup_step(-1)`: the source is read inside
//! a single read transaction, so writers in WAL mode are never blocked and the copy is one
//! consistent state. (rusqlite's `Connection::backup()` loops over small steps, and every
//! write by the application between two steps restarts the copy from the first page: on a
//! busy terminal it may never finish. See DESIGN.md, "Backups".)
//!
//! The snapshot is written to a temporary file in a directory the caller chooses (the agent's
//! state directory, on the same file system as the state it belongs to) and removed when the
//! [`Snapshot`] is dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

/// How often a busy or locked source is retried before the snapshot gives up.
const MAX_BUSY_RETRIES: u32 = 50;
/// Pause between retries of a busy or locked source.
const BUSY_PAUSE: Duration = Duration::from_millis(100);
/// The file-name prefix of snapshot files, so that leftovers of a killed run can be found.
pub const SNAPSHOT_PREFIX: &str = "snapshot-";

/// Why a snapshot could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The live database could not be opened or read.
    #[error(
        "cannot read the live database {path}: {source} (check the configured database path \
         and that the agent may read it and its -wal/-shm files)"
    )]
    Source {
        /// The live database.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// The snapshot file could not be created or written.
    #[error(
        "cannot write the snapshot file {path}: {reason} (check free space in the state directory)"
    )]
    Destination {
        /// The snapshot file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The database stayed busy or locked through every retry.
    #[error(
        "the live database {path} stayed busy or locked for {waited:?}; snapshot not taken \
         (retry later, outside a long write transaction)"
    )]
    Busy {
        /// The live database.
        path: PathBuf,
        /// How long the snapshot waited.
        waited: Duration,
    },
}

/// A snapshot file. Removed (with any `-journal`, `-wal` or `-shm` file beside it) on drop.
#[derive(Debug)]
pub struct Snapshot {
    path: PathBuf,
    took: Duration,
}

impl Snapshot {
    /// The snapshot file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How long the copy took.
    pub fn took(&self) -> Duration {
        self.took
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        remove_with_sidecars(&self.path);
    }
}

/// Removes a database file and its `-journal`, `-wal` and `-shm` files, ignoring errors.
pub(crate) fn remove_with_sidecars(path: &Path) {
    let _ = fs::remove_file(path);
    for suffix in ["-journal", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = fs::remove_file(PathBuf::from(p));
    }
}

/// Removes snapshot files a killed run left in `dir` (names starting with
/// [`SNAPSHOT_PREFIX`]). Errors are ignored: a leftover only costs space.
pub fn remove_leftovers(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(SNAPSHOT_PREFIX))
        {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Copies the live database `source` into a new file in `dir` with one backup step.
pub fn take_snapshot(source: &Path, dir: &Path) -> Result<Snapshot, SnapshotError> {
    let started = Instant::now();
    let src_err = |source_err: rusqlite::Error| SnapshotError::Source {
        path: source.to_path_buf(),
        source: source_err,
    };
    if !source.is_file() {
        return Err(src_err(rusqlite::Error::InvalidPath(source.to_path_buf())));
    }
    fs::create_dir_all(dir).map_err(|e| SnapshotError::Destination {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let path = dir.join(format!(
        "{SNAPSHOT_PREFIX}{}-{}.db",
        std::process::id(),
        unique()
    ));
    // From here on, dropping `snapshot` removes the file, whatever fails.
    let mut snapshot = Snapshot {
        path,
        took: Duration::ZERO,
    };
    let dst_err = |path: &Path, e: &dyn std::fmt::Display| SnapshotError::Destination {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };

    let src = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(src_err)?;
    src.busy_timeout(Duration::from_secs(5)).map_err(src_err)?;
    let mut dst = Connection::open_with_flags(
        &snapshot.path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| dst_err(&snapshot.path, &e))?;
    // The snapshot is a scratch file, read back at once and removed after the run (or at
    // the start of the next, after a crash): no journal and no fsync for it. Its bytes come
    // back from the page cache all the same, and nothing durable depends on it.
    dst.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")
        .map_err(|e| dst_err(&snapshot.path, &e))?;
    {
        let backup = Backup::new(&src, &mut dst).map_err(|e| dst_err(&snapshot.path, &e))?;
        let mut retries = 0;
        loop {
            // One step copies every page inside one read transaction on the source.
            match backup.step(-1).map_err(src_err)? {
                StepResult::Done => break,
                StepResult::More => continue,
                _busy_or_locked => {
                    retries += 1;
                    if retries > MAX_BUSY_RETRIES {
                        return Err(SnapshotError::Busy {
                            path: source.to_path_buf(),
                            waited: started.elapsed(),
                        });
                    }
                    thread::sleep(BUSY_PAUSE);
                }
            }
        }
    }
    dst.close().map_err(|(_, e)| dst_err(&snapshot.path, &e))?;
    drop(src);
    snapshot.took = started.elapsed();
    Ok(snapshot)
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_copies_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("live.db");
        let c = Connection::open(&db).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1),(2),(3);",
        )
        .unwrap();
        let snaps = dir.path().join("snaps");
        let snap = take_snapshot(&db, &snaps).unwrap();
        let s = Connection::open(snap.path()).unwrap();
        let n: i64 = s
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3);
        drop(s);
        let p = snap.path().to_path_buf();
        drop(snap);
        assert!(!p.exists());
        drop(c);
        assert!(take_snapshot(&dir.path().join("missing.db"), &snaps).is_err());
    }

    #[test]
    fn leftovers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("snapshot-1-2.db"), b"x").unwrap();
        fs::write(dir.path().join("index.json"), b"x").unwrap();
        remove_leftovers(dir.path());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
