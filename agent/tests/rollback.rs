//! Rollback attacks are refused: a timestamp with a lower version than the trusted one
//! (spec 5.4.3), a timestamp naming a lower snapshot version (5.4.3.2), a snapshot naming
//! a lower or no version of a targets role (5.5.5), a root that is not exactly the next
//! version (5.3.5). The trusted files stay byte-for-byte what they were.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_failure, assert_success, md, Client, Repo, Server, ROOT_SEED};
use otter_agent::tuf::{TrustError, UpdateError};
use otter_keys::metadata::MetadataError;

#[test]
fn a_timestamp_version_going_down_is_refused() {
    let mut repo = Repo::new();
    repo.update_timestamp(); // v2
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    assert_success(&client.cli_refresh(&server));
    assert_eq!(client.version("timestamp.json"), Some(2));
    let before = client.metadata_files();

    repo.timestamp.version = 1;
    repo.publish_timestamp();
    server.take_log();
    let out = client.cli_refresh(&server);
    assert_failure(
        &out,
        "timestamp metadata version 1 refused: lower than trusted version 2 (rollback attack)",
    );
    assert_eq!(client.metadata_files(), before);
    assert_eq!(server.take_log(), md(&["2.root.json", "timestamp.json"]));

    let err = client.refresh(&server).unwrap_err();
    assert!(
        matches!(
            &err,
            UpdateError::Trust(TrustError::Metadata {
                role,
                source: MetadataError::Version { found: 1, .. },
            }) if role == "timestamp"
        ),
        "{err:?}"
    );
    assert_eq!(client.metadata_files(), before);
}

#[test]
fn a_timestamp_naming_a_lower_snapshot_version_is_refused() {
    // With and without snapshot length and hashes in the timestamp: the trusted local
    // snapshot is what the check compares with either way.
    for meta_hashes in [false, true] {
        let mut repo = Repo::new();
        repo.meta_hashes = meta_hashes;
        repo.update_snapshot(); // snapshot v2, timestamp v2
        let server = Server::serve(&repo);
        let client = Client::new(&repo);
        assert_success(&client.cli_refresh(&server));
        let before = client.metadata_files();

        repo.snapshot.version = 1;
        repo.publish_snapshot();
        repo.update_timestamp(); // v3, naming snapshot v1
        let out = client.cli_refresh(&server);
        assert_failure(
            &out,
            "snapshot (named by timestamp) metadata version 1 refused: lower than trusted version 2",
        );
        assert_eq!(client.metadata_files(), before, "meta_hashes {meta_hashes}");
        assert_eq!(client.version("timestamp.json"), Some(2));
        assert_eq!(client.version("snapshot.json"), Some(2));
    }
}

#[test]
fn a_lower_snapshot_behind_an_unchanged_timestamp_is_never_fetched() {
    let mut repo = Repo::new();
    repo.update_snapshot(); // snapshot v2, timestamp v2
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    assert_success(&client.cli_refresh(&server));
    let before = client.metadata_files();

    // The mirror serves snapshot v1 under v2's name; the timestamp still names v2, which the
    // client already trusts, so it has no reason to fetch the snapshot at all.
    repo.copy("metadata/1.snapshot.json", "metadata/2.snapshot.json");
    server.take_log();
    assert_success(&client.cli_refresh(&server));
    assert_eq!(server.take_log(), md(&["2.root.json", "timestamp.json"]));
    assert_eq!(client.metadata_files(), before);
}

#[test]
fn a_snapshot_naming_a_lower_targets_version_is_refused() {
    for meta_hashes in [false, true] {
        let mut repo = Repo::new();
        repo.meta_hashes = meta_hashes;
        repo.release(&["targets"]); // targets v2, snapshot v2
        let server = Server::serve(&repo);
        let client = Client::new(&repo);
        assert_success(&client.cli_refresh(&server));
        let before = client.metadata_files();

        repo.targets.get_mut("targets").unwrap().version = 1;
        repo.publish_targets("targets");
        repo.update_snapshot(); // snapshot v3 naming targets v1
        let out = client.cli_refresh(&server);
        assert_failure(
            &out,
            "targets.json metadata version 1 refused: lower than trusted version 2 (rollback attack)",
        );
        // The valid new timestamp is trusted; snapshot and targets stay at v2.
        assert_eq!(client.version("timestamp.json"), Some(3));
        assert_eq!(
            client.metadata_files()["snapshot.json"],
            before["snapshot.json"]
        );
        assert_eq!(
            client.metadata_files()["targets.json"],
            before["targets.json"]
        );
        assert!(!server
            .log()
            .contains(&"/metadata/1.targets.json".to_string()));
    }
}

fn repo_with_vendor() -> Repo {
    let mut repo = Repo::new();
    repo.delegate("targets", "vendor", 20, &["vendor/*"]);
    repo.add_target("vendor", "vendor/driver.bin", b"driver");
    repo.publish_targets("vendor");
    repo.release(&["targets", "vendor"]); // targets v2, vendor v2, snapshot v2
    repo
}

#[test]
fn a_snapshot_naming_a_lower_delegated_role_version_is_refused() {
    let mut repo = repo_with_vendor();
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    assert_success(&client.cli_download(&server, &["vendor/driver.bin"]));
    let before = client.metadata_files();
    assert_eq!(client.version("vendor.json"), Some(2));

    repo.targets.get_mut("vendor").unwrap().version = 1;
    repo.publish_targets("vendor");
    repo.update_snapshot();
    let out = client.cli_download(&server, &["vendor/driver.bin"]);
    assert_failure(
        &out,
        "vendor.json metadata version 1 refused: lower than trusted version 2 (rollback attack)",
    );
    assert_eq!(
        client.metadata_files()["snapshot.json"],
        before["snapshot.json"]
    );
    assert_eq!(
        client.metadata_files()["vendor.json"],
        before["vendor.json"]
    );
}

#[test]
fn a_snapshot_dropping_a_role_is_refused() {
    let mut repo = repo_with_vendor();
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    assert_success(&client.cli_refresh(&server));
    let snapshot_before = client.metadata_files()["snapshot.json"].clone();

    repo.refresh_snapshot_meta();
    repo.snapshot.meta.remove("vendor.json");
    repo.snapshot.version += 1;
    repo.publish_snapshot();
    repo.update_timestamp();
    let out = client.cli_refresh(&server);
    assert_failure(&out, "new version drops vendor.json");
    assert_eq!(client.metadata_files()["snapshot.json"], snapshot_before);
}

#[test]
fn a_root_that_is_not_the_next_version_is_refused() {
    let mut repo = Repo::new();
    repo.bump_root(); // v2
    repo.bump_root(); // v3
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    assert_success(&client.cli_refresh(&server));
    assert_eq!(client.metadata_files()["root.json"], repo.root_bytes(3));
    let before = client.metadata_files();

    // At 4.root.json: the old v2, the trusted v3 again, and a fresh v2 signed with the
    // current key (so the version is the only thing wrong).
    let mut fresh_v2 = repo.root.clone();
    fresh_v2.version = 2;
    let candidates = [
        (repo.root_bytes(2), 2),
        (repo.root_bytes(3), 3),
        (Repo::sign(&fresh_v2, &[ROOT_SEED]), 2),
    ];
    for (bytes, found) in candidates {
        repo.write("metadata/4.root.json", &bytes);
        server.take_log();
        let out = client.cli_refresh(&server);
        assert_failure(
            &out,
            &format!(
                "root metadata version {found} refused: expected version 4 after trusted version 3"
            ),
        );
        assert_eq!(client.metadata_files(), before);
        assert_eq!(server.take_log(), md(&["4.root.json"]));
    }
}
