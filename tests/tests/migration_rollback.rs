//! Migration-aware rollback end to end, with the real binaries on loopback: a terminal
//! enrolled with `otter-server serve` (backups to the fleet's recovery key) applies
//! releases published with `otter-server publish` whose manifests declare
//! `"migrates_database": true`. Before each, the agent backs the till database up to the
//! server (listed by `otter-server backups list`) and keeps a local snapshot; a release whose
//! health check fails after migrating is rolled back with the database `.dump`-identical to
//! before; a healthy one stays, and `otter-agent rollback` later puts the pre-migration
//! database back with the old version.
//!
//! The binaries are taken from the target dir next to this test executable: build them
//! first (`cargo build --workspace`; `cargo test --workspace` does).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/fleet.rs"]
mod fleet;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::show;
use fleet::{Fleet, Terminal, COMPONENT, MODEL};
use serde_json::Value;

/// A bundle of `COMPONENT` at `version`; with `migrate`, its install command adds a column
/// and a table to `db` and the manifest declares the migration.
fn bundle(version: &str, health: &[&str], migrate: Option<&Path>) -> Vec<u8> {
    let payload = format!("pos-app {version}\n").into_bytes();
    let mut manifest = serde_json::json!({
        "name": COMPONENT, "kind": "firmware", "version": version,
        "hardware": [MODEL],
        "payload": [{"path": "app.bin", "size": payload.len(),
                     "sha256": otter_keys::hash::sha256_hex(&payload)}],
        "health": health,
    });
    if let Some(db) = migrate {
        let table = format!("schema_{}", version.replace('.', "_"));
        manifest["install"] = serde_json::json!([
            "python3",
            "-c",
            format!(
                "import sqlite3, sys\n\
                 c = sqlite3.connect(sys.argv[1])\n\
                 c.execute('CREATE TABLE {table}(x TEXT)')\n\
                 c.execute('ALTER TABLE sales ADD COLUMN tax_{table} INTEGER DEFAULT 1')\n\
                 c.commit()\n"
            ),
            db.to_str().unwrap(),
        ]);
        manifest["migrates_database"] = serde_json::json!(true);
    }
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in [("manifest.json", &manifest[..]), ("app.bin", &payload[..])] {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    zstd::encode_all(&b.into_inner().unwrap()[..], 1).unwrap()
}

/// A fleet with a recovery key, its one terminal and the terminal's till database.
struct Env {
    fleet: Fleet,
    t: Terminal,
    db: PathBuf,
}

impl Env {
    fn agent(&self, args: &[&str]) -> Output {
        self.t.agent(args)
    }

    fn publish(&self, version: &str, bytes: &[u8]) {
        self.fleet.publish(version, bytes, &[]);
    }

    fn backups(&self) -> usize {
        self.fleet.backups(None).len()
    }

    fn active(&self) -> String {
        self.t
            .active()
            .unwrap_or_else(|| panic!("no active {COMPONENT} under {}", self.t.root.display()))
    }

    /// The database's `.dump` (Python's iterdump) after an integrity check.
    fn dump(&self) -> String {
        let out = Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys\n\
                 c = sqlite3.connect(sys.argv[1])\n\
                 assert c.execute('PRAGMA integrity_check').fetchone()[0] == 'ok'\n\
                 print('\\n'.join(c.iterdump()))",
            ])
            .arg(&self.db)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", show(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    fn app_log(&self) -> String {
        std::fs::read_to_string(self.fleet.tmp.path().join("app.log")).unwrap_or_default()
    }
}

fn setup() -> Env {
    let fleet = Fleet::builder().recovery_key().start();
    let t = fleet.enroll("terminal");
    let db = t.dir.join("pos.db");
    let out = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1])\n\
             c.execute('PRAGMA journal_mode=WAL')\n\
             c.execute('CREATE TABLE sales (id INTEGER PRIMARY KEY, cents INTEGER)')\n\
             c.executemany('INSERT INTO sales VALUES (?, ?)', [(i, i * 7) for i in range(2000)])\n\
             c.commit()",
        ])
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let log = fleet.tmp.path().join("app.log");
    let cmd = |word: &str| {
        format!(
            "[\"/bin/sh\", \"-c\", \"echo {word} >> {}\"]",
            log.display()
        )
    };
    t.append_config(&format!(
        "[backup]\ndatabase = {db:?}\npack_size = 65536\n\
         [migration]\nstop_command = {}\nstart_command = {}\n",
        cmd("stop"),
        cmd("start")
    ));
    Env { fleet, t, db }
}

#[test]
fn migrating_releases_back_up_first_and_every_rollback_restores_the_database() {
    let env = setup();
    env.publish("1.0.0", &bundle("1.0.0", &["/bin/true"], None));
    let out = env.agent(&["update"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(env.active(), "1.0.0");
    assert_eq!(env.backups(), 0, "a plain release takes no backup");
    let original = env.dump();

    // Migrates, then fails its health check: rolled back, database as before.
    env.publish("2.0.0", &bundle("2.0.0", &["/bin/false"], Some(&env.db)));
    let out = env.agent(&["update"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        show(&out).contains("pre-migration snapshot"),
        "{}",
        show(&out)
    );
    assert_eq!(env.active(), "1.0.0");
    assert_eq!(env.dump(), original);
    assert_eq!(
        env.backups(),
        1,
        "the pre-migration backup reached the server"
    );
    assert_eq!(env.app_log(), "stop\nstart\n");

    // Migrates and is healthy: stays; the database is migrated.
    env.publish("2.1.0", &bundle("2.1.0", &["/bin/true"], Some(&env.db)));
    let out = env.agent(&["update"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(env.active(), "2.1.0");
    assert!(env.dump().contains("schema_2_1_0"));
    assert_eq!(env.backups(), 2);
    let records: Value =
        serde_json::from_slice(&std::fs::read(env.t.state.join("migration/records.json")).unwrap())
            .unwrap();
    let states: Vec<&str> = records["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["restored", "committed"]);

    // The operator rolls back: old version, pre-migration database.
    let out = env.agent(&["rollback", COMPONENT]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rolled back from 2.1.0 to 1.0.0"),
        "{}",
        show(&out)
    );
    assert_eq!(env.active(), "1.0.0");
    assert_eq!(env.dump(), original);
    assert_eq!(env.app_log(), "stop\nstart\nstop\nstart\nstop\nstart\n");
}
