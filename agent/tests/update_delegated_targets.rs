//! The update pass lists target entries with `Updater::list_targets`: the top-level role's
//! and those of delegated roles (per-vendor signing), each resolved by the delegation
//! search, so a delegated role's entry outside its delegated paths, or one hidden behind a
//! terminating delegation, is never offered to update selection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{delegated_role, Client, Repo, Server};

#[test]
fn delegated_entries_are_listed_only_where_their_delegation_covers_them() {
    let mut repo = Repo::new();
    // vendor-a may sign card-reader-*; vendor-b (after it, terminating for printer-*)
    // may sign printer-*; vendor-c comes after the terminating one.
    repo.delegate_role(
        "targets",
        delegated_role("vendor-a", &[101], 1, false, Some(&["card-reader-*"]), None),
        &[101],
    );
    repo.delegate_role(
        "targets",
        delegated_role("vendor-b", &[102], 1, true, Some(&["printer-*"]), None),
        &[102],
    );
    repo.delegate_role(
        "targets",
        delegated_role("vendor-c", &[103], 1, false, Some(&["*"]), None),
        &[103],
    );
    repo.add_target("targets", "pos-app-1.0.0.tar.zst", b"top-level");
    repo.add_target("vendor-a", "card-reader-2.0.0.tar.zst", b"reader");
    // Outside vendor-a's paths: not trusted from it.
    repo.add_target("vendor-a", "pos-app-9.9.9.tar.zst", b"forged");
    repo.add_target("vendor-b", "printer-1.1.0.tar.zst", b"printer");
    // Behind vendor-b's terminating delegation for printer-*: never reached.
    repo.add_target("vendor-c", "printer-6.6.6.tar.zst", b"hidden");
    repo.add_target("vendor-c", "scanner-3.0.0.tar.zst", b"scanner");
    for role in ["vendor-a", "vendor-b", "vendor-c"] {
        repo.publish_targets(role);
    }
    repo.release(&["targets"]);

    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    let mut updater = client.updater(&server).unwrap();
    let listed = updater.list_targets().unwrap();
    let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "card-reader-2.0.0.tar.zst",
            "pos-app-1.0.0.tar.zst",
            "printer-1.1.0.tar.zst",
            "scanner-3.0.0.tar.zst",
        ]
    );
    // Each entry is the one its covering role signed.
    let reader = &listed[0].1;
    assert_eq!(reader.length, b"reader".len() as u64);
    assert_eq!(
        reader.hashes["sha256"],
        otter_keys::hash::sha256_hex(b"reader")
    );
}
