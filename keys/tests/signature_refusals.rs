//! A signature counts towards a threshold only when it is a valid signature, by a key the
//! trusted metadata lists and authorises for the role, over the canonical form of exactly
//! the `signed` object received.
//!
//! Spec 4.2 ("File formats: general principles"): SIGNATURE is "a hex-encoded signature of
//! the canonical form of the metadata for ROLE"; 4.1 ("Metaformat"): the canonical form is
//! OLPC canonical JSON. Spec 5.3.4, 5.4.2, 5.5.3 and 5.6.3 ("Check for an arbitrary software
//! attack"): the new file MUST have been signed by a threshold of keys specified in the
//! trusted root metadata.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    edited, flip_bit, json_of, key, reparse, sig_value, signature_as, with_signatures, Repo, MAX,
    TARGET_NAME,
};
use otter_keys::crypto::{Signature, SignatureError};
use otter_keys::metadata::{count_valid_signatures, Metadata, MetadataError, Targets, Timestamp};
use serde_json::{json, Value};

/// The refusal every test below expects: no signature counted for a role of threshold 1.
fn assert_none_counted(result: Result<u32, MetadataError>, role: &str) {
    match result {
        Err(MetadataError::ThresholdNotMet {
            role: r,
            valid,
            threshold,
        }) => {
            assert_eq!(r, role);
            assert_eq!(valid, 0, "no signature may count");
            assert_eq!(threshold, 1);
        }
        other => panic!("expected ThresholdNotMet for {role}, got {other:?}"),
    }
}

#[test]
fn a_correct_signature_by_the_authorised_key_counts() {
    // The control case: without it every refusal below could be vacuous.
    let repo = Repo::new();
    let timestamp = reparse(&repo.timestamp);
    assert_eq!(repo.root.verify_by(&timestamp, "timestamp").unwrap(), 1);
}

#[test]
fn a_signature_with_one_bit_flipped_does_not_count() {
    let repo = Repo::new();
    let good = repo.timestamp.signatures()[0].clone();
    // A bit in R (first half) and a bit in S (second half) of the ed25519 signature.
    for (byte, bit) in [(0, 0), (17, 5), (32, 1), (63, 2)] {
        let mut bad = good.clone();
        bad.sig = flip_bit(&good.sig, byte, bit);
        let tampered = with_signatures(&repo.timestamp, &[bad.clone()]);
        assert_none_counted(repo.root.verify_by(&tampered, "timestamp"), "timestamp");

        let public = repo.timestamp_key.public_key();
        let verdict = public.verify(repo.timestamp.canonical_signed(), &bad.sig);
        assert!(
            matches!(
                verdict,
                Err(SignatureError::Invalid | SignatureError::MalformedSignature)
            ),
            "byte {byte} bit {bit}: {verdict:?}"
        );
    }
}

#[test]
fn a_signature_by_a_key_the_root_does_not_list_does_not_count() {
    let repo = Repo::new();
    let stranger = key(99);
    // The stranger signs under its own key id, which the root does not know...
    let own_id = stranger.sign(repo.timestamp.canonical_signed());
    let tampered = with_signatures(&repo.timestamp, &[own_id]);
    assert_none_counted(repo.root.verify_by(&tampered, "timestamp"), "timestamp");

    // ...or claims the timestamp key's id: the signature then does not verify.
    let claimed = signature_as(
        &stranger,
        &repo.timestamp_key.key_id().0,
        repo.timestamp.canonical_signed(),
    );
    let tampered = with_signatures(&repo.timestamp, &[claimed]);
    assert_none_counted(repo.root.verify_by(&tampered, "timestamp"), "timestamp");
}

#[test]
fn a_signature_by_a_key_authorised_only_for_another_role_does_not_count() {
    // Spec 4.3: each role's "keyids" names the keys trusted for that role; the root's "keys"
    // holds the keys of all roles. A valid signature by the targets key, whose key the root
    // lists, does not make a timestamp.
    let repo = Repo::new();
    for wrong in [&repo.targets_key, &repo.snapshot_key, &repo.root_key] {
        let mut md = repo.timestamp.clone();
        md.clear_signatures();
        md.sign(wrong);
        let md = reparse(&md);
        assert_none_counted(repo.root.verify_by(&md, "timestamp"), "timestamp");
    }
    // And the timestamp key cannot sign the targets role.
    let mut md = repo.targets.clone();
    md.clear_signatures();
    md.sign(&repo.timestamp_key);
    assert_none_counted(repo.root.verify_by(&reparse(&md), "targets"), "targets");
}

#[test]
fn malformed_signatures_never_count_and_never_hide_a_good_one() {
    let repo = Repo::new();
    let good = repo.timestamp.signatures()[0].clone();
    let public = repo.timestamp_key.public_key();
    let cases = [
        ("not hex", "zz".repeat(64)),
        ("odd length", format!("{}0", good.sig)),
        ("too short", good.sig[..126].to_string()),
        ("too long", format!("{}00", good.sig)),
        ("empty", String::new()),
        ("hex with spaces", format!(" {}", good.sig)),
    ];
    for (what, sig) in cases {
        assert_eq!(
            public.verify(repo.timestamp.canonical_signed(), &sig),
            Err(SignatureError::MalformedSignature),
            "{what}"
        );
        let bad = Signature {
            sig,
            ..good.clone()
        };
        let md = with_signatures(&repo.timestamp, std::slice::from_ref(&bad));
        assert_none_counted(repo.root.verify_by(&md, "timestamp"), "timestamp");
        // A malformed signature before a good one by the same key does not stop the good
        // one from counting (an attacker on the way cannot block an update with it).
        let md = with_signatures(&repo.timestamp, &[bad, good.clone()]);
        assert_eq!(repo.root.verify_by(&md, "timestamp").unwrap(), 1, "{what}");
    }
}

#[test]
fn a_signature_that_is_not_a_string_makes_the_document_malformed() {
    let repo = Repo::new();
    for sig in [json!(12), json!(null), json!(["ab"]), json!({"hex": "ab"})] {
        let bytes = edited(&repo.timestamp, |v| v["signatures"][0]["sig"] = sig.clone());
        let err = Metadata::<Timestamp>::from_bytes(&bytes, MAX).unwrap_err();
        assert!(matches!(err, MetadataError::Schema(_)), "{sig}: {err:?}");
    }
    let bytes = edited(&repo.timestamp, |v| {
        v["signatures"][0].as_object_mut().unwrap().remove("keyid");
    });
    let err = Metadata::<Timestamp>::from_bytes(&bytes, MAX).unwrap_err();
    assert!(matches!(err, MetadataError::Schema(_)), "{err:?}");
}

#[test]
fn signatures_over_non_canonical_bytes_never_count() {
    // Spec 4.2: the signature is over the canonical form. A signer who signed the bytes as
    // published (pretty-printed), the `signed` object pretty-printed, or the members in
    // another order, made a signature no conforming client accepts.
    let repo = Repo::new();
    let signed_value = &json_of(&repo.timestamp)["signed"];
    let pretty_signed = serde_json::to_vec_pretty(signed_value).unwrap();
    let whole_file = repo.timestamp.to_bytes();
    let reordered = {
        // `version` first, then the rest: valid JSON, same content, not canonical.
        let obj = signed_value.as_object().unwrap();
        let mut text = format!("{{\"version\":{}", obj["version"]);
        for (k, v) in obj.iter().filter(|(k, _)| k.as_str() != "version") {
            text.push_str(&format!(",{}:{}", Value::String(k.clone()), v));
        }
        text.push('}');
        text.into_bytes()
    };
    assert_ne!(reordered.as_slice(), repo.timestamp.canonical_signed());
    for (what, msg) in [
        ("pretty signed object", pretty_signed),
        ("whole published file", whole_file),
        ("members out of order", reordered),
    ] {
        let sig = repo.timestamp_key.sign(&msg);
        let md = with_signatures(&repo.timestamp, &[sig]);
        match repo.root.verify_by(&md, "timestamp") {
            Err(MetadataError::ThresholdNotMet { valid: 0, .. }) => {}
            other => panic!("{what}: expected ThresholdNotMet, got {other:?}"),
        }
    }
}

#[test]
fn reformatting_the_published_bytes_keeps_signatures_valid() {
    // The converse of the test above: whitespace and member order of the bytes received do
    // not matter, because signatures cover the canonical form of the `signed` object.
    let repo = Repo::new();
    let compact = serde_json::to_vec(&json_of(&repo.timestamp)).unwrap();
    let md = Metadata::<Timestamp>::from_bytes(&compact, MAX).unwrap();
    assert_eq!(repo.root.verify_by(&md, "timestamp").unwrap(), 1);

    let v = json_of(&repo.timestamp);
    let signed_first = format!(
        "{{\n\n  \"signed\" :\t{},\r\n \"signatures\": {} }}",
        serde_json::to_string(&v["signed"]).unwrap(),
        serde_json::to_string_pretty(&v["signatures"]).unwrap()
    );
    let md = Metadata::<Timestamp>::from_bytes(signed_first.as_bytes(), MAX).unwrap();
    assert_eq!(repo.root.verify_by(&md, "timestamp").unwrap(), 1);
}

#[test]
fn changing_signed_content_after_signing_voids_the_signature() {
    let repo = Repo::new();
    type Edit = Box<dyn Fn(&mut Value)>;
    let edits: Vec<(&str, Edit)> = vec![
        (
            "version raised",
            Box::new(|v| v["signed"]["version"] = json!(2)),
        ),
        (
            "expiry pushed back",
            Box::new(|v| v["signed"]["expires"] = json!("2099-01-01T00:00:00Z")),
        ),
        (
            "target hash replaced",
            Box::new(|v| {
                v["signed"]["targets"][TARGET_NAME]["hashes"]["sha256"] = json!("00".repeat(32))
            }),
        ),
        (
            "target length changed",
            Box::new(|v| v["signed"]["targets"][TARGET_NAME]["length"] = json!(1 << 30)),
        ),
        (
            "rollout widened in custom",
            Box::new(|v| {
                v["signed"]["targets"][TARGET_NAME]["custom"]["rollout"]["percent"] = json!(100)
            }),
        ),
        (
            "a target added",
            Box::new(|v| {
                v["signed"]["targets"]["evil.bin"] =
                    json!({"length": 1, "hashes": {"sha256": "00".repeat(32)}})
            }),
        ),
        (
            "an unknown member added",
            Box::new(|v| v["signed"]["x-note"] = json!("added on the way")),
        ),
        (
            "custom removed",
            Box::new(|v| {
                v["signed"]["targets"][TARGET_NAME]
                    .as_object_mut()
                    .unwrap()
                    .remove("custom");
            }),
        ),
    ];
    for (what, edit) in edits {
        let bytes = edited(&repo.targets, |v| edit(v));
        let md = Metadata::<Targets>::from_bytes(&bytes, MAX).unwrap();
        match repo.root.verify_by(&md, "targets") {
            Err(MetadataError::ThresholdNotMet { valid: 0, .. }) => {}
            other => panic!("{what}: expected ThresholdNotMet, got {other:?}"),
        }
        assert_eq!(
            count_valid_signatures(
                md.canonical_signed(),
                md.signatures(),
                &repo.root.signed().keys,
                &repo.root.signed().roles["targets"].keyids,
            ),
            0,
            "{what}"
        );
    }
}

#[test]
fn moving_a_valid_signature_to_other_metadata_does_not_count() {
    // A signature is bound to the document it was made for: the timestamp key's signature
    // over timestamp version 1 does not vouch for timestamp version 2.
    let repo = Repo::new();
    let v1_sig = repo.timestamp.signatures()[0].clone();
    let mut v2 = repo.timestamp.signed().clone();
    v2.version = 2;
    let v2 = Metadata::new(v2).unwrap();
    let v2 = with_signatures(&v2, &[v1_sig]);
    assert_none_counted(repo.root.verify_by(&v2, "timestamp"), "timestamp");
    // Keep the helper honest: the signature object serialises as TUF wants it.
    let s = sig_value(&repo.timestamp.signatures()[0]);
    assert_eq!(
        s.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["keyid", "sig"]
    );
}
