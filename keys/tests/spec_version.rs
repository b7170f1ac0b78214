//! Otter reads TUF specification 1.x metadata only: `spec_version` must be a numeric
//! `1.MINOR` or `1.MINOR.PATCH`; anything else is refused before the contents are used.
//!
//! Spec 4.3 (SPEC_VERSION): "Its format follows the Semantic Versioning 2.0.0 (semver)
//! specification. ... clients MUST verify that spec_version matches the expected version
//! number. Adopters are free to determine what is considered a match (e.g. ... only the major
//! version number)." Otter, like python-tuf, matches the major version and accepts the
//! two-part form older repositories write.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{edited, key, later, targets_body, Repo, MAX};
use otter_keys::metadata::{
    check_spec_version, Metadata, MetadataError, Root, Snapshot, Targets, Timestamp, SPEC_VERSION,
};
use serde_json::json;

const REFUSED: &[&str] = &[
    "2.0.0",
    "0.9",
    "1",
    "1.x.0",
    "",
    "0.9.0",
    "2.0",
    "10.0.0",
    "01.0.0",
    "1.0.0.0",
    "1..0",
    "1.0.",
    ".1.0",
    "v1.0.0",
    " 1.0.0",
    "1.0.0 ",
    "1.0.0-rc.1",
    "1.0.0+build",
    "１.0.0",
    "1.-1.0",
];

const ACCEPTED: &[&str] = &["1.0", "1.0.31", "1.20.0", "1.0.0", SPEC_VERSION];

#[test]
fn other_major_versions_and_malformed_versions_are_refused() {
    for v in REFUSED {
        match check_spec_version(v) {
            Err(MetadataError::SpecVersion(shown)) => assert_eq!(&shown, v),
            other => panic!("{v:?}: expected SpecVersion, got {other:?}"),
        }
    }
}

#[test]
fn major_version_one_is_accepted() {
    for v in ACCEPTED {
        check_spec_version(v).unwrap();
    }
}

#[test]
fn files_with_a_refused_spec_version_are_refused_for_every_role() {
    let repo = Repo::new();
    for v in REFUSED {
        let set = |doc: &mut serde_json::Value| doc["signed"]["spec_version"] = json!(v);
        let checks = [
            Metadata::<Root>::from_bytes(&edited(&repo.root, set), MAX).map(|_| ()),
            Metadata::<Targets>::from_bytes(&edited(&repo.targets, set), MAX).map(|_| ()),
            Metadata::<Snapshot>::from_bytes(&edited(&repo.snapshot, set), MAX).map(|_| ()),
            Metadata::<Timestamp>::from_bytes(&edited(&repo.timestamp, set), MAX).map(|_| ()),
        ];
        for result in checks {
            assert!(
                matches!(result, Err(MetadataError::SpecVersion(ref s)) if s == v),
                "{v:?}: {result:?}"
            );
        }
    }
}

#[test]
fn files_with_an_accepted_spec_version_parse() {
    let repo = Repo::new();
    for v in ACCEPTED {
        let bytes = edited(&repo.targets, |doc| {
            doc["signed"]["spec_version"] = json!(v)
        });
        let md = Metadata::<Targets>::from_bytes(&bytes, MAX).unwrap();
        assert_eq!(md.signed().spec_version, *v);
    }
}

#[test]
fn metadata_cannot_be_built_with_a_refused_spec_version() {
    for v in ["2.0.0", "1", ""] {
        let mut body = targets_body(1, later());
        body.spec_version = v.into();
        match Metadata::new(body) {
            Err(MetadataError::SpecVersion(shown)) => assert_eq!(shown, v),
            other => panic!("{v:?}: expected SpecVersion, got {other:?}"),
        }
    }
    let mut body = targets_body(1, later());
    body.spec_version = "1.0".into();
    let mut md = Metadata::new(body).unwrap();
    md.sign(&key(10));
}

#[test]
fn a_missing_or_non_string_spec_version_is_a_schema_error() {
    let repo = Repo::new();
    let missing = edited(&repo.timestamp, |v| {
        v["signed"].as_object_mut().unwrap().remove("spec_version");
    });
    for bytes in [
        missing,
        edited(&repo.timestamp, |v| v["signed"]["spec_version"] = json!(1)),
        edited(&repo.timestamp, |v| {
            v["signed"]["spec_version"] = json!([1, 0, 31])
        }),
    ] {
        let err = Metadata::<Timestamp>::from_bytes(&bytes, MAX).unwrap_err();
        assert!(matches!(err, MetadataError::Schema(_)), "{err:?}");
    }
}

#[test]
fn a_long_spec_version_is_shown_short_in_the_error() {
    let long = format!("2.{}", "0".repeat(10_000));
    match check_spec_version(&long) {
        Err(MetadataError::SpecVersion(shown)) => assert!(shown.len() <= 64),
        other => panic!("expected SpecVersion, got {other:?}"),
    }
}
