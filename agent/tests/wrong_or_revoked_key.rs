//! Metadata signed by the wrong key, or by a key a later root revoked, is never trusted:
//! spec 5.3.4 (root), 5.4.2 (timestamp), 5.5.2 (snapshot), 5.6.3 (targets and delegated
//! roles: only the keys the delegating role names count). Nothing it says is stored.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_failure, assert_success, md, Client, Repo, Server, ROOT_SEED};
use otter_agent::tuf::{TrustError, UpdateError};
use otter_keys::metadata::MetadataError;

const STRANGER: u8 = 66;

#[test]
fn timestamp_signed_by_a_key_root_does_not_list_is_refused() {
    let mut repo = Repo::new();
    repo.signers.insert("timestamp".into(), vec![STRANGER]);
    repo.update_timestamp();
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    let before = client.metadata_files();

    let out = client.cli_refresh(&server);
    assert_failure(
        &out,
        "timestamp metadata: 0 valid signature(s) from authorised keys, threshold is 1",
    );
    assert_eq!(client.metadata_files(), before);
    assert_eq!(server.take_log(), md(&["2.root.json", "timestamp.json"]));

    let err = client.refresh(&server).unwrap_err();
    assert!(
        matches!(
            &err,
            UpdateError::Trust(TrustError::Metadata {
                role,
                source: MetadataError::ThresholdNotMet { valid: 0, threshold: 1, .. },
            }) if role == "timestamp"
        ),
        "{err:?}"
    );
    assert_eq!(client.metadata_files(), before);
}

#[test]
fn snapshot_or_targets_signed_by_another_roles_key_is_refused() {
    // The timestamp key is listed in root, but not for snapshot or targets.
    for role in ["snapshot", "targets"] {
        let mut repo = Repo::new();
        repo.signers
            .insert(role.into(), vec![common::TIMESTAMP_SEED]);
        if role == "targets" {
            repo.release(&["targets"]);
        } else {
            repo.update_snapshot();
        }
        let server = Server::serve(&repo);
        let client = Client::new(&repo);

        let out = client.cli_refresh(&server);
        assert_failure(
            &out,
            &format!("{role} metadata: 0 valid signature(s) from authorised keys, threshold is 1"),
        );
        let file = format!("{role}.json");
        assert!(
            !client.metadata_names().contains(&file),
            "{file} was stored: {:?}",
            client.metadata_names()
        );
    }
}

#[test]
fn timestamp_signed_by_a_key_revoked_in_root_v2_is_refused() {
    let mut repo = Repo::new();
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    assert_success(&client.cli_refresh(&server));
    let trusted_timestamp = client.metadata_files()["timestamp.json"].clone();

    // Root v2 replaces the timestamp key 4 with 14: key 4 is revoked.
    repo.set_role_keys("timestamp", &[14], 1);
    repo.bump_root();
    // Whoever still holds key 4 publishes a new timestamp with it.
    repo.signers
        .insert("timestamp".into(), vec![common::TIMESTAMP_SEED]);
    repo.update_timestamp();

    let out = client.cli_refresh(&server);
    assert_failure(
        &out,
        "timestamp metadata: 0 valid signature(s) from authorised keys, threshold is 1",
    );
    // The legitimate root v2 is trusted; the timestamp signed by the revoked key is not
    // stored, and the old one is gone too (5.3.11: its key was rotated away).
    assert_eq!(client.metadata_files()["root.json"], repo.root_bytes(2));
    assert!(!client.metadata_files().contains_key("timestamp.json"));
    assert_ne!(
        trusted_timestamp,
        repo.read(&repo.current_file("timestamp"))
    );

    // Signed by the new key, the same update is accepted.
    repo.signers.insert("timestamp".into(), vec![14]);
    repo.update_timestamp();
    assert_success(&client.cli_refresh(&server));
    assert_eq!(client.version("timestamp.json"), Some(3));
}

#[test]
fn root_signed_only_by_a_revoked_root_key_is_refused() {
    let mut repo = Repo::new();
    // v2 moves the root role from key 1 to key 11 (signed by both).
    repo.set_role_keys("root", &[11], 1);
    repo.bump_root();
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    assert_success(&client.cli_refresh(&server));
    assert_eq!(client.metadata_files()["root.json"], repo.root_bytes(2));

    // Whoever holds the revoked key 1 publishes v3 handing timestamp to their own key.
    repo.set_role_keys("timestamp", &[77], 1);
    repo.signers.insert("root".into(), vec![ROOT_SEED]);
    repo.bump_root();
    repo.update_timestamp();
    let before = client.metadata_files();

    let out = client.cli_refresh(&server);
    assert_failure(
        &out,
        "root metadata: 0 valid signature(s) from authorised keys, threshold is 1",
    );
    assert_eq!(client.metadata_files(), before);
    // The update stopped at root: timestamp was not even requested.
    assert_eq!(server.log().last().unwrap(), "/metadata/3.root.json");
}

#[test]
fn targets_signed_by_a_revoked_targets_key_is_refused() {
    let mut repo = Repo::new();
    repo.add_target("targets", "pos.bin", b"genuine");
    repo.release(&["targets"]);
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    assert_success(&client.cli_refresh(&server));

    repo.set_role_keys("targets", &[12], 1);
    repo.bump_root();
    repo.signers
        .insert("targets".into(), vec![common::TARGETS_SEED]);
    repo.add_target("targets", "pos.bin", b"malware");
    repo.release(&["targets"]);
    let trusted_targets = client.metadata_files()["targets.json"].clone();

    let out = client.cli_download(&server, &["pos.bin"]);
    assert_failure(
        &out,
        "targets metadata: 0 valid signature(s) from authorised keys, threshold is 1",
    );
    assert_eq!(client.metadata_files()["targets.json"], trusted_targets);
    assert!(client.target_files().is_empty());
    assert!(server.log().iter().all(|p| !p.starts_with("/targets/")));
}

#[test]
fn delegated_role_signed_by_a_key_its_delegation_does_not_name_is_refused() {
    // Neither a stranger's key nor the delegating role's own key may sign for the
    // delegated role: only the keys its delegation names.
    for signer in [STRANGER, common::TARGETS_SEED] {
        let mut repo = Repo::new();
        repo.delegate("targets", "vendor", 20, &["vendor/*"]);
        repo.add_target("vendor", "vendor/driver.bin", b"driver");
        repo.signers.insert("vendor".into(), vec![signer]);
        repo.publish_targets("vendor");
        repo.release(&["targets"]);
        let server = Server::serve(&repo);
        let client = Client::new(&repo);

        let out = client.cli_download(&server, &["vendor/driver.bin"]);
        assert_failure(
            &out,
            "vendor metadata: 0 valid signature(s) from authorised keys, threshold is 1",
        );
        assert!(!client.metadata_names().contains(&"vendor.json".to_string()));
        assert!(client.target_files().is_empty());
        assert!(server.log().iter().all(|p| !p.starts_with("/targets/")));
    }
}

#[test]
fn a_signature_over_other_contents_is_refused() {
    // The timestamp is edited after signing (a later expiry): the right key id, a signature
    // that no longer verifies.
    let repo = Repo::new();
    repo.edit_signed("metadata/timestamp.json", |s| {
        s["expires"] = serde_json::json!("2099-01-01T00:00:00Z");
    });
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    let out = client.cli_refresh(&server);
    assert_failure(
        &out,
        "timestamp metadata: 0 valid signature(s) from authorised keys, threshold is 1",
    );
    assert_eq!(client.metadata_names(), ["root.json"]);
}
