//! Two different `signed` objects never have the same canonical form, so a signature over one
//! never vouches for the other: nothing can be added to, or renamed in, signed metadata
//! while its signature still verifies.
//!
//! Spec 4.2: a signature covers "the canonical form of the metadata for ROLE"; spec 4 says
//! every member, known or not, is included when verifying signatures. If the canonical form
//! merged two distinct member names (e.g. by Unicode normalisation), a member an attacker
//! added under the merged-away name would be in the parsed metadata but not in what was
//! verified.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::{edited, later, reparse, signed, targets_body, Repo, MAX};
use otter_keys::canonical::{to_canonical_bytes, CanonicalError};
use otter_keys::hash::hashes_of;
use otter_keys::metadata::{Metadata, MetadataError, TargetFile, Targets};
use serde_json::json;

/// A name with a precomposed é (NFC), as a release engineer would type it.
const NFC_NAME: &str = "drivers/caf\u{e9}-printer.bin";
/// The same name with e + COMBINING ACUTE ACCENT (NFD): a different string, the same text.
const NFD_NAME: &str = "drivers/cafe\u{301}-printer.bin";

fn signed_targets_with(name: &str) -> (Repo, Metadata<Targets>) {
    let repo = Repo::new();
    let mut body = targets_body(1, later());
    body.targets.insert(
        name.to_string(),
        TargetFile {
            length: 11,
            hashes: hashes_of(b"real driver"),
            extra: BTreeMap::new(),
        },
    );
    let md = reparse(&signed(body, &[&repo.targets_key]));
    (repo, md)
}

/// Refused at parse time (ambiguous names) or at verification (signature no longer covers
/// the document): either is correct; accepting is not.
fn assert_refused(repo: &Repo, bytes: &[u8], what: &str) {
    match Metadata::<Targets>::from_bytes(bytes, MAX) {
        Err(MetadataError::Json(CanonicalError::Malformed(_))) => {}
        Err(other) => panic!("{what}: unexpected error {other:?}"),
        Ok(md) => match repo.root.verify_by(&md, "targets") {
            Err(MetadataError::ThresholdNotMet { valid: 0, .. }) => {}
            other => panic!(
                "{what}: the tampered file verified ({other:?}); it lists {:?}",
                md.signed().targets.keys().collect::<Vec<_>>()
            ),
        },
    }
}

#[test]
fn a_target_added_under_a_unicode_equivalent_name_voids_the_signature() {
    let (repo, md) = signed_targets_with(NFC_NAME);
    assert_eq!(repo.root.verify_by(&md, "targets").unwrap(), 1);
    // On the way, an attacker adds an entry whose name differs from the signed one only in
    // Unicode normalisation, pointing at their own file.
    let bytes = edited(&md, |v| {
        v["signed"]["targets"][NFD_NAME] = json!({
            "length": 4,
            "hashes": {"sha256": hashes_of(b"evil")["sha256"]}
        });
    });
    assert_refused(&repo, &bytes, "injected NFD twin");
}

#[test]
fn renaming_a_signed_target_to_a_unicode_equivalent_name_voids_the_signature() {
    let (repo, md) = signed_targets_with(NFC_NAME);
    let bytes = edited(&md, |v| {
        let entry = v["signed"]["targets"]
            .as_object_mut()
            .unwrap()
            .remove(NFC_NAME)
            .unwrap();
        v["signed"]["targets"][NFD_NAME] = entry;
    });
    assert_refused(&repo, &bytes, "renamed to NFD");
}

#[test]
fn changing_a_custom_string_to_a_unicode_equivalent_one_voids_the_signature() {
    let repo = Repo::new();
    let mut body = targets_body(1, later());
    let t = body.targets.values_mut().next().unwrap();
    t.extra
        .insert("custom".into(), json!({"channel": "Kelvin-\u{212a}"}));
    let md = reparse(&signed(body, &[&repo.targets_key]));
    let bytes = edited(&md, |v| {
        let name = v["signed"]["targets"]
            .as_object()
            .unwrap()
            .keys()
            .next()
            .unwrap()
            .clone();
        v["signed"]["targets"][name]["custom"]["channel"] = json!("Kelvin-K");
    });
    assert_refused(&repo, &bytes, "KELVIN SIGN replaced by K");
}

#[test]
fn distinct_values_have_distinct_canonical_forms() {
    let pairs = [
        (json!({"a": 1}), json!({"a": 2})),
        (json!({"a": 1}), json!({"a": 1, "b": 1})),
        (json!("\u{e9}"), json!("e\u{301}")),
        (json!("\u{c5}"), json!("\u{212b}")), // Å and ANGSTROM SIGN
        (json!("K"), json!("\u{212a}")),      // K and KELVIN SIGN
        (json!({"\u{e9}": 1}), json!({"e\u{301}": 1})),
        (json!({"\u{e9}": 1, "e\u{301}": 2}), json!({"\u{e9}": 1})),
        (json!([1, [2]]), json!([[1], 2])),
        (json!(""), json!(null)),
    ];
    let mut collisions = Vec::new();
    for (a, b) in pairs {
        let (ca, cb) = (
            to_canonical_bytes(&a).unwrap(),
            to_canonical_bytes(&b).unwrap(),
        );
        if ca == cb {
            collisions.push(format!("{a} and {b} -> {}", String::from_utf8_lossy(&ca)));
        }
    }
    assert!(
        collisions.is_empty(),
        "canonical form collisions: {collisions:#?}"
    );
}
