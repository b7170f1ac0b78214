//! Where backups are kept: the [`BackupStore`] trait (packs by id, manifests by device and
//! sequence) and [`LocalDirStore`], its implementation on a local directory.
//!
//! The store is untrusted: restore checks everything it returns (pack hashes, signatures, the
//! chain). An HTTP implementation that talks to `otter-server` implements the same trait.
//!
//! Layout of a [`LocalDirStore`]:
//!
//! ```text
//! ROOT/packs/ab/abcdef…(64 hex)          one age file per pack, named by its SHA-256
//! ROOT/manifests/DEVICE/00000000000000000001.manifest
//!                                        one framed SignedManifest per sequence number
//! ```
//!
//! Every file is written to a temporary name, fsynced, then renamed (packs) or hard-linked
//! (manifests, so an existing sequence is never replaced) into place, and the directory is
//! fsynced. A reader therefore sees whole files or none.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use otter_keys::atomic::{sync_dir, write_atomic};
use otter_keys::envelope::PackId;

/// What went wrong talking to a backup store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("{what} is not in the backup store")]
    NotFound {
        /// The object.
        what: String,
    },
    /// A manifest with this device and sequence already exists (it is never replaced).
    #[error("{what} already exists in the backup store and is never replaced")]
    AlreadyExists {
        /// The object.
        what: String,
    },
    /// The object is larger than the caller allowed.
    #[error("{what} is {len} bytes, more than the {max} bytes expected; refused")]
    TooLarge {
        /// The object.
        what: String,
        /// Its size.
        len: u64,
        /// The cap.
        max: u64,
    },
    /// A device id that cannot name anything in this store.
    #[error("device id {device:?} cannot be used by this store: {reason}")]
    BadDevice {
        /// The device id (clipped).
        device: String,
        /// Why.
        reason: &'static str,
    },
    /// An I/O error on a path of a local store.
    #[error("{what} {path}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// An error from a remote store (transport, HTTP status).
    #[error("backup store: {0}")]
    Remote(String),
}

/// Storage of packs and manifests. Implementations must make each put atomic: a reader sees
/// the whole object or none, and an interrupted put leaves nothing visible. A store is
/// shared by threads (a restore fetches packs on several at once).
pub trait BackupStore: Sync {
    /// Stores a pack under its id (the SHA-256 of `bytes`). Storing an existing pack again
    /// is not an error.
    fn put_pack(&self, id: &PackId, bytes: &[u8]) -> Result<(), StoreError>;
    /// Whether a pack with this id is stored.
    fn has_pack(&self, id: &PackId) -> Result<bool, StoreError>;
    /// Reads a pack, refusing one longer than `max_len` bytes.
    fn get_pack(&self, id: &PackId, max_len: u64) -> Result<Vec<u8>, StoreError>;
    /// Stores a device's manifest number `sequence`. Refuses to replace an existing one
    /// ([`StoreError::AlreadyExists`]).
    fn put_manifest(&self, device: &str, sequence: u64, bytes: &[u8]) -> Result<(), StoreError>;
    /// Reads a device's manifest number `sequence`, refusing more than `max_len` bytes.
    fn get_manifest(
        &self,
        device: &str,
        sequence: u64,
        max_len: u64,
    ) -> Result<Vec<u8>, StoreError>;
    /// The sequence numbers of a device's stored manifests, ascending.
    fn list_manifests(&self, device: &str) -> Result<Vec<u64>, StoreError>;
}

/// A [`BackupStore`] in a local directory (a mounted disk, or tests).
#[derive(Debug, Clone)]
pub struct LocalDirStore {
    root: PathBuf,
}

impl LocalDirStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalDirStore { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a pack is kept.
    pub fn pack_path(&self, id: &PackId) -> PathBuf {
        let hex = id.to_string();
        self.root.join("packs").join(&hex[..2]).join(hex)
    }

    /// The directory of a device's manifests.
    pub fn manifest_dir(&self, device: &str) -> Result<PathBuf, StoreError> {
        Ok(self.root.join("manifests").join(device_dir_name(device)?))
    }

    /// Where a device's manifest number `sequence` is kept.
    pub fn manifest_path(&self, device: &str, sequence: u64) -> Result<PathBuf, StoreError> {
        Ok(self
            .manifest_dir(device)?
            .join(format!("{sequence:020}.manifest")))
    }
}

/// A device id as one directory name: letters, digits, `.`, `_`, `-` kept, every other
/// byte written `%XX`; names that would be `.` or `..` are refused.
fn device_dir_name(device: &str) -> Result<String, StoreError> {
    let bad = |reason| StoreError::BadDevice {
        device: device.chars().take(64).collect(),
        reason,
    };
    if device.is_empty() || device.len() > 256 {
        return Err(bad("it must be 1 to 256 bytes long"));
    }
    if device == "." || device == ".." {
        return Err(bad("it names a directory"));
    }
    let mut out = String::with_capacity(device.len());
    for b in device.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(out)
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a whole file, refusing more than `max_len` bytes, mapping "no such file".
fn read_capped(path: &Path, max_len: u64, what: String) -> Result<Vec<u8>, StoreError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StoreError::NotFound { what });
        }
        Err(e) => return Err(io_err("cannot open", path)(e)),
    };
    let mut out = Vec::new();
    file.take(max_len.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(io_err("cannot read", path))?;
    if out.len() as u64 > max_len {
        let len = fs::metadata(path).map_or(out.len() as u64, |m| m.len());
        return Err(StoreError::TooLarge {
            what,
            len,
            max: max_len,
        });
    }
    Ok(out)
}

impl BackupStore for LocalDirStore {
    fn put_pack(&self, id: &PackId, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.pack_path(id);
        if path.is_file() {
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io_err("cannot create", dir))?;
        }
        write_atomic(&path, bytes, 0o644).map_err(io_err("cannot write", &path))
    }

    fn has_pack(&self, id: &PackId) -> Result<bool, StoreError> {
        let path = self.pack_path(id);
        match fs::metadata(&path) {
            Ok(m) => Ok(m.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("cannot check", &path)(e)),
        }
    }

    fn get_pack(&self, id: &PackId, max_len: u64) -> Result<Vec<u8>, StoreError> {
        read_capped(&self.pack_path(id), max_len, format!("pack {id}"))
    }

    fn put_manifest(&self, device: &str, sequence: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let dir = self.manifest_dir(device)?;
        fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
        let path = self.manifest_path(device, sequence)?;
        let tmp = dir.join(format!(".{sequence:020}.tmp-{}", std::process::id()));
        let result = (|| {
            let mut f = File::create(&tmp).map_err(io_err("cannot create", &tmp))?;
            f.write_all(bytes).map_err(io_err("cannot write", &tmp))?;
            f.sync_all().map_err(io_err("cannot fsync", &tmp))?;
            drop(f);
            // A hard link never replaces an existing file: create-if-absent, atomically.
            match fs::hard_link(&tmp, &path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(StoreError::AlreadyExists {
                        what: format!("manifest #{sequence} of device {device:?}"),
                    });
                }
                Err(e) => return Err(io_err("cannot link", &path)(e)),
            }
            sync_dir(&dir).map_err(io_err("cannot fsync", &dir))
        })();
        let _ = fs::remove_file(&tmp);
        result
    }

    fn get_manifest(
        &self,
        device: &str,
        sequence: u64,
        max_len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        read_capped(
            &self.manifest_path(device, sequence)?,
            max_len,
            format!("manifest #{sequence} of device {device:?}"),
        )
    }

    fn list_manifests(&self, device: &str) -> Result<Vec<u64>, StoreError> {
        let dir = self.manifest_dir(device)?;
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("cannot list", &dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("cannot list", &dir))?;
            let name = entry.file_name();
            let Some(seq) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".manifest"))
                .filter(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            out.push(seq);
        }
        out.sort_unstable();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_and_manifests_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalDirStore::new(dir.path());
        let id = PackId::of(b"pack");
        assert!(!s.has_pack(&id).unwrap());
        s.put_pack(&id, b"pack").unwrap();
        s.put_pack(&id, b"pack").unwrap();
        assert!(s.has_pack(&id).unwrap());
        assert_eq!(s.get_pack(&id, 4).unwrap(), b"pack");
        assert!(matches!(
            s.get_pack(&id, 3),
            Err(StoreError::TooLarge { len: 4, .. })
        ));
        assert!(matches!(
            s.get_pack(&PackId::of(b"x"), 9),
            Err(StoreError::NotFound { .. })
        ));

        assert!(s.list_manifests("till/1").unwrap().is_empty());
        s.put_manifest("till/1", 2, b"two").unwrap();
        s.put_manifest("till/1", 1, b"one").unwrap();
        assert!(matches!(
            s.put_manifest("till/1", 1, b"uno"),
            Err(StoreError::AlreadyExists { .. })
        ));
        assert_eq!(s.list_manifests("till/1").unwrap(), vec![1, 2]);
        assert_eq!(s.get_manifest("till/1", 1, 10).unwrap(), b"one");
        assert!(s.manifest_dir("till/1").unwrap().ends_with("till%2F1"));
        assert!(s.manifest_dir("..").is_err());
        // No temporary file is left beside the manifests.
        assert_eq!(
            fs::read_dir(s.manifest_dir("till/1").unwrap())
                .unwrap()
                .count(),
            2
        );
    }
}
