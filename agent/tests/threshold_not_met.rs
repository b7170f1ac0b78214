//! Metadata with fewer valid signatures from distinct authorised keys than its role's
//! threshold is never trusted (spec 5.3.4, 5.4.2, 5.5.2, 5.6.3): a signature repeated, or
//! one key listed under two key ids, counts once. Nothing it says is stored.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_failure, assert_success, key, Client, Repo, Server, TIMESTAMP_SEED};
use otter_agent::tuf::{TrustError, UpdateError};
use otter_keys::crypto::KeyId;
use otter_keys::metadata::{MetadataError, RoleKeys};

/// A repository whose root v2 requires 2 of the timestamp keys 4 and 5, and a client that
/// trusts it (timestamp v2 signed by both).
fn two_of_two_timestamp() -> (Repo, Server, Client) {
    let mut repo = Repo::new();
    repo.set_role_keys("timestamp", &[TIMESTAMP_SEED, 5], 2);
    repo.bump_root();
    repo.update_timestamp();
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    assert_success(&client.cli_refresh(&server));
    assert_eq!(client.version("timestamp.json"), Some(2));
    (repo, server, client)
}

#[test]
fn one_of_two_required_timestamp_signatures_is_refused() {
    let (mut repo, server, client) = two_of_two_timestamp();
    let before = client.metadata_files();
    repo.signers
        .insert("timestamp".into(), vec![TIMESTAMP_SEED]);
    repo.update_timestamp();

    let out = client.cli_refresh(&server);
    assert_failure(
        &out,
        "timestamp metadata: 1 valid signature(s) from authorised keys, threshold is 2",
    );
    assert_eq!(client.metadata_files(), before);

    let err = client.refresh(&server).unwrap_err();
    assert!(
        matches!(
            &err,
            UpdateError::Trust(TrustError::Metadata {
                source: MetadataError::ThresholdNotMet {
                    valid: 1,
                    threshold: 2,
                    ..
                },
                ..
            })
        ),
        "{err:?}"
    );
    assert_eq!(client.metadata_files(), before);
}

#[test]
fn the_same_signature_twice_counts_once() {
    let (mut repo, server, client) = two_of_two_timestamp();
    let before = client.metadata_files();
    repo.signers
        .insert("timestamp".into(), vec![TIMESTAMP_SEED]);
    repo.update_timestamp();
    repo.edit_signatures("metadata/timestamp.json", |sigs| {
        let again = sigs[0].clone();
        sigs.push(again);
    });

    let out = client.cli_refresh(&server);
    assert_failure(
        &out,
        "timestamp metadata: 1 valid signature(s) from authorised keys, threshold is 2",
    );
    assert_eq!(client.metadata_files(), before);
}

#[test]
fn one_key_under_two_key_ids_counts_once() {
    // Root v2 lists the timestamp key 4 a second time under an invented key id and asks
    // for 2 signatures; the timestamp carries key 4's signature under both ids.
    let mut repo = Repo::new();
    let alias = KeyId("ab".repeat(32));
    repo.root
        .keys
        .insert(alias.clone(), key(TIMESTAMP_SEED).public_key());
    repo.root.roles.insert(
        "timestamp".into(),
        RoleKeys {
            keyids: vec![key(TIMESTAMP_SEED).key_id(), alias.clone()],
            threshold: 2,
            extra: Default::default(),
        },
    );
    repo.bump_root();
    repo.update_timestamp();
    repo.edit_signatures("metadata/timestamp.json", |sigs| {
        let mut relabelled = sigs[0].clone();
        relabelled["keyid"] = serde_json::json!(alias.0);
        sigs.push(relabelled);
    });
    let server = Server::serve(&repo);
    let client = Client::new(&repo);

    let out = client.cli_refresh(&server);
    assert_failure(
        &out,
        "timestamp metadata: 1 valid signature(s) from authorised keys, threshold is 2",
    );
    // Root v2 itself is legitimate and trusted; the timestamp is not.
    assert_eq!(client.metadata_names(), ["root.json"]);
    assert_eq!(client.metadata_files()["root.json"], repo.root_bytes(2));
}

#[test]
fn a_new_root_needs_a_threshold_of_the_trusted_roots_keys() {
    let mut repo = Repo::new();
    // v2: root role is 2 of keys 1 and 6.
    repo.set_role_keys("root", &[ROOT_A, ROOT_B], 2);
    repo.bump_root();
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    assert_success(&client.cli_refresh(&server));
    assert_eq!(client.metadata_files()["root.json"], repo.root_bytes(2));

    // v3 moves root to keys 7 and 8 (both sign) but only one of v2's two keys signs.
    repo.set_role_keys("root", &[7, 8], 2);
    repo.old_root_signers = vec![ROOT_A];
    repo.bump_root();
    let before = client.metadata_files();

    let out = client.cli_refresh(&server);
    assert_failure(
        &out,
        "root metadata: 1 valid signature(s) from authorised keys, threshold is 2",
    );
    assert_eq!(client.metadata_files(), before);
}

const ROOT_A: u8 = common::ROOT_SEED;
const ROOT_B: u8 = 6;

#[test]
fn a_new_root_needs_its_own_threshold() {
    let mut repo = Repo::new();
    // v2 asks for 2 of keys 11 and 12 but only 11 signs (with the old key 1).
    repo.set_role_keys("root", &[11, 12], 2);
    repo.signers.insert("root".into(), vec![11]);
    repo.bump_root();
    let server = Server::serve(&repo);
    let client = Client::new(&repo);
    let before = client.metadata_files();

    let out = client.cli_refresh(&server);
    assert_failure(
        &out,
        "root metadata: 1 valid signature(s) from authorised keys, threshold is 2",
    );
    assert_eq!(client.metadata_files(), before);
    assert_eq!(server.log().last().unwrap(), "/metadata/2.root.json");
}

#[test]
fn a_delegated_role_below_its_threshold_is_refused() {
    let mut repo = Repo::new();
    let role = common::delegated_role("vendor", &[20, 21], 2, false, Some(&["vendor/*"]), None);
    repo.delegate_role("targets", role, &[20, 21]);
    repo.add_target("vendor", "vendor/driver.bin", b"driver");
    repo.signers.insert("vendor".into(), vec![20]);
    repo.publish_targets("vendor");
    repo.release(&["targets"]);
    let server = Server::serve(&repo);
    let client = Client::new(&repo);

    let out = client.cli_download(&server, &["vendor/driver.bin"]);
    assert_failure(
        &out,
        "vendor metadata: 1 valid signature(s) from authorised keys, threshold is 2",
    );
    assert!(!client.metadata_names().contains(&"vendor.json".to_string()));
    assert!(client.target_files().is_empty());

    // With both signatures the same target is trusted.
    repo.signers.insert("vendor".into(), vec![20, 21]);
    repo.publish_targets("vendor");
    repo.release(&["targets"]);
    assert_success(&client.cli_download(&server, &["vendor/driver.bin"]));
    assert_eq!(client.target_files().len(), 1);
}
