#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Hostile or wrong bundles are refused and change nothing: absolute paths, `..`, links,
//! devices, FIFOs, duplicates, decompression bombs, manifest mismatches, payload lies.
//! Also: a big bundle unpacks streaming.

mod apply_common;

use std::path::Path;

use apply_common::{current, quick_config, read_tree, write_big, write_raw, Raw, Spec};
use otter_agent::apply::{Applier, ApplyConfig, ApplyError};
use tar::EntryType;

/// Everything under the root except the journal files, to check nothing else changed.
fn snapshot(root: &Path) -> apply_common::Tree {
    read_tree(root)
        .into_iter()
        .filter(|(p, _)| !p.starts_with("journal.sqlite") && !p.starts_with("logs"))
        .collect()
}

/// Installs `good` 1.0.0, then tries `entries` as 2.0.0: must fail with a bundle error
/// containing `needle`, nothing changed.
fn refused(entries: Vec<Raw>, needle: &str) {
    refused_with(entries, needle, quick_config());
}

fn refused_with(entries: Vec<Raw>, needle: &str, config: ApplyConfig) {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let outside = work.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let (mut a, _) = Applier::open(&root, config).unwrap();
    let good = Spec::new("app", "1.0.0");
    a.install(&good.build(work.path()), &good.expected())
        .unwrap();
    let before = snapshot(&root);
    let bundle = work.path().join("hostile.tar.zst");
    write_raw(&bundle, &entries);
    let err = a
        .install(&bundle, &Spec::new("app", "2.0.0").expected())
        .unwrap_err();
    assert!(
        matches!(err, ApplyError::Bundle { .. } | ApplyError::Mismatch { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(needle), "{needle:?} not in: {err}");
    assert_eq!(
        snapshot(&root),
        before,
        "the install root changed after: {err}"
    );
    assert_eq!(read_tree(&current(&root, "app")), good.tree());
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "something escaped"
    );
    let h = a.history(1).unwrap();
    assert_eq!(h[0].state, "aborted");
    assert!(h[0].reason.as_deref().unwrap_or("").contains(needle));
    drop(a);
    let (a, rec) = Applier::open(&root, quick_config()).unwrap();
    assert!(rec.is_empty(), "{rec:?}");
    assert_eq!(a.installed().unwrap()["app"].to_string(), "1.0.0");
}

/// A valid 2.0.0 manifest plus its files, as raw entries, for mutation.
fn valid() -> (Spec, Vec<Raw>) {
    let s = Spec::new("app", "2.0.0");
    let mut e = vec![Raw::file("manifest.json", s.manifest(), 0o644)];
    for (p, c, x) in &s.files {
        e.push(Raw::file(p, c.clone(), if *x { 0o755 } else { 0o644 }));
    }
    (s, e)
}

#[test]
fn unsafe_paths_are_refused() {
    for bad in [
        "/etc/passwd",
        "../outside/x",
        "bin/../../outside/x",
        "./a",
        "a//b",
        "-rf",
    ] {
        let (_, mut e) = valid();
        e.push(Raw::file(bad, b"evil".to_vec(), 0o644));
        refused(e, "unsafe path");
    }
}

#[test]
fn links_devices_and_fifos_are_refused() {
    let cases = [
        (EntryType::Symlink, "../../../outside/x", "symbolic link"),
        (EntryType::Symlink, "etc/app.conf", "symbolic link"),
        (EntryType::Link, "etc/app.conf", "hard link"),
        (EntryType::Char, "", "character device"),
        (EntryType::Block, "", "block device"),
        (EntryType::Fifo, "", "FIFO"),
    ];
    for (kind, target, what) in cases {
        let (_, mut e) = valid();
        e.insert(1, Raw::special("data/evil", kind, target));
        refused(e, what);
    }
}

#[test]
fn duplicates_and_file_dir_clashes_are_refused() {
    let (_, mut e) = valid();
    e.push(Raw::file("etc/app.conf", b"second copy".to_vec(), 0o644));
    refused(e, "appears twice");
    let (_, mut e) = valid();
    e.push(Raw::file("bin/app/x", b"under a file".to_vec(), 0o644));
    refused(e, "");
}

#[test]
fn a_decompression_bomb_stops_at_the_cap() {
    let (_, mut e) = valid();
    e.push(Raw::file("zeros.bin", vec![0u8; 8 << 20], 0o644));
    let config = ApplyConfig {
        max_unpacked_bytes: 1 << 20,
        ..quick_config()
    };
    refused_with(e, "unpacks to more than 1048576 bytes", config);
}

#[test]
fn manifest_problems_are_refused() {
    // No manifest.
    let (_, e) = valid();
    refused(e[1..].to_vec(), "no manifest.json");
    // Malformed / unknown field.
    let (s, mut e) = valid();
    let mut m: serde_json::Value = serde_json::from_slice(&s.manifest()).unwrap();
    m["surprise"] = serde_json::json!(true);
    e[0] = Raw::file("manifest.json", serde_json::to_vec(&m).unwrap(), 0o644);
    refused(e, "malformed");
    // Another component, version or kind than the signed metadata says.
    for (field, value, needle) in [
        ("name", "other", "names component"),
        ("version", "2.0.1", "says version"),
        ("kind", "firmware", "says kind"),
    ] {
        let (s, mut e) = valid();
        let mut m: serde_json::Value = serde_json::from_slice(&s.manifest()).unwrap();
        m[field] = serde_json::json!(value);
        e[0] = Raw::file("manifest.json", serde_json::to_vec(&m).unwrap(), 0o644);
        refused(e, needle);
    }
}

#[test]
fn payload_lies_are_refused() {
    // A file's bytes changed: hash mismatch.
    let (_, mut e) = valid();
    e[2].data = b"version = 6.6.6\n".to_vec();
    refused(e, "another SHA-256");
    // A file's size differs.
    let (_, mut e) = valid();
    e[2].data.push(b'\n');
    refused(e, "bytes, manifest.json says");
    // A listed file is missing.
    let (_, mut e) = valid();
    e.remove(2);
    refused(e, "not in the archive");
    // An unlisted extra file.
    let (_, mut e) = valid();
    e.push(Raw::file("extra.bin", b"x".to_vec(), 0o644));
    refused(e, "not listed");
}

#[test]
fn garbage_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let (mut a, _) = Applier::open(&work.path().join("root"), quick_config()).unwrap();
    let p = work.path().join("garbage.tar.zst");
    std::fs::write(&p, b"this is not zstd at all").unwrap();
    let err = a
        .install(&p, &Spec::new("app", "1.0.0").expected())
        .unwrap_err();
    assert!(matches!(err, ApplyError::Bundle { .. }), "{err}");
    let err = a
        .install(
            &work.path().join("missing.tar.zst"),
            &Spec::new("app", "1.0.0").expected(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("missing.tar.zst"), "{err}");
    assert!(a.installed().unwrap().is_empty());
}

#[test]
fn a_big_bundle_unpacks_streaming() {
    let work = tempfile::tempdir().unwrap();
    let size: u64 = std::env::var("OTTER_APPLY_BIG_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64 << 20);
    let bundle = work.path().join("big.tar.zst");
    let expected = write_big(&bundle, "firmware-img", "1.0.0", size);
    let root = work.path().join("root");
    let (mut a, _) = Applier::open(&root, quick_config()).unwrap();
    a.install(&bundle, &expected).unwrap();
    let img = current(&root, "firmware-img").join("big.img");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), size);
}
