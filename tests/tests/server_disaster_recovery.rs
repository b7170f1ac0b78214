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

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{command, show, ServerGuard};
use serde_json::Value;

const COMPONENT: &str = "pos-app";

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", show(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// A `COMPONENT` bundle at `version` with one payload file and a passing health check.
fn bundle(version: &str) -> Vec<u8> {
    let payload = format!("pos application {version}\n").into_bytes();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "name": COMPONENT, "kind": "firmware", "version": version, "hardware": ["pos-a"],
        "payload": [{"path": "app.bin", "size": payload.len(),
                     "sha256": otter_keys::hash::sha256_hex(&payload)}],
        "health": ["/bin/sh", "-c", "test -f app.bin"],
    }))
    .unwrap();
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

/// Copies a directory tree (regular files and directories only).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else if t.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// SQLite's online backup API (python3's sqlite3 module; `sqlite3 DB ".backup FILE"` does
/// the same): a consistent copy of a database that a running server keeps writing.
fn online_backup(db: &Path, to: &Path) {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\n\
             src = sqlite3.connect(sys.argv[1])\n\
             dst = sqlite3.connect(sys.argv[2])\n\
             src.backup(dst)\n\
             dst.close()\n\
             src.close()",
        ])
        .arg(db)
        .arg(to)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
}

struct Site {
    tmp: tempfile::TempDir,
    config: PathBuf,
    pass: PathBuf,
    root_json: PathBuf,
    state: PathBuf,
    agent_config: PathBuf,
    db: PathBuf,
}

impl Site {
    fn server(&self, data: &Path, log: &str) -> ServerGuard {
        ServerGuard::start(
            data,
            &[
                "--config".as_ref(),
                self.config.as_os_str(),
                "--passphrase-file".as_ref(),
                self.pass.as_os_str(),
            ],
            &self.tmp.path().join(log),
        )
    }

    fn server_with(&self, data: &Path, log: &str, extra: &[&str]) -> ServerGuard {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "--config".as_ref(),
            self.config.as_os_str(),
            "--passphrase-file".as_ref(),
            self.pass.as_os_str(),
        ];
        args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
        ServerGuard::start(data, &args, &self.tmp.path().join(log))
    }

    fn admin(&self, data: &Path, args: &[&str]) -> String {
        ok(command("otter-server")
            .args(args)
            .arg("--data-dir")
            .arg(data)
            .output()
            .unwrap())
    }

    fn publish(&self, server: &ServerGuard, token: &Path, version: &str) {
        let file = self
            .tmp
            .path()
            .join(format!("{COMPONENT}-{version}.bundle"));
        std::fs::write(&file, bundle(version)).unwrap();
        ok(command("otter-server")
            .args(["publish", "--server", &server.url, "--token-file"])
            .arg(token)
            .arg(&file)
            .output()
            .unwrap());
    }

    fn agent(&self, args: &[&str]) -> Output {
        command("otter-agent").args(args).output().unwrap()
    }

    fn update(&self) -> String {
        ok(self.agent(&["update", "--config", self.agent_config.to_str().unwrap()]))
    }

    fn active(&self) -> String {
        let link = self
            .tmp
            .path()
            .join("terminal/opt-otter/components")
            .join(COMPONENT)
            .join("current");
        std::fs::read_link(link)
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
}

/// A production site: ceremony, `otter-server init`, a config naming the recovery key.
fn site() -> Site {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let pass = t.join("online-pass");
    std::fs::write(&pass, "disaster recovery online passphrase\n").unwrap();
    let root_pass = t.join("root-pass");
    std::fs::write(&root_pass, "disaster recovery root passphrase\n").unwrap();
    ok(command("otter-keys")
        .env("OTTER_KEYS_SCRYPT_LOG_N", "10")
        .args(["init", "--dir"])
        .arg(t.join("ceremony"))
        .arg("--passphrase-file")
        .arg(&root_pass)
        .arg("--online-passphrase-file")
        .arg(&pass)
        .output()
        .unwrap());
    let recovery = otter_keys::age::x25519::Identity::generate();
    let config = t.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[backups]\nrecovery_recipient = \"{}\"\n",
            recovery.to_public()
        ),
    )
    .unwrap();
    let state = t.join("terminal/state");
    let agent_config = t.join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            "state_dir = {:?}\ninstall_root = {:?}\n[update]\njitter_secs = 0\n",
            state.to_str().unwrap(),
            t.join("terminal/opt-otter").to_str().unwrap()
        ),
    )
    .unwrap();
    Site {
        config,
        pass,
        root_json: t.join("ceremony/1.root.json"),
        state,
        agent_config,
        db: t.join("terminal/pos.db"),
        tmp,
    }
}

/// Points the enrolled terminal at `new_url` (a new host under the old DNS name would need
/// nothing of this: here the restored server listens on another loopback port).
fn repoint(state: &Path, old_url: &str, new_url: &str) {
    let file = state.join("agent.json");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains(old_url), "{text}");
    let v: Value = serde_json::from_str(&text.replace(old_url, new_url)).unwrap();
    std::fs::write(&file, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
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
    s.admin(
        &data,
        &[
            "init",
            "--config",
            s.config.to_str().unwrap(),
            "--root",
            s.root_json.to_str().unwrap(),
            "--keys-dir",
            t.join("ceremony/keys").to_str().unwrap(),
            "--passphrase-file",
            s.pass.to_str().unwrap(),
        ],
    );
    let mut server = s.server(&data, "host-a.log");
    let token = t.join("publisher.token");
    std::fs::write(
        &token,
        s.admin(&data, &["token", "create", "--role", "publisher"]),
    )
    .unwrap();
    s.publish(&server, &token, "1.0.0");

    // A terminal enrolls, installs 1.0.0 and backs its database up.
    let enroll = s.admin(&data, &["enroll-token", "create", "--expires-in", "1h"]);
    ok(command("otter-agent")
        .args(["enroll", "--server", &server.url, "--model", "pos-a"])
        .env("OTTER_ENROLL_TOKEN", enroll.trim())
        .arg("--trusted-root")
        .arg(&s.root_json)
        .arg("--state-dir")
        .arg(&s.state)
        .output()
        .unwrap());
    assert!(s.update().contains("installed 1.0.0"));
    std::fs::create_dir_all(s.db.parent().unwrap()).unwrap();
    ok(Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1])\n\
             c.execute('CREATE TABLE sales (id INTEGER PRIMARY KEY, cents INTEGER)')\n\
             c.executemany('INSERT INTO sales VALUES (?, ?)', [(i, i * 3) for i in range(400)])\n\
             c.commit()",
        ])
        .arg(&s.db)
        .output()
        .unwrap());
    let db = s.db.to_str().unwrap();
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
        s.publish(&server, &token, "1.0.5");
        assert!(s.update().contains("installed 1.0.5"));
    }
    copy_tree(&data.join("store"), &offsite.join("store"));
    let head = s.admin(&data, &["audit", "head"]).trim().to_owned();
    let backups_before: Value =
        serde_json::from_str(&s.admin(&data, &["backups", "list", "--json"])).unwrap();
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
    let mut child = command("otter-server")
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&no_keys)
        .arg("--config")
        .arg(&s.config)
        .arg("--passphrase-file")
        .arg(&s.pass)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the server started without its keys directory");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("keys/targets.key"),
        "the refusal names the keys: {}",
        show(&out)
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
        let err = refuse_stale_start(&s, &restored);
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
        s.server_with(&restored, "host-b.log", &["--resume-above-store"])
    } else {
        s.server(&restored, "host-b.log")
    };
    if stale {
        stale_restore(&s, &server, &restored, &token, &old_url);
        return;
    }

    // The audit chain is whole and still ends at the recorded head.
    let verified = s.admin(&restored, &["audit", "verify", "--anchor", &head]);
    assert_eq!(verified.trim(), head);
    // The backup catalog is the same, countersigned by the same receipt key.
    let backups_after: Value =
        serde_json::from_str(&s.admin(&restored, &["backups", "list", "--json"])).unwrap();
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
        s.root_json.to_str().unwrap(),
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
    repoint(&s.state, &old_url, &server.url);
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
    s.publish(&server, &token, "1.1.0");
    assert!(s.update().contains("installed 1.1.0"));
    assert_eq!(s.active(), "1.1.0");
    let new_head = s.admin(&restored, &["audit", "verify", "--anchor", &head]);
    assert_ne!(new_head.trim(), head, "the publish was audited");
}

/// `serve` on `data` must exit by itself with an error; returns its stderr.
fn refuse_stale_start(s: &Site, data: &Path) -> String {
    let mut child = command("otter-server")
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .arg("--config")
        .arg(&s.config)
        .arg("--passphrase-file")
        .arg(&s.pass)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("the server started on a database older than its store");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{}", show(&out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// After restoring a database copy older than what the terminal trusts (see `disaster`),
/// started with `--resume-above-store`.
fn stale_restore(s: &Site, server: &ServerGuard, restored: &Path, token: &Path, old_url: &str) {
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
    repoint(&s.state, old_url, &server.url);
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
        s.publish(server, token, v);
    }
    assert!(s.update().contains("installed 1.2.0"));
    assert_eq!(s.active(), "1.2.0");
}
