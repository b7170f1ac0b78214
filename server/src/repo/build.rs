//! Building, signing and checking the top-level metadata: pure functions of keys, the current
//! state and `now`, with no I/O, so the rules are tested without a server.

use std::collections::BTreeMap;

use otter_keys::crypto::SigningKey;
use otter_keys::hash::{hashes_of, verify as verify_hashes};
use otter_keys::metadata::{
    check_expected_version, MetaFile, Metadata, MetadataError, Role, RoleKeys, Root, Snapshot,
    Targets, Timestamp, SPEC_VERSION,
};
use otter_keys::time::UtcTime;

use crate::config::RepositoryConfig;

/// Largest metadata file the server reads back from its own database.
pub const MAX_METADATA_BYTES: usize = 16 * 1024 * 1024;

/// Lifetimes of each role's metadata, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// Root (development repository only).
    pub root: i64,
    /// Targets.
    pub targets: i64,
    /// Snapshot.
    pub snapshot: i64,
    /// Timestamp.
    pub timestamp: i64,
}

impl From<&RepositoryConfig> for Lifetimes {
    fn from(c: &RepositoryConfig) -> Self {
        let s = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Lifetimes {
            root: s(c.root_expiry_secs),
            targets: s(c.targets_expiry_secs),
            snapshot: s(c.snapshot_expiry_secs),
            timestamp: s(c.timestamp_expiry_secs),
        }
    }
}

/// The four top-level roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopRole {
    /// `root`.
    Root,
    /// `targets`.
    Targets,
    /// `snapshot`.
    Snapshot,
    /// `timestamp`.
    Timestamp,
}

impl TopRole {
    /// The role name, as in `_type` and file names.
    pub fn name(self) -> &'static str {
        match self {
            TopRole::Root => "root",
            TopRole::Targets => "targets",
            TopRole::Snapshot => "snapshot",
            TopRole::Timestamp => "timestamp",
        }
    }
}

/// Signed metadata together with the exact bytes published (hashes cover these bytes).
#[derive(Debug, Clone)]
pub struct SignedFile<T> {
    /// The parsed metadata.
    pub meta: Metadata<T>,
    /// The published bytes.
    pub bytes: Vec<u8>,
}

impl<T: Role + Clone> SignedFile<T> {
    /// Builds metadata from `signed` and signs it with `key`.
    pub fn sign(signed: T, key: &SigningKey) -> Result<Self, MetadataError> {
        let mut meta = Metadata::new(signed)?;
        meta.sign(key);
        let bytes = meta.to_bytes();
        Ok(SignedFile { meta, bytes })
    }

    /// Parses published bytes (no signature is checked here).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, MetadataError> {
        let meta = Metadata::from_bytes(&bytes, MAX_METADATA_BYTES)?;
        Ok(SignedFile { meta, bytes })
    }

    /// The contents.
    pub fn signed(&self) -> &T {
        self.meta.signed()
    }

    /// The version.
    pub fn version(&self) -> u64 {
        self.meta.signed().version()
    }

    /// The expiry.
    pub fn expires(&self) -> UtcTime {
        self.meta.signed().expires()
    }

    /// The snapshot/timestamp `meta` entry describing this file: version, length, hashes.
    pub fn meta_file(&self) -> MetaFile {
        MetaFile {
            version: self.version(),
            length: Some(self.bytes.len() as u64),
            hashes: Some(hashes_of(&self.bytes)),
            extra: BTreeMap::new(),
        }
    }
}

/// The current top-level metadata of the repository.
#[derive(Debug, Clone)]
pub struct RepoState {
    /// The latest root.
    pub root: SignedFile<Root>,
    /// The latest targets.
    pub targets: SignedFile<Targets>,
    /// The latest snapshot.
    pub snapshot: SignedFile<Snapshot>,
    /// The latest timestamp.
    pub timestamp: SignedFile<Timestamp>,
}

/// One metadata version to record and publish.
#[derive(Debug, Clone)]
pub struct FileRecord {
    /// Its role.
    pub role: TopRole,
    /// Its version.
    pub version: u64,
    /// Its expiry.
    pub expires: UtcTime,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

impl FileRecord {
    /// The file name under `repo/metadata/`: `timestamp.json`, or `VERSION.ROLE.json`.
    pub fn file_name(&self) -> String {
        match self.role {
            TopRole::Timestamp => "timestamp.json".into(),
            r => format!("{}.{}.json", self.version, r.name()),
        }
    }
}

impl RepoState {
    /// The record of one role's current file.
    pub fn record(&self, role: TopRole) -> FileRecord {
        let (version, expires, bytes) = match role {
            TopRole::Root => (self.root.version(), self.root.expires(), &self.root.bytes),
            TopRole::Targets => (
                self.targets.version(),
                self.targets.expires(),
                &self.targets.bytes,
            ),
            TopRole::Snapshot => (
                self.snapshot.version(),
                self.snapshot.expires(),
                &self.snapshot.bytes,
            ),
            TopRole::Timestamp => (
                self.timestamp.version(),
                self.timestamp.expires(),
                &self.timestamp.bytes,
            ),
        };
        FileRecord {
            role,
            version,
            expires,
            bytes: bytes.clone(),
        }
    }
}

/// The keys of a development repository: all four roles, root included.
pub struct DevKeys {
    /// Root.
    pub root: SigningKey,
    /// The online keys.
    pub online: OnlineKeys,
}

/// The keys the server signs with while it runs.
pub struct OnlineKeys {
    /// Targets.
    pub targets: SigningKey,
    /// Snapshot.
    pub snapshot: SigningKey,
    /// Timestamp.
    pub timestamp: SigningKey,
}

fn one_key(key: &SigningKey) -> RoleKeys {
    RoleKeys {
        keyids: vec![key.key_id()],
        threshold: 1,
        extra: BTreeMap::new(),
    }
}

/// Version 1 of everything: a root (consistent snapshots, threshold 1 for each role) signed
/// by the root key, empty targets, the snapshot naming them, the timestamp naming it.
pub fn initial_state(
    keys: &DevKeys,
    now: UtcTime,
    l: &Lifetimes,
) -> Result<RepoState, MetadataError> {
    let all = [
        ("root", &keys.root),
        ("targets", &keys.online.targets),
        ("snapshot", &keys.online.snapshot),
        ("timestamp", &keys.online.timestamp),
    ];
    let root = Root {
        type_: "root".into(),
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: Some(true),
        version: 1,
        expires: now.plus_secs(l.root),
        keys: all
            .iter()
            .map(|(_, k)| (k.key_id(), k.public_key()))
            .collect(),
        roles: all
            .iter()
            .map(|(name, k)| ((*name).to_string(), one_key(k)))
            .collect(),
        extra: BTreeMap::new(),
    };
    let root = SignedFile::sign(root, &keys.root)?;
    let targets = SignedFile::sign(
        Targets {
            type_: "targets".into(),
            spec_version: SPEC_VERSION.into(),
            version: 1,
            expires: now.plus_secs(l.targets),
            targets: BTreeMap::new(),
            delegations: None,
            extra: BTreeMap::new(),
        },
        &keys.online.targets,
    )?;
    let snapshot = new_snapshot(1, BTreeMap::new(), &targets, now, l, &keys.online)?;
    let timestamp = new_timestamp(1, &snapshot, now, l, &keys.online)?;
    Ok(RepoState {
        root,
        targets,
        snapshot,
        timestamp,
    })
}

pub(super) fn new_snapshot(
    version: u64,
    mut meta: BTreeMap<String, MetaFile>,
    targets: &SignedFile<Targets>,
    now: UtcTime,
    l: &Lifetimes,
    keys: &OnlineKeys,
) -> Result<SignedFile<Snapshot>, MetadataError> {
    meta.insert("targets.json".into(), targets.meta_file());
    SignedFile::sign(
        Snapshot {
            type_: "snapshot".into(),
            spec_version: SPEC_VERSION.into(),
            version,
            expires: now.plus_secs(l.snapshot),
            meta,
            extra: BTreeMap::new(),
        },
        &keys.snapshot,
    )
}

pub(super) fn new_timestamp(
    version: u64,
    snapshot: &SignedFile<Snapshot>,
    now: UtcTime,
    l: &Lifetimes,
    keys: &OnlineKeys,
) -> Result<SignedFile<Timestamp>, MetadataError> {
    SignedFile::sign(
        Timestamp {
            type_: "timestamp".into(),
            spec_version: SPEC_VERSION.into(),
            version,
            expires: now.plus_secs(l.timestamp),
            meta: BTreeMap::from([("snapshot.json".to_string(), snapshot.meta_file())]),
            extra: BTreeMap::new(),
        },
        &keys.timestamp,
    )
}

/// Whether metadata expiring at `expires` has less than half of `lifetime` left at `now`.
pub fn needs_resign(expires: UtcTime, now: UtcTime, lifetime: i64) -> bool {
    expires.unix().saturating_sub(now.unix()).saturating_mul(2) < lifetime
}

/// Which roles a refresh re-signs. A new targets needs a new snapshot, which needs a new
/// timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Plan {
    /// Re-sign targets.
    pub targets: bool,
    /// Re-sign snapshot.
    pub snapshot: bool,
    /// Re-sign timestamp.
    pub timestamp: bool,
}

/// Decides what to re-sign at `now`.
pub fn plan(state: &RepoState, now: UtcTime, l: &Lifetimes) -> Plan {
    let targets = needs_resign(state.targets.expires(), now, l.targets);
    let snapshot = targets || needs_resign(state.snapshot.expires(), now, l.snapshot);
    let timestamp = snapshot || needs_resign(state.timestamp.expires(), now, l.timestamp);
    Plan {
        targets,
        snapshot,
        timestamp,
    }
}

/// Re-signs what `plan` names, each with the next version. Returns the new state and the new
/// files in the order they must be published: targets, snapshot, then the timestamp that
/// points to them.
pub fn resign(
    state: &RepoState,
    plan: Plan,
    keys: &OnlineKeys,
    now: UtcTime,
    l: &Lifetimes,
) -> Result<(RepoState, Vec<TopRole>), MetadataError> {
    let mut next = state.clone();
    let mut changed = Vec::new();
    let bump = |v: u64| {
        v.checked_add(1)
            .ok_or_else(|| MetadataError::Invalid("version counter exhausted".into()))
    };
    if plan.targets {
        let mut t = state.targets.signed().clone();
        t.version = bump(t.version)?;
        t.expires = now.plus_secs(l.targets);
        next.targets = SignedFile::sign(t, &keys.targets)?;
        changed.push(TopRole::Targets);
    }
    if plan.snapshot {
        let old = state.snapshot.signed();
        next.snapshot = new_snapshot(
            bump(old.version)?,
            old.meta.clone(),
            &next.targets,
            now,
            l,
            keys,
        )?;
        changed.push(TopRole::Snapshot);
    }
    if plan.timestamp {
        next.timestamp = new_timestamp(
            bump(state.timestamp.version())?,
            &next.snapshot,
            now,
            l,
            keys,
        )?;
        changed.push(TopRole::Timestamp);
    }
    Ok((next, changed))
}

fn check_meta(role: &str, entry: &MetaFile, bytes: &[u8], version: u64) -> Result<(), String> {
    check_expected_version(role, entry.version, version).map_err(|e| e.to_string())?;
    if let Some(hashes) = &entry.hashes {
        verify_hashes(bytes, entry.length, hashes).map_err(|e| format!("{role}: {e}"))?;
    } else if entry.length.is_some_and(|n| n != bytes.len() as u64) {
        return Err(format!("{role}: length differs from the one signed"));
    }
    Ok(())
}

/// Checks that a state is a valid TUF repository (expiry aside): root signed by itself, each
/// role by its keys, snapshot naming the targets (version, length, hashes) and timestamp
/// naming the snapshot.
pub fn verify_state(s: &RepoState) -> Result<(), String> {
    let root = &s.root.meta;
    root.verify_self().map_err(|e| e.to_string())?;
    root.verify_by(&s.targets.meta, "targets")
        .map_err(|e| e.to_string())?;
    root.verify_by(&s.snapshot.meta, "snapshot")
        .map_err(|e| e.to_string())?;
    root.verify_by(&s.timestamp.meta, "timestamp")
        .map_err(|e| e.to_string())?;
    let snap_entry = s
        .timestamp
        .signed()
        .snapshot_meta()
        .map_err(|e| e.to_string())?;
    check_meta(
        "snapshot",
        snap_entry,
        &s.snapshot.bytes,
        s.snapshot.version(),
    )?;
    let targets_entry = s
        .snapshot
        .signed()
        .meta
        .get("targets.json")
        .ok_or("snapshot has no targets.json entry")?;
    check_meta(
        "targets",
        targets_entry,
        &s.targets.bytes,
        s.targets.version(),
    )?;
    Ok(())
}

/// Checks that `keys` are the ones `root` authorises for the online roles.
pub fn check_online_keys(root: &Root, keys: &OnlineKeys) -> Result<(), String> {
    for (role, key) in [
        ("targets", &keys.targets),
        ("snapshot", &keys.snapshot),
        ("timestamp", &keys.timestamp),
    ] {
        let authorised = root.role(role).map_err(|e| e.to_string())?;
        if !authorised.keyids.contains(&key.key_id()) {
            return Err(format!(
                "the {role} key on disk (key id {}) is not a {role} key of root version {}",
                key.key_id().short(),
                root.version
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> DevKeys {
        DevKeys {
            root: SigningKey::from_seed(&[1; 32]),
            online: OnlineKeys {
                targets: SigningKey::from_seed(&[2; 32]),
                snapshot: SigningKey::from_seed(&[3; 32]),
                timestamp: SigningKey::from_seed(&[4; 32]),
            },
        }
    }

    const L: Lifetimes = Lifetimes {
        root: 365 * 86_400,
        targets: 90 * 86_400,
        snapshot: 7 * 86_400,
        timestamp: 86_400,
    };

    fn t0() -> UtcTime {
        UtcTime::from_unix(1_900_000_000)
    }

    #[test]
    fn the_initial_state_verifies() {
        let s = initial_state(&keys(), t0(), &L).unwrap();
        verify_state(&s).unwrap();
        assert_eq!(s.root.signed().consistent_snapshot, Some(true));
        assert_eq!(s.timestamp.expires(), t0().plus_secs(86_400));
        for role in ["root", "targets", "snapshot", "timestamp"] {
            assert_eq!(s.root.signed().role(role).unwrap().threshold, 1);
        }
        check_online_keys(s.root.signed(), &keys().online).unwrap();
        let other = OnlineKeys {
            targets: SigningKey::from_seed(&[2; 32]),
            snapshot: SigningKey::from_seed(&[3; 32]),
            timestamp: SigningKey::from_seed(&[9; 32]),
        };
        assert!(check_online_keys(s.root.signed(), &other).is_err());
    }

    #[test]
    fn re_signing_starts_when_half_the_lifetime_is_left() {
        assert!(!needs_resign(t0().plus_secs(100), t0(), 200));
        assert!(needs_resign(t0().plus_secs(99), t0(), 200));
        assert!(needs_resign(t0().plus_secs(-5), t0(), 200));
        let s = initial_state(&keys(), t0(), &L).unwrap();
        assert_eq!(plan(&s, t0(), &L), Plan::default());
        let p = plan(&s, t0().plus_secs(12 * 3600 + 1), &L);
        assert_eq!(
            p,
            Plan {
                timestamp: true,
                ..Plan::default()
            }
        );
        let p = plan(&s, t0().plus_secs(4 * 86_400), &L);
        assert!(p.snapshot && p.timestamp && !p.targets);
        let p = plan(&s, t0().plus_secs(46 * 86_400), &L);
        assert!(p.targets && p.snapshot && p.timestamp);
    }

    #[test]
    fn re_signed_states_verify_and_are_ordered_for_publication() {
        let k = keys();
        let s = initial_state(&k, t0(), &L).unwrap();
        let later = t0().plus_secs(46 * 86_400);
        let (n, order) = resign(&s, plan(&s, later, &L), &k.online, later, &L).unwrap();
        assert_eq!(
            order,
            vec![TopRole::Targets, TopRole::Snapshot, TopRole::Timestamp]
        );
        verify_state(&n).unwrap();
        assert_eq!(n.targets.version(), 2);
        assert_eq!(n.snapshot.version(), 2);
        assert_eq!(n.timestamp.version(), 2);
        assert_eq!(n.root.bytes, s.root.bytes);
        assert_eq!(n.record(TopRole::Snapshot).file_name(), "2.snapshot.json");
        assert_eq!(n.record(TopRole::Timestamp).file_name(), "timestamp.json");

        let (m, order) = resign(
            &n,
            Plan {
                timestamp: true,
                ..Plan::default()
            },
            &k.online,
            later,
            &L,
        )
        .unwrap();
        assert_eq!(order, vec![TopRole::Timestamp]);
        assert_eq!(m.timestamp.version(), 3);
        assert_eq!(m.snapshot.bytes, n.snapshot.bytes);
        verify_state(&m).unwrap();
    }

    #[test]
    fn a_tampered_state_does_not_verify() {
        let mut s = initial_state(&keys(), t0(), &L).unwrap();
        s.snapshot.bytes.push(b' ');
        assert!(verify_state(&s).is_err());
    }
}
