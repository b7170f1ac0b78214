//! End to end, with the real binaries on loopback: `otter-agent backup --limit-rate` is
//! measurably slowed by the cap (a lower bound only), and a capped backup killed with SIGKILL
//! mid-upload leaves no manifest on the server; the next run completes, reusing the packs
//! already uploaded. The server is stopped with SIGTERM in all cases.
//!
//! The binaries are taken from the target dir next to this test executable: build them
//! first (`cargo build --workspace`; `cargo test --workspace` does).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/fleet.rs"]
mod fleet;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{command, show};
use fleet::Fleet;
use serde_json::Value;

/// Bytes per second of the cap used by the tests.
const RATE: u64 = 1024 * 1024;

fn sql(db: &Path, script: &str) {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nc.executescript(sys.argv[2])\nc.commit()\nc.close()",
        ])
        .arg(db)
        .arg(script)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
}

fn backup_cmd(state: &Path, db: &Path, rate: u64) -> Command {
    let mut c = command("otter-agent");
    c.args([
        "backup",
        "--parallel",
        "3",
        "--pack-size",
        "262144",
        "--limit-rate",
    ])
    .arg(rate.to_string())
    .arg("--state-dir")
    .arg(state)
    .arg("--database")
    .arg(db);
    c
}

/// `(pack bytes, new packs)` from the backup's summary line.
fn shipped(out: &Output) -> (u64, u64) {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rest = text.split_once("bytes shipped (").expect("a summary").1;
    let mut words = rest.split_whitespace();
    let bytes = words.next().unwrap().parse().unwrap();
    assert_eq!(words.next(), Some("in"));
    let packs = words.next().unwrap().parse().unwrap();
    (bytes, packs)
}

/// Waits until the running backup recorded `n` uploaded packs (`backup/pending/`).
fn wait_for_uploaded_packs(state: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(state.join("backup/pending")).map_or(0, |d| d.count()) < n {
        assert!(Instant::now() < deadline, "no {n} packs uploaded in 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_capped_backup_is_slowed_and_a_killed_one_resumes_without_a_manifest() {
    let mut fleet = Fleet::builder().recovery_key().start();
    let t = fleet.enroll("terminal");
    let (state, device) = (t.state.clone(), t.device_id.clone());

    // About 2 MiB of incompressible rows.
    let db = t.dir.join("pos.db");
    sql(
        &db,
        "CREATE TABLE blobs (id INTEGER PRIMARY KEY, b BLOB NOT NULL);\n\
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2048)\n\
         INSERT INTO blobs (id, b) SELECT i, randomblob(1000) FROM n;",
    );
    let started = Instant::now();
    let out = backup_cmd(&state, &db, RATE).output().unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "{}", show(&out));
    let (bytes, packs) = shipped(&out);
    assert!(bytes >= 2_000_000 && packs >= 4, "{}", show(&out));
    // Lower bound only: the cap can only make it slower.
    let floor = Duration::from_secs_f64(0.75 * bytes as f64 / RATE as f64);
    assert!(took >= floor, "{bytes} bytes at {RATE} B/s took {took:?}");
    assert_eq!(fleet.backups(Some(&device)).len(), 1);

    // Another 2 MiB of new rows; the run is killed with SIGKILL mid-upload.
    sql(
        &db,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2048)\n\
         INSERT INTO blobs (id, b) SELECT 10000 + i, randomblob(1000) FROM n;",
    );
    let mut child = backup_cmd(&state, &db, RATE / 2)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_uploaded_packs(&state, 2);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the capped run ended too early"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        fleet.backups(Some(&device)).len(),
        1,
        "a killed run left a manifest"
    );

    // The next run completes and ships fewer packs than the new data needs: some were reused.
    let out = backup_cmd(&state, &db, RATE).output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let (_, packs_after_kill) = shipped(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("backup #2"),
        "{}",
        show(&out)
    );
    assert_eq!(fleet.backups(Some(&device)).len(), 2);
    assert!(
        packs_after_kill < packs,
        "{packs_after_kill} new packs after the kill, {packs} for the same amount of new data"
    );

    // Another 2 MiB; the server stops mid-upload: the run fails and leaves no manifest.
    sql(
        &db,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2048)\n\
         INSERT INTO blobs (id, b) SELECT 20000 + i, randomblob(1000) FROM n;",
    );
    let child = backup_cmd(&state, &db, RATE / 2)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_uploaded_packs(&state, 2);
    fleet.server.stop();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{}", show(&out));
    assert_eq!(
        fleet.backups(Some(&device)).len(),
        2,
        "a failed run left a manifest"
    );

    // The server comes back (on another port); the next run completes, reusing packs.
    fleet.restart("server2.log");
    let mut agent: Value =
        serde_json::from_slice(&std::fs::read(state.join("agent.json")).unwrap()).unwrap();
    agent["server_url"] = Value::String(fleet.server.url.clone());
    std::fs::write(
        state.join("agent.json"),
        serde_json::to_vec(&agent).unwrap(),
    )
    .unwrap();
    let out = backup_cmd(&state, &db, RATE).output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("backup #3"),
        "{}",
        show(&out)
    );
    let (_, packs_after_stop) = shipped(&out);
    assert!(
        packs_after_stop < packs,
        "{packs_after_stop} new packs after the stop"
    );
    assert_eq!(fleet.backups(Some(&device)).len(), 3);
    fleet.server.stop();
}
