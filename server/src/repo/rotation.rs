//! Root rotation on a running server, the online key files chosen by the root's key ids, and
//! the start-up check that refuses to roll the store back when the database is an older copy.
//!
//! Online key files: the first ones are `keys/ROLE.key`; keys installed later for a rotated
//! root (`otter-server keys import`) are `keys/ROLE-KEYID.key`, still encrypted with the
//! online passphrase. Which file signs is decided by the current root: for each online role
//! the file of a key id that root authorises. An installed key does nothing until a root
//! naming it is accepted (`PUT /api/v1/root`), and then the server switches to it at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use otter_keys::age::secrecy::SecretString;
use otter_keys::atomic::write_atomic;
use otter_keys::crypto::{KeyId, SigningKey};
use otter_keys::keyfile::{load_signing_key, save_public_key};
use otter_keys::metadata::{Metadata, Root, Timestamp};
use otter_keys::time::UtcTime;

use super::build::{self, FileRecord, Lifetimes, OnlineKeys, RepoState, SignedFile, TopRole};
use super::production::ONLINE_ROLES;
use super::{blocking, records, RepoError, RepoMode, Repository, Versions};
use crate::audit::{self, Actor};
use crate::config::Config;
use crate::store::{metadata_key, object_path, Store, METADATA_PREFIX};

/// Largest root metadata accepted by `PUT /api/v1/root`.
pub const MAX_ROOT_BYTES: usize = 1024 * 1024;

/// Where the online key files are, and the passphrase that opens them.
pub struct KeySource {
    dir: PathBuf,
    pass: SecretString,
}

impl KeySource {
    /// The key source of a repository of `mode`: `DATA_DIR/keys` with the online passphrase
    /// (production) or the development passphrase file beside the keys.
    pub fn for_mode(mode: RepoMode, config: &Config) -> Result<KeySource, RepoError> {
        let dir = config.keys_dir();
        let pass = match mode {
            RepoMode::Production => super::production::passphrase(config)?,
            RepoMode::Development => super::dev::passphrase(&dir)?,
        };
        Ok(KeySource { dir, pass })
    }

    /// The key source of the repository in `config`'s data dir, on the server host: a
    /// development repository keeps its passphrase file beside the keys.
    pub fn on_host(config: &Config) -> Result<KeySource, RepoError> {
        let mode = if config.keys_dir().join(super::dev::PASSPHRASE_FILE).exists() {
            RepoMode::Development
        } else {
            RepoMode::Production
        };
        KeySource::for_mode(mode, config)
    }

    /// The directory of the key files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The file name of an online key installed for a rotated root: `ROLE-KEYID.key`.
pub fn installed_key_name(role: &str, id: &KeyId) -> String {
    format!("{role}-{}.key", id.0)
}

/// An online role whose authorised key the server has no file for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingKey {
    /// The role.
    pub role: &'static str,
    /// The key ids the root authorises for it.
    pub key_ids: Vec<KeyId>,
}

fn describe_missing(missing: &[MissingKey]) -> String {
    missing
        .iter()
        .map(|m| {
            let ids: Vec<&str> = m.key_ids.iter().map(|k| k.0.as_str()).collect();
            format!("{} (key id {})", m.role, ids.join(" or "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn open_key(path: &Path, role: &str, pass: &SecretString) -> Result<SigningKey, RepoError> {
    load_signing_key(path, pass).map(|k| k.key).map_err(|e| {
        RepoError::Setup(format!(
            "cannot open the {role} key {}: {e} (wrong passphrase?)",
            path.display()
        ))
    })
}

/// Finds, for each online role, the key file of a key id `root` authorises, reusing a key of
/// `current` that is still authorised (no file is opened for it). Blocking (scrypt).
/// `Ok(Err(missing))` names the roles the server holds no key for.
pub fn find_online_keys(
    source: &KeySource,
    root: &Root,
    current: Option<&OnlineKeys>,
) -> Result<Result<OnlineKeys, Vec<MissingKey>>, RepoError> {
    let mut found: Vec<SigningKey> = Vec::new();
    let mut missing = Vec::new();
    for role in ONLINE_ROLES {
        let authorised = root
            .role(role)
            .map_err(|e| RepoError::Setup(e.to_string()))?
            .keyids
            .clone();
        let reuse = current.map(|k| match role {
            "targets" => &k.targets,
            "snapshot" => &k.snapshot,
            _ => &k.timestamp,
        });
        if let Some(k) = reuse.filter(|k| authorised.contains(&k.key_id())) {
            found.push(SigningKey::from_seed(&k.seed_dangerous()));
            continue;
        }
        let mut key = None;
        for id in &authorised {
            let path = source.dir.join(installed_key_name(role, id));
            if path.exists() {
                let k = open_key(&path, role, &source.pass)?;
                if &k.key_id() != id {
                    return Err(RepoError::Setup(format!(
                        "{} holds key {}, not {} as its name says: remove it and install the \
                         key again with `otter-server keys import`",
                        path.display(),
                        k.key_id(),
                        id
                    )));
                }
                key = Some(k);
                break;
            }
        }
        if key.is_none() {
            let path = source.dir.join(format!("{role}.key"));
            if path.exists() {
                let k = open_key(&path, role, &source.pass)?;
                if authorised.contains(&k.key_id()) {
                    key = Some(k);
                }
            }
        }
        match key {
            Some(k) => found.push(k),
            None => missing.push(MissingKey {
                role,
                key_ids: authorised,
            }),
        }
    }
    if !missing.is_empty() {
        return Ok(Err(missing));
    }
    let mut it = found.into_iter();
    match (it.next(), it.next(), it.next()) {
        (Some(targets), Some(snapshot), Some(timestamp)) => Ok(Ok(OnlineKeys {
            targets,
            snapshot,
            timestamp,
        })),
        _ => Err(RepoError::Inconsistent("online keys went missing".into())),
    }
}

/// The online keys of `root` at start-up; an error names the files looked for.
pub fn load_online_keys(source: &KeySource, root: &Root) -> Result<OnlineKeys, RepoError> {
    find_online_keys(source, root, None)?.map_err(|missing| {
        let looked: Vec<String> = missing
            .iter()
            .map(|m| format!("{}", source.dir.join(format!("{}.key", m.role)).display()))
            .collect();
        RepoError::Setup(format!(
            "cannot read the online keys root version {} authorises: no key file for {} \
             (looked for {} and ROLE-KEYID.key beside it); restore DATA_DIR/keys from the \
             backup, or install the keys with `otter-server keys import`",
            root.version,
            describe_missing(&missing),
            looked.join(", ")
        ))
    })
}

/// One key installed by [`import_keys`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedKey {
    /// The role the root authorises it for.
    pub role: &'static str,
    /// Its key id.
    pub key_id: KeyId,
    /// Where it was installed.
    pub path: PathBuf,
    /// False when the same file was installed before.
    pub new: bool,
}

/// Installs online key files for `root` (a root not yet accepted, typically) into the keys
/// dir of `source`, as `ROLE-KEYID.key` (0600, copied still encrypted) and
/// `ROLE-KEYID.pub.json`. Each file must open with the server's online passphrase and be
/// authorised for an online role by `root`; root keys are refused. Nothing is written unless
/// every file passes. Blocking (scrypt).
pub fn import_keys(
    source: &KeySource,
    root: &Root,
    files: &[PathBuf],
) -> Result<Vec<ImportedKey>, RepoError> {
    let mut checked = Vec::new();
    for file in files {
        let bytes = zeroize::Zeroizing::new(std::fs::read(file).map_err(|e| {
            RepoError::Setup(format!("cannot read the key file {}: {e}", file.display()))
        })?);
        let key = load_signing_key(file, &source.pass)
            .map_err(|e| {
                RepoError::Setup(format!(
                    "{} does not open with the server's online passphrase: {e}; make online \
                     keys with `otter-keys root rotate --online-passphrase-file` holding the \
                     passphrase the server uses",
                    file.display()
                ))
            })?
            .key;
        let id = key.key_id();
        let role = ONLINE_ROLES.into_iter().find(|r| {
            root.role(r)
                .map(|rk| rk.keyids.contains(&id))
                .unwrap_or(false)
        });
        let Some(role) = role else {
            let is_root = root
                .role("root")
                .map(|rk| rk.keyids.contains(&id))
                .unwrap_or(false);
            return Err(RepoError::Setup(if is_root {
                format!(
                    "{} is a root key ({}): root keys stay offline, the server never needs them",
                    file.display(),
                    id.short()
                )
            } else {
                format!(
                    "{} holds key {} which root version {} does not authorise for targets, \
                     snapshot or timestamp",
                    file.display(),
                    id,
                    root.version
                )
            }));
        };
        let dst = source.dir.join(installed_key_name(role, &id));
        let new = match std::fs::read(&dst) {
            Ok(existing) if existing[..] == bytes[..] => false,
            Ok(_) => {
                return Err(RepoError::Setup(format!(
                    "{} exists already with other contents: refusing to overwrite a key",
                    dst.display()
                )))
            }
            Err(_) => true,
        };
        checked.push((role, id, dst, bytes, key, new));
    }
    let mut out = Vec::new();
    for (role, id, dst, bytes, key, new) in checked {
        if new {
            write_atomic(&dst, &bytes, 0o600).map_err(|source| RepoError::Io {
                path: dst.clone(),
                source,
            })?;
            save_public_key(&dst.with_extension("pub.json"), &key.public_key())?;
        }
        out.push(ImportedKey {
            role,
            key_id: id,
            path: dst,
            new,
        });
    }
    Ok(out)
}

/// Why a new root was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// The body is not root metadata.
    #[error("the body is not valid root metadata: {0}")]
    Malformed(String),
    /// Its version is not the current one plus one.
    #[error(
        "root version {found} cannot follow the current root version {current}: the server \
         takes only version {next}; push the roots in between first, one at a time",
        next = current.saturating_add(1)
    )]
    Version {
        /// The server's root version.
        current: u64,
        /// The version sent.
        found: u64,
    },
    /// Not signed by a threshold of the current root's root keys.
    #[error(
        "root version {version} is not signed by a threshold of the current root's (version \
         {current}) root keys: {reason}; add signatures with `otter-keys sign`"
    )]
    OldThreshold {
        /// The new version.
        version: u64,
        /// The current version.
        current: u64,
        /// What the check found.
        reason: String,
    },
    /// Not signed by a threshold of its own root keys.
    #[error(
        "root version {version} is not signed by a threshold of its own root keys: {reason}; \
         add signatures with `otter-keys sign`"
    )]
    NewThreshold {
        /// The new version.
        version: u64,
        /// What the check found.
        reason: String,
    },
    /// It has expired.
    #[error("root version {version} expired at {expires}: sign a new one with a later expiry")]
    Expired {
        /// The new version.
        version: u64,
        /// Its expiry.
        expires: UtcTime,
    },
    /// It is valid TUF but not something this server can sign under.
    #[error("{0}")]
    Unsupported(String),
    /// The server lacks a private key the new root names for an online role.
    #[error(
        "the server holds no private key for {0}, which the new root names; install the key \
         files first (`otter-server keys import --data-dir DIR --root N.root.json KEYFILE...` \
         on the server host), then push the root again"
    )]
    MissingKeys(String),
    /// The server failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl RotationError {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            RotationError::Malformed(_) => "invalid_root",
            RotationError::Version { .. } => "root_version",
            RotationError::OldThreshold { .. } => "old_root_threshold_not_met",
            RotationError::NewThreshold { .. } => "new_root_threshold_not_met",
            RotationError::Expired { .. } => "root_expired",
            RotationError::Unsupported(_) => "unsupported_root",
            RotationError::MissingKeys(_) => "online_keys_missing",
            RotationError::Repo(_) => "internal",
        }
    }
}

/// What an accepted rotation did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rotated {
    /// The root version now served.
    pub root: u64,
    /// The online roles whose signing key changed.
    pub rotated_roles: Vec<&'static str>,
    /// Targets version after the rotation.
    pub targets: u64,
    /// Snapshot version.
    pub snapshot: u64,
    /// Timestamp version.
    pub timestamp: u64,
}

fn key_ids_json(keys: &OnlineKeys) -> String {
    serde_json::json!({
        "targets": keys.targets.key_id().0,
        "snapshot": keys.snapshot.key_id().0,
        "timestamp": keys.timestamp.key_id().0,
    })
    .to_string()
}

fn record_rotation(
    tx: &rusqlite::Connection,
    version: u64,
    source: &str,
    keys_json: &str,
    now: i64,
) -> Result<(), crate::db::DbError> {
    tx.execute(
        "INSERT INTO root_rotations (root_version, accepted_at, source, online_keys)
         VALUES (?1, ?2, ?3, ?4)",
        rusqlite::params![
            i64::try_from(version).unwrap_or(i64::MAX),
            now,
            source,
            keys_json
        ],
    )?;
    Ok(())
}

/// What the server needs of any root it signs under: consistent snapshots and one key
/// (threshold 1) per online role.
fn check_servable(root: &Root) -> Result<(), String> {
    if !root.consistent_snapshot() {
        return Err(format!(
            "root version {} does not use consistent snapshots, which otter-server needs",
            root.version
        ));
    }
    for role in ONLINE_ROLES {
        let r = root.role(role).map_err(|e| e.to_string())?;
        if r.threshold != 1 {
            return Err(format!(
                "root version {} requires {} signatures for {role}; the server signs with one \
                 key, so the threshold of an online role must be 1",
                root.version, r.threshold
            ));
        }
    }
    Ok(())
}

impl Repository {
    /// Accepts root version current+1, signed offline: checks it as a TUF client would
    /// (`otter-keys`' successor check: exactly one version more, a threshold of the current
    /// root's root keys and of its own), refuses it expired or unservable, finds the private
    /// keys it names for targets, snapshot and timestamp, then records it, switches to those
    /// keys, re-signs targets (when its key changed), snapshot and timestamp with them and
    /// publishes `N.root.json` first and the timestamp last. Nothing changes on error.
    pub async fn rotate_root(
        &self,
        bytes: Vec<u8>,
        actor: &Actor,
    ) -> Result<Rotated, RotationError> {
        if bytes.len() > MAX_ROOT_BYTES {
            return Err(RotationError::Malformed(format!(
                "{} bytes is more than the {MAX_ROOT_BYTES} a root may have",
                bytes.len()
            )));
        }
        let new = SignedFile::<Root>::from_bytes(bytes)
            .map_err(|e| RotationError::Malformed(e.to_string()))?;
        let mut state = self.state.lock().await;
        let current = state.root.version();
        let version = new.version();
        if Some(version) != current.checked_add(1) {
            return Err(RotationError::Version {
                current,
                found: version,
            });
        }
        state
            .root
            .meta
            .verify_by(&new.meta, "root")
            .map_err(|e| RotationError::OldThreshold {
                version,
                current,
                reason: e.to_string(),
            })?;
        new.meta
            .verify_self()
            .map_err(|e| RotationError::NewThreshold {
                version,
                reason: e.to_string(),
            })?;
        // The whole rule at once, as a client applies it (spec 5.3.4-5.3.5).
        state
            .root
            .meta
            .verify_successor(&new.meta)
            .map_err(|e| RotationError::Malformed(e.to_string()))?;
        let now = UtcTime::now();
        if new.meta.check_expiry(now).is_err() {
            return Err(RotationError::Expired {
                version,
                expires: new.expires(),
            });
        }
        check_servable(new.signed()).map_err(RotationError::Unsupported)?;

        let current_keys = self.keys();
        let new_root = new.signed().clone();
        let (keys, source) = (current_keys.clone(), self.key_source.clone());
        let found = blocking(move || find_online_keys(&source, &new_root, Some(&keys))).await?;
        let new_keys = found.map_err(|m| RotationError::MissingKeys(describe_missing(&m)))?;
        let mut rotated_roles = Vec::new();
        for (role, old, fresh) in [
            ("targets", &current_keys.targets, &new_keys.targets),
            ("snapshot", &current_keys.snapshot, &new_keys.snapshot),
            ("timestamp", &current_keys.timestamp, &new_keys.timestamp),
        ] {
            if old.key_id() != fresh.key_id() {
                rotated_roles.push(role);
            }
        }

        // Targets is re-signed only when the new root no longer accepts it; snapshot and
        // timestamp always, so that clients see the new root take effect at once.
        let resign_targets = new.meta.verify_by(&state.targets.meta, "targets").is_err();
        let mut next = state.clone();
        next.root = new;
        let plan = build::Plan {
            targets: resign_targets,
            snapshot: true,
            timestamp: true,
        };
        let (next, mut changed) = build::resign(&next, plan, &new_keys, now, &self.lifetimes)
            .map_err(|e| RepoError::Metadata {
                context: "signing metadata under the new root",
                source: e,
            })?;
        changed.insert(0, TopRole::Root);
        // The timestamp must name the new snapshot; resign did. Check all of it.
        build::verify_state(&next).map_err(RepoError::Inconsistent)?;

        let keys_json = key_ids_json(&new_keys);
        let details = serde_json::json!({
            "from": current,
            "to": version,
            "rotated_roles": rotated_roles,
            "targets_version": next.targets.version(),
            "snapshot_version": next.snapshot.version(),
            "timestamp_version": next.timestamp.version(),
        });
        let actor = actor.clone();
        let result = self
            .commit_and_publish(&mut state, next, changed, now, move |tx| {
                record_rotation(tx, version, "api", &keys_json, now.unix())?;
                audit::append(
                    tx,
                    &actor,
                    "root.rotate",
                    &format!("root:{version}"),
                    &details,
                    now.unix(),
                )
                .map_err(audit::db_error)?;
                Ok(true)
            })
            .await;
        // Once committed, the new root is the repository's: sign with its keys from now on,
        // even if writing to the store failed (the next refresh writes what is missing).
        if state.root.version() == version {
            self.swap_keys(new_keys);
        }
        let versions = result?
            .ok_or_else(|| RepoError::Inconsistent("the rotation was not committed".into()))?;
        tracing::warn!(
            root = version,
            rotated = ?rotated_roles,
            "accepted a new root version and switched the online keys"
        );
        Ok(Rotated {
            root: versions.root,
            rotated_roles,
            targets: versions.targets,
            snapshot: versions.snapshot,
            timestamp: versions.timestamp,
        })
    }
}

/// The highest metadata versions found in the store (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreVersions {
    /// Highest `N.root.json`.
    pub root: u64,
    /// Highest `N.targets.json`.
    pub targets: u64,
    /// Highest `N.snapshot.json`.
    pub snapshot: u64,
    /// The version in `timestamp.json`.
    pub timestamp: u64,
}

/// Parses `N.ROLE.json` for the top-level roles root, targets and snapshot.
fn versioned_name(name: &str) -> Option<(u64, &str)> {
    let rest = name.strip_suffix(".json")?;
    let (v, role) = rest.split_once('.')?;
    if !["root", "targets", "snapshot"].contains(&role) {
        return None;
    }
    Some((v.parse().ok()?, role))
}

/// Scans the store's `repo/metadata/` for the highest versions it holds.
pub async fn store_versions(store: &Store) -> Result<StoreVersions, RepoError> {
    let prefix = object_path(METADATA_PREFIX)?;
    let mut out = StoreVersions::default();
    let mut list = store.inner().list(Some(&prefix));
    while let Some(item) = list.next().await {
        let meta = item.map_err(|source| crate::store::StoreError::Op {
            op: "list",
            key: METADATA_PREFIX.into(),
            source,
        })?;
        let Some(name) = meta.location.filename() else {
            continue;
        };
        if let Some((v, role)) = versioned_name(name) {
            let slot = match role {
                "root" => &mut out.root,
                "targets" => &mut out.targets,
                _ => &mut out.snapshot,
            };
            *slot = (*slot).max(v);
        }
    }
    if let Some(bytes) = store.get_bytes(&metadata_key("timestamp.json")).await? {
        match Metadata::<Timestamp>::from_bytes(&bytes, build::MAX_METADATA_BYTES) {
            Ok(ts) => out.timestamp = ts.signed().version,
            Err(e) => tracing::warn!(error = %e, "the store's timestamp.json does not parse"),
        }
    }
    Ok(out)
}

/// The roles for which the store holds a higher version than the database: (role, database
/// version, store version).
pub fn store_ahead(db: &Versions, store: &StoreVersions) -> Vec<(&'static str, u64, u64)> {
    [
        ("root", db.root, store.root),
        ("targets", db.targets, store.targets),
        ("snapshot", db.snapshot, store.snapshot),
        ("timestamp", db.timestamp, store.timestamp),
    ]
    .into_iter()
    .filter(|(_, d, s)| s > d)
    .collect()
}

/// The refusal to start on a database older than the store.
pub fn stale_refusal(ahead: &[(&'static str, u64, u64)]) -> RepoError {
    let list: Vec<String> = ahead
        .iter()
        .map(|(role, d, s)| format!("{role} version {s} in the store, {d} in the database"))
        .collect();
    RepoError::Setup(format!(
        "the store holds newer metadata than the database ({}): the database was restored \
         from an older copy. Serving it would roll terminals back, and they refuse that as a \
         rollback attack. Restore a newer database copy, or start once with \
         --resume-above-store to re-sign the database's state at versions above the store's \
         (releases published after the copy are lost and must be published again); see \
         docs/disaster-recovery.md, \"The database copy is older than the terminals\"",
        list.join("; ")
    ))
}

/// Reads the root versions after the database's from the store, each verified as the
/// successor of the one before (spec 5.3.4-5.3.5). Expired intermediate roots are fine.
pub async fn store_roots_after(
    store: &Store,
    trusted: &SignedFile<Root>,
    upto: u64,
) -> Result<Vec<SignedFile<Root>>, RepoError> {
    let mut out: Vec<SignedFile<Root>> = Vec::new();
    let mut v = trusted.version();
    while v < upto {
        v += 1;
        let name = format!("{v}.root.json");
        let bytes = store
            .get_bytes(&metadata_key(&name))
            .await?
            .ok_or_else(|| {
                RepoError::Setup(format!(
                    "the store holds root version {upto} but not {name}: the chain of roots is \
                 broken; restore the store's repo/metadata from its backup"
                ))
            })?;
        let next = SignedFile::<Root>::from_bytes(bytes)
            .map_err(|e| RepoError::Setup(format!("the store's {name} does not parse: {e}")))?;
        let prev = out.last().unwrap_or(trusted);
        prev.meta.verify_successor(&next.meta).map_err(|e| {
            RepoError::Setup(format!(
                "the store's {name} does not verify as the successor of root version {}: \
                 {e}; it was not made with this repository's root keys",
                prev.version()
            ))
        })?;
        check_servable(next.signed()).map_err(RepoError::Setup)?;
        out.push(next);
    }
    Ok(out)
}

/// Re-signs `state` (under `roots`' last, if any) with targets, snapshot and timestamp one
/// version above the higher of the database's and the store's. Returns the state and the
/// records to commit, the timestamp last.
pub fn resign_above(
    state: &RepoState,
    roots: Vec<SignedFile<Root>>,
    floor: &StoreVersions,
    keys: &OnlineKeys,
    now: UtcTime,
    l: &Lifetimes,
) -> Result<(RepoState, Vec<FileRecord>), RepoError> {
    let err = |source| RepoError::Metadata {
        context: "re-signing above the store's versions",
        source,
    };
    let mut next = state.clone();
    let mut records: Vec<FileRecord> = Vec::new();
    for r in roots {
        records.push(FileRecord {
            role: TopRole::Root,
            version: r.version(),
            expires: r.expires(),
            bytes: r.bytes.clone(),
        });
        next.root = r;
    }
    let above = |db: u64, store: u64| db.max(store).saturating_add(1);
    let mut t = state.targets.signed().clone();
    t.version = above(state.targets.version(), floor.targets);
    t.expires = now.plus_secs(l.targets);
    next.targets = SignedFile::sign(t, &keys.targets).map_err(err)?;
    next.snapshot = build::new_snapshot(
        above(state.snapshot.version(), floor.snapshot),
        state.snapshot.signed().meta.clone(),
        &next.targets,
        now,
        l,
        keys,
    )
    .map_err(err)?;
    next.timestamp = build::new_timestamp(
        above(state.timestamp.version(), floor.timestamp),
        &next.snapshot,
        now,
        l,
        keys,
    )
    .map_err(err)?;
    build::verify_state(&next).map_err(RepoError::Inconsistent)?;
    for role in [TopRole::Targets, TopRole::Snapshot, TopRole::Timestamp] {
        records.push(next.record(role));
    }
    Ok((next, records))
}

/// Commits a resumption above the store: adopted roots, the re-signed files, and an audit
/// entry, in one transaction.
pub async fn commit_resume(
    db: &crate::db::Db,
    records: Vec<FileRecord>,
    keys: &OnlineKeys,
    ahead: &[(&'static str, u64, u64)],
    now: UtcTime,
) -> Result<(), RepoError> {
    let keys_json = key_ids_json(keys);
    let details = serde_json::json!({
        "store_ahead": ahead
            .iter()
            .map(|(role, d, s)| serde_json::json!({"role": role, "database": d, "store": s}))
            .collect::<Vec<_>>(),
        "resigned": records
            .iter()
            .map(|r| serde_json::json!({"role": r.role.name(), "version": r.version}))
            .collect::<Vec<_>>(),
    });
    db.call(move |c| {
        let tx = c.transaction()?;
        for r in records.iter().filter(|r| r.role == TopRole::Root) {
            record_rotation(&tx, r.version, "store", &keys_json, now.unix())?;
        }
        records::insert_versions(&tx, &records, now.unix())?;
        audit::append(
            &tx,
            &Actor::host("serve --resume-above-store"),
            "repository.resume_above_store",
            "repository",
            &details,
            now.unix(),
        )
        .map_err(audit::db_error)?;
        tx.commit()?;
        Ok(())
    })
    .await?;
    Ok(())
}

/// The shared handle to the online keys, swapped whole when a new root takes effect.
pub(super) type KeysHandle = std::sync::RwLock<Arc<OnlineKeys>>;

#[cfg(test)]
mod tests {
    use super::*;

    use otter_keys::keyfile::save_signing_key;
    use otter_keys::metadata::RoleKeys;
    use std::collections::BTreeMap;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_seed(&[n; 32])
    }

    /// A root naming key `root` for root and `t`, `s`, `ts` for the online roles.
    fn root_with(version: u64, ks: [&SigningKey; 4]) -> Root {
        let names = ["root", "targets", "snapshot", "timestamp"];
        Root {
            type_: "root".into(),
            spec_version: otter_keys::metadata::SPEC_VERSION.into(),
            consistent_snapshot: Some(true),
            version,
            expires: UtcTime::now().plus_days(30),
            keys: ks.iter().map(|k| (k.key_id(), k.public_key())).collect(),
            roles: names
                .iter()
                .zip(ks)
                .map(|(n, k)| {
                    (
                        (*n).to_string(),
                        RoleKeys {
                            keyids: vec![k.key_id()],
                            threshold: 1,
                            extra: BTreeMap::new(),
                        },
                    )
                })
                .collect(),
            extra: BTreeMap::new(),
        }
    }

    fn source(dir: &Path) -> KeySource {
        KeySource {
            dir: dir.to_path_buf(),
            pass: SecretString::from("server pass".to_string()),
        }
    }

    fn save(path: &Path, k: &SigningKey, pass: &str) {
        save_signing_key(path, k, "test", &SecretString::from(pass.to_string()), 10).unwrap();
    }

    #[test]
    fn keys_are_chosen_by_the_roots_key_ids_and_imports_are_checked_before_writing() {
        let d = tempfile::tempdir().unwrap();
        let keys_dir = d.path().join("keys");
        std::fs::create_dir(&keys_dir).unwrap();
        let src = source(&keys_dir);
        for (role, n) in [("targets", 2), ("snapshot", 3), ("timestamp", 4)] {
            save(
                &keys_dir.join(format!("{role}.key")),
                &key(n),
                "server pass",
            );
        }
        let v1 = root_with(1, [&key(1), &key(2), &key(3), &key(4)]);
        let k = load_online_keys(&src, &v1).unwrap();
        assert_eq!(k.timestamp.key_id(), key(4).key_id());

        // Version 2 names a new timestamp key: missing until imported.
        let v2 = root_with(2, [&key(1), &key(2), &key(3), &key(9)]);
        let Err(missing) = find_online_keys(&src, &v2, Some(&k)).unwrap() else {
            panic!("the new timestamp key is not installed yet")
        };
        assert_eq!(
            missing,
            vec![MissingKey {
                role: "timestamp",
                key_ids: vec![key(9).key_id()]
            }]
        );
        let err = load_online_keys(&src, &v2).err().unwrap().to_string();
        assert!(
            err.contains("timestamp") && err.contains(&key(9).key_id().0),
            "{err}"
        );

        let outside = d.path().join("ceremony");
        std::fs::create_dir(&outside).unwrap();
        let (good, wrong_pass, root_key, stranger) = (
            outside.join("timestamp-v2-1.key"),
            outside.join("wrong-pass.key"),
            outside.join("root-1.key"),
            outside.join("stranger.key"),
        );
        save(&good, &key(9), "server pass");
        save(&wrong_pass, &key(9), "another pass");
        save(&root_key, &key(1), "server pass");
        save(&stranger, &key(7), "server pass");
        for (bad, why) in [
            (&wrong_pass, "online passphrase"),
            (&root_key, "is a root key"),
            (&stranger, "does not authorise"),
        ] {
            let err = import_keys(&src, &v2, &[good.clone(), bad.clone()])
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{err}");
            // Nothing written: the good key came first but was not installed.
            assert!(!keys_dir
                .join(installed_key_name("timestamp", &key(9).key_id()))
                .exists());
        }
        let done = import_keys(&src, &v2, std::slice::from_ref(&good)).unwrap();
        assert_eq!(done.len(), 1);
        assert!(done[0].new && done[0].role == "timestamp");
        let again = import_keys(&src, &v2, std::slice::from_ref(&good)).unwrap();
        assert!(!again[0].new);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&done[0].path)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Now found, and the unchanged roles reuse the current keys.
        let k2 = find_online_keys(&src, &v2, Some(&k)).unwrap().unwrap();
        assert_eq!(k2.timestamp.key_id(), key(9).key_id());
        assert_eq!(k2.targets.key_id(), key(2).key_id());
        // After a restart (no current keys) the installed file is chosen over timestamp.key.
        let k3 = load_online_keys(&src, &v2).unwrap();
        assert_eq!(k3.timestamp.key_id(), key(9).key_id());
    }

    #[test]
    fn roots_the_server_cannot_sign_under_are_refused() {
        let mut r = root_with(2, [&key(1), &key(2), &key(3), &key(4)]);
        check_servable(&r).unwrap();
        r.consistent_snapshot = None;
        assert!(check_servable(&r)
            .unwrap_err()
            .contains("consistent snapshots"));
        let mut r = root_with(2, [&key(1), &key(2), &key(3), &key(4)]);
        r.roles.get_mut("snapshot").unwrap().threshold = 2;
        assert!(check_servable(&r).unwrap_err().contains("threshold"));
    }

    #[test]
    fn versioned_names_are_parsed_for_top_level_roles_only() {
        assert_eq!(versioned_name("12.targets.json"), Some((12, "targets")));
        assert_eq!(versioned_name("3.root.json"), Some((3, "root")));
        assert_eq!(versioned_name("4.snapshot.json"), Some((4, "snapshot")));
        assert_eq!(versioned_name("timestamp.json"), None);
        assert_eq!(versioned_name("root.json"), None);
        assert_eq!(versioned_name("5.card-reader.json"), None);
        assert_eq!(versioned_name("x.targets.json"), None);
    }

    #[test]
    fn only_roles_with_a_higher_store_version_are_ahead() {
        let db = Versions {
            root: 1,
            targets: 3,
            snapshot: 4,
            timestamp: 5,
        };
        let same = StoreVersions {
            root: 1,
            targets: 3,
            snapshot: 4,
            timestamp: 5,
        };
        assert!(store_ahead(&db, &same).is_empty());
        let behind = StoreVersions {
            root: 1,
            targets: 2,
            snapshot: 3,
            timestamp: 4,
        };
        assert!(store_ahead(&db, &behind).is_empty());
        let ahead = StoreVersions {
            root: 2,
            targets: 4,
            snapshot: 4,
            timestamp: 7,
        };
        assert_eq!(
            store_ahead(&db, &ahead),
            vec![("root", 1, 2), ("targets", 3, 4), ("timestamp", 5, 7)]
        );
        let msg = stale_refusal(&store_ahead(&db, &ahead)).to_string();
        assert!(msg.contains("timestamp version 7 in the store, 5 in the database"));
        assert!(msg.contains("--resume-above-store") && msg.contains("docs/disaster-recovery.md"));
    }
}
