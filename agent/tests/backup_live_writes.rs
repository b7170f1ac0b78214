//! A backup taken while another process keeps committing sales (`pos_db.py write`) is one
//! consistent state: it restores, passes `PRAGMA integrity_check`, and its row count lies
//! between the counts before and after the writes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "backup_common.rs"]
mod common;

use std::process::Command;
use std::time::Duration;

use common::{integrity_ok, pos_db, Terminal};
use otter_agent::backup::Selector;

fn count(db: &std::path::Path) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row("SELECT count(*) FROM transactions", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn backup_during_writes_is_consistent() {
    let t = Terminal::fresh();
    let before = count(&t.db);
    let mut writer = Command::new("python3")
        .arg(pos_db())
        .args(["write", t.db.to_str().unwrap(), "4"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let mut reports = Vec::new();
    for _ in 0..3 {
        reports.push(t.backup());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        writer.try_wait().unwrap().is_none(),
        "the writer must still be running during the backups"
    );
    assert!(writer.wait().unwrap().success());
    let after = count(&t.db);
    assert!(after > before, "the writer wrote nothing");

    let out = t.dir.path().join("r.db");
    let mut last = before;
    for r in &reports {
        println!(
            "backup #{} during writes: snapshot {:?}, {} new pages, shipped {} B",
            r.sequence,
            r.snapshot_time,
            r.new_chunks,
            r.shipped_bytes()
        );
        t.restore(Selector::Sequence(r.sequence), &out).unwrap();
        assert!(integrity_ok(&out));
        let n = count(&out);
        assert!(n >= last && n <= after, "{last} <= {n} <= {after}");
        last = n;
    }
    assert!(integrity_ok(&t.db));
}
