//! Replacement terminal and write-only fleets: the fleet recovery identity restores a
//! terminal's backup (page ids checked with the chunk key carried in the encrypted body);
//! in a write-only fleet the terminal's own key cannot read its backups.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "backup_common.rs"]
mod common;

use common::{dump, integrity_ok, Terminal};
use otter_agent::backup::{restore, RestoreError, RestoreOptions, Selector};
use otter_keys::envelope::EnvelopeError;

#[test]
fn recovery_identity_restores_on_a_replacement_terminal() {
    let mut t = Terminal::fresh();
    t.write_only = true;
    let rows = dump(&t.db);
    t.backup();

    // The dead terminal's own key cannot open a write-only backup.
    let out = t.dir.path().join("replacement.db");
    let err = t.restore(Selector::Latest, &out).unwrap_err();
    assert!(
        matches!(err, RestoreError::Envelope(EnvelopeError::Decrypt { .. })),
        "{err}"
    );
    assert!(!out.exists());

    // The replacement terminal restores with the recovery identity, knowing only the dead
    // terminal's device id and public key.
    let r = restore(
        &t.store(),
        &t.device_id,
        &t.signing.public_key(),
        &t.recovery_id,
        Selector::Latest,
        &out,
        &RestoreOptions::default(),
    )
    .unwrap();
    assert_eq!(r.sequence, 1);
    assert!(integrity_ok(&out));
    assert_eq!(dump(&out), rows);
}

#[test]
fn a_wrong_chunk_key_is_refused() {
    let t = Terminal::fresh();
    t.backup();
    let out = t.dir.path().join("r.db");
    let opts = RestoreOptions {
        chunk_key: Some(otter_keys::envelope::ChunkKey::generate()),
        ..RestoreOptions::default()
    };
    let err = restore(
        &t.store(),
        &t.device_id,
        &t.signing.public_key(),
        &t.terminal_id,
        Selector::Latest,
        &out,
        &opts,
    )
    .unwrap_err();
    assert!(err.to_string().contains("chunk id"), "{err}");
    assert!(!out.exists());
}
