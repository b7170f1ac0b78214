//! The data directory: created 0700 on first start, refused when it holds something that is
//! not Otter's, and locked so that one `serve` at a time owns it.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

/// The lock file in the data dir.
pub const LOCK_FILE: &str = "otter.lock";
/// The database file in the data dir.
pub const DB_FILE: &str = "otter.db";

/// Why the data dir cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// It could not be created, read or locked.
    #[error("data dir {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// It holds files but no Otter database: probably the wrong directory.
    #[error("data dir {path} is not empty and holds no {DB_FILE}: give an empty or an Otter data dir (--data-dir)")]
    Foreign {
        /// The path.
        path: PathBuf,
    },
    /// Another otter-server serves it.
    #[error(
        "data dir {path} is in use by another otter-server (it holds the lock on {LOCK_FILE})"
    )]
    Locked {
        /// The path.
        path: PathBuf,
    },
}

/// The lock on the data dir, held while the server runs and released on drop.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Creates the data dir if needed, checks it is Otter's (or empty) and locks it.
pub fn prepare(dir: &Path) -> Result<DataDirLock, DataDirError> {
    let io = |source| DataDirError::Io {
        path: dir.into(),
        source,
    };
    crate::store::create_dir_private(dir).map_err(io)?;
    let has_db = dir.join(DB_FILE).exists();
    let mut others = fs::read_dir(dir)
        .map_err(io)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name() != LOCK_FILE);
    if !has_db && others.next().is_some() {
        return Err(DataDirError::Foreign { path: dir.into() });
    }
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io)?;
    lock(&file, dir)?;
    Ok(DataDirLock { _file: file })
}

/// Removes uploads left in the spool directory by a server that was killed mid-upload.
/// Call with the lock held. Failures are logged, not fatal.
pub fn clear_spool(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name();
        if name.to_string_lossy().starts_with("upload-") {
            if let Err(err) = fs::remove_file(e.path()) {
                tracing::warn!(file = %e.path().display(), error = %err, "cannot remove a stale upload");
            }
        }
    }
}

// `File::try_lock` is std since Rust 1.89, which actix-web and rusqlite need anyway.
#[allow(clippy::incompatible_msrv)]
fn lock(file: &File, dir: &Path) -> Result<(), DataDirError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(DataDirError::Locked { path: dir.into() }),
        Err(std::fs::TryLockError::Error(source)) => Err(DataDirError::Io {
            path: dir.into(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_dirs_are_taken_and_locked_once() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("data");
        let lock = prepare(&dir).unwrap();
        assert!(matches!(prepare(&dir), Err(DataDirError::Locked { .. })));
        drop(lock);
        prepare(&dir).unwrap();
    }

    #[test]
    fn foreign_dirs_are_refused() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("notes.txt"), b"x").unwrap();
        assert!(matches!(
            prepare(d.path()),
            Err(DataDirError::Foreign { .. })
        ));
        fs::write(d.path().join(DB_FILE), b"").unwrap();
        prepare(d.path()).unwrap();
    }
}
