//! Expired metadata is never trusted: a file whose `expires` is at or before the fixed update
//! start time is refused; one that expires later is accepted.
//!
//! Spec 4.3 (EXPIRES): "Clients MUST NOT trust an expired file." Spec 5.1: time is fixed at
//! the start of the update. Spec 5.3.10, 5.4.4, 5.5.6, 5.6.5 ("Check for a freeze attack"):
//! the expiration timestamp MUST be higher than the fixed update start time. Spec 5.3.6: an
//! intermediate root's expiry does not matter during rotation, only the final one's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    edited, key, later, now, reparse, root_body, root_only, signed, snapshot_body, targets_body,
    timestamp_body, Repo, RootPlan, MAX,
};
use otter_keys::metadata::{check_expiry, Metadata, MetadataError, Targets, Timestamp};
use otter_keys::time::UtcTime;
use serde_json::json;

fn assert_expired(result: Result<(), MetadataError>, role: &str, expires: UtcTime) {
    match result {
        Err(MetadataError::Expired {
            role: r,
            expires: e,
            now: n,
        }) => {
            assert_eq!(r, role);
            assert_eq!(e, expires);
            assert_eq!(n, now());
        }
        other => panic!("expected {role} Expired at {expires}, got {other:?}"),
    }
}

#[test]
fn metadata_expiring_exactly_now_is_refused() {
    // "higher than the fixed update start time": equal is not higher.
    let md = signed(targets_body(1, now()), &[&key(10)]);
    assert_expired(md.check_expiry(now()), "targets", now());
}

#[test]
fn metadata_that_expired_before_now_is_refused() {
    for secs_ago in [1, 60, 86_400, 86_400 * 365 * 10] {
        let expires = now().plus_secs(-secs_ago);
        let md = signed(timestamp_body(1, expires, 1), &[&key(30)]);
        assert_expired(md.check_expiry(now()), "timestamp", expires);
    }
}

#[test]
fn metadata_that_expires_after_now_passes() {
    for secs_ahead in [1, 3600, 86_400 * 365 * 100] {
        let md = signed(
            snapshot_body(1, now().plus_secs(secs_ahead), 1),
            &[&key(20)],
        );
        md.check_expiry(now()).unwrap();
    }
}

#[test]
fn every_role_is_checked_under_its_own_name() {
    let past = now().plus_secs(-1);
    let root_key = key(1);
    let root = signed(
        root_body(
            1,
            past,
            &RootPlan {
                root: (&[&root_key], 1),
                targets: (&[&key(10)], 1),
                snapshot: (&[&key(20)], 1),
                timestamp: (&[&key(30)], 1),
            },
        ),
        &[&root_key],
    );
    assert_expired(reparse(&root).check_expiry(now()), "root", past);
    let targets = signed(targets_body(1, past), &[&key(10)]);
    assert_expired(reparse(&targets).check_expiry(now()), "targets", past);
    let snapshot = signed(snapshot_body(1, past, 1), &[&key(20)]);
    assert_expired(reparse(&snapshot).check_expiry(now()), "snapshot", past);
    let timestamp = signed(timestamp_body(1, past, 1), &[&key(30)]);
    assert_expired(reparse(&timestamp).check_expiry(now()), "timestamp", past);
    // The free function behaves the same for delegated roles, named by the caller.
    assert_expired(
        check_expiry("vendor-ingenico", past, now()),
        "vendor-ingenico",
        past,
    );
}

#[test]
fn an_expired_file_still_has_valid_signatures_so_expiry_is_its_own_check() {
    // Signature checks do not look at time: a client that skipped check_expiry would accept
    // a replayed old file. This is why every workflow step calls it.
    let repo = Repo::new();
    let old = signed(
        timestamp_body(1, now().plus_secs(-86_400), 1),
        &[&repo.timestamp_key],
    );
    assert_eq!(repo.root.verify_by(&reparse(&old), "timestamp").unwrap(), 1);
    assert!(matches!(
        old.check_expiry(now()),
        Err(MetadataError::Expired { .. })
    ));
}

#[test]
fn an_expired_intermediate_root_does_not_stop_rotation_but_the_final_root_must_be_current() {
    // Spec 5.3.6: the expiry of a new (intermediate) root does not matter yet; 5.3.10 checks
    // the final trusted root.
    let (old_key, new_key) = (key(1), key(2));
    let v1 = signed(
        root_body(1, later(), &root_only(&[&old_key], 1)),
        &[&old_key],
    );
    let expired = now().plus_secs(-1);
    let v2 = signed(
        root_body(2, expired, &root_only(&[&new_key], 1)),
        &[&old_key, &new_key],
    );
    v1.verify_successor(&reparse(&v2)).unwrap();
    assert_expired(v2.check_expiry(now()), "root", expired);
}

#[test]
fn expiry_must_be_written_as_utc_seconds() {
    // Spec 4.2: "YYYY-MM-DDTHH:MM:SSZ", always UTC. Other spellings of a time are refused
    // when the file is read, not guessed at.
    let repo = Repo::new();
    for bad in [
        "2030-01-01T00:00:00+00:00",
        "2030-01-01T00:00:00.000Z",
        "2030-01-01 00:00:00Z",
        "2030-01-01",
        "1893456000",
        "2030-02-30T00:00:00Z",
    ] {
        let bytes = edited(&repo.targets, |v| v["signed"]["expires"] = json!(bad));
        let err = Metadata::<Targets>::from_bytes(&bytes, MAX).unwrap_err();
        assert!(matches!(err, MetadataError::Schema(_)), "{bad}: {err:?}");
    }
    let bytes = edited(&repo.timestamp, |v| {
        v["signed"]["expires"] = json!(1_893_456_000)
    });
    let err = Metadata::<Timestamp>::from_bytes(&bytes, MAX).unwrap_err();
    assert!(matches!(err, MetadataError::Schema(_)), "{err:?}");
}

#[test]
fn an_expiry_that_could_not_be_read_back_is_refused_when_metadata_is_built() {
    // An expiry past year 9999 (say `--expires-days` with a huge number, saturating) has no
    // YYYY-MM-DDTHH:MM:SSZ form: published, every client (Otter's own included) would refuse
    // the file and the repository would be stuck. Building such metadata must fail.
    for far in [
        UtcTime::from_unix(i64::MAX),
        "9999-12-31T23:59:59Z"
            .parse::<UtcTime>()
            .unwrap()
            .plus_secs(1),
    ] {
        let result = Metadata::new(targets_body(1, far));
        assert!(
            matches!(result, Err(MetadataError::Schema(_))),
            "expires {far}: expected Schema error, got {:?}",
            result.map(|_| "built")
        );
    }
    // The last second that can be written is fine, and reads back.
    let last: UtcTime = "9999-12-31T23:59:59Z".parse().unwrap();
    let md = signed(targets_body(1, last), &[&key(10)]);
    assert_eq!(reparse(&md).signed().expires, last);
}
