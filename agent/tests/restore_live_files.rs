//! The live database's own files during a restore (library level, real SQLite files): a hot
//! rollback journal is rolled back into the old file, never onto the restored one; a damaged
//! old database's write-ahead log is never replayed onto the restored file; an
//! application holding a read transaction makes the replace fail with the old database
//! whole; an online restore goes through SQLite's backup API under another open connection;
//! a dry run counts the rows the restore would lose and changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "backup_common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{dump, files_under, integrity_ok, pos, sha256_file, Terminal};
use otter_agent::backup::restore::{live_row_counts, rows_lost};
use otter_agent::backup::{prepare, RestoreError, RestoreOptions, Selector};
use rusqlite::Connection;

fn sidecar(db: &Path, s: &str) -> PathBuf {
    PathBuf::from(format!("{}{s}", db.display()))
}

/// Runs python3 `script` on the database and exits without closing it (a crash).
fn python_crash(db: &Path, script: &str) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3, sys, os\nc = sqlite3.connect(sys.argv[1], isolation_level=None)\n{script}\nos._exit(0)"
        ))
        .arg(db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn prepared(t: &Terminal) -> otter_agent::backup::PreparedRestore {
    prepare(
        &t.store(),
        &t.device_id,
        &t.signing.public_key(),
        &t.terminal_id,
        Selector::Latest,
        &t.db,
        &RestoreOptions::default(),
    )
    .unwrap()
}

fn no_temp_files(t: &Terminal) {
    let left: Vec<_> = files_under(t.dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".restore-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_hot_rollback_journal_is_rolled_back_into_the_old_file_not_onto_the_restored_one() {
    let t = Terminal::fresh();
    Connection::open(&t.db)
        .unwrap()
        .execute_batch("PRAGMA journal_mode=DELETE;")
        .unwrap();
    t.backup();
    let backed_up = dump(&t.db);
    // A transaction that spilled into the file, then the application died: a hot journal.
    python_crash(
        &t.db,
        "c.execute('PRAGMA cache_size=1')\n\
         c.execute('BEGIN')\n\
         c.execute('UPDATE transactions SET rowid = rowid + 1000000')\n",
    );
    assert!(sidecar(&t.db, "-journal").exists(), "a hot journal is left");
    let report = prepared(&t).replace(&t.db).unwrap();
    assert_eq!(report.sequence, 1);
    assert!(!sidecar(&t.db, "-journal").exists());
    assert!(integrity_ok(&t.db));
    assert_eq!(dump(&t.db), backed_up);
    no_temp_files(&t);
}

#[test]
fn a_damaged_old_database_s_log_is_never_replayed_onto_the_restored_one() {
    let t = Terminal::fresh();
    let report = t.backup();
    let backed_up = dump(&t.db);
    // Committed frames left in the log by a crash (a change that does not touch page 1),
    // then the main file's header destroyed: the old database cannot be opened.
    python_crash(
        &t.db,
        "c.execute('PRAGMA wal_autocheckpoint=0')\n\
         c.execute('UPDATE transactions SET rowid = rowid WHERE rowid = 5')\n",
    );
    assert!(std::fs::metadata(sidecar(&t.db, "-wal")).unwrap().len() > 0);
    let mut bytes = std::fs::read(&t.db).unwrap();
    bytes[..100].fill(0x5a);
    std::fs::write(&t.db, &bytes).unwrap();

    let r = prepared(&t).replace(&t.db).unwrap();
    assert_eq!(r.sequence, report.sequence);
    assert!(!sidecar(&t.db, "-wal").exists());
    // SQLite consumes the log when the failed connection closes, or the agent moves it
    // aside (`-wal.old-PID-TIME`); either way it is never replayed onto the restored file.
    let logs: Vec<_> = files_under(t.dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("-wal"))
        .collect();
    assert!(
        logs.iter()
            .all(|p| p.to_string_lossy().contains("-wal.old-")),
        "{logs:?}"
    );
    assert!(integrity_ok(&t.db));
    assert_eq!(dump(&t.db), backed_up);
    no_temp_files(&t);
}

#[test]
fn a_reader_holding_the_database_makes_the_replace_fail_with_the_old_database_whole() {
    let t = Terminal::fresh();
    t.backup();
    pos(&["mutate", t.db.to_str().unwrap(), "append", "2"]);
    let before = dump(&t.db);
    // Something still in the log, and a reader in the middle of a transaction.
    let app = Connection::open(&t.db).unwrap();
    app.execute_batch(
        "PRAGMA wal_autocheckpoint=0; DELETE FROM transactions WHERE rowid % 11 = 0;",
    )
    .unwrap();
    let after_delete = dump(&t.db);
    assert_ne!(before, after_delete);
    app.execute_batch("BEGIN; SELECT count(*) FROM transactions;")
        .unwrap();
    let reader_sees: i64 = app
        .query_row("SELECT count(*) FROM transactions", [], |r| r.get(0))
        .unwrap();
    let err = prepared(&t).replace(&t.db).unwrap_err();
    assert!(matches!(err, RestoreError::Replace { .. }), "{err}");
    assert!(err.to_string().contains("stop it first"), "{err}");
    app.execute_batch("COMMIT;").unwrap();
    drop(app);
    assert_eq!(dump(&t.db), after_delete, "the old database is whole");
    assert!(reader_sees > 0);
    no_temp_files(&t);
}

#[test]
fn an_online_restore_goes_through_sqlite_under_an_open_connection() {
    let t = Terminal::fresh();
    t.backup();
    let backed_up = dump(&t.db);
    pos(&["mutate", t.db.to_str().unwrap(), "append", "3"]);
    let app = Connection::open(&t.db).unwrap();
    app.busy_timeout(Duration::from_secs(5)).unwrap();
    let live: i64 = app
        .query_row("SELECT count(*) FROM transactions", [], |r| r.get(0))
        .unwrap();
    let p = prepared(&t);
    let backup_rows = p.row_counts()["transactions"];
    assert!(live as u64 > backup_rows);
    p.apply_online(&t.db, Duration::from_secs(10)).unwrap();
    // The application's own connection sees the restored content.
    let now: i64 = app
        .query_row("SELECT count(*) FROM transactions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(now as u64, backup_rows);
    drop(app);
    assert!(integrity_ok(&t.db));
    assert_eq!(dump(&t.db), backed_up);
    no_temp_files(&t);
}

#[test]
fn a_dry_run_counts_the_rows_that_would_be_lost_and_changes_nothing() {
    let t = Terminal::fresh();
    t.backup();
    pos(&["mutate", t.db.to_str().unwrap(), "append", "2"]);
    let hash = sha256_file(&t.db);
    let p = prepared(&t);
    assert!(p.path().exists());
    let live = live_row_counts(&t.db).unwrap();
    let lost = rows_lost(&live, p.row_counts());
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].table, "transactions");
    assert_eq!(lost[0].live, live["transactions"]);
    assert_eq!(lost[0].backup, p.row_counts()["transactions"]);
    assert!(lost[0].live > lost[0].backup);
    let temp = p.path().to_path_buf();
    drop(p);
    assert!(!temp.exists());
    assert_eq!(sha256_file(&t.db), hash);
    // Nothing is lost when the live database is the backup.
    assert!(rows_lost(&live, &live).is_empty());
    assert!(live_row_counts(&t.dir.path().join("missing.db")).is_err());
}
