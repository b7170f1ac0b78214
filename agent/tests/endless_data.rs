//! Endless-data attacks are cut short: every download has a cap (spec 5.3.3, 5.4.1, 5.5.1,
//! 5.6.1, 5.7.3) — the client's fixed caps for root and timestamp, the length the
//! referring metadata signs (or a fixed cap when it names none) for snapshot and targets,
//! and the signed length for target files. A mirror streaming forever is refused
//! within moments, and nothing it sent is stored.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{assert_failure, Client, Repo, Server};
use otter_agent::tuf::{FetchError, UpdateError, UpdaterConfig};

/// What "quickly" means here: far less than any timeout.
const QUICK: Duration = Duration::from_secs(5);

fn too_large_cap(err: &UpdateError) -> Option<u64> {
    match err {
        UpdateError::Fetch(FetchError::TooLarge { max, .. }) => Some(*max),
        _ => None,
    }
}

#[test]
fn an_endless_timestamp_is_cut_at_the_timestamp_cap() {
    let repo = Repo::new();
    let server = Server::serve(&repo);
    server.serve_endless("/metadata/timestamp.json");
    let client = Client::new(&repo);
    let before = client.metadata_files();
    let cap = UpdaterConfig::new("x").timestamp_max_length;

    let start = Instant::now();
    let out = client.cli_refresh(&server);
    assert!(start.elapsed() < QUICK, "took {:?}", start.elapsed());
    assert_failure(
        &out,
        &format!("timestamp.json: more than the {cap} bytes allowed"),
    );
    assert_eq!(client.metadata_files(), before);

    let start = Instant::now();
    let err = client.refresh(&server).unwrap_err();
    assert!(start.elapsed() < QUICK, "took {:?}", start.elapsed());
    assert_eq!(too_large_cap(&err), Some(cap), "{err:?}");
    assert_eq!(client.metadata_files(), before);
    // The client stopped reading: the server could not push more than its cap plus what
    // the sockets buffer.
    assert!(
        server.streamed() < 64 * 1024 * 1024,
        "{}",
        server.streamed()
    );
}

#[test]
fn an_endless_next_root_is_cut_at_the_root_cap() {
    let repo = Repo::new();
    let server = Server::serve(&repo);
    server.serve_endless("/metadata/2.root.json");
    let client = Client::new(&repo);
    let before = client.metadata_files();

    let start = Instant::now();
    let err = client.refresh(&server).unwrap_err();
    assert!(start.elapsed() < QUICK, "took {:?}", start.elapsed());
    assert_eq!(
        too_large_cap(&err),
        Some(UpdaterConfig::new("x").root_max_length),
        "{err:?}"
    );
    assert_eq!(client.metadata_files(), before);
}

#[test]
fn an_endless_snapshot_is_cut_at_the_length_the_timestamp_signs() {
    let mut repo = Repo::new();
    repo.meta_hashes = true;
    repo.update_snapshot(); // timestamp names snapshot v2 with its length
    let signed_length = repo.timestamp.meta["snapshot.json"].length.unwrap();
    let server = Server::serve(&repo);
    server.serve_endless("/metadata/2.snapshot.json");
    let client = Client::new(&repo);

    let start = Instant::now();
    let out = client.cli_refresh(&server);
    assert!(start.elapsed() < QUICK, "took {:?}", start.elapsed());
    assert_failure(
        &out,
        &format!("2.snapshot.json: more than the {signed_length} bytes allowed"),
    );
    assert!(!client.metadata_names().contains(&"snapshot.json".into()));
}

#[test]
fn endless_snapshot_and_targets_without_signed_lengths_are_cut_at_fixed_caps() {
    let defaults = UpdaterConfig::new("x");
    for (path, cap) in [
        ("/metadata/1.snapshot.json", defaults.snapshot_max_length),
        ("/metadata/1.targets.json", defaults.targets_max_length),
    ] {
        let repo = Repo::new();
        let server = Server::serve(&repo);
        server.serve_endless(path);
        let client = Client::new(&repo);

        let start = Instant::now();
        let err = client.refresh(&server).unwrap_err();
        assert!(start.elapsed() < QUICK, "{path} took {:?}", start.elapsed());
        assert_eq!(too_large_cap(&err), Some(cap), "{path}: {err:?}");
        let stored = client.metadata_names();
        let role_file = if path.contains("snapshot") {
            "snapshot.json"
        } else {
            "targets.json"
        };
        assert!(!stored.contains(&role_file.to_string()), "{stored:?}");
    }
}

#[test]
fn an_endless_target_file_is_cut_at_its_signed_length() {
    let mut repo = Repo::new();
    let content = b"pos terminal firmware".to_vec();
    repo.add_target("targets", "firmware/pos.bin", &content);
    repo.release(&["targets"]);
    let server = Server::serve(&repo);
    server.serve_endless(&format!(
        "/{}",
        repo.signed_artifact_file("firmware/pos.bin")
    ));
    let client = Client::new(&repo);

    let start = Instant::now();
    let out = client.cli_download(&server, &["firmware/pos.bin"]);
    assert!(start.elapsed() < QUICK, "took {:?}", start.elapsed());
    assert_failure(
        &out,
        &format!("more than the {} bytes allowed", content.len()),
    );
    assert!(common::tree(&client.target_dir()).is_empty());

    let err = client.download(&server, "firmware/pos.bin").unwrap_err();
    assert_eq!(too_large_cap(&err), Some(content.len() as u64), "{err:?}");
    assert!(common::tree(&client.target_dir()).is_empty());
}

#[test]
fn an_oversized_timestamp_is_refused_by_its_announced_length() {
    // Valid JSON, valid signature, but larger than the cap: refused without being parsed.
    let repo = Repo::new();
    let cap = UpdaterConfig::new("x").timestamp_max_length;
    repo.pad("metadata/timestamp.json", cap as usize);
    let server = Server::serve(&repo);
    let client = Client::new(&repo);

    let out = client.cli_refresh(&server);
    assert_failure(
        &out,
        &format!("timestamp.json: more than the {cap} bytes allowed"),
    );
    assert_eq!(client.metadata_names(), ["root.json"]);
}
