//! Tampered targets are refused (spec 5.7.3): a file whose contents differ from the signed
//! hashes, or whose length differs from the signed length, never gets its name in the
//! target dir. A longer file is cut at the signed length (the download cap) and nothing
//! is left behind, not even a partial file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_failure, tree, Client, Repo, Server};
use otter_agent::tuf::{FetchError, UpdateError};
use otter_keys::hash::HashError;

const TARGET: &str = "firmware/pos.bin";
const GENUINE: &[u8] = b"genuine pos firmware 2.4.1";

/// A repository listing `TARGET`, with the mirror's copy replaced by `served`.
fn serving(served: &[u8]) -> Repo {
    let mut repo = Repo::new();
    repo.add_target("targets", TARGET, GENUINE);
    repo.release(&["targets"]);
    repo.write(&repo.signed_artifact_file(TARGET), served);
    repo
}

fn target_error(err: &UpdateError) -> Option<&HashError> {
    match err {
        UpdateError::Target { target, source } if target == TARGET => Some(source),
        _ => None,
    }
}

#[test]
fn contents_differing_from_the_signed_hash_are_refused() {
    let mut evil = GENUINE.to_vec();
    evil[0] ^= 0x20;
    let repo = serving(&evil);
    let server = Server::serve(&repo);
    let client = Client::new(&repo);

    let out = client.cli_download(&server, &[TARGET]);
    assert_failure(&out, &format!("target {TARGET}: sha256 hash mismatch"));
    assert!(tree(&client.target_dir()).is_empty());
    assert!(server
        .log()
        .contains(&format!("/{}", repo.signed_artifact_file(TARGET))));

    let err = client.download(&server, TARGET).unwrap_err();
    assert_eq!(
        target_error(&err),
        Some(&HashError::Mismatch {
            algorithm: "sha256".into()
        }),
        "{err:?}"
    );
    assert!(tree(&client.target_dir()).is_empty());
}

#[test]
fn a_shorter_file_is_refused() {
    let repo = serving(&GENUINE[..GENUINE.len() - 1]);
    let server = Server::serve(&repo);
    let client = Client::new(&repo);

    let err = client.download(&server, TARGET).unwrap_err();
    assert_eq!(
        target_error(&err),
        Some(&HashError::Length {
            expected: GENUINE.len() as u64,
            found: GENUINE.len() as u64 - 1
        }),
        "{err:?}"
    );
    assert!(tree(&client.target_dir()).is_empty());
}

#[test]
fn a_longer_file_is_cut_at_the_signed_length() {
    // The genuine contents followed by more: only the length betrays it.
    let mut longer = GENUINE.to_vec();
    longer.extend_from_slice(b" plus a payload");
    let repo = serving(&longer);
    let server = Server::serve(&repo);
    let client = Client::new(&repo);

    let out = client.cli_download(&server, &[TARGET]);
    assert_failure(
        &out,
        &format!("more than the {} bytes allowed", GENUINE.len()),
    );
    assert!(tree(&client.target_dir()).is_empty());

    let err = client.download(&server, TARGET).unwrap_err();
    assert!(
        matches!(&err, UpdateError::Fetch(FetchError::TooLarge { max, .. }) if *max == GENUINE.len() as u64),
        "{err:?}"
    );
    assert!(tree(&client.target_dir()).is_empty());
}

#[test]
fn a_target_signed_only_with_an_unknown_hash_algorithm_is_refused() {
    // Fails closed: a hash the client cannot compute verifies nothing.
    let mut repo = Repo::new();
    repo.add_target("targets", TARGET, GENUINE);
    repo.targets
        .get_mut("targets")
        .unwrap()
        .targets
        .get_mut(TARGET)
        .unwrap()
        .hashes = [("md5".to_string(), "00".repeat(16))].into();
    repo.release(&["targets"]);
    repo.write(
        &format!("targets/firmware/{}.pos.bin", "00".repeat(16)),
        GENUINE,
    );
    let server = Server::serve(&repo);
    let client = Client::new(&repo);

    let out = client.cli_download(&server, &[TARGET]);
    assert_failure(&out, "unsupported hash algorithm \"md5\"");
    assert!(tree(&client.target_dir()).is_empty());
}
