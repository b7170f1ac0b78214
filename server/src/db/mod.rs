//! The metadata database: one SQLite file in WAL mode, migrated on open, reached from async
//! code only through [`Db::call`], which runs the closure on the blocking thread pool.

mod migrations;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;

pub use migrations::{Migration, MIGRATIONS};

/// What went wrong with the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite refused an operation.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database file could not be created.
    #[error("cannot create the database {path}: {source}")]
    Create {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// WAL mode could not be turned on (e.g. the file system does not support it).
    #[error("the database {path} cannot use WAL mode (journal mode stays {mode:?}); put the data dir on a local file system")]
    NoWal {
        /// The file.
        path: PathBuf,
        /// The journal mode SQLite kept.
        mode: String,
    },
    /// The database was migrated by a newer otter-server.
    #[error("the database is at schema version {found}, but this otter-server knows only up to {known}: run a newer otter-server, or restore a backup")]
    TooNew {
        /// The schema version found.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
    /// A thread holding the connection panicked; the process should restart.
    #[error("the database connection is unusable after an internal failure; restart otter-server")]
    Poisoned,
    /// The blocking task could not run to completion.
    #[error("database task failed: {0}")]
    Task(String),
}

/// A shared handle on the database. Cloning is cheap.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "Db({})", self.path.display())
    }
}

impl Db {
    /// Opens (creating it mode 0600 if absent) and migrates the database at `path`. Blocking:
    /// call it from a blocking context.
    pub fn open_blocking(path: &Path) -> Result<Db, DbError> {
        create_private_file(path)?;
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(DbError::NoWal {
                path: path.into(),
                mode,
            });
        }
        // FULL: a committed publish must survive power loss, because files written to the
        // object store afterwards name versions that only the database remembers.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrations::migrate(&mut conn)?;
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
            path: path.into(),
        })
    }

    /// Opens the database on the blocking thread pool.
    pub async fn open(path: &Path) -> Result<Db, DbError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || Db::open_blocking(&path))
            .await
            .map_err(|e| DbError::Task(e.to_string()))?
    }

    /// Runs `f` with the connection on the blocking thread pool, never on the async executor.
    pub async fn call<F, T>(&self, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut Connection) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().map_err(|_| DbError::Poisoned)?;
            f(&mut guard)
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }

    /// Runs `f` with the connection on this thread. Blocking: for command-line tools and
    /// blocking contexts only, never on the async executor.
    pub fn with_conn_blocking<T, E>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<DbError>,
    {
        let mut guard = self.conn.lock().map_err(|_| DbError::Poisoned)?;
        f(&mut guard)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Creates `path` empty with mode 0600 unless it exists, so that SQLite (which gives its
/// `-wal` and `-shm` files the database's mode) never makes it world-readable.
fn create_private_file(path: &Path) -> Result<(), DbError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(DbError::Create {
            path: path.into(),
            source,
        }),
    }
}

/// Seconds since the Unix epoch, for `created_at` columns.
pub fn unix_now() -> i64 {
    otter_keys::time::UtcTime::now().unix()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_in_wal_mode_and_migrates_once() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("otter.db");
        let db = Db::open_blocking(&p).unwrap();
        let conn = db.conn.lock().unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let versions: i64 = conn
            .query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(versions, MIGRATIONS.len() as i64);
        drop(conn);
        drop(db);
        // Opening again applies nothing twice.
        let db = Db::open_blocking(&p).unwrap();
        let conn = db.conn.lock().unwrap();
        let versions: i64 = conn
            .query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(versions, MIGRATIONS.len() as i64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_database_from_a_newer_server_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("otter.db");
        drop(Db::open_blocking(&p).unwrap());
        let conn = Connection::open(&p).unwrap();
        conn.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, 'future', 0)",
            [],
        )
        .unwrap();
        drop(conn);
        let err = Db::open_blocking(&p).unwrap_err();
        assert!(matches!(err, DbError::TooNew { found: 999, .. }), "{err}");
    }
}
