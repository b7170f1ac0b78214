//! Migration-aware apply and rollback (docs/apply.md, "Database migrations"), on real
//! bundles, a real SQLite database and the real `otter-agent` binary: a bundle whose install
//! command migrates the database and whose health check fails leaves the database exactly
//! as it was before; a manual `otter-agent rollback` after a successful migrating update
//! puts the pre-migration database back; a failed pre-migration backup blocks the update;
//! a restore cut by a crash is finished on the next start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod apply_common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use apply_common::{link, quick_config, write_raw, Raw, Spec};
use otter_agent::apply::{Applier, Outcome};
use otter_agent::config::AgentConfig;
use otter_agent::migration::{self, MigrationError, RecordState, Records};
use rusqlite::Connection;

struct Env {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    db: PathBuf,
    cfg: AgentConfig,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let db = dir.join("pos.sqlite");
        let c = Connection::open(&db).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE sales(id INTEGER PRIMARY KEY, amount INTEGER NOT NULL, note TEXT);
             CREATE INDEX sales_amount ON sales(amount);",
        )
        .unwrap();
        for i in 0..500 {
            c.execute(
                "INSERT INTO sales(amount, note) VALUES (?1, ?2)",
                rusqlite::params![i * 7 % 1000, format!("sale {i}")],
            )
            .unwrap();
        }
        drop(c);
        let log = dir.join("app.log");
        let mut cfg = AgentConfig {
            state_dir: Some(dir.join("state")),
            install_root: Some(dir.join("root")),
            apply: quick_config(),
            ..AgentConfig::default()
        };
        fs::create_dir_all(dir.join("state")).unwrap();
        cfg.backup.database = Some(db.clone());
        cfg.migration.server_backup = false;
        let sh = |word: &str| {
            vec![
                "/bin/sh".to_string(),
                "-c".into(),
                format!("echo {word} >> {}", log.display()),
            ]
        };
        cfg.migration.stop_command = Some(sh("stop"));
        cfg.migration.start_command = Some(sh("start"));
        Env {
            _tmp: tmp,
            dir,
            db,
            cfg,
        }
    }

    fn state(&self) -> &Path {
        self.cfg.state_dir.as_deref().unwrap()
    }

    fn root(&self) -> &Path {
        self.cfg.install_root.as_deref().unwrap()
    }

    fn applier(&self) -> Applier {
        Applier::open(self.root(), self.cfg.apply.clone())
            .unwrap()
            .0
    }

    fn app_log(&self) -> String {
        fs::read_to_string(self.dir.join("app.log")).unwrap_or_default()
    }

    /// A plain bundle.
    fn plain(&self, version: &str) -> (PathBuf, Spec) {
        let spec = Spec::new("pos-app", version);
        (spec.build(&self.dir), spec)
    }

    /// A bundle declaring a migration whose install command adds a column and a table,
    /// with the given health check.
    fn migrating(&self, version: &str, health: &[&str]) -> (PathBuf, Spec) {
        let mut spec = Spec::new("pos-app", version).health(health);
        spec.install = Some(vec![
            "python3".into(),
            "-c".into(),
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1])\n\
             c.execute('ALTER TABLE sales ADD COLUMN tax INTEGER DEFAULT 0')\n\
             c.execute('CREATE TABLE schema_v2(x TEXT)')\n\
             c.execute('UPDATE sales SET tax = amount / 10')\n\
             c.commit()\n\
             open(sys.argv[2], 'w').write('migrated')\n"
                .into(),
            self.db.to_string_lossy().into_owned(),
            self.dir
                .join("migrated.marker")
                .to_string_lossy()
                .into_owned(),
        ]);
        let mut manifest: serde_json::Value = serde_json::from_slice(&spec.manifest()).unwrap();
        manifest["migrates_database"] = serde_json::json!(true);
        let mut entries = vec![Raw::file(
            "manifest.json",
            serde_json::to_vec_pretty(&manifest).unwrap(),
            0o644,
        )];
        for (p, c, x) in &spec.files {
            entries.push(Raw::file(p, c.clone(), if *x { 0o755 } else { 0o644 }));
        }
        let path = self
            .dir
            .join(format!("pos-app-{version}-migrating.tar.zst"));
        write_raw(&path, &entries);
        (path, spec)
    }

    fn install(&self, bundle: &Path, spec: &Spec) -> Result<Outcome, MigrationError> {
        let mut a = self.applier();
        migration::install(&self.cfg, self.state(), &mut a, bundle, &spec.expected())
    }
}

/// The database's content: schema and every row, as text (what `.dump` shows).
fn dump(db: &Path) -> String {
    let c = Connection::open(db).unwrap();
    let mut out = String::new();
    let mut tables = Vec::new();
    {
        let mut s = c
            .prepare("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
            .unwrap();
        let rows = s
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            })
            .unwrap();
        for row in rows {
            let (kind, name, sql) = row.unwrap();
            out.push_str(&format!("{kind} {name}: {}\n", sql.unwrap_or_default()));
            if kind == "table" {
                tables.push(name);
            }
        }
    }
    for t in tables {
        let mut s = c.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
        let n = s.column_count();
        let rows = s
            .query_map([], |r| {
                let mut v = Vec::new();
                for i in 0..n {
                    v.push(format!("{:?}", r.get_ref(i)?));
                }
                Ok(v.join("|"))
            })
            .unwrap();
        for row in rows {
            out.push_str(&format!("{t}: {}\n", row.unwrap()));
        }
    }
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    out
}

fn has_tax_column(db: &Path) -> bool {
    let c = Connection::open(db).unwrap();
    let sql: String = c
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'sales'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    sql.contains("tax")
}

fn snapshots(state: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(state.join(migration::MIGRATION_DIR))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".sqlite") || n.starts_with("snapshot-"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_failed_health_check_after_a_migration_restores_the_database_with_the_old_version() {
    let env = Env::new();
    let (b1, s1) = env.plain("1.0.0");
    assert!(matches!(
        env.install(&b1, &s1).unwrap(),
        Outcome::Installed { .. }
    ));
    // A plain update takes no snapshot and runs no stop/start command.
    assert!(snapshots(env.state()).is_empty());
    assert_eq!(env.app_log(), "");
    let before = dump(&env.db);

    let (b2, s2) = env.migrating("2.0.0", &["/bin/false"]);
    let out = env.install(&b2, &s2).unwrap();
    match &out {
        Outcome::RolledBack {
            from, to, reason, ..
        } => {
            assert_eq!(from.to_string(), "2.0.0");
            assert_eq!(to.as_ref().unwrap().to_string(), "1.0.0");
            assert!(reason.contains("health check failed"), "{reason}");
            assert!(reason.contains("pre-migration snapshot"), "{reason}");
        }
        o => panic!("expected a rollback, got {o:?}"),
    }
    // The install command did migrate, and the rollback undid it.
    assert!(env.dir.join("migrated.marker").exists());
    assert_eq!(link(env.root(), "pos-app").as_deref(), Some("1.0.0"));
    assert!(!has_tax_column(&env.db));
    assert_eq!(dump(&env.db), before);
    // Stopped before the snapshot, started once at the end.
    assert_eq!(env.app_log(), "stop\nstart\n");
    let records = Records::load(env.state()).unwrap();
    assert_eq!(records.records.len(), 1);
    let r = &records.records[0];
    assert_eq!(r.state, RecordState::Restored);
    assert_eq!((r.from.as_deref(), r.to.as_str()), (Some("1.0.0"), "2.0.0"));
    assert!(r.snapshot.is_none(), "a used snapshot is removed");
    assert!(snapshots(env.state()).is_empty());
}

#[test]
fn a_failed_install_command_of_a_migration_restores_the_database() {
    let env = Env::new();
    let (b1, s1) = env.plain("1.0.0");
    env.install(&b1, &s1).unwrap();
    let before = dump(&env.db);
    // Migrates, then fails: nothing is switched, the half-migrated database is put back.
    let (b2, mut s2) = env.migrating("2.0.0", &["/bin/true"]);
    let mut argv = s2.install.take().unwrap();
    argv[2].push_str("raise SystemExit(3)\n");
    s2.install = Some(argv);
    let (b2, s2) = {
        let _ = b2;
        let mut manifest: serde_json::Value = serde_json::from_slice(&s2.manifest()).unwrap();
        manifest["migrates_database"] = serde_json::json!(true);
        let mut entries = vec![Raw::file(
            "manifest.json",
            serde_json::to_vec(&manifest).unwrap(),
            0o644,
        )];
        for (p, c, x) in &s2.files {
            entries.push(Raw::file(p, c.clone(), if *x { 0o755 } else { 0o644 }));
        }
        let path = env.dir.join("failing.tar.zst");
        write_raw(&path, &entries);
        (path, s2)
    };
    let err = env.install(&b2, &s2).unwrap_err();
    assert!(
        matches!(
            err,
            MigrationError::Apply(otter_agent::apply::ApplyError::Hook { .. })
        ),
        "{err}"
    );
    assert!(env.dir.join("migrated.marker").exists());
    assert_eq!(link(env.root(), "pos-app").as_deref(), Some("1.0.0"));
    assert_eq!(dump(&env.db), before);
    assert_eq!(
        Records::load(env.state()).unwrap().records[0].state,
        RecordState::Restored
    );
}

#[test]
fn manual_rollback_after_a_successful_migration_restores_the_pre_migration_database() {
    let env = Env::new();
    let (b1, s1) = env.plain("1.0.0");
    env.install(&b1, &s1).unwrap();
    let before = dump(&env.db);
    let (b2, s2) = env.migrating("2.0.0", &["/bin/true"]);
    assert!(matches!(
        env.install(&b2, &s2).unwrap(),
        Outcome::Installed { .. }
    ));
    assert!(has_tax_column(&env.db));
    // The local snapshot is kept, private, until a later backup exists.
    let snaps = snapshots(env.state());
    assert_eq!(snaps, vec!["pre-1.sqlite".to_string()]);
    let mdir = env.state().join(migration::MIGRATION_DIR);
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&mdir.join("pre-1.sqlite")), 0o600);
    assert_eq!(mode(&mdir), 0o700);
    assert_eq!(
        Records::load(env.state()).unwrap().records[0].state,
        RecordState::Committed
    );
    // The terminal keeps selling on the new schema.
    Connection::open(&env.db)
        .unwrap()
        .execute(
            "INSERT INTO sales(amount, note, tax) VALUES (5, 'after', 1)",
            [],
        )
        .unwrap();

    // The real binary, configured by file.
    let config = env.dir.join("agent.toml");
    let cmd = |word: &str| {
        format!(
            "[\"/bin/sh\", \"-c\", \"echo {word} >> {}\"]",
            env.dir.join("app.log").display()
        )
    };
    fs::write(
        &config,
        format!(
            "state_dir = {:?}\ninstall_root = {:?}\n[backup]\ndatabase = {:?}\n\
             [migration]\nserver_backup = false\nstop_command = {}\nstart_command = {}\n",
            env.state(),
            env.root(),
            env.db,
            cmd("stop"),
            cmd("start")
        ),
    )
    .unwrap();
    let agent = env!("CARGO_BIN_EXE_otter-agent");
    let run = || {
        Command::new(agent)
            .args(["rollback", "pos-app", "--config"])
            .arg(&config)
            .env_remove("OTTER_STATE_DIR")
            .env_remove("OTTER_INSTALL_ROOT")
            .output()
            .unwrap()
    };
    let out = run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("rolled back from 2.0.0 to 1.0.0"),
        "{stdout}"
    );
    assert!(stdout.contains("pre-migration snapshot"), "{stdout}");
    assert_eq!(link(env.root(), "pos-app").as_deref(), Some("1.0.0"));
    assert_eq!(dump(&env.db), before);
    assert_eq!(env.app_log(), "stop\nstart\nstop\nstart\n");
    assert!(snapshots(env.state()).is_empty());

    // Rolling "back" onto 2.0.0 would run it on the old schema: refused, nothing changed.
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("migration was undone"), "{stderr}");
    assert_eq!(link(env.root(), "pos-app").as_deref(), Some("1.0.0"));
    assert_eq!(dump(&env.db), before);
}

#[test]
fn a_failed_pre_migration_backup_blocks_the_update() {
    let env = Env::new();
    let (b1, s1) = env.plain("1.0.0");
    env.install(&b1, &s1).unwrap();
    let before = dump(&env.db);
    let (b2, s2) = env.migrating("2.0.0", &["/bin/true"]);

    // The server backup is required but the terminal is not enrolled.
    let mut cfg = env.cfg.clone();
    cfg.migration.server_backup = true;
    let mut a = env.applier();
    let err = migration::install(&cfg, env.state(), &mut a, &b2, &s2.expected()).unwrap_err();
    drop(a);
    let msg = err.to_string();
    assert!(matches!(err, MigrationError::Backup { .. }), "{msg}");
    assert!(msg.contains("not enrolled"), "{msg}");
    assert!(msg.contains("the update was not applied"), "{msg}");

    // No database configured.
    let mut cfg = env.cfg.clone();
    cfg.backup.database = None;
    let mut a = env.applier();
    let err = migration::install(&cfg, env.state(), &mut a, &b2, &s2.expected()).unwrap_err();
    drop(a);
    assert!(matches!(err, MigrationError::NoDatabase { .. }), "{err}");

    // The configured database cannot be read (a directory).
    let mut cfg = env.cfg.clone();
    cfg.backup.database = Some(env.dir.clone());
    let mut a = env.applier();
    let err = migration::install(&cfg, env.state(), &mut a, &b2, &s2.expected()).unwrap_err();
    drop(a);
    assert!(matches!(err, MigrationError::Backup { .. }), "{err}");

    // The application cannot be stopped.
    let mut cfg = env.cfg.clone();
    cfg.migration.stop_command = Some(vec!["/bin/false".into()]);
    let mut a = env.applier();
    let err = migration::install(&cfg, env.state(), &mut a, &b2, &s2.expected()).unwrap_err();
    drop(a);
    assert!(err.to_string().contains("stop command"), "{err}");

    // Nothing was applied, migrated, kept or recorded; the application was started again.
    assert!(!env.dir.join("migrated.marker").exists());
    assert_eq!(link(env.root(), "pos-app").as_deref(), Some("1.0.0"));
    assert_eq!(dump(&env.db), before);
    assert!(snapshots(env.state()).is_empty());
    assert!(Records::load(env.state()).unwrap().records.is_empty());
    assert_eq!(env.app_log(), "stop\nstart\nstop\nstart\n");
}

#[test]
fn a_restore_cut_by_a_crash_is_finished_on_the_next_start_and_old_snapshots_go() {
    let env = Env::new();
    let (b1, s1) = env.plain("1.0.0");
    env.install(&b1, &s1).unwrap();
    let before = dump(&env.db);
    let (b2, s2) = env.migrating("2.0.0", &["/bin/true"]);
    env.install(&b2, &s2).unwrap();
    assert!(has_tax_column(&env.db));

    // A manual rollback killed after switching the code, before the database was put
    // back: the journal says 1.0.0, the record says restoring.
    let mut records = Records::load(env.state()).unwrap();
    records.records[0].state = RecordState::Restoring;
    records.save(env.state()).unwrap();
    env.applier().rollback("pos-app").unwrap();
    assert!(has_tax_column(&env.db));

    let a = env.applier();
    let lines = migration::reconcile(&env.cfg, env.state(), &a, None).unwrap();
    drop(a);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("restored the pre-migration")),
        "{lines:?}"
    );
    assert_eq!(dump(&env.db), before);
    assert_eq!(
        Records::load(env.state()).unwrap().records[0].state,
        RecordState::Restored
    );

    // A committed migration's snapshot is removed once a later backup exists.
    let env = Env::new();
    let (b1, s1) = env.plain("1.0.0");
    let (b2, s2) = env.migrating("2.0.0", &["/bin/true"]);
    env.install(&b1, &s1).unwrap();
    env.install(&b2, &s2).unwrap();
    assert_eq!(snapshots(env.state()).len(), 1);
    let a = env.applier();
    let committed_at = Records::load(env.state()).unwrap().records[0].updated_at;
    migration::reconcile(&env.cfg, env.state(), &a, Some(committed_at - 5)).unwrap();
    assert_eq!(
        snapshots(env.state()).len(),
        1,
        "an older backup does not count"
    );
    migration::reconcile(&env.cfg, env.state(), &a, Some(committed_at + 1)).unwrap();
    assert!(snapshots(env.state()).is_empty());
    let rec = &Records::load(env.state()).unwrap().records[0];
    assert!(rec.snapshot.is_none());
    assert_eq!(rec.state, RecordState::Committed);
    drop(a);
    // Without the snapshot, a rollback over the migration is refused with what to do.
    let mut a = env.applier();
    let err = migration::rollback(&env.cfg, env.state(), &mut a, "pos-app").unwrap_err();
    assert!(err.to_string().contains("otter-agent restore"), "{err}");
    assert_eq!(link(env.root(), "pos-app").as_deref(), Some("2.0.0"));
}
