//! The agent's local backup state: which chunks the store already holds and where, and the
//! head of the device's manifest chain. It is what makes backups incremental and resumable.
//!
//! Layout under the agent's state directory:
//!
//! ```text
//! STATE/backup/index.json             the last committed manifest's header, its packs and
//!                                     chunk locations (written atomically after the manifest)
//! STATE/backup/pending/PACKID.json    one file per pack stored since that manifest, written
//!                                     atomically right after the pack reached the store
//! STATE/backup/tmp/                   snapshot files (removed after each run, and leftovers
//!                                     of a killed run at the start of the next)
//! ```
//!
//! A run killed at any point leaves these files whole (every write is atomic), and the next
//! run starts from the index plus every pending pack: packs already stored are not sent again.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use otter_keys::atomic::write_atomic;
use otter_keys::envelope::{ChunkId, ChunkLocation, ManifestHeader, PackEntry, PackId, PackRef};
use serde::{Deserialize, Serialize};

/// Format number of `index.json` and pending files.
const INDEX_FORMAT: u32 = 1;

/// What went wrong reading or writing the local backup state.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// An I/O error.
    #[error("backup state: {what} {path}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A state file that does not parse, or belongs to another device.
    #[error("backup state file {path} is unusable: {reason} (remove it to start a full backup)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The committed index, as stored in `index.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexFile {
    format: u32,
    device_id: String,
    head: Option<ManifestHeader>,
    packs: Vec<PackRef>,
    chunks: BTreeMap<ChunkId, ChunkLocation>,
}

/// A pack stored since the last manifest, as stored in `pending/PACKID.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PendingFile {
    format: u32,
    device_id: String,
    pack: PackRef,
    entries: Vec<PackEntry>,
}

/// What the store holds, as far as this agent knows.
#[derive(Debug, Clone, Default)]
pub struct LocalIndex {
    /// The header of the device's last manifest, if any.
    pub head: Option<ManifestHeader>,
    /// Packs known to be stored, with their ciphertext lengths.
    pub packs: BTreeMap<PackId, u64>,
    /// Chunks known to be stored, and where.
    pub chunks: BTreeMap<ChunkId, ChunkLocation>,
    /// How many pending packs (stored, not yet in a manifest) were found on load.
    pub pending_packs: usize,
}

/// The backup state directory of one device.
#[derive(Debug, Clone)]
pub struct BackupState {
    dir: PathBuf,
    device_id: String,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> IndexError + 'a {
    move |source| IndexError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

impl BackupState {
    /// The backup state under the agent's `state_dir`, for `device_id`.
    pub fn new(state_dir: &Path, device_id: &str) -> Self {
        BackupState {
            dir: state_dir.join("backup"),
            device_id: device_id.to_owned(),
        }
    }

    /// `STATE/backup`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where snapshots are written.
    pub fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("index.json")
    }

    fn pending_dir(&self) -> PathBuf {
        self.dir.join("pending")
    }

    /// The header of the last committed manifest (`index.json`'s head), read without
    /// building the chunk map; `None` before the first backup.
    pub fn load_head(&self) -> Result<Option<ManifestHeader>, IndexError> {
        /// `index.json` with only its header read (the chunk map is skipped, not built).
        #[derive(Deserialize)]
        struct HeadOnly {
            format: u32,
            device_id: String,
            head: Option<ManifestHeader>,
            #[serde(rename = "packs")]
            _packs: serde::de::IgnoredAny,
            #[serde(rename = "chunks")]
            _chunks: serde::de::IgnoredAny,
        }
        let path = self.index_path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("cannot read", &path)(e)),
        };
        let file: HeadOnly = self.parse(&path, &bytes)?;
        self.check_owner(&path, file.format, &file.device_id)?;
        Ok(file.head)
    }

    /// Fails unless a state file has this format and belongs to this device.
    fn check_owner(&self, path: &Path, format: u32, device_id: &str) -> Result<(), IndexError> {
        if format != INDEX_FORMAT || device_id != self.device_id {
            return Err(IndexError::Corrupt {
                path: path.to_path_buf(),
                reason: format!(
                    "format {format} of device {device_id:?}, expected format {INDEX_FORMAT} \
                     of {:?}",
                    self.device_id
                ),
            });
        }
        Ok(())
    }

    /// Loads the committed index and every pending pack (stored, not yet in a manifest).
    pub fn load(&self) -> Result<LocalIndex, IndexError> {
        let mut index = LocalIndex::default();
        let path = self.index_path();
        match fs::read(&path) {
            Ok(bytes) => {
                let file: IndexFile = self.parse(&path, &bytes)?;
                self.check_owner(&path, file.format, &file.device_id)?;
                index.head = file.head;
                index.packs = file.packs.iter().map(|p| (p.id, p.length)).collect();
                index.chunks = file.chunks;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("cannot read", &path)(e)),
        }
        let dir = self.pending_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => Some(e),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("cannot list", &dir)(e)),
        };
        for entry in entries.into_iter().flatten() {
            let entry = entry.map_err(io_err("cannot list", &dir))?;
            let p = entry.path();
            if p.extension().and_then(|e| e.to_str()) != Some("json") {
                continue; // a temporary file of an interrupted write
            }
            let bytes = fs::read(&p).map_err(io_err("cannot read", &p))?;
            let pending: PendingFile = self.parse(&p, &bytes)?;
            if pending.format != INDEX_FORMAT || pending.device_id != self.device_id {
                continue;
            }
            index.packs.insert(pending.pack.id, pending.pack.length);
            for e in pending.entries {
                index.chunks.entry(e.chunk).or_insert(ChunkLocation {
                    pack: pending.pack.id,
                    offset: e.offset,
                    length: e.length,
                });
            }
            index.pending_packs += 1;
        }
        Ok(index)
    }

    fn parse<T: for<'de> Deserialize<'de>>(
        &self,
        path: &Path,
        bytes: &[u8],
    ) -> Result<T, IndexError> {
        serde_json::from_slice(bytes).map_err(|e| IndexError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Records, durably, that `pack` (with these chunk entries) is in the store.
    pub fn record_pack(&self, pack: PackRef, entries: &[PackEntry]) -> Result<(), IndexError> {
        let dir = self.pending_dir();
        fs::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
        let path = dir.join(format!("{}.json", pack.id));
        let file = PendingFile {
            format: INDEX_FORMAT,
            device_id: self.device_id.clone(),
            pack,
            entries: entries.to_vec(),
        };
        let bytes = serde_json::to_vec(&file).map_err(|e| IndexError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&path, &bytes, 0o600).map_err(io_err("cannot write", &path))
    }

    /// Commits the index of a manifest the store now holds, then forgets pending packs.
    pub fn commit(
        &self,
        head: &ManifestHeader,
        chunks: BTreeMap<ChunkId, ChunkLocation>,
    ) -> Result<(), IndexError> {
        fs::create_dir_all(&self.dir).map_err(io_err("cannot create", &self.dir))?;
        let path = self.index_path();
        let file = IndexFile {
            format: INDEX_FORMAT,
            device_id: self.device_id.clone(),
            head: Some(head.clone()),
            packs: head.packs.clone(),
            chunks,
        };
        let bytes = serde_json::to_vec(&file).map_err(|e| IndexError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&path, &bytes, 0o600).map_err(io_err("cannot write", &path))?;
        let dir = self.pending_dir();
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_packs_are_loaded_and_commit_forgets_them() {
        let dir = tempfile::tempdir().unwrap();
        let s = BackupState::new(dir.path(), "till-1");
        assert!(s.load().unwrap().head.is_none());
        let pack = PackRef {
            id: PackId::from_bytes([1; 32]),
            length: 100,
        };
        let chunk = ChunkId::from_bytes([2; 32]);
        s.record_pack(
            pack,
            &[PackEntry {
                chunk,
                offset: 0,
                length: 10,
            }],
        )
        .unwrap();
        let idx = s.load().unwrap();
        assert_eq!(idx.pending_packs, 1);
        assert_eq!(idx.chunks[&chunk].pack, pack.id);
        // Another device's state is refused.
        let other = BackupState::new(dir.path(), "till-2");
        assert!(other.load().unwrap().chunks.is_empty());
    }
}
