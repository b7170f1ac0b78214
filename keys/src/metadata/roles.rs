//! The four top-level TUF roles' `signed` contents, as specification 1.0 defines them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::delegation::Delegations;
use super::MetadataError;
use crate::crypto::{KeyId, PublicKey};
use crate::time::UtcTime;

/// The `spec_version` Otter writes.
pub const SPEC_VERSION: &str = "1.0.31";

/// Members this version does not know, kept so that re-serialising verifies unchanged.
pub type Extra = BTreeMap<String, Value>;

/// What every role's metadata has in common.
pub trait Role: Serialize + for<'de> Deserialize<'de> {
    /// The `_type` value: `root`, `targets`, `snapshot` or `timestamp`.
    const TYPE: &'static str;
    /// `version`.
    fn version(&self) -> u64;
    /// `expires`.
    fn expires(&self) -> UtcTime;
    /// `spec_version`.
    fn spec_version(&self) -> &str;
    /// Checks the rules of the specification that serde's types cannot express.
    fn validate(&self) -> Result<(), MetadataError>;
}

/// The keys and threshold of one role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleKeys {
    /// The key ids authorised to sign for the role.
    pub keyids: Vec<KeyId>,
    /// How many distinct authorised keys must sign.
    pub threshold: u32,
    /// Members this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl RoleKeys {
    pub(crate) fn validate(&self, role: &str) -> Result<(), MetadataError> {
        if self.threshold == 0 {
            return Err(MetadataError::Invalid(format!(
                "role {role:?} has threshold 0"
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for id in &self.keyids {
            if !seen.insert(id) {
                return Err(MetadataError::Invalid(format!(
                    "role {role:?} lists key {id} twice"
                )));
            }
        }
        Ok(())
    }
}

/// `root.json`: the trust anchor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    /// Always `root`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// Specification version, `1.0.x`.
    pub spec_version: String,
    /// Whether files are published under version/hash-prefixed names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_snapshot: Option<bool>,
    /// Metadata version, from 1.
    pub version: u64,
    /// When this metadata stops being trusted.
    pub expires: UtcTime,
    /// All keys the roles below refer to.
    pub keys: BTreeMap<KeyId, PublicKey>,
    /// Exactly `root`, `targets`, `snapshot` and `timestamp`.
    pub roles: BTreeMap<String, RoleKeys>,
    /// Members this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The top-level role names.
pub const TOP_LEVEL_ROLES: [&str; 4] = ["root", "targets", "snapshot", "timestamp"];

impl Root {
    /// The keys and threshold of a top-level role.
    pub fn role(&self, name: &str) -> Result<&RoleKeys, MetadataError> {
        self.roles
            .get(name)
            .ok_or_else(|| MetadataError::Invalid(format!("root does not define role {name:?}")))
    }

    /// Whether consistent snapshots are in use (absent means false in the specification).
    pub fn consistent_snapshot(&self) -> bool {
        self.consistent_snapshot.unwrap_or(false)
    }
}

impl Role for Root {
    const TYPE: &'static str = "root";
    fn version(&self) -> u64 {
        self.version
    }
    fn expires(&self) -> UtcTime {
        self.expires
    }
    fn spec_version(&self) -> &str {
        &self.spec_version
    }
    fn validate(&self) -> Result<(), MetadataError> {
        let names: Vec<&str> = self.roles.keys().map(String::as_str).collect();
        let mut want = TOP_LEVEL_ROLES.to_vec();
        want.sort_unstable();
        if names != want {
            return Err(MetadataError::Invalid(format!(
                "root must define exactly the roles root, snapshot, targets and timestamp, not {names:?}"
            )));
        }
        for (name, role) in &self.roles {
            role.validate(name)?;
        }
        Ok(())
    }
}

/// An entry of `meta` in snapshot and timestamp metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaFile {
    /// The version of the metadata file it describes.
    pub version: u64,
    /// Its length in bytes, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// Its hashes, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashes: Option<BTreeMap<String, String>>,
    /// Members this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl MetaFile {
    fn validate(&self, name: &str) -> Result<(), MetadataError> {
        if self.version == 0 {
            return Err(MetadataError::Invalid(format!(
                "meta {name:?} has version 0"
            )));
        }
        if let Some(h) = &self.hashes {
            if h.is_empty() {
                return Err(MetadataError::Invalid(format!(
                    "meta {name:?} has empty hashes"
                )));
            }
        }
        Ok(())
    }
}

/// `timestamp.json`: names the current snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamp {
    /// Always `timestamp`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// Specification version.
    pub spec_version: String,
    /// Metadata version.
    pub version: u64,
    /// Expiry.
    pub expires: UtcTime,
    /// Exactly one entry, `snapshot.json`.
    pub meta: BTreeMap<String, MetaFile>,
    /// Members this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Timestamp {
    /// The `snapshot.json` entry.
    pub fn snapshot_meta(&self) -> Result<&MetaFile, MetadataError> {
        self.meta
            .get("snapshot.json")
            .ok_or_else(|| MetadataError::Invalid("timestamp has no snapshot.json entry".into()))
    }
}

impl Role for Timestamp {
    const TYPE: &'static str = "timestamp";
    fn version(&self) -> u64 {
        self.version
    }
    fn expires(&self) -> UtcTime {
        self.expires
    }
    fn spec_version(&self) -> &str {
        &self.spec_version
    }
    fn validate(&self) -> Result<(), MetadataError> {
        if self.meta.len() != 1 {
            return Err(MetadataError::Invalid(
                "timestamp meta must have exactly one entry, snapshot.json".into(),
            ));
        }
        self.snapshot_meta()?.validate("snapshot.json")
    }
}

/// `snapshot.json`: the versions of all targets metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Always `snapshot`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// Specification version.
    pub spec_version: String,
    /// Metadata version.
    pub version: u64,
    /// Expiry.
    pub expires: UtcTime,
    /// `targets.json` and every delegated `ROLE.json`.
    pub meta: BTreeMap<String, MetaFile>,
    /// Members this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Role for Snapshot {
    const TYPE: &'static str = "snapshot";
    fn version(&self) -> u64 {
        self.version
    }
    fn expires(&self) -> UtcTime {
        self.expires
    }
    fn spec_version(&self) -> &str {
        &self.spec_version
    }
    fn validate(&self) -> Result<(), MetadataError> {
        for (name, m) in &self.meta {
            m.validate(name)?;
        }
        Ok(())
    }
}

/// One target file's entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetFile {
    /// Length in bytes.
    pub length: u64,
    /// At least one hash (`sha256`, `sha512`).
    pub hashes: BTreeMap<String, String>,
    /// Members this version does not know, and `custom` (Otter's fields live there).
    #[serde(flatten)]
    pub extra: Extra,
}

impl TargetFile {
    /// The `custom` member, if any.
    pub fn custom(&self) -> Option<&Value> {
        self.extra.get("custom")
    }
}

/// `targets.json` or a delegated role's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Targets {
    /// Always `targets`.
    #[serde(rename = "_type")]
    pub type_: String,
    /// Specification version.
    pub spec_version: String,
    /// Metadata version.
    pub version: u64,
    /// Expiry.
    pub expires: UtcTime,
    /// Target path to its entry.
    pub targets: BTreeMap<String, TargetFile>,
    /// Roles this one delegates to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegations: Option<Delegations>,
    /// Members this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Role for Targets {
    const TYPE: &'static str = "targets";
    fn version(&self) -> u64 {
        self.version
    }
    fn expires(&self) -> UtcTime {
        self.expires
    }
    fn spec_version(&self) -> &str {
        &self.spec_version
    }
    fn validate(&self) -> Result<(), MetadataError> {
        for (name, t) in &self.targets {
            if t.hashes.is_empty() {
                return Err(MetadataError::Invalid(format!(
                    "target {name:?} has no hashes"
                )));
            }
        }
        if let Some(d) = &self.delegations {
            d.validate()?;
        }
        Ok(())
    }
}
