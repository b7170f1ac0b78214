//! What the integration tests share: deterministic keys, a small TUF repository (root with
//! the four top-level roles, targets, snapshot, timestamp), ways to tamper with published
//! bytes, and an independent canonical JSON encoder to check the library against.
//!
//! Every test file includes this module and uses part of it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use otter_keys::canonical::DEFAULT_MAX_METADATA_BYTES;
use otter_keys::crypto::{KeyId, PublicKey, Signature, SigningKey};
use otter_keys::hash::hashes_of;
use otter_keys::metadata::{
    MetaFile, Metadata, Role, RoleKeys, Root, Snapshot, TargetFile, Targets, Timestamp,
    SPEC_VERSION,
};
use otter_keys::time::UtcTime;
use serde_json::{json, Value};

/// The size cap the tests parse with, unless a test is about the cap.
pub const MAX: usize = DEFAULT_MAX_METADATA_BYTES;

/// The name of the one target the sample targets metadata lists.
pub const TARGET_NAME: &str = "firmware/pos-terminal-2.4.1.tar.zst";

/// The fixed update start time of every test (spec 5.1): 2026-06-01T00:00:00Z.
pub fn now() -> UtcTime {
    time("2026-06-01T00:00:00Z")
}

/// An expiry comfortably after [`now`].
pub fn later() -> UtcTime {
    time("2030-01-01T00:00:00Z")
}

/// Parses a `YYYY-MM-DDTHH:MM:SSZ` time.
pub fn time(s: &str) -> UtcTime {
    s.parse().unwrap()
}

/// A deterministic ed25519 key: the same seed always gives the same key and signatures.
pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_seed(&[seed; 32])
}

/// The key ids of `keys`, in order.
pub fn ids(keys: &[&SigningKey]) -> Vec<KeyId> {
    keys.iter().map(|k| k.key_id()).collect()
}

/// A role entry authorising `keys` with `threshold`.
pub fn role_keys(keys: &[&SigningKey], threshold: u32) -> RoleKeys {
    RoleKeys {
        keyids: ids(keys),
        threshold,
        extra: BTreeMap::new(),
    }
}

/// The keys and threshold of each top-level role, for building a root.
pub struct RootPlan<'a> {
    /// Root keys and threshold.
    pub root: (&'a [&'a SigningKey], u32),
    /// Targets keys and threshold.
    pub targets: (&'a [&'a SigningKey], u32),
    /// Snapshot keys and threshold.
    pub snapshot: (&'a [&'a SigningKey], u32),
    /// Timestamp keys and threshold.
    pub timestamp: (&'a [&'a SigningKey], u32),
}

/// A plan where only the root role has keys (the other roles list none): for tests about
/// root itself.
pub fn root_only<'a>(keys: &'a [&'a SigningKey], threshold: u32) -> RootPlan<'a> {
    RootPlan {
        root: (keys, threshold),
        targets: (&[], 1),
        snapshot: (&[], 1),
        timestamp: (&[], 1),
    }
}

/// The `signed` part of a root metadata file following `plan`.
pub fn root_body(version: u64, expires: UtcTime, plan: &RootPlan<'_>) -> Root {
    let mut keys = BTreeMap::new();
    let mut roles = BTreeMap::new();
    for (name, (role_signers, threshold)) in [
        ("root", plan.root),
        ("targets", plan.targets),
        ("snapshot", plan.snapshot),
        ("timestamp", plan.timestamp),
    ] {
        for k in role_signers {
            keys.insert(k.key_id(), k.public_key());
        }
        roles.insert(name.to_string(), role_keys(role_signers, threshold));
    }
    Root {
        type_: "root".into(),
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: Some(true),
        version,
        expires,
        keys,
        roles,
        extra: BTreeMap::new(),
    }
}

/// The `signed` part of a targets metadata file listing one firmware bundle.
pub fn targets_body(version: u64, expires: UtcTime) -> Targets {
    let bundle = b"pretend this is a zstd tarball";
    let mut extra = BTreeMap::new();
    extra.insert(
        "custom".to_string(),
        json!({
            "kind": "firmware",
            "version": "2.4.1",
            "hardware": ["ingenico-move5000", "verifone-v400m"],
            "channel": "stable",
            "rollout": {"percent": 25, "groups": ["pilot-stores"]}
        }),
    );
    Targets {
        type_: "targets".into(),
        spec_version: SPEC_VERSION.into(),
        version,
        expires,
        targets: BTreeMap::from([(
            TARGET_NAME.to_string(),
            TargetFile {
                length: bundle.len() as u64,
                hashes: hashes_of(bundle),
                extra,
            },
        )]),
        delegations: None,
        extra: BTreeMap::new(),
    }
}

/// A `meta` entry naming `version`.
pub fn meta_file(version: u64) -> MetaFile {
    MetaFile {
        version,
        length: None,
        hashes: None,
        extra: BTreeMap::new(),
    }
}

/// The `signed` part of a snapshot metadata file naming `targets.json` at `targets_version`.
pub fn snapshot_body(version: u64, expires: UtcTime, targets_version: u64) -> Snapshot {
    Snapshot {
        type_: "snapshot".into(),
        spec_version: SPEC_VERSION.into(),
        version,
        expires,
        meta: BTreeMap::from([("targets.json".to_string(), meta_file(targets_version))]),
        extra: BTreeMap::new(),
    }
}

/// The `signed` part of a timestamp metadata file naming `snapshot.json` at
/// `snapshot_version`.
pub fn timestamp_body(version: u64, expires: UtcTime, snapshot_version: u64) -> Timestamp {
    let mut snapshot = meta_file(snapshot_version);
    snapshot.length = Some(1234);
    snapshot.hashes = Some(hashes_of(b"snapshot bytes"));
    Timestamp {
        type_: "timestamp".into(),
        spec_version: SPEC_VERSION.into(),
        version,
        expires,
        meta: BTreeMap::from([("snapshot.json".to_string(), snapshot)]),
        extra: BTreeMap::new(),
    }
}

/// Builds metadata from `body` and signs it with each of `signers`.
pub fn signed<T: Role>(body: T, signers: &[&SigningKey]) -> Metadata<T> {
    let mut md = Metadata::new(body).unwrap();
    for k in signers {
        md.sign(k);
    }
    md
}

/// A small repository: one root key (threshold 1) and one key for each other role.
pub struct Repo {
    /// The root key.
    pub root_key: SigningKey,
    /// The targets key.
    pub targets_key: SigningKey,
    /// The snapshot key.
    pub snapshot_key: SigningKey,
    /// The timestamp key.
    pub timestamp_key: SigningKey,
    /// Version 1 of root.json, signed by the root key.
    pub root: Metadata<Root>,
    /// targets.json version 1.
    pub targets: Metadata<Targets>,
    /// snapshot.json version 1.
    pub snapshot: Metadata<Snapshot>,
    /// timestamp.json version 1.
    pub timestamp: Metadata<Timestamp>,
}

impl Repo {
    /// The repository, all of it expiring at [`later`].
    pub fn new() -> Self {
        let root_key = key(1);
        let targets_key = key(10);
        let snapshot_key = key(20);
        let timestamp_key = key(30);
        let root = signed(
            root_body(
                1,
                later(),
                &RootPlan {
                    root: (&[&root_key], 1),
                    targets: (&[&targets_key], 1),
                    snapshot: (&[&snapshot_key], 1),
                    timestamp: (&[&timestamp_key], 1),
                },
            ),
            &[&root_key],
        );
        let targets = signed(targets_body(1, later()), &[&targets_key]);
        let snapshot = signed(snapshot_body(1, later(), 1), &[&snapshot_key]);
        let timestamp = signed(timestamp_body(1, later(), 1), &[&timestamp_key]);
        Repo {
            root_key,
            targets_key,
            snapshot_key,
            timestamp_key,
            root,
            targets,
            snapshot,
            timestamp,
        }
    }
}

/// Publishes and reads back: `to_bytes` then `from_bytes`.
pub fn reparse<T: Role>(md: &Metadata<T>) -> Metadata<T> {
    Metadata::from_bytes(&md.to_bytes(), MAX).unwrap()
}

/// The published document as a JSON value.
pub fn json_of<T: Role>(md: &Metadata<T>) -> Value {
    serde_json::from_slice(&md.to_bytes()).unwrap()
}

/// A JSON value as published bytes.
pub fn bytes_of(v: &Value) -> Vec<u8> {
    serde_json::to_vec_pretty(v).unwrap()
}

/// The published bytes of `md` after `edit` changed the document (as an attacker on the
/// way could).
pub fn edited<T: Role>(md: &Metadata<T>, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v = json_of(md);
    edit(&mut v);
    bytes_of(&v)
}

/// A signature object as it appears in a document.
pub fn sig_value(s: &Signature) -> Value {
    serde_json::to_value(s).unwrap()
}

/// The published bytes of `md` with its signatures replaced by `sigs`.
pub fn with_signatures_bytes<T: Role>(md: &Metadata<T>, sigs: &[Signature]) -> Vec<u8> {
    edited(md, |v| {
        v["signatures"] = Value::Array(sigs.iter().map(sig_value).collect());
    })
}

/// `md` with its signatures replaced by `sigs`, read back through `from_bytes`.
pub fn with_signatures<T: Role>(md: &Metadata<T>, sigs: &[Signature]) -> Metadata<T> {
    Metadata::from_bytes(&with_signatures_bytes(md, sigs), MAX).unwrap()
}

/// A signature by `key` over `msg` that names `keyid` (which need not be the key's own).
pub fn signature_as(key: &SigningKey, keyid: &str, msg: &[u8]) -> Signature {
    let mut s = key.sign(msg);
    s.keyid = KeyId(keyid.to_string());
    s
}

/// The hex signature with one bit of byte `byte` flipped.
pub fn flip_bit(sig_hex: &str, byte: usize, bit: u8) -> String {
    let mut raw = hex::decode(sig_hex).unwrap();
    raw[byte] ^= 1 << bit;
    hex::encode(raw)
}

/// An ed25519 key in TUF form with its hex written as given (case, whitespace).
pub fn ed25519_key_written_as(public_hex: &str) -> PublicKey {
    let mut k = PublicKey::ed25519(&[0u8; 32]);
    k.keyval.public = public_hex.to_string();
    k
}

/// Canonical JSON as securesystemslib's `encode_canonical` (the TUF reference
/// implementation, python-tuf) and go-securesystemslib's `cjson` write it, written here
/// independently of the library: object members sorted by member name (code point order),
/// no whitespace, integers only, and only `"` and `\` escaped in strings, which are otherwise
/// written exactly as they are (no Unicode normalisation). `None` for a value with a float.
pub fn reference_canonical(v: &Value) -> Option<Vec<u8>> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.push(b'"');
        for c in s.chars() {
            if c == '"' || c == '\\' {
                out.push(b'\\');
            }
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
        out.push(b'"');
    }
    fn value(out: &mut Vec<u8>, v: &Value) -> Option<()> {
        match v {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    out.extend_from_slice(i.to_string().as_bytes());
                } else if let Some(u) = n.as_u64() {
                    out.extend_from_slice(u.to_string().as_bytes());
                } else {
                    return None;
                }
            }
            Value::String(s) => string(out, s),
            Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    value(out, item)?;
                }
                out.push(b']');
            }
            Value::Object(members) => {
                // Rust orders `str` by UTF-8 bytes, which is code point order.
                let mut names: Vec<&String> = members.keys().collect();
                names.sort();
                out.push(b'{');
                for (i, name) in names.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    string(out, name);
                    out.push(b':');
                    value(out, &members[name])?;
                }
                out.push(b'}');
            }
        }
        Some(())
    }
    let mut out = Vec::new();
    value(&mut out, v)?;
    Some(out)
}
