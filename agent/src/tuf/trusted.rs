//! The trusted metadata set: every rule of the client workflow that decides whether new
//! metadata may replace what is trusted. Pure: bytes and a reference time in, verdicts out.

use std::collections::BTreeMap;

use otter_keys::canonical::DEFAULT_MAX_METADATA_BYTES;
use otter_keys::hash::{self, HashError};
use otter_keys::metadata::{
    check_expected_version, check_expiry, check_no_rollback, check_root_successor, MetaFile,
    Metadata, MetadataError, Role, Root, Snapshot, Targets, Timestamp,
};
use otter_keys::time::UtcTime;

/// Why new metadata was refused.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// Bad signatures, threshold, type, version, expiry, or malformed.
    #[error("{role}: {source}")]
    Metadata {
        /// The role the file was to be.
        role: String,
        /// The cause.
        #[source]
        source: MetadataError,
    },
    /// Length or hash differs from what the referring metadata says.
    #[error("{role}: {source}")]
    Hash {
        /// The role.
        role: String,
        /// The cause.
        #[source]
        source: HashError,
    },
    /// The same version as the trusted one: nothing to do (not an attack).
    #[error("{role}: same version {version} as trusted")]
    EqualVersion {
        /// The role.
        role: String,
        /// The version.
        version: u64,
    },
    /// The workflow's order was not followed, or a referenced entry is missing.
    #[error("{0}")]
    Workflow(String),
}

fn md_err(role: &str) -> impl Fn(MetadataError) -> TrustError + '_ {
    move |source| TrustError::Metadata {
        role: role.to_string(),
        source,
    }
}

/// Metadata the client trusts, built up in the order the specification requires.
#[derive(Debug)]
pub struct TrustedSet {
    root: Metadata<Root>,
    timestamp: Option<Metadata<Timestamp>>,
    snapshot: Option<Metadata<Snapshot>>,
    targets: BTreeMap<String, Metadata<Targets>>,
    now: UtcTime,
}

impl TrustedSet {
    /// Starts from a trusted root (5.2): it must be signed by a threshold of its own root
    /// keys. Its expiry is checked only once root updates are done.
    pub fn new(root_bytes: &[u8], now: UtcTime) -> Result<Self, TrustError> {
        let root = Metadata::<Root>::from_bytes(root_bytes, DEFAULT_MAX_METADATA_BYTES)
            .map_err(md_err("root"))?;
        root.verify_self().map_err(md_err("root"))?;
        Ok(TrustedSet {
            root,
            timestamp: None,
            snapshot: None,
            targets: BTreeMap::new(),
            now,
        })
    }

    /// The trusted root.
    pub fn root(&self) -> &Metadata<Root> {
        &self.root
    }
    /// The trusted timestamp, once loaded.
    pub fn timestamp(&self) -> Option<&Metadata<Timestamp>> {
        self.timestamp.as_ref()
    }
    /// The trusted snapshot, once loaded.
    pub fn snapshot(&self) -> Option<&Metadata<Snapshot>> {
        self.snapshot.as_ref()
    }
    /// Trusted targets metadata by role name (`targets` or a delegated role).
    pub fn targets(&self, role: &str) -> Option<&Metadata<Targets>> {
        self.targets.get(role)
    }

    /// 5.3.4–5.3.5: root N+1, signed by a threshold of the trusted root's root keys and of
    /// its own, with version exactly N+1.
    pub fn update_root(&mut self, bytes: &[u8]) -> Result<(), TrustError> {
        if self.timestamp.is_some() {
            return Err(TrustError::Workflow(
                "root cannot change after timestamp was loaded".into(),
            ));
        }
        let new = Metadata::<Root>::from_bytes(bytes, DEFAULT_MAX_METADATA_BYTES)
            .map_err(md_err("root"))?;
        self.root.verify_by(&new, "root").map_err(md_err("root"))?;
        check_root_successor(self.root.signed().version, new.signed().version)
            .map_err(md_err("root"))?;
        new.verify_self().map_err(md_err("root"))?;
        self.root = new;
        Ok(())
    }

    /// 5.3.10: the final root must not be expired.
    pub fn check_final_root(&self) -> Result<(), TrustError> {
        self.root.check_expiry(self.now).map_err(md_err("root"))
    }

    /// 5.4: a new timestamp. Kept as trusted even when expired (so later rollback checks
    /// use it), but then refused.
    pub fn update_timestamp(&mut self, bytes: &[u8]) -> Result<(), TrustError> {
        if self.snapshot.is_some() {
            return Err(TrustError::Workflow(
                "timestamp cannot change after snapshot was loaded".into(),
            ));
        }
        self.check_final_root()?;
        let role = "timestamp";
        let new = Metadata::<Timestamp>::from_bytes(bytes, DEFAULT_MAX_METADATA_BYTES)
            .map_err(md_err(role))?;
        self.root.verify_by(&new, role).map_err(md_err(role))?;
        if let Some(old) = &self.timestamp {
            let (ov, nv) = (old.signed().version, new.signed().version);
            check_no_rollback(role, ov, nv).map_err(md_err(role))?;
            if nv == ov {
                return Err(TrustError::EqualVersion {
                    role: role.into(),
                    version: nv,
                });
            }
            let old_snap = old.signed().snapshot_meta().map_err(md_err(role))?.version;
            let new_snap = new.signed().snapshot_meta().map_err(md_err(role))?.version;
            check_no_rollback("snapshot (named by timestamp)", old_snap, new_snap)
                .map_err(md_err(role))?;
        }
        self.timestamp = Some(new);
        self.check_final_timestamp()
    }

    fn check_final_timestamp(&self) -> Result<(), TrustError> {
        let ts = self
            .timestamp
            .as_ref()
            .ok_or_else(|| TrustError::Workflow("no trusted timestamp".into()))?;
        ts.check_expiry(self.now).map_err(md_err("timestamp"))
    }

    /// The snapshot entry the trusted timestamp names.
    pub fn snapshot_meta(&self) -> Result<&MetaFile, TrustError> {
        let ts = self
            .timestamp
            .as_ref()
            .ok_or_else(|| TrustError::Workflow("snapshot needs a trusted timestamp".into()))?;
        ts.signed().snapshot_meta().map_err(md_err("timestamp"))
    }

    /// 5.5: a new snapshot. `from_local_cache` skips the hash check against the timestamp
    /// (the cached file is checked by its signatures and version instead).
    pub fn update_snapshot(
        &mut self,
        bytes: &[u8],
        from_local_cache: bool,
    ) -> Result<(), TrustError> {
        if !self.targets.is_empty() {
            return Err(TrustError::Workflow(
                "snapshot cannot change after targets were loaded".into(),
            ));
        }
        self.check_final_timestamp()?;
        let role = "snapshot";
        let meta = self.snapshot_meta()?.clone();
        if !from_local_cache {
            check_length_and_hashes(role, bytes, &meta)?;
        }
        let new = Metadata::<Snapshot>::from_bytes(bytes, DEFAULT_MAX_METADATA_BYTES)
            .map_err(md_err(role))?;
        self.root.verify_by(&new, role).map_err(md_err(role))?;
        if let Some(old) = &self.snapshot {
            for (name, old_meta) in &old.signed().meta {
                let Some(new_meta) = new.signed().meta.get(name) else {
                    return Err(TrustError::Workflow(format!(
                        "snapshot: new version drops {name} (rollback attack?)"
                    )));
                };
                check_no_rollback(name, old_meta.version, new_meta.version)
                    .map_err(md_err(role))?;
            }
        }
        self.snapshot = Some(new);
        let snap = self
            .snapshot
            .as_ref()
            .ok_or_else(|| TrustError::Workflow("snapshot vanished".into()))?;
        snap.check_expiry(self.now).map_err(md_err(role))?;
        check_expected_version(role, meta.version, snap.signed().version).map_err(md_err(role))
    }

    /// 5.6 / 5.6.7: targets metadata for `role`, verified with the keys `delegator` names
    /// for it (`root` for the top-level `targets`).
    pub fn update_targets(
        &mut self,
        bytes: &[u8],
        role: &str,
        delegator: &str,
    ) -> Result<(), TrustError> {
        let snap = self
            .snapshot
            .as_ref()
            .ok_or_else(|| TrustError::Workflow("targets need a trusted snapshot".into()))?;
        snap.check_expiry(self.now).map_err(md_err("snapshot"))?;
        let meta = snap
            .signed()
            .meta
            .get(&format!("{role}.json"))
            .ok_or_else(|| TrustError::Workflow(format!("snapshot does not list {role}.json")))?
            .clone();
        check_length_and_hashes(role, bytes, &meta)?;
        let new = Metadata::<Targets>::from_bytes(bytes, DEFAULT_MAX_METADATA_BYTES)
            .map_err(md_err(role))?;
        if delegator == "root" {
            self.root.verify_by(&new, "targets").map_err(md_err(role))?;
        } else {
            let parent = self.targets.get(delegator).ok_or_else(|| {
                TrustError::Workflow(format!("delegator {delegator} is not trusted yet"))
            })?;
            let delegations =
                parent.signed().delegations.as_ref().ok_or_else(|| {
                    TrustError::Workflow(format!("{delegator} delegates to no role"))
                })?;
            let d = delegations
                .roles()
                .iter()
                .find(|r| r.name == role)
                .ok_or_else(|| {
                    TrustError::Workflow(format!("{delegator} does not delegate to {role}"))
                })?;
            otter_keys::metadata::verify_threshold(
                role,
                new.canonical_signed(),
                new.signatures(),
                &delegations.keys,
                &d.keyids,
                d.threshold,
            )
            .map_err(md_err(role))?;
        }
        check_expected_version(role, meta.version, new.signed().version()).map_err(md_err(role))?;
        check_expiry(role, new.signed().expires(), self.now).map_err(md_err(role))?;
        self.targets.insert(role.to_string(), new);
        Ok(())
    }
}

fn check_length_and_hashes(role: &str, bytes: &[u8], meta: &MetaFile) -> Result<(), TrustError> {
    let herr = |source| TrustError::Hash {
        role: role.to_string(),
        source,
    };
    if let Some(len) = meta.length {
        if len != bytes.len() as u64 {
            return Err(herr(HashError::Length {
                expected: len,
                found: bytes.len() as u64,
            }));
        }
    }
    if let Some(h) = &meta.hashes {
        hash::verify(bytes, None, h).map_err(herr)?;
    }
    Ok(())
}
