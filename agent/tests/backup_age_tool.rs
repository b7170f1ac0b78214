//! No lock-in: the standard `age` tool with the fleet recovery identity decrypts a pack and
//! a manifest body (cut out of the framed manifest by hand, as an admin would).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "backup_common.rs"]
mod common;

use std::fs;
use std::process::Command;

use common::{files_under, Terminal};
use otter_agent::backup::BackupStore;
use otter_keys::age::secrecy::ExposeSecret;
use otter_keys::envelope::{ManifestBody, SignedManifest};

fn age_decrypt(identity_file: &std::path::Path, file: &std::path::Path) -> Vec<u8> {
    let out = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(identity_file)
        .arg(file)
        .output()
        .expect("the `age` tool is installed");
    assert!(
        out.status.success(),
        "age -d {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn age_tool_opens_a_pack_and_a_manifest_body_with_the_recovery_identity() {
    let mut t = Terminal::fresh();
    t.write_only = true;
    t.backup();
    let id_file = t.dir.path().join("recovery.txt");
    fs::write(
        &id_file,
        format!("{}\n", t.recovery_id.to_string().expose_secret()),
    )
    .unwrap();

    // The manifest: magic, u32 header length, header, u32 signature length, signature,
    // then the age-encrypted body.
    let framed = t.store().get_manifest(&t.device_id, 1, 1 << 30).unwrap();
    assert_eq!(&framed[..8], b"OTTERMF1");
    let be = |at: usize| u32::from_be_bytes(framed[at..at + 4].try_into().unwrap()) as usize;
    let header_len = be(8);
    let sig_at = 12 + header_len;
    let body_at = sig_at + 4 + be(sig_at);
    let body_file = t.dir.path().join("body.age");
    fs::write(&body_file, &framed[body_at..]).unwrap();
    let body = ManifestBody::from_bytes(&age_decrypt(&id_file, &body_file), 1 << 20).unwrap();
    let parsed = SignedManifest::from_bytes(&framed, 1 << 30).unwrap();
    assert_eq!(body, parsed.open_body(&t.recovery_id, 1 << 30).unwrap());
    assert_eq!(body.page_count as usize, body.pages.len());

    // A pack: its plaintext holds the compressed pages at the body's locations.
    let pack_file = &files_under(&t.store_root().join("packs"))[0];
    let plain = age_decrypt(&id_file, pack_file);
    let pack_id = pack_file.file_name().unwrap().to_str().unwrap();
    let in_pack: Vec<_> = body
        .chunks
        .values()
        .filter(|l| l.pack.to_string() == pack_id)
        .collect();
    assert!(!in_pack.is_empty());
    let total: u64 = in_pack.iter().map(|l| u64::from(l.length)).sum();
    assert_eq!(total, plain.len() as u64);
    let first = in_pack.iter().min_by_key(|l| l.offset).unwrap();
    let page = zstd::bulk::decompress(
        &plain[first.offset as usize..(first.offset + u64::from(first.length)) as usize],
        body.page_size as usize,
    )
    .unwrap();
    assert_eq!(page.len(), body.page_size as usize);
}
