//! End to end, with the real binaries on loopback: `otter-server serve` with a
//! `[backups] recovery_recipient` (an age identity made by the test), a terminal enrolled
//! with `otter-agent enroll`, then `otter-agent backup` of a small SQLite database twice
//! (the second after changing some rows). `otter-server backups list --json` shows both
//! backups, the second shipping fewer new bytes than the first, and the recovery identity
//! opens the stored manifest's body. The server is stopped with SIGTERM in all cases.
//!
//! The binaries are taken from the target dir next to this test executable: build them
//! first (`cargo build --workspace`; `cargo test --workspace` does).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/fleet.rs"]
mod fleet;

use std::path::Path;
use std::process::{Command, Output};

use common::{command, show};
use fleet::Fleet;

use serde_json::Value;

/// Runs python3's sqlite3 on `db` with `script` (SQL).
fn sql(db: &Path, script: &str) {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1])\n\
             c.executescript(sys.argv[2])\n\
             c.commit()\n\
             c.close()",
        ])
        .arg(db)
        .arg(script)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
}

fn backup(state: &Path, db: &Path) -> Output {
    command("otter-agent")
        .args(["backup", "--pack-size", "65536", "--state-dir"])
        .arg(state)
        .arg("--database")
        .arg(db)
        .output()
        .unwrap()
}

#[test]
fn an_enrolled_terminal_backs_up_to_the_server_and_the_recovery_key_opens_it() {
    use otter_keys::envelope::SignedManifest;

    let mut fleet = Fleet::builder().recovery_key().start();
    let t = fleet.enroll("terminal");
    let (data, state) = (fleet.data.clone(), t.state.clone());
    let recovery = fleet.recovery();
    let agent: Value =
        serde_json::from_slice(&std::fs::read(state.join("agent.json")).unwrap()).unwrap();
    let device_id = agent["device_id"].as_str().unwrap().to_owned();
    assert_eq!(
        agent["recovery_recipient"],
        recovery.to_public().to_string().as_str()
    );

    // A small till database: 2000 sales.
    let db = t.dir.join("pos.db");
    sql(
        &db,
        "CREATE TABLE sales (id INTEGER PRIMARY KEY, item TEXT NOT NULL, cents INTEGER NOT NULL);\n\
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)\n\
         INSERT INTO sales (id, item, cents)\n\
         SELECT i, 'item-' || i || '-' || hex(randomblob(40)), i * 7 FROM n;",
    );

    let out = backup(&state, &db);
    assert!(out.status.success(), "{}", show(&out));
    let first = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(first.contains("backup #1"), "{first}");
    assert!(first.contains("countersigned"), "{first}");

    sql(
        &db,
        "UPDATE sales SET cents = cents + 1 WHERE id % 500 = 0;",
    );
    // Keep the local index as it was after #1, to play a run killed after the server
    // accepted #2 but before the agent recorded it.
    let index = state.join("backup/index.json");
    let index_after_first = std::fs::read(&index).unwrap();
    let out = backup(&state, &db);
    assert!(out.status.success(), "{}", show(&out));
    let second = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(second.contains("backup #2"), "{second}");
    eprintln!("{first}{second}");

    // The agent that lost #2 from its index reads #2 back from the server (its own signature
    // checked) and continues the chain with #3 instead of being refused forever.
    std::fs::write(&index, &index_after_first).unwrap();
    sql(
        &db,
        "UPDATE sales SET cents = cents + 1 WHERE id % 700 = 0;",
    );
    let out = backup(&state, &db);
    assert!(out.status.success(), "{}", show(&out));
    let third = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(third.contains("backup #3"), "{third}");

    let out = command("otter-server")
        .args([
            "backups",
            "list",
            "--json",
            "--device",
            &device_id,
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let backups = list.as_array().unwrap();
    let seqs: Vec<u64> = backups
        .iter()
        .map(|b| b["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3], "{list}");
    let new_bytes = |i: usize| backups[i]["new_pack_bytes"].as_u64().unwrap();
    assert!(new_bytes(0) > 0, "{list}");
    assert!(
        new_bytes(1) < new_bytes(0),
        "the second backup ships only changed pages: {list}"
    );

    // The recovery identity opens the stored manifest of every backup.
    for seq in [1u64, 2, 3] {
        let path = data.join(format!("store/backups/{device_id}/manifests/{seq:020}"));
        let bytes = std::fs::read(&path).unwrap();
        let manifest = SignedManifest::from_bytes(&bytes, 256 * 1024 * 1024).unwrap();
        assert_eq!(manifest.header.sequence, seq);
        let body = manifest.open_body(recovery, 256 * 1024 * 1024).unwrap();
        assert_eq!(body.row_counts.get("sales").copied(), Some(2000));
        assert!(body.page_count > 1);
    }

    // A state file without a recovery key (enrolled while the server had none, or written
    // by an older agent) still loads, and the backup is refused with a clear message.
    let mut agent = agent;
    agent.as_object_mut().unwrap().remove("recovery_recipient");
    std::fs::write(state.join("agent.json"), agent.to_string()).unwrap();
    let out = backup(&state, &db);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("the fleet has no recovery key configured on the server"),
        "{}",
        show(&out)
    );

    let status = fleet.server.stop().expect("the server stops on SIGTERM");
    assert!(
        status.success(),
        "the server exits cleanly on SIGTERM: {status}"
    );
}
