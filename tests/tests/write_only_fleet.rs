//! Write-only fleets end to end, with the real binaries on loopback: `otter-server serve`
//! with `[backups] write_only_groups` (and the `OTTER_BACKUPS_WRITE_ONLY` override), terminals
//! enrolled with `otter-agent enroll`, backups of the reference POS database (`pos_db.py`):
//!
//! - a terminal of a write-only group is told so at enrollment, keeps no age identity in its
//!   state dir, backs up (the server checks and countersigns as for any backup), encrypts
//!   packs and manifest bodies to the recovery key alone, and refuses `otter-agent restore`
//!   from the server, pointing to the recovery-key flow; a terminal of another group keeps its
//!   backup key;
//! - the standard `age` tool with the recovery identity decrypts its pack;
//! - the recovery-key transfer (`otter-keys backup reencrypt --to` the recipient of
//!   `otter-agent restore-key`) restores it exactly, and the one-time key is gone afterwards.
//!
//! The binaries are taken from the target dir next to this test executable: build them
//! first (`cargo build --workspace`; `cargo test --workspace` does).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/fleet.rs"]
mod fleet;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{command, show};
use fleet::Fleet;
use otter_keys::age::secrecy::ExposeSecret;
use otter_keys::envelope::SignedManifest;
use serde_json::Value;

/// The reference database tool: `OTTER_POS_DB`, or `shared/tools/pos_db.py` beside the
/// repository.
fn pos_db() -> PathBuf {
    let path = std::env::var_os("OTTER_POS_DB")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/pos_db.py")
        });
    assert!(path.exists(), "set OTTER_POS_DB to pos_db.py");
    path
}

fn pos(args: &[&str]) {
    let out = Command::new("python3")
        .arg(pos_db())
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "pos_db.py {args:?}: {}", show(&out));
}

/// The database's `PRAGMA integrity_check` and the SHA-256 of its `.dump`.
fn dump(db: &Path) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys, hashlib\n\
             c = sqlite3.connect(sys.argv[1])\n\
             ok = c.execute('PRAGMA integrity_check').fetchone()[0]\n\
             print(ok, hashlib.sha256('\\n'.join(c.iterdump()).encode()).hexdigest())",
        )
        .arg(db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", show(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The number of X25519 recipient stanzas in the header of an age file.
fn x25519_stanzas(age_file: &[u8]) -> usize {
    let end = age_file
        .windows(4)
        .position(|w| w == b"\n---")
        .expect("an age header");
    String::from_utf8_lossy(&age_file[..end])
        .lines()
        .filter(|l| l.starts_with("-> X25519 "))
        .count()
}

/// A fleet with a recovery key, whose group `lab` is write-only; `env` for the server.
fn start(env: &[(&str, &str)]) -> Fleet {
    let mut builder = Fleet::builder()
        .recovery_key()
        .backups_toml("write_only_groups = [\"lab\"]\n");
    for (k, v) in env {
        builder = builder.server_env(k, v);
    }
    builder.start()
}

/// Enrolls a terminal of `group` with state in `TMP/NAME/state`; returns the state dir and
/// the enrollment record.
fn enroll(fleet: &Fleet, name: &str, group: Option<&str>) -> (PathBuf, Value) {
    let t = fleet.enroll_in(name, group);
    let agent: Value =
        serde_json::from_slice(&std::fs::read(t.state.join("agent.json")).unwrap()).unwrap();
    (t.state, agent)
}

fn backup(state: &Path, db: &Path) -> String {
    ok(&command("otter-agent")
        .args(["backup", "--pack-size", "65536", "--state-dir"])
        .arg(state)
        .arg("--database")
        .arg(db)
        .output()
        .unwrap())
}

/// The recovery identity as a plain age identity file.
fn recovery_file(fleet: &Fleet) -> PathBuf {
    let path = fleet.tmp.path().join("recovery.txt");
    std::fs::write(
        &path,
        format!("{}\n", fleet.recovery().to_string().expose_secret()),
    )
    .unwrap();
    path
}

/// `otter-server ARGS --server URL` with `token`.
fn over_api(fleet: &Fleet, token: &str, args: &[&std::ffi::OsStr]) -> Output {
    command("otter-server")
        .args(args)
        .args(["--server", fleet.url()])
        .env("OTTER_TOKEN", token)
        .output()
        .unwrap()
}

fn has_age_identity(state: &Path) -> bool {
    files_under(state).iter().any(|f| {
        std::fs::read(f)
            .map(|b| String::from_utf8_lossy(&b).contains("AGE-SECRET-KEY-"))
            .unwrap_or(false)
    })
}

#[test]
fn a_write_only_terminal_backs_up_and_only_the_recovery_key_restores_it() {
    let fleet = start(&[]);
    // A terminal of another group keeps its backup key.
    let (other, agent) = enroll(&fleet, "shop", Some("shop"));
    assert_eq!(agent["backups_write_only"], false, "{agent}");
    assert!(other.join("backup.key").exists());

    let (state, agent) = enroll(&fleet, "lab", Some("lab"));
    assert_eq!(agent["backups_write_only"], true, "{agent}");
    let device = agent["device_id"].as_str().unwrap().to_owned();
    assert!(!state.join("backup.key").exists());
    assert!(
        !has_age_identity(&state),
        "an age identity in the state dir"
    );
    // The server keeps no recipient for it (nobody can re-encrypt to a key that is gone);
    // the other terminal's is listed.
    let devices: Value =
        serde_json::from_str(&fleet.admin(&["devices", "list", "--json"])).unwrap();
    let recipient_of = |group: &str| {
        devices
            .as_array()
            .or_else(|| devices["devices"].as_array())
            .unwrap()
            .iter()
            .find(|d| d["group"] == group)
            .map(|d| d["backup_recipient"].clone())
            .unwrap()
    };
    assert_eq!(recipient_of("lab"), Value::Null, "{devices}");
    assert!(
        recipient_of("shop").as_str().unwrap().starts_with("age1"),
        "{devices}"
    );

    let db = fleet.tmp.path().join("lab/pos.db");
    pos(&["make", db.to_str().unwrap(), "3000"]);
    backup(&state, &db);
    pos(&["mutate", db.to_str().unwrap(), "append", "2"]);
    backup(&state, &db);
    let taken = dump(&db);
    assert!(
        !has_age_identity(&state),
        "an age identity after backing up"
    );

    // The server checked and countersigned both, and verifies them without a key.
    let out = command("otter-server")
        .args(["backups", "verify", "--json", "--data-dir"])
        .arg(&fleet.data)
        .output()
        .unwrap();
    let v: Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["manifests"], 2, "{v}");

    // Every pack and manifest body is encrypted to one recipient: the recovery key.
    let store = fleet.data.join("store/backups").join(&device);
    let packs = files_under(&store.join("packs"));
    assert!(!packs.is_empty());
    for p in &packs {
        assert_eq!(x25519_stanzas(&std::fs::read(p).unwrap()), 1, "{p:?}");
    }
    let manifest = SignedManifest::from_bytes(
        &std::fs::read(store.join("manifests/00000000000000000002")).unwrap(),
        1 << 28,
    )
    .unwrap();
    assert_eq!(x25519_stanzas(&manifest.body_ciphertext), 1);
    let body = manifest.open_body(fleet.recovery(), 1 << 28).unwrap();

    // The standard age tool with the recovery identity opens a pack.
    let recovery = recovery_file(&fleet);
    let out = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&recovery)
        .arg(&packs[0])
        .output()
        .expect("the `age` tool (Debian package age) is installed");
    assert!(out.status.success(), "age -d: {}", show(&out));
    assert!(!out.stdout.is_empty());

    // The terminal cannot restore (or read) its own backups: it points to the recovery key.
    let untouched = std::fs::read(&db).unwrap();
    let restore = |args: &[&str]| {
        command("otter-agent")
            .arg("restore")
            .args(args)
            .arg("--state-dir")
            .arg(&state)
            .arg("--database")
            .arg(&db)
            .output()
            .unwrap()
    };
    pos(&["mutate", db.to_str().unwrap(), "append", "1"]);
    let changed = std::fs::read(&db).unwrap();
    assert_ne!(changed, untouched);
    for args in [
        &["--latest"][..],
        &["--latest", "--dry-run"],
        &["--id", "1"],
    ] {
        let out = restore(args);
        assert!(!out.status.success(), "{}", show(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("write-only"), "{err}");
        assert!(err.contains("--from-transfer"), "{err}");
        assert!(err.contains("restore-key"), "{err}");
        assert_eq!(std::fs::read(&db).unwrap(), changed);
    }

    // The recovery-key flow: a one-time restore key on the terminal, re-encryption offline.
    let key_of = || {
        ok(&command("otter-agent")
            .args(["restore-key", "--state-dir"])
            .arg(&state)
            .output()
            .unwrap())
        .trim()
        .to_owned()
    };
    let recipient = key_of();
    assert!(recipient.starts_with("age1"), "{recipient}");
    assert_eq!(key_of(), recipient, "the same key until it is used");
    let device_key = otter_agent::device::Identity::load(&state)
        .unwrap()
        .public_key_hex();
    let transfer = fleet.tmp.path().join("transfer");
    ok(&command("otter-keys")
        .args(["backup", "reencrypt", "--identity"])
        .arg(&recovery)
        .arg("--from")
        .arg(&store)
        .args(["--device", &device, "--device-key", &device_key])
        .args(["--to", &recipient])
        .arg("--out")
        .arg(&transfer)
        .output()
        .unwrap());
    let said = ok(&restore(&[
        "--latest",
        "--from-transfer",
        transfer.to_str().unwrap(),
    ]));
    assert!(said.contains("restored backup #2"), "{said}");
    assert_eq!(dump(&db), taken);
    assert_eq!(
        otter_keys::hash::sha256_hex(&std::fs::read(&db).unwrap()),
        body.file_sha256
    );
    assert!(
        !state.join("restore.key").exists(),
        "the one-time key is deleted"
    );
    assert!(!has_age_identity(&state));
    // Without it, the transfer cannot be opened again.
    let out = restore(&["--latest", "--from-transfer", transfer.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", show(&out));
}

#[test]
fn the_environment_makes_the_whole_fleet_write_only() {
    let fleet = start(&[("OTTER_BACKUPS_WRITE_ONLY", "true")]);
    let (state, agent) = enroll(&fleet, "t", None);
    assert_eq!(agent["backups_write_only"], true, "{agent}");
    assert!(!has_age_identity(&state));
}

#[test]
fn a_replacement_terminal_restores_through_the_server_with_signed_requests() {
    let fleet = start(&[]);
    let restorer = fleet.token("restorer");
    let admin = fleet.token("admin");
    let (dead_state, dead) = enroll(&fleet, "dead", Some("lab"));
    let dead_id = dead["device_id"].as_str().unwrap().to_owned();
    let dead_db = fleet.tmp.path().join("dead/pos.db");
    pos(&["make", dead_db.to_str().unwrap(), "3000"]);
    backup(&dead_state, &dead_db);
    pos(&["mutate", dead_db.to_str().unwrap(), "append", "2"]);
    backup(&dead_state, &dead_db);
    let taken = dump(&dead_db);
    let dead_key = otter_agent::device::Identity::load(&dead_state)
        .unwrap()
        .public_key_hex();

    // The replacement (write-only too) enrolls and makes its one-time restore key.
    let (new_state, new) = enroll(&fleet, "new", Some("lab"));
    let new_id = new["device_id"].as_str().unwrap().to_owned();
    let recipient = ok(&command("otter-agent")
        .args(["restore-key", "--state-dir"])
        .arg(&new_state)
        .output()
        .unwrap())
    .trim()
    .to_owned();

    // Export through the API: the same files as the store holds, ciphertext only.
    let export = fleet.tmp.path().join("export");
    let said = ok(&over_api(
        &fleet,
        &restorer,
        &[
            "backups".as_ref(),
            "export".as_ref(),
            "--device".as_ref(),
            dead_id.as_ref(),
            "--out".as_ref(),
            export.as_os_str(),
        ],
    ));
    assert!(said.contains("exported 2 manifests"), "{said}");
    let store = fleet.data.join("store/backups").join(&dead_id);
    for sub in ["manifests", "packs"] {
        let mut a: Vec<_> = files_under(&store.join(sub))
            .iter()
            .map(|p| (p.file_name().unwrap().to_owned(), std::fs::read(p).unwrap()))
            .collect();
        let mut b: Vec<_> = files_under(&export.join(sub))
            .iter()
            .map(|p| (p.file_name().unwrap().to_owned(), std::fs::read(p).unwrap()))
            .collect();
        a.sort();
        b.sort();
        assert!(!a.is_empty() && a == b, "{sub} differ");
    }
    // An auditor may not export.
    let auditor = fleet.token("auditor");
    let out = over_api(
        &fleet,
        &auditor,
        &[
            "backups".as_ref(),
            "export".as_ref(),
            "--device".as_ref(),
            dead_id.as_ref(),
            "--out".as_ref(),
            fleet.tmp.path().join("nope").as_os_str(),
        ],
    );
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{}",
        show(&out)
    );
    assert!(!fleet.tmp.path().join("nope").exists());

    // Offline re-encryption with the recovery identity.
    let transfer = fleet.tmp.path().join("transfer");
    ok(&command("otter-keys")
        .args(["backup", "reencrypt", "--identity"])
        .arg(recovery_file(&fleet))
        .arg("--from")
        .arg(&export)
        .args(["--device", &dead_id, "--device-key", &dead_key])
        .args(["--to", &recipient])
        .arg("--out")
        .arg(&transfer)
        .output()
        .unwrap());

    // A transfer naming another key for the dead device is refused; nothing is catalogued.
    let forged = fleet.tmp.path().join("forged");
    ok(&Command::new("cp")
        .arg("-r")
        .arg(&transfer)
        .arg(&forged)
        .output()
        .unwrap());
    let desc = std::fs::read_to_string(forged.join("transfer.json")).unwrap();
    let other = hex_key_of(&[7; 32]);
    std::fs::write(
        forged.join("transfer.json"),
        desc.replace(&dead_key, &other),
    )
    .unwrap();
    let import = |dir: &Path| {
        over_api(
            &fleet,
            &restorer,
            &[
                "backups".as_ref(),
                "import-transfer".as_ref(),
                "--device".as_ref(),
                new_id.as_ref(),
                "--from".as_ref(),
                dir.as_os_str(),
            ],
        )
    };
    let out = import(&forged);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid_transfer"),
        "{}",
        show(&out)
    );
    let said = ok(&import(&transfer));
    assert!(said.contains("2 manifests"), "{said}");
    let list = ok(&over_api(
        &fleet,
        &restorer,
        &[
            "backups".as_ref(),
            "transfers".as_ref(),
            "--device".as_ref(),
            new_id.as_ref(),
        ],
    ));
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["source_device_id"], dead_id.as_str());
    let transfer_id = list[0]["id"].as_str().unwrap().to_owned();
    // The server stored ciphertext only: every pack and body of the transfer is an age file.
    let stored = files_under(&fleet.data.join("store/transfers").join(&new_id));
    assert_eq!(stored.len(), files_under(&transfer).len());
    for f in stored.iter().filter(|f| {
        let p = f.to_string_lossy();
        p.contains("/packs/") || p.ends_with(".body")
    }) {
        let bytes = std::fs::read(f).unwrap();
        assert!(bytes.starts_with(b"age-encryption.org/v1\n"), "{f:?}");
    }

    // Another device cannot fetch it.
    let out = command("otter-agent")
        .args([
            "restore",
            "--latest",
            "--from-server-transfer",
            &transfer_id,
        ])
        .arg("--state-dir")
        .arg(&dead_state)
        .arg("--database")
        .arg(&dead_db)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("transfer_not_found"),
        "{}",
        show(&out)
    );

    // The new terminal fetches it with signed requests and restores it.
    let new_db = fleet.tmp.path().join("new/pos.db");
    pos(&["make", new_db.to_str().unwrap(), "200"]);
    let said = ok(&command("otter-agent")
        .args(["restore", "--latest", "--from-server-transfer", "latest"])
        .arg("--state-dir")
        .arg(&new_state)
        .arg("--database")
        .arg(&new_db)
        .output()
        .unwrap());
    assert!(said.contains("restored backup #2"), "{said}");
    assert_eq!(dump(&new_db), taken);
    assert!(!new_state.join("restore.key").exists());
    assert!(!new_state.join("transfer-download").exists());
    assert!(!has_age_identity(&new_state));

    // Every step is in the audit log.
    let audit = ok(&command("otter-server")
        .args(["audit", "list", "--server", &fleet.server.url])
        .env("OTTER_TOKEN", &admin)
        .output()
        .unwrap());
    for action in [
        "backup.export",
        "backup.transfer_import",
        "backup.transfer_fetch",
    ] {
        assert!(audit.contains(action), "{action} not audited: {audit}");
    }
}

/// The hex public key of the ed25519 key with `seed`.
fn hex_key_of(seed: &[u8; 32]) -> String {
    otter_keys::crypto::SigningKey::from_seed(seed)
        .public_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
