//! Metadata is read as the role the client asked for, or not at all: a file whose `_type`
//! names another role is refused before anything in it is used, even when its signatures are
//! valid.
//!
//! Spec 4.2 ("File formats: general principles"): ROLE is "a dictionary whose `_type` field
//! describes the role type"; 4.3-4.6 fix `_type` to "root", "snapshot", "targets" and
//! "timestamp". Without the check, a key trusted for two roles (or a mirror swapping files)
//! could pass one role's metadata off as another's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{edited, key, later, root_body, signed, targets_body, Repo, RootPlan, MAX};
use otter_keys::metadata::{
    peek_type, Metadata, MetadataError, Role, Root, Snapshot, Targets, Timestamp,
};
use serde_json::json;

fn refused_as<T: Role + std::fmt::Debug>(bytes: &[u8], found: &str) {
    match Metadata::<T>::from_bytes(bytes, MAX) {
        Err(MetadataError::WrongType { expected, found: f }) => {
            assert_eq!(expected, T::TYPE);
            assert_eq!(f, found);
        }
        other => panic!(
            "{found} read as {}: expected WrongType, got {other:?}",
            T::TYPE
        ),
    }
}

#[test]
fn a_targets_file_is_refused_as_root_snapshot_or_timestamp() {
    let repo = Repo::new();
    let bytes = repo.targets.to_bytes();
    refused_as::<Root>(&bytes, "targets");
    refused_as::<Snapshot>(&bytes, "targets");
    refused_as::<Timestamp>(&bytes, "targets");
    // The control: read as what it is, it parses.
    Metadata::<Targets>::from_bytes(&bytes, MAX).unwrap();
}

#[test]
fn every_role_is_refused_as_every_other_role() {
    let repo = Repo::new();
    let files = [
        ("root", repo.root.to_bytes()),
        ("targets", repo.targets.to_bytes()),
        ("snapshot", repo.snapshot.to_bytes()),
        ("timestamp", repo.timestamp.to_bytes()),
    ];
    for (role, bytes) in &files {
        if *role != "root" {
            refused_as::<Root>(bytes, role);
        }
        if *role != "targets" {
            refused_as::<Targets>(bytes, role);
        }
        if *role != "snapshot" {
            refused_as::<Snapshot>(bytes, role);
        }
        if *role != "timestamp" {
            refused_as::<Timestamp>(bytes, role);
        }
        assert_eq!(&peek_type(bytes, MAX).unwrap(), role);
    }
}

#[test]
fn a_validly_signed_file_of_another_role_is_refused_by_its_type() {
    // One key trusted for both targets and timestamp (allowed by the specification, if
    // unwise): its targets metadata carries a signature the timestamp role would accept.
    // Only the type check stands between it and being used as a timestamp.
    let shared = key(50);
    let root_key = key(1);
    let root = signed(
        root_body(
            1,
            later(),
            &RootPlan {
                root: (&[&root_key], 1),
                targets: (&[&shared], 1),
                snapshot: (&[&key(20)], 1),
                timestamp: (&[&shared], 1),
            },
        ),
        &[&root_key],
    );
    let targets = signed(targets_body(1, later()), &[&shared]);
    assert_eq!(root.verify_by(&targets, "timestamp").unwrap(), 1);
    refused_as::<Timestamp>(&targets.to_bytes(), "targets");
}

#[test]
fn type_names_are_compared_exactly() {
    let repo = Repo::new();
    for (t, shown) in [
        ("Targets", "Targets"),
        ("targets ", "targets "),
        ("mirrors", "mirrors"),
        ("", ""),
    ] {
        let bytes = edited(&repo.targets, |v| v["signed"]["_type"] = json!(t));
        refused_as::<Targets>(&bytes, shown);
    }
}

#[test]
fn a_missing_or_non_string_type_is_a_schema_error() {
    let repo = Repo::new();
    let missing = edited(&repo.targets, |v| {
        v["signed"].as_object_mut().unwrap().remove("_type");
    });
    for bytes in [
        missing,
        edited(&repo.targets, |v| v["signed"]["_type"] = json!(1)),
        edited(&repo.targets, |v| v["signed"]["_type"] = json!(["targets"])),
        edited(&repo.targets, |v| v["signed"]["_type"] = json!(null)),
    ] {
        let err = Metadata::<Targets>::from_bytes(&bytes, MAX).unwrap_err();
        assert!(matches!(err, MetadataError::Schema(_)), "{err:?}");
        assert!(matches!(
            peek_type(&bytes, MAX),
            Err(MetadataError::Schema(_))
        ));
    }
}

#[test]
fn a_type_name_is_shown_short_in_the_error() {
    // An attacker's 1 MiB `_type` is not copied into logs.
    let repo = Repo::new();
    let long = "x".repeat(1 << 20);
    let bytes = edited(&repo.targets, |v| v["signed"]["_type"] = json!(long));
    match Metadata::<Targets>::from_bytes(&bytes, MAX) {
        Err(MetadataError::WrongType { found, .. }) => {
            assert!(found.len() <= 64, "{}", found.len())
        }
        other => panic!("expected WrongType, got {other:?}"),
    }
}

#[test]
fn metadata_cannot_be_built_with_another_roles_type() {
    // What Otter signs, Otter (and every client) must be able to read as the role it was
    // built as: a targets body whose `_type` says "timestamp" would be signed and published,
    // then refused by every client as targets (WrongType) and as timestamp (no `meta`).
    for wrong in ["timestamp", "root", "Targets", ""] {
        let mut body = targets_body(1, later());
        body.type_ = wrong.into();
        match Metadata::new(body).map(|_| "built") {
            Err(MetadataError::WrongType { expected, found }) => {
                assert_eq!(expected, "targets");
                assert_eq!(found, wrong);
            }
            other => panic!("_type {wrong:?}: expected WrongType, got {other:?}"),
        }
    }
}
