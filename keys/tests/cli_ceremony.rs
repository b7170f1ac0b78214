//! The key ceremony through the real `otter-keys` binary: init, rotation, partial signing,
//! verification, inspection, recovery keys, and the errors an operator meets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Output;

use assert_cmd::Command;

const PASS: &str = "correct-horse-battery";

fn keys() -> Command {
    let mut c = Command::cargo_bin("otter-keys").unwrap();
    c.env("OTTER_KEYS_SCRYPT_LOG_N", "10")
        .env("OTTER_KEYS_PASSPHRASE", PASS)
        .env_remove("OTTER_KEYS_PASSPHRASE_FILE")
        .env_remove("OTTER_KEYS_ONLINE_PASSPHRASE")
        .env_remove("OTTER_KEYS_ONLINE_PASSPHRASE_FILE");
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn init(dir: &Path, extra: &[&str]) {
    keys()
        .args(["init", "--dir"])
        .arg(dir)
        .args(extra)
        .assert()
        .success();
}

fn key_id(dir: &Path, role: &str) -> String {
    let o = keys()
        .args(["inspect", "--json"])
        .arg(dir.join("1.root.json"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["roles"][role]["keyids"][0].as_str().unwrap().to_string()
}

#[test]
fn init_writes_a_self_verifying_root_and_private_keys_0600() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("c");
    init(&dir, &["--root-keys", "3", "--threshold", "2"]);
    for name in [
        "root-1",
        "root-2",
        "root-3",
        "targets",
        "snapshot",
        "timestamp",
    ] {
        let p = dir.join("keys").join(format!("{name}.key"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        assert!(dir.join("keys").join(format!("{name}.pub.json")).exists());
    }
    let o = keys()
        .args(["verify", "--root"])
        .arg(dir.join("1.root.json"))
        .arg(dir.join("1.root.json"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = keys()
        .args(["inspect", "--json"])
        .arg(dir.join("1.root.json"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["type"], "root");
    assert_eq!(v["version"], 1);
    assert_eq!(v["roles"]["root"]["threshold"], 2);
    assert_eq!(v["roles"]["root"]["keyids"].as_array().unwrap().len(), 3);
    assert_eq!(v["consistent_snapshot"], true);
    assert_eq!(v["self_verification"]["valid"], 3);
}

#[test]
fn init_refuses_to_overwrite_and_impossible_thresholds() {
    let d = tempfile::tempdir().unwrap();
    init(d.path(), &[]);
    let o = keys()
        .args(["init", "--dir"])
        .arg(d.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("exists already"), "{}", text(&o));

    let d2 = tempfile::tempdir().unwrap();
    let o = keys()
        .args(["init", "--root-keys", "2", "--threshold", "3", "--dir"])
        .arg(d2.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("threshold 3 is more than the 2 root keys"),
        "{}",
        text(&o)
    );
    assert!(!d2.path().join("1.root.json").exists());
}

#[test]
fn no_passphrase_and_no_terminal_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let o = keys()
        .env_remove("OTTER_KEYS_PASSPHRASE")
        .args(["init", "--dir"])
        .arg(d.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("--passphrase-file"), "{}", text(&o));
}

#[test]
fn passphrase_file_works_and_short_passphrases_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let pf = d.path().join("pass");
    std::fs::write(&pf, "short\n").unwrap();
    let o = keys()
        .env_remove("OTTER_KEYS_PASSPHRASE")
        .arg("--passphrase-file")
        .arg(&pf)
        .args(["init", "--dir"])
        .arg(d.path().join("c"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("too short"), "{}", text(&o));
    std::fs::write(&pf, "a much longer passphrase\n").unwrap();
    keys()
        .env_remove("OTTER_KEYS_PASSPHRASE")
        .arg("--passphrase-file")
        .arg(&pf)
        .args(["init", "--dir"])
        .arg(d.path().join("c"))
        .assert()
        .success();
}

#[test]
fn rotation_needs_old_and_new_thresholds_and_partial_roots_can_be_completed() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    init(dir, &[]);
    let k = |n: &str| dir.join("keys").join(format!("{n}.key"));
    let ts = key_id(dir, "timestamp");

    // One root key is short of threshold 2: nothing written, generated key removed.
    let o = keys()
        .args(["root", "rotate", "--dir"])
        .arg(dir)
        .args([
            "--remove-key",
            &format!("timestamp={}", &ts[..8]),
            "--generate-key",
            "timestamp",
        ])
        .arg("--sign-with")
        .arg(k("root-1"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("threshold is 2"), "{}", text(&o));
    assert!(!dir.join("2.root.json").exists());
    assert!(!dir.join("keys/timestamp-v2-1.key").exists());

    // With --allow-partial the file is written, but verify refuses it...
    keys()
        .args(["root", "rotate", "--allow-partial", "--dir"])
        .arg(dir)
        .args([
            "--remove-key",
            &format!("timestamp={}", &ts[..8]),
            "--generate-key",
            "timestamp",
        ])
        .arg("--sign-with")
        .arg(k("root-1"))
        .assert()
        .success();
    let verify2 = || {
        keys()
            .args(["verify", "--root"])
            .arg(dir.join("1.root.json"))
            .arg(dir.join("2.root.json"))
            .output()
            .unwrap()
    };
    let o = verify2();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("1 valid signature(s) from authorised keys, threshold is 2"));

    // ...until a second root key holder signs it.
    keys()
        .args(["sign", "--key"])
        .arg(k("root-3"))
        .arg(dir.join("2.root.json"))
        .assert()
        .success();
    let o = verify2();
    assert!(o.status.success(), "{}", text(&o));

    // The revoked timestamp key is gone from the new root; the new one is in.
    let o = keys()
        .args(["inspect", "--json"])
        .arg(dir.join("2.root.json"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ids = v["roles"]["timestamp"]["keyids"].as_array().unwrap();
    assert_eq!(ids.len(), 1);
    assert_ne!(ids[0].as_str().unwrap(), ts);
    assert!(v["keys"].get(&ts).is_none());
}

#[test]
fn wrong_passphrase_is_named() {
    let d = tempfile::tempdir().unwrap();
    init(d.path(), &[]);
    let o = keys()
        .env("OTTER_KEYS_PASSPHRASE", "not the passphrase")
        .args(["sign", "--key"])
        .arg(d.path().join("keys/root-1.key"))
        .arg(d.path().join("1.root.json"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("wrong passphrase"), "{}", text(&o));
    assert!(!text(&o).contains("not the passphrase"));
}

#[test]
fn verify_refuses_expired_and_a_root_that_skips_a_version() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    init(dir, &["--expires-days", "1"]);
    let root = dir.join("1.root.json");
    let o = keys()
        .args(["verify", "--at", "2099-01-01T00:00:00Z", "--root"])
        .arg(&root)
        .arg(&root)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("expired"), "{}", text(&o));
    keys()
        .args([
            "verify",
            "--allow-expired",
            "--at",
            "2099-01-01T00:00:00Z",
            "--root",
        ])
        .arg(&root)
        .arg(&root)
        .assert()
        .success();

    // v2 then v3, then check 1 -> 3 directly: refused (5.3.5), 1 -> 2 -> 3 passes.
    for _ in 0..2 {
        keys()
            .args(["root", "rotate", "--dir"])
            .arg(dir)
            .arg("--sign-with")
            .arg(dir.join("keys/root-1.key"))
            .arg("--sign-with")
            .arg(dir.join("keys/root-2.key"))
            .assert()
            .success();
    }
    let o = keys()
        .args(["verify", "--root"])
        .arg(&root)
        .arg(dir.join("3.root.json"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("expected version 2"), "{}", text(&o));
    keys()
        .args(["verify", "--root"])
        .arg(&root)
        .arg(dir.join("2.root.json"))
        .arg(dir.join("3.root.json"))
        .assert()
        .success();
}

#[test]
fn malformed_files_get_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("bad.json");
    std::fs::write(&bad, br#"{"signed": {"_type": "root"}, "signed": {}}"#).unwrap();
    let o = keys().args(["inspect"]).arg(&bad).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("duplicate member"), "{}", text(&o));
    std::fs::write(&bad, b"\x00\x01not json").unwrap();
    let o = keys().args(["inspect"]).arg(&bad).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("malformed JSON"), "{}", text(&o));
}

#[test]
fn recovery_key_is_encrypted_0600_with_a_public_recipient() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("recovery.age");
    let o = keys()
        .args(["recovery-key", "new", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let public = String::from_utf8(o.stdout).unwrap().trim().to_string();
    assert!(public.starts_with("age1"), "{public}");
    let raw = std::fs::read(&out).unwrap();
    assert!(raw.starts_with(b"age-encryption.org/v1"));
    assert!(!String::from_utf8_lossy(&raw).contains("AGE-SECRET-KEY"));
    assert_eq!(
        std::fs::read_to_string(d.path().join("recovery.age.pub"))
            .unwrap()
            .trim(),
        public
    );
    let o = keys()
        .args(["recovery-key", "public", "--key"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(o.stdout).unwrap().trim(), public);
    // Never overwritten.
    let o = keys()
        .args(["recovery-key", "new", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn help_teaches_the_ceremony() {
    let o = keys().arg("--help").output().unwrap();
    let t = text(&o);
    for needle in [
        "threshold",
        "root rotate",
        "recovery-key",
        "OTTER_KEYS_PASSPHRASE",
    ] {
        assert!(t.contains(needle), "--help lacks {needle:?}");
    }
}
