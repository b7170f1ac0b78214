//! The server's disaster recovery, as docs/disaster-recovery.md describes it, end to end with
//! the real binaries: a production repository (`otter-keys init`, `otter-server init`) serves
//! a release, an enrolled terminal installs it and backs its database up. While the server
//! runs, its database is copied with SQLite's online backup API and its keys and file store
//! are copied; the audit head is recorded "offsite". Then the host is lost (server stopped,
//! data dir deleted), and the copies are restored into a new data dir where a new server
//! starts. It must serve the same repository (a fresh TUF client verifies the release from the
//! offline root), keep the audit chain (verified against the recorded head), list the same
//! backups and countersign with the same receipt key (the terminal verifies its backup from
//! the new server), and carry on: a release published after the restore reaches the terminal.
//! A restore that forgot the keys directory is refused with a message naming it.
//! When the database copy is older than what terminals already saw (a release published after
//! it), the recorded audit head shows the lost entries, `serve` refuses to start because the
//! store holds newer metadata, and with `--resume-above-store` it re-signs above the store's
//! versions so that the terminal accepts its metadata at once and installs the next release.
//!
//! The binaries are taken from the target dir next to this test executable: build them
//! first (`cargo build --workspace`; `cargo test --workspace` does).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/fleet.rs"]
mod fleet;
#[path = "common/site.rs"]
mod site;

use std::path::Path;
use std::process::Command;

use common::{command, show, ServerGuard};
use fleet::COMPONENT;
use serde_json::Value;
use site::{bundle, copy_tree, ok, online_backup, Site};

/// A production site whose server config names a (new) fleet recovery key.
fn site() -> Site {
    let recovery = otter_keys::age::x25519::Identity::generate();
    Site::new(Some(&format!(
        "[backups]\nrecovery_recipient = \"{}\"\n",
        recovery.to_public()
    )))
}

#[test]
fn a_running_servers_copies_restore_onto_a_new_data_dir_with_repository_audit_chain_and_backups() {
    disaster(false);
}

/// The database copy is older than what terminals saw: a release was published (and
/// installed) after it. The recorded audit head reveals the lost entries; `serve` refuses to
/// start on it, and with `--resume-above-store` re-signs above the store so that the
/// terminal carries on.
#[test]
fn a_database_copy_older_than_the_store_is_refused_and_resumed_above_it_with_the_flag() {
    disaster(true);
}

fn disaster(stale: bool) {
    let s = site();
    let t = s.tmp.path();
    let data = t.join("host-a/otter-data");
    s.init(&data);
    let mut server = s.server_on(&data, "host-a.log", &[]);
    s.publish(&server, "1.0.0");

    // A terminal enrolls, installs 1.0.0 and backs its database up.
    s.enroll(&server, &data);
    assert!(s.update().contains("installed 1.0.0"));
    let pos_db = t.join("terminal/pos.db");
    std::fs::create_dir_all(pos_db.parent().unwrap()).unwrap();
    ok(Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1])\n\
             c.execute('CREATE TABLE sales (id INTEGER PRIMARY KEY, cents INTEGER)')\n\
             c.executemany('INSERT INTO sales VALUES (?, ?)', [(i, i * 3) for i in range(400)])\n\
             c.commit()",
        ])
        .arg(&pos_db)
        .output()
        .unwrap());
    let db = pos_db.to_str().unwrap();
    let state = s.state.to_str().unwrap();
    ok(s.agent(&["backup", "--state-dir", state, "--database", db]));

    // The backup, taken while the server runs: database (online backup API), keys, store.
    // Offsite, with it: the audit head.
    let offsite = t.join("offsite");
    std::fs::create_dir_all(&offsite).unwrap();
    online_backup(&data.join("otter.db"), &offsite.join("otter.db"));
    copy_tree(&data.join("keys"), &offsite.join("keys"));
    if stale {
        // After the database copy: a release, installed by the terminal.
        s.publish(&server, "1.0.5");
        assert!(s.update().contains("installed 1.0.5"));
    }
    copy_tree(&data.join("store"), &offsite.join("store"));
    let head = ok(s.host_on(&data, &["audit", "head"])).trim().to_owned();
    let backups_before: Value =
        serde_json::from_str(&ok(s.host_on(&data, &["backups", "list", "--json"]))).unwrap();
    assert_eq!(
        backups_before.as_array().unwrap().len(),
        1,
        "{backups_before}"
    );
    let receipt_key = std::fs::read(data.join("keys/backup-receipt.pub")).unwrap();

    // Host A is lost.
    let old_url = server.url.clone();
    server.stop();
    std::fs::remove_dir_all(t.join("host-a")).unwrap();

    // Forgetting the keys: the new server refuses to start, naming what is missing.
    let no_keys = t.join("host-b/incomplete");
    std::fs::create_dir_all(&no_keys).unwrap();
    std::fs::copy(offsite.join("otter.db"), no_keys.join("otter.db")).unwrap();
    copy_tree(&offsite.join("store"), &no_keys.join("store"));
    let err = s.serve_refuses(&no_keys, &[], "without its keys directory");
    assert!(
        err.contains("keys/targets.key"),
        "the refusal names the keys: {err}"
    );

    // The restore on host B: a new data dir (0700) from the three copies.
    let restored = t.join("host-b/otter-data");
    std::fs::create_dir_all(&restored).unwrap();
    std::fs::set_permissions(
        &restored,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    std::fs::copy(offsite.join("otter.db"), restored.join("otter.db")).unwrap();
    copy_tree(&offsite.join("keys"), &restored.join("keys"));
    copy_tree(&offsite.join("store"), &restored.join("store"));
    if stale {
        // The store copy holds newer metadata than the database copy: `serve` refuses to
        // start (it would roll terminals back), naming the versions and the way out.
        let err = s.serve_refuses(&restored, &[], "on a database older than its store");
        assert!(
            err.contains("in the store,")
                && err.contains("in the database")
                && err.contains("--resume-above-store")
                && err.contains("docs/disaster-recovery.md"),
            "{err}"
        );
        // Before starting, as the page says: the head recorded offsite names an entry the
        // copy does not hold.
        let out = command("otter-server")
            .args(["audit", "verify", "--anchor", &head, "--data-dir"])
            .arg(&restored)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{}", show(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("entries were removed from the end"),
            "{}",
            show(&out)
        );
    }
    let server = if stale {
        s.server_on(&restored, "host-b.log", &["--resume-above-store"])
    } else {
        s.server_on(&restored, "host-b.log", &[])
    };
    if stale {
        stale_restore(&s, &server, &restored, &old_url);
        return;
    }

    // The audit chain is whole and still ends at the recorded head.
    let verified = ok(s.host_on(&restored, &["audit", "verify", "--anchor", &head]));
    assert_eq!(verified.trim(), head);
    // The backup catalog is the same, countersigned by the same receipt key.
    let backups_after: Value =
        serde_json::from_str(&ok(s.host_on(&restored, &["backups", "list", "--json"]))).unwrap();
    assert_eq!(backups_after, backups_before);
    assert_eq!(
        std::fs::read(restored.join("keys/backup-receipt.pub")).unwrap(),
        receipt_key
    );

    // A fresh TUF client, trusting only the offline root, verifies the restored repository.
    let md = t.join("fresh-client/metadata");
    let meta_url = format!("{}/repo/metadata", server.url);
    ok(s.agent(&[
        "tuf",
        "--metadata-dir",
        md.to_str().unwrap(),
        "init",
        s.root_json().to_str().unwrap(),
    ]));
    ok(s.agent(&[
        "tuf",
        "--metadata-dir",
        md.to_str().unwrap(),
        "--metadata-url",
        &meta_url,
        "refresh",
    ]));
    let target = format!("{COMPONENT}-1.0.0.tar.zst");
    let downloads = t.join("fresh-client/targets");
    ok(s.agent(&[
        "tuf",
        "--metadata-dir",
        md.to_str().unwrap(),
        "--metadata-url",
        &meta_url,
        "--target-name",
        &target,
        "--target-base-url",
        &format!("{}/repo/targets", server.url),
        "--target-dir",
        downloads.to_str().unwrap(),
        "download",
    ]));
    assert_eq!(
        std::fs::read(downloads.join(&target)).unwrap(),
        bundle("1.0.0")
    );

    // The enrolled terminal carries on with the new host: its backup verifies from there
    // (same chain, same receipt key pinned at its first backup) ...
    s.repoint(&old_url, &server.url);
    let dry = ok(s.agent(&[
        "restore",
        "--latest",
        "--dry-run",
        "--state-dir",
        state,
        "--database",
        db,
    ]));
    assert!(dry.contains("verified backup #1"), "{dry}");
    // ... and a release published after the restore reaches it; the audit chain goes on.
    s.publish(&server, "1.1.0");
    assert!(s.update().contains("installed 1.1.0"));
    assert_eq!(s.active(), "1.1.0");
    let new_head = ok(s.host_on(&restored, &["audit", "verify", "--anchor", &head]));
    assert_ne!(new_head.trim(), head, "the publish was audited");
}

/// After restoring a database copy older than what the terminal trusts (see `disaster`),
/// started with `--resume-above-store`.
fn stale_restore(s: &Site, server: &ServerGuard, restored: &Path, old_url: &str) {
    // The resumption is audited after the surviving entries (checked against the recorded
    // head before the start, in `disaster`).
    let out = command("otter-server")
        .args(["audit", "verify", "--data-dir"])
        .arg(restored)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    // Re-signed above the store's versions: the terminal accepts the metadata at once (no
    // rollback refusal) and keeps the release the lost database had published.
    s.repoint(old_url, &server.url);
    let out = s.agent(&["update", "--config", s.agent_config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("rollback"),
        "{}",
        show(&out)
    );
    assert_eq!(s.active(), "1.0.5");
    // The lost release can be published again (its target is still in the store), and the
    // next one reaches the terminal.
    for v in ["1.0.5", "1.2.0"] {
        s.publish(server, v);
    }
    assert!(s.update().contains("installed 1.2.0"));
    assert_eq!(s.active(), "1.2.0");
}
