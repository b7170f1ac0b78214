//! Members Otter does not know, anywhere in a document, are kept: metadata another
//! implementation signed with extra members verifies, and reading, re-serialising and
//! reading again changes nothing, so its signatures still verify.
//!
//! Spec 4 ("Document formats"): "Implementers who encounter undefined attribute-value pairs
//! in the format must include the data when calculating hashes or verifying signatures and
//! must preserve the data when re-serializing." Spec 4.5: CUSTOM is opaque to the framework
//! and "made available to the client application".
//!
//! The documents here are built as plain JSON and signed over canonical bytes made by the
//! independent encoder in `common` (securesystemslib's rules), as a third party would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{bytes_of, json_of, key, reference_canonical, MAX};
use otter_keys::crypto::{KeyId, SigningKey};
use otter_keys::hash::sha256_hex;
use otter_keys::metadata::{Metadata, Role, Root, Snapshot, Targets, Timestamp};
use serde_json::{json, Value};

/// A TUF key object for `k` with unknown members in the key and in `keyval`.
fn key_object(k: &SigningKey) -> Value {
    json!({
        "keytype": "ed25519",
        "scheme": "ed25519",
        "keyval": {"public": hex::encode(k.public_bytes()), "x-keyval-comment": "kept"},
        "x-key-origin": {"ceremony": "2026-03", "hsm": "yubihsm2", "slot": 7}
    })
}

/// The id a third party computes: SHA-256 of the canonical key object, unknown members
/// included.
fn third_party_id(k: &SigningKey) -> String {
    sha256_hex(&reference_canonical(&key_object(k)).unwrap())
}

/// A document `{signatures, signed}` signed by `signers` over the reference canonical form,
/// with unknown members in the signature objects and the envelope.
fn envelope(signed: Value, signers: &[&SigningKey]) -> Value {
    let canonical = reference_canonical(&signed).unwrap();
    let sigs: Vec<Value> = signers
        .iter()
        .map(|k| {
            json!({
                "keyid": third_party_id(k),
                "sig": hex::encode(k.sign_raw(&canonical)),
                "x-signed-with": {"tool": "some-other-tuf", "at": 1_750_000_000}
            })
        })
        .collect();
    json!({
        "signatures": sigs,
        "signed": signed,
        "x-envelope": {"mirror": "cdn-7", "fetched": [1, 2, 3]}
    })
}

struct ThirdParty {
    root_key: SigningKey,
    targets_key: SigningKey,
    snapshot_key: SigningKey,
    timestamp_key: SigningKey,
    vendor_key: SigningKey,
}

impl ThirdParty {
    fn new() -> Self {
        ThirdParty {
            root_key: key(70),
            targets_key: key(71),
            snapshot_key: key(72),
            timestamp_key: key(73),
            vendor_key: key(74),
        }
    }

    fn role(&self, k: &SigningKey) -> Value {
        json!({"keyids": [third_party_id(k)], "threshold": 1, "x-role-note": ["a", 1, null]})
    }

    fn root(&self) -> Value {
        let keys: serde_json::Map<String, Value> = [
            &self.root_key,
            &self.targets_key,
            &self.snapshot_key,
            &self.timestamp_key,
        ]
        .iter()
        .map(|k| (third_party_id(k), key_object(k)))
        .collect();
        envelope(
            json!({
                "_type": "root",
                "spec_version": "1.0.31",
                "consistent_snapshot": true,
                "version": 1,
                "expires": "2030-01-01T00:00:00Z",
                "keys": keys,
                "roles": {
                    "root": self.role(&self.root_key),
                    "targets": self.role(&self.targets_key),
                    "snapshot": self.role(&self.snapshot_key),
                    "timestamp": self.role(&self.timestamp_key),
                },
                "x-signed-extra": {"nested": {"deep": [true, null, -5, "ünïcödé"]}}
            }),
            &[&self.root_key],
        )
    }

    fn timestamp(&self) -> Value {
        envelope(
            json!({
                "_type": "timestamp",
                "spec_version": "1.0.31",
                "version": 3,
                "expires": "2030-01-01T00:00:00Z",
                "meta": {"snapshot.json": {
                    "version": 3,
                    "length": 512,
                    "hashes": {"sha256": "ab".repeat(32), "blake2b-256": "cd".repeat(32)},
                    "x-meta-extra": {"compressed": false}
                }},
                "x-timestamp-extra": 1
            }),
            &[&self.timestamp_key],
        )
    }

    fn snapshot(&self) -> Value {
        envelope(
            json!({
                "_type": "snapshot",
                "spec_version": "1.0.31",
                "version": 3,
                "expires": "2030-01-01T00:00:00Z",
                "meta": {
                    "targets.json": {"version": 2, "x-meta-extra": "kept"},
                    "vendor-ingenico.json": {"version": 1, "length": 99}
                },
                "x-snapshot-extra": []
            }),
            &[&self.snapshot_key],
        )
    }

    fn targets(&self) -> Value {
        envelope(
            json!({
                "_type": "targets",
                "spec_version": "1.0.31",
                "version": 2,
                "expires": "2030-01-01T00:00:00Z",
                "targets": {
                    "firmware/pos-2.4.1.tar.zst": {
                        "length": 1_048_576,
                        "hashes": {"sha256": "12".repeat(32), "sha512": "34".repeat(64)},
                        "custom": {
                            "kind": "firmware",
                            "version": "2.4.1",
                            "hardware": ["ingenico-move5000"],
                            "rollout": {"percent": 10, "groups": []},
                            "vendor-specific": {"a": {"b": {"c": [1, -2, 3]}}}
                        },
                        "x-target-extra": "kept too"
                    }
                },
                "delegations": {
                    "keys": {third_party_id(&self.vendor_key): key_object(&self.vendor_key)},
                    "roles": [{
                        "name": "vendor-ingenico",
                        "keyids": [third_party_id(&self.vendor_key)],
                        "threshold": 1,
                        "terminating": true,
                        "paths": ["drivers/ingenico/*"],
                        "x-delegated-role-extra": {"contact": "pki@example.invalid"}
                    }],
                    "x-delegations-extra": true
                },
                "x-targets-extra": {"generator": "another-repo-tool 0.1"}
            }),
            &[&self.targets_key],
        )
    }
}

/// Reads `doc`, checks that writing it back gives the same JSON, reads that again, and
/// returns both readings.
fn round_trip<T: Role + std::fmt::Debug>(doc: &Value) -> (Metadata<T>, Metadata<T>) {
    let first = Metadata::<T>::from_bytes(&bytes_of(doc), MAX).unwrap();
    assert_eq!(
        &json_of(&first),
        doc,
        "to_bytes must keep every member, known or not"
    );
    let second = Metadata::<T>::from_bytes(&first.to_bytes(), MAX).unwrap();
    assert_eq!(&json_of(&second), doc);
    // The bytes signatures cover are the third party's canonical bytes, before and after.
    let reference = reference_canonical(&doc["signed"]).unwrap();
    assert_eq!(first.canonical_signed(), reference.as_slice());
    assert_eq!(second.canonical_signed(), reference.as_slice());
    (first, second)
}

#[test]
fn a_third_party_root_with_unknown_members_verifies_after_a_round_trip() {
    let tp = ThirdParty::new();
    let (first, second) = round_trip::<Root>(&tp.root());
    assert_eq!(first.verify_self().unwrap(), 1);
    assert_eq!(second.verify_self().unwrap(), 1);
}

#[test]
fn third_party_targets_snapshot_and_timestamp_verify_after_a_round_trip() {
    let tp = ThirdParty::new();
    let (_, root) = round_trip::<Root>(&tp.root());
    let (a, b) = round_trip::<Timestamp>(&tp.timestamp());
    assert_eq!(root.verify_by(&a, "timestamp").unwrap(), 1);
    assert_eq!(root.verify_by(&b, "timestamp").unwrap(), 1);
    let (a, b) = round_trip::<Snapshot>(&tp.snapshot());
    assert_eq!(root.verify_by(&a, "snapshot").unwrap(), 1);
    assert_eq!(root.verify_by(&b, "snapshot").unwrap(), 1);
    let (a, b) = round_trip::<Targets>(&tp.targets());
    assert_eq!(root.verify_by(&a, "targets").unwrap(), 1);
    assert_eq!(root.verify_by(&b, "targets").unwrap(), 1);
}

#[test]
fn unknown_members_are_visible_in_the_typed_view() {
    let tp = ThirdParty::new();
    let root = Metadata::<Root>::from_bytes(&bytes_of(&tp.root()), MAX).unwrap();
    let r = root.signed();
    assert!(r.extra.contains_key("x-signed-extra"));
    let k = &r.keys[&KeyId(third_party_id(&tp.root_key))];
    assert_eq!(k.extra["x-key-origin"]["slot"], json!(7));
    assert_eq!(k.keyval.extra["x-keyval-comment"], json!("kept"));
    assert_eq!(r.roles["root"].extra["x-role-note"], json!(["a", 1, null]));
    assert_eq!(
        root.signatures()[0].extra["x-signed-with"]["tool"],
        json!("some-other-tuf")
    );

    let ts = Metadata::<Timestamp>::from_bytes(&bytes_of(&tp.timestamp()), MAX).unwrap();
    let snap = ts.signed().snapshot_meta().unwrap();
    assert_eq!(snap.extra["x-meta-extra"], json!({"compressed": false}));

    let tg = Metadata::<Targets>::from_bytes(&bytes_of(&tp.targets()), MAX).unwrap();
    let t = &tg.signed().targets["firmware/pos-2.4.1.tar.zst"];
    assert_eq!(
        t.custom().unwrap()["vendor-specific"]["a"]["b"]["c"][1],
        json!(-2)
    );
    assert_eq!(t.extra["x-target-extra"], json!("kept too"));
    let d = tg.signed().delegations.as_ref().unwrap();
    assert_eq!(d.extra["x-delegations-extra"], json!(true));
    assert!(d.roles()[0].extra.contains_key("x-delegated-role-extra"));
    assert!(tg.signed().extra.contains_key("x-targets-extra"));
}

#[test]
fn rebuilding_metadata_from_the_typed_view_loses_nothing() {
    // A tool that reads a file, changes nothing and signs it again (adding a signature to a
    // root during a ceremony) produces the same canonical bytes: the typed model holds every
    // member, so the third party's signatures stay valid next to the new one.
    let tp = ThirdParty::new();
    let root = Metadata::<Root>::from_bytes(&bytes_of(&tp.root()), MAX).unwrap();
    let rebuilt = Metadata::new(root.signed().clone()).unwrap();
    assert_eq!(rebuilt.canonical_signed(), root.canonical_signed());

    let targets = Metadata::<Targets>::from_bytes(&bytes_of(&tp.targets()), MAX).unwrap();
    let rebuilt = Metadata::new(targets.signed().clone()).unwrap();
    assert_eq!(rebuilt.canonical_signed(), targets.canonical_signed());

    let ts = Metadata::<Timestamp>::from_bytes(&bytes_of(&tp.timestamp()), MAX).unwrap();
    let rebuilt = Metadata::new(ts.signed().clone()).unwrap();
    assert_eq!(rebuilt.canonical_signed(), ts.canonical_signed());
}

#[test]
fn dropping_an_unknown_member_would_break_the_signature() {
    // Why they must be kept: the third party's signature covers them.
    let tp = ThirdParty::new();
    let (_, root) = round_trip::<Root>(&tp.root());
    let mut doc = tp.targets();
    doc["signed"]["targets"]["firmware/pos-2.4.1.tar.zst"]
        .as_object_mut()
        .unwrap()
        .remove("x-target-extra");
    let stripped = Metadata::<Targets>::from_bytes(&bytes_of(&doc), MAX).unwrap();
    assert!(root.verify_by(&stripped, "targets").is_err());
}

#[test]
fn numbers_in_unsigned_members_are_preserved_exactly() {
    // Floats may appear outside `signed` (canonical JSON only forbids them inside). Spec 4
    // asks that unknown data be preserved when re-serialising: republishing a file must not
    // change its numbers, however many times it is done.
    let tp = ThirdParty::new();
    for literal in [
        "1.6666666666666666666",
        "1.6666666666666663",
        "0.1",
        "2.2250738585072014e-308",
        "123456789012345678901234567890",
    ] {
        let mut text = String::from_utf8(bytes_of(&tp.timestamp())).unwrap();
        text = text.replacen('{', &format!("{{\"x-mirror-score\": {literal},"), 1);
        let first = Metadata::<Timestamp>::from_bytes(text.as_bytes(), MAX).unwrap();
        let expected: f64 = literal.parse().unwrap();
        assert_eq!(
            json_of(&first)["x-mirror-score"].as_f64(),
            Some(expected),
            "{literal} read as another number"
        );
        let second = Metadata::<Timestamp>::from_bytes(&first.to_bytes(), MAX).unwrap();
        assert_eq!(
            json_of(&second)["x-mirror-score"].as_f64(),
            Some(expected),
            "{literal} changed when republished"
        );
        assert_eq!(first.to_bytes(), second.to_bytes(), "{literal}");
    }
}
