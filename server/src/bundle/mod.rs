//! Bundles: a zstd-compressed tar holding `manifest.json` and the payload files it lists.
//! [`validate`] reads an uploaded bundle once, streaming, and refuses anything hostile
//! before it can be published: entries that are not plain files or directories (links,
//! devices, FIFOs), absolute or `..` paths, duplicate entries, more unpacked bytes than the
//! cap (decompression bombs stop at the cap, whatever the archive claims), a manifest that
//! is missing or malformed, and payload files that differ from the manifest's list.
//!
//! Blocking: call it off the async executor.

pub mod manifest;

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

pub use manifest::{Kind, Manifest, ManifestError, PayloadFile};

/// Limits applied while reading a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes the tar stream may decompress to (headers included).
    pub max_unpacked_bytes: u64,
    /// Most entries in the tar.
    pub max_entries: usize,
}

/// The zstd window a bundle may use: 2^27 = 128 MiB of decoder memory at most.
pub const MAX_WINDOW_LOG: u32 = 27;

/// Why a bundle was refused. [`BundleError::code`] is the stable machine code.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Not zstd, or corrupt.
    #[error("the bundle is not a valid zstd stream: {0}")]
    NotZstd(String),
    /// Not a tar, or corrupt.
    #[error("the bundle is not a valid tar archive: {0}")]
    NotTar(String),
    /// Unpacks to more than the cap.
    #[error("the bundle unpacks to more than {limit} bytes; refused (raise publishing.max_unpacked_bytes if it is genuine)")]
    TooLargeUnpacked {
        /// The cap.
        limit: u64,
    },
    /// More entries than the cap.
    #[error("the bundle holds more than {limit} entries")]
    TooManyEntries {
        /// The cap.
        limit: usize,
    },
    /// An entry's path is absolute, has `..`, or other unsafe parts.
    #[error("tar entry {path:?} has an unsafe path (absolute, '..', or characters outside A-Z a-z 0-9 . _ + -)")]
    UnsafePath {
        /// The path (shortened).
        path: String,
    },
    /// An entry is a link, device, FIFO or other special file.
    #[error("tar entry {path:?} is a {what}; bundles hold only regular files and directories")]
    ForbiddenEntry {
        /// The path (shortened).
        path: String,
        /// What it is.
        what: String,
    },
    /// The same path twice.
    #[error("tar entry {path:?} appears twice")]
    DuplicateEntry {
        /// The path.
        path: String,
    },
    /// No `manifest.json` at the top.
    #[error("the bundle has no manifest.json at its top level")]
    ManifestMissing,
    /// The manifest is bigger than allowed.
    #[error("manifest.json is larger than {} bytes", manifest::MAX_MANIFEST_BYTES)]
    ManifestTooLarge,
    /// The manifest is malformed or breaks a rule.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The files differ from the manifest's payload list.
    #[error("payload does not match manifest.json: {0}")]
    PayloadMismatch(String),
    /// Reading the uploaded file failed.
    #[error("reading the uploaded bundle: {0}")]
    Io(io::Error),
}

impl BundleError {
    /// The stable machine code sent to clients.
    pub fn code(&self) -> &'static str {
        match self {
            BundleError::NotZstd(_) => "bundle_not_zstd",
            BundleError::NotTar(_) => "bundle_not_tar",
            BundleError::TooLargeUnpacked { .. } => "bundle_unpacked_too_large",
            BundleError::TooManyEntries { .. } => "bundle_too_many_entries",
            BundleError::UnsafePath { .. } => "bundle_unsafe_path",
            BundleError::ForbiddenEntry { .. } => "bundle_forbidden_entry",
            BundleError::DuplicateEntry { .. } => "bundle_duplicate_entry",
            BundleError::ManifestMissing => "manifest_missing",
            BundleError::ManifestTooLarge => "manifest_too_large",
            BundleError::Manifest(ManifestError::Version { .. }) => "invalid_version",
            BundleError::Manifest(ManifestError::Name(_)) => "invalid_name",
            BundleError::Manifest(_) => "manifest_invalid",
            BundleError::PayloadMismatch(_) => "payload_mismatch",
            BundleError::Io(_) => "internal",
        }
    }
}

/// A bundle that passed every check.
#[derive(Debug, Clone)]
pub struct ValidatedBundle {
    /// The parsed manifest.
    pub manifest: Manifest,
    /// Its exact bytes.
    pub manifest_bytes: Vec<u8>,
    /// Total size of the payload files.
    pub payload_bytes: u64,
}

/// Counts decompressed bytes and fails once they pass the cap.
struct Capped<R> {
    inner: R,
    left: u64,
    tripped: bool,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Ask for one byte more than allowed, to tell "exactly at the cap" from "over".
        let want = buf
            .len()
            .min(usize::try_from(self.left.saturating_add(1)).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            self.tripped = true;
            return Err(io::Error::other("unpacked size cap reached"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn shown(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().take(120).collect()
}

fn entry_kind(t: tar::EntryType) -> Option<&'static str> {
    use tar::EntryType as E;
    match t {
        E::Regular | E::Continuous | E::Directory => None,
        E::Symlink => Some("symbolic link"),
        E::Link => Some("hard link"),
        E::Char => Some("character device"),
        E::Block => Some("block device"),
        E::Fifo => Some("FIFO"),
        _ => Some("special entry"),
    }
}

/// Reads the bundle at `path` and checks everything (see the module documentation).
pub fn validate(path: &Path, limits: Limits) -> Result<ValidatedBundle, BundleError> {
    let file = std::fs::File::open(path).map_err(BundleError::Io)?;
    let mut decoder =
        zstd::stream::read::Decoder::new(file).map_err(|e| BundleError::NotZstd(e.to_string()))?;
    decoder
        .window_log_max(MAX_WINDOW_LOG)
        .map_err(|e| BundleError::NotZstd(e.to_string()))?;
    let mut capped = Capped {
        inner: decoder,
        left: limits.max_unpacked_bytes,
        tripped: false,
    };
    let result = read_tar(&mut capped, limits);
    if capped.tripped {
        return Err(BundleError::TooLargeUnpacked {
            limit: limits.max_unpacked_bytes,
        });
    }
    result
}

/// Classifies a read error: zstd's own errors mean the stream is corrupt.
fn stream_err(e: io::Error) -> BundleError {
    let text = e.to_string();
    if text.contains("Unknown frame descriptor")
        || text.contains("zstd")
        || text.contains("Frame")
        || text.contains("frame")
        || text.contains("window")
        || text.contains("Corrupted")
        || text.contains("corrupt")
    {
        BundleError::NotZstd(text)
    } else {
        BundleError::NotTar(text)
    }
}

fn read_tar<R: Read>(reader: R, limits: Limits) -> Result<ValidatedBundle, BundleError> {
    let mut archive = tar::Archive::new(reader);
    let mut files: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut dirs = std::collections::BTreeSet::new();
    let mut manifest_bytes: Option<Vec<u8>> = None;
    let mut count = 0usize;
    for entry in archive.entries().map_err(stream_err)? {
        let mut entry = entry.map_err(stream_err)?;
        count += 1;
        if count > limits.max_entries {
            return Err(BundleError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        let raw = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        if let Some(what) = entry_kind(kind) {
            return Err(BundleError::ForbiddenEntry {
                path: shown(&raw),
                what: what.into(),
            });
        }
        let text =
            std::str::from_utf8(&raw).map_err(|_| BundleError::UnsafePath { path: shown(&raw) })?;
        let text = if kind == tar::EntryType::Directory {
            text.strip_suffix('/').unwrap_or(text)
        } else {
            text
        };
        if !manifest::is_safe_relative_path(text) {
            return Err(BundleError::UnsafePath { path: shown(&raw) });
        }
        let name = text.to_owned();
        if files.contains_key(&name) || dirs.contains(&name) {
            return Err(BundleError::DuplicateEntry { path: name });
        }
        if kind == tar::EntryType::Directory {
            dirs.insert(name);
            continue;
        }
        if name == "manifest.json" {
            if entry.size() > manifest::MAX_MANIFEST_BYTES {
                return Err(BundleError::ManifestTooLarge);
            }
            let mut buf = Vec::new();
            (&mut entry)
                .take(manifest::MAX_MANIFEST_BYTES + 1)
                .read_to_end(&mut buf)
                .map_err(stream_err)?;
            manifest_bytes = Some(buf);
            files.insert(name, (0, String::new()));
            continue;
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut size = 0u64;
        loop {
            let n = entry.read(&mut buf).map_err(stream_err)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        files.insert(name, (size, hex::encode(hasher.finalize())));
    }
    let manifest_bytes = manifest_bytes.ok_or(BundleError::ManifestMissing)?;
    let manifest = Manifest::parse(&manifest_bytes)?;
    files.remove("manifest.json");
    let mut payload_bytes = 0u64;
    for f in &manifest.payload {
        let Some((size, sha)) = files.remove(&f.path) else {
            return Err(BundleError::PayloadMismatch(format!(
                "{:?} is listed but not in the archive",
                f.path
            )));
        };
        if size != f.size {
            return Err(BundleError::PayloadMismatch(format!(
                "{:?} is {size} bytes, the manifest says {}",
                f.path, f.size
            )));
        }
        if sha != f.sha256 {
            return Err(BundleError::PayloadMismatch(format!(
                "{:?} has another SHA-256 than the manifest says",
                f.path
            )));
        }
        payload_bytes = payload_bytes.saturating_add(size);
    }
    if let Some(extra) = files.keys().next() {
        return Err(BundleError::PayloadMismatch(format!(
            "{extra:?} is in the archive but not listed in the payload"
        )));
    }
    Ok(ValidatedBundle {
        manifest,
        manifest_bytes,
        payload_bytes,
    })
}
