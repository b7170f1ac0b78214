//! Freeze attacks are refused: expired metadata is never trusted (spec 5.3.10, 5.4.4,
//! 5.5.6, 5.6.5), whether a mirror serves new files that expired already or keeps serving
//! old ones past their expiry. Only the final root's expiry counts (5.3.10 after the
//! rotation loop), and an expired local copy does not block a fresh update.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_failure, assert_success, days, md, past, Client, Repo, Server};
use otter_agent::tuf::{TrustError, UpdateError};
use otter_keys::metadata::MetadataError;
use otter_keys::time::UtcTime;

fn expired_role(err: &UpdateError) -> Option<&str> {
    match err {
        UpdateError::Trust(TrustError::Metadata {
            source: MetadataError::Expired { role, .. },
            ..
        }) => Some(role),
        _ => None,
    }
}

/// A repository and a client that has refreshed it once.
fn refreshed() -> (Repo, Server, Client) {
    let repo = Repo::new();
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    assert_success(&client.cli_refresh(&server));
    server.take_log();
    (repo, server, client)
}

#[test]
fn an_expired_timestamp_is_refused_and_not_stored() {
    let (mut repo, server, client) = refreshed();
    let before = client.metadata_files();
    repo.timestamp.expires = past();
    repo.update_timestamp(); // v2, expired

    let out = client.cli_refresh(&server);
    assert_failure(&out, "timestamp metadata expired at");
    assert_eq!(client.metadata_files(), before);
    assert_eq!(server.take_log(), md(&["2.root.json", "timestamp.json"]));

    let err = client.refresh(&server).unwrap_err();
    assert_eq!(expired_role(&err), Some("timestamp"), "{err:?}");
    assert_eq!(client.metadata_files(), before);
}

#[test]
fn an_expired_snapshot_is_refused_and_not_stored() {
    let (mut repo, server, client) = refreshed();
    let before = client.metadata_files();
    repo.snapshot.expires = past();
    repo.update_snapshot(); // snapshot v2 expired, timestamp v2 fine

    let out = client.cli_refresh(&server);
    assert_failure(&out, "snapshot metadata expired at");
    assert_eq!(
        client.metadata_files()["snapshot.json"],
        before["snapshot.json"]
    );
    assert_eq!(client.version("snapshot.json"), Some(1));
    // The new timestamp is valid, so it is trusted.
    assert_eq!(client.version("timestamp.json"), Some(2));

    let err = client.refresh(&server).unwrap_err();
    assert_eq!(expired_role(&err), Some("snapshot"), "{err:?}");
}

#[test]
fn expired_targets_are_refused_and_not_stored() {
    let (mut repo, server, client) = refreshed();
    let before = client.metadata_files();
    repo.targets.get_mut("targets").unwrap().expires = past();
    repo.add_target("targets", "pos.bin", b"firmware");
    repo.release(&["targets"]);

    let out = client.cli_download(&server, &["pos.bin"]);
    assert_failure(&out, "targets metadata expired at");
    assert_eq!(
        client.metadata_files()["targets.json"],
        before["targets.json"]
    );
    assert_eq!(client.version("snapshot.json"), Some(2));
    assert!(client.target_files().is_empty());

    let err = client.refresh(&server).unwrap_err();
    assert_eq!(expired_role(&err), Some("targets"), "{err:?}");
}

#[test]
fn an_expired_delegated_role_is_refused_and_not_stored() {
    let mut repo = Repo::new();
    repo.delegate("targets", "vendor", 20, &["vendor/*"]);
    repo.add_target("vendor", "vendor/driver.bin", b"driver");
    repo.targets.get_mut("vendor").unwrap().expires = past();
    repo.publish_targets("vendor");
    repo.release(&["targets"]);
    let server = Server::serve(&repo);
    let client = Client::new(&repo);

    let out = client.cli_download(&server, &["vendor/driver.bin"]);
    assert_failure(&out, "vendor metadata expired at");
    assert!(!client.metadata_names().contains(&"vendor.json".to_string()));
    assert!(client.target_files().is_empty());
    assert!(server.log().iter().all(|p| !p.starts_with("/targets/")));
}

#[test]
fn an_expired_final_root_is_stored_but_stops_the_update() {
    let (mut repo, server, client) = refreshed();
    let before = client.metadata_files();
    repo.bump_root(); // v2, fine
    repo.root.expires = past();
    repo.bump_root(); // v3, expired
    repo.release(&["targets"]);

    let out = client.cli_refresh(&server);
    assert_failure(&out, "root metadata expired at");
    // 5.3.8 persists each verified root before 5.3.10 checks the final one's expiry.
    assert_eq!(client.metadata_files()["root.json"], repo.root_bytes(3));
    for file in ["timestamp.json", "snapshot.json", "targets.json"] {
        assert_eq!(client.metadata_files()[file], before[file], "{file}");
    }
    assert_eq!(
        server.take_log(),
        md(&["2.root.json", "3.root.json", "4.root.json"])
    );
}

#[test]
fn an_expired_trusted_root_without_a_successor_is_refused() {
    let mut repo = Repo::new();
    repo.root.expires = past();
    repo.publish_root();
    let server = Server::serve(&repo);
    let client = Client::new(&repo);

    let out = client.cli_refresh(&server);
    assert_failure(&out, "root metadata expired at");
    assert_eq!(client.metadata_names(), ["root.json"]);
    assert_eq!(server.log(), md(&["2.root.json"]));
}

#[test]
fn only_the_final_roots_expiry_counts() {
    let mut repo = Repo::new();
    repo.root.expires = past();
    repo.bump_root(); // v2 expired
    repo.root.expires = days(365);
    repo.bump_root(); // v3 fine
    let server = Server::serve(&repo);
    let client = Client::new(&repo);

    assert_success(&client.cli_refresh(&server));
    assert_eq!(client.metadata_files()["root.json"], repo.root_bytes(3));
}

#[test]
fn a_mirror_frozen_past_the_timestamp_expiry_is_refused() {
    // The mirror serves the same, once valid, metadata forever; the client's clock moves
    // past the timestamp's expiry (its reference time, spec 5.1).
    let mut repo = Repo::new();
    repo.timestamp.expires = days(1);
    repo.update_timestamp();
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    client.refresh(&server).unwrap();
    let before = client.metadata_files();

    let later = UtcTime::now().plus_days(2);
    let mut updater = client
        .updater_with(common::Client::config(&server), later)
        .unwrap();
    let err = updater.refresh().unwrap_err();
    assert_eq!(expired_role(&err), Some("timestamp"), "{err:?}");
    assert_eq!(client.metadata_files(), before);
}

#[test]
fn an_expired_local_timestamp_does_not_block_a_fresh_one() {
    // Timestamp v1 expires on day 7; on day 18 the mirror offers v2 valid until day 21.
    let mut repo = Repo::new();
    repo.timestamp.expires = days(7);
    repo.publish_timestamp();
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    client.refresh(&server).unwrap();

    repo.release(&["targets"]);
    repo.timestamp.expires = days(21);
    repo.update_timestamp();
    let day18 = UtcTime::now().plus_days(18);
    let mut updater = client
        .updater_with(common::Client::config(&server), day18)
        .unwrap();
    updater.refresh().unwrap();
    assert_eq!(client.version("timestamp.json"), Some(3));
    assert_eq!(client.version("snapshot.json"), Some(2));
    assert_eq!(client.version("targets.json"), Some(2));
}
