//! Publishing and yanking releases. A publish stores the bundle content-addressed
//! (`repo/targets/{SHA256}.{NAME}-{VERSION}.tar.zst`), then commits the release row and the
//! new targets, snapshot and timestamp in one transaction, then writes the metadata files,
//! the timestamp last. Until that last write, clients see the previous state; a crash after
//! the commit is finished by the next start. The database, not the store, keeps a name and
//! version from ever being published twice.

use std::collections::BTreeMap;
use std::path::PathBuf;

use otter_keys::metadata::{MetadataError, TargetFile, Targets};
use otter_keys::time::UtcTime;
use rusqlite::OptionalExtension;
use serde::Serialize;
use serde_json::{json, Value};

use super::build::{self, Lifetimes, OnlineKeys, RepoState, SignedFile, TopRole};
use super::{records, RepoError, Repository, Versions};
use crate::audit::{self, Actor};
use crate::bundle::ValidatedBundle;
use crate::db::DbError;
use crate::rollout::RolloutSpec;
use crate::store::target_key;

/// An uploaded bundle that passed validation, ready to publish.
#[derive(Debug)]
pub struct NewRelease {
    /// The validated bundle.
    pub bundle: ValidatedBundle,
    /// The uploaded file (a temporary file on the server).
    pub file: PathBuf,
    /// Its length.
    pub length: u64,
    /// Its hashes: `sha256` and `sha512`, hex.
    pub hashes: BTreeMap<String, String>,
    /// The channel it goes to.
    pub channel: String,
    /// The token that published it.
    pub published_by: i64,
    /// The rollout it starts with (percent and groups).
    pub rollout: RolloutSpec,
}

/// A release as listed.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseInfo {
    /// Component name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Kind.
    pub kind: String,
    /// Target name in the TUF metadata.
    pub target: String,
    /// Bundle length.
    pub length: u64,
    /// Bundle SHA-256.
    pub sha256: String,
    /// Channel.
    pub channel: String,
    /// Hardware models.
    pub hardware: Vec<String>,
    /// Publication time, Unix seconds.
    pub published_at: i64,
    /// The targets version that first carried it.
    pub targets_version: u64,
    /// When it was yanked, if it was.
    pub yanked_at: Option<i64>,
}

/// The signed `custom` member of a release's target entry, rolled out to everyone.
pub fn custom_of(bundle: &ValidatedBundle, channel: &str) -> Value {
    custom_with(bundle, channel, &RolloutSpec::default())
}

/// The signed `custom` member of a release's target entry with `rollout`.
pub fn custom_with(bundle: &ValidatedBundle, channel: &str, rollout: &RolloutSpec) -> Value {
    let m = &bundle.manifest;
    let mut c = json!({
        "kind": m.kind.as_str(),
        "version": m.version,
        "hardware": m.hardware,
        "channel": channel,
        "rollout": rollout.signed(),
    });
    if let (Some(min), Some(obj)) = (&m.min_installed_version, c.as_object_mut()) {
        obj.insert("min_installed_version".into(), json!(min));
    }
    c
}

fn sql_u64(v: u64) -> Result<i64, DbError> {
    i64::try_from(v)
        .map_err(|e| DbError::Sqlite(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))
}

impl Repository {
    /// Publishes a validated bundle (see the module documentation). Fails with
    /// [`RepoError::Conflict`] when the name and version exist already, yanked or not.
    pub async fn publish_release(
        &self,
        r: NewRelease,
    ) -> Result<(ReleaseInfo, Versions), RepoError> {
        let m = r.bundle.manifest.clone();
        let target = m.target_name();
        let sha256 = r
            .hashes
            .get("sha256")
            .cloned()
            .ok_or_else(|| RepoError::Inconsistent("an upload without its SHA-256".into()))?;
        let mut state = self.state.lock().await;
        let (name, version) = (m.name.clone(), m.version.clone());
        let exists = self
            .db
            .call(move |c| {
                Ok(c.query_row(
                    "SELECT 1 FROM releases WHERE name = ?1 AND version = ?2",
                    [&name, &version],
                    |_| Ok(()),
                )
                .optional()?
                .is_some())
            })
            .await?;
        if exists {
            return Err(conflict(&m.name, &m.version));
        }
        // The blob first: nothing names it yet, so a crash here leaves only an orphan.
        self.store
            .put_file(&target_key(&format!("{sha256}.{target}")), &r.file)
            .await?;
        // Deltas from the previous versions, stored the same way, signed in the same
        // targets version (docs/deltas.md).
        let deltas = self
            .build_deltas(&state, &m.name, &m.version, &target, &sha256, &r.file)
            .await;
        let delta_names: Vec<String> = deltas.iter().map(|d| d.name.clone()).collect();
        let now = UtcTime::now();
        let entry = TargetFile {
            length: r.length,
            hashes: r.hashes.clone(),
            extra: BTreeMap::from([(
                "custom".to_string(),
                custom_with(&r.bundle, &r.channel, &r.rollout),
            )]),
        };
        let (next, changed) = replace_targets(
            &state,
            |t| {
                t.targets.insert(target.clone(), entry);
                for d in &deltas {
                    t.targets.insert(d.name.clone(), d.entry.clone());
                }
            },
            &self.keys(),
            now,
            &self.lifetimes,
        )
        .map_err(super::metadata_err("signing the new targets"))?;
        build::verify_state(&next).map_err(RepoError::Inconsistent)?;
        let info = ReleaseInfo {
            name: m.name.clone(),
            version: m.version.clone(),
            kind: m.kind.as_str().into(),
            target: target.clone(),
            length: r.length,
            sha256,
            channel: r.channel.clone(),
            hardware: m.hardware.clone(),
            published_at: now.unix(),
            targets_version: next.targets.version(),
            yanked_at: None,
        };
        let row = info.clone();
        let manifest_bytes = r.bundle.manifest_bytes.clone();
        let by = r.published_by;
        let rollout = r.rollout.clone();
        let inserted = self
            .commit_and_publish(&mut state, next, changed, now, move |tx| {
                let hardware = serde_json::to_string(&row.hardware)
                    .map_err(|e| DbError::Task(e.to_string()))?;
                let res = tx.execute(
                    "INSERT INTO releases (name, version, kind, target_name, length, sha256,
                        channel, hardware, manifest, published_by, published_at, targets_version)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                    rusqlite::params![
                        row.name,
                        row.version,
                        row.kind,
                        row.target,
                        sql_u64(row.length)?,
                        row.sha256,
                        row.channel,
                        hardware,
                        manifest_bytes,
                        by,
                        row.published_at,
                        sql_u64(row.targets_version)?,
                    ],
                );
                match res {
                    Ok(_) => {}
                    Err(rusqlite::Error::SqliteFailure(e, _))
                        if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        return Ok(false)
                    }
                    Err(e) => return Err(e.into()),
                }
                let release_id = tx.last_insert_rowid();
                crate::rollout::insert_initial(tx, release_id, &rollout, by, row.published_at)?;
                audit::append(
                    tx,
                    &Actor::token(by),
                    "release.publish",
                    &format!("release:{}/{}", row.name, row.version),
                    &json!({
                        "target": row.target,
                        "sha256": row.sha256,
                        "length": row.length,
                        "channel": row.channel,
                        "hardware": row.hardware,
                        "rollout": rollout.signed(),
                        "targets_version": row.targets_version,
                        "deltas": delta_names,
                    }),
                    row.published_at,
                )
                .map_err(audit::db_error)?;
                Ok(true)
            })
            .await?;
        match inserted {
            Some(v) => Ok((info, v)),
            None => Err(conflict(&m.name, &m.version)),
        }
    }

    /// Yanks a release: a new targets version without its entry. The bundle stays in the
    /// store (older metadata names it) and its name and version stay taken. The yank is
    /// audited as `actor`'s, in the same transaction.
    pub async fn yank_release(
        &self,
        name: &str,
        version: &str,
        actor: &Actor,
    ) -> Result<Versions, RepoError> {
        let mut state = self.state.lock().await;
        let (n, v) = (name.to_owned(), version.to_owned());
        let row: Option<(String, Option<i64>)> = self
            .db
            .call(move |c| {
                Ok(c.query_row(
                    "SELECT target_name, yanked_at FROM releases WHERE name = ?1 AND version = ?2",
                    [&n, &v],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?)
            })
            .await?;
        let target = match row {
            None => {
                return Err(RepoError::NotFound(format!(
                    "no release {name} {version} was published"
                )))
            }
            Some((_, Some(_))) => {
                return Err(RepoError::Conflict(format!(
                    "release {name} {version} is yanked already"
                )))
            }
            Some((t, None)) => t,
        };
        let now = UtcTime::now();
        let (next, changed) = replace_targets(
            &state,
            |t| {
                t.targets.remove(&target);
                super::deltas::remove_touching(t, &target);
            },
            &self.keys(),
            now,
            &self.lifetimes,
        )
        .map_err(super::metadata_err("signing the new targets"))?;
        build::verify_state(&next).map_err(RepoError::Inconsistent)?;
        let (n, v) = (name.to_owned(), version.to_owned());
        let (actor, targets_version) = (actor.clone(), next.targets.version());
        let done = self
            .commit_and_publish(&mut state, next, changed, now, move |tx| {
                let changed = tx.execute(
                    "UPDATE releases SET yanked_at = ?3
                     WHERE name = ?1 AND version = ?2 AND yanked_at IS NULL",
                    rusqlite::params![n, v, now.unix()],
                )?;
                if changed != 1 {
                    return Ok(false);
                }
                audit::append(
                    tx,
                    &actor,
                    "release.yank",
                    &format!("release:{n}/{v}"),
                    &json!({"target": target, "targets_version": targets_version}),
                    now.unix(),
                )
                .map_err(audit::db_error)?;
                Ok(true)
            })
            .await?;
        done.ok_or_else(|| {
            RepoError::Conflict(format!("release {name} {version} is yanked already"))
        })
    }

    /// Re-signs the targets with `target`'s signed `custom.rollout` replaced by `rollout`
    /// (then snapshot and timestamp), committing `extra` in the same transaction: the
    /// publish path's signing and crash-safe order. `Ok(None)` when `extra` declined (nothing
    /// changed); [`RepoError::NotFound`] when the current targets do not carry `target`.
    pub async fn resign_target_rollout<F>(
        &self,
        target: &str,
        rollout: Value,
        extra: F,
    ) -> Result<Option<Versions>, RepoError>
    where
        F: FnOnce(&rusqlite::Transaction, u64) -> Result<bool, DbError> + Send + 'static,
    {
        let mut state = self.state.lock().await;
        if !state.targets.signed().targets.contains_key(target) {
            return Err(RepoError::NotFound(format!(
                "the signed targets do not carry {target} (yanked?)"
            )));
        }
        let now = UtcTime::now();
        let (next, changed) = replace_targets(
            &state,
            |t| {
                if let Some(custom) = t
                    .targets
                    .get_mut(target)
                    .and_then(|e| e.extra.get_mut("custom"))
                    .and_then(Value::as_object_mut)
                {
                    custom.insert("rollout".into(), rollout);
                }
            },
            &self.keys(),
            now,
            &self.lifetimes,
        )
        .map_err(super::metadata_err("signing the new targets"))?;
        build::verify_state(&next).map_err(RepoError::Inconsistent)?;
        let targets_version = next.targets.version();
        self.commit_and_publish(&mut state, next, changed, now, move |tx| {
            extra(tx, targets_version)
        })
        .await
    }

    /// Every release, newest first.
    pub async fn list_releases(&self) -> Result<Vec<ReleaseInfo>, RepoError> {
        Ok(self.db.call(|c| records::list_releases(c)).await?)
    }
}

/// A new state whose targets are `edit`ed from the current ones: targets, snapshot and
/// timestamp each get the next version and are signed. Returns the files in publication
/// order (targets, snapshot, timestamp).
pub fn replace_targets(
    state: &RepoState,
    edit: impl FnOnce(&mut Targets),
    keys: &OnlineKeys,
    now: UtcTime,
    l: &Lifetimes,
) -> Result<(RepoState, Vec<TopRole>), MetadataError> {
    let bump = |v: u64| {
        v.checked_add(1)
            .ok_or_else(|| MetadataError::Invalid("version counter exhausted".into()))
    };
    let mut t = state.targets.signed().clone();
    edit(&mut t);
    t.version = bump(state.targets.version())?;
    t.expires = now.plus_secs(l.targets);
    let mut next = state.clone();
    next.targets = SignedFile::sign(t, &keys.targets)?;
    let old = state.snapshot.signed();
    next.snapshot = build::new_snapshot(
        bump(old.version)?,
        old.meta.clone(),
        &next.targets,
        now,
        l,
        keys,
    )?;
    next.timestamp = build::new_timestamp(
        bump(state.timestamp.version())?,
        &next.snapshot,
        now,
        l,
        keys,
    )?;
    Ok((
        next,
        vec![TopRole::Targets, TopRole::Snapshot, TopRole::Timestamp],
    ))
}

fn conflict(name: &str, version: &str) -> RepoError {
    RepoError::Conflict(format!(
        "release {name} {version} exists already (a version is published once, even after a \
         yank): publish a new version"
    ))
}
