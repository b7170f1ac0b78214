//! The metadata dir holds only `root.json`, `timestamp.json`, `snapshot.json`,
//! `targets.json` and `ROLE.json` for delegated roles (no versioned names, no leftovers),
//! each byte-identical to what was received and verified. Role names with `?`, `#`, `/`,
//! `..` or `%` are percent-quoted in request URLs and in file names, and nothing is ever
//! written outside the metadata dir.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::{assert_failure, assert_success, delegated_role, quote, tree, Client, Repo, Server};

#[test]
fn the_dir_holds_the_five_kinds_of_files_byte_identical_to_what_was_served() {
    let mut repo = Repo::new();
    repo.meta_hashes = true;
    repo.delegate("targets", "vendor", 20, &["vendor/*"]);
    repo.add_target("vendor", "vendor/driver.bin", b"driver 7");
    repo.publish_targets("vendor");
    repo.release(&["targets"]);
    repo.release(&["targets", "vendor"]);
    repo.bump_root();
    let server = Server::serve(&repo);
    let client = Client::new(&repo);

    assert_success(&client.cli_download(&server, &["vendor/driver.bin"]));
    let expected = BTreeMap::from([
        ("root.json".to_string(), repo.root_bytes(2)),
        (
            "timestamp.json".to_string(),
            repo.read("metadata/timestamp.json"),
        ),
        (
            "snapshot.json".to_string(),
            repo.read("metadata/3.snapshot.json"),
        ),
        (
            "targets.json".to_string(),
            repo.read("metadata/3.targets.json"),
        ),
        (
            "vendor.json".to_string(),
            repo.read("metadata/2.vendor.json"),
        ),
    ]);
    assert_eq!(client.metadata_files(), expected);
    // Nothing else at all: no directories, temporary or versioned files.
    let names: Vec<String> = expected.keys().cloned().collect();
    assert_eq!(tree(&client.metadata_dir()), names);
}

#[test]
fn failed_updates_leave_no_temporary_files() {
    let mut repo = Repo::new();
    repo.update_timestamp(); // v2
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    assert_success(&client.cli_refresh(&server));
    repo.timestamp.version = 0;
    repo.update_timestamp(); // a rollback
    assert_failure(&client.cli_refresh(&server), "rollback attack");
    server.serve_endless("/metadata/timestamp.json");
    assert_failure(&client.cli_refresh(&server), "more than");
    assert_eq!(
        tree(&client.metadata_dir()),
        [
            "root.json",
            "snapshot.json",
            "targets.json",
            "timestamp.json"
        ]
    );
}

const UNUSUAL: [&str; 8] = [
    "?",
    "#",
    "/delegatedrole",
    "../delegatedrole",
    "..",
    "../../../../escape",
    "%2F..%2Fencoded",
    "with space/and\\backslash",
];

#[test]
fn unusual_role_names_are_quoted_in_urls_and_file_names_and_never_escape() {
    let mut repo = Repo::new();
    for (i, name) in UNUSUAL.iter().enumerate() {
        let seed = 40 + i as u8;
        let r = delegated_role(name, &[seed], 1, false, Some(&["*"]), None);
        repo.delegate_role("targets", r, &[seed]);
        repo.publish_targets(name);
    }
    repo.release(&["targets"]);
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    let outside_before = tree(client.base());

    // Every role is searched for a target none lists.
    let out = client.cli_download(&server, &["nonexistent"]);
    assert_failure(&out, "is not listed in any trusted targets metadata");

    // Requested by quoted name, in delegation order.
    let log = server.log();
    let delegated: Vec<String> = UNUSUAL
        .iter()
        .map(|n| format!("/metadata/1.{}.json", quote(n)))
        .collect();
    assert_eq!(log[4..], delegated[..], "{log:#?}");
    assert!(
        delegated
            .iter()
            .all(|p| !p[10..].contains('/') && !p.contains('?') && !p.contains('#')),
        "{delegated:?}"
    );

    // Stored by quoted name, byte-identical, inside the metadata dir only.
    let files = client.metadata_files();
    assert_eq!(files.len(), 4 + UNUSUAL.len(), "{:?}", files.keys());
    for name in UNUSUAL {
        let file = format!("{}.json", quote(name));
        assert_eq!(
            files.get(&file),
            Some(&repo.read(&repo.metadata_file(name, 1))),
            "{name:?} -> {file}"
        );
    }
    let md_tree = tree(&client.metadata_dir());
    assert_eq!(md_tree.len(), files.len(), "{md_tree:?}");
    // Next to the metadata dir nothing appeared (the target dir may exist, empty).
    let mut outside_after = tree(client.base());
    outside_after.retain(|p| !p.starts_with("metadata/") && p != "targets");
    let mut outside_before = outside_before;
    outside_before.retain(|p| !p.starts_with("metadata/"));
    assert_eq!(outside_after, outside_before);
    assert!(client.target_files().is_empty());

    // A second run uses the stored files: no delegated role is fetched again.
    server.take_log();
    assert_failure(
        &client.cli_download(&server, &["nonexistent"]),
        "not listed",
    );
    assert!(server.log().iter().all(|p| !delegated.contains(p)));
}
