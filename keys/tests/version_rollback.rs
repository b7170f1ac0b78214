//! Versions only move forward: a new root is exactly the next version and is signed by a
//! threshold of both the old and its own root keys; timestamp, snapshot and targets versions
//! never go below what the client trusts.
//!
//! Spec 5.3.4 ("Check for an arbitrary software attack"): version N+1 of root MUST be signed
//! by a threshold of keys of the trusted root (version N) and a threshold of keys of the new
//! root. Spec 5.3.5 ("Check for a rollback attack"): its version MUST be precisely N+1.
//! Spec 5.4.3.1: the trusted timestamp's version MUST NOT be above the new one's (equal:
//! nothing changed, keep the trusted file). Spec 5.4.3.2: likewise for the snapshot version
//! the timestamp names. Spec 5.5.4 / 5.6.4: a snapshot or targets file has the version its
//! referrer names. Spec 5.5.5: no targets version in the snapshot goes down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    key, later, reparse, root_body, root_only, signed, snapshot_body, timestamp_body, Repo,
    RootPlan,
};
use otter_keys::crypto::SigningKey;
use otter_keys::metadata::{
    check_expected_version, check_no_rollback, check_root_successor, Metadata, MetadataError, Root,
};

fn assert_version_refused(result: Result<(), MetadataError>, role: &str, found: u64) {
    match result {
        Err(MetadataError::Version {
            role: r,
            found: f,
            reason,
        }) => {
            assert_eq!(r, role);
            assert_eq!(f, found);
            assert!(!reason.is_empty());
        }
        other => panic!("expected {role} Version error for {found}, got {other:?}"),
    }
}

/// Root version `version` whose root role is `keys` with `threshold`, signed by `signers`.
fn root_v(
    version: u64,
    keys: &[&SigningKey],
    threshold: u32,
    signers: &[&SigningKey],
) -> Metadata<Root> {
    reparse(&signed(
        root_body(version, later(), &root_only(keys, threshold)),
        signers,
    ))
}

#[test]
fn a_root_successor_must_be_exactly_the_next_version() {
    check_root_successor(1, 2).unwrap();
    check_root_successor(41, 42).unwrap();
    for (trusted, new) in [(5, 5), (5, 7), (5, 4), (5, 0), (5, u64::MAX)] {
        assert_version_refused(check_root_successor(trusted, new), "root", new);
    }
    // No overflow at the top: nothing follows u64::MAX.
    for new in [0, 1, u64::MAX] {
        assert_version_refused(check_root_successor(u64::MAX, new), "root", new);
    }
}

#[test]
fn a_fully_signed_root_that_skips_repeats_or_rewinds_a_version_is_refused() {
    let k = key(1);
    let trusted = root_v(5, &[&k], 1, &[&k]);
    trusted
        .verify_successor(&root_v(6, &[&k], 1, &[&k]))
        .unwrap();
    for v in [5, 7, 4] {
        let candidate = root_v(v, &[&k], 1, &[&k]);
        assert_version_refused(trusted.verify_successor(&candidate), "root", v);
    }
}

#[test]
fn a_rotated_root_signed_only_by_the_old_keys_is_refused() {
    // The new root must be signed by a threshold of its own keys too (5.3.4 (2)), or a
    // holder of the old keys alone could hand out keys no one holds.
    let (old, new) = (key(1), key(2));
    let trusted = root_v(1, &[&old], 1, &[&old]);
    let candidate = root_v(2, &[&new], 1, &[&old]);
    match trusted.verify_successor(&candidate) {
        Err(MetadataError::ThresholdNotMet {
            role,
            valid,
            threshold,
        }) => assert_eq!((role.as_str(), valid, threshold), ("root", 0, 1)),
        other => panic!("expected ThresholdNotMet, got {other:?}"),
    }
}

#[test]
fn a_rotated_root_signed_only_by_the_new_keys_is_refused() {
    // 5.3.4 (1): without the old keys' signatures, anyone could mint a root of their own.
    let (old, new) = (key(1), key(2));
    let trusted = root_v(1, &[&old], 1, &[&old]);
    let candidate = root_v(2, &[&new], 1, &[&new]);
    match trusted.verify_successor(&candidate) {
        Err(MetadataError::ThresholdNotMet {
            role,
            valid,
            threshold,
        }) => assert_eq!((role.as_str(), valid, threshold), ("root", 0, 1)),
        other => panic!("expected ThresholdNotMet, got {other:?}"),
    }
}

#[test]
fn a_rotated_root_signed_by_both_old_and_new_keys_passes() {
    let (old, new) = (key(1), key(2));
    let trusted = root_v(1, &[&old], 1, &[&old]);
    let candidate = root_v(2, &[&new], 1, &[&old, &new]);
    trusted.verify_successor(&candidate).unwrap();
    // And the chain goes on from the new root with the new keys only.
    let newer = key(3);
    let v3 = root_v(3, &[&newer], 1, &[&new, &newer]);
    candidate.verify_successor(&v3).unwrap();
    // The retired key no longer counts.
    let v3_by_old = root_v(3, &[&newer], 1, &[&old, &newer]);
    assert!(matches!(
        candidate.verify_successor(&v3_by_old),
        Err(MetadataError::ThresholdNotMet { valid: 0, .. })
    ));
}

#[test]
fn rotation_counts_each_root_threshold_separately() {
    // Old root: 2 of {a, b, c}. New root: 2 of {c, d, e}. Signatures by c and d meet the new
    // threshold but only one old key signed: refused. Add b: passes.
    let (a, b, c, d, e) = (key(1), key(2), key(3), key(4), key(5));
    let trusted = root_v(1, &[&a, &b, &c], 2, &[&a, &b]);
    trusted.verify_self().unwrap();
    let short_old = root_v(2, &[&c, &d, &e], 2, &[&c, &d]);
    match trusted.verify_successor(&short_old) {
        Err(MetadataError::ThresholdNotMet {
            valid, threshold, ..
        }) => assert_eq!((valid, threshold), (1, 2)),
        other => panic!("expected ThresholdNotMet, got {other:?}"),
    }
    let short_new = root_v(2, &[&c, &d, &e], 2, &[&a, &b, &c]);
    match trusted.verify_successor(&short_new) {
        Err(MetadataError::ThresholdNotMet {
            valid, threshold, ..
        }) => assert_eq!((valid, threshold), (1, 2)),
        other => panic!("expected ThresholdNotMet, got {other:?}"),
    }
    let good = root_v(2, &[&c, &d, &e], 2, &[&b, &c, &d]);
    trusted.verify_successor(&good).unwrap();
}

#[test]
fn a_rotated_root_that_also_rotates_the_other_roles_keys_passes() {
    let repo = Repo::new();
    let (t2, s2, ts2) = (key(11), key(21), key(31));
    let v2 = reparse(&signed(
        root_body(
            2,
            later(),
            &RootPlan {
                root: (&[&repo.root_key], 1),
                targets: (&[&t2], 1),
                snapshot: (&[&s2], 1),
                timestamp: (&[&ts2], 1),
            },
        ),
        &[&repo.root_key],
    ));
    repo.root.verify_successor(&v2).unwrap();
    // The old timestamp key is no longer trusted by the new root (5.3.11 then discards the
    // trusted timestamp and snapshot).
    assert!(matches!(
        v2.verify_by(&repo.timestamp, "timestamp"),
        Err(MetadataError::ThresholdNotMet { valid: 0, .. })
    ));
}

#[test]
fn a_lower_timestamp_version_is_a_rollback_and_is_refused() {
    let repo = Repo::new();
    let trusted = signed(timestamp_body(7, later(), 3), &[&repo.timestamp_key]);
    let older = reparse(&signed(
        timestamp_body(6, later(), 3),
        &[&repo.timestamp_key],
    ));
    // Validly signed, not expired, and still refused.
    repo.root.verify_by(&older, "timestamp").unwrap();
    assert_version_refused(
        check_no_rollback(
            "timestamp",
            trusted.signed().version,
            older.signed().version,
        ),
        "timestamp",
        6,
    );
}

#[test]
fn an_equal_or_higher_timestamp_version_is_not_a_rollback() {
    check_no_rollback("timestamp", 7, 7).unwrap();
    check_no_rollback("timestamp", 7, 8).unwrap();
    check_no_rollback("timestamp", 7, u64::MAX).unwrap();
}

#[test]
fn a_lower_snapshot_version_named_by_the_new_timestamp_is_refused() {
    // 5.4.3.2: the snapshot version in the new timestamp must not go below the trusted one.
    let repo = Repo::new();
    let trusted = signed(timestamp_body(7, later(), 5), &[&repo.timestamp_key]);
    let new = signed(timestamp_body(8, later(), 4), &[&repo.timestamp_key]);
    let trusted_snap = trusted.signed().snapshot_meta().unwrap().version;
    let new_snap = new.signed().snapshot_meta().unwrap().version;
    assert_version_refused(
        check_no_rollback("snapshot", trusted_snap, new_snap),
        "snapshot",
        4,
    );
    check_no_rollback("snapshot", trusted_snap, trusted_snap).unwrap();
}

#[test]
fn a_lower_snapshot_version_is_refused_and_an_equal_one_allowed() {
    let repo = Repo::new();
    let trusted = signed(snapshot_body(10, later(), 3), &[&repo.snapshot_key]);
    let older = signed(snapshot_body(9, later(), 3), &[&repo.snapshot_key]);
    assert_version_refused(
        check_no_rollback("snapshot", trusted.signed().version, older.signed().version),
        "snapshot",
        9,
    );
    check_no_rollback("snapshot", 10, 10).unwrap();
}

#[test]
fn a_targets_version_going_down_in_a_new_snapshot_is_refused() {
    // 5.5.5: every targets metadata version in the new snapshot is at least the trusted one.
    let trusted = snapshot_body(10, later(), 8);
    let new = snapshot_body(11, later(), 7);
    let (t, n) = (
        trusted.meta["targets.json"].version,
        new.meta["targets.json"].version,
    );
    assert_version_refused(check_no_rollback("targets.json", t, n), "targets.json", 7);
}

#[test]
fn a_file_must_have_the_version_its_referrer_names() {
    // 5.5.4: snapshot version == the one in timestamp meta; 5.6.4: targets version == the
    // one in snapshot meta. Higher is as wrong as lower (a mix-and-match attack).
    check_expected_version("snapshot", 4, 4).unwrap();
    assert_version_refused(check_expected_version("snapshot", 4, 3), "snapshot", 3);
    assert_version_refused(check_expected_version("snapshot", 4, 5), "snapshot", 5);
    assert_version_refused(check_expected_version("targets", 9, 10), "targets", 10);
}
