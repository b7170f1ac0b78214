//! Verified restore: fetch and check the device's manifest chain, open the chosen manifest,
//! fetch and check every pack, rebuild the database in a temporary file next to the target,
//! check it (pages, whole-file hashes, `PRAGMA integrity_check`, row counts), and only then
//! replace the target atomically. If anything fails the target is not touched.
//!
//! Packs are fetched, checked and decrypted on the calling thread while page writers (one
//! per core) decompress, check and write the pages; the fsync, the whole-file hashes (read
//! back from the file) and the database checks (on a read-only connection) then run at the
//! same time.
//!
//! The identity may be the terminal's own backup key or the fleet recovery key (restoring a
//! dead terminal's backup onto its replacement): the page ids are checked with the chunk key
//! carried in the encrypted body, or one the caller gives.
//!
//! [`prepare`] does everything but the replace, and returns a [`PreparedRestore`]: the
//! checked file, which is then renamed over the target ([`PreparedRestore::replace`], the
//! application stopped), copied into the live database through SQLite's backup API
//! ([`PreparedRestore::apply_online`], the application running), or dropped (a dry run, with
//! [`live_row_counts`] and [`rows_lost`] to tell what the restore would lose).
//!
//! The live database's sidecar files are handled so that no stale log is ever applied to the
//! restored file: before the rename, a hot rollback journal is rolled back and a write-ahead
//! log checkpointed and truncated into the old file (which is so whole on its own); after the
//! rename, `-wal`, `-shm` and `-journal` are removed. A kill at any moment leaves the target
//! either the old database or the restored one.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use otter_keys::age::x25519::Identity;
use otter_keys::atomic::sync_dir;
use otter_keys::crypto::PublicKey;
use otter_keys::envelope::{
    open_pack, ChunkId, ChunkKey, ChunkLocation, Countersignature, EnvelopeError, ManifestBody,
    ManifestHeader, PackId, PackRef, SignedManifest,
};
use otter_keys::time::UtcTime;
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use super::pages::{db_facts, integrity_problems, FileHasher, PageDecompressor, PageError};
use super::snapshot::remove_with_sidecars;
use super::store::{BackupStore, StoreError};
use super::{CHUNK_KEY_EXTRA, MAX_MANIFEST_BYTES};

/// Largest manifest body plaintext accepted.
const MAX_BODY_BYTES: usize = 512 * 1024 * 1024;

/// Why a restore was refused or failed. Unless the variant is [`RestoreError::Replace`], the
/// target database was not touched.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The store failed or lacks an object.
    #[error("restore refused: {0}; the live database was not touched")]
    Store(#[from] StoreError),
    /// A manifest or pack does not verify (signature, hash, decryption, format).
    #[error("restore refused: {0}; the live database was not touched")]
    Envelope(#[from] EnvelopeError),
    /// The device's manifests do not form an unbroken chain.
    #[error(
        "restore refused: the manifest chain of device {device:?} is broken: {reason}; \
         the live database was not touched"
    )]
    Chain {
        /// The device.
        device: String,
        /// What is wrong.
        reason: String,
    },
    /// The store holds no manifest for the device.
    #[error("no backup of device {device:?} is in the store; the live database was not touched")]
    NoBackups {
        /// The device.
        device: String,
    },
    /// No manifest matches the selector.
    #[error(
        "no backup of device {device:?} matches {selector}; the live database was not touched"
    )]
    NoMatch {
        /// The device.
        device: String,
        /// The selector, described.
        selector: String,
    },
    /// A page, the rebuilt file or the database checks failed.
    #[error("restore refused: the rebuilt database fails verification: {0}; the live database was not touched")]
    Verify(String),
    /// Reading, decompressing or querying the rebuilt file failed.
    #[error("restore refused: {0}; the live database was not touched")]
    Pages(#[from] PageError),
    /// Writing the temporary file failed.
    #[error("restore failed: {what} {path}: {source}; the live database was not touched")]
    Io {
        /// The operation.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The final replace of the target failed.
    #[error(
        "restore of {path} failed while replacing it: {reason} (the rename is atomic: the \
         file is either the old database or the restored one)"
    )]
    Replace {
        /// The target.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// Which backup to restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector {
    /// The newest.
    Latest,
    /// The one with this sequence number.
    Sequence(u64),
    /// The newest taken at or before this time.
    AtOrBefore(UtcTime),
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Selector::Latest => f.write_str("the latest"),
            Selector::Sequence(n) => write!(f, "sequence #{n}"),
            Selector::AtOrBefore(t) => write!(f, "a time at or before {t}"),
        }
    }
}

/// The server's countersignatures, to check against its pinned receipt key.
#[derive(Debug, Clone)]
pub struct ReceiptCheck {
    /// The server's backup receipt public key (pinned by the caller).
    pub server_key: PublicKey,
    /// The countersignature of each manifest, by sequence.
    pub by_sequence: BTreeMap<u64, Countersignature>,
}

/// Called as packs are fetched: bytes done, bytes in all.
pub type ProgressFn = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Restore policy.
#[derive(Default)]
pub struct RestoreOptions {
    /// Accept a chain whose oldest stored manifest is not #1 (older ones pruned by
    /// retention). Without it, a missing first manifest is refused.
    pub allow_pruned_prefix: bool,
    /// Accept gaps in the chain (backups pruned by retention: keep daily, weekly, …). Across
    /// a gap the hash link cannot be checked: the later manifest must still be of the same
    /// device, with a higher sequence and a time no earlier; give `receipts` too, so that
    /// every manifest is also vouched for by the server's countersignature.
    pub allow_pruned_gaps: bool,
    /// Headers of manifests the server pruned, by sequence (from its manifest list): a gap
    /// or a missing prefix they cover is checked link by link (sequence, previous hash,
    /// time) up to the next stored manifest, whose device signature so vouches for them.
    pub pruned_headers: BTreeMap<u64, ManifestHeader>,
    /// A manifest the caller knows exists (sequence and header hash, e.g. from the agent's
    /// local index): the chain must contain it, so a store cannot hide newer backups or
    /// present a forked history.
    pub known_head: Option<(u64, String)>,
    /// The chunk key to check page ids with; by default the one in the manifest body.
    pub chunk_key: Option<ChunkKey>,
    /// When given, every manifest of the chain must carry a valid countersignature of the
    /// server (it accepted the manifest, with all its packs).
    pub receipts: Option<ReceiptCheck>,
    /// Progress of the pack downloads.
    pub progress: Option<ProgressFn>,
    /// A backup re-encrypted for this terminal with the recovery key (a replacement
    /// terminal, or a write-only fleet; `otter-keys backup reencrypt`): each manifest's body
    /// comes from here by sequence (checked against the signed plaintext hash instead of the
    /// signed ciphertext hash), and packs no longer hash to their ids, so they are checked
    /// through the signed body instead: every page's keyed id and the whole-file hashes.
    pub reencrypted: Option<Reencrypted>,
}

/// Manifest bodies re-encrypted for the restoring terminal, by sequence.
#[derive(Debug, Clone, Default)]
pub struct Reencrypted {
    /// The re-encrypted body ciphertext of each manifest.
    pub bodies: BTreeMap<u64, Vec<u8>>,
}

impl fmt::Debug for RestoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestoreOptions")
            .field("allow_pruned_prefix", &self.allow_pruned_prefix)
            .field("allow_pruned_gaps", &self.allow_pruned_gaps)
            .field("pruned_headers", &self.pruned_headers.len())
            .field("known_head", &self.known_head)
            .field("chunk_key", &self.chunk_key.as_ref().map(|_| "(given)"))
            .field("receipts", &self.receipts)
            .field("progress", &self.progress.is_some())
            .field(
                "reencrypted",
                &self.reencrypted.as_ref().map(|r| r.bodies.len()),
            )
            .finish()
    }
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// Sequence of the restored manifest.
    pub sequence: u64,
    /// When that backup was taken.
    pub created: UtcTime,
    /// Hex SHA-256 of its header.
    pub header_hash: String,
    /// Pages written.
    pub pages: u64,
    /// Bytes of the restored database.
    pub database_bytes: u64,
    /// Packs fetched and verified.
    pub packs: u64,
    /// Pack bytes fetched.
    pub pack_bytes: u64,
    /// Manifests whose signature and chain link were checked.
    pub manifests_checked: u64,
    /// Time the whole restore took.
    pub took: Duration,
}

/// The checked chain, and the manifest chosen from it.
#[derive(Debug)]
pub struct VerifiedChain {
    /// Every stored header, oldest first, each signed by the device and following the one
    /// before.
    pub headers: Vec<ManifestHeader>,
    /// The manifest the selector chose.
    pub selected: SignedManifest,
}

/// Fetches every stored manifest of `device_id`, checks each signature with the device's
/// public key and each link of the chain, and picks the one `selector` names.
pub fn verify_chain(
    store: &dyn BackupStore,
    device_id: &str,
    device_public: &PublicKey,
    selector: Selector,
    options: &RestoreOptions,
) -> Result<VerifiedChain, RestoreError> {
    let broken = |reason: String| RestoreError::Chain {
        device: device_id.to_owned(),
        reason,
    };
    let seqs = store.list_manifests(device_id)?;
    let Some(&first) = seqs.first() else {
        return Err(RestoreError::NoBackups {
            device: device_id.to_owned(),
        });
    };
    let prefix_linked = (1..first).all(|k| options.pruned_headers.contains_key(&k));
    if first != 1 && !options.allow_pruned_prefix && !prefix_linked {
        return Err(broken(format!(
            "its oldest stored manifest is #{first}: #1 to #{} are missing or were deleted",
            first - 1
        )));
    }
    let mut headers: Vec<ManifestHeader> = Vec::with_capacity(seqs.len());
    let mut selected = None;
    for &seq in &seqs {
        let bytes = store.get_manifest(device_id, seq, MAX_MANIFEST_BYTES)?;
        let m = SignedManifest::from_bytes(&bytes, MAX_MANIFEST_BYTES as usize)?;
        if m.header.device_id != device_id || m.header.sequence != seq {
            return Err(broken(format!(
                "the manifest stored as #{seq} is #{} of device {:?} (moved or replayed)",
                m.header.sequence,
                m.header.device_id.chars().take(64).collect::<String>()
            )));
        }
        m.verify_signature(device_public)?;
        if let Some(check) = &options.receipts {
            let cs = check.by_sequence.get(&seq).ok_or_else(|| {
                broken(format!(
                    "manifest #{seq} carries no countersignature of the server \
                     (the server never accepted it)"
                ))
            })?;
            m.verify_countersignature(&check.server_key, cs)?;
        }
        // Retention pruned backups before this one: walk the pruned headers' links if the
        // server gave them all; else (allowed) no hash link can be checked across the gap.
        let bridge = walk_pruned(&options.pruned_headers, device_id, headers.last(), seq)?;
        let gap = bridge.is_none()
            && options.allow_pruned_gaps
            && headers
                .last()
                .is_some_and(|p| p.sequence.saturating_add(1) < seq);
        match headers.last() {
            _ if bridge.is_some() => m.header.check_follows(bridge.as_ref())?,
            Some(prev) if gap && m.header.created < prev.created => {
                return Err(broken(format!(
                    "manifest #{seq} was created before #{} that precedes it",
                    prev.sequence
                )));
            }
            Some(_) if gap => {}
            Some(prev) => m.header.check_follows(Some(prev))?,
            None if seq == 1 => m.header.check_follows(None)?,
            None => {} // pruned prefix, accepted by the caller
        }
        let chosen = match selector {
            Selector::Latest => true,
            Selector::Sequence(n) => n == seq,
            Selector::AtOrBefore(t) => m.header.created <= t,
        };
        headers.push(m.header.clone());
        if chosen {
            selected = Some(m);
        }
    }
    if let Some((seq, hash)) = &options.known_head {
        let found = headers.iter().find(|h| h.sequence == *seq);
        match found {
            None => {
                return Err(broken(format!(
                    "manifest #{seq}, which this terminal made, is not in the store \
                     (rolled back or hidden)"
                )))
            }
            Some(h) if &h.hash()? != hash => {
                return Err(broken(format!(
                    "manifest #{seq} in the store is not the one this terminal made (a fork)"
                )))
            }
            Some(_) => {}
        }
    }
    let selected = selected.ok_or_else(|| RestoreError::NoMatch {
        device: device_id.to_owned(),
        selector: selector.to_string(),
    })?;
    Ok(VerifiedChain { headers, selected })
}

/// Walks the headers of pruned manifests from `prev` (or from #1) up to `seq - 1`, checking
/// each link; the header of `seq - 1` when there is a gap and every header of it is given.
fn walk_pruned(
    pruned: &BTreeMap<u64, ManifestHeader>,
    device_id: &str,
    prev: Option<&ManifestHeader>,
    seq: u64,
) -> Result<Option<ManifestHeader>, RestoreError> {
    let start = prev.map_or(1, |p| p.sequence.saturating_add(1));
    if start >= seq {
        return Ok(None);
    }
    let mut last = prev.cloned();
    for k in start..seq {
        let Some(h) = pruned.get(&k) else {
            return Ok(None);
        };
        if h.device_id != device_id || h.sequence != k {
            return Err(RestoreError::Chain {
                device: device_id.to_owned(),
                reason: format!(
                    "the server's header of pruned manifest #{k} is not #{k} of this device"
                ),
            });
        }
        h.check_follows(last.as_ref())?;
        last = Some(h.clone());
    }
    Ok(last)
}

/// Restores a backup of `device_id` over `target` (see the module documentation):
/// [`prepare`], then [`PreparedRestore::replace`].
pub fn restore(
    store: &dyn BackupStore,
    device_id: &str,
    device_public: &PublicKey,
    identity: &Identity,
    selector: Selector,
    target: &Path,
    options: &RestoreOptions,
) -> Result<RestoreReport, RestoreError> {
    prepare(
        store,
        device_id,
        device_public,
        identity,
        selector,
        target,
        options,
    )?
    .replace(target)
}

/// A backup rebuilt and checked in a temporary file beside the target, not applied yet.
/// Dropping it removes the file and leaves the target untouched.
pub struct PreparedRestore {
    temp: TempFile,
    report: RestoreReport,
    row_counts: BTreeMap<String, u64>,
    started: Instant,
}

impl fmt::Debug for PreparedRestore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedRestore")
            .field("path", &self.temp.path)
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

/// Fetches and checks everything (see the module documentation) and rebuilds the chosen
/// backup in a checked temporary file beside `target`, without touching `target`.
pub fn prepare(
    store: &dyn BackupStore,
    device_id: &str,
    device_public: &PublicKey,
    identity: &Identity,
    selector: Selector,
    target: &Path,
    options: &RestoreOptions,
) -> Result<PreparedRestore, RestoreError> {
    let started = Instant::now();
    let chain = verify_chain(store, device_id, device_public, selector, options)?;
    let manifest = &chain.selected;
    let body = match &options.reencrypted {
        None => manifest.open_body(identity, MAX_BODY_BYTES)?,
        Some(r) => {
            let seq = manifest.header.sequence;
            let ct = r.bodies.get(&seq).ok_or_else(|| {
                RestoreError::Verify(format!(
                    "the re-encrypted backup lacks the body of manifest #{seq}"
                ))
            })?;
            manifest.open_body_ciphertext(identity, ct, MAX_BODY_BYTES)?
        }
    };
    let from_body;
    let chunk_key = match &options.chunk_key {
        Some(k) => k,
        None => {
            from_body = chunk_key_of(&body)?;
            &from_body
        }
    };

    let temp = TempFile::create(target)?;
    let (packs, pack_bytes) = rebuild(store, identity, manifest, &body, chunk_key, &temp, options)?;
    check_rebuilt(&temp, &body)?;
    let report = RestoreReport {
        sequence: manifest.header.sequence,
        created: manifest.header.created,
        header_hash: manifest.header_hash()?,
        pages: body.page_count,
        database_bytes: body.page_count * u64::from(body.page_size),
        packs,
        pack_bytes,
        manifests_checked: chain.headers.len() as u64,
        took: started.elapsed(),
    };
    Ok(PreparedRestore {
        temp,
        report,
        row_counts: body.row_counts.clone(),
        started,
    })
}

impl PreparedRestore {
    /// What was fetched and checked.
    pub fn report(&self) -> &RestoreReport {
        &self.report
    }

    /// Rows per table of the backup (checked against the rebuilt file).
    pub fn row_counts(&self) -> &BTreeMap<String, u64> {
        &self.row_counts
    }

    /// The checked file (removed when `self` is dropped).
    pub fn path(&self) -> &Path {
        &self.temp.path
    }

    fn finish(mut self) -> RestoreReport {
        self.report.took = self.started.elapsed();
        self.report.clone()
    }

    /// Replaces `target` with the checked file by one atomic rename (see the module
    /// documentation). The application must not have the database open: stop it first.
    pub fn replace(self, target: &Path) -> Result<RestoreReport, RestoreError> {
        replace(&self.temp, target)?;
        Ok(self.finish())
    }

    /// Copies the checked file into the live database `target` through SQLite's backup API,
    /// in one step under the database's own locking and journal: connections of the running
    /// application wait (up to `busy_timeout`), then see the restored content. SQLite makes
    /// the copy atomic; the file keeps its journal mode, so its bytes need not equal the
    /// backup's, but its content (`.dump`) does.
    pub fn apply_online(
        self,
        target: &Path,
        busy_timeout: Duration,
    ) -> Result<RestoreReport, RestoreError> {
        apply_online(&self.temp.path, target, busy_timeout)?;
        Ok(self.finish())
    }
}

/// Rows per table of the live database, read through a read-only connection (it may be in
/// use). Fails when the database cannot be read (damaged, missing).
pub fn live_row_counts(path: &Path) -> Result<BTreeMap<String, u64>, RestoreError> {
    let fail = |e: rusqlite::Error| RestoreError::Verify(format!("{}: {e}", path.display()));
    if !path.is_file() {
        return Err(RestoreError::Verify(format!(
            "{}: no such database",
            path.display()
        )));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(fail)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(fail)?;
    let mut names = Vec::new();
    {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .map_err(fail)?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(fail)?;
        for name in rows {
            names.push(name.map_err(fail)?);
        }
    }
    let mut counts = BTreeMap::new();
    for name in names {
        let sql = format!("SELECT count(*) FROM \"{}\"", name.replace('"', "\"\""));
        let n: i64 = conn.query_row(&sql, [], |r| r.get(0)).map_err(fail)?;
        counts.insert(name, u64::try_from(n).unwrap_or(0));
    }
    Ok(counts)
}

/// A table with rows the restore would lose (more in the live database than in the backup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowLoss {
    /// The table.
    pub table: String,
    /// Its rows in the live database.
    pub live: u64,
    /// Its rows in the backup (0 when the backup lacks the table).
    pub backup: u64,
}

/// Tables with more rows live than in the backup: what a restore would lose (rows written
/// since the backup; rows changed in place are not counted).
pub fn rows_lost(live: &BTreeMap<String, u64>, backup: &BTreeMap<String, u64>) -> Vec<RowLoss> {
    live.iter()
        .filter_map(|(table, &l)| {
            let b = backup.get(table).copied().unwrap_or(0);
            (l > b).then(|| RowLoss {
                table: table.clone(),
                live: l,
                backup: b,
            })
        })
        .collect()
}

/// Processes (other than this one) that have `target` or its `-wal` open, found in
/// `/proc/*/fd` (Linux; processes of other users are not visible). Best effort: an empty
/// list on systems without `/proc`.
pub fn processes_using(target: &Path) -> Vec<u32> {
    let Ok(canonical) = fs::canonicalize(target) else {
        return Vec::new();
    };
    let wal = sidecar(&canonical, "-wal");
    let me = std::process::id();
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .filter_map(|fd| fs::read_link(fd.path()).ok())
            .any(|l| l == canonical || l == wal)
        {
            found.push(pid);
        }
    }
    found
}

fn apply_online(source: &Path, target: &Path, busy_timeout: Duration) -> Result<(), RestoreError> {
    let fail = |reason: String| RestoreError::Replace {
        path: target.to_path_buf(),
        reason,
    };
    if !target.is_file() {
        return Err(fail(
            "an online restore needs the live database to exist; restore without --online".into(),
        ));
    }
    let src = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| fail(format!("cannot open the checked file: {e}")))?;
    let mut dst = Connection::open_with_flags(
        target,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| fail(format!("cannot open the live database: {e}")))?;
    dst.busy_timeout(busy_timeout)
        .map_err(|e| fail(format!("cannot set a busy timeout: {e}")))?;
    let started = Instant::now();
    {
        let backup = Backup::new(&src, &mut dst)
            .map_err(|e| fail(format!("cannot start SQLite's backup: {e}")))?;
        loop {
            // One step: every page in one write transaction on the live database.
            match backup
                .step(-1)
                .map_err(|e| fail(format!("SQLite's backup into the live database: {e}")))?
            {
                StepResult::Done => break,
                StepResult::More => continue,
                _busy_or_locked if started.elapsed() < busy_timeout => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    return Err(fail(format!(
                        "the live database stayed locked by the application for {}s; \
                         nothing was changed",
                        busy_timeout.as_secs()
                    )))
                }
            }
        }
    }
    dst.close()
        .map_err(|(_, e)| fail(format!("closing the live database: {e}")))?;
    Ok(())
}

fn chunk_key_of(body: &ManifestBody) -> Result<ChunkKey, RestoreError> {
    let hex_key = body
        .extra
        .get(CHUNK_KEY_EXTRA)
        .and_then(|v| v.as_str())
        .ok_or_else(|| {
            RestoreError::Verify(
                "the manifest body carries no chunk key; pass the terminal's chunk key".into(),
            )
        })?;
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(hex_key, &mut key[..])
        .map_err(|_| RestoreError::Verify("the manifest body's chunk key is malformed".into()))?;
    Ok(ChunkKey::from_bytes(&key))
}

/// Chunks per unit of work handed to the page writers.
const JOB_CHUNKS: usize = 256;
/// Units of work queued for the page writers (each holds its pack's plaintext alive, so at
/// most a few packs are in memory at once).
const JOBS_IN_FLIGHT: usize = 8;

/// Some chunks of one decrypted pack, for a page writer.
struct PageJob {
    pack: Arc<Opened>,
    chunks: Vec<(ChunkId, ChunkLocation)>,
}

/// What the page writers share.
struct Writers<'a> {
    pages_of: &'a HashMap<ChunkId, Vec<u64>>,
    chunk_key: &'a ChunkKey,
    temp: &'a TempFile,
    page_size: u32,
    written: AtomicU64,
    failed: AtomicBool,
}

/// Writes every page into `temp`: this thread fetches the packs in turn, checks each one's
/// hash and decrypts it; page writers (one per core) decompress each page under a one-page
/// cap, check its keyed id and write it at its place(s). The file is not synced here (see
/// [`check_rebuilt`]). The first failure stops everything.
fn rebuild(
    store: &dyn BackupStore,
    identity: &Identity,
    manifest: &SignedManifest,
    body: &ManifestBody,
    chunk_key: &ChunkKey,
    temp: &TempFile,
    options: &RestoreOptions,
) -> Result<(u64, u64), RestoreError> {
    let page_size = u64::from(body.page_size);
    temp.file
        .set_len(body.page_count * page_size)
        .map_err(temp.io("cannot size"))?;
    // Chunk -> the pages holding it; pack -> its chunks that some page uses.
    let mut pages_of: HashMap<ChunkId, Vec<u64>> = HashMap::with_capacity(body.chunks.len());
    for (i, chunk) in body.pages.iter().enumerate() {
        pages_of.entry(*chunk).or_default().push(i as u64);
    }
    let mut chunks_of: HashMap<PackId, Vec<(ChunkId, ChunkLocation)>> = HashMap::new();
    for (chunk, loc) in &body.chunks {
        if pages_of.contains_key(chunk) {
            chunks_of.entry(loc.pack).or_default().push((*chunk, *loc));
        }
    }
    // In pack order: pages were packed in page order, so the writes go mostly in order.
    for chunks in chunks_of.values_mut() {
        chunks.sort_unstable_by_key(|(_, loc)| loc.offset);
    }
    let writers = Writers {
        pages_of: &pages_of,
        chunk_key,
        temp,
        page_size: body.page_size,
        written: AtomicU64::new(0),
        failed: AtomicBool::new(false),
    };
    let (fetched, wrote) = std::thread::scope(|s| {
        let (jobs_tx, jobs_rx) = mpsc::sync_channel::<PageJob>(JOBS_IN_FLIGHT);
        // Owned by the writers only: when the last one ends, sends here fail.
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let handles: Vec<_> = (0..page_writers())
            .map(|_| {
                let (jobs_rx, writers) = (Arc::clone(&jobs_rx), &writers);
                s.spawn(move || writers.run(&jobs_rx))
            })
            .collect();
        drop(jobs_rx);
        let fetched = fetch_packs(
            store, identity, manifest, &chunks_of, &writers, &jobs_tx, options,
        );
        if fetched.is_err() {
            writers.failed.store(true, Ordering::SeqCst);
        }
        drop(jobs_tx);
        let mut wrote = Ok(());
        for handle in handles {
            let result = handle.join().unwrap_or_else(|_| {
                Err(RestoreError::Verify("a page writer thread panicked".into()))
            });
            if wrote.is_ok() {
                wrote = result;
            }
        }
        (fetched, wrote)
    });
    // A writer's failure is the cause when the fetching stopped because of it.
    wrote?;
    let (packs, pack_bytes) = fetched?;
    let written = writers.written.load(Ordering::SeqCst);
    if written != body.page_count {
        return Err(RestoreError::Verify(format!(
            "{written} of {} pages could be written",
            body.page_count
        )));
    }
    Ok((packs, pack_bytes))
}

/// The number of page writers: one per core, at most 4.
fn page_writers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4))
}

/// Fetches, checks and decrypts each pack the manifest lists, and hands its chunks to the
/// page writers. Stops early, without error, when a writer failed.
/// Fetches, checks and decrypts each pack the manifest lists, on [`pack_fetchers`]
/// threads at once (the next pack downloads while another is hashed and decrypted), and
/// hands their chunks to the page writers. Stops early, without error, when a writer failed;
/// the first fetcher's error stops the others.
fn fetch_packs(
    store: &dyn BackupStore,
    identity: &Identity,
    manifest: &SignedManifest,
    chunks_of: &HashMap<PackId, Vec<(ChunkId, ChunkLocation)>>,
    writers: &Writers<'_>,
    jobs: &SyncSender<PageJob>,
    options: &RestoreOptions,
) -> Result<(u64, u64), RestoreError> {
    let packs: Vec<(&PackRef, &[(ChunkId, ChunkLocation)])> = manifest
        .header
        .packs
        .iter()
        .filter_map(|p| Some((p, chunks_of.get(&p.id)?.as_slice())))
        .collect();
    let fetch = Fetch {
        store,
        identity,
        writers,
        options,
        packs: &packs,
        next: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        total: packs.iter().map(|(p, _)| p.length).sum(),
        done: AtomicU64::new(0),
        fetched: AtomicU64::new(0),
        fetched_bytes: AtomicU64::new(0),
    };
    let results: Vec<Result<(), RestoreError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..PACK_FETCHERS)
            .map(|_| {
                let (fetch, jobs) = (&fetch, jobs.clone());
                s.spawn(move || {
                    let result = fetch.run(&jobs);
                    if result.is_err() {
                        fetch.stop.store(true, Ordering::SeqCst);
                    }
                    result
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(RestoreError::Verify(
                        "a pack fetcher thread panicked".into(),
                    ))
                })
            })
            .collect()
    });
    for result in results {
        result?;
    }
    if let Some(report) = options.progress.as_ref() {
        report(fetch.total, fetch.total);
    }
    Ok((
        fetch.fetched.load(Ordering::SeqCst),
        fetch.fetched_bytes.load(Ordering::SeqCst),
    ))
}

/// Packs fetched at once: two, so that one downloads while another is hashed and
/// decrypted (each holds its ciphertext and plaintext, a few MiB, in memory).
const PACK_FETCHERS: usize = 2;

/// What the pack fetchers share: the packs to fetch, in the manifest's order, and the
/// index of the next one.
struct Fetch<'a> {
    store: &'a dyn BackupStore,
    identity: &'a Identity,
    writers: &'a Writers<'a>,
    options: &'a RestoreOptions,
    /// The packs some page uses, each with those of its chunks.
    packs: &'a [(&'a PackRef, &'a [(ChunkId, ChunkLocation)])],
    next: AtomicUsize,
    /// Set by the first fetcher that fails.
    stop: AtomicBool,
    /// Ciphertext bytes of all packs, and of those whose fetch began (for progress).
    total: u64,
    done: AtomicU64,
    fetched: AtomicU64,
    fetched_bytes: AtomicU64,
}

impl Fetch<'_> {
    /// Fetches packs until none is left, a writer failed or another fetcher stopped.
    fn run(&self, jobs: &SyncSender<PageJob>) -> Result<(), RestoreError> {
        loop {
            if self.writers.failed.load(Ordering::SeqCst) || self.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let Some(&(pack, chunks)) = self.packs.get(self.next.fetch_add(1, Ordering::SeqCst))
            else {
                return Ok(());
            };
            let done = self.done.fetch_add(pack.length, Ordering::SeqCst);
            if let Some(report) = self.options.progress.as_ref() {
                report(done, self.total);
            }
            let open = Arc::new(self.open(pack)?);
            for piece in chunks.chunks(JOB_CHUNKS) {
                let job = PageJob {
                    pack: Arc::clone(&open),
                    chunks: piece.to_vec(),
                };
                if jobs.send(job).is_err() {
                    // Every writer is gone: one failed, and says why.
                    return Ok(());
                }
            }
        }
    }

    /// Downloads one pack, checks its length and hash, and decrypts it.
    fn open(&self, pack: &PackRef) -> Result<Opened, RestoreError> {
        let opened = if self.options.reencrypted.is_some() {
            // Same plaintext, other recipients: the age header's length may differ.
            let ciphertext = self
                .store
                .get_pack(&pack.id, pack.length.saturating_add(64 * 1024))?;
            self.count(ciphertext.len());
            Opened::Reencrypted(
                pack.id,
                otter_keys::envelope::decrypt(self.identity, &ciphertext, ciphertext.len())?,
            )
        } else {
            let ciphertext = self.store.get_pack(&pack.id, pack.length)?;
            // The length here; `open_pack` checks the hash (SHA-256 of the ciphertext, the
            // pack's signed id) before it decrypts, so it is computed once, not twice.
            let found = ciphertext.len() as u64;
            if found != pack.length {
                return Err(EnvelopeError::LengthMismatch {
                    what: format!("pack {}", pack.id),
                    expected: pack.length,
                    found,
                }
                .into());
            }
            self.count(ciphertext.len());
            Opened::Signed(open_pack(
                self.identity,
                &ciphertext,
                &pack.id,
                ciphertext.len(),
            )?)
        };
        Ok(opened)
    }

    fn count(&self, bytes: usize) {
        self.fetched.fetch_add(1, Ordering::SeqCst);
        self.fetched_bytes.fetch_add(bytes as u64, Ordering::SeqCst);
    }
}

impl Writers<'_> {
    /// Writes the pages of each job until the jobs end; after a failure (its own, or
    /// another writer's) it only drains the queue.
    fn run(&self, jobs: &Mutex<Receiver<PageJob>>) -> Result<(), RestoreError> {
        let result = self.write_jobs(jobs);
        if result.is_err() {
            self.failed.store(true, Ordering::SeqCst);
        }
        result
    }

    fn write_jobs(&self, jobs: &Mutex<Receiver<PageJob>>) -> Result<(), RestoreError> {
        let mut decompressor = PageDecompressor::new(self.page_size)?;
        let mut page = Vec::new();
        let mut run = PageRun::new(self.page_size);
        loop {
            // A poisoned lock only means another writer panicked; the channel is still whole.
            let next = jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
            let Ok(job) = next else {
                return Ok(());
            };
            if self.failed.load(Ordering::SeqCst) {
                return Ok(());
            }
            for (chunk, loc) in &job.chunks {
                let indices = self.pages_of.get(chunk).map(Vec::as_slice).unwrap_or(&[]);
                let first = indices.first().copied().unwrap_or(0);
                decompressor.decompress_into(first, job.pack.at(loc)?, &mut page)?;
                if &self.chunk_key.chunk_id(&page) != chunk {
                    return Err(RestoreError::Verify(format!(
                        "page {first} does not match its chunk id {chunk} (swapped or damaged chunk)"
                    )));
                }
                for &i in indices {
                    if !run.extends(i) {
                        self.flush(&mut run)?;
                    }
                    run.push(i, &page);
                }
            }
            self.flush(&mut run)?;
        }
    }

    /// Writes the run of consecutive pages collected so far with one positioned write.
    fn flush(&self, run: &mut PageRun) -> Result<(), RestoreError> {
        if run.bytes.is_empty() {
            return Ok(());
        }
        self.temp
            .file
            .write_all_at(&run.bytes, run.first * run.page_size)
            .map_err(self.temp.io("cannot write"))?;
        self.written.fetch_add(run.pages(), Ordering::Relaxed);
        run.bytes.clear();
        Ok(())
    }
}

/// Pages at consecutive indices, collected to be written with one call.
struct PageRun {
    page_size: u64,
    first: u64,
    bytes: Vec<u8>,
}

impl PageRun {
    /// Bytes of pages written at once, at most.
    const MAX_BYTES: usize = 256 * 1024;

    fn new(page_size: u32) -> Self {
        PageRun {
            page_size: u64::from(page_size),
            first: 0,
            bytes: Vec::with_capacity(Self::MAX_BYTES.max(page_size as usize)),
        }
    }

    fn pages(&self) -> u64 {
        self.bytes.len() as u64 / self.page_size.max(1)
    }

    /// Whether page `index` can be appended (the run is empty, or it is the next page and
    /// there is room).
    fn extends(&self, index: u64) -> bool {
        self.bytes.is_empty()
            || (index == self.first + self.pages() && self.bytes.len() < Self::MAX_BYTES)
    }

    fn push(&mut self, index: u64, page: &[u8]) {
        if self.bytes.is_empty() {
            self.first = index;
        }
        self.bytes.extend_from_slice(page);
    }
}

/// A decrypted pack: checked against its signed id, or re-encrypted (checked through the
/// signed body's page ids and file hashes instead).
enum Opened {
    Signed(otter_keys::envelope::OpenPack),
    Reencrypted(otter_keys::envelope::PackId, zeroize::Zeroizing<Vec<u8>>),
}

impl Opened {
    fn at(&self, loc: &otter_keys::envelope::ChunkLocation) -> Result<&[u8], RestoreError> {
        match self {
            Opened::Signed(p) => Ok(p.at(loc)?),
            Opened::Reencrypted(id, plain) => {
                let bad = || {
                    RestoreError::Verify(format!(
                        "chunk at {}+{} is outside re-encrypted pack {id} ({} bytes)",
                        loc.offset,
                        loc.length,
                        plain.len()
                    ))
                };
                if &loc.pack != id {
                    return Err(bad());
                }
                let start = usize::try_from(loc.offset).map_err(|_| bad())?;
                let end = start.checked_add(loc.length as usize).ok_or_else(bad)?;
                plain.get(start..end).ok_or_else(bad)
            }
        }
    }
}

/// The checks of the rebuilt file, run at the same time on their own threads: the fsync of
/// its pages, its whole-file hashes (read back from the file) and the database checks
/// (`PRAGMA integrity_check`, row counts, schema version). The database checks open the
/// file read-only, so the hashes cover its bytes exactly as they will be renamed into place.
fn check_rebuilt(temp: &TempFile, body: &ManifestBody) -> Result<(), RestoreError> {
    let path = temp.path.as_path();
    let (synced, hashed, checked) = std::thread::scope(|s| {
        let synced = s.spawn(|| temp.file.sync_all().map_err(temp.io("cannot fsync")));
        let hashed = s.spawn(|| FileHasher::of_file(path));
        let checked = check_database(path, body);
        (synced.join(), hashed.join(), checked)
    });
    remove_sidecars(path);
    let panicked = |what: &str| RestoreError::Verify(format!("the {what} thread panicked"));
    checked?;
    synced.map_err(|_| panicked("fsync"))??;
    let (blake3, sha256, len) = hashed.map_err(|_| panicked("file hash"))??;
    let expected_len = body.page_count * u64::from(body.page_size);
    if len != expected_len || blake3 != body.file_blake3 || sha256 != body.file_sha256 {
        return Err(RestoreError::Verify(format!(
            "whole-file hashes or length differ from the backup's (BLAKE3 {blake3}, \
             {len} bytes; expected {}, {expected_len} bytes)",
            body.file_blake3
        )));
    }
    Ok(())
}

/// `PRAGMA integrity_check`, then the row counts and schema version against the backup's.
fn check_database(path: &Path, body: &ManifestBody) -> Result<(), RestoreError> {
    if let Some(problems) = integrity_problems(path)? {
        return Err(RestoreError::Verify(format!(
            "PRAGMA integrity_check: {problems}"
        )));
    }
    let facts = db_facts(path)?;
    if facts.row_counts != body.row_counts {
        return Err(RestoreError::Verify(format!(
            "row counts {:?} differ from the backup's {:?}",
            facts.row_counts, body.row_counts
        )));
    }
    if facts.schema_version != body.schema_version {
        return Err(RestoreError::Verify(format!(
            "schema version {} differs from the backup's {}",
            facts.schema_version, body.schema_version
        )));
    }
    Ok(())
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

fn remove_sidecars(path: &Path) {
    for s in ["-journal", "-wal", "-shm"] {
        let _ = fs::remove_file(sidecar(path, s));
    }
}

/// Replaces `target` with the checked file (see the module documentation): the old
/// database is settled first (hot journal rolled back, WAL checkpointed and truncated), then
/// one rename and an fsync of the directory, then the sidecars are removed.
fn replace(temp: &TempFile, target: &Path) -> Result<(), RestoreError> {
    let fail = |reason: String| RestoreError::Replace {
        path: target.to_path_buf(),
        reason,
    };
    let dir = parent_dir(target);
    let wal = sidecar(target, "-wal");
    let journal = sidecar(target, "-journal");
    if target.exists() && (wal.exists() || journal.exists()) {
        match settle_old(target) {
            Ok(()) => {}
            Err(Settle::InUse(reason)) => {
                return Err(fail(format!(
                    "{reason}: the application has the database open; stop it first \
                     (--stop-command) or restore with --online"
                )))
            }
            // The old database cannot be read (the reason to restore, often): its logs
            // are moved aside (`NAME-wal.old-PID-TIME`), never left to be applied to the
            // restored file.
            Err(Settle::Unreadable(why)) => {
                for log in [&wal, &journal] {
                    if log.exists() {
                        let aside = aside_name(log);
                        fs::rename(log, &aside).map_err(|e| {
                            fail(format!(
                                "{why}; cannot move its {} aside: {e}",
                                log.display()
                            ))
                        })?;
                    }
                }
                sync_dir(dir)
                    .map_err(|e| fail(format!("fsync of {} failed: {e}", dir.display())))?;
            }
        }
        for log in [&wal, &journal] {
            if fs::metadata(log).is_ok_and(|m| m.len() > 0) {
                return Err(fail(format!(
                    "{} is still not empty: the application keeps writing; stop it first \
                     (--stop-command) or restore with --online",
                    log.display()
                )));
            }
        }
    }
    fs::rename(&temp.path, target).map_err(|e| fail(format!("rename failed: {e}")))?;
    sync_dir(dir).map_err(|e| fail(format!("fsync of {} failed: {e}", dir.display())))?;
    for s in ["-wal", "-shm", "-journal"] {
        let _ = fs::remove_file(sidecar(target, s));
    }
    sync_dir(dir).map_err(|e| fail(format!("fsync of {} failed: {e}", dir.display())))?;
    Ok(())
}

/// Why the old database could not be settled.
enum Settle {
    /// Another connection holds it (busy, locked).
    InUse(String),
    /// It cannot be read (damaged, not a database).
    Unreadable(String),
}

fn settle_err(what: &str, e: rusqlite::Error) -> Settle {
    use rusqlite::ErrorCode;
    let busy = matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    );
    let text = format!("{what}: {e}");
    if busy {
        Settle::InUse(text)
    } else {
        Settle::Unreadable(text)
    }
}

/// Makes the old database whole on its own: opening it and reading rolls a hot journal
/// back; a TRUNCATE checkpoint moves a write-ahead log into it and empties the log.
fn settle_old(target: &Path) -> Result<(), Settle> {
    let conn = Connection::open_with_flags(
        target,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| settle_err("cannot open the old database", e))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| settle_err("cannot set a busy timeout", e))?;
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(|e| settle_err("cannot read the old database", e))?;
    if sidecar(target, "-wal").exists() {
        let busy: i64 = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .map_err(|e| settle_err("cannot checkpoint the old database", e))?;
        if busy != 0 {
            return Err(Settle::InUse(
                "the old database's checkpoint is busy".into(),
            ));
        }
    }
    conn.close()
        .map_err(|(_, e)| settle_err("cannot close the old database", e))?;
    Ok(())
}

/// `FILE.old-PID-TIME`, beside `log`.
fn aside_name(log: &Path) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(format!(
        ".old-{}-{}",
        std::process::id(),
        UtcTime::now().unix()
    ));
    PathBuf::from(p)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// The file a restore is rebuilt in: beside the target (same file system, so the final
/// rename is atomic), removed on drop unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    file: File,
}

impl TempFile {
    fn create(target: &Path) -> Result<Self, RestoreError> {
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "database".into());
        let path = parent_dir(target).join(format!(
            ".{name}.restore-{}-{}-{}",
            std::process::id(),
            UtcTime::now().unix(),
            unique()
        ));
        remove_dead_leftovers(parent_dir(target), &format!(".{name}.restore-"));
        let mode = fs::metadata(target).map_or(0o600, |m| m.permissions().mode() & 0o777);
        let _ = fs::remove_file(&path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(|source| RestoreError::Io {
                what: "cannot create",
                path: path.clone(),
                source,
            })?;
        Ok(TempFile { path, file })
    }

    fn io(&self, what: &'static str) -> impl FnOnce(io::Error) -> RestoreError + '_ {
        move |source| RestoreError::Io {
            what,
            path: self.path.clone(),
            source,
        }
    }
}

/// A number not used before by this process.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Removes temporary files of restores killed before they finished: `PREFIX{PID}-...` (and
/// their sidecars) whose process is gone.
fn remove_dead_leftovers(dir: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let alive = Path::new("/proc").join(pid.to_string()).exists();
        if !alive {
            let _ = fs::remove_file(entry.path());
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // After a successful rename this path no longer exists; the sidecars never do.
        remove_with_sidecars(&self.path);
    }
}
