//! A role's metadata is trusted when at least THRESHOLD distinct keys authorised for the
//! role signed it: each key counts once, however many signatures or key ids it appears
//! under.
//!
//! Spec 4.3 ("File formats: root.json"), THRESHOLD: "An integer number of keys of that role
//! whose signatures are required in order to consider a file as being properly signed by
//! that role." Spec 4.2: the keyid "MUST be unique in the signatures array". Spec 5.3.4:
//! when computing the threshold each key MUST only contribute one signature, even if a keyid
//! is listed more than once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::{
    ed25519_key_written_as, ids, key, later, root_body, signature_as, signed, with_signatures,
    RootPlan,
};
use otter_keys::crypto::{KeyId, PublicKey, Signature, SigningKey};
use otter_keys::metadata::{
    count_valid_signatures, verify_threshold, DelegatedRole, Delegations, Metadata, MetadataError,
    Root,
};

/// Root keys k1..k4 with root threshold 3; one key for each other role.
fn three_of_four() -> (Vec<SigningKey>, Root) {
    let root_keys: Vec<SigningKey> = (1..=4).map(key).collect();
    let r: Vec<&SigningKey> = root_keys.iter().collect();
    let (t, s, ts) = (key(10), key(20), key(30));
    let body = root_body(
        1,
        later(),
        &RootPlan {
            root: (&r, 3),
            targets: (&[&t], 1),
            snapshot: (&[&s], 1),
            timestamp: (&[&ts], 1),
        },
    );
    (root_keys, body)
}

fn assert_short(result: Result<u32, MetadataError>, want_valid: u32, want_threshold: u32) {
    match result {
        Err(MetadataError::ThresholdNotMet {
            valid, threshold, ..
        }) => assert_eq!(
            (valid, threshold),
            (want_valid, want_threshold),
            "(valid, threshold)"
        ),
        other => panic!("expected ThresholdNotMet {want_valid}/{want_threshold}, got {other:?}"),
    }
}

#[test]
fn a_threshold_met_exactly_passes() {
    let (k, body) = three_of_four();
    let md = signed(body, &[&k[0], &k[1], &k[2]]);
    assert_eq!(md.verify_self().unwrap(), 3);
    // Any three of the four will do.
    let (k, body) = three_of_four();
    let md = signed(body, &[&k[3], &k[1], &k[0]]);
    assert_eq!(md.verify_self().unwrap(), 3);
}

#[test]
fn more_signatures_than_the_threshold_pass_and_are_all_counted() {
    let (k, body) = three_of_four();
    let md = signed(body, &[&k[0], &k[1], &k[2], &k[3]]);
    assert_eq!(md.verify_self().unwrap(), 4);
}

#[test]
fn one_signature_short_of_the_threshold_is_refused_with_the_counts() {
    let (k, body) = three_of_four();
    let md = signed(body, &[&k[0], &k[1]]);
    match md.verify_self() {
        Err(MetadataError::ThresholdNotMet {
            role,
            valid,
            threshold,
        }) => {
            assert_eq!(role, "root");
            assert_eq!(valid, 2);
            assert_eq!(threshold, 3);
        }
        other => panic!("expected ThresholdNotMet, got {other:?}"),
    }
    // The message names the numbers for the operator.
    let msg = md.verify_self().unwrap_err().to_string();
    assert!(msg.contains('2') && msg.contains('3'), "{msg}");
}

#[test]
fn no_signature_at_all_is_refused() {
    let (_, body) = three_of_four();
    let md = Metadata::new(body).unwrap();
    assert_short(md.verify_self(), 0, 3);
}

#[test]
fn duplicate_signatures_by_the_same_key_count_once() {
    let (k, body) = three_of_four();
    let md = signed(body, &[&k[0], &k[1]]);
    let s0 = md.signatures()[0].clone();
    let s1 = md.signatures()[1].clone();
    // The same signature object three times over, as an attacker could repeat it.
    let padded = with_signatures(&md, &[s0.clone(), s1.clone(), s0.clone(), s0.clone()]);
    assert_eq!(padded.signatures().len(), 4);
    assert_short(padded.verify_self(), 2, 3);

    // A copy written differently (upper-case hex, the same signature bytes) is still the
    // same key's signature and counts once.
    let upper = Signature {
        sig: s0.sig.to_uppercase(),
        ..s0.clone()
    };
    let padded = with_signatures(&md, &[s0, upper, s1]);
    assert_short(padded.verify_self(), 2, 3);
}

#[test]
fn a_bad_duplicate_does_not_hide_the_good_signature_by_the_same_key() {
    let (k, body) = three_of_four();
    let md = signed(body, &[&k[0], &k[1], &k[2]]);
    let mut bad = md.signatures()[0].clone();
    bad.sig = common::flip_bit(&bad.sig, 3, 3);
    let mut sigs = vec![bad];
    sigs.extend(md.signatures().iter().cloned());
    let md = with_signatures(&md, &sigs);
    assert_eq!(md.verify_self().unwrap(), 3);
}

/// A root whose root role is threshold 2 over k1, k2 and `alias`, where `alias` is another
/// id for a key written as `alias_key`; signed by k1 under its own id and under the alias.
fn alias_case(alias_key: PublicKey) -> (Metadata<Root>, SigningKey, SigningKey) {
    let (k1, k2) = (key(1), key(2));
    let mut body = root_body(
        1,
        later(),
        &RootPlan {
            root: (&[&k1, &k2], 2),
            targets: (&[&key(10)], 1),
            snapshot: (&[&key(20)], 1),
            timestamp: (&[&key(30)], 1),
        },
    );
    body.keys.insert(KeyId("alias".into()), alias_key);
    body.roles
        .get_mut("root")
        .unwrap()
        .keyids
        .push(KeyId("alias".into()));
    let md = signed(body, &[&k1]);
    let as_alias = signature_as(&k1, "alias", md.canonical_signed());
    let mut sigs = md.signatures().to_vec();
    sigs.push(as_alias);
    (with_signatures(&md, &sigs), k1, k2)
}

#[test]
fn the_same_key_listed_under_two_key_ids_counts_once() {
    let (md, _, k2) = alias_case(key(1).public_key());
    // Both signatures verify, but they are one key's: threshold 2 is not met.
    assert_short(md.verify_self(), 1, 2);
    // A second real key meets it.
    let mut with_k2 = md.clone();
    with_k2.sign(&k2);
    assert_eq!(with_k2.verify_self().unwrap(), 2);
}

#[test]
fn the_same_key_listed_twice_with_padding_whitespace_counts_once() {
    let public = hex::encode(key(1).public_bytes());
    let (md, _, _) = alias_case(ed25519_key_written_as(&format!("  {public}\n")));
    assert_short(md.verify_self(), 1, 2);
}

#[test]
fn the_same_ed25519_key_listed_twice_with_upper_case_hex_counts_once() {
    // Hex is case-insensitive, so "ABCD..." and "abcd..." are the same 32 bytes, the same
    // key: one key holder must not meet a threshold of 2 alone.
    let public = hex::encode(key(1).public_bytes()).to_uppercase();
    let (md, _, _) = alias_case(ed25519_key_written_as(&public));
    assert_short(md.verify_self(), 1, 2);
}

/// A P-256 key in TUF form, as `keytype`, with its public key written as `public`.
fn p256_key(keytype: &str, public: String) -> PublicKey {
    let mut k = PublicKey::ed25519(&[0u8; 32]);
    k.keytype = keytype.into();
    k.scheme = "ecdsa-sha2-nistp256".into();
    k.keyval.public = public;
    k
}

#[test]
fn the_same_p256_key_under_two_ids_and_two_spellings_counts_once() {
    use p256::ecdsa::signature::Signer;
    use p256::pkcs8::{EncodePublicKey, LineEnding};

    let sk = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
    let vk = sk.verifying_key();
    let pem = vk.to_public_key_pem(LineEnding::LF).unwrap();
    let sec1 = hex::encode(vk.to_encoded_point(false).as_bytes());
    let msg = b"{\"_type\":\"targets\"}";
    let sig: p256::ecdsa::Signature = sk.sign(msg);
    let sig_hex = hex::encode(sig.to_der().as_bytes());

    // Each pair is one key written two ways that the library accepts for verification.
    let spellings = [
        (
            "identical",
            p256_key("ecdsa", pem.clone()),
            p256_key("ecdsa", pem.clone()),
        ),
        (
            "keytype ecdsa vs ecdsa-sha2-nistp256",
            p256_key("ecdsa", pem.clone()),
            p256_key("ecdsa-sha2-nistp256", pem.clone()),
        ),
        (
            "PEM vs hex SEC1 point",
            p256_key("ecdsa", pem.clone()),
            p256_key("ecdsa", sec1.clone()),
        ),
        (
            "LF vs CRLF line ends in the PEM",
            p256_key("ecdsa", pem.clone()),
            p256_key("ecdsa", pem.replace('\n', "\r\n")),
        ),
    ];
    let mut failures = Vec::new();
    for (what, a, b) in spellings {
        for k in [&a, &b] {
            assert!(k.verify(msg, &sig_hex).is_ok(), "{what}: key must verify");
        }
        let keys = BTreeMap::from([(KeyId("a".into()), a), (KeyId("b".into()), b)]);
        let sigs = [
            Signature {
                keyid: KeyId("a".into()),
                sig: sig_hex.clone(),
                extra: BTreeMap::new(),
            },
            Signature {
                keyid: KeyId("b".into()),
                sig: sig_hex.clone(),
                extra: BTreeMap::new(),
            },
        ];
        let authorised = [KeyId("a".into()), KeyId("b".into())];
        let n = count_valid_signatures(msg, &sigs, &keys, &authorised);
        if n != 1 {
            failures.push(format!("{what}: counted {n}"));
        }
    }
    assert!(
        failures.is_empty(),
        "one P-256 key counted more than once: {failures:?}"
    );
}

#[test]
fn only_distinct_authorised_ids_count_towards_the_threshold() {
    let (k1, k2) = (key(1), key(2));
    let outsider_known = key(10); // listed in the keys, authorised for another role
    let stranger = key(99); // not listed at all
    let keys: BTreeMap<KeyId, PublicKey> = [&k1, &k2, &outsider_known]
        .iter()
        .map(|k| (k.key_id(), k.public_key()))
        .collect();
    let authorised = ids(&[&k1, &k2]);
    let msg = b"canonical bytes";
    let sigs = [
        k1.sign(msg),
        outsider_known.sign(msg),
        stranger.sign(msg),
        k1.sign(msg),
    ];
    assert_eq!(count_valid_signatures(msg, &sigs, &keys, &authorised), 1);
    assert_short(
        verify_threshold("snapshot", msg, &sigs, &keys, &authorised, 2),
        1,
        2,
    );
    let mut sigs = sigs.to_vec();
    sigs.push(k2.sign(msg));
    assert_eq!(
        verify_threshold("snapshot", msg, &sigs, &keys, &authorised, 2).unwrap(),
        2
    );
}

#[test]
fn an_authorised_id_without_a_key_never_counts() {
    // The role lists an id the keys object does not define: a signature naming it has no
    // key to be checked against.
    let k1 = key(1);
    let keys = BTreeMap::new();
    let authorised = ids(&[&k1]);
    let sigs = [k1.sign(b"m")];
    assert_short(
        verify_threshold("timestamp", b"m", &sigs, &keys, &authorised, 1),
        0,
        1,
    );
}

#[test]
fn a_threshold_of_zero_is_never_met() {
    // Spec 4.3: THRESHOLD is a number of keys whose signatures are required; zero would
    // trust unsigned metadata. Parsing refuses it (see oversized_and_malformed.rs); the
    // counting function refuses it too.
    let k1 = key(1);
    let keys = BTreeMap::from([(k1.key_id(), k1.public_key())]);
    let authorised = ids(&[&k1]);
    let sigs = [k1.sign(b"m")];
    assert_short(
        verify_threshold("targets", b"m", &sigs, &keys, &authorised, 0),
        1,
        0,
    );
}

#[test]
fn a_delegated_role_is_counted_over_its_own_keys_and_threshold() {
    // Spec 4.5 (DELEGATIONS): delegated roles are authorised by the keys listed in the
    // delegating targets metadata, with their own threshold.
    let (d1, d2, d3) = (key(41), key(42), key(43));
    let delegations = Delegations {
        keys: [&d1, &d2, &d3]
            .iter()
            .map(|k| (k.key_id(), k.public_key()))
            .collect(),
        roles: Some(vec![DelegatedRole {
            name: "vendor-ingenico".into(),
            keyids: ids(&[&d1, &d2, &d3]),
            threshold: 2,
            terminating: true,
            paths: Some(vec!["drivers/ingenico/*".into()]),
            path_hash_prefixes: None,
            extra: BTreeMap::new(),
        }]),
        extra: BTreeMap::new(),
    };
    let role = &delegations.roles()[0];
    let msg = b"delegated targets canonical bytes";
    let one = [d1.sign(msg), d1.sign(msg)];
    assert_short(
        verify_threshold(
            &role.name,
            msg,
            &one,
            &delegations.keys,
            &role.keyids,
            role.threshold,
        ),
        1,
        2,
    );
    let two = [d1.sign(msg), d3.sign(msg)];
    assert_eq!(
        verify_threshold(
            &role.name,
            msg,
            &two,
            &delegations.keys,
            &role.keyids,
            role.threshold
        )
        .unwrap(),
        2
    );
}
