//! Fast-forward recovery (spec 5.3.11): after attackers pushed the timestamp, snapshot or
//! targets version far ahead with a stolen online key, the repository rotates that key in
//! a new root and starts again at a low version. Before the rotation the low version is a
//! rollback and refused; after it, the client accepts it, because what it trusted was
//! signed by a key root no longer lists.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_failure, assert_success, Client, Repo, Server};

#[test]
fn a_new_timestamp_key_recovers_from_a_fast_forwarded_timestamp() {
    let mut repo = Repo::new();
    repo.timestamp.version = 99;
    repo.update_timestamp(); // v100, signed by the (stolen) key 4
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    assert_success(&client.cli_refresh(&server));
    assert_eq!(client.version("timestamp.json"), Some(100));

    // Without a key rotation, starting again at v1 is a rollback.
    repo.timestamp.version = 0;
    repo.update_timestamp();
    assert_failure(
        &client.cli_refresh(&server),
        "timestamp metadata version 1 refused: lower than trusted version 100",
    );
    assert_eq!(client.version("timestamp.json"), Some(100));

    // Root v2 rotates the timestamp key; timestamp v1 signed by the new key is accepted.
    repo.set_role_keys("timestamp", &[14], 1);
    repo.bump_root();
    repo.timestamp.version = 0;
    repo.update_timestamp();
    assert_success(&client.cli_refresh(&server));
    let files = client.metadata_files();
    assert_eq!(files["root.json"], repo.root_bytes(2));
    assert_eq!(
        files["timestamp.json"],
        repo.read("metadata/timestamp.json")
    );
    assert_eq!(client.version("timestamp.json"), Some(1));
}

#[test]
fn new_snapshot_and_timestamp_keys_recover_from_a_fast_forwarded_snapshot() {
    let mut repo = Repo::new();
    repo.snapshot.version = 99998;
    repo.update_snapshot(); // snapshot v99999
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    assert_success(&client.cli_refresh(&server));
    assert_eq!(client.version("snapshot.json"), Some(99999));

    repo.snapshot.version = 0;
    repo.update_snapshot(); // snapshot v1, old keys
    assert_failure(
        &client.cli_refresh(&server),
        "snapshot (named by timestamp) metadata version 1 refused: lower than trusted version 99999",
    );
    assert_eq!(client.version("snapshot.json"), Some(99999));

    repo.set_role_keys("snapshot", &[13], 1);
    repo.set_role_keys("timestamp", &[14], 1);
    repo.bump_root();
    repo.snapshot.version = 0;
    repo.update_snapshot(); // snapshot v1 signed by 13, timestamp signed by 14
    assert_success(&client.cli_refresh(&server));
    assert_eq!(client.version("snapshot.json"), Some(1));
    assert_eq!(
        client.metadata_files()["snapshot.json"],
        repo.read("metadata/1.snapshot.json")
    );
}

#[test]
fn a_new_snapshot_key_alone_recovers_from_a_fast_forwarded_snapshot() {
    // 5.3.11: when root rotates the snapshot keys, the local timestamp and snapshot are
    // dropped, so the old timestamp's high snapshot version no longer blocks recovery.
    let mut repo = Repo::new();
    repo.snapshot.version = 99998;
    repo.update_snapshot(); // snapshot v99999
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    assert_success(&client.cli_refresh(&server));
    assert_eq!(client.version("snapshot.json"), Some(99999));

    repo.set_role_keys("snapshot", &[13], 1);
    repo.bump_root();
    repo.snapshot.version = 0;
    repo.update_snapshot(); // snapshot v1 signed by 13; timestamp key unchanged
    assert_success(&client.cli_refresh(&server));
    assert_eq!(client.version("snapshot.json"), Some(1));
}

#[test]
fn a_new_snapshot_key_recovers_from_fast_forwarded_targets() {
    let mut repo = Repo::new();
    repo.targets.get_mut("targets").unwrap().version = 99;
    repo.release(&["targets"]); // targets v100
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    assert_success(&client.cli_refresh(&server));
    assert_eq!(client.version("targets.json"), Some(100));

    repo.targets.get_mut("targets").unwrap().version = 0;
    repo.release(&["targets"]); // targets v1, named by a snapshot signed with the old key
    assert_failure(
        &client.cli_refresh(&server),
        "targets.json metadata version 1 refused: lower than trusted version 100",
    );
    assert_eq!(client.version("targets.json"), Some(100));

    repo.set_role_keys("snapshot", &[13], 1);
    repo.bump_root();
    repo.update_snapshot(); // signed by 13, still naming targets v1
    assert_success(&client.cli_refresh(&server));
    assert_eq!(client.version("targets.json"), Some(1));
    assert_eq!(
        client.metadata_files()["targets.json"],
        repo.read("metadata/1.targets.json")
    );
}
