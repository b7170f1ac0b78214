//! Mix-and-match attacks are refused: every metadata file must be exactly the version (and,
//! when signed, the length and hashes) its referring metadata names (spec 5.5.2–5.5.3,
//! 5.6.2–5.6.3), and of the role expected; validly signed files from other releases, or of
//! other roles, are refused and not stored.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_failure, assert_success, Client, Repo, Server};
use otter_agent::tuf::{TrustError, UpdateError};
use otter_keys::hash::HashError;
use otter_keys::metadata::MetadataError;

/// Targets v1 lists `pos.bin` 1.0; the current release (targets v2, snapshot v2) lists 2.0.
fn two_releases(repo: &mut Repo) {
    repo.add_target("targets", "pos.bin", b"firmware 1.0");
    repo.release(&["targets"]);
    repo.add_target("targets", "pos.bin", b"firmware 2.0");
    repo.release(&["targets"]);
}

#[test]
fn targets_from_an_older_release_are_refused() {
    let mut repo = Repo::new();
    two_releases(&mut repo);
    // The snapshot names targets v3; the mirror serves the validly signed v2 under its name.
    repo.copy("metadata/2.targets.json", "metadata/3.targets.json");
    let server = Server::serve(&repo);
    let client = Client::new(&repo);

    let out = client.cli_download(&server, &["pos.bin"]);
    assert_failure(
        &out,
        "targets metadata version 2 refused: the referring metadata names version 3",
    );
    assert_eq!(
        client.metadata_names(),
        ["root.json", "snapshot.json", "timestamp.json"]
    );
    assert!(client.target_files().is_empty());
    assert!(server.log().iter().all(|p| !p.starts_with("/targets/")));

    let err = client.refresh(&server).unwrap_err();
    assert!(
        matches!(
            &err,
            UpdateError::Trust(TrustError::Metadata {
                role,
                source: MetadataError::Version { found: 2, .. },
            }) if role == "targets"
        ),
        "{err:?}"
    );
}

#[test]
fn targets_from_an_older_release_are_refused_without_consistent_snapshots() {
    let mut repo = Repo::without_consistent_snapshot();
    repo.add_target("targets", "pos.bin", b"firmware 1.0");
    repo.release(&["targets"]);
    let old_targets = repo.read("metadata/targets.json");
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    assert_success(&client.cli_refresh(&server));
    let before = client.metadata_files();

    repo.add_target("targets", "pos.bin", b"firmware 2.0");
    repo.release(&["targets"]);
    repo.write("metadata/targets.json", &old_targets);

    let out = client.cli_download(&server, &["pos.bin"]);
    assert_failure(
        &out,
        "targets metadata version 2 refused: the referring metadata names version 3",
    );
    assert_eq!(
        client.metadata_files()["targets.json"],
        before["targets.json"]
    );
    assert!(client.target_files().is_empty());
}

#[test]
fn a_snapshot_other_than_the_timestamp_names_is_refused() {
    let mut repo = Repo::new();
    repo.update_snapshot(); // timestamp v2 names snapshot v2
    repo.copy("metadata/1.snapshot.json", "metadata/2.snapshot.json");
    let server = Server::serve(&repo);
    let client = Client::new(&repo);

    let out = client.cli_refresh(&server);
    assert_failure(
        &out,
        "snapshot metadata version 1 refused: the referring metadata names version 2",
    );
    assert_eq!(client.metadata_names(), ["root.json", "timestamp.json"]);
}

/// The same document with one byte of insignificant whitespace changed: same length,
/// still valid JSON with valid signatures (they cover the canonical form), other hashes.
fn respace(bytes: &[u8]) -> Vec<u8> {
    let at = bytes
        .windows(3)
        .position(|w| w == b"\n  ")
        .expect("pretty-printed");
    let mut out = bytes.to_vec();
    out[at + 1] = b'\t';
    out
}

#[test]
fn metadata_whose_bytes_differ_from_the_signed_hashes_is_refused() {
    for role in ["snapshot", "targets"] {
        let mut repo = Repo::new();
        repo.meta_hashes = true;
        two_releases(&mut repo);
        let file = repo.current_file(role);
        let tweaked = respace(&repo.read(&file));
        repo.write(&file, &tweaked);
        let server = Server::serve(&repo);
        let client = Client::new(&repo);

        let out = client.cli_refresh(&server);
        assert_failure(&out, &format!("{role}: sha256 hash mismatch"));
        assert!(!client.metadata_names().contains(&format!("{role}.json")));

        let err = client.refresh(&server).unwrap_err();
        assert!(
            matches!(
                &err,
                UpdateError::Trust(TrustError::Hash {
                    source: HashError::Mismatch { .. },
                    ..
                })
            ),
            "{err:?}"
        );
    }
}

#[test]
fn metadata_of_another_length_than_signed_is_refused() {
    // One byte shorter: the length check refuses it. One byte longer: the signed length
    // is the download cap, so the extra byte is never even accepted.
    let mut repo = Repo::new();
    repo.meta_hashes = true;
    two_releases(&mut repo);
    let file = repo.current_file("targets");
    let genuine = repo.read(&file);
    let signed_length = genuine.len() as u64;
    let at = genuine.windows(3).position(|w| w == b"\n  ").unwrap();
    let mut shorter = genuine.clone();
    shorter.remove(at + 1);
    repo.write(&file, &shorter);
    let server = Server::serve(&repo);
    let client = Client::new(&repo);

    let err = client.refresh(&server).unwrap_err();
    assert!(
        matches!(
            &err,
            UpdateError::Trust(TrustError::Hash {
                role,
                source: HashError::Length { expected, found },
            }) if role == "targets" && *expected == signed_length && *found == signed_length - 1
        ),
        "{err:?}"
    );
    assert!(!client.metadata_names().contains(&"targets.json".into()));

    repo.write(&file, &genuine);
    repo.pad(&file, 1);
    let err = client.refresh(&server).unwrap_err();
    assert!(
        matches!(
            &err,
            UpdateError::Fetch(otter_agent::tuf::FetchError::TooLarge { max, .. })
                if *max == signed_length
        ),
        "{err:?}"
    );
    assert!(!client.metadata_names().contains(&"targets.json".into()));
}

#[test]
fn swapped_metadata_files_are_refused_by_type() {
    let repo = Repo::new();
    repo.swap("metadata/1.snapshot.json", "metadata/1.targets.json");
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    let out = client.cli_refresh(&server);
    assert_failure(
        &out,
        "wrong metadata type: expected \"snapshot\", found \"targets\"",
    );
    assert_eq!(client.metadata_names(), ["root.json", "timestamp.json"]);

    // The timestamp served as the next root, or the snapshot as the timestamp.
    let repo = Repo::new();
    repo.copy("metadata/timestamp.json", "metadata/2.root.json");
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    assert_failure(
        &client.cli_refresh(&server),
        "wrong metadata type: expected \"root\", found \"timestamp\"",
    );
    assert_eq!(client.metadata_names(), ["root.json"]);

    let repo = Repo::new();
    repo.copy("metadata/1.snapshot.json", "metadata/timestamp.json");
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    assert_failure(
        &client.cli_refresh(&server),
        "wrong metadata type: expected \"timestamp\", found \"snapshot\"",
    );
    assert_eq!(client.metadata_names(), ["root.json"]);
}

#[test]
fn a_delegated_role_from_an_older_release_is_refused() {
    let mut repo = Repo::new();
    repo.delegate("targets", "vendor", 20, &["vendor/*"]);
    repo.add_target("vendor", "vendor/driver.bin", b"driver 1");
    repo.publish_targets("vendor");
    repo.release(&["targets"]);
    repo.add_target("vendor", "vendor/driver.bin", b"driver 2");
    repo.release(&["vendor"]); // vendor v2
    repo.copy("metadata/1.vendor.json", "metadata/2.vendor.json");
    let server = Server::serve(&repo);
    let client = Client::new(&repo);

    let out = client.cli_download(&server, &["vendor/driver.bin"]);
    assert_failure(
        &out,
        "vendor metadata version 1 refused: the referring metadata names version 2",
    );
    assert!(!client.metadata_names().contains(&"vendor.json".into()));
    assert!(client.target_files().is_empty());
}
