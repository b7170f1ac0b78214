//! Refusals: a tampered pack or manifest, the wrong identity, the wrong device key, a broken
//! chain, a replayed manifest, a deleted manifest and a corrupt database are refused with a
//! clear error, and the live database is left exactly as it was.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "backup_common.rs"]
mod common;

use std::fs;
use std::path::PathBuf;

use common::{files_under, sha256_file, Terminal};
use otter_agent::backup::{BackupStore, RestoreError, Selector};
use otter_keys::age::x25519::Identity;
use otter_keys::crypto::SigningKey;
use otter_keys::envelope::{ManifestFields, SignedManifest};

/// Restores over the live database expecting a refusal; checks the live file is untouched
/// and nothing is left beside it. Returns the error text.
fn refused(t: &Terminal, attempt: impl FnOnce() -> Result<(), RestoreError>) -> String {
    let before = sha256_file(&t.db);
    let siblings = |t: &Terminal| -> Vec<PathBuf> {
        fs::read_dir(t.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    };
    let mut listed = siblings(t);
    let err = attempt().expect_err("the restore must be refused");
    let text = err.to_string();
    assert_eq!(sha256_file(&t.db), before, "live database changed: {text}");
    let mut now = siblings(t);
    listed.sort();
    now.sort();
    assert_eq!(now, listed, "files left beside the live database: {text}");
    assert!(
        text.contains("not touched"),
        "the error must say the live database is untouched: {text}"
    );
    println!("refused as expected: {text}");
    text
}

fn packs(t: &Terminal) -> Vec<PathBuf> {
    files_under(&t.store_root().join("packs"))
}

#[test]
fn tampered_pack_is_refused() {
    let t = Terminal::fresh();
    t.backup();
    let pack = packs(&t).remove(0);
    let mut bytes = fs::read(&pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&pack, &bytes).unwrap();
    let text = refused(&t, || t.restore(Selector::Latest, &t.db).map(drop));
    assert!(text.contains("SHA-256"), "{text}");
    // Truncated, too.
    fs::write(&pack, &bytes[..mid]).unwrap();
    refused(&t, || t.restore(Selector::Latest, &t.db).map(drop));
    // Missing.
    fs::remove_file(&pack).unwrap();
    let text = refused(&t, || t.restore(Selector::Latest, &t.db).map(drop));
    assert!(text.contains("not in the backup store"), "{text}");
}

#[test]
fn tampered_manifest_is_refused() {
    let t = Terminal::fresh();
    t.backup();
    let path = t.store().manifest_path(&t.device_id, 1).unwrap();
    let good = fs::read(&path).unwrap();
    // In the signed header (after magic and length), in the body, and truncated.
    for (pos, needle) in [(40usize, "manifest"), (good.len() - 10, "body")] {
        let mut bad = good.clone();
        bad[pos] ^= 0x01;
        fs::write(&path, &bad).unwrap();
        let text = refused(&t, || t.restore(Selector::Latest, &t.db).map(drop));
        assert!(text.contains(needle), "{text}");
    }
    fs::write(&path, &good[..good.len() - 1]).unwrap();
    refused(&t, || t.restore(Selector::Latest, &t.db).map(drop));
}

#[test]
fn wrong_identity_and_wrong_device_key_are_refused() {
    let t = Terminal::fresh();
    t.backup();
    let other = Identity::generate();
    let text = refused(&t, || {
        otter_agent::backup::restore(
            &t.store(),
            &t.device_id,
            &t.signing.public_key(),
            &other,
            Selector::Latest,
            &t.db,
            &Default::default(),
        )
        .map(drop)
    });
    assert!(text.contains("wrong key or damaged file"), "{text}");
    let text = refused(&t, || {
        otter_agent::backup::restore(
            &t.store(),
            &t.device_id,
            &SigningKey::generate().public_key(),
            &t.terminal_id,
            Selector::Latest,
            &t.db,
            &Default::default(),
        )
        .map(drop)
    });
    assert!(text.contains("signature does not verify"), "{text}");
}

#[test]
fn broken_chain_replay_and_deleted_manifest_are_refused() {
    let t = Terminal::fresh();
    t.backup();
    t.backup();
    let store = t.store();
    let m2 = SignedManifest::from_bytes(
        &store.get_manifest(&t.device_id, 2, 1 << 30).unwrap(),
        1 << 30,
    )
    .unwrap();
    let body = m2.open_body(&t.terminal_id, 1 << 30).unwrap();

    // #3 signed by the device, but not chained to #2.
    let mut fields =
        ManifestFields::after(&m2.header, m2.header.created, m2.header.packs.clone()).unwrap();
    fields.previous = Some("ab".repeat(32));
    let forged =
        SignedManifest::seal(fields, &body, &t.signing, &[t.terminal_id.to_public()]).unwrap();
    store
        .put_manifest(&t.device_id, 3, &forged.to_bytes().unwrap())
        .unwrap();
    let text = refused(&t, || t.restore(Selector::Latest, &t.db).map(drop));
    assert!(text.contains("chain broken"), "{text}");
    let p3 = store.manifest_path(&t.device_id, 3).unwrap();
    fs::remove_file(&p3).unwrap();

    // An old manifest replayed as the newest.
    fs::copy(store.manifest_path(&t.device_id, 1).unwrap(), &p3).unwrap();
    let text = refused(&t, || t.restore(Selector::Latest, &t.db).map(drop));
    assert!(text.contains("moved or replayed"), "{text}");
    fs::remove_file(&p3).unwrap();

    // A deleted middle manifest: the chain 1 -> 3 has a gap.
    t.backup();
    fs::remove_file(store.manifest_path(&t.device_id, 2).unwrap()).unwrap();
    let text = refused(&t, || t.restore(Selector::Latest, &t.db).map(drop));
    assert!(text.contains("does not follow"), "{text}");
    // A deleted first manifest.
    fs::remove_file(store.manifest_path(&t.device_id, 1).unwrap()).unwrap();
    let text = refused(&t, || t.restore(Selector::Latest, &t.db).map(drop));
    assert!(text.contains("missing or were deleted"), "{text}");
}

#[test]
fn a_backup_of_a_corrupt_database_is_not_restored() {
    let t = Terminal::fresh();
    let good_db = t.dir.path().join("good.db");
    fs::copy(&t.db, &good_db).unwrap();
    // Damage a page in the middle of the file (b-tree pages of the table and its index).
    let mut bytes = fs::read(&t.db).unwrap();
    let page = 4096;
    let victim = (bytes.len() / page / 2) * page;
    for b in &mut bytes[victim + 8..victim + 200] {
        *b = 0xff;
    }
    fs::write(&t.db, &bytes).unwrap();
    match otter_agent::backup::run_backup(&t.config(), &t.keys(), &t.store()) {
        Err(e) => println!("backup of the corrupt database refused: {e}"),
        Ok(_) => {
            // Put the good database back as the live one; the corrupt backup must not
            // replace it.
            fs::copy(&good_db, &t.db).unwrap();
            let text = refused(&t, || t.restore(Selector::Latest, &t.db).map(drop));
            assert!(text.contains("integrity_check"), "{text}");
        }
    }
}
