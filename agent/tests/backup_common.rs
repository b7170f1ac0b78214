//! Shared fixtures of the backup tests (included by each `backup_*.rs` with `#[path]`; as a
//! test target of its own it holds no test).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use otter_agent::backup::{
    restore, run_backup, BackupConfig, BackupKeys, BackupRecipients, BackupReport, LocalDirStore,
    RestoreError, RestoreOptions, RestoreReport, Selector,
};
use otter_keys::age::x25519::Identity;
use otter_keys::crypto::SigningKey;
use otter_keys::envelope::ChunkKey;
use rusqlite::Connection;
use sha2::{Digest, Sha256};

/// Rows in the test databases: small, for speed.
pub const ROWS: u32 = 20_000;

/// The reference database tool: `OTTER_POS_DB`, or `shared/tools/pos_db.py` beside the
/// repository (where CI and the development machines have it).
pub fn pos_db() -> PathBuf {
    let path = std::env::var_os("OTTER_POS_DB")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/pos_db.py")
        });
    assert!(
        path.exists(),
        "the reference database tool is missing at {}: set OTTER_POS_DB to pos_db.py",
        path.display()
    );
    path
}

/// Runs `pos_db.py ARGS...` and insists it succeeds.
pub fn pos(args: &[&str]) {
    let out = Command::new("python3")
        .arg(pos_db())
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "pos_db.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A terminal with its keys, its live database, its state dir, and a local store.
pub struct Terminal {
    /// Holds everything; removed on drop.
    pub dir: tempfile::TempDir,
    /// The live database.
    pub db: PathBuf,
    /// The device id.
    pub device_id: String,
    /// The device key.
    pub signing: SigningKey,
    /// The chunk key.
    pub chunk_key: ChunkKey,
    /// The terminal's own backup identity.
    pub terminal_id: Identity,
    /// The fleet recovery identity.
    pub recovery_id: Identity,
    /// Whether the fleet is write-only (backups not encrypted to the terminal).
    pub write_only: bool,
    /// Pack target size.
    pub pack_target: usize,
}

impl Terminal {
    /// A terminal whose live database is a fresh reference database of [`ROWS`] rows.
    pub fn fresh() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("sales.db");
        pos(&["make", db.to_str().unwrap(), &ROWS.to_string()]);
        Terminal {
            dir,
            db,
            device_id: "till-0042".into(),
            signing: SigningKey::generate(),
            chunk_key: ChunkKey::generate(),
            terminal_id: Identity::generate(),
            recovery_id: Identity::generate(),
            write_only: false,
            pack_target: 1024 * 1024,
        }
    }

    /// The agent's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The local store's root.
    pub fn store_root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The local store.
    pub fn store(&self) -> LocalDirStore {
        LocalDirStore::new(self.store_root())
    }

    /// The backup configuration.
    pub fn config(&self) -> BackupConfig {
        let mut c = BackupConfig::new(&self.db, self.state_dir(), &self.device_id);
        c.pack_target_size = self.pack_target;
        c
    }

    /// The backup keys and recipients.
    pub fn keys(&self) -> BackupKeys<'_> {
        BackupKeys {
            signing: &self.signing,
            chunk_key: &self.chunk_key,
            recipients: BackupRecipients {
                recovery: self.recovery_id.to_public(),
                terminal: (!self.write_only).then(|| self.terminal_id.to_public()),
            },
        }
    }

    /// One backup, which must succeed.
    pub fn backup(&self) -> BackupReport {
        run_backup(&self.config(), &self.keys(), &self.store()).unwrap()
    }

    /// Restores with the terminal's identity and default options.
    pub fn restore(
        &self,
        selector: Selector,
        target: &Path,
    ) -> Result<RestoreReport, RestoreError> {
        restore(
            &self.store(),
            &self.device_id,
            &self.signing.public_key(),
            &self.terminal_id,
            selector,
            target,
            &RestoreOptions::default(),
        )
    }
}

/// Every row of every table, in rowid order, as text: row-level equality of two databases.
pub fn dump(db: &Path) -> Vec<String> {
    let c = Connection::open(db).unwrap();
    let mut tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    tables.sort();
    let mut out = Vec::new();
    for t in tables {
        let mut stmt = c
            .prepare(&format!("SELECT * FROM \"{t}\" ORDER BY rowid"))
            .unwrap();
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                let mut line = format!("{t}:");
                for i in 0..n {
                    let v: rusqlite::types::Value = r.get(i)?;
                    line.push_str(&format!("{v:?}|"));
                }
                Ok(line)
            })
            .unwrap();
        for row in rows {
            out.push(row.unwrap());
        }
    }
    out
}

/// Whether `PRAGMA integrity_check` says ok.
pub fn integrity_ok(db: &Path) -> bool {
    let c = Connection::open(db).unwrap();
    let s: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    s == "ok"
}

/// Hex SHA-256 of a file.
pub fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

/// Every file under `dir`, recursively, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
