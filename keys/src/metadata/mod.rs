//! TUF metadata: the signed envelope, the role types, and the pure checks a client applies.
//!
//! [`Metadata`] keeps the `signed` object exactly as received next to its typed view, so
//! members this version does not know survive, and signatures are always checked over the
//! canonical form of what was received.

mod delegation;
mod roles;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

pub use delegation::{path_matches, DelegatedRole, Delegations};
pub use roles::{
    Extra, MetaFile, Role, RoleKeys, Root, Snapshot, TargetFile, Targets, Timestamp, SPEC_VERSION,
    TOP_LEVEL_ROLES,
};

use crate::canonical::{self, CanonicalError};
use crate::crypto::{KeyId, PublicKey, Signature, SigningKey};
use crate::time::UtcTime;

/// Why metadata was refused.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// Not JSON, too large, duplicate members, or no canonical form.
    #[error(transparent)]
    Json(#[from] CanonicalError),
    /// The JSON does not have the shape of TUF metadata.
    #[error("not valid TUF metadata: {0}")]
    Schema(String),
    /// It breaks a rule of the specification.
    #[error("invalid metadata: {0}")]
    Invalid(String),
    /// `_type` is not the role expected.
    #[error("wrong metadata type: expected {expected:?}, found {found:?}")]
    WrongType {
        /// The role expected.
        expected: String,
        /// The `_type` found.
        found: String,
    },
    /// `spec_version` has a major version other than 1, or is not a version.
    #[error("unsupported spec_version {0:?}: Otter reads TUF specification 1.x")]
    SpecVersion(String),
    /// Fewer distinct authorised keys signed than the threshold.
    #[error("{role} metadata: {valid} valid signature(s) from authorised keys, threshold is {threshold}")]
    ThresholdNotMet {
        /// The role.
        role: String,
        /// Distinct authorised keys whose signatures verified.
        valid: u32,
        /// The threshold.
        threshold: u32,
    },
    /// The metadata has expired.
    #[error("{role} metadata expired at {expires} (now {now})")]
    Expired {
        /// The role.
        role: String,
        /// Its expiry.
        expires: UtcTime,
        /// The reference time.
        now: UtcTime,
    },
    /// A version is lower than, or not the successor of, the trusted one.
    #[error("{role} metadata version {found} refused: {reason}")]
    Version {
        /// The role.
        role: String,
        /// The version found.
        found: u64,
        /// Why it is refused, naming the trusted version.
        reason: String,
    },
}

/// Parsed but not yet trusted metadata of role `T`.
#[derive(Debug, Clone)]
pub struct Metadata<T> {
    signed: T,
    signed_value: Value,
    canonical: Vec<u8>,
    signatures: Vec<Signature>,
    extra: BTreeMap<String, Value>,
}

/// Reads the `_type` of a metadata document without trusting anything in it.
pub fn peek_type(bytes: &[u8], max_len: usize) -> Result<String, MetadataError> {
    let v = canonical::parse_strict(bytes, max_len)?;
    v.get("signed")
        .and_then(|s| s.get("_type"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| MetadataError::Schema("no signed._type".into()))
}

/// Checks `spec_version`: numeric `MAJOR.MINOR[.PATCH]`, major 1.
pub fn check_spec_version(v: &str) -> Result<(), MetadataError> {
    let parts: Vec<&str> = v.split('.').collect();
    let numeric = parts
        .iter()
        .all(|p| !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit()));
    if !(2..=3).contains(&parts.len()) || !numeric || parts[0] != "1" {
        return Err(MetadataError::SpecVersion(v.chars().take(32).collect()));
    }
    Ok(())
}

impl<T: Role> Metadata<T> {
    /// Parses untrusted bytes of at most `max_len`: strict JSON, right `_type`, supported
    /// `spec_version`, well-formed contents. Verifies no signature: see [`Self::verify`].
    pub fn from_bytes(bytes: &[u8], max_len: usize) -> Result<Self, MetadataError> {
        let value = canonical::parse_strict(bytes, max_len)?;
        Self::from_value(value)
    }

    fn from_value(value: Value) -> Result<Self, MetadataError> {
        let Value::Object(mut top) = value else {
            return Err(MetadataError::Schema(
                "metadata is not a JSON object".into(),
            ));
        };
        let signed_value = top
            .remove("signed")
            .ok_or_else(|| MetadataError::Schema("no \"signed\" member".into()))?;
        let sigs_value = top
            .remove("signatures")
            .ok_or_else(|| MetadataError::Schema("no \"signatures\" member".into()))?;
        let found = signed_value
            .get("_type")
            .and_then(Value::as_str)
            .ok_or_else(|| MetadataError::Schema("no signed._type".into()))?;
        if found != T::TYPE {
            return Err(MetadataError::WrongType {
                expected: T::TYPE.into(),
                found: found.chars().take(32).collect(),
            });
        }
        let spec = signed_value
            .get("spec_version")
            .and_then(Value::as_str)
            .ok_or_else(|| MetadataError::Schema("no signed.spec_version".into()))?;
        check_spec_version(spec)?;
        let signatures: Vec<Signature> = serde_json::from_value(sigs_value)
            .map_err(|e| MetadataError::Schema(format!("signatures: {e}")))?;
        let signed: T = serde_json::from_value(signed_value.clone())
            .map_err(|e| MetadataError::Schema(format!("{}: {e}", T::TYPE)))?;
        if signed.version() == 0 {
            return Err(MetadataError::Invalid("version must be 1 or more".into()));
        }
        signed.validate()?;
        let canonical = canonical::to_canonical_bytes(&signed_value)?;
        Ok(Metadata {
            signed,
            signed_value,
            canonical,
            signatures,
            extra: top.into_iter().collect(),
        })
    }

    /// New, unsigned metadata from typed contents.
    pub fn new(signed: T) -> Result<Self, MetadataError> {
        signed.validate()?;
        check_spec_version(signed.spec_version())?;
        if signed.version() == 0 {
            return Err(MetadataError::Invalid("version must be 1 or more".into()));
        }
        let signed_value =
            serde_json::to_value(&signed).map_err(|e| MetadataError::Schema(e.to_string()))?;
        let found = signed_value
            .get("_type")
            .and_then(Value::as_str)
            .unwrap_or("");
        if found != T::TYPE {
            return Err(MetadataError::WrongType {
                expected: T::TYPE.into(),
                found: found.chars().take(32).collect(),
            });
        }
        let canonical = canonical::to_canonical_bytes(&signed_value)?;
        Ok(Metadata {
            signed,
            signed_value,
            canonical,
            signatures: Vec::new(),
            extra: BTreeMap::new(),
        })
    }

    /// The typed contents.
    pub fn signed(&self) -> &T {
        &self.signed
    }

    /// The signatures, as received.
    pub fn signatures(&self) -> &[Signature] {
        &self.signatures
    }

    /// The canonical bytes that signatures cover.
    pub fn canonical_signed(&self) -> &[u8] {
        &self.canonical
    }

    /// Adds a signature by `key`, replacing any earlier one by the same key id.
    pub fn sign(&mut self, key: &SigningKey) {
        let sig = key.sign(&self.canonical);
        self.signatures.retain(|s| s.keyid != sig.keyid);
        self.signatures.push(sig);
    }

    /// Removes all signatures (before re-signing changed contents elsewhere).
    pub fn clear_signatures(&mut self) {
        self.signatures.clear();
    }

    /// Serialises for publication: `{"signatures": [...], "signed": {...}}` with `signed`
    /// exactly as received or built, pretty-printed (signatures cover the canonical form,
    /// not these bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Out<'a> {
            signatures: &'a [Signature],
            signed: &'a Value,
            #[serde(flatten)]
            extra: &'a BTreeMap<String, Value>,
        }
        let out = Out {
            signatures: &self.signatures,
            signed: &self.signed_value,
            extra: &self.extra,
        };
        // Serialising a Value tree with string keys cannot fail.
        let mut bytes = serde_json::to_vec_pretty(&out).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// Counts the distinct authorised keys whose signatures verify; refuses below
    /// `role.threshold`. See [`count_valid_signatures`].
    pub fn verify(
        &self,
        role_name: &str,
        keys: &BTreeMap<KeyId, PublicKey>,
        role: &RoleKeys,
    ) -> Result<u32, MetadataError> {
        verify_threshold(
            role_name,
            &self.canonical,
            &self.signatures,
            keys,
            &role.keyids,
            role.threshold,
        )
    }

    /// Refuses metadata that expired at or before `now` (spec 5.3.10, 5.4.4, 5.5.6, 5.6.5).
    pub fn check_expiry(&self, now: UtcTime) -> Result<(), MetadataError> {
        check_expiry(T::TYPE, self.signed.expires(), now)
    }
}

impl Metadata<Root> {
    /// Verifies a root against itself (a trusted first root, or the new root's own
    /// threshold during rotation).
    pub fn verify_self(&self) -> Result<u32, MetadataError> {
        let role = self.signed.role("root")?;
        self.verify("root", &self.signed.keys, role)
    }

    /// Verifies `self` against a trusted root's keys and threshold for `role_name`.
    pub fn verify_by<U: Role>(
        &self,
        candidate: &Metadata<U>,
        role_name: &str,
    ) -> Result<u32, MetadataError> {
        let role = self.signed.role(role_name)?;
        candidate.verify(role_name, &self.signed.keys, role)
    }

    /// Spec 5.3.4–5.3.5: a new root is accepted when a threshold of the trusted root's root
    /// keys and a threshold of its own root keys signed it, and its version is exactly one
    /// more than the trusted one.
    pub fn verify_successor(&self, new: &Metadata<Root>) -> Result<(), MetadataError> {
        self.verify_by(new, "root")?;
        new.verify_self()?;
        check_root_successor(self.signed.version, new.signed.version)
    }
}

/// Counts signatures over `canonical` that verify by distinct keys listed in `authorised`
/// and present in `keys`. A signature by an unknown or unauthorised key, a second one by
/// the same key id or the same key material, or a malformed one never counts.
pub fn count_valid_signatures(
    canonical: &[u8],
    signatures: &[Signature],
    keys: &BTreeMap<KeyId, PublicKey>,
    authorised: &[KeyId],
) -> u32 {
    let mut counted_ids: BTreeSet<&KeyId> = BTreeSet::new();
    let mut counted_keys: Vec<&PublicKey> = Vec::new();
    for sig in signatures {
        if !authorised.contains(&sig.keyid) || counted_ids.contains(&sig.keyid) {
            continue;
        }
        let Some(key) = keys.get(&sig.keyid) else {
            continue;
        };
        if counted_keys.iter().any(|k| k.same_material(key)) {
            continue;
        }
        if key.verify(canonical, &sig.sig).is_ok() {
            counted_ids.insert(&sig.keyid);
            counted_keys.push(key);
        }
    }
    u32::try_from(counted_ids.len()).unwrap_or(u32::MAX)
}

/// [`count_valid_signatures`], refusing below `threshold` (threshold 0 is refused too).
pub fn verify_threshold(
    role_name: &str,
    canonical: &[u8],
    signatures: &[Signature],
    keys: &BTreeMap<KeyId, PublicKey>,
    authorised: &[KeyId],
    threshold: u32,
) -> Result<u32, MetadataError> {
    let valid = count_valid_signatures(canonical, signatures, keys, authorised);
    if threshold == 0 || valid < threshold {
        return Err(MetadataError::ThresholdNotMet {
            role: role_name.into(),
            valid,
            threshold,
        });
    }
    Ok(valid)
}

/// Refuses `expires <= now`.
pub fn check_expiry(role: &str, expires: UtcTime, now: UtcTime) -> Result<(), MetadataError> {
    if expires <= now {
        return Err(MetadataError::Expired {
            role: role.into(),
            expires,
            now,
        });
    }
    Ok(())
}

/// Spec 5.3.5: a new root's version must be exactly the trusted version plus one.
pub fn check_root_successor(trusted: u64, new: u64) -> Result<(), MetadataError> {
    if Some(new) != trusted.checked_add(1) {
        return Err(MetadataError::Version {
            role: "root".into(),
            found: new,
            reason: format!(
                "expected version {} after trusted version {trusted}",
                trusted.saturating_add(1)
            ),
        });
    }
    Ok(())
}

/// Spec 5.4.3 / 5.5.5: refuses a version lower than the trusted one (rollback attack).
/// Equal versions are allowed; the caller then keeps what it trusts.
pub fn check_no_rollback(role: &str, trusted: u64, new: u64) -> Result<(), MetadataError> {
    if new < trusted {
        return Err(MetadataError::Version {
            role: role.into(),
            found: new,
            reason: format!("lower than trusted version {trusted} (rollback attack)"),
        });
    }
    Ok(())
}

/// Spec 5.5.4 / 5.6.4: the version of a file must be the one its parent metadata names.
pub fn check_expected_version(role: &str, expected: u64, found: u64) -> Result<(), MetadataError> {
    if expected != found {
        return Err(MetadataError::Version {
            role: role.into(),
            found,
            reason: format!("the referring metadata names version {expected}"),
        });
    }
    Ok(())
}

/// Metadata of any top-level role type, for tools that take whatever file they are given.
#[derive(Debug, Clone)]
pub enum AnyMetadata {
    /// `root`.
    Root(Metadata<Root>),
    /// `targets` (top-level or delegated).
    Targets(Metadata<Targets>),
    /// `snapshot`.
    Snapshot(Metadata<Snapshot>),
    /// `timestamp`.
    Timestamp(Metadata<Timestamp>),
}

macro_rules! each {
    ($self:expr, $m:ident => $e:expr) => {
        match $self {
            AnyMetadata::Root($m) => $e,
            AnyMetadata::Targets($m) => $e,
            AnyMetadata::Snapshot($m) => $e,
            AnyMetadata::Timestamp($m) => $e,
        }
    };
}

impl AnyMetadata {
    /// Parses untrusted bytes, choosing the type from `signed._type`.
    pub fn from_bytes(bytes: &[u8], max_len: usize) -> Result<Self, MetadataError> {
        let value = canonical::parse_strict(bytes, max_len)?;
        let t = value
            .get("signed")
            .and_then(|s| s.get("_type"))
            .and_then(Value::as_str)
            .ok_or_else(|| MetadataError::Schema("no signed._type".into()))?;
        Ok(match t {
            "root" => AnyMetadata::Root(Metadata::from_value(value)?),
            "targets" => AnyMetadata::Targets(Metadata::from_value(value)?),
            "snapshot" => AnyMetadata::Snapshot(Metadata::from_value(value)?),
            "timestamp" => AnyMetadata::Timestamp(Metadata::from_value(value)?),
            other => {
                return Err(MetadataError::Schema(format!(
                    "unknown metadata type {:?}",
                    other.chars().take(32).collect::<String>()
                )))
            }
        })
    }

    /// The `_type`.
    pub fn role_type(&self) -> &'static str {
        match self {
            AnyMetadata::Root(_) => Root::TYPE,
            AnyMetadata::Targets(_) => Targets::TYPE,
            AnyMetadata::Snapshot(_) => Snapshot::TYPE,
            AnyMetadata::Timestamp(_) => Timestamp::TYPE,
        }
    }

    /// `version`.
    pub fn version(&self) -> u64 {
        each!(self, m => m.signed().version())
    }

    /// `expires`.
    pub fn expires(&self) -> UtcTime {
        each!(self, m => m.signed().expires())
    }

    /// The signatures.
    pub fn signatures(&self) -> &[Signature] {
        each!(self, m => m.signatures())
    }

    /// The canonical bytes signatures cover.
    pub fn canonical_signed(&self) -> &[u8] {
        each!(self, m => m.canonical_signed())
    }

    /// Adds a signature (replacing one by the same key).
    pub fn sign(&mut self, key: &SigningKey) {
        each!(self, m => m.sign(key))
    }

    /// Serialises for publication.
    pub fn to_bytes(&self) -> Vec<u8> {
        each!(self, m => m.to_bytes())
    }
}
