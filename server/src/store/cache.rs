//! The in-memory cache of the repository's metadata files (`repo/metadata/*`), so that
//! serving `timestamp.json` is a hash-map lookup instead of a `head` and a `get` on the
//! object store.
//!
//! It is written through: [`super::Store::put`] updates it whenever a metadata file is
//! written (publish, re-sign, root rotation, delegated roles), so whoever writes metadata
//! through the store keeps it right. Reads fill it on a miss ([`super::Store::read_metadata`]);
//! a fill that raced with a write is dropped (a generation counter), so the cache never holds
//! a file older than the store's. It lives in memory only: a restart starts it empty. It
//! assumes this process is the only writer of the store's metadata (the data dir lock makes
//! it so); after changing files behind the server's back, call
//! [`MetadataCache::invalidate_all`] or restart.
//!
//! It is bounded: files above [`MAX_FILE_BYTES`] are not kept, and when the total passes
//! [`BUDGET_BYTES`] the least recently used files are dropped. Names that do not exist are
//! remembered too (clients ask for the next root version on every refresh), at most
//! [`MAX_MISSING`] of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use actix_web::web::Bytes;
use object_store::ObjectMeta;

/// Largest metadata file the cache keeps; larger ones are streamed from the store.
pub const MAX_FILE_BYTES: usize = 8 * 1024 * 1024;
/// Memory (file bytes plus a small overhead per entry) the cache may hold in all.
pub const BUDGET_BYTES: usize = 64 * 1024 * 1024;
/// Most names remembered as missing.
pub const MAX_MISSING: usize = 1024;
/// What an entry costs besides its bytes.
const ENTRY_OVERHEAD: usize = 256;

/// A metadata file held in memory, with the store's metadata of that very content.
#[derive(Debug)]
pub struct CachedFile {
    /// The file's bytes.
    pub bytes: Bytes,
    /// What the store said about it (size, modification time, entity tag).
    pub meta: ObjectMeta,
    /// Its HTTP entity tag, from `meta` ([`super::entity_tag`]).
    pub etag: String,
    last_used: AtomicU64,
}

impl CachedFile {
    /// A file and the store's metadata of the same content.
    pub fn new(bytes: Bytes, meta: ObjectMeta) -> CachedFile {
        let etag = super::entity_tag(&meta);
        CachedFile {
            bytes,
            meta,
            etag,
            last_used: AtomicU64::new(0),
        }
    }

    fn cost(&self) -> usize {
        self.bytes.len() + ENTRY_OVERHEAD
    }
}

/// What the cache knows about a name.
#[derive(Debug, Clone)]
pub enum Cached {
    /// The file.
    File(Arc<CachedFile>),
    /// The store has no such file.
    Missing,
}

#[derive(Default)]
struct Inner {
    files: HashMap<String, Cached>,
    /// Bumped by every write and invalidation; a fill started under an older value is
    /// dropped.
    generation: u64,
    /// Sum of the cost of the files held.
    bytes: usize,
    /// Names held as missing.
    missing: usize,
}

impl Inner {
    fn remove(&mut self, name: &str) {
        match self.files.remove(name) {
            Some(Cached::File(f)) => self.bytes -= f.cost(),
            Some(Cached::Missing) => self.missing -= 1,
            None => {}
        }
    }

    fn put(&mut self, name: &str, value: Cached, now: u64) {
        self.remove(name);
        match &value {
            Cached::File(f) => {
                if f.bytes.len() > MAX_FILE_BYTES {
                    return;
                }
                f.last_used.store(now, Ordering::Relaxed);
                self.bytes += f.cost();
            }
            Cached::Missing => {
                if self.missing >= MAX_MISSING {
                    // Amortized: a flood of made-up names clears them in one sweep.
                    self.files.retain(|_, v| matches!(v, Cached::File(_)));
                    self.missing = 0;
                }
                self.missing += 1;
            }
        }
        self.files.insert(name.to_owned(), value);
        if self.bytes > BUDGET_BYTES {
            self.shrink(name);
        }
    }

    /// Drops the least recently used files (never `keep`) until at most 3/4 of the budget
    /// is used, so that the next inserts do not sweep again.
    fn shrink(&mut self, keep: &str) {
        let mut by_age: Vec<(u64, String)> = self
            .files
            .iter()
            .filter_map(|(k, v)| match v {
                Cached::File(f) if k != keep => {
                    Some((f.last_used.load(Ordering::Relaxed), k.clone()))
                }
                _ => None,
            })
            .collect();
        by_age.sort_unstable();
        for (_, name) in by_age {
            if self.bytes <= BUDGET_BYTES / 4 * 3 {
                break;
            }
            self.remove(&name);
        }
    }
}

/// The metadata cache. Cheap to share (`Arc`); every method takes `&self`.
#[derive(Default)]
pub struct MetadataCache {
    inner: RwLock<Inner>,
    /// Serializes metadata writes with their cache updates (see [`super::Store::put`]).
    pub(super) writes: tokio::sync::Mutex<()>,
    /// Advanced by each insert; a file's `last_used` is the clock when it was last read.
    clock: AtomicU64,
}

impl std::fmt::Debug for MetadataCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.read();
        f.debug_struct("MetadataCache")
            .field("entries", &inner.files.len())
            .field("bytes", &inner.bytes)
            .finish()
    }
}

impl MetadataCache {
    /// An empty cache.
    pub fn new() -> MetadataCache {
        MetadataCache::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // The maps stay consistent even if a holder panicked: each update is one call.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// What the cache holds for metadata file `name` (e.g. `timestamp.json`), if anything.
    pub fn get(&self, name: &str) -> Option<Cached> {
        let hit = self.read().files.get(name).cloned();
        if let Some(Cached::File(f)) = &hit {
            // The clock moves on each insert only, so a file read again and again is
            // written once per insert, not on every read (two workers writing one cache
            // line on every request slow both down).
            let now = self.clock.load(Ordering::Relaxed);
            if f.last_used.load(Ordering::Relaxed) != now {
                f.last_used.store(now, Ordering::Relaxed);
            }
        }
        hit
    }

    /// The current generation: take it before reading the store for [`MetadataCache::fill`].
    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    /// Stores what a read of the store found (`None`: no such file), unless a write or an
    /// invalidation happened since `generation` was taken (then the read may be older than
    /// the store, and is dropped). Returns whether it was kept.
    pub fn fill(&self, name: &str, found: Option<Arc<CachedFile>>, generation: u64) -> bool {
        let mut inner = self.write();
        if inner.generation != generation {
            return false;
        }
        let now = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
        inner.put(name, found.map_or(Cached::Missing, Cached::File), now);
        true
    }

    /// Records that `name` was just written with this content (call after the store's write
    /// succeeded). Fills in flight are dropped.
    pub fn insert(&self, name: &str, file: Arc<CachedFile>) {
        let mut inner = self.write();
        inner.generation += 1;
        let now = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
        inner.put(name, Cached::File(file), now);
    }

    /// Forgets `name` (after a write of it failed or was not fully known, or a delete): the
    /// next read goes to the store. Fills in flight are dropped.
    pub fn invalidate(&self, name: &str) {
        let mut inner = self.write();
        inner.generation += 1;
        inner.remove(name);
    }

    /// Forgets everything (e.g. after the store was changed by another program).
    pub fn invalidate_all(&self) {
        let mut inner = self.write();
        inner.generation += 1;
        inner.files.clear();
        inner.bytes = 0;
        inner.missing = 0;
    }

    /// Number of names held (files and missing names).
    pub fn len(&self) -> usize {
        self.read().files.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the files held, with their per-entry overhead.
    pub fn held_bytes(&self) -> usize {
        self.read().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(len: usize, tag: &str) -> Arc<CachedFile> {
        let meta = ObjectMeta {
            location: object_store::path::Path::from("repo/metadata/x"),
            last_modified: Default::default(),
            size: len as u64,
            e_tag: Some(tag.into()),
            version: None,
        };
        Arc::new(CachedFile::new(Bytes::from(vec![7u8; len]), meta))
    }

    fn etag_of(c: &MetadataCache, name: &str) -> Option<String> {
        match c.get(name)? {
            Cached::File(f) => Some(f.etag.clone()),
            Cached::Missing => Some("missing".into()),
        }
    }

    #[test]
    fn a_fill_older_than_a_write_is_dropped() {
        let c = MetadataCache::new();
        let g = c.generation();
        // A write lands while a reader was fetching the old file from the store.
        c.insert("timestamp.json", file(10, "new"));
        assert!(!c.fill("timestamp.json", Some(file(10, "old")), g));
        assert_eq!(etag_of(&c, "timestamp.json").as_deref(), Some("\"new\""));
        // A fill that saw no write is kept.
        let g = c.generation();
        assert!(c.fill("2.root.json", None, g));
        assert_eq!(etag_of(&c, "2.root.json").as_deref(), Some("missing"));
        // Writing a name that was missing replaces the negative entry.
        c.insert("2.root.json", file(5, "r2"));
        assert_eq!(etag_of(&c, "2.root.json").as_deref(), Some("\"r2\""));
        c.invalidate("2.root.json");
        assert!(c.get("2.root.json").is_none());
        c.invalidate_all();
        assert!(c.is_empty());
        assert_eq!(c.held_bytes(), 0);
    }

    #[test]
    fn the_cache_stays_within_its_budget() {
        let c = MetadataCache::new();
        let big = MAX_FILE_BYTES;
        for i in 0..(BUDGET_BYTES / big + 4) {
            c.insert(&format!("{i}.targets.json"), file(big, &i.to_string()));
            assert!(c.held_bytes() <= BUDGET_BYTES, "after {i}");
        }
        // The newest is always kept; the oldest went.
        let last = BUDGET_BYTES / big + 3;
        assert!(c.get(&format!("{last}.targets.json")).is_some());
        assert!(c.get("0.targets.json").is_none());
        // Too large to keep at all.
        c.insert("huge.json", file(MAX_FILE_BYTES + 1, "h"));
        assert!(c.get("huge.json").is_none());
        // Missing names are bounded too.
        for i in 0..(MAX_MISSING * 3) {
            let g = c.generation();
            c.fill(&format!("{i}.root.json"), None, g);
        }
        assert!(
            c.len() <= MAX_MISSING + BUDGET_BYTES / big + 1,
            "{}",
            c.len()
        );
    }

    #[test]
    fn recently_used_files_survive_eviction() {
        let c = MetadataCache::new();
        let big = MAX_FILE_BYTES;
        c.insert("timestamp.json", file(big, "ts"));
        for i in 0..(BUDGET_BYTES / big * 2) {
            assert!(c.get("timestamp.json").is_some(), "evicted at {i}");
            c.insert(&format!("{i}.snapshot.json"), file(big, "s"));
        }
    }
}
