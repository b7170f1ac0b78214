#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The integrity pass on real install roots: every kind of drift (content, added, removed,
//! mode, symlinks, `current` swapped, manifest rewritten) is found; `otter-agent check`
//! records each drift once as a security event; a corrupted SQLite database fails its
//! `quick_check` and is reported.

mod apply_common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use apply_common::{quick_config, Spec};
use otter_agent::apply::Applier;
use otter_agent::integrity::{check_install_root, DriftKind, MonitorState};

fn install(root: &Path, work: &Path, specs: &[Spec]) {
    let (mut a, _) = Applier::open(root, quick_config()).unwrap();
    for s in specs {
        a.install(&s.build(work), &s.expected()).unwrap();
    }
}

fn kinds(root: &Path, state: &mut MonitorState) -> BTreeSet<(DriftKind, String)> {
    check_install_root(root, state, 100)
        .unwrap()
        .into_iter()
        .flat_map(|c| c.findings)
        .map(|f| (f.kind, f.path))
        .collect()
}

#[test]
fn every_kind_of_drift_is_found_and_an_intact_tree_is_pinned() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    install(
        &root,
        work.path(),
        &[Spec::new("pos-app", "1.0.0"), Spec::new("pos-app", "1.1.0")],
    );
    let mut state = MonitorState::default();
    let checks = check_install_root(&root, &mut state, 100).unwrap();
    assert_eq!(checks.len(), 1);
    assert!(checks[0].findings.is_empty(), "{:?}", checks[0].findings);
    assert_eq!(checks[0].files, 3);
    assert_eq!(state.pins["pos-app"].version, "1.1.0");

    let v = root.join("components/pos-app/1.1.0");
    fs::write(v.join("etc/app.conf"), "version = 9.9.9\n").unwrap();
    fs::write(v.join("bin/backdoor"), "#!/bin/sh\n").unwrap();
    fs::remove_file(v.join("data/v1.1.0.txt")).unwrap();
    fs::set_permissions(v.join("bin/app"), fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", v.join("etc/shadow")).unwrap();
    let found = kinds(&root, &mut state);
    let want: BTreeSet<(DriftKind, String)> = [
        (DriftKind::Changed, "etc/app.conf"),
        (DriftKind::Added, "bin/backdoor"),
        (DriftKind::Removed, "data/v1.1.0.txt"),
        (DriftKind::ModeChanged, "bin/app"),
        (DriftKind::Symlink, "etc/shadow"),
    ]
    .into_iter()
    .map(|(k, p)| (k, p.to_string()))
    .collect();
    assert_eq!(found, want);

    // A same-content swap of 0644 to 0755 is only visible against the pinned modes.
    let w = tempfile::tempdir().unwrap();
    let root2 = w.path().join("root");
    install(&root2, w.path(), &[Spec::new("drv", "2.0.0")]);
    let mut s2 = MonitorState::default();
    assert!(kinds(&root2, &mut s2).is_empty());
    let v2 = root2.join("components/drv/2.0.0");
    fs::set_permissions(v2.join("etc/app.conf"), fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        kinds(&root2, &mut s2),
        [(DriftKind::ModeChanged, "etc/app.conf".to_string())].into()
    );
    fs::set_permissions(v2.join("etc/app.conf"), fs::Permissions::from_mode(0o644)).unwrap();
    assert!(kinds(&root2, &mut s2).is_empty());

    // A manifest rewritten to match altered files is caught by the pin.
    let mut m: serde_json::Value =
        serde_json::from_slice(&fs::read(v2.join("manifest.json")).unwrap()).unwrap();
    m["hardware"] = serde_json::json!(["pos-a", "pos-b"]);
    fs::write(v2.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    assert_eq!(
        kinds(&root2, &mut s2),
        [(DriftKind::Manifest, "manifest.json".to_string())].into()
    );

    // `current` pointed at another tree than the journal's active version.
    let c = root.join("components/pos-app/current");
    let tmp = root.join("components/pos-app/current.tmp");
    std::os::unix::fs::symlink("1.0.0", &tmp).unwrap();
    fs::rename(&tmp, &c).unwrap();
    assert!(kinds(&root, &mut state).contains(&(DriftKind::Symlink, "current".to_string())));
}

fn agent(state_dir: &Path, root: &Path, db: Option<&Path>) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_otter-agent"));
    c.args(["check", "--json", "--no-report"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("OTTER_STATE_DIR", state_dir)
        .env("OTTER_INSTALL_ROOT", root);
    if let Some(db) = db {
        let cfg = state_dir.join("agent.toml");
        fs::write(
            &cfg,
            format!("[database]\npath = {:?}\n", db.display().to_string()),
        )
        .unwrap();
        c.env("OTTER_AGENT_CONFIG", cfg);
    }
    c
}

fn events(state_dir: &Path) -> Vec<(String, String)> {
    let s: serde_json::Value =
        serde_json::from_slice(&fs::read(state_dir.join("status.json")).unwrap()).unwrap();
    s["unreported_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn otter_agent_check_records_drift_once_and_database_corruption() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let state_dir = work.path().join("state");
    fs::create_dir(&state_dir).unwrap();
    install(&root, work.path(), &[Spec::new("pos-app", "1.0.0")]);

    let out = agent(&state_dir, &root, None).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["components"][0]["component"], "pos-app");
    assert_eq!(r["components"][0]["findings"], serde_json::json!([]));
    assert!(events(&state_dir).is_empty());

    fs::write(
        root.join("components/pos-app/1.0.0/bin/app"),
        "#!/bin/sh\nexfiltrate\n",
    )
    .unwrap();
    let out = agent(&state_dir, &root, None).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["components"][0]["findings"][0]["kind"], "changed");
    assert_eq!(r["components"][0]["findings"][0]["path"], "bin/app");
    let ev = events(&state_dir);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].0, "integrity_drift");
    assert!(ev[0].1.contains("pos-app 1.0.0") && ev[0].1.contains("changed bin/app"));
    // The same drift again: still failing, but not a second event.
    let out = agent(&state_dir, &root, None).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(events(&state_dir).len(), 1);

    // A sound database passes quick_check; a damaged page fails it.
    let db = work.path().join("sales.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "CREATE TABLE sales(id INTEGER PRIMARY KEY, item TEXT, note BLOB);
         CREATE INDEX sales_item ON sales(item);",
    )
    .unwrap();
    let c = {
        let mut c = c;
        let tx = c.transaction().unwrap();
        for i in 0..2000 {
            tx.execute(
                "INSERT INTO sales(item, note) VALUES (?1, zeroblob(200))",
                [format!("item-{i}")],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        c
    };
    drop(c);
    let fixed = work.path().join("fixed");
    fs::create_dir(&fixed).unwrap();
    install(&fixed, work.path(), &[Spec::new("pos-app", "1.0.0")]);
    let out = agent(&state_dir, &fixed, Some(&db)).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["database"]["ok"], true);
    assert_eq!(r["database"]["level"], "quick");

    let mut bytes = fs::read(&db).unwrap();
    assert!(bytes.len() > 20 * 4096);
    for b in &mut bytes[5 * 4096 + 8..5 * 4096 + 600] {
        *b = 0xa5;
    }
    fs::write(&db, &bytes).unwrap();
    let out = agent(&state_dir, &fixed, Some(&db)).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["database"]["ok"], false, "{r}");
    let ev = events(&state_dir);
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert_eq!(ev[1].0, "database_corrupt");
    assert!(ev[1].1.contains("quick_check"), "{}", ev[1].1);
}
