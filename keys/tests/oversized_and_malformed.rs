//! Untrusted bytes that are too large, are not strict JSON, or are JSON that is not
//! well-formed TUF metadata are refused when read, with an error saying which.
//!
//! Spec 5.3.3 / 5.4.1 / 5.5.1 / 5.6.1: every file is downloaded "up to" a number of bytes
//! (the endless data attack of section 1.5.2). Spec 4.1 ("Metaformat"): metadata must be
//! interpreted "without ambiguity" and is signed in canonical JSON, which has no floats;
//! duplicate member names are ambiguous (two parsers may pick different ones under one
//! signature). Spec 4.2-4.6 give each role's required members; 4.3: VERSION "is an integer
//! greater than 0", the roles object MUST name root, snapshot, targets and timestamp;
//! 4.5: each target has LENGTH and HASHES, a delegated role sets at most one of "paths"
//! and "path_hash_prefixes", role names are unique; 4.6: timestamp meta "MUST only include"
//! snapshot.json.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::{edited, ids, key, later, signed, targets_body, Repo, MAX, TARGET_NAME};
use otter_keys::canonical::{parse_strict, CanonicalError, DEFAULT_MAX_METADATA_BYTES, MAX_DEPTH};
use otter_keys::metadata::{
    DelegatedRole, Delegations, Metadata, MetadataError, Role, Root, Snapshot, Targets, Timestamp,
};
use serde_json::{json, Value};

fn err_of<T: Role + std::fmt::Debug>(bytes: &[u8]) -> MetadataError {
    Metadata::<T>::from_bytes(bytes, MAX).unwrap_err()
}

fn assert_malformed<T: Role + std::fmt::Debug>(bytes: &[u8], what: &str, needle: &str) {
    match err_of::<T>(bytes) {
        MetadataError::Json(CanonicalError::Malformed(msg)) => {
            assert!(msg.contains(needle), "{what}: {msg:?} lacks {needle:?}")
        }
        other => panic!("{what}: expected Json(Malformed), got {other:?}"),
    }
}

fn assert_schema<T: Role + std::fmt::Debug>(bytes: &[u8], what: &str) {
    let err = err_of::<T>(bytes);
    assert!(
        matches!(err, MetadataError::Schema(_)),
        "{what}: expected Schema, got {err:?}"
    );
}

fn assert_invalid<T: Role + std::fmt::Debug>(bytes: &[u8], what: &str, needle: &str) {
    match err_of::<T>(bytes) {
        MetadataError::Invalid(msg) => {
            assert!(msg.contains(needle), "{what}: {msg:?} lacks {needle:?}")
        }
        other => panic!("{what}: expected Invalid, got {other:?}"),
    }
}

/// `text` with `insert` placed right after the first occurrence of `anchor`.
fn insert_after(text: &[u8], anchor: &str, insert: &str) -> Vec<u8> {
    let text = std::str::from_utf8(text).unwrap();
    let at = text.find(anchor).unwrap_or_else(|| panic!("{anchor:?}")) + anchor.len();
    format!("{}{}{}", &text[..at], insert, &text[at..]).into_bytes()
}

// ---- size -------------------------------------------------------------------------------

#[test]
fn input_over_the_cap_is_refused() {
    let repo = Repo::new();
    let bytes = repo.timestamp.to_bytes();
    let len = bytes.len();
    match Metadata::<Timestamp>::from_bytes(&bytes, len - 1) {
        Err(MetadataError::Json(CanonicalError::TooLarge { len: l, max })) => {
            assert_eq!((l, max), (len, len - 1))
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // Exactly at the cap is fine.
    Metadata::<Timestamp>::from_bytes(&bytes, len).unwrap();
}

#[test]
fn input_over_the_cap_is_refused_before_any_parsing() {
    // Bytes that are not JSON at all: a parser that ran first would report Malformed.
    let garbage = vec![b'{'; 4097];
    match Metadata::<Root>::from_bytes(&garbage, 4096) {
        Err(MetadataError::Json(CanonicalError::TooLarge { len, max })) => {
            assert_eq!((len, max), (4097, 4096))
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // The default cap, with a document one byte over it.
    let huge = vec![b' '; DEFAULT_MAX_METADATA_BYTES + 1];
    match Metadata::<Targets>::from_bytes(&huge, DEFAULT_MAX_METADATA_BYTES) {
        Err(MetadataError::Json(CanonicalError::TooLarge { len, max })) => {
            assert_eq!((len, max), (DEFAULT_MAX_METADATA_BYTES + 1, MAX))
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

// ---- JSON that is not strict ------------------------------------------------------------

#[test]
fn duplicate_member_names_are_refused_at_every_level() {
    let repo = Repo::new();
    let ts = repo.timestamp.to_bytes();
    let root = repo.root.to_bytes();
    let tg = repo.targets.to_bytes();
    let root_id = repo.root_key.key_id().0;
    let sig = &repo.timestamp.signatures()[0];

    assert_malformed::<Timestamp>(
        &insert_after(&ts, "{", "\"signatures\": [],"),
        "envelope",
        "duplicate member",
    );
    assert_malformed::<Timestamp>(
        &insert_after(&ts, "\"signed\": {", "\"version\": 99,"),
        "signed.version",
        "duplicate member",
    );
    assert_malformed::<Timestamp>(
        &insert_after(&ts, "\"meta\": {", "\"snapshot.json\": {\"version\": 99},"),
        "meta entry",
        "duplicate member",
    );
    assert_malformed::<Timestamp>(
        &insert_after(
            &ts,
            &format!("\"sig\": \"{}\"", sig.sig),
            ", \"sig\": \"00\"",
        ),
        "signature object",
        "duplicate member",
    );
    assert_malformed::<Root>(
        &insert_after(
            &root,
            "\"keys\": {",
            &format!(
                "\"{root_id}\": {},",
                serde_json::to_string(&key(66).public_key()).unwrap()
            ),
        ),
        "keys",
        "duplicate member",
    );
    assert_malformed::<Root>(
        &insert_after(
            &root,
            "\"roles\": {",
            "\"timestamp\": {\"keyids\": [], \"threshold\": 1},",
        ),
        "roles",
        "duplicate member",
    );
    assert_malformed::<Targets>(
        &insert_after(
            &tg,
            "\"targets\": {",
            &format!(
                "\"{TARGET_NAME}\": {{\"length\": 1, \"hashes\": {{\"sha256\": \"{}\"}}}},",
                "00".repeat(32)
            ),
        ),
        "targets",
        "duplicate member",
    );
    assert_malformed::<Targets>(
        &insert_after(
            &tg,
            "\"hashes\": {",
            &format!("\"sha256\": \"{}\",", "11".repeat(32)),
        ),
        "hashes",
        "duplicate member",
    );
    // The same name spelled with an escape is the same name.
    assert_malformed::<Timestamp>(
        &insert_after(&ts, "\"signed\": {", "\"\\u0076ersion\": 99,"),
        "escaped duplicate",
        "duplicate member",
    );
}

#[test]
fn nesting_deeper_than_the_limit_is_refused() {
    // The limit itself, then one more.
    let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
    parse_strict(ok.as_bytes(), MAX).unwrap();
    let too_deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
    assert!(matches!(
        parse_strict(too_deep.as_bytes(), MAX),
        Err(CanonicalError::Malformed(m)) if m.contains("nesting")
    ));

    // Inside metadata: deep `custom` in a target.
    let repo = Repo::new();
    let mut deep = json!(1);
    for _ in 0..MAX_DEPTH {
        deep = json!({ "d": deep });
    }
    let bytes = edited(&repo.targets, |v| {
        v["signed"]["targets"][TARGET_NAME]["custom"] = deep.clone()
    });
    assert_malformed::<Targets>(&bytes, "deep custom", "nesting");

    // A hostile depth does not exhaust the stack.
    let hostile = "[".repeat(1_000_000);
    assert!(matches!(
        Metadata::<Targets>::from_bytes(hostile.as_bytes(), MAX),
        Err(MetadataError::Json(CanonicalError::Malformed(_)))
    ));
}

#[test]
fn bytes_that_are_not_json_are_refused() {
    let repo = Repo::new();
    let good = repo.timestamp.to_bytes();
    let mut bom = vec![0xEF, 0xBB, 0xBF];
    bom.extend_from_slice(&good);
    let mut bad_utf8 = good.clone();
    let at = bad_utf8.iter().position(|&b| b == b'Z').unwrap();
    bad_utf8[at] = 0xFF;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("trailing garbage", [good.as_slice(), b" {}"].concat()),
        ("byte order mark", bom),
        ("invalid UTF-8", bad_utf8),
        (
            "lone surrogate",
            insert_after(&good, "\"signed\": {", "\"x\": \"\\ud800\","),
        ),
        ("NaN", insert_after(&good, "\"signed\": {", "\"x\": NaN,")),
        ("comment", insert_after(&good, "\"signed\": {", "/* hi */")),
        (
            "trailing comma",
            insert_after(&good, "\"signed\": {", "\"x\": [1,],"),
        ),
        (
            "single quotes",
            insert_after(&good, "\"signed\": {", "'x': 1,"),
        ),
    ];
    for (what, bytes) in cases {
        match err_of::<Timestamp>(&bytes) {
            MetadataError::Json(CanonicalError::Malformed(_)) => {}
            other => panic!("{what}: expected Json(Malformed), got {other:?}"),
        }
    }
}

// ---- JSON that is not TUF metadata ------------------------------------------------------

#[test]
fn a_document_that_is_not_an_object_is_refused() {
    for doc in [
        "[]",
        "\"signed\"",
        "42",
        "null",
        "true",
        "[{\"signed\": {}}]",
    ] {
        match err_of::<Root>(doc.as_bytes()) {
            MetadataError::Schema(msg) => assert!(msg.contains("not a JSON object"), "{msg}"),
            other => panic!("{doc}: expected Schema, got {other:?}"),
        }
    }
}

#[test]
fn a_document_without_signed_or_signatures_is_refused() {
    let repo = Repo::new();
    for (member, needle) in [("signed", "\"signed\""), ("signatures", "\"signatures\"")] {
        let bytes = edited(&repo.snapshot, |v| {
            v.as_object_mut().unwrap().remove(member);
        });
        match err_of::<Snapshot>(&bytes) {
            MetadataError::Schema(msg) => assert!(msg.contains(needle), "{msg}"),
            other => panic!("without {member}: expected Schema, got {other:?}"),
        }
    }
    for (what, edit) in [
        (
            "signed is an array",
            json!({"signed": [], "signatures": []}),
        ),
        (
            "signed is a string",
            json!({"signed": "root", "signatures": []}),
        ),
    ] {
        assert_schema::<Root>(&serde_json::to_vec(&edit).unwrap(), what);
    }
    let bytes = edited(&repo.snapshot, |v| v["signatures"] = json!({}));
    assert_schema::<Snapshot>(&bytes, "signatures is an object");
}

#[test]
fn floats_in_the_signed_object_are_refused() {
    // Canonical JSON has no floating-point numbers: a signed object holding one cannot have
    // been signed by a conforming signer.
    let repo = Repo::new();
    for f in ["1.5", "1e3", "1.0", "-0.0", "1E-2"] {
        let bytes = insert_after(
            &repo.targets.to_bytes(),
            "\"custom\": {",
            &format!("\"ratio\": {f},"),
        );
        match err_of::<Targets>(&bytes) {
            MetadataError::Json(CanonicalError::NotCanonicalizable(_)) => {}
            other => panic!("{f}: expected NotCanonicalizable, got {other:?}"),
        }
    }
    // Where the schema wants an integer, a float is a schema error.
    let bytes = edited(&repo.targets, |v| v["signed"]["version"] = json!(1.0));
    assert_schema::<Targets>(&bytes, "version 1.0");
    let bytes = edited(&repo.targets, |v| {
        v["signed"]["targets"][TARGET_NAME]["length"] = json!(30.0)
    });
    assert_schema::<Targets>(&bytes, "length 30.0");
}

#[test]
fn floats_outside_the_signed_object_do_not_matter() {
    // Unsigned members are not canonicalised: a float there is no reason to refuse.
    let repo = Repo::new();
    let bytes = edited(&repo.targets, |v| v["x-mirror-score"] = json!(0.75));
    let md = Metadata::<Targets>::from_bytes(&bytes, MAX).unwrap();
    assert_eq!(repo.root.verify_by(&md, "targets").unwrap(), 1);
}

#[test]
fn version_zero_negative_or_too_large_is_refused() {
    let repo = Repo::new();
    assert_invalid::<Timestamp>(
        &edited(&repo.timestamp, |v| v["signed"]["version"] = json!(0)),
        "version 0",
        "version",
    );
    assert_schema::<Timestamp>(
        &edited(&repo.timestamp, |v| v["signed"]["version"] = json!(-1)),
        "version -1",
    );
    assert_schema::<Timestamp>(
        &insert_after(
            &edited(&repo.timestamp, |v| {
                v["signed"].as_object_mut().unwrap().remove("version");
            }),
            "\"signed\": {",
            "\"version\": 18446744073709551616,",
        ),
        "version 2^64",
    );
    assert_schema::<Timestamp>(
        &edited(&repo.timestamp, |v| v["signed"]["version"] = json!("1")),
        "version as a string",
    );
}

#[test]
fn metadata_with_version_zero_cannot_be_built_either() {
    // from_bytes refuses version 0, so Metadata::new must too: otherwise Otter signs and
    // publishes a file no client, Otter's own included, will read.
    let repo = Repo::new();
    let mut body = repo.timestamp.signed().clone();
    body.version = 0;
    match Metadata::new(body).map(|_| "built") {
        Err(MetadataError::Invalid(msg)) => assert!(msg.contains("version"), "{msg}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn threshold_zero_is_refused() {
    let repo = Repo::new();
    for role in ["root", "targets", "snapshot", "timestamp"] {
        let bytes = edited(&repo.root, |v| {
            v["signed"]["roles"][role]["threshold"] = json!(0)
        });
        assert_invalid::<Root>(&bytes, role, "threshold 0");
    }
    for bad in [json!(-1), json!(4_294_967_296u64), json!("1"), json!(null)] {
        let bytes = edited(&repo.root, |v| {
            v["signed"]["roles"]["root"]["threshold"] = bad.clone()
        });
        assert_schema::<Root>(&bytes, &format!("threshold {bad}"));
    }
}

#[test]
fn a_root_must_define_exactly_the_four_top_level_roles() {
    let repo = Repo::new();
    for missing in ["root", "targets", "snapshot", "timestamp"] {
        let bytes = edited(&repo.root, |v| {
            v["signed"]["roles"]
                .as_object_mut()
                .unwrap()
                .remove(missing);
        });
        assert_invalid::<Root>(&bytes, missing, "exactly the roles");
    }
    let bytes = edited(&repo.root, |v| {
        v["signed"]["roles"]["bins"] = json!({"keyids": [], "threshold": 1})
    });
    assert_invalid::<Root>(&bytes, "extra role", "exactly the roles");
}

#[test]
fn a_key_id_listed_twice_in_a_role_is_refused() {
    // Listed twice, one key could be counted twice towards the threshold.
    let repo = Repo::new();
    let id = repo.root_key.key_id().0;
    let bytes = edited(&repo.root, |v| {
        v["signed"]["roles"]["root"]["keyids"] = json!([id, id]);
        v["signed"]["roles"]["root"]["threshold"] = json!(2);
    });
    assert_invalid::<Root>(&bytes, "root keyids", "twice");
}

#[test]
fn a_key_without_its_members_is_refused() {
    let repo = Repo::new();
    let id = repo.root_key.key_id().0;
    for member in ["keytype", "scheme", "keyval"] {
        let bytes = edited(&repo.root, |v| {
            v["signed"]["keys"][&id]
                .as_object_mut()
                .unwrap()
                .remove(member);
        });
        assert_schema::<Root>(&bytes, member);
    }
    let bytes = edited(&repo.root, |v| {
        v["signed"]["keys"][&id]["keyval"] = json!({})
    });
    assert_schema::<Root>(&bytes, "keyval without public");
}

#[test]
fn a_timestamp_must_name_exactly_snapshot_json() {
    let repo = Repo::new();
    let two = edited(&repo.timestamp, |v| {
        v["signed"]["meta"]["targets.json"] = json!({"version": 1})
    });
    assert_invalid::<Timestamp>(&two, "two entries", "exactly one entry");
    let none = edited(&repo.timestamp, |v| v["signed"]["meta"] = json!({}));
    assert_invalid::<Timestamp>(&none, "no entry", "exactly one entry");
    let renamed = edited(&repo.timestamp, |v| {
        let entry = v["signed"]["meta"]["snapshot.json"].take();
        v["signed"]["meta"] = json!({ "targets.json": entry });
    });
    assert_invalid::<Timestamp>(&renamed, "wrong name", "snapshot.json");
}

#[test]
fn meta_entries_must_have_a_version_and_non_empty_hashes() {
    let repo = Repo::new();
    let v0 = edited(&repo.snapshot, |v| {
        v["signed"]["meta"]["targets.json"]["version"] = json!(0)
    });
    assert_invalid::<Snapshot>(&v0, "meta version 0", "version 0");
    let empty = edited(&repo.snapshot, |v| {
        v["signed"]["meta"]["targets.json"]["hashes"] = json!({})
    });
    assert_invalid::<Snapshot>(&empty, "empty hashes", "empty hashes");
    let no_version = edited(&repo.snapshot, |v| {
        v["signed"]["meta"]["targets.json"] = json!({"length": 10})
    });
    assert_schema::<Snapshot>(&no_version, "meta without version");
}

#[test]
fn a_target_without_hashes_or_length_is_refused() {
    let repo = Repo::new();
    let no_hashes = edited(&repo.targets, |v| {
        v["signed"]["targets"][TARGET_NAME]
            .as_object_mut()
            .unwrap()
            .remove("hashes");
    });
    assert_schema::<Targets>(&no_hashes, "no hashes member");
    let empty_hashes = edited(&repo.targets, |v| {
        v["signed"]["targets"][TARGET_NAME]["hashes"] = json!({})
    });
    assert_invalid::<Targets>(&empty_hashes, "empty hashes", "no hashes");
    let no_length = edited(&repo.targets, |v| {
        v["signed"]["targets"][TARGET_NAME]
            .as_object_mut()
            .unwrap()
            .remove("length");
    });
    assert_schema::<Targets>(&no_length, "no length");
    let negative = edited(&repo.targets, |v| {
        v["signed"]["targets"][TARGET_NAME]["length"] = json!(-1)
    });
    assert_schema::<Targets>(&negative, "negative length");
}

/// Signed targets metadata with one delegated role.
fn delegating_targets() -> Metadata<Targets> {
    let vendor = key(41);
    let mut body = targets_body(1, later());
    body.delegations = Some(Delegations {
        keys: BTreeMap::from([(vendor.key_id(), vendor.public_key())]),
        roles: Some(vec![DelegatedRole {
            name: "vendor-ingenico".into(),
            keyids: ids(&[&vendor]),
            threshold: 1,
            terminating: true,
            paths: Some(vec!["drivers/ingenico/*".into()]),
            path_hash_prefixes: None,
            extra: BTreeMap::new(),
        }]),
        extra: BTreeMap::new(),
    });
    signed(body, &[&key(10)])
}

fn edit_role(md: &Metadata<Targets>, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    edited(md, |v| edit(&mut v["signed"]["delegations"]["roles"][0]))
}

#[test]
fn a_delegated_role_with_both_paths_and_path_hash_prefixes_is_refused() {
    let md = delegating_targets();
    Metadata::<Targets>::from_bytes(&md.to_bytes(), MAX).unwrap();
    let both = edit_role(&md, |r| r["path_hash_prefixes"] = json!(["ab"]));
    assert_invalid::<Targets>(
        &both,
        "paths and prefixes",
        "both paths and path_hash_prefixes",
    );
}

#[test]
fn delegated_roles_follow_the_role_rules() {
    let md = delegating_targets();
    for top in ["root", "targets", "snapshot", "timestamp"] {
        let bytes = edit_role(&md, |r| r["name"] = json!(top));
        assert_invalid::<Targets>(&bytes, top, "may not be named");
    }
    let twice = edited(&md, |v| {
        let r = v["signed"]["delegations"]["roles"][0].clone();
        v["signed"]["delegations"]["roles"]
            .as_array_mut()
            .unwrap()
            .push(r);
    });
    assert_invalid::<Targets>(&twice, "role listed twice", "listed twice");
    let zero = edit_role(&md, |r| r["threshold"] = json!(0));
    assert_invalid::<Targets>(&zero, "delegated threshold 0", "threshold 0");
    let dup = edit_role(&md, |r| {
        let id = r["keyids"][0].clone();
        r["keyids"] = json!([id.clone(), id]);
    });
    assert_invalid::<Targets>(&dup, "delegated keyids twice", "twice");
    let no_name = edit_role(&md, |r| {
        r.as_object_mut().unwrap().remove("name");
    });
    assert_schema::<Targets>(&no_name, "delegated role without name");
}
