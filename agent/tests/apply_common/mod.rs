//! Helpers shared by the apply tests: bundles built on the fly (tar + zstd), hostile
//! archives with raw headers, and trees read back for byte-for-byte comparison.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use otter_agent::apply::{ApplyConfig, Expected, Kind};
use sha2::{Digest, Sha256};

/// A bundle to build.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Component name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Kind name.
    pub kind: String,
    /// Payload files: path, contents, executable.
    pub files: Vec<(String, Vec<u8>, bool)>,
    /// Health argv.
    pub health: Option<Vec<String>>,
    /// Install argv.
    pub install: Option<Vec<String>>,
}

impl Spec {
    /// A small bundle whose files depend on the version.
    pub fn new(name: &str, version: &str) -> Spec {
        Spec {
            name: name.into(),
            version: version.into(),
            kind: "patch".into(),
            files: vec![
                (
                    "bin/app".into(),
                    format!("#!/bin/sh\necho {name} {version}\n").into_bytes(),
                    true,
                ),
                (
                    "etc/app.conf".into(),
                    format!("version = {version}\n").into_bytes(),
                    false,
                ),
                (format!("data/v{version}.txt"), vec![b'x'; 3000], false),
            ],
            health: None,
            install: None,
        }
    }

    /// Adds a shell script payload file.
    pub fn script(mut self, path: &str, body: &str) -> Spec {
        self.files.push((
            path.into(),
            format!("#!/bin/sh\n{body}\n").into_bytes(),
            true,
        ));
        self
    }

    /// Sets the health argv.
    pub fn health(mut self, argv: &[&str]) -> Spec {
        self.health = Some(argv.iter().map(|s| s.to_string()).collect());
        self
    }

    /// The manifest JSON.
    pub fn manifest(&self) -> Vec<u8> {
        let payload: Vec<serde_json::Value> = self
            .files
            .iter()
            .map(|(p, c, _)| {
                serde_json::json!({"path": p, "size": c.len(), "sha256": hex::encode(Sha256::digest(c))})
            })
            .collect();
        let mut m = serde_json::json!({
            "name": self.name, "kind": self.kind, "version": self.version,
            "hardware": ["pos-a"], "payload": payload,
        });
        if let Some(h) = &self.health {
            m["health"] = serde_json::json!(h);
        }
        if let Some(i) = &self.install {
            m["install"] = serde_json::json!(i);
        }
        serde_json::to_vec_pretty(&m).unwrap()
    }

    /// What the engine checks it against.
    pub fn expected(&self) -> Expected {
        Expected {
            name: self.name.clone(),
            version: semver::Version::parse(&self.version).unwrap(),
            kind: Kind::from_name(&self.kind).unwrap(),
            target: format!("{}-{}.tar.zst", self.name, self.version),
        }
    }

    /// Writes the bundle into `dir`; returns its path.
    pub fn build(&self, dir: &Path) -> PathBuf {
        let mut entries = vec![Raw::file("manifest.json", self.manifest(), 0o644)];
        for (p, c, x) in &self.files {
            entries.push(Raw::file(p, c.clone(), if *x { 0o755 } else { 0o644 }));
        }
        let path = dir.join(format!("{}-{}.tar.zst", self.name, self.version));
        write_raw(&path, &entries);
        path
    }

    /// The tree an install must produce: path -> (mode, contents; `None` for directories).
    pub fn tree(&self) -> Tree {
        let mut t = Tree::new();
        t.insert("manifest.json".into(), (0o644, Some(self.manifest())));
        for (p, c, x) in &self.files {
            let parts: Vec<&str> = p.split('/').collect();
            for i in 1..parts.len() {
                t.insert(parts[..i].join("/"), (0o755, None));
            }
            t.insert(p.clone(), (if *x { 0o755 } else { 0o644 }, Some(c.clone())));
        }
        t
    }
}

/// A tree: relative path -> (permission bits, contents or `None` for a directory).
pub type Tree = BTreeMap<String, (u32, Option<Vec<u8>>)>;

/// Reads the tree under `dir` (following `dir` itself if it is a symlink).
pub fn read_tree(dir: &Path) -> Tree {
    fn walk(base: &Path, rel: &str, out: &mut Tree) {
        let here = if rel.is_empty() {
            base.to_path_buf()
        } else {
            base.join(rel)
        };
        for e in fs::read_dir(&here).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let m = fs::symlink_metadata(e.path()).unwrap();
            let mode = m.permissions().mode() & 0o7777;
            if m.file_type().is_symlink() {
                // Recorded as its target (never followed below the top).
                let t = fs::read_link(e.path()).unwrap();
                out.insert(r, (0o120000, Some(t.to_string_lossy().as_bytes().to_vec())));
            } else if m.is_dir() {
                out.insert(r.clone(), (mode, None));
                walk(base, &r, out);
            } else {
                assert!(m.is_file(), "{r} is neither a file nor a directory");
                out.insert(r, (mode, Some(fs::read(e.path()).unwrap())));
            }
        }
    }
    let mut out = Tree::new();
    walk(dir, "", &mut out);
    out
}

/// One raw tar entry for hostile archives.
#[derive(Debug, Clone)]
pub struct Raw {
    /// Raw path bytes (written into the header as is).
    pub path: Vec<u8>,
    /// Entry type.
    pub kind: tar::EntryType,
    /// Contents.
    pub data: Vec<u8>,
    /// Mode.
    pub mode: u32,
    /// Link target bytes.
    pub link: Vec<u8>,
    /// Declared size when it is not the data's (size lies).
    pub size: Option<u64>,
}

impl Raw {
    /// A regular file.
    pub fn file(path: &str, data: Vec<u8>, mode: u32) -> Raw {
        Raw {
            path: path.as_bytes().to_vec(),
            kind: tar::EntryType::Regular,
            data,
            mode,
            link: vec![],
            size: None,
        }
    }
    /// Any other entry.
    pub fn special(path: &str, kind: tar::EntryType, link: &str) -> Raw {
        Raw {
            path: path.as_bytes().to_vec(),
            kind,
            data: vec![],
            mode: 0o644,
            link: link.as_bytes().to_vec(),
            size: None,
        }
    }
}

/// Writes `entries` as a zstd-compressed tar with raw (unchecked) headers.
pub fn write_raw(path: &Path, entries: &[Raw]) {
    let file = fs::File::create(path).unwrap();
    let enc = zstd::stream::write::Encoder::new(file, 3).unwrap();
    let mut b = tar::Builder::new(enc);
    for e in entries {
        let mut h = tar::Header::new_old();
        {
            let old = h.as_old_mut();
            old.name[..e.path.len()].copy_from_slice(&e.path);
            old.linkname[..e.link.len()].copy_from_slice(&e.link);
        }
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_size(e.size.unwrap_or(e.data.len() as u64));
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append(&h, e.data.as_slice()).unwrap();
    }
    let enc = b.into_inner().unwrap();
    enc.finish().unwrap().sync_all().unwrap();
}

/// Writes a bundle whose one payload file is `size` zero bytes streamed (not held in memory).
pub fn write_big(path: &Path, spec_name: &str, version: &str, size: u64) -> Expected {
    let mut hasher = Sha256::new();
    let mut left = size;
    let chunk = vec![0u8; 1 << 20];
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        hasher.update(&chunk[..n]);
        left -= n as u64;
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "name": spec_name, "kind": "firmware", "version": version, "hardware": ["pos-a"],
        "payload": [{"path": "big.img", "size": size, "sha256": hex::encode(hasher.finalize())}]
    }))
    .unwrap();
    let file = fs::File::create(path).unwrap();
    let enc = zstd::stream::write::Encoder::new(file, 1).unwrap();
    let mut b = tar::Builder::new(enc);
    let mut h = tar::Header::new_gnu();
    h.set_path("manifest.json").unwrap();
    h.set_size(manifest.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, manifest.as_slice()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_path("big.img").unwrap();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, std::io::repeat(0).take(size)).unwrap();
    b.into_inner().unwrap().finish().unwrap();
    Expected {
        name: spec_name.into(),
        version: semver::Version::parse(version).unwrap(),
        kind: Kind::Firmware,
        target: format!("{spec_name}-{version}.tar.zst"),
    }
}

/// A config with quick deadlines for tests.
pub fn quick_config() -> ApplyConfig {
    ApplyConfig {
        health_timeout_secs: 5,
        hook_timeout_secs: 5,
        ..ApplyConfig::default()
    }
}

/// `components/<name>/current` under `root`.
pub fn current(root: &Path, name: &str) -> PathBuf {
    root.join("components").join(name).join("current")
}

/// Where `current` points, if anywhere.
pub fn link(root: &Path, name: &str) -> Option<String> {
    fs::read_link(current(root, name))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// Copies a tree, keeping symlinks and modes.
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let src = e.path();
        let dst = to.join(e.file_name());
        let m = fs::symlink_metadata(&src).unwrap();
        if m.file_type().is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if m.is_dir() {
            copy_tree(&src, &dst);
            fs::set_permissions(&dst, m.permissions()).unwrap();
        } else {
            fs::copy(&src, &dst).unwrap();
        }
    }
}
