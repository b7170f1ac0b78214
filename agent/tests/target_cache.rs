//! Target caching (CLIENT-CLI.md, "Download command"): a target already in the target dir
//! with the signed length and hashes is not fetched again; one that is missing, changed
//! locally or changed in a newer signed release is fetched (from `DIR/HASH.NAME` with
//! consistent snapshots, from its plain path without) and replaces the old copy under
//! the same name. Several targets are fetched in the order given.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_failure, assert_success, Client, Repo, Server};

fn target_requests(server: &Server) -> Vec<String> {
    server
        .take_log()
        .into_iter()
        .filter(|p| p.starts_with("/targets/"))
        .collect()
}

fn repo_with(targets: &[(&str, &[u8])]) -> Repo {
    let mut repo = Repo::new();
    for (name, content) in targets {
        repo.add_target("targets", name, content);
    }
    repo.release(&["targets"]);
    repo
}

#[test]
fn a_target_present_with_matching_hashes_is_not_fetched_again() {
    let repo = repo_with(&[("pos.bin", b"firmware 2.4.1")]);
    let server = Server::serve(&repo);
    let client = Client::new(&repo);

    assert_success(&client.cli_download(&server, &["pos.bin"]));
    assert_eq!(
        target_requests(&server),
        [format!("/{}", repo.signed_artifact_file("pos.bin"))]
    );
    let first = client.target_files();

    assert_success(&client.cli_download(&server, &["pos.bin"]));
    assert_eq!(target_requests(&server), Vec::<String>::new());
    assert_eq!(client.target_files(), first);

    // The library agrees: the cached copy is found.
    let mut updater = client.updater(&server).unwrap();
    let info = updater.find_target("pos.bin").unwrap();
    assert!(updater
        .cached_target("pos.bin", &info, &client.target_dir())
        .is_some());
}

#[test]
fn a_local_copy_that_changed_is_fetched_again_and_replaced() {
    let repo = repo_with(&[("pos.bin", b"firmware 2.4.1")]);
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    assert_success(&client.cli_download(&server, &["pos.bin"]));
    let (name, _) = client.target_files().into_iter().next().unwrap();
    server.take_log();

    for corrupt in [&b"firmware 2.4.X"[..], b"", b"firmware 2.4.1 and more"] {
        std::fs::write(client.target_dir().join(&name), corrupt).unwrap();
        assert_success(&client.cli_download(&server, &["pos.bin"]));
        assert_eq!(target_requests(&server).len(), 1);
        assert_eq!(
            client.target_files()[&name],
            repo.artifacts["pos.bin"],
            "after {corrupt:?}"
        );
    }
}

#[test]
fn a_new_signed_version_is_fetched_and_replaces_the_old_copy() {
    let mut repo = repo_with(&[("firmware/pos.bin", b"firmware 2.4.1")]);
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    assert_success(&client.cli_download(&server, &["firmware/pos.bin"]));
    server.take_log();

    repo.add_target("targets", "firmware/pos.bin", b"firmware 2.5.0");
    repo.release(&["targets"]);
    assert_success(&client.cli_download(&server, &["firmware/pos.bin"]));
    assert_eq!(
        target_requests(&server),
        [format!(
            "/{}",
            repo.signed_artifact_file("firmware/pos.bin")
        )]
    );
    let stored: Vec<Vec<u8>> = client.target_files().into_values().collect();
    assert_eq!(stored, vec![b"firmware 2.5.0".to_vec()]);
}

#[test]
fn a_tampered_new_version_leaves_the_old_verified_copy_alone() {
    let mut repo = repo_with(&[("pos.bin", b"firmware 2.4.1")]);
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    assert_success(&client.cli_download(&server, &["pos.bin"]));
    let before = client.target_files();

    repo.add_target("targets", "pos.bin", b"firmware 2.5.0");
    repo.release(&["targets"]);
    repo.write(&repo.signed_artifact_file("pos.bin"), b"malware! 2.5.0");
    assert_failure(
        &client.cli_download(&server, &["pos.bin"]),
        "pos.bin: sha256 hash mismatch",
    );
    assert_eq!(client.target_files(), before);
    assert_eq!(common::tree(&client.target_dir()).len(), 1);
}

#[test]
fn several_targets_are_fetched_in_the_order_given_and_only_when_needed() {
    let repo = repo_with(&[
        ("a.bin", b"aaaa"),
        ("b.bin", b"bbbb"),
        ("drivers/c.bin", b"cccc"),
    ]);
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    let order = ["b.bin", "drivers/c.bin", "a.bin"];

    assert_success(&client.cli_download(&server, &order));
    let expected: Vec<String> = order
        .iter()
        .map(|t| format!("/{}", repo.signed_artifact_file(t)))
        .collect();
    assert_eq!(target_requests(&server), expected);
    assert!(expected[1].starts_with("/targets/drivers/"), "{expected:?}");
    let mut stored: Vec<Vec<u8>> = client.target_files().into_values().collect();
    stored.sort();
    assert_eq!(
        stored,
        [b"aaaa".to_vec(), b"bbbb".to_vec(), b"cccc".to_vec()]
    );

    // Remove one: only that one is fetched again.
    let a_name = client
        .target_files()
        .into_iter()
        .find(|(_, v)| v == b"aaaa")
        .unwrap()
        .0;
    std::fs::remove_file(client.target_dir().join(a_name)).unwrap();
    assert_success(&client.cli_download(&server, &order));
    assert_eq!(target_requests(&server), [expected[2].clone()]);
}

#[test]
fn without_consistent_snapshots_targets_are_fetched_by_their_plain_path() {
    let mut repo = Repo::without_consistent_snapshot();
    repo.add_target("targets", "drivers/c.bin", b"cccc");
    repo.release(&["targets"]);
    let server = Server::serve(&repo);
    let client = Client::new(&repo);

    assert_success(&client.cli_download(&server, &["drivers/c.bin"]));
    assert_eq!(target_requests(&server), ["/targets/drivers/c.bin"]);
    assert_success(&client.cli_download(&server, &["drivers/c.bin"]));
    assert_eq!(target_requests(&server), Vec::<String>::new());
}

#[test]
fn target_names_with_dot_segments_stay_inside_the_target_dir() {
    let names = ["../escape.bin", "a/../../../escape2.bin", "..", "."];
    let mut repo = Repo::new();
    for name in names {
        repo.add_target("targets", name, name.as_bytes());
    }
    repo.release(&["targets"]);
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    let outside_before = common::tree(client.base());

    for name in names {
        let out = client.cli_download(&server, &[name]);
        if out.status.code() == Some(0) {
            // Downloaded: then under a single file name inside the target dir.
            assert!(
                client.target_files().values().any(|v| v == name.as_bytes()),
                "{name}"
            );
        } else {
            assert_eq!(out.status.code(), Some(1), "{name}");
        }
    }
    let mut outside_after = common::tree(client.base());
    outside_after.retain(|p| !p.starts_with("targets/") && !p.starts_with("metadata/"));
    let mut outside_before = outside_before;
    outside_before.retain(|p| !p.starts_with("metadata/"));
    outside_before.push("targets".into());
    outside_before.sort();
    assert_eq!(outside_after, outside_before);
    // Only regular files, no directories, inside the target dir.
    let inside = common::tree(&client.target_dir());
    assert_eq!(inside.len(), client.target_files().len(), "{inside:?}");
}
