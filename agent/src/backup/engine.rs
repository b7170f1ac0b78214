//! The backup run: snapshot, pages, chunks, packs, manifest.
//!
//! 1. Reconcile the local index with the store (a manifest stored by a run that was killed
//!    before it could update the index is adopted, after checking the device's signature).
//! 2. Snapshot the live database (one backup step); count rows, read the schema version.
//! 3. Read the snapshot page by page: keyed BLAKE3 chunk id per page; pages whose chunk the
//!    store already holds are referenced, new ones are zstd-compressed into packs of about
//!    the configured size. Each pack is encrypted, stored, and recorded locally at once.
//!    This runs as a pipeline: a reader thread (whole-file hashes), one page worker per
//!    core (ids and compression), the packer in page order, and the row counts of step 2
//!    on a thread of their own meanwhile.
//! 4. Seal the manifest body (page map, chunk locations, file hashes, row counts), sign the
//!    header chained to the previous manifest, store it, and commit the local index.
//!
//! Packs are stored before the manifest that names them, and the manifest is one atomic put:
//! a run killed at any point leaves no visible half-backup, and the next run reuses the packs.
//!
//! [`run_backup_parallel`] uploads up to N packs at once: N workers take sealed packs from a
//! rendezvous channel (so at most N + 1 sealed packs are in memory); the manifest is stored
//! only after every pack was; the first failure stops the run before its manifest.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use otter_keys::envelope::{
    ChunkId, ChunkKey, ChunkLocation, EnvelopeError, ManifestBody, ManifestFields, ManifestHeader,
    PackBuilder, PackEntry, PackId, PackRef, SealedPack, SignedManifest,
};
use otter_keys::time::UtcTime;
use serde_json::Value;

use super::index::{BackupState, IndexError, LocalIndex};
use super::pages::{db_facts, DbFacts, FileHasher, PageCompressor, PageError, PageReader};
use super::snapshot::{remove_leftovers, take_snapshot, SnapshotError};
use super::store::{BackupStore, StoreError};
use super::{BackupConfig, BackupKeys, CHUNK_KEY_EXTRA, MAX_MANIFEST_BYTES};

/// Why a backup failed. Nothing visible is left in the store by a failed backup.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The snapshot could not be taken.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The snapshot could not be read, compressed or queried.
    #[error(transparent)]
    Pages(#[from] PageError),
    /// The local backup state could not be read or written.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Sealing packs or the manifest failed, or a stored manifest does not verify.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The store and the local state disagree in a way that is not a resumable interruption.
    #[error("backup store and local state disagree: {0}")]
    Inconsistent(String),
}

/// What a backup did, with the figures for logs and benchmarks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    /// Sequence number of the new manifest.
    pub sequence: u64,
    /// Hex SHA-256 of its canonical header.
    pub header_hash: String,
    /// The database's page size.
    pub page_size: u32,
    /// Pages in the snapshot.
    pub pages: u64,
    /// Size of the snapshot in bytes.
    pub database_bytes: u64,
    /// Distinct chunks (pages) in the snapshot.
    pub distinct_chunks: u64,
    /// Chunks the store did not hold, shipped in this run.
    pub new_chunks: u64,
    /// Packs stored by this run.
    pub new_packs: u64,
    /// Pack bytes stored by this run (ciphertext).
    pub pack_bytes: u64,
    /// Size of the stored manifest.
    pub manifest_bytes: u64,
    /// Pending packs of an interrupted run that were reused.
    pub resumed_packs: u64,
    /// Time the snapshot took.
    pub snapshot_time: Duration,
    /// Time the whole run took.
    pub total_time: Duration,
}

impl BackupReport {
    /// Bytes sent to the store in all: packs and manifest.
    pub fn shipped_bytes(&self) -> u64 {
        self.pack_bytes + self.manifest_bytes
    }
}

/// Takes one backup of the configured database into `store`, one pack upload at a time.
pub fn run_backup(
    config: &BackupConfig,
    keys: &BackupKeys<'_>,
    store: &dyn BackupStore,
) -> Result<BackupReport, BackupError> {
    run(config, keys, store, None)
}

/// [`run_backup`] with up to `parallel` pack uploads in flight (1 or less: one at a time).
pub fn run_backup_parallel(
    config: &BackupConfig,
    keys: &BackupKeys<'_>,
    store: &(dyn BackupStore + Sync),
    parallel: usize,
) -> Result<BackupReport, BackupError> {
    run(
        config,
        keys,
        store,
        (parallel > 1).then_some((store, parallel)),
    )
}

/// An upload's outcome, from a worker: the pack and its chunks, once stored.
type Uploaded = Result<(PackRef, Vec<PackEntry>), StoreError>;

/// Where sealed packs go: stored at once, or handed to upload workers.
enum Uploads<'a> {
    Serial(&'a dyn BackupStore),
    Parallel {
        work: Option<SyncSender<SealedPack>>,
        done: &'a Receiver<Uploaded>,
    },
}

impl Uploads<'_> {
    /// Records the uploads finished so far; waits for all of them when `all`.
    fn collect(&mut self, state: &BackupState, all: bool) -> Result<(), BackupError> {
        let Uploads::Parallel { work, done } = self else {
            return Ok(());
        };
        if all {
            // No more work: the workers end once the channel is drained.
            *work = None;
        }
        loop {
            let next = if all {
                done.recv().ok()
            } else {
                done.try_recv().ok()
            };
            let Some(uploaded) = next else {
                return Ok(());
            };
            let (pack, entries) = uploaded?;
            state.record_pack(pack, &entries)?;
        }
    }
}

/// Uploads packs from `work` until it closes; after a failure (`stop`), drops the rest.
fn upload_worker(
    store: &(dyn BackupStore + Sync),
    work: &Mutex<Receiver<SealedPack>>,
    done: mpsc::Sender<Uploaded>,
    stop: &AtomicBool,
) {
    loop {
        // A poisoned lock only means another worker panicked; the channel is still whole.
        let next = work.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(mut sealed) = next else {
            return;
        };
        if stop.load(Ordering::SeqCst) {
            continue;
        }
        let result = store
            .put_pack(&sealed.id, &sealed.ciphertext)
            .map(|()| (sealed.pack_ref(), std::mem::take(&mut sealed.entries)));
        if result.is_err() {
            stop.store(true, Ordering::SeqCst);
        }
        if done.send(result).is_err() {
            stop.store(true, Ordering::SeqCst);
        }
    }
}

fn run(
    config: &BackupConfig,
    keys: &BackupKeys<'_>,
    store: &dyn BackupStore,
    parallel: Option<(&(dyn BackupStore + Sync), usize)>,
) -> Result<BackupReport, BackupError> {
    let started = Instant::now();
    let state = BackupState::new(&config.state_dir, &config.device_id);
    remove_leftovers(&state.tmp_dir());
    let mut index = state.load()?;
    let resumed_packs = index.pending_packs as u64;
    let head = reconcile_head(config, keys, store, &index)?;
    forget_missing_packs(store, &mut index)?;

    let snapshot = take_snapshot(&config.database, &state.tmp_dir())?;
    let recipients = keys.recipients.to_vec();
    let reader = PageReader::open(snapshot.path())?;
    let page_size = reader.page_size();
    let target = config.pack_target_size.max(1);
    let mut report = BackupReport {
        sequence: 0,
        header_hash: String::new(),
        page_size,
        pages: reader.page_count(),
        database_bytes: reader.page_count() * u64::from(page_size),
        distinct_chunks: 0,
        new_chunks: 0,
        new_packs: 0,
        pack_bytes: 0,
        manifest_bytes: 0,
        resumed_packs,
        snapshot_time: snapshot.took(),
        total_time: Duration::ZERO,
    };
    let packer = Packer {
        keys,
        recipients: &recipients,
        state: &state,
        target,
        page_size: page_size as usize,
    };
    // Chunks the store held before this run: the page workers read them while the packer
    // records this run's packs in `index.chunks`; merged back afterwards (disjoint sets).
    let prior = std::mem::take(&mut index.chunks);
    let paged = match parallel {
        Some((sync_store, n)) => {
            let (work_tx, work_rx) = mpsc::sync_channel::<SealedPack>(0);
            let (done_tx, done_rx) = mpsc::channel();
            let work_rx = Mutex::new(work_rx);
            let stop = AtomicBool::new(false);
            std::thread::scope(|s| {
                for _ in 0..n {
                    let done_tx = done_tx.clone();
                    let (work_rx, stop) = (&work_rx, &stop);
                    s.spawn(move || upload_worker(sync_store, work_rx, done_tx, stop));
                }
                drop(done_tx);
                let mut uploads = Uploads::Parallel {
                    work: Some(work_tx),
                    done: &done_rx,
                };
                let result = packer.run(
                    reader,
                    snapshot.path(),
                    &prior,
                    &mut index,
                    &mut report,
                    &mut uploads,
                );
                // Stop the workers (they drop what is queued) before they are joined.
                stop.store(result.is_err(), Ordering::SeqCst);
                drop(uploads);
                result
            })?
        }
        None => packer.run(
            reader,
            snapshot.path(),
            &prior,
            &mut index,
            &mut report,
            &mut Uploads::Serial(store),
        )?,
    };
    let shipped = std::mem::replace(&mut index.chunks, prior);
    index.chunks.extend(shipped);
    drop(snapshot);
    let Paged {
        pages,
        hasher,
        facts,
    } = paged;

    // The body: every distinct chunk's location, and the packs they lie in.
    let mut chunks = BTreeMap::new();
    let mut used_packs = BTreeSet::new();
    for id in &pages {
        if chunks.contains_key(id) {
            continue;
        }
        let loc = *index.chunks.get(id).ok_or_else(|| {
            BackupError::Inconsistent(format!("chunk {id} was neither stored nor shipped"))
        })?;
        used_packs.insert(loc.pack);
        chunks.insert(*id, loc);
    }
    report.distinct_chunks = chunks.len() as u64;
    let packs = used_packs
        .iter()
        .map(|id| {
            index
                .packs
                .get(id)
                .map(|&length| PackRef { id: *id, length })
                .ok_or_else(|| BackupError::Inconsistent(format!("pack {id} has no known length")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (file_blake3, file_sha256, _) = hasher.finish();
    let mut extra = BTreeMap::new();
    extra.insert(
        CHUNK_KEY_EXTRA.to_owned(),
        Value::String(hex::encode(*keys.chunk_key.to_bytes_dangerous())),
    );
    let body = ManifestBody {
        page_size,
        page_count: pages.len() as u64,
        pages,
        chunks,
        file_blake3,
        file_sha256,
        row_counts: facts.row_counts,
        schema_version: facts.schema_version,
        extra,
    };

    let now = UtcTime::now();
    let fields = match &head {
        None => ManifestFields::first(config.device_id.clone(), now, packs),
        Some(prev) => ManifestFields::after(prev, now.max(prev.created), packs)?,
    };
    let signed = SignedManifest::seal(fields, &body, keys.signing, &recipients)?;
    let bytes = signed.to_bytes()?;
    store.put_manifest(&config.device_id, signed.header.sequence, &bytes)?;
    state.commit(&signed.header, body.chunks)?;

    report.sequence = signed.header.sequence;
    report.header_hash = signed.header_hash()?;
    report.manifest_bytes = bytes.len() as u64;
    report.total_time = started.elapsed();
    Ok(report)
}

/// Encrypts a full pack and stores it (or hands it to an upload worker); a stored pack is
/// recorded in the local state before anything else happens. Its chunks are known to this
/// run's in-memory index at once, so no later pack repeats them; a failed upload fails the
/// run, which then stores no manifest.
fn ship_pack(
    builder: PackBuilder,
    recipients: &[otter_keys::age::x25519::Recipient],
    uploads: &mut Uploads<'_>,
    state: &BackupState,
    index: &mut LocalIndex,
    report: &mut BackupReport,
) -> Result<(), BackupError> {
    let mut sealed = builder.finish(recipients)?;
    index
        .packs
        .insert(sealed.id, sealed.ciphertext.len() as u64);
    for (chunk, loc) in sealed.locations() {
        index.chunks.entry(chunk).or_insert(loc);
    }
    report.new_packs += 1;
    report.pack_bytes += sealed.ciphertext.len() as u64;
    match uploads {
        Uploads::Serial(store) => {
            store.put_pack(&sealed.id, &sealed.ciphertext)?;
            state.record_pack(sealed.pack_ref(), &sealed.entries)?;
        }
        Uploads::Parallel { work, .. } => {
            if let Some(tx) = work {
                // Blocks until a worker is free; fails only when every worker is gone.
                if let Err(mpsc::SendError(back)) = tx.send(sealed) {
                    sealed = back;
                    uploads.collect(state, true)?;
                    return Err(BackupError::Inconsistent(format!(
                        "pack {}: no upload worker left",
                        sealed.id
                    )));
                }
            }
            uploads.collect(state, false)?;
        }
    }
    Ok(())
}

/// The header the next manifest follows. The store may be one manifest ahead of the index
/// (a run killed between storing its manifest and committing the index): that manifest is
/// adopted once the device's own signature on it verifies. A store behind the index has lost
/// or hidden manifests: refused.
fn reconcile_head(
    config: &BackupConfig,
    keys: &BackupKeys<'_>,
    store: &dyn BackupStore,
    index: &LocalIndex,
) -> Result<Option<ManifestHeader>, BackupError> {
    let local = index.head.as_ref().map_or(0, |h| h.sequence);
    let stored = store
        .list_manifests(&config.device_id)?
        .last()
        .copied()
        .unwrap_or(0);
    if stored < local {
        return Err(BackupError::Inconsistent(format!(
            "the store's newest manifest of device {:?} is #{stored}, but this agent already \
             made #{local}; refusing to continue a chain the store has lost or hidden",
            config.device_id
        )));
    }
    if stored == local {
        return Ok(index.head.clone());
    }
    let bytes = store.get_manifest(&config.device_id, stored, MAX_MANIFEST_BYTES)?;
    let manifest = SignedManifest::from_bytes(&bytes, MAX_MANIFEST_BYTES as usize)?;
    manifest.verify_signature(&keys.signing.public_key())?;
    if manifest.header.device_id != config.device_id || manifest.header.sequence != stored {
        return Err(BackupError::Inconsistent(format!(
            "manifest stored as #{stored} of {:?} is #{} of {:?}",
            config.device_id, manifest.header.sequence, manifest.header.device_id
        )));
    }
    if local > 0 && stored == local + 1 {
        manifest.header.check_follows(index.head.as_ref())?;
    }
    Ok(Some(manifest.header))
}

/// Drops from the index every pack the store no longer holds (and so its chunks), so that
/// their pages are shipped again rather than referenced.
fn forget_missing_packs(
    store: &dyn BackupStore,
    index: &mut LocalIndex,
) -> Result<(), BackupError> {
    let mut missing: BTreeSet<PackId> = BTreeSet::new();
    for id in index.packs.keys() {
        if !store.has_pack(id)? {
            missing.insert(*id);
        }
    }
    if !missing.is_empty() {
        index.packs.retain(|id, _| !missing.contains(id));
        index
            .chunks
            .retain(|_, loc: &mut ChunkLocation| !missing.contains(&loc.pack));
    }
    Ok(())
}

/// Pages per unit of work handed to the page workers (256 KiB of 4 KiB pages).
const BATCH_PAGES: usize = 64;
/// Batches queued between the reader, the page workers and the packer: bounds the memory
/// the pipeline holds to a few MiB whatever the database's size.
const BATCHES_IN_FLIGHT: usize = 4;

/// A run of consecutive pages read from the snapshot.
struct Batch {
    seq: u64,
    first_page: u64,
    data: Vec<u8>,
}

/// A batch after a page worker: every page's chunk id, and the compressed page for each id
/// the store did not hold when the run started.
struct PagedBatch {
    seq: u64,
    ids: Vec<ChunkId>,
    compressed: Vec<Option<Vec<u8>>>,
}

/// What the page pipeline produced besides the packs.
struct Paged {
    /// Chunk id of every page, in page order.
    pages: Vec<ChunkId>,
    /// Whole-file hashes of the snapshot.
    hasher: FileHasher,
    /// Row counts and schema version of the snapshot.
    facts: DbFacts,
}

/// The packing side of a run: what every pack is sealed with and recorded in.
struct Packer<'a> {
    keys: &'a BackupKeys<'a>,
    recipients: &'a [otter_keys::age::x25519::Recipient],
    state: &'a BackupState,
    target: usize,
    page_size: usize,
}

/// The number of page workers: one per core, at most 4.
fn page_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4))
}

impl Packer<'_> {
    /// Reads the snapshot through a pipeline and ships its new pages in packs:
    ///
    /// - a reader thread reads batches of pages in order and feeds the whole-file hashes;
    /// - page workers (one per core) compute each page's keyed id and compress the pages
    ///   whose ids the store did not hold (`prior`);
    /// - this thread takes the batches back in page order, records every id, adds each new
    ///   chunk once to the current pack, and seals and ships full packs;
    /// - another thread counts the snapshot's rows meanwhile.
    ///
    /// Channels are bounded, so memory stays a few batches and packs. If this thread fails,
    /// dropping its receiver ends the workers, whose end ends the reader.
    fn run(
        &self,
        reader: PageReader,
        snapshot: &std::path::Path,
        prior: &BTreeMap<ChunkId, ChunkLocation>,
        index: &mut LocalIndex,
        report: &mut BackupReport,
        uploads: &mut Uploads<'_>,
    ) -> Result<Paged, BackupError> {
        let page_count = usize::try_from(reader.page_count()).unwrap_or(0);
        let chunk_key = self.keys.chunk_key;
        let page_size = self.page_size;
        std::thread::scope(|s| {
            let (work_tx, work_rx) = mpsc::sync_channel::<Batch>(BATCHES_IN_FLIGHT);
            let (done_tx, done_rx) = mpsc::sync_channel(BATCHES_IN_FLIGHT);
            let facts = s.spawn(|| db_facts(snapshot));
            let reading = s.spawn(move || read_batches(reader, &work_tx));
            // Owned by the workers only: when the last one ends, the reader's sends fail.
            let work_rx = Arc::new(Mutex::new(work_rx));
            for _ in 0..page_workers() {
                let (work_rx, done_tx) = (Arc::clone(&work_rx), done_tx.clone());
                s.spawn(move || page_worker(&work_rx, &done_tx, chunk_key, prior, page_size));
            }
            drop((work_rx, done_tx));
            let packed = self.pack_batches(&done_rx, page_count, prior, index, report, uploads);
            drop(done_rx);
            let read = reading.join();
            let facts = facts.join();
            let (hasher, batches) = match read {
                Ok(read) => read?,
                Err(_) => return Err(panicked("the snapshot reader")),
            };
            let pages = packed?;
            let expected = page_count.div_ceil(BATCH_PAGES) as u64;
            if batches != expected || pages.len() != page_count {
                return Err(BackupError::Inconsistent(format!(
                    "the snapshot's {page_count} pages were not all read ({} packed)",
                    pages.len()
                )));
            }
            let facts = match facts {
                Ok(facts) => facts?,
                Err(_) => return Err(panicked("the row count")),
            };
            Ok(Paged {
                pages,
                hasher,
                facts,
            })
        })
    }

    /// Takes the workers' batches back in page order; returns every page's chunk id.
    fn pack_batches(
        &self,
        done: &Receiver<Result<PagedBatch, PageError>>,
        page_count: usize,
        prior: &BTreeMap<ChunkId, ChunkLocation>,
        index: &mut LocalIndex,
        report: &mut BackupReport,
        uploads: &mut Uploads<'_>,
    ) -> Result<Vec<ChunkId>, BackupError> {
        let capacity = self.target + self.page_size * 2;
        let mut builder = PackBuilder::with_capacity(capacity);
        let mut pages = Vec::with_capacity(page_count);
        let mut waiting: BTreeMap<u64, PagedBatch> = BTreeMap::new();
        let mut next = 0u64;
        for batch in done {
            let batch = batch?;
            waiting.insert(batch.seq, batch);
            while let Some(batch) = waiting.remove(&next) {
                next += 1;
                for (id, compressed) in batch.ids.into_iter().zip(batch.compressed) {
                    pages.push(id);
                    if prior.contains_key(&id)
                        || index.chunks.contains_key(&id)
                        || builder.contains(&id)
                    {
                        continue;
                    }
                    let compressed = compressed.ok_or_else(|| {
                        BackupError::Inconsistent(format!("new chunk {id} was not compressed"))
                    })?;
                    builder.add(id, &compressed)?;
                    report.new_chunks += 1;
                    if builder.len() >= self.target {
                        let full =
                            std::mem::replace(&mut builder, PackBuilder::with_capacity(capacity));
                        ship_pack(full, self.recipients, uploads, self.state, index, report)?;
                    }
                }
            }
        }
        if !builder.is_empty() {
            ship_pack(builder, self.recipients, uploads, self.state, index, report)?;
        }
        uploads.collect(self.state, true)?;
        Ok(pages)
    }
}

fn panicked(what: &str) -> BackupError {
    BackupError::Inconsistent(format!("{what} thread panicked; no manifest was stored"))
}

/// Reads the snapshot in batches of pages, in order, hashing the whole file on the way.
/// Returns the hashes and the number of batches sent; stops early (without error) when the
/// workers are gone, which only happens when the run failed elsewhere.
fn read_batches(
    mut reader: PageReader,
    work: &SyncSender<Batch>,
) -> Result<(FileHasher, u64), PageError> {
    let mut hasher = FileHasher::new();
    let (mut seq, mut first_page) = (0u64, 0u64);
    loop {
        let mut data = Vec::new();
        let n = reader.next_pages(&mut data, BATCH_PAGES)?;
        if n == 0 {
            return Ok((hasher, seq));
        }
        hasher.update(&data);
        let batch = Batch {
            seq,
            first_page,
            data,
        };
        if work.send(batch).is_err() {
            return Ok((hasher, seq));
        }
        seq += 1;
        first_page += n as u64;
    }
}

/// Computes the chunk id of every page of each batch, and compresses the pages whose ids
/// are not in `prior`. Ends when the batches end or the packer is gone.
fn page_worker(
    work: &Mutex<Receiver<Batch>>,
    done: &SyncSender<Result<PagedBatch, PageError>>,
    chunk_key: &ChunkKey,
    prior: &BTreeMap<ChunkId, ChunkLocation>,
    page_size: usize,
) {
    let mut compressor = match PageCompressor::new() {
        Ok(c) => c,
        Err(e) => {
            let _ = done.send(Err(e));
            return;
        }
    };
    loop {
        // A poisoned lock only means another worker panicked; the channel is still whole.
        let next = work.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(batch) = next else {
            return;
        };
        let pages = batch.data.chunks_exact(page_size.max(1));
        let mut ids = Vec::with_capacity(pages.len());
        let mut compressed = Vec::with_capacity(pages.len());
        let mut result = Ok(());
        for (k, page) in pages.enumerate() {
            let id = chunk_key.chunk_id(page);
            let packed = if prior.contains_key(&id) {
                None
            } else {
                match compressor.compress(batch.first_page + k as u64, page) {
                    Ok(z) => Some(z),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            };
            ids.push(id);
            compressed.push(packed);
        }
        let out = result.map(|()| PagedBatch {
            seq: batch.seq,
            ids,
            compressed,
        });
        if done.send(out).is_err() {
            return;
        }
    }
}
