//! What the agent's end-to-end TUF tests share:
//!
//! - [`Repo`]: a hand-built TUF repository in a temporary directory, signed with the
//!   otter-keys library, laid out as a static mirror (`metadata/N.root.json`,
//!   `metadata/V.ROLE.json` with the role name percent-quoted, `metadata/timestamp.json`,
//!   `targets/HASH.NAME` or `targets/DIR/HASH.NAME`), with knobs to make every kind of bad
//!   metadata: wrong or too few signing keys, expired, lower versions, swapped, edited or
//!   oversized files.
//! - [`Server`]: a tiny static HTTP/1.1 file server on loopback (ephemeral port) that logs
//!   every request path in order, can stream endless data or garbage for a path, and stops
//!   (its threads joined) when dropped.
//! - [`Client`]: a client's metadata and target directories, driven either through the
//!   library's `Updater` or through the real `otter-agent` binary.
//!
//! Every test file includes this module and uses part of it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use otter_agent::tuf::{init_metadata_dir, HttpFetcher, UpdateError, Updater, UpdaterConfig};
use otter_keys::crypto::SigningKey;
use otter_keys::hash::{hashes_of, sha256_hex};
use otter_keys::metadata::{
    DelegatedRole, Delegations, MetaFile, Metadata, Role, RoleKeys, Root, Snapshot, TargetFile,
    Targets, Timestamp, SPEC_VERSION,
};
use otter_keys::time::UtcTime;
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Keys, times, quoting
// ---------------------------------------------------------------------------------------

/// Seed of the initial root key.
pub const ROOT_SEED: u8 = 1;
/// Seed of the initial targets key.
pub const TARGETS_SEED: u8 = 2;
/// Seed of the initial snapshot key.
pub const SNAPSHOT_SEED: u8 = 3;
/// Seed of the initial timestamp key.
pub const TIMESTAMP_SEED: u8 = 4;

/// A deterministic ed25519 key: the same seed always gives the same key.
pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_seed(&[seed; 32])
}

/// The keys and threshold of a role, for root or a delegation.
pub fn role_keys(seeds: &[u8], threshold: u32) -> RoleKeys {
    RoleKeys {
        keyids: seeds.iter().map(|s| key(*s).key_id()).collect(),
        threshold,
        extra: BTreeMap::new(),
    }
}

/// `n` days from now (negative: in the past). The binary reads the system clock, so
/// expiries are relative to it.
pub fn days(n: i64) -> UtcTime {
    UtcTime::now().plus_days(n)
}

/// An expiry that has passed.
pub fn past() -> UtcTime {
    days(-1)
}

/// Percent-quotes a role name or a path segment the way python-tuf does
/// (`urllib.parse.quote(name, "")`): only ASCII letters, digits and `_.-~` stay as they are.
/// Written independently of the agent's own quoting, so the tests check it.
pub fn quote(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Repository builder
// ---------------------------------------------------------------------------------------

/// A TUF repository written as static files into a temporary directory
/// (`metadata/` and `targets/`), ready to be served by [`Server`].
///
/// The typed contents (`root`, `targets`, `snapshot`, `timestamp`) and who signs each role
/// (`signers`) are public: a test changes them, then publishes. `publish_*` writes the
/// current contents without changing versions; `update_*` bumps the version first and, for
/// snapshot and timestamp, recomputes `meta` from what was published.
pub struct Repo {
    dir: tempfile::TempDir,
    /// Whether `root.consistent_snapshot` is set (versioned and hash-prefixed file names).
    pub consistent: bool,
    /// Whether snapshot and timestamp `meta` entries carry `length` and `hashes`.
    pub meta_hashes: bool,
    /// The root contents.
    pub root: Root,
    /// `targets` and every delegated role, by role name.
    pub targets: BTreeMap<String, Targets>,
    /// The snapshot contents.
    pub snapshot: Snapshot,
    /// The timestamp contents.
    pub timestamp: Timestamp,
    /// The seeds of the keys that sign each role's next publication.
    pub signers: BTreeMap<String, Vec<u8>>,
    /// Root keys that also sign the next root (the old keys during a rotation); cleared
    /// once that root is published.
    pub old_root_signers: Vec<u8>,
    /// Target contents by target path.
    pub artifacts: BTreeMap<String, Vec<u8>>,
    published: BTreeMap<String, Vec<u8>>,
}

impl Repo {
    /// A repository with consistent snapshots, one key per top-level role (threshold 1),
    /// everything at version 1 and published, expiring in a year.
    pub fn new() -> Repo {
        Repo::build(true)
    }

    /// The same without consistent snapshots (`snapshot.json`, `targets.json`, targets by
    /// their plain path).
    pub fn without_consistent_snapshot() -> Repo {
        Repo::build(false)
    }

    /// A repository whose every key differs from [`Repo::new`]'s (seeds offset by `offset`):
    /// what a malicious mirror would serve.
    pub fn with_other_keys(offset: u8) -> Repo {
        let mut repo = Repo::build(true);
        for (role, seed) in [
            ("root", ROOT_SEED),
            ("targets", TARGETS_SEED),
            ("snapshot", SNAPSHOT_SEED),
            ("timestamp", TIMESTAMP_SEED),
        ] {
            repo.set_role_keys(role, &[seed + offset], 1);
        }
        repo.old_root_signers.clear();
        repo.publish_root();
        repo.publish_targets("targets");
        repo.refresh_snapshot_meta();
        repo.publish_snapshot();
        repo.refresh_timestamp_meta();
        repo.publish_timestamp();
        repo
    }

    fn build(consistent: bool) -> Repo {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("metadata")).unwrap();
        std::fs::create_dir_all(dir.path().join("targets")).unwrap();
        let mut keys = BTreeMap::new();
        let mut roles = BTreeMap::new();
        let mut signers = BTreeMap::new();
        for (role, seed) in [
            ("root", ROOT_SEED),
            ("targets", TARGETS_SEED),
            ("snapshot", SNAPSHOT_SEED),
            ("timestamp", TIMESTAMP_SEED),
        ] {
            keys.insert(key(seed).key_id(), key(seed).public_key());
            roles.insert(role.to_string(), role_keys(&[seed], 1));
            signers.insert(role.to_string(), vec![seed]);
        }
        let expires = days(365);
        let root = Root {
            type_: "root".into(),
            spec_version: SPEC_VERSION.into(),
            consistent_snapshot: Some(consistent),
            version: 1,
            expires,
            keys,
            roles,
            extra: BTreeMap::new(),
        };
        let targets = Targets {
            type_: "targets".into(),
            spec_version: SPEC_VERSION.into(),
            version: 1,
            expires,
            targets: BTreeMap::new(),
            delegations: None,
            extra: BTreeMap::new(),
        };
        let snapshot = Snapshot {
            type_: "snapshot".into(),
            spec_version: SPEC_VERSION.into(),
            version: 1,
            expires,
            meta: BTreeMap::new(),
            extra: BTreeMap::new(),
        };
        let timestamp = Timestamp {
            type_: "timestamp".into(),
            spec_version: SPEC_VERSION.into(),
            version: 1,
            expires,
            meta: BTreeMap::from([("snapshot.json".to_string(), meta_file(1, None))]),
            extra: BTreeMap::new(),
        };
        let mut repo = Repo {
            dir,
            consistent,
            meta_hashes: false,
            root,
            targets: BTreeMap::from([("targets".to_string(), targets)]),
            snapshot,
            timestamp,
            signers,
            old_root_signers: Vec::new(),
            artifacts: BTreeMap::new(),
            published: BTreeMap::new(),
        };
        repo.publish_root();
        repo.publish_targets("targets");
        repo.refresh_snapshot_meta();
        repo.publish_snapshot();
        repo.refresh_timestamp_meta();
        repo.publish_timestamp();
        repo
    }

    /// The directory the server serves.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    // -- file names ------------------------------------------------------------------

    /// Where metadata of `role` at `version` is published, relative to the repository
    /// (`metadata/N.root.json`, `metadata/timestamp.json`, `metadata/V.ROLE.json` or, without
    /// consistent snapshots, `metadata/ROLE.json`).
    pub fn metadata_file(&self, role: &str, version: u64) -> String {
        match role {
            "root" => format!("metadata/{version}.root.json"),
            "timestamp" => "metadata/timestamp.json".into(),
            _ if self.consistent => format!("metadata/{version}.{}.json", quote(role)),
            _ => format!("metadata/{}.json", quote(role)),
        }
    }

    /// Where the current version of `role` is published.
    pub fn current_file(&self, role: &str) -> String {
        let version = match role {
            "root" => self.root.version,
            "timestamp" => self.timestamp.version,
            "snapshot" => self.snapshot.version,
            other => self.targets[other].version,
        };
        self.metadata_file(role, version)
    }

    /// Where a target with these contents is published: `targets/DIR/SHA256.NAME` with
    /// consistent snapshots, `targets/PATH` without; every path segment quoted.
    pub fn artifact_file(&self, target: &str, content: &[u8]) -> String {
        let remote = match (self.consistent, target.rsplit_once('/')) {
            (true, Some((dir, name))) => format!("{dir}/{}.{name}", sha256_hex(content)),
            (true, None) => format!("{}.{target}", sha256_hex(content)),
            (false, _) => target.to_string(),
        };
        let quoted: Vec<String> = remote.split('/').map(quote).collect();
        format!("targets/{}", quoted.join("/"))
    }

    /// Where the target `target` is published according to its signed hash (in whichever
    /// role lists it).
    pub fn signed_artifact_file(&self, target: &str) -> String {
        let info = self
            .targets
            .values()
            .find_map(|t| t.targets.get(target))
            .unwrap_or_else(|| panic!("no role lists {target}"));
        let remote = match (self.consistent, target.rsplit_once('/')) {
            (true, Some((dir, name))) => format!("{dir}/{}.{name}", info.hashes["sha256"]),
            (true, None) => format!("{}.{target}", info.hashes["sha256"]),
            (false, _) => target.to_string(),
        };
        let quoted: Vec<String> = remote.split('/').map(quote).collect();
        format!("targets/{}", quoted.join("/"))
    }

    // -- raw files: the knobs of a hostile mirror ---------------------------------------

    /// The bytes of a published file.
    pub fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.path().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    /// Replaces (or creates) a published file.
    pub fn write(&self, rel: &str, bytes: &[u8]) {
        let path = self.path().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, bytes).unwrap();
    }

    /// Removes a published file.
    pub fn remove(&self, rel: &str) {
        std::fs::remove_file(self.path().join(rel)).unwrap();
    }

    /// Serves the bytes of `from` at `to` as well.
    pub fn copy(&self, from: &str, to: &str) {
        self.write(to, &self.read(from));
    }

    /// Swaps two published files.
    pub fn swap(&self, a: &str, b: &str) {
        let (ba, bb) = (self.read(a), self.read(b));
        self.write(a, &bb);
        self.write(b, &ba);
    }

    /// Makes a published file `extra` bytes longer with trailing whitespace (still valid
    /// JSON with valid signatures: only size caps can refuse it).
    pub fn pad(&self, rel: &str, extra: usize) {
        let mut bytes = self.read(rel);
        bytes.extend(std::iter::repeat_n(b' ', extra));
        self.write(rel, &bytes);
    }

    /// Edits the `signed` object of a published file and keeps its old signatures: what an
    /// attacker without the keys can do.
    pub fn edit_signed(&self, rel: &str, edit: impl FnOnce(&mut Value)) {
        let mut doc: Value = serde_json::from_slice(&self.read(rel)).unwrap();
        edit(doc.get_mut("signed").unwrap());
        self.write(rel, &serde_json::to_vec_pretty(&doc).unwrap());
    }

    /// Edits the `signatures` array of a published file.
    pub fn edit_signatures(&self, rel: &str, edit: impl FnOnce(&mut Vec<Value>)) {
        let mut doc: Value = serde_json::from_slice(&self.read(rel)).unwrap();
        let Value::Array(sigs) = doc.get_mut("signatures").unwrap() else {
            panic!("signatures is not an array");
        };
        edit(sigs);
        self.write(rel, &serde_json::to_vec_pretty(&doc).unwrap());
    }

    /// The published bytes of root version `version`.
    pub fn root_bytes(&self, version: u64) -> Vec<u8> {
        self.read(&self.metadata_file("root", version))
    }

    // -- signing and publishing ----------------------------------------------------------

    /// Metadata with `signed` contents, signed by the keys of `seeds`, serialised.
    pub fn sign<T: Role + Clone>(signed: &T, seeds: &[u8]) -> Vec<u8> {
        let mut md = Metadata::new(signed.clone()).unwrap();
        for seed in seeds {
            md.sign(&key(*seed));
        }
        md.to_bytes()
    }

    /// Writes the current root as `metadata/N.root.json`, signed by the root signers and
    /// by `old_root_signers` (which are then forgotten).
    pub fn publish_root(&mut self) {
        let mut seeds = self.signers["root"].clone();
        for s in std::mem::take(&mut self.old_root_signers) {
            if !seeds.contains(&s) {
                seeds.push(s);
            }
        }
        let bytes = Repo::sign(&self.root, &seeds);
        self.write(&self.metadata_file("root", self.root.version), &bytes);
    }

    /// Root version + 1, published.
    pub fn bump_root(&mut self) {
        self.root.version += 1;
        self.publish_root();
    }

    /// Writes the current contents of targets role `role`.
    pub fn publish_targets(&mut self, role: &str) {
        let bytes = Repo::sign(&self.targets[role], &self.signers[role]);
        self.write(
            &self.metadata_file(role, self.targets[role].version),
            &bytes,
        );
        self.published.insert(role.to_string(), bytes);
    }

    /// Writes the current snapshot.
    pub fn publish_snapshot(&mut self) {
        let bytes = Repo::sign(&self.snapshot, &self.signers["snapshot"]);
        self.write(
            &self.metadata_file("snapshot", self.snapshot.version),
            &bytes,
        );
        self.published.insert("snapshot".into(), bytes);
    }

    /// Writes the current timestamp.
    pub fn publish_timestamp(&mut self) {
        let bytes = Repo::sign(&self.timestamp, &self.signers["timestamp"]);
        self.write("metadata/timestamp.json", &bytes);
    }

    /// Sets snapshot `meta` to the current version of every targets role (with the length
    /// and hashes of what was published when `meta_hashes`).
    pub fn refresh_snapshot_meta(&mut self) {
        self.snapshot.meta = self
            .targets
            .iter()
            .map(|(role, t)| {
                let bytes = self.meta_hashes.then(|| self.published[role].as_slice());
                (format!("{role}.json"), meta_file(t.version, bytes))
            })
            .collect();
    }

    /// Sets timestamp `meta` to the current snapshot.
    pub fn refresh_timestamp_meta(&mut self) {
        let bytes = self
            .meta_hashes
            .then(|| self.published["snapshot"].as_slice());
        self.timestamp.meta = BTreeMap::from([(
            "snapshot.json".to_string(),
            meta_file(self.snapshot.version, bytes),
        )]);
    }

    /// Targets role version + 1, published (snapshot and timestamp unchanged).
    pub fn update_targets(&mut self, role: &str) {
        self.targets.get_mut(role).unwrap().version += 1;
        self.publish_targets(role);
    }

    /// Snapshot names the current targets versions, version + 1, published; then
    /// [`Self::update_timestamp`].
    pub fn update_snapshot(&mut self) {
        self.refresh_snapshot_meta();
        self.snapshot.version += 1;
        self.publish_snapshot();
        self.update_timestamp();
    }

    /// Timestamp names the current snapshot, version + 1, published.
    pub fn update_timestamp(&mut self) {
        self.refresh_timestamp_meta();
        self.timestamp.version += 1;
        self.publish_timestamp();
    }

    /// A new release: every role in `roles` gets a new version, then snapshot and timestamp.
    pub fn release(&mut self, roles: &[&str]) {
        for role in roles {
            self.update_targets(role);
        }
        self.update_snapshot();
    }

    // -- keys ------------------------------------------------------------------------------

    /// Sets the keys and threshold of a top-level role in root (the next root must still be
    /// published), and who signs it from now on. Keys no role uses any more leave root:
    /// they are revoked. For `root`, the old root keys also sign the next root.
    pub fn set_role_keys(&mut self, role: &str, seeds: &[u8], threshold: u32) {
        if role == "root" {
            self.old_root_signers = self.signers["root"].clone();
        }
        for seed in seeds {
            self.root
                .keys
                .insert(key(*seed).key_id(), key(*seed).public_key());
        }
        self.root
            .roles
            .insert(role.to_string(), role_keys(seeds, threshold));
        self.signers.insert(role.to_string(), seeds.to_vec());
        let used: Vec<_> = self
            .root
            .roles
            .values()
            .flat_map(|r| r.keyids.clone())
            .collect();
        self.root.keys.retain(|id, _| used.contains(id));
    }

    // -- delegations and targets -----------------------------------------------------------

    /// Delegates from `parent` to `role` (threshold 1 of one key, not terminating) for
    /// target paths matching `paths`.
    pub fn delegate(&mut self, parent: &str, role: &str, seed: u8, paths: &[&str]) {
        let r = delegated_role(role, &[seed], 1, false, Some(paths), None);
        self.delegate_role(parent, r, &[seed]);
    }

    /// Adds delegation `r` to `parent` with the keys of `seeds` (who also sign `r`'s
    /// metadata from now on); `r`'s metadata starts empty at version 1 unless it exists.
    pub fn delegate_role(&mut self, parent: &str, r: DelegatedRole, seeds: &[u8]) {
        let name = r.name.clone();
        let expires = self.targets["targets"].expires;
        let p = self.targets.get_mut(parent).unwrap();
        let d = p.delegations.get_or_insert_with(|| Delegations {
            keys: BTreeMap::new(),
            roles: Some(Vec::new()),
            extra: BTreeMap::new(),
        });
        for seed in seeds {
            d.keys.insert(key(*seed).key_id(), key(*seed).public_key());
        }
        d.roles.get_or_insert_with(Vec::new).push(r);
        self.targets.entry(name.clone()).or_insert_with(|| Targets {
            type_: "targets".into(),
            spec_version: SPEC_VERSION.into(),
            version: 1,
            expires,
            targets: BTreeMap::new(),
            delegations: None,
            extra: BTreeMap::new(),
        });
        self.signers.insert(name, seeds.to_vec());
    }

    /// Lists target `target` with `content` in role `role` and publishes the file at its
    /// hash-prefixed (or plain) path. The role's metadata must still be published.
    pub fn add_target(&mut self, role: &str, target: &str, content: &[u8]) {
        self.targets.get_mut(role).unwrap().targets.insert(
            target.to_string(),
            TargetFile {
                length: content.len() as u64,
                hashes: hashes_of(content),
                extra: BTreeMap::new(),
            },
        );
        self.artifacts.insert(target.to_string(), content.to_vec());
        self.write(&self.artifact_file(target, content), content);
    }
}

impl Default for Repo {
    fn default() -> Self {
        Repo::new()
    }
}

/// A `meta` entry: the version, plus length and hashes of `bytes` when given.
pub fn meta_file(version: u64, bytes: Option<&[u8]>) -> MetaFile {
    MetaFile {
        version,
        length: bytes.map(|b| b.len() as u64),
        hashes: bytes.map(hashes_of),
        extra: BTreeMap::new(),
    }
}

/// A delegated role: its keys, threshold, whether it terminates the search, and either
/// path patterns or hash prefixes.
pub fn delegated_role(
    name: &str,
    seeds: &[u8],
    threshold: u32,
    terminating: bool,
    paths: Option<&[&str]>,
    path_hash_prefixes: Option<&[&str]>,
) -> DelegatedRole {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    DelegatedRole {
        name: name.to_string(),
        keyids: role_keys(seeds, threshold).keyids,
        threshold,
        terminating,
        paths: paths.map(strings),
        path_hash_prefixes: path_hash_prefixes.map(strings),
        extra: BTreeMap::new(),
    }
}

// ---------------------------------------------------------------------------------------
// HTTP server
// ---------------------------------------------------------------------------------------

/// What the server answers for one path instead of the file.
#[derive(Clone, Debug)]
pub enum Rule {
    /// `200 OK` without a length, then bytes until the client goes away.
    Endless,
    /// These bytes, as the whole response (not necessarily HTTP), then close.
    Raw(Vec<u8>),
    /// This status with an empty body.
    Status(u16),
}

struct Shared {
    root: PathBuf,
    stop: AtomicBool,
    log: Mutex<Vec<String>>,
    rules: Mutex<BTreeMap<String, Rule>>,
    streamed: AtomicU64,
}

/// A static HTTP/1.1 file server for one directory on 127.0.0.1 (ephemeral port): GET
/// only, one request per connection (`Connection: close`), `Content-Length` on every
/// response, 404 for missing files and for paths with `.`/`..` segments. It records every
/// request target in arrival order. Dropping it stops it and joins its threads.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves `root`.
    pub fn start(root: &Path) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            root: root.to_path_buf(),
            stop: AtomicBool::new(false),
            log: Mutex::new(Vec::new()),
            rules: Mutex::new(BTreeMap::new()),
            streamed: AtomicU64::new(0),
        });
        let s = Arc::clone(&shared);
        let accept = std::thread::spawn(move || {
            let mut workers: Vec<JoinHandle<()>> = Vec::new();
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s2 = Arc::clone(&s);
                workers.push(std::thread::spawn(move || handle(&s2, conn)));
                // Finished workers need no joining later.
                workers.retain(|w| !w.is_finished());
            }
            for w in workers {
                let _ = w.join();
            }
        });
        Server {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// Serves a repository.
    pub fn serve(repo: &Repo) -> Server {
        Server::start(repo.path())
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The metadata base URL.
    pub fn metadata_url(&self) -> String {
        format!("{}/metadata", self.url())
    }

    /// The targets base URL.
    pub fn targets_url(&self) -> String {
        format!("{}/targets", self.url())
    }

    /// Every request target so far, in order.
    pub fn log(&self) -> Vec<String> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Every request target so far, in order, and forgets them.
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.shared.log.lock().unwrap())
    }

    /// Answers `path` (e.g. `/metadata/timestamp.json`) by `rule` from now on.
    pub fn set_rule(&self, path: &str, rule: Rule) {
        self.shared
            .rules
            .lock()
            .unwrap()
            .insert(path.to_string(), rule);
    }

    /// Streams endless data for `path`.
    pub fn serve_endless(&self, path: &str) {
        self.set_rule(path, Rule::Endless);
    }

    /// Bytes sent so far by endless streams.
    pub fn streamed(&self) -> u64 {
        self.shared.streamed.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// A URL where nothing listens: the address of a listener that was just closed.
pub fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

fn handle(s: &Shared, mut conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 16 * 1024 {
            return respond(&mut conn, 431, b"");
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut line = head.lines().next().unwrap_or("").split(' ');
    let (Some(method), Some(target)) = (line.next(), line.next()) else {
        return respond(&mut conn, 400, b"");
    };
    s.log.lock().unwrap().push(target.to_string());
    if method != "GET" {
        return respond(&mut conn, 405, b"");
    }
    let path = target.split('?').next().unwrap_or("");
    let rule = s.rules.lock().unwrap().get(path).cloned();
    match rule {
        Some(Rule::Status(code)) => respond(&mut conn, code, b""),
        Some(Rule::Raw(bytes)) => {
            let _ = conn.write_all(&bytes);
            let _ = conn.shutdown(std::net::Shutdown::Write);
        }
        Some(Rule::Endless) => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                        Connection: close\r\n\r\n";
            if conn.write_all(head.as_bytes()).is_err() {
                return;
            }
            let chunk = vec![b' '; 16 * 1024];
            while !s.stop.load(Ordering::SeqCst) {
                if conn.write_all(&chunk).is_err() {
                    return;
                }
                s.streamed.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
        }
        None => {
            let rel = path.trim_start_matches('/');
            let safe = !rel.is_empty() && rel.split('/').all(|p| !matches!(p, "" | "." | ".."));
            let file = s.root.join(rel);
            match std::fs::read(&file) {
                Ok(body) if safe && file.is_file() => respond(&mut conn, 200, &body),
                _ => respond(&mut conn, 404, b""),
            }
        }
    }
}

fn respond(conn: &mut TcpStream, status: u16, body: &[u8]) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        _ => "Status",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body);
    let _ = conn.flush();
    let _ = conn.shutdown(std::net::Shutdown::Write);
}

// ---------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------

/// The path of the real binary.
pub const AGENT: &str = env!("CARGO_BIN_EXE_otter-agent");

/// Keeps requests to the loopback server direct even where the environment names an HTTP
/// proxy (the client honours `HTTP_PROXY`): sets `NO_PROXY` once, before any client is
/// built or any binary started.
fn bypass_proxies() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for var in ["NO_PROXY", "no_proxy"] {
            std::env::set_var(var, "127.0.0.1,localhost");
        }
    });
}

/// A client: a metadata dir and a target dir in a temporary directory.
pub struct Client {
    dir: tempfile::TempDir,
}

impl Client {
    /// A client whose metadata dir holds `repo`'s root version 1 (the library's `init`).
    pub fn new(repo: &Repo) -> Client {
        Client::with_root(&repo.root_bytes(1))
    }

    /// A client trusting `root`.
    pub fn with_root(root: &[u8]) -> Client {
        let c = Client::empty();
        init_metadata_dir(&c.metadata_dir(), root).unwrap();
        c
    }

    /// A client without any metadata.
    pub fn empty() -> Client {
        Client {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The client's own temporary directory (parent of its metadata and target dirs).
    pub fn base(&self) -> &Path {
        self.dir.path()
    }

    /// The metadata dir.
    pub fn metadata_dir(&self) -> PathBuf {
        self.dir.path().join("metadata")
    }

    /// The target dir.
    pub fn target_dir(&self) -> PathBuf {
        self.dir.path().join("targets")
    }

    /// The updater's configuration for `server`.
    pub fn config(server: &Server) -> UpdaterConfig {
        let mut cfg = UpdaterConfig::new(&server.metadata_url());
        cfg.targets_url = Some(server.targets_url());
        cfg
    }

    /// A library updater at the current time.
    pub fn updater(&self, server: &Server) -> Result<Updater<HttpFetcher>, UpdateError> {
        self.updater_with(Client::config(server), UtcTime::now())
    }

    /// A library updater with this configuration and reference time.
    pub fn updater_with(
        &self,
        cfg: UpdaterConfig,
        now: UtcTime,
    ) -> Result<Updater<HttpFetcher>, UpdateError> {
        bypass_proxies();
        let fetcher = HttpFetcher::new(Duration::from_secs(5), Duration::from_secs(20))?;
        Updater::new(&self.metadata_dir(), cfg, fetcher, now)
    }

    /// A library refresh.
    pub fn refresh(&self, server: &Server) -> Result<(), UpdateError> {
        self.updater(server)?.refresh()
    }

    /// A library download, as the CLI does it: refresh, find, use the cached copy or fetch.
    pub fn download(&self, server: &Server, target: &str) -> Result<PathBuf, UpdateError> {
        let mut u = self.updater(server)?;
        u.refresh()?;
        let info = u.find_target(target)?;
        if let Some(p) = u.cached_target(target, &info, &self.target_dir()) {
            return Ok(p);
        }
        u.download_target(target, &info, &self.target_dir())
    }

    /// Runs `otter-agent tuf ARGS…`.
    pub fn agent(&self, args: &[&str]) -> Output {
        bypass_proxies();
        Command::new(AGENT)
            .arg("tuf")
            .args(args)
            .output()
            .expect("run otter-agent")
    }

    /// `otter-agent tuf --metadata-dir D --metadata-url URL refresh`.
    pub fn cli_refresh(&self, server: &Server) -> Output {
        let md = self.metadata_dir();
        self.agent(&[
            "--metadata-dir",
            md.to_str().unwrap(),
            "--metadata-url",
            &server.metadata_url(),
            "refresh",
        ])
    }

    /// `otter-agent tuf … --target-name T… --target-base-url URL --target-dir TD download`,
    /// in the conformance suite's order.
    pub fn cli_download(&self, server: &Server, targets: &[&str]) -> Output {
        self.cli_download_from(server, &server.targets_url(), targets)
    }

    /// The same with another targets base URL.
    pub fn cli_download_from(
        &self,
        server: &Server,
        targets_url: &str,
        targets: &[&str],
    ) -> Output {
        let md = self.metadata_dir();
        let td = self.target_dir();
        let mut args = vec![
            "--metadata-dir".to_string(),
            md.to_str().unwrap().to_string(),
            "--metadata-url".to_string(),
            server.metadata_url(),
        ];
        for t in targets {
            args.push("--target-name".into());
            args.push(t.to_string());
        }
        args.extend([
            "--target-base-url".to_string(),
            targets_url.to_string(),
            "--target-dir".to_string(),
            td.to_str().unwrap().to_string(),
            "download".to_string(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.agent(&args)
    }

    /// Every file in the metadata dir, by name.
    pub fn metadata_files(&self) -> BTreeMap<String, Vec<u8>> {
        files_in(&self.metadata_dir())
    }

    /// Every file in the target dir, by name.
    pub fn target_files(&self) -> BTreeMap<String, Vec<u8>> {
        files_in(&self.target_dir())
    }

    /// The names in the metadata dir.
    pub fn metadata_names(&self) -> Vec<String> {
        self.metadata_files().into_keys().collect()
    }

    /// The `signed.version` of `NAME.json` in the metadata dir, if present.
    pub fn version(&self, role_file: &str) -> Option<u64> {
        let bytes = std::fs::read(self.metadata_dir().join(role_file)).ok()?;
        let doc: Value = serde_json::from_slice(&bytes).ok()?;
        doc["signed"]["version"].as_u64()
    }
}

/// Every file (not directory) directly in `dir`, by name; empty if `dir` does not exist.
pub fn files_in(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Every entry (any kind) under `dir`, recursively, as paths relative to it.
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The request targets under `/metadata/` for `names` (e.g. `2.root.json`).
pub fn md(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| format!("/metadata/{n}")).collect()
}

/// Asserts the binary exited 0.
#[track_caller]
pub fn assert_success(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "expected exit 0\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts the binary exited 1 and its stderr says `needle`.
#[track_caller]
pub fn assert_failure(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit 1\nstdout: {}\nstderr: {stderr}",
        String::from_utf8_lossy(&out.stdout),
    );
    assert!(
        stderr.contains(needle),
        "stderr should say {needle:?}, it says: {stderr}"
    );
}
