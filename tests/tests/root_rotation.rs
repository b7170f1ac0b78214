//! Root rotation on a running production server, end to end with the real binaries: a root
//! v2 made offline by `otter-keys root rotate` that revokes the timestamp key and names a new
//! one is refused until the new key is installed (`otter-server keys import`), then accepted
//! (`otter-server root push`); the server signs with the new key at once, and both the enrolled
//! agent and python-tuf (each holding metadata signed by the revoked key) follow the rotation
//! and install or download a release published after it. Roots that skip a version, carry
//! only the old or only the new threshold, have expired, are malformed or come with a
//! non-admin token are refused with a JSON 4xx and change nothing. Root v3 then rotates the
//! targets and snapshot keys (targets re-signed with its new key; clients follow again). A
//! restart keeps the new keys. Finally the database is replaced by a copy taken before the
//! rotations: `serve` refuses to start (the store is ahead), and with `--resume-above-store`
//! it adopts the store's roots v2 and v3 (each verified as a successor) and re-signs above
//! the store's versions, and the agent updates.
//!
//! Needs the binaries (`cargo build --workspace`) and the python-tuf venv
//! (`scripts/python-venv.sh`, or `OTTER_PYTHON`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/fleet.rs"]
mod fleet;
#[path = "common/site.rs"]
mod site;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{command, show, ServerGuard};
use fleet::COMPONENT;
use otter_keys::age::secrecy::SecretString;
use otter_keys::crypto::KeyId;
use otter_keys::metadata::{Metadata, Root, Timestamp};
use otter_keys::time::UtcTime;
use serde_json::Value;
use site::{bundle, copy_tree, ok, online_backup, Site, ROOT_PASS};

const PY_CLIENT: &str = r#"
import os, sys
from tuf.ngclient import Updater

base, name, out_dir, md_dir, root_path = sys.argv[1:6]
bootstrap = None
if not os.path.exists(os.path.join(md_dir, "root.json")):
    with open(root_path, "rb") as f:
        bootstrap = f.read()
updater = Updater(
    metadata_dir=md_dir,
    metadata_base_url=base + "/repo/metadata/",
    target_dir=out_dir,
    target_base_url=base + "/repo/targets/",
    bootstrap=bootstrap,
)
updater.refresh()
info = updater.get_targetinfo(name)
if info is None:
    sys.exit("python-tuf found no target " + name)
print(updater.download_target(info))
"#;

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("OTTER_PYTHON") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        p.exists(),
        "no python-tuf environment at {}: run scripts/python-venv.sh first (or set OTTER_PYTHON)",
        p.display()
    );
    p
}

/// What only this test does with the site: push roots, download with python-tuf.
impl Site {
    fn push(&self, server: &ServerGuard, token: &Path, root: &Path) -> Output {
        command("otter-server")
            .args(["root", "push", "--server", &server.url, "--token-file"])
            .arg(token)
            .arg(root)
            .output()
            .unwrap()
    }

    /// python-tuf with a metadata dir kept between runs; returns the downloaded bytes.
    fn python_download(&self, server: &ServerGuard, version: &str) -> Vec<u8> {
        let script = self.t().join("client.py");
        std::fs::write(&script, PY_CLIENT).unwrap();
        let md = self.t().join("py-metadata");
        let out_dir = self.t().join("py-targets");
        std::fs::create_dir_all(&md).unwrap();
        std::fs::create_dir_all(&out_dir).unwrap();
        let out = Command::new(python())
            .arg(&script)
            .arg(&server.url)
            .arg(format!("{COMPONENT}-{version}.tar.zst"))
            .arg(&out_dir)
            .arg(&md)
            .arg(self.ceremony().join("1.root.json"))
            .output()
            .unwrap();
        let path = ok(out);
        std::fs::read(path.trim()).unwrap()
    }
}

fn root_of(path: &Path) -> Metadata<Root> {
    Metadata::from_bytes(&std::fs::read(path).unwrap(), 1 << 20).unwrap()
}

fn key_id_of_pub(path: &Path) -> KeyId {
    otter_keys::keyfile::load_public_key(path)
        .unwrap()
        .key_id()
        .unwrap()
}

fn get(url: &str) -> (u16, Vec<u8>) {
    let r = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(url)
        .send()
        .unwrap();
    (r.status().as_u16(), r.bytes().unwrap().to_vec())
}

/// The JSON error a refused push printed: `(STATUS, CODE): MESSAGE`.
fn refused(out: &Output, code: &str) -> String {
    assert!(!out.status.success(), "{}", show(out));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains(code), "expected {code}: {}", show(out));
    err
}

/// A root v2 made in a copy of the ceremony dir by `otter-keys root rotate ARGS`.
fn rotated_copy(s: &Site, name: &str, args: &[&str]) -> PathBuf {
    let dir = s.t().join(name);
    copy_tree(&s.ceremony(), &dir);
    let mut all = vec!["root", "rotate", "--dir", dir.to_str().unwrap()];
    all.extend_from_slice(args);
    ok(s.keys(&all));
    dir
}

#[test]
fn a_rotated_root_and_timestamp_key_are_taken_by_the_running_server_and_followed_by_clients() {
    let s = Site::new(None);
    s.init(&s.data);
    let c = s.ceremony();
    let root1 = root_of(&c.join("1.root.json"));
    let old_ts = root1.signed().role("timestamp").unwrap().keyids[0].clone();
    let k = |n: u32| c.join(format!("keys/root-{n}.key"));
    let (k1, k2) = (k(1), k(2));
    let (k1s, k2s) = (k1.to_str().unwrap(), k2.to_str().unwrap());
    let id = |n: u32| key_id_of_pub(&c.join(format!("keys/root-{n}.pub.json")));

    let server = s.server("server-1.log", &[]);
    s.publish(&server, "1.0.0");
    s.enroll(&server, &s.data);
    assert!(s.update().contains("installed 1.0.0"));
    assert_eq!(s.python_download(&server, "1.0.0"), bundle("1.0.0"));
    // A database copy from before the rotation, for the stale-database part at the end.
    let old_db = s.t().join("otter-before-rotation.db");
    online_backup(&s.data.join("otter.db"), &old_db);

    // Roots the server must refuse, each made from version 1 in a copy of the ceremony.
    let skip = rotated_copy(&s, "skip", &["--sign-with", k1s, "--sign-with", k2s]);
    ok(s.keys(&[
        "root",
        "rotate",
        "--dir",
        skip.to_str().unwrap(),
        "--sign-with",
        k1s,
        "--sign-with",
        k2s,
    ]));
    let only_old = rotated_copy(
        &s,
        "only-old",
        &[
            "--threshold",
            "root=3",
            "--sign-with",
            k1s,
            "--sign-with",
            k2s,
            "--allow-partial",
        ],
    );
    let (r2, r3) = (format!("root={}", id(2).0), format!("root={}", id(3).0));
    let only_new = rotated_copy(
        &s,
        "only-new",
        &[
            "--remove-key",
            &r2,
            "--remove-key",
            &r3,
            "--generate-key",
            "root",
            "--generate-key",
            "root",
            "--sign-with",
            k1s,
            "--allow-partial",
        ],
    );
    // Expired: signed properly by root keys 1 and 2, with an expiry in the past.
    let mut expired_root = root1.signed().clone();
    expired_root.version = 2;
    expired_root.expires = UtcTime::from_unix(UtcTime::now().unix() - 3600);
    let mut expired = Metadata::new(expired_root).unwrap();
    for f in [&k1, &k2] {
        let key =
            otter_keys::keyfile::load_signing_key(f, &SecretString::from(ROOT_PASS.to_owned()))
                .unwrap();
        expired.sign(&key.key);
    }
    let expired_file = s.t().join("expired-2.root.json");
    std::fs::write(&expired_file, expired.to_bytes()).unwrap();
    let garbage = s.t().join("garbage.json");
    std::fs::write(
        &garbage,
        br#"{"signed": {"_type": "root"}, "signatures": []}"#,
    )
    .unwrap();
    // The real rotation: revoke the timestamp key, make a new one (online passphrase).
    let prefix = format!("timestamp={}", &old_ts.0[..12]);
    ok(s.keys(&[
        "root",
        "rotate",
        "--dir",
        c.to_str().unwrap(),
        "--remove-key",
        &prefix,
        "--generate-key",
        "timestamp",
        "--sign-with",
        k1s,
        "--sign-with",
        k2s,
    ]));
    let root2_file = c.join("2.root.json");
    let root2 = root_of(&root2_file);
    let new_ts = root2.signed().role("timestamp").unwrap().keyids[0].clone();
    assert_ne!(new_ts, old_ts);

    let ts_before = get(&format!("{}/repo/metadata/timestamp.json", server.url)).1;
    let cases: Vec<(PathBuf, &Path, &str)> = vec![
        (skip.join("3.root.json"), &s.admin, "root_version"),
        (
            only_old.join("2.root.json"),
            &s.admin,
            "new_root_threshold_not_met",
        ),
        (
            only_new.join("2.root.json"),
            &s.admin,
            "old_root_threshold_not_met",
        ),
        (expired_file.clone(), &s.admin, "root_expired"),
        (root2_file.clone(), &s.publisher, "403"),
    ];
    for (file, token, code) in &cases {
        refused(&s.push(&server, token, file), code);
    }
    // Straight to the API: malformed metadata, and no token at all.
    let admin_token = std::fs::read_to_string(&s.admin).unwrap();
    let put = |token: Option<&str>, body: Vec<u8>| {
        let mut req = reqwest::blocking::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .put(format!("{}/api/v1/root", server.url))
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t.trim());
        }
        let r = req.send().unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().unwrap())
    };
    let (status, v) = put(Some(&admin_token), std::fs::read(&garbage).unwrap());
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid_root")),
        "{v}"
    );
    let (status, v) = put(Some(&admin_token), b"not json".to_vec());
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid_root")),
        "{v}"
    );
    let (status, _) = put(None, std::fs::read(&root2_file).unwrap());
    assert_eq!(status, 401);
    // The new timestamp key is not installed yet: refused, naming the role and its key id.
    let err = refused(
        &s.push(&server, &s.admin, &root2_file),
        "online_keys_missing",
    );
    assert!(
        err.contains("timestamp") && err.contains(&new_ts.0),
        "{err}"
    );
    // Nothing changed.
    assert_eq!(
        get(&format!("{}/repo/metadata/2.root.json", server.url)).0,
        404
    );
    assert_eq!(
        get(&format!("{}/repo/metadata/timestamp.json", server.url)).1,
        ts_before
    );

    // A root key is refused by `keys import`; the new timestamp key is installed, 0600.
    let out = s.host(&[
        "keys",
        "import",
        "--root",
        root2_file.to_str().unwrap(),
        "--passphrase-file",
        s.pass.to_str().unwrap(),
        k1s,
    ]);
    assert!(!out.status.success(), "{}", show(&out));
    let new_key = c.join("keys/timestamp-v2-1.key");
    let imported = ok(s.host(&[
        "keys",
        "import",
        "--root",
        root2_file.to_str().unwrap(),
        "--passphrase-file",
        s.pass.to_str().unwrap(),
        new_key.to_str().unwrap(),
    ]));
    assert!(imported.contains("installed timestamp key"), "{imported}");
    let installed = s.data.join(format!("keys/timestamp-{}.key", new_ts.0));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&installed).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // Installing does not activate it.
    assert_eq!(
        get(&format!("{}/repo/metadata/timestamp.json", server.url)).1,
        ts_before
    );

    // Accepted.
    let pushed = ok(s.push(&server, &s.admin, &root2_file));
    assert!(
        pushed.contains("root version 2 accepted") && pushed.contains("timestamp"),
        "{pushed}"
    );
    let (status, served) = get(&format!("{}/repo/metadata/2.root.json", server.url));
    assert_eq!(status, 200);
    assert_eq!(
        served,
        std::fs::read(&root2_file).unwrap(),
        "served as signed"
    );
    let ts: Metadata<Timestamp> = Metadata::from_bytes(
        &get(&format!("{}/repo/metadata/timestamp.json", server.url)).1,
        1 << 20,
    )
    .unwrap();
    root2.verify_by(&ts, "timestamp").unwrap();
    assert!(root1.verify_by(&ts, "timestamp").is_err());
    // The same root again is now a version conflict.
    refused(&s.push(&server, &s.admin, &root2_file), "root_version");

    // Clients holding metadata signed by the revoked key follow the rotation.
    s.publish(&server, "1.1.0");
    assert!(s.update().contains("installed 1.1.0"));
    assert_eq!(s.python_download(&server, "1.1.0"), bundle("1.1.0"));
    // Audited.
    let audit = ok(command("otter-server")
        .args(["audit", "list", "--server", &server.url, "--token-file"])
        .arg(&s.admin)
        .output()
        .unwrap());
    assert!(audit.contains("root.rotate"), "{audit}");

    // Version 3 rotates the targets and snapshot keys: targets is re-signed with its new key
    // right away, and clients follow again.
    let t_prefix = format!(
        "targets={}",
        &root2.signed().role("targets").unwrap().keyids[0].0[..12]
    );
    let s_prefix = format!(
        "snapshot={}",
        &root2.signed().role("snapshot").unwrap().keyids[0].0[..12]
    );
    ok(s.keys(&[
        "root",
        "rotate",
        "--dir",
        c.to_str().unwrap(),
        "--remove-key",
        &t_prefix,
        "--generate-key",
        "targets",
        "--remove-key",
        &s_prefix,
        "--generate-key",
        "snapshot",
        "--sign-with",
        k1s,
        "--sign-with",
        k2s,
    ]));
    let root3_file = c.join("3.root.json");
    let root3 = root_of(&root3_file);
    let err = refused(
        &s.push(&server, &s.admin, &root3_file),
        "online_keys_missing",
    );
    assert!(err.contains("targets") && err.contains("snapshot"), "{err}");
    ok(s.host(&[
        "keys",
        "import",
        "--root",
        root3_file.to_str().unwrap(),
        "--passphrase-file",
        s.pass.to_str().unwrap(),
        c.join("keys/targets-v3-1.key").to_str().unwrap(),
        c.join("keys/snapshot-v3-1.key").to_str().unwrap(),
    ]));
    let pushed = ok(s.push(&server, &s.admin, &root3_file));
    assert!(pushed.contains("root version 3 accepted"), "{pushed}");
    let ts: Metadata<Timestamp> = Metadata::from_bytes(
        &get(&format!("{}/repo/metadata/timestamp.json", server.url)).1,
        1 << 20,
    )
    .unwrap();
    let snap_v = ts.signed().snapshot_meta().unwrap().version;
    let snap: Metadata<otter_keys::metadata::Snapshot> = Metadata::from_bytes(
        &get(&format!(
            "{}/repo/metadata/{snap_v}.snapshot.json",
            server.url
        ))
        .1,
        1 << 20,
    )
    .unwrap();
    root3.verify_by(&snap, "snapshot").unwrap();
    let targets_v = snap.signed().meta["targets.json"].version;
    let targets: Metadata<otter_keys::metadata::Targets> = Metadata::from_bytes(
        &get(&format!(
            "{}/repo/metadata/{targets_v}.targets.json",
            server.url
        ))
        .1,
        1 << 20,
    )
    .unwrap();
    root3.verify_by(&targets, "targets").unwrap();
    assert!(root2.verify_by(&targets, "targets").is_err());
    s.publish(&server, "1.1.5");
    assert!(s.update().contains("installed 1.1.5"));
    assert_eq!(s.python_download(&server, "1.1.5"), bundle("1.1.5"));

    // A restart signs with the installed key the current root names.
    let mut server = server;
    let old_url = server.url.clone();
    server.stop();
    let server = s.server("server-2.log", &[]);
    s.repoint(&old_url, &server.url);
    s.publish(&server, "1.2.0");
    assert!(s.update().contains("installed 1.2.0"));

    // The database copy from before the rotation: the store is ahead (root v2 and more).
    let mut server = server;
    let old_url2 = server.url.clone();
    server.stop();
    let store_ts = std::fs::read(s.data.join("store/repo/metadata/timestamp.json")).unwrap();
    for f in ["otter.db", "otter.db-wal", "otter.db-shm"] {
        let _ = std::fs::remove_file(s.data.join(f));
    }
    std::fs::copy(&old_db, s.data.join("otter.db")).unwrap();
    let err = s.serve_refuses(&s.data, &[], "on a database older than its store");
    assert!(
        err.contains("root version 3 in the store, 1 in the database")
            && err.contains("--resume-above-store")
            && err.contains("docs/disaster-recovery.md"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(s.data.join("store/repo/metadata/timestamp.json")).unwrap(),
        store_ts,
        "a refused start writes nothing"
    );
    let seen: Metadata<Timestamp> = Metadata::from_bytes(&store_ts, 1 << 20).unwrap();
    let server = s.server("server-3.log", &["--resume-above-store"]);
    s.repoint(&old_url2, &server.url);
    let ts: Metadata<Timestamp> = Metadata::from_bytes(
        &get(&format!("{}/repo/metadata/timestamp.json", server.url)).1,
        1 << 20,
    )
    .unwrap();
    assert!(ts.signed().version > seen.signed().version);
    root3.verify_by(&ts, "timestamp").unwrap();
    // The terminal trusts versions the old database never signed, and accepts the
    // re-signed ones; a release published now reaches it.
    s.publish(&server, "1.3.0");
    assert!(s.update().contains("installed 1.3.0"));
    // The audit chain holds the rotation and the resumption, and verifies.
    ok(command("otter-server")
        .args(["audit", "verify", "--data-dir"])
        .arg(&s.data)
        .output()
        .unwrap());
    let audit: Value = serde_json::from_str(&ok(command("otter-server")
        .args(["audit", "list", "--server", &server.url, "--token-file"])
        .arg(&s.admin)
        .output()
        .unwrap()))
    .unwrap();
    let text = audit.to_string();
    assert!(text.contains("repository.resume_above_store"), "{text}");
}
