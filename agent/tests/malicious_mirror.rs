//! Mirrors are untrusted: one that serves a whole different repository (its own keys, its
//! own root rotation, its own firmware) is refused at the first file its keys signed, and
//! targets fetched from a mirror other than the metadata's are still checked against the
//! signed hashes. Nothing from such a mirror is stored.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::{assert_failure, assert_success, md, Client, Repo, Server};

const TARGET: &str = "firmware/pos.bin";

fn genuine() -> Repo {
    let mut repo = Repo::new();
    repo.add_target("targets", TARGET, b"genuine firmware 2.4.1");
    repo.release(&["targets"]);
    repo
}

fn evil() -> Repo {
    let mut repo = Repo::with_other_keys(100);
    repo.add_target("targets", TARGET, b"malware pretending 9.9");
    repo.release(&["targets"]);
    repo
}

#[test]
fn a_mirror_serving_another_repository_is_refused() {
    let real = genuine();
    let evil = evil();
    let mirror = Server::serve(&evil);
    let client = Client::new(&real);

    let out = client.cli_download(&mirror, &[TARGET]);
    assert_failure(
        &out,
        "timestamp metadata: 0 valid signature(s) from authorised keys, threshold is 1",
    );
    assert_eq!(
        client.metadata_files(),
        BTreeMap::from([("root.json".to_string(), real.root_bytes(1))])
    );
    assert!(client.target_files().is_empty());
    assert_eq!(mirror.log(), md(&["2.root.json", "timestamp.json"]));
}

#[test]
fn a_mirror_offering_its_own_root_rotation_is_refused() {
    let real = genuine();
    let mut evil = evil();
    evil.bump_root(); // 2.root.json signed by the mirror's own root key
    let mirror = Server::serve(&evil);
    let client = Client::new(&real);

    let out = client.cli_download(&mirror, &[TARGET]);
    assert_failure(
        &out,
        "root metadata: 0 valid signature(s) from authorised keys, threshold is 1",
    );
    assert_eq!(
        client.metadata_files(),
        BTreeMap::from([("root.json".to_string(), real.root_bytes(1))])
    );
    assert!(client.target_files().is_empty());
    assert_eq!(mirror.log(), md(&["2.root.json"]));
}

#[test]
fn a_mirror_serving_only_its_own_targets_is_refused() {
    // Metadata from the genuine server; target files from a mirror that serves other
    // contents under the genuine hash-prefixed names.
    let real = genuine();
    let server = Server::serve(&real);
    let mirror_files = tempfile::tempdir().unwrap();
    let name = real.signed_artifact_file(TARGET);
    let path = mirror_files.path().join(&name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let genuine_len = real.artifacts[TARGET].len();
    std::fs::write(&path, vec![b'X'; genuine_len]).unwrap();
    let mirror = Server::start(mirror_files.path());
    let client = Client::new(&real);

    let out = client.cli_download_from(&server, &mirror.targets_url(), &[TARGET]);
    assert_failure(&out, &format!("target {TARGET}: sha256 hash mismatch"));
    assert!(common::tree(&client.target_dir()).is_empty());
    assert_eq!(mirror.log(), vec![format!("/{name}")]);

    // The genuine targets URL gives the genuine file.
    assert_success(&client.cli_download(&server, &[TARGET]));
    let stored: Vec<Vec<u8>> = client.target_files().into_values().collect();
    assert_eq!(stored, vec![real.artifacts[TARGET].clone()]);
}
