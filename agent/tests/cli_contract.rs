//! `otter-agent tuf` follows the client CLI of the TUF conformance suite (CLIENT-CLI.md):
//! `init` stores the trusted root as given and makes no request; `refresh` and `download`
//! take their options in any order; the exit status is 0 on success and 1 on any failure,
//! usage errors included, always with a message on stderr.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::{assert_failure, assert_success, md, Client, Repo, Server};

fn repo_with_target() -> Repo {
    let mut repo = Repo::new();
    repo.add_target(
        "targets",
        "firmware/pos.bin",
        b"pos terminal firmware 2.4.1",
    );
    repo.release(&["targets"]);
    repo
}

#[test]
fn init_stores_the_given_root_byte_for_byte_and_makes_no_request() {
    let repo = Repo::new();
    let server = Server::serve(&repo);
    let client = Client::empty();
    let root_file = client.base().join("initial_root.json");
    std::fs::write(&root_file, repo.root_bytes(1)).unwrap();
    let md_dir = client.metadata_dir();

    // Even when it is told where the repository is, init does not contact it.
    let out = client.agent(&[
        "--metadata-url",
        &server.metadata_url(),
        "--metadata-dir",
        md_dir.to_str().unwrap(),
        "init",
        root_file.to_str().unwrap(),
    ]);
    assert_success(&out);
    assert_eq!(
        client.metadata_files(),
        BTreeMap::from([("root.json".to_string(), repo.root_bytes(1))])
    );
    assert!(
        server.log().is_empty(),
        "init made requests: {:?}",
        server.log()
    );
}

#[test]
fn init_fails_with_exit_1_when_the_root_file_is_missing() {
    let client = Client::empty();
    let md_dir = client.metadata_dir();
    let missing = client.base().join("no-such-root.json");
    let out = client.agent(&[
        "--metadata-dir",
        md_dir.to_str().unwrap(),
        "init",
        missing.to_str().unwrap(),
    ]);
    assert_failure(&out, "no-such-root.json");
    assert!(client.metadata_files().is_empty());
}

#[test]
fn refresh_then_download_exit_0_with_the_specified_requests() {
    let repo = repo_with_target();
    let server = Server::serve(&repo);
    let client = Client::new(&repo);

    assert_success(&client.cli_refresh(&server));
    assert_eq!(
        server.take_log(),
        md(&[
            "2.root.json",
            "timestamp.json",
            "2.snapshot.json",
            "2.targets.json"
        ])
    );

    assert_success(&client.cli_download(&server, &["firmware/pos.bin"]));
    let mut expected = md(&["2.root.json", "timestamp.json"]);
    expected.push(format!(
        "/{}",
        repo.signed_artifact_file("firmware/pos.bin")
    ));
    assert_eq!(server.take_log(), expected);
    let stored: Vec<Vec<u8>> = client.target_files().into_values().collect();
    assert_eq!(stored, vec![repo.artifacts["firmware/pos.bin"].clone()]);
}

#[test]
fn options_may_come_in_any_order() {
    let repo = repo_with_target();
    let server = Server::serve(&repo);
    let murl = server.metadata_url();
    let turl = server.targets_url();

    let refresh_orders: Vec<Vec<&str>> = vec![
        vec!["--metadata-dir", "MD", "--metadata-url", &murl, "refresh"],
        vec!["--metadata-url", &murl, "--metadata-dir", "MD", "refresh"],
        vec!["refresh", "--metadata-url", &murl, "--metadata-dir", "MD"],
        vec!["--metadata-url", &murl, "refresh", "--metadata-dir", "MD"],
    ];
    for order in refresh_orders {
        let client = Client::new(&repo);
        let md_dir = client.metadata_dir();
        let args = fill(&order, md_dir.to_str().unwrap(), "");
        assert_success(&client.agent(&args));
        assert_eq!(client.version("targets.json"), Some(2), "{order:?}");
    }

    let download_orders: Vec<Vec<&str>> = vec![
        vec![
            "--metadata-dir",
            "MD",
            "--metadata-url",
            &murl,
            "--target-name",
            "firmware/pos.bin",
            "--target-base-url",
            &turl,
            "--target-dir",
            "TD",
            "download",
        ],
        vec![
            "download",
            "--target-dir",
            "TD",
            "--target-name",
            "firmware/pos.bin",
            "--target-base-url",
            &turl,
            "--metadata-url",
            &murl,
            "--metadata-dir",
            "MD",
        ],
        vec![
            "--target-base-url",
            &turl,
            "--target-dir",
            "TD",
            "download",
            "--metadata-dir",
            "MD",
            "--target-name",
            "firmware/pos.bin",
            "--metadata-url",
            &murl,
        ],
    ];
    for order in download_orders {
        let client = Client::new(&repo);
        let md_dir = client.metadata_dir();
        let td_dir = client.target_dir();
        let args = fill(&order, md_dir.to_str().unwrap(), td_dir.to_str().unwrap());
        assert_success(&client.agent(&args));
        let stored: Vec<Vec<u8>> = client.target_files().into_values().collect();
        assert_eq!(
            stored,
            vec![repo.artifacts["firmware/pos.bin"].clone()],
            "{order:?}"
        );
    }
}

/// Replaces the `MD` and `TD` placeholders.
fn fill<'a>(order: &[&'a str], md_dir: &'a str, td_dir: &'a str) -> Vec<&'a str> {
    order
        .iter()
        .map(|a| match *a {
            "MD" => md_dir,
            "TD" => td_dir,
            other => other,
        })
        .collect()
}

#[test]
fn usage_errors_exit_1_with_a_message_and_touch_nothing() {
    let repo = repo_with_target();
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    let before = client.metadata_files();
    let md_dir = client.metadata_dir();
    let md_dir = md_dir.to_str().unwrap();
    let murl = server.metadata_url();

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![], "Usage"),
        (vec!["--metadata-dir", md_dir, "frobnicate"], "frobnicate"),
        (
            vec!["--metadata-dir", md_dir, "--bogus", "refresh"],
            "--bogus",
        ),
        (
            vec!["--metadata-url", &murl, "refresh"],
            "--metadata-dir is required",
        ),
        (
            vec!["--metadata-dir", md_dir, "refresh"],
            "--metadata-url is required",
        ),
        (vec!["--metadata-dir", md_dir, "init"], "TRUSTED_ROOT"),
    ];
    for (args, needle) in cases {
        let out = client.agent(&args);
        assert_failure(&out, needle);
        assert_eq!(client.metadata_files(), before, "{args:?}");
    }
    assert!(
        server.log().is_empty(),
        "usage errors made requests: {:?}",
        server.log()
    );
}

#[test]
fn download_without_a_target_dir_or_name_exits_1() {
    let repo = repo_with_target();
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    let md_dir = client.metadata_dir();
    let md_dir = md_dir.to_str().unwrap();
    let murl = server.metadata_url();
    let turl = server.targets_url();

    let out = client.agent(&[
        "--metadata-dir",
        md_dir,
        "--metadata-url",
        &murl,
        "--target-name",
        "firmware/pos.bin",
        "--target-base-url",
        &turl,
        "download",
    ]);
    assert_failure(&out, "--target-dir is required");

    let td_dir = client.target_dir();
    let out = client.agent(&[
        "--metadata-dir",
        md_dir,
        "--metadata-url",
        &murl,
        "--target-base-url",
        &turl,
        "--target-dir",
        td_dir.to_str().unwrap(),
        "download",
    ]);
    assert_failure(&out, "--target-name is required");
    assert!(client.target_files().is_empty());
    assert!(server.log().iter().all(|p| !p.starts_with("/targets/")));
}

#[test]
fn refresh_before_init_exits_1_and_makes_no_request() {
    let repo = Repo::new();
    let server = Server::serve(&repo);
    let client = Client::empty();
    let out = client.cli_refresh(&server);
    assert_failure(&out, "run init first");
    assert!(server.log().is_empty());
    assert!(client.metadata_files().is_empty());
}

#[test]
fn help_exits_0() {
    let client = Client::empty();
    let out = client.agent(&["--help"]);
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for word in [
        "init",
        "refresh",
        "download",
        "--metadata-dir",
        "--target-name",
    ] {
        assert!(stdout.contains(word), "help lacks {word}: {stdout}");
    }
}
