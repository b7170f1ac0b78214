//! A delegated targets role end to end, on the real `otter-server` binary over loopback: an admin declares
//! it (the server re-signs targets, snapshot and timestamp), a publisher uploads the
//! vendor's file, the vendor signs the role's metadata offline with the real `otter-keys
//! sign` and the publisher uploads it. The server serves it at `VERSION.ROLE.json`, names it
//! in the snapshot, and `otter-keys verify` accepts the whole repository, the delegated
//! role included; python-tuf's `ngclient.Updater` and `otter-agent tuf` find the target
//! through the delegation and download it. Bad signatures, too few signatures, rollbacks, expired metadata, paths
//! outside the delegation, unstored targets, unknown roles and traversal in role names are
//! refused with JSON 4xx errors, and change nothing. Every change is in the audit log; a
//! store that lost the role's file gets it back from the database on the next start.
//!
//! Needs the `otter-keys` and `otter-agent` binaries in the target dir (built by `cargo test
//! --workspace`, or `cargo build --workspace`) and the python-tuf venv
//! (`scripts/python-venv.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{api, assert_audit_verifies, client, get_ok, run, Chain};
use otter_keys::age::secrecy::SecretString;
use otter_keys::crypto::SigningKey;
use otter_keys::keyfile::{load_public_key, save_signing_key, MIN_WORK_FACTOR};
use otter_keys::metadata::{check_expected_version, Metadata, Root, Snapshot, Targets, Timestamp};
use otter_keys::time::UtcTime;
use serde_json::{json, Value};

const PASS: &str = "vendor passphrase";
const ROLE: &str = "card-reader";
const DRIVER: &str = "cardreader-2.1.0.bin";

/// A binary of another workspace crate, from the target dir.
fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// Runs `otter-keys ARGS` and returns (success, stdout + stderr).
fn otter_keys(args: &[&str]) -> (bool, String) {
    let out = Command::new(workspace_bin("otter-keys"))
        .args(args)
        .env("OTTER_KEYS_PASSPHRASE", PASS)
        .env("OTTER_KEYS_SCRYPT_LOG_N", "10")
        .env_remove("OTTER_KEYS_PASSPHRASE_FILE")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

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

const PY_CLIENT: &str = r#"
import sys, tempfile
from tuf.ngclient import Updater

base, name, out_dir, root_path = sys.argv[1:5]
with open(root_path, "rb") as f:
    root = f.read()
updater = Updater(
    metadata_dir=tempfile.mkdtemp(),
    metadata_base_url=base + "/repo/metadata/",
    target_dir=out_dir,
    target_base_url=base + "/repo/targets/",
    bootstrap=root,
)
updater.refresh()
info = updater.get_targetinfo(name)
if info is None:
    sys.exit("python-tuf found no target " + name)
print(updater.download_target(info))
"#;

/// An unsigned delegated targets file, as a vendor writes it: `targets` maps paths to the
/// entries the upload API returned.
fn unsigned(version: u64, expires: UtcTime, targets: &Value) -> Vec<u8> {
    serde_json::to_vec_pretty(&json!({
        "signed": {
            "_type": "targets",
            "spec_version": "1.0.31",
            "version": version,
            "expires": expires,
            "targets": targets,
        },
        "signatures": [],
    }))
    .unwrap()
}

/// Writes `bytes` to DIR/NAME and signs it with the real `otter-keys sign`; returns the
/// signed bytes.
fn sign_file(dir: &Path, name: &str, bytes: &[u8], keys: &[&Path]) -> Vec<u8> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let mut args = vec!["sign".to_owned()];
    for k in keys {
        args.push("--key".into());
        args.push(k.display().to_string());
    }
    args.push(path.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out) = otter_keys(&args);
    assert!(ok, "otter-keys sign: {out}");
    std::fs::read(&path).unwrap()
}

/// The real `otter-server serve` on 127.0.0.1:0, stopped with SIGTERM (killed if the test
/// fails half-way).
struct Bin {
    child: Option<Child>,
    base: String,
}

impl Bin {
    /// Starts it on `data`, logging to `log`; returns it and the admin token it printed (on
    /// the first start only).
    fn start(data: &Path, log: &Path) -> (Bin, Option<String>) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_otter-server"));
        for (k, _) in std::env::vars() {
            if k.starts_with("OTTER_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .env("OTTER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut bin = Bin {
            child: Some(child),
            base: String::new(),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut token = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("the server prints `listening on http://...` in time");
            if let Some(t) = line.strip_prefix("admin API token") {
                token = t.rsplit(' ').next().map(str::to_owned);
            }
            if let Some(url) = line.strip_prefix("listening on ") {
                bin.base = url.trim().to_owned();
                break;
            }
        }
        (bin, token)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, and a clean exit within 10 s.
    fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                assert!(st.success(), "the server exits cleanly: {st:?}");
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the server did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Bin {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Creates a token with `role` through the admin API.
async fn make_token(c: &reqwest::Client, srv: &Bin, admin: &str, role: &str) -> String {
    let body = serde_json::to_vec(&json!({"role": role, "label": format!("test {role}")})).unwrap();
    let (s, v) = api(
        c,
        "POST",
        &srv.url("/api/v1/tokens"),
        Some(admin),
        Some(body),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

/// What a TUF client does from 1.root.json: timestamp, snapshot, targets, each checked
/// (signatures, versions, lengths, hashes, expiry).
async fn fetch_and_verify(c: &reqwest::Client, srv: &Bin) -> Chain {
    let now = UtcTime::now();
    let max = 1 << 20;
    let root_bytes = get_ok(c, &srv.url("/repo/metadata/1.root.json")).await;
    let root = Metadata::<Root>::from_bytes(&root_bytes, max).unwrap();
    root.verify_self().unwrap();
    let ts = get_ok(c, &srv.url("/repo/metadata/timestamp.json")).await;
    let timestamp = Metadata::<Timestamp>::from_bytes(&ts, max).unwrap();
    root.verify_by(&timestamp, "timestamp").unwrap();
    timestamp.check_expiry(now).unwrap();
    let sm = timestamp.signed().snapshot_meta().unwrap().clone();
    let sb = get_ok(
        c,
        &srv.url(&format!("/repo/metadata/{}.snapshot.json", sm.version)),
    )
    .await;
    otter_keys::hash::verify(&sb, sm.length, sm.hashes.as_ref().unwrap()).unwrap();
    let snapshot = Metadata::<Snapshot>::from_bytes(&sb, max).unwrap();
    root.verify_by(&snapshot, "snapshot").unwrap();
    check_expected_version("snapshot", sm.version, snapshot.signed().version).unwrap();
    let tm = snapshot.signed().meta["targets.json"].clone();
    let tb = get_ok(
        c,
        &srv.url(&format!("/repo/metadata/{}.targets.json", tm.version)),
    )
    .await;
    otter_keys::hash::verify(&tb, tm.length, tm.hashes.as_ref().unwrap()).unwrap();
    let targets = Metadata::<Targets>::from_bytes(&tb, max).unwrap();
    root.verify_by(&targets, "targets").unwrap();
    check_expected_version("targets", tm.version, targets.signed().version).unwrap();
    targets.check_expiry(now).unwrap();
    Chain {
        root,
        timestamp,
        snapshot,
        targets,
        root_bytes,
    }
}

async fn put(c: &reqwest::Client, srv: &Bin, token: &str, body: Vec<u8>) -> (u16, Value) {
    api(
        c,
        "PUT",
        &srv.url(&format!("/api/v1/delegations/{ROLE}")),
        Some(token),
        Some(body),
    )
    .await
}

#[test]
fn a_vendor_signed_role_is_checked_served_and_verifies() {
    let python = python();
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("vendor");
        std::fs::create_dir(&work).unwrap();
        let log = dir.path().join("server.log");
        let (srv, admin) = Bin::start(&dir.path().join("data"), &log);
        let admin = admin.expect("the first start prints the admin token");
        let c = client();
        let publisher = make_token(&c, &srv, &admin, "publisher").await;

        // The vendor makes its key offline with `otter-keys key new`.
        let (ok, out) = otter_keys(&[
            "key",
            "new",
            "--dir",
            &work.display().to_string(),
            "--name",
            "vendor",
        ]);
        assert!(ok, "otter-keys key new: {out}");
        let vendor_key = work.join("vendor.key");
        let vendor_pub = load_public_key(&work.join("vendor.pub.json")).unwrap();
        let vendor_id = vendor_pub.key_id().unwrap();
        assert!(out.contains(&vendor_id.0), "{out}");
        let (ok, _) = otter_keys(&[
            "key",
            "new",
            "--dir",
            &work.display().to_string(),
            "--name",
            "../x",
        ]);
        assert!(!ok, "key names cannot leave the directory");
        let stranger = SigningKey::generate();
        let stranger_key = work.join("stranger.key");
        save_signing_key(
            &stranger_key,
            &stranger,
            "stranger",
            &SecretString::from(PASS.to_string()),
            MIN_WORK_FACTOR,
        )
        .unwrap();

        // Declaring is for admins only.
        let declaration = json!({
            "name": ROLE,
            "keys": [vendor_pub],
            "threshold": 1,
            "paths": ["cardreader-*"],
            "terminating": true,
        });
        let body = serde_json::to_vec(&declaration).unwrap();
        let url = srv.url("/api/v1/delegations");
        let (s, _) = api(&c, "POST", &url, Some(&publisher), Some(body.clone())).await;
        assert_eq!(s, 403);
        let before = fetch_and_verify(&c, &srv).await;
        let (s, v) = api(&c, "POST", &url, Some(&admin), Some(body)).await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["delegation"]["keyids"][0], vendor_id.0);
        let chain = fetch_and_verify(&c, &srv).await;
        assert_eq!(
            chain.targets.signed().version,
            before.targets.signed().version + 1
        );
        let d = chain.targets.signed().delegations.as_ref().unwrap();
        assert_eq!(d.roles()[0].name, ROLE);
        assert!(d.roles()[0].terminating);
        assert!(d.keys.contains_key(&vendor_id));
        // A server key may not be a delegated key.
        let own = chain.root.signed().keys.values().next().unwrap().clone();
        let bad = json!({"name": "x", "keys": [own], "threshold": 1, "paths": ["x-*"]});
        let (s, v) = api(
            &c,
            "POST",
            &url,
            Some(&admin),
            Some(serde_json::to_vec(&bad).unwrap()),
        )
        .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("invalid_delegation"))
        );

        // The vendor's driver, uploaded by a publisher.
        let driver = b"card reader driver 2.1.0".repeat(100);
        let (s, v) = api(
            &c,
            "PUT",
            &srv.url(&format!("/api/v1/delegations/{ROLE}/targets/{DRIVER}")),
            Some(&publisher),
            Some(driver.clone()),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        let entry = v["entry"].clone();
        assert_eq!(entry["length"], driver.len());
        // Names outside the delegation are refused before anything is stored.
        let (s, v) = api(
            &c,
            "PUT",
            &srv.url(&format!(
                "/api/v1/delegations/{ROLE}/targets/firmware-9.bin"
            )),
            Some(&publisher),
            Some(b"x".to_vec()),
        )
        .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("path_not_delegated"))
        );

        let later = UtcTime::now().plus_days(30);
        let good = sign_file(
            &work,
            "1.card-reader.json",
            &unsigned(1, later, &json!({ DRIVER: entry })),
            &[&vendor_key],
        );

        // Refusals: each a JSON 4xx, none changes the served repository.
        let ts_before = get_ok(&c, &srv.url("/repo/metadata/timestamp.json")).await;
        let refusals: Vec<(&str, Vec<u8>, u16, &str)> = vec![
            (
                "unsigned",
                unsigned(1, later, &json!({ DRIVER: entry })),
                400,
                "signature_threshold",
            ),
            (
                "signed by a key the delegation does not name",
                sign_file(
                    &work,
                    "stranger.json",
                    &unsigned(1, later, &json!({ DRIVER: entry })),
                    &[&stranger_key],
                ),
                400,
                "signature_threshold",
            ),
            (
                "changed after signing",
                {
                    let mut md: Value = serde_json::from_slice(&good).unwrap();
                    md["signed"]["version"] = json!(7);
                    serde_json::to_vec(&md).unwrap()
                },
                400,
                "bad_signature",
            ),
            (
                "expired",
                sign_file(
                    &work,
                    "expired.json",
                    &unsigned(1, UtcTime::now().plus_secs(-60), &json!({ DRIVER: entry })),
                    &[&vendor_key],
                ),
                400,
                "expired",
            ),
            (
                "a path outside the delegation",
                sign_file(
                    &work,
                    "outside.json",
                    &unsigned(1, later, &json!({ "pos-firmware-9.tar.zst": entry })),
                    &[&vendor_key],
                ),
                400,
                "path_not_delegated",
            ),
            (
                "a target never uploaded",
                sign_file(
                    &work,
                    "missing.json",
                    &unsigned(
                        1,
                        later,
                        &json!({ "cardreader-9.bin": {"length": 3, "hashes": otter_keys::hash::hashes_of(b"abc")} }),
                    ),
                    &[&vendor_key],
                ),
                400,
                "target_mismatch",
            ),
            (
                "a wrong length",
                sign_file(
                    &work,
                    "length.json",
                    &unsigned(
                        1,
                        later,
                        &json!({ DRIVER: {"length": driver.len() + 1, "hashes": entry["hashes"]} }),
                    ),
                    &[&vendor_key],
                ),
                400,
                "target_mismatch",
            ),
            (
                "not metadata",
                b"{\"signed\": 1}".to_vec(),
                400,
                "invalid_metadata",
            ),
        ];
        for (what, body, status, code) in refusals {
            let (s, v) = put(&c, &srv, &publisher, body).await;
            assert_eq!(
                (s, v["error"]["code"].as_str()),
                (status, Some(code)),
                "{what}: {v}"
            );
            assert!(v["error"]["message"].as_str().unwrap().len() > 10);
        }
        let (s, v) = api(
            &c,
            "PUT",
            &srv.url("/api/v1/delegations/nobody"),
            Some(&publisher),
            Some(good.clone()),
        )
        .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (404, Some("unknown_role"))
        );
        for traversal in ["..%2F..%2Fotter.db", "..", "root", "a.b"] {
            let (s, v) = api(
                &c,
                "PUT",
                &srv.url(&format!("/api/v1/delegations/{traversal}")),
                Some(&publisher),
                Some(good.clone()),
            )
            .await;
            assert!(
                (s == 400 && v["error"]["code"] == "invalid_name") || s == 404,
                "{traversal}: {s} {v}"
            );
        }
        assert_eq!(
            get_ok(&c, &srv.url("/repo/metadata/timestamp.json")).await,
            ts_before,
            "refusals change nothing"
        );

        // Accepted.
        let (s, v) = put(&c, &srv, &publisher, good.clone()).await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["version"], 1);
        let chain = fetch_and_verify(&c, &srv).await;
        let m = &chain.snapshot.signed().meta[&format!("{ROLE}.json")];
        assert_eq!(m.version, 1);
        let served = get_ok(&c, &srv.url(&format!("/repo/metadata/1.{ROLE}.json"))).await;
        assert_eq!(served, good);
        otter_keys::hash::verify(&served, m.length, m.hashes.as_ref().unwrap()).unwrap();
        // Its expiry is watched in /metrics.
        let r = c
            .get(srv.url("/metrics"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(
            text.contains(&format!(
                "otter_metadata_expires_timestamp_seconds{{role=\"{ROLE}\"}} {}\n",
                later.unix()
            )),
            "{text}"
        );
        // The same version again is a rollback.
        let (s, v) = put(&c, &srv, &publisher, good.clone()).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (409, Some("version_rollback"))
        );

        // The whole repository verifies with otter-keys, the delegated role included.
        let tv = chain.snapshot.signed().meta["targets.json"].version;
        let sv = chain.timestamp.signed().snapshot_meta().unwrap().version;
        let save = |name: &str, bytes: &[u8]| {
            let p = work.join(name);
            std::fs::write(&p, bytes).unwrap();
            p.display().to_string()
        };
        let root = save("1.root.json", &chain.root_bytes);
        let targets = save(
            &format!("{tv}.targets.json"),
            &get_ok(&c, &srv.url(&format!("/repo/metadata/{tv}.targets.json"))).await,
        );
        let snapshot = save(
            &format!("{sv}.snapshot.json"),
            &get_ok(&c, &srv.url(&format!("/repo/metadata/{sv}.snapshot.json"))).await,
        );
        let timestamp = save(
            "timestamp.json",
            &get_ok(&c, &srv.url("/repo/metadata/timestamp.json")).await,
        );
        let role_file = save("served.card-reader.json", &served);
        let (ok, out) = otter_keys(&["verify", "--root", &root, &targets, &snapshot, &timestamp]);
        assert!(ok, "{out}");
        let (ok, out) = otter_keys(&[
            "verify",
            "--root",
            &root,
            "--delegator",
            &targets,
            "--role",
            ROLE,
            &role_file,
        ]);
        assert!(ok, "{out}");
        let (ok, _) = otter_keys(&[
            "verify",
            "--root",
            &root,
            "--delegator",
            &targets,
            "--role",
            "other",
            &role_file,
        ]);
        assert!(!ok, "otter-keys refuses a role the delegator does not name");
        let parsed =
            Metadata::<otter_keys::metadata::Targets>::from_bytes(&served, 1 << 20).unwrap();
        assert!(parsed.signed().targets.contains_key(DRIVER));

        // A reference TUF client finds the target through the delegation and downloads it.
        let script = work.join("client.py");
        std::fs::write(&script, PY_CLIENT).unwrap();
        let out_dir = work.join("downloads");
        std::fs::create_dir(&out_dir).unwrap();
        let args = vec![
            script.display().to_string(),
            srv.url(""),
            DRIVER.to_owned(),
            out_dir.display().to_string(),
            root.clone(),
        ];
        let out = tokio::task::spawn_blocking(move || {
            Command::new(&python).args(&args).output().unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "python-tuf failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let path = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert_eq!(std::fs::read(&path).unwrap(), driver);

        // So does Otter's own client, `otter-agent tuf`.
        let agent = workspace_bin("otter-agent");
        let md = work.join("agent-metadata");
        let agent_out = work.join("agent-downloads");
        std::fs::create_dir_all(&md).unwrap();
        std::fs::create_dir_all(&agent_out).unwrap();
        let run_agent = |args: Vec<String>| {
            let out = Command::new(&agent).args(&args).output().unwrap();
            assert!(
                out.status.success(),
                "otter-agent {args:?}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let md_arg = md.display().to_string();
        run_agent(vec![
            "tuf".into(),
            "--metadata-dir".into(),
            md_arg.clone(),
            "init".into(),
            root.clone(),
        ]);
        run_agent(vec![
            "tuf".into(),
            "--metadata-dir".into(),
            md_arg,
            "--metadata-url".into(),
            srv.url("/repo/metadata"),
            "--target-base-url".into(),
            srv.url("/repo/targets"),
            "--target-dir".into(),
            agent_out.display().to_string(),
            "--target-name".into(),
            DRIVER.into(),
            "download".into(),
        ]);
        assert_eq!(std::fs::read(agent_out.join(DRIVER)).unwrap(), driver);
        assert_eq!(
            std::fs::read(md.join(format!("{ROLE}.json"))).unwrap(),
            good
        );

        // Version 2 replaces it; the list shows what is served.
        let v2 = sign_file(
            &work,
            "2.card-reader.json",
            &unsigned(2, later, &json!({ DRIVER: entry })),
            &[&vendor_key],
        );
        let (s, v) = put(&c, &srv, &admin, v2).await;
        assert_eq!(s, 201, "{v}");
        let (s, v) = api(&c, "GET", &url, Some(&publisher), None).await;
        assert_eq!(s, 200);
        assert_eq!(v["delegations"][0]["served_version"], 2);
        assert_eq!(v["delegations"][0]["highest_accepted"], 2);

        // A store that lost the role's file (or a crash before it was written) is repaired
        // from the database on the next start.
        srv.stop();
        let lost = walk(&dir.path().join("data/store"))
            .into_iter()
            .find(|p| p.ends_with("2.card-reader.json"))
            .expect("the store holds the role's file");
        let v2_bytes = std::fs::read(&lost).unwrap();
        std::fs::remove_file(&lost).unwrap();
        let (srv, _) = Bin::start(&dir.path().join("data"), &dir.path().join("restart1.log"));
        let url = srv.url("/api/v1/delegations");
        assert_eq!(
            get_ok(&c, &srv.url("/repo/metadata/2.card-reader.json")).await,
            v2_bytes
        );

        // Replacing the delegation's key drops metadata the new key did not sign.
        let replaced = json!({
            "name": ROLE, "keys": [stranger.public_key()], "threshold": 1,
            "paths": ["cardreader-*"],
        });
        let (s, v) = api(
            &c,
            "POST",
            &url,
            Some(&admin),
            Some(serde_json::to_vec(&replaced).unwrap()),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["metadata_dropped"], true);
        let chain = fetch_and_verify(&c, &srv).await;
        assert!(!chain
            .snapshot
            .signed()
            .meta
            .contains_key(&format!("{ROLE}.json")));
        // Removing it: the targets no longer delegate, and the name stays unknown.
        let (s, v) = api(
            &c,
            "DELETE",
            &srv.url(&format!("/api/v1/delegations/{ROLE}")),
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let chain = fetch_and_verify(&c, &srv).await;
        assert!(chain
            .targets
            .signed()
            .delegations
            .as_ref()
            .is_none_or(|d| d.roles().is_empty() && d.keys.is_empty()));
        // Every change is in the audit log, by the token that made it; the chain verifies.
        let (s, v) = api(&c, "GET", &srv.url("/api/v1/audit"), Some(&admin), None).await;
        assert_eq!(s, 200, "{v}");
        let actions: Vec<(&str, &str)> = v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["subject"] == format!("delegation:{ROLE}"))
            .map(|e| (e["action"].as_str().unwrap(), e["actor"].as_str().unwrap()))
            .collect();
        let count = |a: &str| actions.iter().filter(|(x, _)| *x == a).count();
        assert_eq!(count("delegation.declare"), 2, "{actions:?}");
        assert_eq!(count("delegation.target"), 1, "{actions:?}");
        assert_eq!(count("delegation.upload"), 2, "{actions:?}");
        assert_eq!(count("delegation.remove"), 1, "{actions:?}");
        assert_audit_verifies(&c, &srv.url("/api/v1/audit/verify"), &admin).await;
        srv.stop();

        // After a restart the repository (and the role's accepted history) is intact.
        let (srv, _) = Bin::start(&dir.path().join("data"), &dir.path().join("restart.log"));
        fetch_and_verify(&c, &srv).await;
        let (s, _) = api(
            &c,
            "GET",
            &srv.url("/repo/metadata/2.card-reader.json"),
            None,
            None,
        )
        .await;
        assert_eq!(s, 200, "accepted versions stay served");
        srv.stop();
        let log = std::fs::read_to_string(&log).unwrap();
        assert!(log.contains("delegated role metadata accepted"), "{log}");
        assert!(
            !log.contains(&admin),
            "the admin token never reaches the log"
        );
    });
}
