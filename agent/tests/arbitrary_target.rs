//! Arbitrary-target attacks are refused: a file the mirror serves that no trusted targets
//! metadata lists is never downloaded — its URL is not even requested — whether it is
//! simply put there, added to targets metadata without a valid signature, or listed by a
//! role nobody delegates to.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_failure, Client, Repo, Server};
use otter_agent::tuf::UpdateError;
use otter_keys::hash::hashes_of;

const EVIL: &[u8] = b"evil firmware";

fn no_target_requests(server: &Server) {
    let log = server.log();
    assert!(
        log.iter().all(|p| !p.starts_with("/targets/")),
        "a target was requested: {log:?}"
    );
}

#[test]
fn a_target_no_metadata_lists_is_refused_without_a_request() {
    let mut repo = Repo::new();
    repo.add_target("targets", "firmware/good.bin", b"good");
    repo.release(&["targets"]);
    // The mirror also serves an unlisted file at both kinds of path.
    repo.write("targets/firmware/evil.bin", EVIL);
    repo.write(&repo.artifact_file("firmware/evil.bin", EVIL), EVIL);
    let server = Server::serve(&repo);
    let client = Client::new(&repo);

    let out = client.cli_download(&server, &["firmware/evil.bin"]);
    assert_failure(
        &out,
        "target \"firmware/evil.bin\" is not listed in any trusted targets metadata",
    );
    assert!(common::tree(&client.target_dir()).is_empty());
    no_target_requests(&server);

    let err = client.download(&server, "firmware/evil.bin").unwrap_err();
    assert!(
        matches!(&err, UpdateError::UnknownTarget(t) if t == "firmware/evil.bin"),
        "{err:?}"
    );
    assert!(common::tree(&client.target_dir()).is_empty());
    no_target_requests(&server);
}

#[test]
fn a_target_added_to_targets_metadata_without_its_key_is_refused() {
    let mut repo = Repo::new();
    repo.add_target("targets", "good.bin", b"good");
    repo.release(&["targets"]);
    repo.write(&repo.artifact_file("evil.bin", EVIL), EVIL);
    // The mirror adds an entry to the current targets metadata, keeping its signature.
    repo.edit_signed(&repo.current_file("targets"), |signed| {
        signed["targets"]["evil.bin"] = serde_json::json!({
            "length": EVIL.len(),
            "hashes": hashes_of(EVIL),
        });
    });
    let server = Server::serve(&repo);
    let client = Client::new(&repo);

    let out = client.cli_download(&server, &["evil.bin"]);
    assert_failure(
        &out,
        "targets metadata: 0 valid signature(s) from authorised keys, threshold is 1",
    );
    assert_eq!(
        client.metadata_names(),
        ["root.json", "snapshot.json", "timestamp.json"]
    );
    assert!(common::tree(&client.target_dir()).is_empty());
    no_target_requests(&server);
}

#[test]
fn a_role_nobody_delegates_to_is_never_consulted() {
    let mut repo = Repo::new();
    // "rogue" has metadata, a key, and a listing in snapshot, but no delegation.
    repo.delegate("targets", "rogue", 50, &["*"]);
    repo.add_target("rogue", "evil.bin", EVIL);
    repo.publish_targets("rogue");
    repo.targets.get_mut("targets").unwrap().delegations = None;
    repo.release(&["targets"]);
    assert!(repo.snapshot.meta.contains_key("rogue.json"));
    let server = Server::serve(&repo);
    let client = Client::new(&repo);

    let out = client.cli_download(&server, &["evil.bin"]);
    assert_failure(&out, "is not listed in any trusted targets metadata");
    assert!(!server.log().iter().any(|p| p.contains("rogue")));
    assert!(!client.metadata_names().contains(&"rogue.json".into()));
    assert!(common::tree(&client.target_dir()).is_empty());
    no_target_requests(&server);
}
