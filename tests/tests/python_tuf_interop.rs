//! Interoperability with python-tuf, the TUF reference implementation, both ways.
//!
//! (A) Metadata that Otter writes with the `otter-keys` library is loaded and verified by
//!     python-tuf (`tests/interop/verify_repo.py`: `tuf.api.metadata` and a full
//!     `tuf.ngclient.Updater` refresh and download over HTTP on loopback).
//! (B) Metadata that python-tuf writes (`tests/interop/make_repo.py`: ed25519,
//!     ecdsa-sha2-nistp256 and rsassa-pss-sha256 keys, a root rotation, a delegation) is
//!     verified by the `otter-keys` library and by `otter-keys verify`, and its broken
//!     copies are refused.
//!
//! The Python side runs in `<repo>/.venv` (or the interpreter in `OTTER_PYTHON`); create it
//! with `scripts/python-venv.sh`. Without it these tests fail: they are never skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use otter_keys::crypto::{KeyId, PublicKey, SigningKey};
use otter_keys::hash::{hashes_of, sha256_hex};
use otter_keys::metadata::{
    DelegatedRole, Delegations, Extra, MetaFile, Metadata, MetadataError, Role, RoleKeys, Root,
    Snapshot, TargetFile, Targets, Timestamp, SPEC_VERSION,
};
use otter_keys::time::UtcTime;
use serde_json::{json, Value};

/// Size cap for parsing metadata in these tests.
const MAX: usize = 16 * 1024 * 1024;

/// The delegated role in the repositories both sides write.
const OTTER_DELEGATED: &str = "otter-drivers";
const PYTHON_DELEGATED: &str = "vendor-drivers";

// ---------------------------------------------------------------------------------------
// Running the Python side
// ---------------------------------------------------------------------------------------

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn interop_script(name: &str) -> PathBuf {
    workspace_root().join("tests/interop").join(name)
}

/// The venv's python (or `OTTER_PYTHON`), checked to import python-tuf.
fn python() -> PathBuf {
    let python = match std::env::var_os("OTTER_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => workspace_root().join(".venv/bin/python"),
    };
    assert!(
        python.exists(),
        "no Python for the python-tuf interop tests at {}: run scripts/python-venv.sh first \
         (or set OTTER_PYTHON to a python with tests/interop/requirements.txt installed)",
        python.display()
    );
    let out = Command::new(&python)
        .args([
            "-c",
            "import tuf.api.metadata, tuf.ngclient, securesystemslib.signer",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "{} cannot import python-tuf: run scripts/python-venv.sh first\n{}",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    python
}

/// Runs a script of tests/interop with the venv's python.
fn run_python(script: &str, args: &[&Path]) -> Output {
    let py = python();
    let mut cmd = Command::new(&py);
    cmd.arg(interop_script(script)).args(args);
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {} {script}: {e}", py.display()))
}

fn text(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `make_repo.py DIR`, asserting it succeeded (it checks its own output with python-tuf).
fn make_python_repo(dir: &Path) {
    let out = run_python("make_repo.py", &[dir]);
    assert!(out.status.success(), "make_repo.py failed:\n{}", text(&out));
}

// ---------------------------------------------------------------------------------------
// (A) An Otter repository, written with the otter-keys library
// ---------------------------------------------------------------------------------------

fn expires() -> UtcTime {
    UtcTime::now().plus_days(365)
}

fn keys_of(keys: &[&SigningKey]) -> BTreeMap<KeyId, PublicKey> {
    keys.iter().map(|k| (k.key_id(), k.public_key())).collect()
}

fn role_keys(keys: &[&SigningKey], threshold: u32) -> RoleKeys {
    RoleKeys {
        keyids: keys.iter().map(|k| k.key_id()).collect(),
        threshold,
        extra: Extra::new(),
    }
}

fn signed<T: Role>(contents: T, keys: &[&SigningKey]) -> Metadata<T> {
    let mut md = Metadata::new(contents).expect("valid metadata");
    for k in keys {
        md.sign(k);
    }
    md
}

/// A target entry with sha256 and sha512 and Otter's fields under `custom`.
fn target(data: &[u8], custom: Value) -> TargetFile {
    TargetFile {
        length: data.len() as u64,
        hashes: hashes_of(data),
        extra: Extra::from([("custom".to_string(), custom)]),
    }
}

fn targets_metadata(version: u64, files: BTreeMap<String, TargetFile>) -> Targets {
    Targets {
        type_: "targets".into(),
        spec_version: SPEC_VERSION.into(),
        version,
        expires: expires(),
        targets: files,
        delegations: None,
        extra: Extra::new(),
    }
}

fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// What [`write_otter_repo`] wrote.
struct OtterRepo {
    /// Target path -> content, for every target (top-level and delegated).
    targets: BTreeMap<String, Vec<u8>>,
    /// The consistent-snapshot file names written under metadata/.
    metadata_files: Vec<String>,
}

/// Writes a repository the way Otter publishes it, with the otter-keys library only.
///
/// - root v1: 3 ed25519 root keys, threshold 2; one key each for targets, snapshot and
///   timestamp; consistent snapshots.
/// - root v2: root key 3 replaced by root key 4, and a new timestamp key; signed by root
///   keys 1 and 3 (v1's threshold, 3 is no longer in v2) and 1 and 4 (v2's threshold).
/// - targets v2: a firmware and a patch with Otter fields under `custom`, and a delegation
///   of `drivers/*` to `otter-drivers` (2 keys, threshold 1).
/// - otter-drivers v1: one driver target.
/// - snapshot v3 (length and hashes for targets.json, version only for the delegated role),
///   timestamp v4 (length and hashes of snapshot.json).
///
/// Written twice: under plain names in DIR (1.root.json, 2.root.json, targets.json, ...) and
/// in the consistent-snapshot layout (DIR/metadata/{VERSION}.{ROLE}.json,
/// DIR/metadata/timestamp.json, DIR/targets/{SHA256}.{NAME}, with the hash put before the
/// last path component as python-tuf's client asks for it).
fn write_otter_repo(dir: &Path) -> OtterRepo {
    let root_keys: Vec<SigningKey> = (0..4).map(|_| SigningKey::generate()).collect();
    let (r1, r2, r3, r4) = (&root_keys[0], &root_keys[1], &root_keys[2], &root_keys[3]);
    let targets_key = SigningKey::generate();
    let snapshot_key = SigningKey::generate();
    let timestamp_key = SigningKey::generate();
    let timestamp2_key = SigningKey::generate();
    let drivers_keys = [SigningKey::generate(), SigningKey::generate()];

    // Root v1 and v2.
    let root_v1 = |version: u64, root: &[&SigningKey], timestamp: &SigningKey| {
        let mut keys = keys_of(root);
        keys.extend(keys_of(&[&targets_key, &snapshot_key, timestamp]));
        Root {
            type_: "root".into(),
            spec_version: SPEC_VERSION.into(),
            consistent_snapshot: Some(true),
            version,
            expires: expires(),
            keys,
            roles: BTreeMap::from([
                ("root".to_string(), role_keys(root, 2)),
                ("targets".to_string(), role_keys(&[&targets_key], 1)),
                ("snapshot".to_string(), role_keys(&[&snapshot_key], 1)),
                ("timestamp".to_string(), role_keys(&[timestamp], 1)),
            ]),
            extra: Extra::new(),
        }
    };
    let root1 = signed(root_v1(1, &[r1, r2, r3], &timestamp_key), &[r1, r2, r3]);
    let root2 = signed(root_v1(2, &[r1, r2, r4], &timestamp2_key), &[r1, r3, r4]);
    root1.verify_self().expect("root v1 verifies in Otter");
    root1
        .verify_successor(&root2)
        .expect("root v2 verifies in Otter");

    // Targets, with Otter's fields under `custom`, and the delegation.
    let firmware = b"otter pos-a firmware 1.2.3\n".repeat(100);
    let patch = b"otter pos-a patch 1.2.4\n".to_vec();
    let driver = b"otter receipt printer driver 2.0.0\n".repeat(10);
    let mut top = targets_metadata(
        2,
        BTreeMap::from([
            (
                "pos-a-firmware-1.2.3.bin".to_string(),
                target(
                    &firmware,
                    json!({"kind": "firmware", "version": "1.2.3", "hardware": ["pos-a"],
                           "channel": "stable",
                           "rollout": {"percent": 25, "groups": ["pilot"]}}),
                ),
            ),
            (
                "pos-a-patch-1.2.4.bin".to_string(),
                target(
                    &patch,
                    json!({"kind": "patch", "version": "1.2.4", "hardware": ["pos-a", "pos-b"],
                           "min_installed": "1.2.3"}),
                ),
            ),
        ]),
    );
    top.delegations = Some(Delegations {
        keys: keys_of(&[&drivers_keys[0], &drivers_keys[1]]),
        roles: Some(vec![DelegatedRole {
            name: OTTER_DELEGATED.into(),
            keyids: drivers_keys.iter().map(SigningKey::key_id).collect(),
            threshold: 1,
            terminating: true,
            paths: Some(vec!["drivers/*".into()]),
            path_hash_prefixes: None,
            extra: Extra::new(),
        }]),
        extra: Extra::new(),
    });
    let targets = signed(top, &[&targets_key]);
    let drivers = signed(
        targets_metadata(
            1,
            BTreeMap::from([(
                "drivers/printer-2.0.0.bin".to_string(),
                target(
                    &driver,
                    json!({"kind": "driver", "version": "2.0.0", "hardware": ["pos-a"]}),
                ),
            )]),
        ),
        &[&drivers_keys[0]],
    );
    let targets_bytes = targets.to_bytes();
    let drivers_bytes = drivers.to_bytes();

    // Snapshot and timestamp.
    let snapshot = signed(
        Snapshot {
            type_: "snapshot".into(),
            spec_version: SPEC_VERSION.into(),
            version: 3,
            expires: expires(),
            meta: BTreeMap::from([
                (
                    "targets.json".to_string(),
                    MetaFile {
                        version: 2,
                        length: Some(targets_bytes.len() as u64),
                        hashes: Some(BTreeMap::from([(
                            "sha256".to_string(),
                            sha256_hex(&targets_bytes),
                        )])),
                        extra: Extra::new(),
                    },
                ),
                (
                    format!("{OTTER_DELEGATED}.json"),
                    MetaFile {
                        version: 1,
                        length: None,
                        hashes: None,
                        extra: Extra::new(),
                    },
                ),
            ]),
            extra: Extra::new(),
        },
        &[&snapshot_key],
    );
    let snapshot_bytes = snapshot.to_bytes();
    let timestamp = signed(
        Timestamp {
            type_: "timestamp".into(),
            spec_version: SPEC_VERSION.into(),
            version: 4,
            expires: expires(),
            meta: BTreeMap::from([(
                "snapshot.json".to_string(),
                MetaFile {
                    version: 3,
                    length: Some(snapshot_bytes.len() as u64),
                    hashes: Some(BTreeMap::from([(
                        "sha256".to_string(),
                        sha256_hex(&snapshot_bytes),
                    )])),
                    extra: Extra::new(),
                },
            )]),
            extra: Extra::new(),
        },
        &[&timestamp2_key],
    );

    // Plain names, and the consistent-snapshot layout.
    let files: Vec<(String, String, Vec<u8>)> = vec![
        ("1.root.json".into(), "1.root.json".into(), root1.to_bytes()),
        ("2.root.json".into(), "2.root.json".into(), root2.to_bytes()),
        (
            "targets.json".into(),
            "2.targets.json".into(),
            targets_bytes,
        ),
        (
            format!("{OTTER_DELEGATED}.json"),
            format!("1.{OTTER_DELEGATED}.json"),
            drivers_bytes,
        ),
        (
            "snapshot.json".into(),
            "3.snapshot.json".into(),
            snapshot_bytes,
        ),
        (
            "timestamp.json".into(),
            "timestamp.json".into(),
            timestamp.to_bytes(),
        ),
    ];
    let mut metadata_files = Vec::new();
    for (plain, consistent, bytes) in &files {
        write(&dir.join(plain), bytes);
        write(&dir.join("metadata").join(consistent), bytes);
        metadata_files.push(consistent.clone());
    }
    let contents = BTreeMap::from([
        ("pos-a-firmware-1.2.3.bin".to_string(), firmware),
        ("pos-a-patch-1.2.4.bin".to_string(), patch),
        ("drivers/printer-2.0.0.bin".to_string(), driver),
    ]);
    for (name, data) in &contents {
        let (parent, base) = match name.rsplit_once('/') {
            Some((parent, base)) => (format!("{parent}/"), base),
            None => (String::new(), name.as_str()),
        };
        let file = format!("{parent}{}.{base}", sha256_hex(data));
        write(&dir.join("targets").join(file), data);
    }
    OtterRepo {
        targets: contents,
        metadata_files,
    }
}

/// Changes one hex digit in the middle of the first signature of a metadata file.
fn corrupt_first_signature(path: &Path) {
    let mut doc: Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    let sig = doc["signatures"][0]["sig"]
        .as_str()
        .expect("a signature")
        .to_string();
    let i = sig.len() / 2;
    let old = &sig[i..=i];
    let new = if old == "1" { "2" } else { "1" };
    let corrupted = format!("{}{new}{}", &sig[..i], &sig[i + 1..]);
    assert_ne!(sig, corrupted);
    doc["signatures"][0]["sig"] = Value::String(corrupted);
    fs::write(path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
}

#[test]
fn python_tuf_verifies_an_otter_repository_and_downloads_its_targets() {
    let dir = tempfile::tempdir().unwrap();
    let repo = write_otter_repo(dir.path());
    assert_eq!(
        repo.metadata_files,
        [
            "1.root.json",
            "2.root.json",
            "2.targets.json",
            "1.otter-drivers.json",
            "3.snapshot.json",
            "timestamp.json"
        ]
    );

    let out = run_python("verify_repo.py", &[dir.path()]);
    let report = text(&out);
    assert!(
        out.status.success(),
        "python-tuf refuses Otter's repository:\n{report}"
    );
    println!("{report}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "verify_repo: python-tuf accepts",
        "1.root.json: self-signed, 3 root keys (threshold 2)",
        "2.root.json: 2 keys of root v1 (threshold 2) and 2 of its own (threshold 2)",
        "timestamp.json v4: 1 key(s)",
        "snapshot.json v3: 1 key(s), matches timestamp",
        "targets.json v2: 1 key(s), 2 target(s)",
        "otter-drivers.json v1: 1/1 key(s) of the delegation, 1 target(s) in ['drivers/*']",
        "ngclient: refreshed over HTTP, root chain 1 -> 2, timestamp, snapshot, targets",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{report}");
    }
    // ngclient found, downloaded and hash-checked every target, the delegated one too.
    for (name, data) in &repo.targets {
        let role = if name.starts_with("drivers/") {
            OTTER_DELEGATED
        } else {
            "targets"
        };
        let line = format!(
            "ngclient: downloaded {name} ({} bytes, signed by {role}) and verified it",
            data.len()
        );
        assert!(stdout.contains(&line), "missing {line:?} in:\n{report}");
    }
}

#[test]
fn python_tuf_refuses_otter_targets_with_a_corrupted_signature() {
    let dir = tempfile::tempdir().unwrap();
    write_otter_repo(dir.path());
    corrupt_first_signature(&dir.path().join("targets.json"));

    let out = run_python("verify_repo.py", &[dir.path()]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("REFUSED by python-tuf: targets.json: signature threshold not met")
            && stderr.contains("targets was signed by 0/1 keys"),
        "{report}"
    );
    assert!(out.stdout.is_empty(), "{report}");
}

/// Strings that canonical JSON encoders treat differently: a combining character (NFD),
/// member names where one is a prefix of another followed by a character below `"`, and a
/// quote in a member name. python-tuf signs and verifies over securesystemslib's canonical
/// JSON, which sorts members by their raw names and never normalises strings.
fn edge_case_targets() -> BTreeMap<String, TargetFile> {
    [
        (
            "Mu\u{0308}ller-receipt-logo.png",
            json!({"vendor": "Kassen-Mu\u{0308}ller GmbH"}),
        ),
        ("readme", json!({"note": "plain"})),
        ("readme v2.txt", json!({"note": "space after a prefix"})),
        ("readme!", json!({"note": "bang after a prefix"})),
        ("say \"hi\".txt", json!({"q": "a \"quoted\" \\ value"})),
        ("say #hi.txt", json!({"q": "hash"})),
    ]
    .into_iter()
    .map(|(name, custom)| (name.to_string(), target(name.as_bytes(), custom)))
    .collect()
}

#[test]
fn python_tuf_verifies_otter_metadata_with_unusual_strings() {
    // A one-key repository whose targets hold the edge-case names.
    let key = SigningKey::generate();
    let role = |k: &SigningKey| role_keys(&[k], 1);
    let root = signed(
        Root {
            type_: "root".into(),
            spec_version: SPEC_VERSION.into(),
            consistent_snapshot: Some(true),
            version: 1,
            expires: expires(),
            keys: keys_of(&[&key]),
            roles: ["root", "targets", "snapshot", "timestamp"]
                .into_iter()
                .map(|r| (r.to_string(), role(&key)))
                .collect(),
            extra: Extra::new(),
        },
        &[&key],
    );
    let targets = signed(targets_metadata(1, edge_case_targets()), &[&key]);
    root.verify_by(&targets, "targets")
        .expect("Otter verifies what it signed");
    let snapshot = signed(
        Snapshot {
            type_: "snapshot".into(),
            spec_version: SPEC_VERSION.into(),
            version: 1,
            expires: expires(),
            meta: BTreeMap::from([(
                "targets.json".to_string(),
                MetaFile {
                    version: 1,
                    length: None,
                    hashes: None,
                    extra: Extra::new(),
                },
            )]),
            extra: Extra::new(),
        },
        &[&key],
    );
    let timestamp = signed(
        Timestamp {
            type_: "timestamp".into(),
            spec_version: SPEC_VERSION.into(),
            version: 1,
            expires: expires(),
            meta: BTreeMap::from([(
                "snapshot.json".to_string(),
                MetaFile {
                    version: 1,
                    length: None,
                    hashes: None,
                    extra: Extra::new(),
                },
            )]),
            extra: Extra::new(),
        },
        &[&key],
    );
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("1.root.json"), &root.to_bytes());
    write(&dir.path().join("targets.json"), &targets.to_bytes());
    write(&dir.path().join("snapshot.json"), &snapshot.to_bytes());
    write(&dir.path().join("timestamp.json"), &timestamp.to_bytes());

    let out = run_python("verify_repo.py", &[dir.path(), Path::new("--no-client")]);
    assert!(
        out.status.success(),
        "python-tuf refuses targets metadata that Otter signed: Otter's canonical JSON \
         (keys/src/canonical.rs, olpc-cjson) differs from the reference implementation's \
         for these strings:\n{}",
        text(&out)
    );
}

// ---------------------------------------------------------------------------------------
// (B) A python-tuf repository, verified by the otter-keys library and by otter-keys verify
// ---------------------------------------------------------------------------------------

fn read_md<T: Role>(dir: &Path, name: &str) -> Metadata<T> {
    let bytes = fs::read(dir.join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"));
    Metadata::from_bytes(&bytes, MAX)
        .unwrap_or_else(|e| panic!("otter-keys cannot parse python-tuf's {name}: {e}"))
}

/// Verifies delegated targets metadata with the keys and threshold its delegator declares.
fn verify_delegated(
    delegator: &Metadata<Targets>,
    name: &str,
    md: &Metadata<Targets>,
) -> Result<u32, MetadataError> {
    let delegations = delegator
        .signed()
        .delegations
        .as_ref()
        .expect("delegations");
    let role = delegations
        .roles()
        .iter()
        .find(|r| r.name == name)
        .expect("the delegated role");
    md.verify(
        name,
        &delegations.keys,
        &RoleKeys {
            keyids: role.keyids.clone(),
            threshold: role.threshold,
            extra: Extra::new(),
        },
    )
}

fn key_schemes(root: &Root) -> Vec<String> {
    let mut schemes: Vec<String> = root.keys.values().map(|k| k.scheme.clone()).collect();
    schemes.sort();
    schemes.dedup();
    schemes
}

#[test]
fn otter_keys_library_verifies_a_python_tuf_repository() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_python_repo(d);

    let root1: Metadata<Root> = read_md(d, "1.root.json");
    let root2: Metadata<Root> = read_md(d, "2.root.json");
    assert_eq!(
        key_schemes(root1.signed()),
        ["ecdsa-sha2-nistp256", "ed25519", "rsassa-pss-sha256"]
    );
    assert_eq!(root1.verify_self().expect("root v1 verifies itself"), 3);
    root1
        .verify_successor(&root2)
        .expect("root v2 is a valid successor of root v1");
    let now = UtcTime::now();
    root2.check_expiry(now).unwrap();

    let targets: Metadata<Targets> = read_md(d, "targets.json");
    assert_eq!(root2.verify_by(&targets, "targets").unwrap(), 2);
    let custom = targets.signed().targets["pos-a-firmware-1.2.3.bin"]
        .custom()
        .expect("custom");
    assert_eq!(custom["kind"], "firmware");
    assert_eq!(custom["hardware"], json!(["pos-a"]));
    assert!(targets.signed().extra.contains_key("x-otter-interop"));

    let snapshot: Metadata<Snapshot> = read_md(d, "snapshot.json");
    assert_eq!(root2.verify_by(&snapshot, "snapshot").unwrap(), 1);
    assert_eq!(snapshot.signed().meta["targets.json"].version, 1);

    let timestamp: Metadata<Timestamp> = read_md(d, "timestamp.json");
    assert_eq!(root2.verify_by(&timestamp, "timestamp").unwrap(), 1);
    // Root v2 rotated the timestamp key: root v1's keys no longer verify the timestamp.
    assert!(matches!(
        root1.verify_by(&timestamp, "timestamp"),
        Err(MetadataError::ThresholdNotMet { valid: 0, .. })
    ));
    let snapshot_meta = timestamp.signed().snapshot_meta().unwrap();
    otter_keys::hash::verify(
        &fs::read(d.join("snapshot.json")).unwrap(),
        snapshot_meta.length,
        snapshot_meta.hashes.as_ref().unwrap(),
    )
    .expect("timestamp's length and hash of snapshot.json");

    let drivers: Metadata<Targets> = read_md(d, "vendor-drivers.json");
    assert_eq!(
        verify_delegated(&targets, PYTHON_DELEGATED, &drivers).unwrap(),
        2
    );
    for md in [&targets, &drivers] {
        md.check_expiry(now).unwrap();
    }

    // The broken copies are refused.
    let bad: Metadata<Targets> = read_md(d, "bad/targets.json");
    assert!(matches!(
        root2.verify_by(&bad, "targets"),
        Err(MetadataError::ThresholdNotMet {
            valid: 1,
            threshold: 2,
            ..
        })
    ));
    let bad: Metadata<Snapshot> = read_md(d, "bad/snapshot.json");
    assert!(matches!(
        root2.verify_by(&bad, "snapshot"),
        Err(MetadataError::ThresholdNotMet {
            valid: 0,
            threshold: 1,
            ..
        })
    ));
    let bad: Metadata<Root> = read_md(d, "bad/2.root.json");
    bad.verify_self()
        .expect("bad/2.root.json does meet its own threshold");
    assert!(matches!(
        root1.verify_successor(&bad),
        Err(MetadataError::ThresholdNotMet {
            valid: 0,
            threshold: 2,
            ..
        })
    ));
    let bad: Metadata<Targets> = read_md(d, "bad/vendor-drivers.json");
    assert!(matches!(
        verify_delegated(&targets, PYTHON_DELEGATED, &bad),
        Err(MetadataError::ThresholdNotMet {
            valid: 1,
            threshold: 2,
            ..
        })
    ));
}

#[test]
fn otter_keys_library_verifies_python_tuf_metadata_with_unusual_strings() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_python_repo(d);
    let root2: Metadata<Root> = read_md(d, "2.root.json");
    let mut refused = Vec::new();
    for name in [
        "edge/targets-escapes.json",
        "edge/targets-nfd.json",
        "edge/targets-prefix-names.json",
    ] {
        let md: Metadata<Targets> = read_md(d, name);
        if let Err(e) = root2.verify_by(&md, "targets") {
            refused.push(format!("{name}: {e}"));
        }
    }
    assert!(
        refused.is_empty(),
        "otter-keys refuses valid python-tuf metadata: its canonical JSON \
         (keys/src/canonical.rs, olpc-cjson) differs from securesystemslib's for these \
         strings:\n{}",
        refused.join("\n")
    );
}

/// The `otter-keys` binary of this build: `<target>/debug/otter-keys`, next to the
/// directory of this test executable (`<target>/debug/deps/`).
fn otter_keys_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable is in <target>/debug/deps")
        .join(format!("otter-keys{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "no otter-keys binary at {}: build the workspace first (`cargo build` or \
         `cargo test` at the workspace root)",
        bin.display()
    );
    bin
}

/// `otter-keys verify ARGS` in DIR.
fn otter_keys_verify(dir: &Path, args: &[&str]) -> Output {
    Command::new(otter_keys_bin())
        .current_dir(dir)
        .arg("verify")
        .args(args)
        .output()
        .expect("run otter-keys")
}

/// Asserts success and that the `ok:` lines name exactly `files`, in order (an `ok:` line
/// for the trusted `--root` file or the `--delegator`, the inputs, is allowed as well).
fn assert_verified(out: &Output, inputs: &[&str], files: &[&str]) {
    let report = text(out);
    assert!(out.status.success(), "otter-keys verify failed:\n{report}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let named: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ok: "))
        .map(|l| l.split(':').next().unwrap_or_default())
        .filter(|name| !inputs.contains(name))
        .collect();
    assert_eq!(named, files, "one ok line per file:\n{report}");
}

#[test]
fn otter_keys_verify_accepts_a_python_tuf_repository() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_python_repo(d);

    // Root chain 1 -> 2, then the top-level roles by root v2 (which rotated the timestamp
    // key, so the timestamp only verifies if v2 became trusted).
    let files = [
        "2.root.json",
        "targets.json",
        "snapshot.json",
        "timestamp.json",
    ];
    let mut args = vec!["--root", "1.root.json"];
    args.extend(files);
    assert_verified(&otter_keys_verify(d, &args), &["1.root.json"], &files);
    // Without the rotation, root v1's timestamp key no longer signs the timestamp.
    let out = otter_keys_verify(d, &["--root", "1.root.json", "timestamp.json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // The delegated role, by the keys targets.json declares for it.
    let out = otter_keys_verify(
        d,
        &[
            "--root",
            "2.root.json",
            "--delegator",
            "targets.json",
            "--role",
            PYTHON_DELEGATED,
            "vendor-drivers.json",
        ],
    );
    assert_verified(
        &out,
        &["2.root.json", "targets.json"],
        &["vendor-drivers.json"],
    );
}

#[test]
fn otter_keys_verify_refuses_broken_python_tuf_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_python_repo(d);

    let mut listed: Vec<String> = fs::read_dir(d.join("bad"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            "2.root.json",
            "snapshot.json",
            "targets.json",
            "vendor-drivers.json"
        ],
        "every broken copy make_repo.py writes is checked below"
    );

    let cases: [(&str, Vec<&str>); 4] = [
        // One hex digit of a signature changed: 1 of the 2 required signatures is left.
        (
            "bad/targets.json",
            vec!["--root", "1.root.json", "2.root.json", "bad/targets.json"],
        ),
        // Signed by the timestamp key, not the snapshot key.
        (
            "bad/snapshot.json",
            vec!["--root", "1.root.json", "2.root.json", "bad/snapshot.json"],
        ),
        // Rotation signed by the new root keys only: root v1's threshold is not met.
        (
            "bad/2.root.json",
            vec!["--root", "1.root.json", "bad/2.root.json"],
        ),
        // Delegated role signed by 1 of its 2 required keys.
        (
            "bad/vendor-drivers.json",
            vec![
                "--root",
                "2.root.json",
                "--delegator",
                "targets.json",
                "--role",
                PYTHON_DELEGATED,
                "bad/vendor-drivers.json",
            ],
        ),
    ];
    for (file, args) in cases {
        let out = otter_keys_verify(d, &args);
        let report = text(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{file} must be refused:\n{report}"
        );
        let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(
            stderr.contains(file) && (stderr.contains("threshold") || stderr.contains("signature")),
            "the refusal should name {file} and the signature threshold:\n{report}"
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !stdout
                .lines()
                .any(|l| l.starts_with("ok:") && l.contains(file)),
            "{file} reported ok:\n{report}"
        );
    }
}
