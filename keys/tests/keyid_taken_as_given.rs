//! A key id is the name the metadata gives a key, matched as a string: a root whose declared
//! id is not the SHA-256 of the key's canonical form (e.g. "mykey") still verifies when the
//! signatures name that id; a signature naming the "computed" id instead does not count.
//!
//! Spec 4.2 defines KEYID as the hex SHA-256 of the canonical key and 4.3 says clients
//! "MUST calculate each KEYID"; in practice python-tuf (since 1.0), go-tuf and sigstore's
//! root-signing repository treat ids as given, and repositories in the wild (sigstore's
//! among them) declare ids computed differently. Otter computes ids this way for its own keys
//! and takes other repositories' ids as they are, so that any TUF repository verifies.
//! What protects the threshold is counting each key once (see threshold.rs), not the id.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::{key, later, reparse, signature_as, signed, timestamp_body, with_signatures, MAX};
use otter_keys::crypto::{KeyId, SigningKey};
use otter_keys::metadata::{Metadata, MetadataError, RoleKeys, Root, Timestamp, SPEC_VERSION};

/// A root whose keys are declared under the given ids, one key per role, unsigned.
fn root_with_ids(declared: &[(&str, &SigningKey, &str)]) -> Metadata<Root> {
    let mut keys = BTreeMap::new();
    let mut roles = BTreeMap::new();
    for (id, k, role) in declared {
        keys.insert(KeyId(id.to_string()), k.public_key());
        roles.insert(
            role.to_string(),
            RoleKeys {
                keyids: vec![KeyId(id.to_string())],
                threshold: 1,
                extra: BTreeMap::new(),
            },
        );
    }
    Metadata::new(Root {
        type_: "root".into(),
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: Some(true),
        version: 1,
        expires: later(),
        keys,
        roles,
        extra: BTreeMap::new(),
    })
    .unwrap()
}

#[test]
fn a_root_with_declared_ids_verifies_when_signatures_name_those_ids() {
    let (rk, tk, sk, tsk) = (key(1), key(10), key(20), key(30));
    let unsigned = root_with_ids(&[
        ("mykey", &rk, "root"),
        ("targets-key-2026", &tk, "targets"),
        ("snapshot", &sk, "snapshot"),
        ("TS", &tsk, "timestamp"),
    ]);
    assert_ne!(rk.key_id().0, "mykey");
    let sig = signature_as(&rk, "mykey", unsigned.canonical_signed());
    let root = with_signatures(&unsigned, &[sig]);
    assert_eq!(root.verify_self().unwrap(), 1);
    // Read back from its published bytes, it still verifies under the same ids.
    let root = reparse(&root);
    assert_eq!(root.verify_self().unwrap(), 1);
    assert!(root.signed().keys.contains_key(&KeyId("mykey".into())));

    // Other roles' files are verified against the declared ids too.
    let ts = Metadata::new(timestamp_body(1, later(), 1)).unwrap();
    let ts = with_signatures(&ts, &[signature_as(&tsk, "TS", ts.canonical_signed())]);
    assert_eq!(root.verify_by(&ts, "timestamp").unwrap(), 1);
}

#[test]
fn a_signature_naming_the_computed_id_instead_of_the_declared_one_does_not_count() {
    // The id is how a signature finds its key: the computed id names no key in this root.
    let rk = key(1);
    let unsigned = root_with_ids(&[
        ("mykey", &rk, "root"),
        ("t", &key(10), "targets"),
        ("s", &key(20), "snapshot"),
        ("ts", &key(30), "timestamp"),
    ]);
    let mut by_computed = unsigned.clone();
    by_computed.sign(&rk); // names rk.key_id(), the SHA-256 id
    let by_computed = reparse(&by_computed);
    match by_computed.verify_self() {
        Err(MetadataError::ThresholdNotMet {
            valid, threshold, ..
        }) => assert_eq!((valid, threshold), (0, 1)),
        other => panic!("expected ThresholdNotMet, got {other:?}"),
    }
}

#[test]
fn a_declared_id_that_is_another_keys_hash_is_still_just_a_name() {
    // The root declares key 1 under the SHA-256 id of key 2. Signatures by key 1 under that
    // id verify; signatures by key 2 under it do not (the id names key 1 here).
    let (k1, k2) = (key(1), key(2));
    let borrowed = k2.key_id().0;
    let unsigned = root_with_ids(&[
        (&borrowed, &k1, "root"),
        ("t", &key(10), "targets"),
        ("s", &key(20), "snapshot"),
        ("ts", &key(30), "timestamp"),
    ]);
    let good = with_signatures(
        &unsigned,
        &[signature_as(&k1, &borrowed, unsigned.canonical_signed())],
    );
    assert_eq!(good.verify_self().unwrap(), 1);
    let mut by_k2 = unsigned.clone();
    by_k2.sign(&k2);
    match reparse(&by_k2).verify_self() {
        Err(MetadataError::ThresholdNotMet { valid: 0, .. }) => {}
        other => panic!("expected ThresholdNotMet, got {other:?}"),
    }
}

#[test]
fn ids_are_compared_exactly_as_strings() {
    let rk = key(1);
    let unsigned = root_with_ids(&[
        ("mykey", &rk, "root"),
        ("t", &key(10), "targets"),
        ("s", &key(20), "snapshot"),
        ("ts", &key(30), "timestamp"),
    ]);
    for other in ["MYKEY", "mykey ", " mykey", "my\u{200b}key"] {
        let md = with_signatures(
            &unsigned,
            &[signature_as(&rk, other, unsigned.canonical_signed())],
        );
        assert!(
            matches!(
                md.verify_self(),
                Err(MetadataError::ThresholdNotMet { valid: 0, .. })
            ),
            "{other:?}"
        );
    }
}

#[test]
fn otter_computes_ids_as_the_specification_says() {
    // For its own keys Otter writes the SHA-256 of the canonical key object (spec 4.2), so
    // other clients that do recompute ids accept Otter repositories.
    let k = key(5);
    let canonical = format!(
        r#"{{"keytype":"ed25519","keyval":{{"public":"{}"}},"scheme":"ed25519"}}"#,
        hex::encode(k.public_bytes())
    );
    assert_eq!(
        k.key_id().0,
        otter_keys::hash::sha256_hex(canonical.as_bytes())
    );
    let md = signed(timestamp_body(1, later(), 1), &[&k]);
    assert_eq!(md.signatures()[0].keyid, k.key_id());
    let parsed = Metadata::<Timestamp>::from_bytes(&md.to_bytes(), MAX).unwrap();
    assert_eq!(parsed.signatures()[0].keyid, k.key_id());
}
