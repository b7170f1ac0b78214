//! When the server is down or answers garbage (not JSON, not HTTP, an error status, a cut
//! response), the updater exits 1 with a message naming what failed, and stores nothing:
//! the metadata dir keeps exactly what it trusted, and no target appears. An error status
//! for the next root is a failure, not the end of the root chain (only 403/404 are).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_failure, assert_success, dead_url, tree, Client, Repo, Rule, Server};
use otter_agent::tuf::{FetchError, UpdateError};

fn repo() -> Repo {
    let mut repo = Repo::new();
    repo.add_target("targets", "pos.bin", b"firmware");
    repo.release(&["targets"]);
    repo
}

fn run_agent(client: &Client, metadata_url: &str, targets_url: &str) -> std::process::Output {
    let md_dir = client.metadata_dir();
    let td_dir = client.target_dir();
    client.agent(&[
        "--metadata-dir",
        md_dir.to_str().unwrap(),
        "--metadata-url",
        metadata_url,
        "--target-name",
        "pos.bin",
        "--target-base-url",
        targets_url,
        "--target-dir",
        td_dir.to_str().unwrap(),
        "download",
    ])
}

#[test]
fn a_server_that_is_down_changes_nothing() {
    let repo = repo();
    let url = dead_url();

    // A fresh client, and one that trusts everything already.
    let fresh = Client::new(&repo);
    let server = Server::serve(&repo);
    let updated = Client::new(&repo);
    assert_success(&updated.cli_refresh(&server));
    drop(server);

    for client in [&fresh, &updated] {
        let before = client.metadata_files();
        let out = run_agent(
            client,
            &format!("{url}/metadata"),
            &format!("{url}/targets"),
        );
        assert_failure(&out, &format!("{url}/metadata/"));
        assert_eq!(client.metadata_files(), before);
        assert!(tree(&client.target_dir()).is_empty());
    }

    let cfg = otter_agent::tuf::UpdaterConfig::new(&format!("{url}/metadata"));
    let err = fresh
        .updater_with(cfg, otter_keys::time::UtcTime::now())
        .unwrap()
        .refresh()
        .unwrap_err();
    assert!(
        matches!(&err, UpdateError::Fetch(FetchError::Transport { .. })),
        "{err:?}"
    );
}

#[test]
fn a_target_server_that_is_down_stores_no_target() {
    let repo = repo();
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    let out = run_agent(
        &client,
        &server.metadata_url(),
        &format!("{}/targets", dead_url()),
    );
    assert_failure(&out, "pos.bin");
    assert!(tree(&client.target_dir()).is_empty());
}

#[test]
fn garbage_metadata_is_refused_and_not_stored() {
    let garbage: [&[u8]; 4] = [
        b"",
        b"\x00\xff\xfe not json at all",
        b"{\"signed\": {\"_type\": \"timestamp\"",
        b"[1, 2, 3]",
    ];
    for (role, file) in [
        ("timestamp", "metadata/timestamp.json"),
        ("snapshot", "metadata/2.snapshot.json"),
        ("targets", "metadata/2.targets.json"),
    ] {
        for bytes in garbage {
            let repo = repo();
            repo.write(file, bytes);
            let server = Server::serve(&repo);
            let client = Client::new(&repo);
            let out = client.cli_refresh(&server);
            assert_eq!(out.status.code(), Some(1), "{file} {bytes:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(role), "{file} {bytes:?}: {stderr}");
            assert!(
                !client.metadata_names().contains(&format!("{role}.json")),
                "{file} {bytes:?}"
            );
            // Whatever was stored is a genuine file, byte for byte.
            for (name, stored) in client.metadata_files() {
                let genuine = match name.as_str() {
                    "root.json" => repo.root_bytes(1),
                    "timestamp.json" => repo.read("metadata/timestamp.json"),
                    "snapshot.json" => repo.read("metadata/2.snapshot.json"),
                    other => panic!("unexpected {other}"),
                };
                assert_eq!(stored, genuine, "{name}");
            }
        }
    }
}

#[test]
fn responses_that_are_not_http_or_not_ok_are_refused() {
    let rules = [
        (Rule::Raw(b"SSH-2.0-OpenSSH_9.6\r\n".to_vec()), ""),
        (Rule::Raw(b"\x16\x03\x01\x02\x00garbage".to_vec()), ""),
        (
            // Announces 1000 bytes, sends 10 and closes.
            Rule::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"signed\"".to_vec()),
            "",
        ),
        (Rule::Status(500), "HTTP 500"),
        (Rule::Status(503), "HTTP 503"),
        (Rule::Status(302), "HTTP 302"),
    ];
    for (rule, needle) in rules {
        let repo = repo();
        let server = Server::serve(&repo);
        let client = Client::new(&repo);
        assert_success(&client.cli_refresh(&server));
        let before = client.metadata_files();
        let mut repo = repo;
        repo.release(&["targets"]);
        server.set_rule("/metadata/timestamp.json", rule.clone());

        let out = client.cli_download(&server, &["pos.bin"]);
        assert_failure(&out, needle);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("timestamp.json"),
            "{rule:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(client.metadata_files(), before, "{rule:?}");
        assert!(tree(&client.target_dir()).is_empty(), "{rule:?}");
    }
}

#[test]
fn an_error_status_for_the_next_root_fails_instead_of_ending_the_chain() {
    let mut repo = repo();
    repo.bump_root();
    let server = Server::serve(&repo);
    server.set_rule("/metadata/2.root.json", Rule::Status(500));
    let client = Client::new(&repo);

    let out = client.cli_refresh(&server);
    assert_failure(&out, "2.root.json: HTTP 500");
    assert_eq!(client.metadata_names(), ["root.json"]);
    assert_eq!(server.log().len(), 1);

    // 403 and 404 both mean "no such version": the chain ends and the update goes on.
    for status in [403, 404] {
        server.set_rule("/metadata/2.root.json", Rule::Status(status));
        assert_success(&client.cli_refresh(&server));
        assert_eq!(client.metadata_files()["root.json"], repo.root_bytes(1));
    }
}
