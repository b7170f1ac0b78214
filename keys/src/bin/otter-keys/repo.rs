//! Files of a ceremony directory: `N.root.json`, `keys/NAME.key` and `keys/NAME.pub.json`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use otter_keys::atomic::write_atomic;
use otter_keys::canonical::DEFAULT_MAX_METADATA_BYTES;
use otter_keys::crypto::SigningKey;
use otter_keys::keyfile::{self, LoadedKey};
use otter_keys::metadata::{Metadata, Role};

use crate::passphrase::PassphraseArgs;

/// Reads a metadata file (capped) as role `T`.
pub fn read_metadata<T: Role>(path: &Path) -> Result<Metadata<T>> {
    let bytes = read_capped(path)?;
    Metadata::<T>::from_bytes(&bytes, DEFAULT_MAX_METADATA_BYTES)
        .with_context(|| format!("{}", path.display()))
}

/// Reads a file of at most the metadata cap.
pub fn read_capped(path: &Path) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len > DEFAULT_MAX_METADATA_BYTES as u64 {
        bail!(
            "{}: {len} bytes, more than the {DEFAULT_MAX_METADATA_BYTES} bytes allowed",
            path.display()
        );
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Writes metadata atomically, world-readable (it is public).
pub fn write_metadata<T: Role>(path: &Path, md: &Metadata<T>) -> Result<()> {
    write_atomic(path, &md.to_bytes(), 0o644).with_context(|| format!("writing {}", path.display()))
}

/// The highest `N.root.json` in `dir`, with N.
pub fn latest_root(dir: &Path) -> Result<(u64, PathBuf)> {
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(n) = name
            .strip_suffix(".root.json")
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if best.as_ref().is_none_or(|(b, _)| n > *b) {
            best = Some((n, entry.path()));
        }
    }
    best.with_context(|| format!("no N.root.json in {}", dir.display()))
}

/// The keys folder of a ceremony directory.
pub fn keys_dir(dir: &Path) -> PathBuf {
    dir.join("keys")
}

/// Creates a key, saves it encrypted (0600) with its public part, returns it.
pub fn create_key(
    dir: &Path,
    label: &str,
    passphrase: &otter_keys::age::secrecy::SecretString,
    work_factor: u8,
) -> Result<SigningKey> {
    let key = SigningKey::generate();
    let path = dir.join(format!("{label}.key"));
    if path.exists() {
        bail!(
            "{} exists already: refusing to overwrite a key",
            path.display()
        );
    }
    keyfile::save_signing_key(&path, &key, label, passphrase, work_factor)?;
    keyfile::save_public_key(&dir.join(format!("{label}.pub.json")), &key.public_key())?;
    Ok(key)
}

/// Opens key files, asking for each one's passphrase as configured.
pub fn open_keys(paths: &[PathBuf], secrets: &PassphraseArgs) -> Result<Vec<LoadedKey>> {
    paths
        .iter()
        .map(|p| {
            let pass = secrets.existing(&p.display().to_string())?;
            Ok(keyfile::load_signing_key(p, &pass)?)
        })
        .collect()
}
