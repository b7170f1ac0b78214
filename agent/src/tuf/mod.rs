//! The TUF client workflow of specification section 5, over any mirror.
//!
//! [`Updater`] keeps the trusted metadata in a local directory (`root.json`,
//! `timestamp.json`, `snapshot.json`, `targets.json`, `ROLE.json`, each byte-identical to
//! what was received and verified), refreshes it in the order the specification requires,
//! searches delegations in pre-order depth-first order, and downloads targets with the
//! signed length as a cap and the signed hashes checked before the file is given a name.

mod fetch;
mod trusted;

use std::path::{Path, PathBuf};

use otter_keys::atomic::write_atomic;
use otter_keys::hash::{HashError, MultiHasher};
use otter_keys::metadata::TargetFile;
use otter_keys::time::UtcTime;

pub use fetch::{FetchError, Fetcher, HttpFetcher, RangedBody};
pub use trusted::{TrustError, TrustedSet};

/// Limits and locations of an [`Updater`].
#[derive(Debug, Clone)]
pub struct UpdaterConfig {
    /// Base URL of the metadata (`…/metadata/`).
    pub metadata_url: String,
    /// Base URL of the targets (`…/targets/`), for downloads.
    pub targets_url: Option<String>,
    /// How many root versions one refresh may walk.
    pub max_root_rotations: u64,
    /// How many delegated roles one target search may visit.
    pub max_delegations: usize,
    /// Cap on a root file.
    pub root_max_length: u64,
    /// Cap on the timestamp file.
    pub timestamp_max_length: u64,
    /// Cap on snapshot when the timestamp gives no length.
    pub snapshot_max_length: u64,
    /// Cap on targets files when snapshot gives no length.
    pub targets_max_length: u64,
    /// Fetch targets as `DIR/HASH.NAME` when the root uses consistent snapshots.
    pub prefix_targets_with_hash: bool,
}

impl UpdaterConfig {
    /// Defaults for a mirror at `metadata_url`.
    pub fn new(metadata_url: &str) -> Self {
        UpdaterConfig {
            metadata_url: with_slash(metadata_url),
            targets_url: None,
            max_root_rotations: 256,
            max_delegations: 32,
            root_max_length: 512 * 1024,
            timestamp_max_length: 16 * 1024,
            snapshot_max_length: 2 * 1024 * 1024,
            targets_max_length: 5 * 1024 * 1024,
            prefix_targets_with_hash: true,
        }
    }
}

fn with_slash(url: &str) -> String {
    if url.ends_with('/') {
        url.to_string()
    } else {
        format!("{url}/")
    }
}

/// What an update step failed on.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// A download failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// Metadata was refused.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// A target's length or hashes differ from the signed ones.
    #[error("target {target}: {source}")]
    Target {
        /// The target path.
        target: String,
        /// The cause.
        #[source]
        source: HashError,
    },
    /// The target is in no trusted targets metadata.
    #[error("target {0:?} is not listed in any trusted targets metadata")]
    UnknownTarget(String),
    /// Local files could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A configuration problem (e.g. no targets URL).
    #[error("{0}")]
    Config(String),
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> UpdateError + '_ {
    move |source| UpdateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Quotes a name for a URL path component or a file name: everything but ASCII letters,
/// digits and `_.-~` is percent-encoded (so `/`, `?`, `#` and `..` cannot escape).
pub fn quote(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The client: trusted metadata in `dir`, fetched through `F`.
pub struct Updater<F: Fetcher> {
    cfg: UpdaterConfig,
    dir: PathBuf,
    fetcher: F,
    trusted: TrustedSet,
    refreshed: bool,
}

/// Writes a trusted root into an empty metadata directory (no network, no checks beyond
/// parsing): the client's bootstrap.
pub fn init_metadata_dir(dir: &Path, root_bytes: &[u8]) -> Result<(), UpdateError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let path = dir.join("root.json");
    write_atomic(&path, root_bytes, 0o644).map_err(io_err(&path))
}

impl<F: Fetcher> Updater<F> {
    /// Opens the metadata directory (its `root.json` is the trust anchor) at time `now`.
    pub fn new(
        dir: &Path,
        cfg: UpdaterConfig,
        fetcher: F,
        now: UtcTime,
    ) -> Result<Self, UpdateError> {
        let root_path = dir.join("root.json");
        let bytes = read_capped(&root_path, cfg.root_max_length)?.ok_or_else(|| {
            UpdateError::Config(format!(
                "{} is missing: run init first",
                root_path.display()
            ))
        })?;
        let trusted = TrustedSet::new(&bytes, now)?;
        Ok(Updater {
            cfg,
            dir: dir.to_path_buf(),
            fetcher,
            trusted,
            refreshed: false,
        })
    }

    /// The trusted metadata.
    pub fn trusted(&self) -> &TrustedSet {
        &self.trusted
    }

    /// Refreshes top-level metadata: root chain (5.3), timestamp (5.4), snapshot (5.5),
    /// targets (5.6). Delegated roles are loaded lazily by [`Self::find_target`].
    pub fn refresh(&mut self) -> Result<(), UpdateError> {
        self.load_root()?;
        self.load_timestamp()?;
        self.load_snapshot()?;
        self.load_targets("targets", "root")?;
        self.refreshed = true;
        Ok(())
    }

    fn metadata_url(&self, role: &str, version: Option<u64>) -> String {
        match version {
            Some(v) => format!("{}{v}.{}.json", self.cfg.metadata_url, quote(role)),
            None => format!("{}{}.json", self.cfg.metadata_url, quote(role)),
        }
    }

    fn local_path(&self, role: &str) -> PathBuf {
        self.dir.join(format!("{}.json", quote(role)))
    }

    fn persist(&self, role: &str, bytes: &[u8]) -> Result<(), UpdateError> {
        let path = self.local_path(role);
        write_atomic(&path, bytes, 0o644).map_err(io_err(&path))
    }

    fn load_root(&mut self) -> Result<(), UpdateError> {
        let keys_of = |t: &TrustedSet, role: &str| {
            t.root()
                .signed()
                .role(role)
                .ok()
                .map(|r| (r.keyids.clone(), r.threshold))
        };
        let before = (
            keys_of(&self.trusted, "timestamp"),
            keys_of(&self.trusted, "snapshot"),
        );
        let result = self.walk_root_chain();
        // 5.3.11: when the timestamp or snapshot keys changed, the local copies are no
        // longer trusted, so a fast-forward attack on them can be recovered from.
        let after = (
            keys_of(&self.trusted, "timestamp"),
            keys_of(&self.trusted, "snapshot"),
        );
        if before != after {
            for role in ["timestamp", "snapshot"] {
                let path = self.local_path(role);
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io_err(&path)(e));
                    }
                    _ => {}
                }
            }
        }
        result
    }

    fn walk_root_chain(&mut self) -> Result<(), UpdateError> {
        let start = self.trusted.root().signed().version.saturating_add(1);
        let end = start.saturating_add(self.cfg.max_root_rotations);
        for version in start..end {
            let url = self.metadata_url("root", Some(version));
            let bytes = match self.fetcher.fetch(&url, self.cfg.root_max_length) {
                Ok(b) => b,
                Err(FetchError::NotFound { .. }) => break,
                Err(e) => return Err(e.into()),
            };
            self.trusted.update_root(&bytes)?;
            self.persist("root", &bytes)?;
        }
        self.trusted.check_final_root()?;
        Ok(())
    }

    fn load_timestamp(&mut self) -> Result<(), UpdateError> {
        if let Ok(Some(local)) =
            read_capped(&self.local_path("timestamp"), self.cfg.timestamp_max_length)
        {
            // A local copy that no longer verifies (e.g. rotated keys) is simply not used.
            let _ = self.trusted.update_timestamp(&local);
        }
        let url = self.metadata_url("timestamp", None);
        let bytes = self.fetcher.fetch(&url, self.cfg.timestamp_max_length)?;
        match self.trusted.update_timestamp(&bytes) {
            Ok(()) => self.persist("timestamp", &bytes),
            Err(TrustError::EqualVersion { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn load_snapshot(&mut self) -> Result<(), UpdateError> {
        if let Ok(Some(local)) =
            read_capped(&self.local_path("snapshot"), self.cfg.snapshot_max_length)
        {
            if self.trusted.update_snapshot(&local, true).is_ok() {
                return Ok(());
            }
        }
        let meta = self.trusted.snapshot_meta()?.clone();
        let max = meta.length.unwrap_or(self.cfg.snapshot_max_length);
        let version = self
            .trusted
            .root()
            .signed()
            .consistent_snapshot()
            .then_some(meta.version);
        let url = self.metadata_url("snapshot", version);
        let bytes = self.fetcher.fetch(&url, max)?;
        self.trusted.update_snapshot(&bytes, false)?;
        self.persist("snapshot", &bytes)
    }

    fn load_targets(&mut self, role: &str, delegator: &str) -> Result<(), UpdateError> {
        if self.trusted.targets(role).is_some() {
            return Ok(());
        }
        let snapshot = self
            .trusted
            .snapshot()
            .ok_or_else(|| TrustError::Workflow("targets need a trusted snapshot".into()))?;
        let meta = snapshot
            .signed()
            .meta
            .get(&format!("{role}.json"))
            .ok_or_else(|| TrustError::Workflow(format!("snapshot does not list {role}.json")))?
            .clone();
        let max = meta.length.unwrap_or(self.cfg.targets_max_length);
        if let Ok(Some(local)) = read_capped(&self.local_path(role), max) {
            if self.trusted.update_targets(&local, role, delegator).is_ok() {
                return Ok(());
            }
        }
        let version = self
            .trusted
            .root()
            .signed()
            .consistent_snapshot()
            .then_some(meta.version);
        let url = self.metadata_url(role, version);
        let bytes = self.fetcher.fetch(&url, max)?;
        self.trusted.update_targets(&bytes, role, delegator)?;
        self.persist(role, &bytes)
    }

    /// Finds a target's signed entry: pre-order depth-first search of the delegation tree
    /// (5.6.7), loading delegated roles on the way, honouring terminating delegations and
    /// the visit cap. Refreshes first if that has not been done.
    pub fn find_target(&mut self, target: &str) -> Result<TargetFile, UpdateError> {
        if !self.refreshed {
            self.refresh()?;
        }
        let mut to_visit: Vec<(String, String)> = vec![("targets".into(), "root".into())];
        let mut visited: Vec<String> = Vec::new();
        while visited.len() <= self.cfg.max_delegations {
            let Some((role, parent)) = to_visit.pop() else {
                break;
            };
            if visited.contains(&role) {
                continue;
            }
            self.load_targets(&role, &parent)?;
            let md = self
                .trusted
                .targets(&role)
                .ok_or_else(|| TrustError::Workflow(format!("{role} not loaded")))?;
            if let Some(t) = md.signed().targets.get(target) {
                return Ok(t.clone());
            }
            visited.push(role.clone());
            let mut children = Vec::new();
            if let Some(d) = &md.signed().delegations {
                for r in d.roles() {
                    if r.is_delegated_path(target) {
                        children.push((r.name.clone(), role.clone()));
                        if r.terminating {
                            to_visit.clear();
                            break;
                        }
                    }
                }
            }
            children.reverse();
            to_visit.extend(children);
        }
        Err(UpdateError::UnknownTarget(target.to_string()))
    }

    /// Every target entry the client may trust, sorted by name: the names listed by the
    /// top-level targets role and by every delegated role reachable from it (at most
    /// `max_delegations` roles, loaded in pre-order), each resolved by [`Self::find_target`],
    /// so an entry that a delegation does not cover (paths, terminating delegations,
    /// priority) is never returned. Refreshes first if that has not been done.
    pub fn list_targets(&mut self) -> Result<Vec<(String, TargetFile)>, UpdateError> {
        if !self.refreshed {
            self.refresh()?;
        }
        let mut names = std::collections::BTreeSet::new();
        let mut to_visit: Vec<(String, String)> = vec![("targets".into(), "root".into())];
        let mut visited: Vec<String> = Vec::new();
        while visited.len() <= self.cfg.max_delegations {
            let Some((role, parent)) = to_visit.pop() else {
                break;
            };
            if visited.contains(&role) {
                continue;
            }
            self.load_targets(&role, &parent)?;
            let md = self
                .trusted
                .targets(&role)
                .ok_or_else(|| TrustError::Workflow(format!("{role} not loaded")))?;
            names.extend(md.signed().targets.keys().cloned());
            let mut children: Vec<(String, String)> = md
                .signed()
                .delegations
                .iter()
                .flat_map(|d| d.roles())
                .map(|r| (r.name.clone(), role.clone()))
                .collect();
            visited.push(role);
            children.reverse();
            to_visit.extend(children);
        }
        let mut out = Vec::new();
        for name in names {
            match self.find_target(&name) {
                Ok(t) => out.push((name, t)),
                Err(UpdateError::UnknownTarget(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Where a target is kept in `target_dir`: its whole path quoted into one file name.
    pub fn local_target_path(target_dir: &Path, target: &str) -> PathBuf {
        target_dir.join(quote(target))
    }

    /// The local copy of a target if it exists with the signed length and hashes.
    pub fn cached_target(
        &self,
        target: &str,
        info: &TargetFile,
        target_dir: &Path,
    ) -> Option<PathBuf> {
        let path = Self::local_target_path(target_dir, target);
        let meta = std::fs::metadata(&path).ok()?;
        if meta.len() != info.length {
            return None;
        }
        let mut h = MultiHasher::for_hashes(&info.hashes).ok()?;
        let mut f = std::fs::File::open(&path).ok()?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = std::io::Read::read(&mut f, &mut buf).ok()?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        h.finish(Some(info.length), &info.hashes).ok()?;
        Some(path)
    }

    /// The URL a target is fetched from: `TARGETS_URL/DIR/HASH.NAME` when the root uses
    /// consistent snapshots (and the config prefixes targets with hashes), else
    /// `TARGETS_URL/PATH`; every path component quoted.
    pub fn target_url(&self, target: &str, info: &TargetFile) -> Result<String, UpdateError> {
        let base = self
            .cfg
            .targets_url
            .as_deref()
            .map(with_slash)
            .ok_or_else(|| UpdateError::Config("no targets URL configured".into()))?;
        let consistent = self.trusted.root().signed().consistent_snapshot();
        let remote = if consistent && self.cfg.prefix_targets_with_hash {
            let hash = info
                .hashes
                .get("sha256")
                .or_else(|| info.hashes.values().next())
                .ok_or_else(|| UpdateError::Target {
                    target: target.into(),
                    source: HashError::Empty,
                })?;
            match target.rsplit_once('/') {
                Some((dir, name)) => format!("{dir}/{hash}.{name}"),
                None => format!("{hash}.{target}"),
            }
        } else {
            target.to_string()
        };
        let url_path: Vec<String> = remote.split('/').map(quote).collect();
        Ok(format!("{base}{}", url_path.join("/")))
    }

    /// Downloads a target into `target_dir` with [`crate::download`]: streamed into a part
    /// file with the hashes computed on the way, at most the signed length, resumed (HTTP
    /// `Range`) when an earlier attempt was cut, and renamed into place only once length and
    /// hashes match.
    pub fn download_target(
        &self,
        target: &str,
        info: &TargetFile,
        target_dir: &Path,
    ) -> Result<PathBuf, UpdateError> {
        let url = self.target_url(target, info)?;
        std::fs::create_dir_all(target_dir).map_err(io_err(target_dir))?;
        let final_path = Self::local_target_path(target_dir, target);
        // Resumable (crate::download): the part is named after the signed hash too, so a
        // part of another signed version of the same target is never resumed.
        let hash: String = info
            .hashes
            .values()
            .next()
            .map(|h| h.chars().filter(char::is_ascii_hexdigit).take(16).collect())
            .unwrap_or_default();
        let part = target_dir.join(format!(".{}.{hash}.part", quote(target)));
        let opts = crate::download::DownloadOptions {
            attempts: 1,
            ..crate::download::DownloadOptions::default()
        };
        use crate::download::DownloadError as D;
        crate::download::download_to(&self.fetcher, &url, target, info, &final_path, &part, &opts)
            .map(|d| d.path)
            .map_err(|e| match e {
                D::Fetch { source, .. } => UpdateError::Fetch(source),
                D::Verify { source, .. } => UpdateError::Target {
                    target: target.into(),
                    source,
                },
                D::NoSha256(_) => UpdateError::Target {
                    target: target.into(),
                    source: HashError::Empty,
                },
                D::Io { path, source } => UpdateError::Io { path, source },
                e @ D::Cancelled { .. } => UpdateError::Config(e.to_string()),
            })
    }
}

/// Reads a local file of at most `max` bytes; `None` if it does not exist.
fn read_capped(path: &Path, max: u64) -> Result<Option<Vec<u8>>, UpdateError> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
        Ok(m) if m.len() > max => {
            return Err(UpdateError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other(format!("larger than {max} bytes")),
            })
        }
        Ok(_) => {}
    }
    std::fs::read(path).map(Some).map_err(io_err(path))
}
