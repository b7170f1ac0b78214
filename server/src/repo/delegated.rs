//! Delegated targets roles: a team or vendor signs its own targets metadata offline and the
//! server, which holds no key for it, checks and serves it.
//!
//! - An admin declares a delegation ([`Repository::declare_delegation`]): name, public
//!   keys, threshold, path patterns, terminating. It goes into the top-level targets'
//!   `delegations`, and targets, snapshot and timestamp are re-signed.
//! - The team uploads its target files ([`Repository::store_delegated_target`]): each is
//!   stored content-addressed like a release bundle, under a name its patterns allow.
//! - The team signs its role's metadata offline (`otter-keys sign`) and uploads it
//!   ([`Repository::accept_delegated`]). The server checks, against the delegation: a
//!   threshold of valid signatures by the delegated keys and no invalid one, a version above
//!   every version accepted before, an expiry in the future, every target path within the
//!   patterns, every target already stored with its length and hashes, and no further
//!   delegation. Then the file is written to the store (`VERSION.ROLE.json`), its row
//!   committed with a new snapshot (whose `meta` names it) and timestamp, and those written,
//!   the timestamp last: the same crash-safe order as a release.
//!
//! Accepted versions live in `metadata_versions` under the role's name (delegated names may
//! not be top-level role names), so a version number is never accepted twice, even after
//! the delegation is removed and declared again.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use object_store::ObjectStoreExt;
use otter_keys::crypto::{KeyId, PublicKey};
use otter_keys::hash::{hashes_of, MultiHasher};
use otter_keys::metadata::{
    check_expiry, count_valid_signatures, DelegatedRole, Delegations, MetaFile, Metadata,
    MetadataError, Snapshot, Targets, TOP_LEVEL_ROLES,
};
use otter_keys::time::UtcTime;
use rusqlite::OptionalExtension;
use serde::{Deserialize, Serialize};

use super::build::{self, Lifetimes, OnlineKeys, RepoState, SignedFile, TopRole};
use super::names::TargetName;
use super::{RepoError, Repository, Versions};
use crate::audit::{self, Actor};
use crate::db::DbError;
use crate::store::{metadata_key, object_path, target_key};

/// Largest delegated metadata file accepted.
pub const MAX_DELEGATED_METADATA_BYTES: usize = 4 * 1024 * 1024;
/// Most keys one delegation names.
pub const MAX_KEYS: usize = 16;
/// Most path patterns one delegation has.
pub const MAX_PATTERNS: usize = 64;
/// Most targets one delegated role lists.
pub const MAX_TARGETS: usize = 10_000;

/// Why a delegation or a delegated role's metadata was refused. Every variant but
/// [`DelegatedError::Repo`] is the caller's mistake and changes nothing.
#[derive(Debug, thiserror::Error)]
pub enum DelegatedError {
    /// A role or target name is unsafe or malformed.
    #[error("{0}")]
    InvalidName(String),
    /// The declaration is malformed (keys, threshold, patterns).
    #[error("{0}")]
    InvalidDelegation(String),
    /// No delegation of that name is declared.
    #[error("no delegated role {0:?} is declared in the top-level targets; an admin declares it with POST /api/v1/delegations")]
    UnknownRole(String),
    /// The uploaded file is not valid targets metadata.
    #[error("the uploaded metadata is invalid: {0}")]
    InvalidMetadata(String),
    /// A signature by a delegated key does not verify.
    #[error("role {role}: the signature by key {keyid} does not verify over this file's signed part (was the file changed after signing?)")]
    BadSignature {
        /// The role.
        role: String,
        /// The key whose signature fails (short form).
        keyid: String,
    },
    /// Fewer valid signatures than the threshold.
    #[error("role {role}: {valid} valid signature(s) by its delegated keys, threshold is {threshold}; sign with more of its keys (otter-keys sign --key ...)")]
    BelowThreshold {
        /// The role.
        role: String,
        /// Valid signatures.
        valid: u32,
        /// The threshold.
        threshold: u32,
    },
    /// The version is not above every version accepted before.
    #[error("role {role}: version {found} is not above version {current} accepted before; sign a new version (rollback refused)")]
    Rollback {
        /// The role.
        role: String,
        /// The version uploaded.
        found: u64,
        /// The highest version accepted.
        current: u64,
    },
    /// The metadata has expired already.
    #[error("role {role}: the metadata expired at {expires}; sign it with a later expiry")]
    Expired {
        /// The role.
        role: String,
        /// Its expiry.
        expires: UtcTime,
    },
    /// A target path is outside the delegation's patterns.
    #[error("role {role}: target {path:?} is outside the paths delegated to it ({patterns})")]
    PathNotDelegated {
        /// The role.
        role: String,
        /// The target path.
        path: String,
        /// The delegated patterns.
        patterns: String,
    },
    /// A listed target is not stored, or stored with other contents.
    #[error("role {role}: target {path:?}: {reason}")]
    Target {
        /// The role.
        role: String,
        /// The target path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The declaration conflicts with the repository.
    #[error("{0}")]
    Conflict(String),
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl DelegatedError {
    /// A stable machine code for the API.
    pub fn code(&self) -> &'static str {
        match self {
            DelegatedError::InvalidName(_) => "invalid_name",
            DelegatedError::InvalidDelegation(_) => "invalid_delegation",
            DelegatedError::UnknownRole(_) => "unknown_role",
            DelegatedError::InvalidMetadata(_) => "invalid_metadata",
            DelegatedError::BadSignature { .. } => "bad_signature",
            DelegatedError::BelowThreshold { .. } => "signature_threshold",
            DelegatedError::Rollback { .. } => "version_rollback",
            DelegatedError::Expired { .. } => "expired",
            DelegatedError::PathNotDelegated { .. } => "path_not_delegated",
            DelegatedError::Target { .. } => "target_mismatch",
            DelegatedError::Conflict(_) => "conflict",
            DelegatedError::Repo(_) => "internal",
        }
    }
}

impl From<DbError> for DelegatedError {
    fn from(e: DbError) -> Self {
        DelegatedError::Repo(RepoError::Db(e))
    }
}

impl From<crate::store::StoreError> for DelegatedError {
    fn from(e: crate::store::StoreError) -> Self {
        DelegatedError::Repo(RepoError::Store(e))
    }
}

/// A delegation as an admin declares it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelegationSpec {
    /// The role's name: 1 to 64 of `A-Z a-z 0-9 _ -`, not a top-level role's.
    pub name: String,
    /// The public keys (TUF key objects, ed25519, as in `.pub.json` files).
    pub keys: Vec<PublicKey>,
    /// How many of them must sign.
    pub threshold: u32,
    /// Shell-style patterns of the target names it may sign for (`*`, `?`, `[...]`).
    pub paths: Vec<String>,
    /// Whether clients stop searching other roles for paths it matches.
    #[serde(default)]
    pub terminating: bool,
}

/// A declared delegation, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct DelegationInfo {
    /// The role's name.
    pub name: String,
    /// Its key ids.
    pub keyids: Vec<KeyId>,
    /// Its threshold.
    pub threshold: u32,
    /// Its path patterns.
    pub paths: Vec<String>,
    /// Whether it is terminating.
    pub terminating: bool,
    /// The version of its metadata the current snapshot names (none before its first
    /// upload).
    pub served_version: Option<u64>,
    /// The highest version ever accepted (the next upload must be above it).
    pub highest_accepted: Option<u64>,
}

/// What [`Repository::declare_delegation`] did.
#[derive(Debug, Clone, Serialize)]
pub struct Declared {
    /// The delegation.
    pub delegation: DelegationInfo,
    /// True when it is new, false when it replaced one of the same name.
    pub created: bool,
    /// True when the role's served metadata no longer verifies under the new delegation
    /// and was dropped from the snapshot (the team must upload a new version).
    pub metadata_dropped: bool,
}

/// A target file stored for a delegated role: the entry its metadata must list.
#[derive(Debug, Clone, Serialize)]
pub struct StoredTarget {
    /// The target path.
    pub path: String,
    /// Its length.
    pub length: u64,
    /// Its hashes (`sha256`, `sha512`), hex.
    pub hashes: BTreeMap<String, String>,
}

/// Whether `name` is a valid delegated role name.
pub fn check_role_name(name: &str) -> Result<(), DelegatedError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if !ok {
        let shown: String = name.chars().take(64).collect();
        return Err(DelegatedError::InvalidName(format!(
            "role name {shown:?} is not allowed: use 1 to 64 of A-Z, a-z, 0-9, '_' and '-'"
        )));
    }
    if TOP_LEVEL_ROLES.contains(&name) {
        return Err(DelegatedError::InvalidName(format!(
            "{name:?} is a top-level role; a delegated role needs another name"
        )));
    }
    Ok(())
}

/// Whether `path` is a target path Otter can serve: a flat file name (no `/`) of safe
/// characters.
pub fn check_target_path(path: &str) -> Result<(), DelegatedError> {
    TargetName::parse(&format!("{}.{path}", "0".repeat(64)))
        .map(|_| ())
        .map_err(|e| {
            let shown: String = path.chars().take(64).collect();
            DelegatedError::InvalidName(format!(
                "target path {shown:?} is not allowed ({e}); Otter target paths are flat file names of A-Z, a-z, 0-9, '.', '_', '-', '+'"
            ))
        })
}

/// Checks a declaration and turns it into the role entry and its keys.
pub fn check_spec(
    spec: &DelegationSpec,
    server_keys: &[KeyId],
) -> Result<(DelegatedRole, BTreeMap<KeyId, PublicKey>), DelegatedError> {
    let bad = |m: String| Err(DelegatedError::InvalidDelegation(m));
    check_role_name(&spec.name)?;
    if spec.keys.is_empty() || spec.keys.len() > MAX_KEYS {
        return bad(format!("a delegation names 1 to {MAX_KEYS} keys"));
    }
    let mut keys = BTreeMap::new();
    for k in &spec.keys {
        if k.keytype != "ed25519" || k.scheme != "ed25519" {
            return bad(format!(
                "key type {:?}/{:?} is not supported for delegations: use ed25519 keys (otter-keys)",
                k.keytype, k.scheme
            ));
        }
        let raw = hex::decode(k.keyval.public.trim()).unwrap_or_default();
        if raw.len() != 32 {
            return bad("an ed25519 public key is 64 hex digits".into());
        }
        let id = k
            .key_id()
            .map_err(|e| DelegatedError::InvalidDelegation(format!("a key has no id: {e}")))?;
        if server_keys.contains(&id) {
            return bad(format!(
                "key {} is a key of the repository's own roles: a delegated role must have keys the server does not hold",
                id.short()
            ));
        }
        if keys.insert(id.clone(), k.clone()).is_some() {
            return bad(format!("key {} is listed twice", id.short()));
        }
    }
    let n = u32::try_from(keys.len()).unwrap_or(u32::MAX);
    if spec.threshold == 0 || spec.threshold > n {
        return bad(format!(
            "threshold {} must be between 1 and the number of keys ({n})",
            spec.threshold
        ));
    }
    if spec.paths.is_empty() || spec.paths.len() > MAX_PATTERNS {
        return bad(format!(
            "a delegation has 1 to {MAX_PATTERNS} path patterns"
        ));
    }
    for p in &spec.paths {
        if p.is_empty() || p.len() > 255 || p.contains('/') || p.chars().any(char::is_control) {
            return bad(format!(
                "path pattern {:?} is not allowed: Otter target paths are flat names, so a pattern is 1 to 255 characters without '/'",
                p.chars().take(64).collect::<String>()
            ));
        }
    }
    let role = DelegatedRole {
        name: spec.name.clone(),
        keyids: keys.keys().cloned().collect(),
        threshold: spec.threshold,
        terminating: spec.terminating,
        paths: Some(spec.paths.clone()),
        path_hash_prefixes: None,
        extra: BTreeMap::new(),
    };
    Ok((role, keys))
}

/// Checks signatures of `md` against `role`'s keys: any invalid signature by one of its keys
/// is refused, and a threshold of valid ones is needed.
pub fn check_signatures(
    md: &Metadata<Targets>,
    role: &DelegatedRole,
    keys: &BTreeMap<KeyId, PublicKey>,
) -> Result<u32, DelegatedError> {
    for sig in md.signatures() {
        if !role.keyids.contains(&sig.keyid) {
            continue;
        }
        if let Some(k) = keys.get(&sig.keyid) {
            if k.verify(md.canonical_signed(), &sig.sig).is_err() {
                return Err(DelegatedError::BadSignature {
                    role: role.name.clone(),
                    keyid: sig.keyid.short().to_owned(),
                });
            }
        }
    }
    let valid = count_valid_signatures(md.canonical_signed(), md.signatures(), keys, &role.keyids);
    if valid < role.threshold {
        return Err(DelegatedError::BelowThreshold {
            role: role.name.clone(),
            valid,
            threshold: role.threshold,
        });
    }
    Ok(valid)
}

/// Checks what can be checked without the store: type, signatures, version (above
/// `highest_accepted`, when given), expiry (after `now`, when given), paths, hash
/// algorithms, no nested delegations.
pub fn check_metadata(
    bytes: &[u8],
    role: &DelegatedRole,
    keys: &BTreeMap<KeyId, PublicKey>,
    highest_accepted: Option<u64>,
    now: Option<UtcTime>,
) -> Result<Metadata<Targets>, DelegatedError> {
    let md = Metadata::<Targets>::from_bytes(bytes, MAX_DELEGATED_METADATA_BYTES)
        .map_err(|e| DelegatedError::InvalidMetadata(e.to_string()))?;
    check_signatures(&md, role, keys)?;
    let s = md.signed();
    if let Some(current) = highest_accepted {
        if s.version <= current {
            return Err(DelegatedError::Rollback {
                role: role.name.clone(),
                found: s.version,
                current,
            });
        }
    }
    if let Some(now) = now {
        if let Err(MetadataError::Expired { expires, .. }) =
            check_expiry(&role.name, s.expires, now)
        {
            return Err(DelegatedError::Expired {
                role: role.name.clone(),
                expires,
            });
        }
    }
    if s.delegations
        .as_ref()
        .is_some_and(|d| !d.roles().is_empty() || !d.keys.is_empty())
    {
        return Err(DelegatedError::InvalidMetadata(
            "a delegated role may not delegate further (not supported by this server)".into(),
        ));
    }
    if s.targets.len() > MAX_TARGETS {
        return Err(DelegatedError::InvalidMetadata(format!(
            "{} targets; at most {MAX_TARGETS}",
            s.targets.len()
        )));
    }
    for (path, t) in &s.targets {
        check_target_path(path)?;
        if !role.is_delegated_path(path) {
            return Err(DelegatedError::PathNotDelegated {
                role: role.name.clone(),
                path: path.chars().take(128).collect(),
                patterns: role.paths.clone().unwrap_or_default().join(", "),
            });
        }
        let target_err = |reason: String| DelegatedError::Target {
            role: role.name.clone(),
            path: path.clone(),
            reason,
        };
        MultiHasher::for_hashes(&t.hashes).map_err(|e| target_err(e.to_string()))?;
        let sha = t.hashes.get("sha256").map(String::as_str).unwrap_or("");
        if sha.len() != 64 || !sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(target_err(
                "its hashes need a sha256 of 64 lowercase hex digits (the server stores targets by it)".into(),
            ));
        }
    }
    Ok(md)
}

/// The `{ROLE}.json` key of a role in snapshot `meta`.
fn meta_name(role: &str) -> String {
    format!("{role}.json")
}

fn sql_u64(v: u64) -> Result<i64, DbError> {
    i64::try_from(v)
        .map_err(|e| DbError::Sqlite(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))
}

fn highest_version(c: &rusqlite::Connection, role: &str) -> Result<Option<u64>, DbError> {
    let v: Option<i64> = c
        .query_row(
            "SELECT MAX(version) FROM metadata_versions WHERE role = ?1",
            [role],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    Ok(v.and_then(|v| u64::try_from(v).ok()))
}

/// A new state: targets edited by `edit_targets` (re-signed when `Some`), snapshot meta
/// edited by `edit_meta`, each with the next version; the timestamp naming it.
fn next_state(
    state: &RepoState,
    edit_targets: Option<&dyn Fn(&mut Targets)>,
    edit_meta: &dyn Fn(&mut BTreeMap<String, MetaFile>),
    keys: &OnlineKeys,
    now: UtcTime,
    l: &Lifetimes,
) -> Result<(RepoState, Vec<TopRole>), MetadataError> {
    let bump = |v: u64| {
        v.checked_add(1)
            .ok_or_else(|| MetadataError::Invalid("version counter exhausted".into()))
    };
    let mut next = state.clone();
    let mut changed = Vec::new();
    if let Some(edit) = edit_targets {
        let mut t = state.targets.signed().clone();
        edit(&mut t);
        t.version = bump(t.version)?;
        t.expires = now.plus_secs(l.targets);
        next.targets = SignedFile::sign(t, &keys.targets)?;
        changed.push(TopRole::Targets);
    }
    let old: &Snapshot = state.snapshot.signed();
    let mut meta = old.meta.clone();
    edit_meta(&mut meta);
    next.snapshot = build::new_snapshot(bump(old.version)?, meta, &next.targets, now, l, keys)?;
    next.timestamp = build::new_timestamp(
        bump(state.timestamp.version())?,
        &next.snapshot,
        now,
        l,
        keys,
    )?;
    changed.push(TopRole::Snapshot);
    changed.push(TopRole::Timestamp);
    Ok((next, changed))
}

fn find_role<'a>(
    targets: &'a Targets,
    name: &str,
) -> Option<(&'a DelegatedRole, &'a BTreeMap<KeyId, PublicKey>)> {
    let d = targets.delegations.as_ref()?;
    d.roles()
        .iter()
        .find(|r| r.name == name)
        .map(|r| (r, &d.keys))
}

impl Repository {
    /// Every key id the repository's own roles use (root and online roles).
    fn own_key_ids(state: &RepoState) -> Vec<KeyId> {
        state.root.signed().keys.keys().cloned().collect()
    }

    /// The declared delegations, in priority order.
    pub async fn list_delegations(&self) -> Result<Vec<DelegationInfo>, DelegatedError> {
        let state = self.state.lock().await;
        let roles: Vec<DelegatedRole> = state
            .targets
            .signed()
            .delegations
            .as_ref()
            .map(|d| d.roles().to_vec())
            .unwrap_or_default();
        let meta = state.snapshot.signed().meta.clone();
        drop(state);
        let names: Vec<String> = roles.iter().map(|r| r.name.clone()).collect();
        let highest = self
            .db
            .call(move |c| {
                names
                    .iter()
                    .map(|n| highest_version(c, n))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        Ok(roles
            .into_iter()
            .zip(highest)
            .map(|(r, h)| info(&r, meta.get(&meta_name(&r.name)).map(|m| m.version), h))
            .collect())
    }

    /// Declares (or replaces) a delegation in the top-level targets and re-signs targets,
    /// snapshot and timestamp. A replacement whose keys or paths no longer admit the served
    /// metadata drops it from the snapshot.
    pub async fn declare_delegation(
        &self,
        spec: DelegationSpec,
        actor: &Actor,
    ) -> Result<(Declared, Versions), DelegatedError> {
        let mut state = self.state.lock().await;
        let (role, role_keys) = check_spec(&spec, &Self::own_key_ids(&state))?;
        let name = role.name.clone();
        let existing = find_role(state.targets.signed(), &name).is_some();
        let served = state
            .snapshot
            .signed()
            .meta
            .get(&meta_name(&name))
            .map(|m| m.version);
        // Does the served metadata still verify under the new delegation?
        let mut drop_served = false;
        if let Some(v) = served {
            let n = name.clone();
            let bytes = self
                .db
                .call(move |c| {
                    let v = sql_u64(v)?;
                    Ok(c.query_row(
                        "SELECT content FROM metadata_versions WHERE role = ?1 AND version = ?2",
                        rusqlite::params![n, v],
                        |r| r.get::<_, Vec<u8>>(0),
                    )
                    .optional()?)
                })
                .await?;
            drop_served = match bytes {
                None => true,
                Some(b) => check_metadata(&b, &role, &role_keys, None, None).is_err(),
            };
        }
        let now = UtcTime::now();
        let new_role = role.clone();
        let edit = move |t: &mut Targets| {
            let mut d = t.delegations.take().unwrap_or(Delegations {
                keys: BTreeMap::new(),
                roles: None,
                extra: BTreeMap::new(),
            });
            let mut roles = d.roles.take().unwrap_or_default();
            match roles.iter_mut().find(|r| r.name == new_role.name) {
                Some(r) => *r = new_role.clone(),
                None => roles.push(new_role.clone()),
            }
            for (id, k) in &role_keys {
                d.keys.insert(id.clone(), k.clone());
            }
            // Keys no role names any more go.
            d.keys
                .retain(|id, _| roles.iter().any(|r| r.keyids.contains(id)));
            d.roles = Some(roles);
            t.delegations = Some(d);
        };
        let meta_key = meta_name(&name);
        let edit_meta = move |m: &mut BTreeMap<String, MetaFile>| {
            if drop_served {
                m.remove(&meta_key);
            }
        };
        let (next, changed) = next_state(
            &state,
            Some(&edit),
            &edit_meta,
            &self.keys(),
            now,
            &self.lifetimes,
        )
        .map_err(|e| DelegatedError::InvalidDelegation(e.to_string()))?;
        build::verify_state(&next).map_err(RepoError::Inconsistent)?;
        let (actor, subject) = (actor.clone(), format!("delegation:{name}"));
        let details = serde_json::json!({
            "keyids": role.keyids,
            "threshold": role.threshold,
            "paths": role.paths,
            "terminating": role.terminating,
            "replaced": existing,
            "metadata_dropped": drop_served,
            "targets_version": next.targets.version(),
        });
        let versions = self
            .commit_and_publish(&mut state, next, changed, now, move |tx| {
                audit::append(
                    tx,
                    &actor,
                    "delegation.declare",
                    &subject,
                    &details,
                    now.unix(),
                )
                .map_err(audit::db_error)?;
                Ok(true)
            })
            .await?
            .ok_or_else(|| RepoError::Inconsistent("the delegation was not committed".into()))?;
        let n = name.clone();
        let highest = self.db.call(move |c| highest_version(c, &n)).await?;
        let served = state
            .snapshot
            .signed()
            .meta
            .get(&meta_name(&name))
            .map(|m| m.version);
        tracing::info!(role = %name, created = !existing, metadata_dropped = drop_served, targets = versions.targets, "delegation declared");
        Ok((
            Declared {
                delegation: info(&role, served, highest),
                created: !existing,
                metadata_dropped: drop_served,
            },
            versions,
        ))
    }

    /// Removes a delegation from the top-level targets and its metadata from the snapshot.
    /// Its accepted versions stay recorded: a later delegation of the same name must start
    /// above them.
    pub async fn remove_delegation(
        &self,
        name: &str,
        actor: &Actor,
    ) -> Result<Versions, DelegatedError> {
        check_role_name(name)?;
        let mut state = self.state.lock().await;
        if find_role(state.targets.signed(), name).is_none() {
            return Err(DelegatedError::UnknownRole(name.to_owned()));
        }
        let now = UtcTime::now();
        let n = name.to_owned();
        let edit = move |t: &mut Targets| {
            if let Some(d) = t.delegations.as_mut() {
                let roles: Vec<DelegatedRole> =
                    d.roles().iter().filter(|r| r.name != n).cloned().collect();
                d.keys
                    .retain(|id, _| roles.iter().any(|r| r.keyids.contains(id)));
                d.roles = Some(roles);
            }
        };
        let meta_key = meta_name(name);
        let edit_meta = move |m: &mut BTreeMap<String, MetaFile>| {
            m.remove(&meta_key);
        };
        let (next, changed) = next_state(
            &state,
            Some(&edit),
            &edit_meta,
            &self.keys(),
            now,
            &self.lifetimes,
        )
        .map_err(super::metadata_err(
            "signing targets without the delegation",
        ))?;
        build::verify_state(&next).map_err(RepoError::Inconsistent)?;
        let (actor, subject) = (actor.clone(), format!("delegation:{name}"));
        let details = serde_json::json!({"targets_version": next.targets.version()});
        let versions = self
            .commit_and_publish(&mut state, next, changed, now, move |tx| {
                audit::append(
                    tx,
                    &actor,
                    "delegation.remove",
                    &subject,
                    &details,
                    now.unix(),
                )
                .map_err(audit::db_error)?;
                Ok(true)
            })
            .await?
            .ok_or_else(|| RepoError::Inconsistent("the removal was not committed".into()))?;
        tracing::info!(role = %name, targets = versions.targets, "delegation removed");
        Ok(versions)
    }

    /// Stores a target file for a delegated role, content-addressed, under a name its
    /// patterns allow. Returns the entry the role's metadata must list for it.
    pub async fn store_delegated_target(
        &self,
        role_name: &str,
        path: &str,
        file: &std::path::Path,
        length: u64,
        hashes: BTreeMap<String, String>,
        actor: &Actor,
    ) -> Result<StoredTarget, DelegatedError> {
        check_role_name(role_name)?;
        check_target_path(path)?;
        let role = {
            let state = self.state.lock().await;
            find_role(state.targets.signed(), role_name)
                .map(|(r, _)| r.clone())
                .ok_or_else(|| DelegatedError::UnknownRole(role_name.to_owned()))?
        };
        if !role.is_delegated_path(path) {
            return Err(DelegatedError::PathNotDelegated {
                role: role.name.clone(),
                path: path.to_owned(),
                patterns: role.paths.clone().unwrap_or_default().join(", "),
            });
        }
        let sha = hashes
            .get("sha256")
            .cloned()
            .ok_or_else(|| RepoError::Inconsistent("an upload without its SHA-256".into()))?;
        self.store
            .put_file(&target_key(&format!("{sha}.{path}")), file)
            .await?;
        let (actor, subject) = (actor.clone(), format!("delegation:{role_name}"));
        let details = serde_json::json!({"target": path, "length": length, "sha256": sha});
        self.db
            .call(move |c| {
                audit::append(
                    c,
                    &actor,
                    "delegation.target",
                    &subject,
                    &details,
                    UtcTime::now().unix(),
                )
                .map_err(audit::db_error)?;
                Ok(())
            })
            .await?;
        tracing::info!(role = %role_name, target = %path, length, "delegated target stored");
        Ok(StoredTarget {
            path: path.to_owned(),
            length,
            hashes,
        })
    }

    /// Checks a target entry against the stored file `targets/{sha256}.{path}`: it exists,
    /// its length matches and every listed hash matches its contents.
    async fn check_stored_target(
        &self,
        role: &str,
        path: &str,
        length: u64,
        hashes: &BTreeMap<String, String>,
    ) -> Result<(), DelegatedError> {
        let err = |reason: String| DelegatedError::Target {
            role: role.to_owned(),
            path: path.to_owned(),
            reason,
        };
        let sha = hashes.get("sha256").map(String::as_str).unwrap_or("");
        let key = target_key(&format!("{sha}.{path}"));
        let location = object_path(&key)?;
        let got = match self.store.inner().get(&location).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(err(format!(
                    "no such file is stored; upload it first with PUT /api/v1/delegations/{role}/targets/{path}"
                )))
            }
            Err(e) => {
                return Err(RepoError::Store(crate::store::StoreError::Op {
                    op: "get",
                    key,
                    source: e,
                })
                .into())
            }
        };
        if got.meta.size != length {
            return Err(err(format!(
                "the stored file is {} bytes, the metadata says {length}",
                got.meta.size
            )));
        }
        let mut hasher = MultiHasher::for_hashes(hashes).map_err(|e| err(e.to_string()))?;
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                DelegatedError::Repo(RepoError::Store(crate::store::StoreError::Op {
                    op: "get",
                    key: key.clone(),
                    source: e,
                }))
            })?;
            hasher.update(&chunk);
        }
        hasher
            .finish(Some(length), hashes)
            .map_err(|e| err(format!("the stored file does not match: {e}")))
    }

    /// Accepts a delegated role's signed metadata (see the module documentation). Returns
    /// the version accepted and the new repository versions.
    pub async fn accept_delegated(
        &self,
        role_name: &str,
        bytes: Vec<u8>,
        actor: &Actor,
    ) -> Result<(u64, Versions), DelegatedError> {
        check_role_name(role_name)?;
        let mut state = self.state.lock().await;
        let (role, keys) = find_role(state.targets.signed(), role_name)
            .map(|(r, k)| (r.clone(), k.clone()))
            .ok_or_else(|| DelegatedError::UnknownRole(role_name.to_owned()))?;
        let n = role_name.to_owned();
        let highest = self.db.call(move |c| highest_version(c, &n)).await?;
        let now = UtcTime::now();
        let md = check_metadata(&bytes, &role, &keys, highest, Some(now))?;
        for (path, t) in &md.signed().targets {
            self.check_stored_target(role_name, path, t.length, &t.hashes)
                .await?;
        }
        let version = md.signed().version;
        let expires = md.signed().expires;
        let entry = MetaFile {
            version,
            length: Some(bytes.len() as u64),
            hashes: Some(hashes_of(&bytes)),
            extra: BTreeMap::new(),
        };
        let meta_key = meta_name(role_name);
        let edit_meta = move |m: &mut BTreeMap<String, MetaFile>| {
            m.insert(meta_key.clone(), entry.clone());
        };
        let (next, changed) =
            next_state(&state, None, &edit_meta, &self.keys(), now, &self.lifetimes)
                .map_err(super::metadata_err("signing the new snapshot"))?;
        build::verify_state(&next).map_err(RepoError::Inconsistent)?;
        // The file first: nothing names it until the snapshot is committed and written.
        self.store
            .put(
                &metadata_key(&format!("{version}.{role_name}.json")),
                bytes.clone(),
            )
            .await?;
        let n = role_name.to_owned();
        let actor = actor.clone();
        let details = serde_json::json!({
            "version": version,
            "sha256": otter_keys::hash::sha256_hex(&bytes),
            "targets": md.signed().targets.keys().collect::<Vec<_>>(),
            "snapshot_version": next.snapshot.version(),
        });
        let versions = self
            .commit_and_publish(&mut state, next, changed, now, move |tx| {
                if highest_version(tx, &n)?.is_some_and(|h| h >= version) {
                    return Ok(false);
                }
                audit::append(
                    tx,
                    &actor,
                    "delegation.upload",
                    &format!("delegation:{n}"),
                    &details,
                    now.unix(),
                )
                .map_err(audit::db_error)?;
                tx.execute(
                    "INSERT INTO metadata_versions (role, version, expires, length, sha256, content, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    rusqlite::params![
                        n,
                        sql_u64(version)?,
                        expires.unix(),
                        sql_u64(bytes.len() as u64)?,
                        otter_keys::hash::sha256_hex(&bytes),
                        bytes,
                        now.unix(),
                    ],
                )?;
                Ok(true)
            })
            .await?
            .ok_or_else(|| DelegatedError::Rollback {
                role: role_name.to_owned(),
                found: version,
                current: version,
            })?;
        tracing::info!(role = %role_name, version, snapshot = versions.snapshot, "delegated role metadata accepted");
        Ok((version, versions))
    }

    /// When each served metadata file expires (Unix seconds): the top-level roles and every
    /// delegated role the snapshot names. A delegated role's expiry is the vendor's to
    /// extend, by signing a new version; monitoring should warn before it passes.
    pub async fn expiries(&self) -> Result<Vec<(String, i64)>, RepoError> {
        let state = self.state.lock().await;
        let mut out = vec![
            ("root".to_owned(), state.root.expires().unix()),
            ("targets".to_owned(), state.targets.expires().unix()),
            ("snapshot".to_owned(), state.snapshot.expires().unix()),
            ("timestamp".to_owned(), state.timestamp.expires().unix()),
        ];
        let served: Vec<(String, u64)> = state
            .snapshot
            .signed()
            .meta
            .iter()
            .filter(|(k, _)| k.as_str() != "targets.json")
            .filter_map(|(k, m)| k.strip_suffix(".json").map(|r| (r.to_owned(), m.version)))
            .collect();
        drop(state);
        let delegated = self
            .db
            .call(move |c| {
                let mut v = Vec::new();
                for (role, version) in served {
                    let e: Option<i64> = c
                        .query_row(
                            "SELECT expires FROM metadata_versions WHERE role = ?1 AND version = ?2",
                            rusqlite::params![role, sql_u64(version)?],
                            |r| r.get(0),
                        )
                        .optional()?;
                    if let Some(e) = e {
                        v.push((role, e));
                    }
                }
                Ok(v)
            })
            .await?;
        out.extend(delegated);
        Ok(out)
    }

    /// Writes the delegated metadata the snapshot names to the store when it is missing or
    /// different (after a crash between the commit and the write, or on a new store).
    pub(super) async fn republish_delegated(&self, state: &RepoState) -> Result<(), RepoError> {
        let wanted: Vec<(String, u64)> = state
            .snapshot
            .signed()
            .meta
            .iter()
            .filter(|(k, _)| k.as_str() != "targets.json")
            .filter_map(|(k, m)| k.strip_suffix(".json").map(|r| (r.to_owned(), m.version)))
            .collect();
        for (role, version) in wanted {
            let (r, v) = (role.clone(), version);
            let bytes: Option<Vec<u8>> = self
                .db
                .call(move |c| {
                    let v = sql_u64(v)?;
                    Ok(c.query_row(
                        "SELECT content FROM metadata_versions WHERE role = ?1 AND version = ?2",
                        rusqlite::params![r, v],
                        |row| row.get(0),
                    )
                    .optional()?)
                })
                .await?;
            let Some(bytes) = bytes else {
                return Err(RepoError::Inconsistent(format!(
                    "the snapshot names {role} version {version}, which the database does not hold"
                )));
            };
            let key = metadata_key(&format!("{version}.{role}.json"));
            if self.store.get_bytes(&key).await?.as_deref() != Some(&bytes[..]) {
                self.store.put(&key, bytes).await?;
            }
        }
        Ok(())
    }
}

fn info(r: &DelegatedRole, served: Option<u64>, highest: Option<u64>) -> DelegationInfo {
    DelegationInfo {
        name: r.name.clone(),
        keyids: r.keyids.clone(),
        threshold: r.threshold,
        paths: r.paths.clone().unwrap_or_default(),
        terminating: r.terminating,
        served_version: served,
        highest_accepted: highest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use otter_keys::crypto::SigningKey;
    use otter_keys::metadata::{TargetFile, SPEC_VERSION};

    fn spec(key: &SigningKey) -> DelegationSpec {
        DelegationSpec {
            name: "card-reader".into(),
            keys: vec![key.public_key()],
            threshold: 1,
            paths: vec!["cardreader-*".into()],
            terminating: true,
        }
    }

    fn metadata(version: u64, expires: UtcTime, paths: &[&str], key: &SigningKey) -> Vec<u8> {
        let targets = paths
            .iter()
            .map(|p| {
                (
                    (*p).to_string(),
                    TargetFile {
                        length: 3,
                        hashes: hashes_of(b"abc"),
                        extra: BTreeMap::new(),
                    },
                )
            })
            .collect();
        let mut md = Metadata::new(Targets {
            type_: "targets".into(),
            spec_version: SPEC_VERSION.into(),
            version,
            expires,
            targets,
            delegations: None,
            extra: BTreeMap::new(),
        })
        .unwrap();
        md.sign(key);
        md.to_bytes()
    }

    #[test]
    fn names_with_traversal_or_top_level_names_are_refused() {
        for bad in [
            "",
            "../x",
            "a/b",
            "a.b",
            "root",
            "targets",
            "x y",
            &"a".repeat(65),
        ] {
            assert!(
                matches!(check_role_name(bad), Err(DelegatedError::InvalidName(_))),
                "{bad:?}"
            );
        }
        check_role_name("card-reader_2").unwrap();
        assert!(check_target_path("../etc").is_err());
        assert!(check_target_path("a/b").is_err());
        check_target_path("cardreader-1.2.0.tar.zst").unwrap();
    }

    #[test]
    fn declarations_are_checked() {
        let k = SigningKey::from_seed(&[7; 32]);
        let (role, keys) = check_spec(&spec(&k), &[]).unwrap();
        assert_eq!(role.keyids, vec![k.key_id()]);
        assert_eq!(keys.len(), 1);
        let mut s = spec(&k);
        s.threshold = 2;
        assert!(check_spec(&s, &[]).is_err());
        let mut s = spec(&k);
        s.paths = vec!["dir/*".into()];
        assert!(check_spec(&s, &[]).is_err());
        assert!(matches!(
            check_spec(&spec(&k), &[k.key_id()]),
            Err(DelegatedError::InvalidDelegation(_))
        ));
        let mut s = spec(&k);
        s.keys.push(k.public_key());
        assert!(check_spec(&s, &[]).is_err());
    }

    #[test]
    fn metadata_is_checked_against_the_delegation() {
        let k = SigningKey::from_seed(&[7; 32]);
        let other = SigningKey::from_seed(&[8; 32]);
        let (role, keys) = check_spec(&spec(&k), &[]).unwrap();
        let now = UtcTime::from_unix(1_900_000_000);
        let later = now.plus_days(30);
        check_metadata(
            &metadata(2, later, &["cardreader-1"], &k),
            &role,
            &keys,
            Some(1),
            Some(now),
        )
        .unwrap();
        // Without a reference time, expired metadata still passes the other checks (used to
        // re-check served metadata against a replaced delegation).
        check_metadata(
            &metadata(2, now, &["cardreader-1"], &k),
            &role,
            &keys,
            None,
            None,
        )
        .unwrap();
        let code = |b: Vec<u8>, h: Option<u64>| {
            check_metadata(&b, &role, &keys, h, Some(now))
                .unwrap_err()
                .code()
        };
        assert_eq!(
            code(metadata(1, later, &["cardreader-1"], &k), Some(1)),
            "version_rollback"
        );
        assert_eq!(
            code(metadata(2, now, &["cardreader-1"], &k), None),
            "expired"
        );
        assert_eq!(
            code(metadata(2, later, &["firmware-1"], &k), None),
            "path_not_delegated"
        );
        assert_eq!(
            code(metadata(2, later, &["cardreader-1"], &other), None),
            "signature_threshold"
        );
        assert_eq!(
            code(metadata(2, later, &["../cardreader"], &k), None),
            "invalid_name"
        );
        let mut tampered = metadata(2, later, &["cardreader-1"], &k);
        let at = tampered
            .windows(13)
            .position(|w| w == b"cardreader-1\"")
            .unwrap();
        tampered[at + 11] = b'2';
        assert_eq!(code(tampered, None), "bad_signature");
        assert_eq!(code(b"{}".to_vec(), None), "invalid_metadata");
    }
}
