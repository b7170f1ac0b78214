//! The root update chain (spec 5.3): the client fetches root N+1 until a 404, each signed by
//! a threshold of the trusted root's keys and of its own, with version exactly N+1; it
//! persists each one as it goes; a gap or a bad link stops the chain there; and one
//! refresh walks at most `max_root_rotations` versions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_failure, assert_success, md, Client, Repo, Server, ROOT_SEED};
use otter_agent::tuf::UpdaterConfig;
use otter_keys::time::UtcTime;

/// Root v2 moves the root role from key 1 to 11, v3 from 11 to 12 and the timestamp role
/// to key 14.
fn rotated_twice() -> Repo {
    let mut repo = Repo::new();
    repo.set_role_keys("root", &[11], 1);
    repo.bump_root();
    repo.set_role_keys("root", &[12], 1);
    repo.set_role_keys("timestamp", &[14], 1);
    repo.bump_root();
    repo.update_timestamp();
    repo
}

#[test]
fn rotations_1_2_3_are_accepted_in_order() {
    let repo = rotated_twice();
    let server = Server::serve(&repo);
    let client = Client::new(&repo);

    assert_success(&client.cli_refresh(&server));
    assert_eq!(
        server.take_log(),
        md(&[
            "2.root.json",
            "3.root.json",
            "4.root.json",
            "timestamp.json",
            "1.snapshot.json",
            "1.targets.json"
        ])
    );
    let files = client.metadata_files();
    assert_eq!(files["root.json"], repo.root_bytes(3));
    assert_eq!(
        files["timestamp.json"],
        repo.read("metadata/timestamp.json")
    );

    // The next refresh starts from v3.
    assert_success(&client.cli_refresh(&server));
    assert_eq!(server.take_log(), md(&["4.root.json", "timestamp.json"]));
}

#[test]
fn a_skipped_version_is_refused() {
    let repo = rotated_twice();
    // The mirror offers v3 as the successor of v1.
    repo.copy("metadata/3.root.json", "metadata/2.root.json");
    let server = Server::serve(&repo);
    let client = Client::new(&repo);

    let out = client.cli_refresh(&server);
    // v3 is signed by keys 11 and 12, not by v1's key 1.
    assert_failure(&out, "root metadata: 0 valid signature(s)");
    assert_eq!(client.metadata_names(), ["root.json"]);
    assert_eq!(client.metadata_files()["root.json"], repo.root_bytes(1));

    // Even signed by key 1 as well, version 3 is not the successor of version 1.
    let mut v3 = repo.root.clone();
    v3.version = 3;
    repo.write("metadata/2.root.json", &Repo::sign(&v3, &[ROOT_SEED, 12]));
    let out = client.cli_refresh(&server);
    assert_failure(
        &out,
        "root metadata version 3 refused: expected version 2 after trusted version 1",
    );
    assert_eq!(client.metadata_files()["root.json"], repo.root_bytes(1));
}

#[test]
fn a_missing_version_ends_the_chain_and_later_ones_are_not_fetched() {
    let repo = Repo::new();
    // A v3 exists (signed by key 1) but no v2: the chain ends at the 404 for v2.
    let mut v3 = repo.root.clone();
    v3.version = 3;
    repo.write("metadata/3.root.json", &Repo::sign(&v3, &[ROOT_SEED]));
    let server = Server::serve(&repo);
    let client = Client::new(&repo);

    assert_success(&client.cli_refresh(&server));
    assert_eq!(client.metadata_files()["root.json"], repo.root_bytes(1));
    assert!(!server.log().contains(&"/metadata/3.root.json".to_string()));
}

#[test]
fn each_new_root_needs_the_old_and_its_own_keys() {
    // Signed only by the new key.
    let mut repo = Repo::new();
    repo.set_role_keys("root", &[11], 1);
    repo.old_root_signers.clear();
    repo.bump_root();
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    assert_failure(
        &client.cli_refresh(&server),
        "root metadata: 0 valid signature(s) from authorised keys, threshold is 1",
    );
    assert_eq!(client.metadata_files()["root.json"], repo.root_bytes(1));
    drop(server);

    // Signed only by the old key.
    let mut repo = Repo::new();
    repo.set_role_keys("root", &[11], 1);
    repo.signers.insert("root".into(), vec![]);
    repo.bump_root();
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    assert_failure(
        &client.cli_refresh(&server),
        "root metadata: 0 valid signature(s) from authorised keys, threshold is 1",
    );
    assert_eq!(client.metadata_files()["root.json"], repo.root_bytes(1));
}

#[test]
fn a_bad_link_keeps_the_last_good_root_and_stops_the_update() {
    let mut repo = Repo::new();
    repo.bump_root(); // v2, fine
    repo.signers.insert("root".into(), vec![99]);
    repo.bump_root(); // v3, signed by a stranger
    let server = Server::serve(&repo);
    let client = Client::new(&repo);

    let out = client.cli_refresh(&server);
    assert_failure(&out, "root metadata: 0 valid signature(s)");
    assert_eq!(client.metadata_names(), ["root.json"]);
    assert_eq!(client.metadata_files()["root.json"], repo.root_bytes(2));
    assert_eq!(server.log(), md(&["2.root.json", "3.root.json"]));
}

#[test]
fn one_refresh_walks_at_most_max_root_rotations_versions() {
    let mut repo = Repo::new();
    for _ in 2..=6 {
        repo.bump_root();
    }
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    let mut cfg = Client::config(&server);
    cfg.max_root_rotations = 3;

    client
        .updater_with(cfg.clone(), UtcTime::now())
        .unwrap()
        .refresh()
        .unwrap();
    assert_eq!(client.metadata_files()["root.json"], repo.root_bytes(4));
    assert_eq!(
        server.take_log(),
        md(&[
            "2.root.json",
            "3.root.json",
            "4.root.json",
            "timestamp.json",
            "1.snapshot.json",
            "1.targets.json"
        ])
    );

    client
        .updater_with(cfg, UtcTime::now())
        .unwrap()
        .refresh()
        .unwrap();
    assert_eq!(client.metadata_files()["root.json"], repo.root_bytes(6));
    assert_eq!(
        server.take_log(),
        md(&[
            "5.root.json",
            "6.root.json",
            "7.root.json",
            "timestamp.json"
        ])
    );
    assert_eq!(UpdaterConfig::new("x").max_root_rotations, 256);
}
