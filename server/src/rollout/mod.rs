//! Rollouts: which share of devices (percent) and which groups get a release, what an
//! operator does with that (raise, set groups, pause, resume, abort), and the automatic halt
//! when too many devices report failed updates.
//!
//! The database keeps what the operator set (percent, groups) and a status; the signed
//! targets carry what devices may act on: the operator's percent and groups while the
//! rollout is active, and `{"percent": 0, "groups": []}` while it is paused, halted or
//! aborted, so agents that decide from signed data alone stop picking the release up. No new
//! member is ever added to the signed rollout object (agents refuse unknown members).
//!
//! A change that alters the signed rollout is a new targets version (then snapshot and
//! timestamp), signed and committed in one transaction with the rollout row and its audit
//! entry ([`crate::repo::Repository::resign_target_rollout`]); a change that does not (e.g.
//! setting the percent of a paused rollout) commits the row and the audit entry only.

use std::collections::BTreeSet;

use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::audit::{self, Actor, AuditError};
use crate::db::{unix_now, Db, DbError};
use crate::fleet::report::{UpdateOutcome, UpdateResult};
use crate::repo::{RepoError, Repository, Versions};

/// Most groups in one rollout.
pub const MAX_GROUPS: usize = 64;

/// Serialises rollout changes, so each one decides from the state the previous one left.
static CHANGE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `[rollouts]`: when a rollout halts by itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutsConfig {
    /// A rollout halts when the share of failed (or rolled back) updates among the devices
    /// that reported on the release is above this, from 0.0 to 1.0.
    pub max_failure_rate: f64,
    /// ... and at least this many devices reported.
    pub min_reports: u64,
}

// The rate is checked to be a finite number, so equality is total.
impl Eq for RolloutsConfig {}

impl Default for RolloutsConfig {
    fn default() -> Self {
        RolloutsConfig {
            max_failure_rate: 0.2,
            min_reports: 5,
        }
    }
}

impl RolloutsConfig {
    /// Checks the rate is in `0.0..=1.0` and at least one report is needed.
    pub fn validate(&self) -> Result<(), String> {
        if !self.max_failure_rate.is_finite() || !(0.0..=1.0).contains(&self.max_failure_rate) {
            return Err(format!(
                "rollouts.max_failure_rate = {}: give a share from 0.0 to 1.0 (0.2 halts above 20% failures)",
                self.max_failure_rate
            ));
        }
        if self.min_reports == 0 {
            return Err("rollouts.min_reports = 0: give at least 1".into());
        }
        Ok(())
    }
}

/// Why a rollout operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// No such release.
    #[error("{0}")]
    NotFound(String),
    /// The change is not allowed in the rollout's state.
    #[error("{0}")]
    Conflict(String),
    /// A value is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Signing or publishing failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The audit log failed.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// A stored value is unreadable.
    #[error("stored rollout: {0}")]
    Stored(String),
}

impl From<rusqlite::Error> for RolloutError {
    fn from(e: rusqlite::Error) -> Self {
        RolloutError::Db(DbError::Sqlite(e))
    }
}

/// A percent and groups, as signed when active.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutSpec {
    /// Share of devices, `0..=100`.
    pub percent: u8,
    /// Groups whose devices get the release whatever their bucket; sorted, no duplicates.
    pub groups: Vec<String>,
}

impl Default for RolloutSpec {
    /// Everyone: 100 percent, no groups.
    fn default() -> Self {
        RolloutSpec {
            percent: 100,
            groups: Vec::new(),
        }
    }
}

impl RolloutSpec {
    /// Checks the percent (`0..=100`) and group names (sorted, duplicates removed).
    pub fn new(percent: u64, groups: Vec<String>) -> Result<RolloutSpec, RolloutError> {
        Ok(RolloutSpec {
            percent: check_percent(percent)?,
            groups: check_groups(groups)?,
        })
    }

    /// The signed `custom.rollout` object.
    pub fn signed(&self) -> Value {
        json!({"percent": self.percent, "groups": self.groups})
    }

    /// What is signed while a rollout is paused, halted or aborted: nobody.
    pub fn nobody() -> RolloutSpec {
        RolloutSpec {
            percent: 0,
            groups: Vec::new(),
        }
    }
}

/// Checks a percent: a whole number from 0 to 100. Whole numbers only: TUF's canonical
/// JSON has no floats, and other TUF clients must verify the metadata.
pub fn check_percent(p: u64) -> Result<u8, RolloutError> {
    u8::try_from(p).ok().filter(|p| *p <= 100).ok_or_else(|| {
        RolloutError::Invalid(format!("percent {p} is not a whole number from 0 to 100"))
    })
}

/// Checks group names (as enrollment does), removes duplicates and sorts them.
pub fn check_groups(groups: Vec<String>) -> Result<Vec<String>, RolloutError> {
    let mut set = BTreeSet::new();
    for g in groups {
        crate::fleet::check_name(&g)
            .map_err(|e| RolloutError::Invalid(format!("invalid group {e}")))?;
        set.insert(g);
    }
    if set.len() > MAX_GROUPS {
        return Err(RolloutError::Invalid(format!(
            "{} groups: a rollout names at most {MAX_GROUPS}",
            set.len()
        )));
    }
    Ok(set.into_iter().collect())
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Devices in the percent or the groups get the release.
    Active,
    /// Stopped by an operator; resume restores the stored percent and groups.
    Paused,
    /// Stopped by the server because too many updates failed; resume restores it.
    Halted,
    /// Stopped for good.
    Aborted,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Paused => "paused",
            Status::Halted => "halted",
            Status::Aborted => "aborted",
        }
    }

    fn parse(s: &str) -> Result<Status, RolloutError> {
        match s {
            "active" => Ok(Status::Active),
            "paused" => Ok(Status::Paused),
            "halted" => Ok(Status::Halted),
            "aborted" => Ok(Status::Aborted),
            other => Err(RolloutError::Stored(format!("unknown status {other:?}"))),
        }
    }
}

/// A change to a rollout.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Sets the percent; lowering it needs `force` (devices that installed keep it).
    SetPercent {
        /// The new percent.
        percent: u64,
        /// Allow lowering.
        force: bool,
    },
    /// Replaces the groups.
    SetGroups(Vec<String>),
    /// Stops the rollout for now.
    Pause {
        /// Why, for the audit log.
        reason: Option<String>,
    },
    /// Restarts a paused or halted rollout at its stored percent and groups.
    Resume,
    /// Stops the rollout for good.
    Abort {
        /// Why, for the audit log.
        reason: Option<String>,
    },
    /// The automatic halt.
    Halt {
        /// Why.
        reason: String,
        /// The counts that caused it.
        details: Value,
    },
}

impl Change {
    fn action(&self) -> &'static str {
        match self {
            Change::SetPercent { .. } => "rollout.set_percent",
            Change::SetGroups(_) => "rollout.set_groups",
            Change::Pause { .. } => "rollout.pause",
            Change::Resume => "rollout.resume",
            Change::Abort { .. } => "rollout.abort",
            Change::Halt { .. } => "rollout.halt",
        }
    }
}

/// Update outcomes devices reported for a release since the rollout was last resumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Outcomes {
    /// Devices whose last outcome is a success.
    pub success: u64,
    /// ... a failure before switching.
    pub failed: u64,
    /// ... a rollback after a failed health check.
    pub rolled_back: u64,
    /// Counted from this time, Unix seconds.
    pub since: i64,
}

impl Outcomes {
    /// Devices that reported.
    pub fn total(&self) -> u64 {
        self.success + self.failed + self.rolled_back
    }

    /// Failed and rolled back.
    pub fn failures(&self) -> u64 {
        self.failed + self.rolled_back
    }
}

/// A release's rollout, as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutInfo {
    /// Component name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Target name in the TUF metadata.
    pub target: String,
    /// Channel.
    pub channel: String,
    /// Hardware models.
    pub hardware: Vec<String>,
    /// Whether the release was yanked.
    pub yanked: bool,
    /// The operator's percent (what resume restores).
    pub percent: u8,
    /// The operator's groups.
    pub groups: Vec<String>,
    /// Where it stands.
    pub status: Status,
    /// Why it was paused, halted or aborted.
    pub reason: Option<String>,
    /// What the current targets metadata signs for it (percent 0 and no groups unless
    /// active).
    pub signed: Value,
    /// Last change, Unix seconds.
    pub updated_at: i64,
    /// Who made the last change.
    pub updated_by: String,
    /// Reported outcomes since `outcomes.since`.
    pub outcomes: Outcomes,
}

/// What a change did.
#[derive(Debug, Clone)]
pub struct Changed {
    /// The rollout afterwards.
    pub rollout: RolloutInfo,
    /// The new metadata versions, when the signed rollout changed.
    pub versions: Option<Versions>,
    /// Whether anything changed (false: the rollout was already so).
    pub changed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    release_id: i64,
    spec: RolloutSpec,
    status: Status,
    reason: Option<String>,
    evaluate_since: i64,
}

impl Row {
    fn signed(&self) -> RolloutSpec {
        if self.status == Status::Active {
            self.spec.clone()
        } else {
            RolloutSpec::nobody()
        }
    }
}

const SELECT: &str = "SELECT r.id, r.name, r.version, r.target_name, r.channel, r.hardware,
        r.yanked_at, r.published_at, o.percent, o.groups, o.status, o.reason,
        o.evaluate_since, o.updated_at, o.updated_by
     FROM releases r LEFT JOIN rollouts o ON o.release_id = r.id";

struct Loaded {
    info: RolloutInfo,
    row: Row,
}

fn loaded_row(r: &rusqlite::Row) -> rusqlite::Result<Result<Loaded, RolloutError>> {
    let hardware: String = r.get(5)?;
    let yanked: Option<i64> = r.get(6)?;
    let published_at: i64 = r.get(7)?;
    let percent: Option<i64> = r.get(8)?;
    let groups: Option<String> = r.get(9)?;
    let status: Option<String> = r.get(10)?;
    let name: String = r.get(1)?;
    let version: String = r.get(2)?;
    let target: String = r.get(3)?;
    let channel: String = r.get(4)?;
    let reason: Option<String> = r.get(11)?;
    let evaluate_since: Option<i64> = r.get(12)?;
    let updated_at: Option<i64> = r.get(13)?;
    let updated_by: Option<String> = r.get(14)?;
    let release_id: i64 = r.get(0)?;
    Ok((|| {
        let hardware: Vec<String> = serde_json::from_str(&hardware)
            .map_err(|e| RolloutError::Stored(format!("hardware of {name} {version}: {e}")))?;
        // A release published before rollouts existed was signed at 100 percent.
        let (spec, status) = match (percent, groups, status) {
            (Some(p), Some(g), Some(s)) => {
                let groups: Vec<String> = serde_json::from_str(&g).map_err(|e| {
                    RolloutError::Stored(format!("groups of {name} {version}: {e}"))
                })?;
                let percent = u8::try_from(p).map_err(|_| {
                    RolloutError::Stored(format!("percent {p} of {name} {version}"))
                })?;
                (RolloutSpec { percent, groups }, Status::parse(&s)?)
            }
            _ => (RolloutSpec::default(), Status::Active),
        };
        let row = Row {
            release_id,
            spec: spec.clone(),
            status,
            reason: reason.clone(),
            evaluate_since: evaluate_since.unwrap_or(published_at),
        };
        let info = RolloutInfo {
            name,
            version,
            target,
            channel,
            hardware,
            yanked: yanked.is_some(),
            percent: spec.percent,
            groups: spec.groups,
            status,
            reason,
            signed: if yanked.is_some() {
                Value::Null
            } else {
                row.signed().signed()
            },
            updated_at: updated_at.unwrap_or(published_at),
            updated_by: updated_by.unwrap_or_else(|| "publish".into()),
            outcomes: Outcomes::default(),
        };
        Ok(Loaded { info, row })
    })())
}

fn outcomes(conn: &Connection, release_id: i64, since: i64) -> Result<Outcomes, RolloutError> {
    let mut out = Outcomes {
        since,
        ..Outcomes::default()
    };
    let mut stmt = conn.prepare(
        "SELECT result, COUNT(*) FROM update_outcomes
         WHERE release_id = ?1 AND reported_at >= ?2 GROUP BY result",
    )?;
    let rows = stmt.query_map(rusqlite::params![release_id, since], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })?;
    for row in rows {
        let (result, n) = row?;
        let n = u64::try_from(n).unwrap_or(0);
        match result.as_str() {
            "success" => out.success = n,
            "failed" => out.failed = n,
            "rolled_back" => out.rolled_back = n,
            _ => {}
        }
    }
    Ok(out)
}

fn load(conn: &Connection, name: &str, version: &str) -> Result<Loaded, RolloutError> {
    let found = conn
        .query_row(
            &format!("{SELECT} WHERE r.name = ?1 AND r.version = ?2"),
            [name, version],
            loaded_row,
        )
        .optional()?;
    let mut l = found.ok_or_else(|| {
        RolloutError::NotFound(format!("no release {name} {version} was published"))
    })??;
    l.info.outcomes = outcomes(conn, l.row.release_id, l.row.evaluate_since)?;
    Ok(l)
}

/// The rollout of one release.
pub fn show(conn: &Connection, name: &str, version: &str) -> Result<RolloutInfo, RolloutError> {
    Ok(load(conn, name, version)?.info)
}

/// Every release's rollout, newest release first; yanked ones only with `yanked`.
pub fn list(conn: &Connection, yanked: bool) -> Result<Vec<RolloutInfo>, RolloutError> {
    let mut stmt = conn.prepare(&format!("{SELECT} ORDER BY r.id DESC"))?;
    let rows: Vec<Result<Loaded, RolloutError>> =
        stmt.query_map([], loaded_row)?.collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for l in rows {
        let mut l = l?;
        if l.info.yanked && !yanked {
            continue;
        }
        l.info.outcomes = outcomes(conn, l.row.release_id, l.row.evaluate_since)?;
        out.push(l.info);
    }
    Ok(out)
}

/// Records the rollout a release is published with (inside the publish transaction).
pub fn insert_initial(
    conn: &Connection,
    release_id: i64,
    spec: &RolloutSpec,
    by: i64,
    now: i64,
) -> Result<(), DbError> {
    let groups = serde_json::to_string(&spec.groups).map_err(|e| DbError::Task(e.to_string()))?;
    conn.execute(
        "INSERT INTO rollouts (release_id, percent, groups, status, reason, evaluate_since,
                               updated_at, updated_by)
         VALUES (?1, ?2, ?3, 'active', NULL, ?4, ?4, ?5)",
        rusqlite::params![release_id, spec.percent, groups, now, format!("token:{by}")],
    )?;
    Ok(())
}

fn write_row(conn: &Connection, row: &Row, now: i64, by: &str) -> Result<(), DbError> {
    let groups =
        serde_json::to_string(&row.spec.groups).map_err(|e| DbError::Task(e.to_string()))?;
    conn.execute(
        "INSERT INTO rollouts (release_id, percent, groups, status, reason, evaluate_since,
                               updated_at, updated_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (release_id) DO UPDATE SET percent = excluded.percent,
             groups = excluded.groups, status = excluded.status, reason = excluded.reason,
             evaluate_since = excluded.evaluate_since, updated_at = excluded.updated_at,
             updated_by = excluded.updated_by",
        rusqlite::params![
            row.release_id,
            row.spec.percent,
            groups,
            row.status.as_str(),
            row.reason,
            row.evaluate_since,
            now,
            by
        ],
    )?;
    Ok(())
}

/// The row after `change`; `None` when it changes nothing. Pure, so the rules are tested
/// without a server.
fn apply(cur: &Row, change: &Change, now: i64) -> Result<Option<Row>, RolloutError> {
    let mut next = cur.clone();
    let aborted = || {
        RolloutError::Conflict(
            "the rollout was aborted, which is final: publish a new version instead".into(),
        )
    };
    match change {
        Change::SetPercent { percent, force } => {
            if cur.status == Status::Aborted {
                return Err(aborted());
            }
            let p = check_percent(*percent)?;
            if p < cur.spec.percent && !force {
                return Err(RolloutError::Conflict(format!(
                    "lowering the rollout from {}% to {p}% needs force (devices that installed it keep it); \
                     to stop it, pause or abort instead",
                    cur.spec.percent
                )));
            }
            next.spec.percent = p;
        }
        Change::SetGroups(groups) => {
            if cur.status == Status::Aborted {
                return Err(aborted());
            }
            next.spec.groups = check_groups(groups.clone())?;
        }
        Change::Pause { reason } => {
            if cur.status == Status::Aborted {
                return Err(aborted());
            }
            if cur.status == Status::Paused {
                return Ok(None);
            }
            next.status = Status::Paused;
            next.reason = reason.clone();
        }
        Change::Resume => match cur.status {
            Status::Aborted => return Err(aborted()),
            Status::Active => return Ok(None),
            Status::Paused | Status::Halted => {
                next.status = Status::Active;
                next.reason = None;
                // The automatic halt counts outcomes from here on.
                next.evaluate_since = now;
            }
        },
        Change::Abort { reason } => {
            if cur.status == Status::Aborted {
                return Ok(None);
            }
            next.status = Status::Aborted;
            next.reason = reason.clone();
        }
        Change::Halt { reason, .. } => {
            if cur.status != Status::Active {
                return Ok(None);
            }
            next.status = Status::Halted;
            next.reason = Some(reason.clone());
        }
    }
    Ok((next != *cur).then_some(next))
}

/// Applies `change` to the rollout of `name` `version` as `actor`: writes the row and its
/// audit entry and, when what is signed changes, a new targets, snapshot and timestamp, all
/// in one transaction.
pub async fn change(
    repo: &Repository,
    db: &Db,
    name: &str,
    version: &str,
    change: Change,
    actor: &Actor,
) -> Result<Changed, RolloutError> {
    let _serial = CHANGE_LOCK.lock().await;
    let (n, v) = (name.to_owned(), version.to_owned());
    let cur = db.call(move |c| Ok(load(c, &n, &v))).await??;
    if cur.info.yanked {
        return Err(RolloutError::Conflict(format!(
            "release {name} {version} is yanked: it has no rollout any more"
        )));
    }
    let now = unix_now();
    let Some(next) = apply(&cur.row, &change, now)? else {
        return Ok(Changed {
            rollout: cur.info,
            versions: None,
            changed: false,
        });
    };
    let (old_signed, new_signed) = (cur.row.signed(), next.signed());
    let mut details = json!({
        "from": {"percent": cur.row.spec.percent, "groups": cur.row.spec.groups, "status": cur.row.status},
        "to": {"percent": next.spec.percent, "groups": next.spec.groups, "status": next.status},
        "signed": new_signed.signed(),
        "target": cur.info.target,
    });
    match &change {
        Change::SetPercent { force: true, .. } => details["force"] = json!(true),
        Change::Pause { reason: Some(r) } | Change::Abort { reason: Some(r) } => {
            details["reason"] = json!(r)
        }
        Change::Halt { reason, details: d } => {
            details["reason"] = json!(reason);
            details["outcomes"] = d.clone();
        }
        _ => {}
    }
    let subject = format!("release:{name}/{version}");
    let action = change.action();
    let actor = actor.clone();
    let write = move |tx: &rusqlite::Transaction, targets_version: Option<u64>| {
        write_row(tx, &next, now, &actor.id)?;
        let mut details = details;
        if let Some(tv) = targets_version {
            details["targets_version"] = json!(tv);
        }
        audit::append(tx, &actor, action, &subject, &details, now).map_err(audit::db_error)?;
        Ok::<(), DbError>(())
    };
    let versions =
        if old_signed != new_signed {
            let versions = repo
                .resign_target_rollout(&cur.info.target, new_signed.signed(), move |tx, tv| {
                    write(tx, Some(tv))?;
                    Ok(true)
                })
                .await?;
            Some(versions.ok_or_else(|| {
                RolloutError::Conflict("the rollout changed meanwhile; retry".into())
            })?)
        } else {
            db.call(move |c| {
                let tx = c.transaction()?;
                write(&tx, None)?;
                tx.commit()?;
                Ok(())
            })
            .await?;
            None
        };
    let (n, v) = (name.to_owned(), version.to_owned());
    let rollout = db.call(move |c| Ok(show(c, &n, &v))).await??;
    if let Some(v) = &versions {
        tracing::info!(
            release = name,
            version,
            action,
            targets = v.targets,
            "rollout changed"
        );
    }
    Ok(Changed {
        rollout,
        versions,
        changed: true,
    })
}

/// What an update outcome a device reported meant for its release's rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeSeen {
    /// The release.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its rollout's status before this outcome.
    pub status: Status,
    /// The counts, this outcome included.
    pub outcomes: Outcomes,
    /// Whether this report recorded a new failure (not a repeat of the device's last).
    pub new_failure: bool,
}

/// Stores the outcome a device reported, when it names a published release (by target
/// name, with or without `.tar.zst`). A device counts once per release: its latest outcome.
pub fn record_outcome(
    conn: &Connection,
    device_id: &str,
    outcome: &UpdateOutcome,
    now: i64,
) -> Result<Option<OutcomeSeen>, RolloutError> {
    let release: Option<(String, String)> = conn
        .query_row(
            "SELECT name, version FROM releases
             WHERE (target_name = ?1 OR target_name = ?1 || '.tar.zst') AND yanked_at IS NULL",
            [&outcome.target],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((name, version)) = release else {
        return Ok(None);
    };
    let l = load(conn, &name, &version)?;
    let result = match outcome.result {
        UpdateResult::Success => "success",
        UpdateResult::Failed => "failed",
        UpdateResult::RolledBack => "rolled_back",
    };
    // A repeated report of the same outcome keeps its first time, so an outcome from before
    // a resume is not counted again after it.
    let changed = conn.execute(
        "INSERT INTO update_outcomes (release_id, device_id, result, reported_at)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (release_id, device_id) DO UPDATE SET result = excluded.result,
             reported_at = excluded.reported_at
         WHERE result IS NOT excluded.result",
        rusqlite::params![l.row.release_id, device_id, result, now],
    )?;
    Ok(Some(OutcomeSeen {
        name,
        version,
        status: l.row.status,
        outcomes: outcomes(conn, l.row.release_id, l.row.evaluate_since)?,
        new_failure: changed > 0 && outcome.result != UpdateResult::Success,
    }))
}

/// Whether `o` crosses the configured failure rate.
pub fn should_halt(cfg: &RolloutsConfig, o: &Outcomes) -> bool {
    let total = o.total();
    total >= cfg.min_reports && (o.failures() as f64) > cfg.max_failure_rate * (total as f64)
}

/// After a device's report: records its update outcome and halts the release's rollout when
/// failures cross the configured rate. Returns the halt, if one happened.
pub async fn after_report(
    repo: &Repository,
    db: &Db,
    cfg: &RolloutsConfig,
    device_id: &str,
    outcome: UpdateOutcome,
) -> Result<Option<Changed>, RolloutError> {
    let id = device_id.to_owned();
    let seen = db
        .call(move |c| Ok(record_outcome(c, &id, &outcome, unix_now())))
        .await??;
    let Some(seen) = seen else { return Ok(None) };
    if seen.new_failure {
        crate::metrics::record_rollout_failure(&format!("{}/{}", seen.name, seen.version));
    }
    if seen.status != Status::Active || !should_halt(cfg, &seen.outcomes) {
        return Ok(None);
    }
    let o = seen.outcomes;
    let reason = format!(
        "{} of {} devices reported a failed update (limit {:.1}%)",
        o.failures(),
        o.total(),
        cfg.max_failure_rate * 100.0
    );
    tracing::warn!(release = seen.name, version = seen.version, %reason, "halting the rollout");
    let details = json!({
        "success": o.success, "failed": o.failed, "rolled_back": o.rolled_back,
        "since": o.since, "max_failure_rate": cfg.max_failure_rate.to_string(), "min_reports": cfg.min_reports,
    });
    let changed = change(
        repo,
        db,
        &seen.name,
        &seen.version,
        Change::Halt { reason, details },
        &Actor::server("automatic rollout halt"),
    )
    .await?;
    Ok(changed.changed.then_some(changed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(percent: u8, status: Status) -> Row {
        Row {
            release_id: 1,
            spec: RolloutSpec {
                percent,
                groups: vec![],
            },
            status,
            reason: None,
            evaluate_since: 0,
        }
    }

    #[test]
    fn percent_goes_up_unless_forced_and_pause_signs_nobody() {
        let r = row(10, Status::Active);
        let up = apply(
            &r,
            &Change::SetPercent {
                percent: 50,
                force: false,
            },
            5,
        )
        .unwrap()
        .unwrap();
        assert_eq!(up.signed().percent, 50);
        assert!(matches!(
            apply(
                &up,
                &Change::SetPercent {
                    percent: 20,
                    force: false
                },
                5
            ),
            Err(RolloutError::Conflict(_))
        ));
        let down = apply(
            &up,
            &Change::SetPercent {
                percent: 20,
                force: true,
            },
            5,
        )
        .unwrap()
        .unwrap();
        assert_eq!(down.spec.percent, 20);
        assert!(apply(
            &r,
            &Change::SetPercent {
                percent: 101,
                force: true
            },
            5
        )
        .is_err());
        assert_eq!(
            apply(
                &r,
                &Change::SetPercent {
                    percent: 10,
                    force: false
                },
                5
            )
            .unwrap(),
            None
        );

        let paused = apply(&up, &Change::Pause { reason: None }, 6)
            .unwrap()
            .unwrap();
        assert_eq!(paused.signed(), RolloutSpec::nobody());
        assert_eq!(paused.spec.percent, 50, "the intended percent is kept");
        let raised = apply(
            &paused,
            &Change::SetPercent {
                percent: 60,
                force: false,
            },
            7,
        )
        .unwrap()
        .unwrap();
        assert_eq!(raised.signed(), RolloutSpec::nobody(), "still paused");
        let resumed = apply(&raised, &Change::Resume, 8).unwrap().unwrap();
        assert_eq!(resumed.signed().percent, 60);
        assert_eq!(resumed.evaluate_since, 8);
    }

    #[test]
    fn abort_is_final_and_halt_only_stops_active_rollouts() {
        let r = row(30, Status::Active);
        let halted = apply(
            &r,
            &Change::Halt {
                reason: "x".into(),
                details: json!({}),
            },
            3,
        )
        .unwrap()
        .unwrap();
        assert_eq!(halted.status, Status::Halted);
        assert_eq!(
            apply(
                &halted,
                &Change::Halt {
                    reason: "y".into(),
                    details: json!({})
                },
                4
            )
            .unwrap(),
            None
        );
        let aborted = apply(&halted, &Change::Abort { reason: None }, 5)
            .unwrap()
            .unwrap();
        assert_eq!(aborted.signed(), RolloutSpec::nobody());
        for c in [
            Change::Resume,
            Change::SetPercent {
                percent: 90,
                force: true,
            },
            Change::SetGroups(vec!["a".into()]),
            Change::Pause { reason: None },
        ] {
            assert!(
                matches!(apply(&aborted, &c, 6), Err(RolloutError::Conflict(_))),
                "{c:?}"
            );
        }
        assert_eq!(
            apply(&aborted, &Change::Abort { reason: None }, 6).unwrap(),
            None
        );
    }

    #[test]
    fn groups_are_checked_sorted_and_deduplicated() {
        assert_eq!(
            check_groups(vec!["b".into(), "a".into(), "b".into()]).unwrap(),
            ["a", "b"]
        );
        assert!(check_groups(vec!["a b".into()]).is_err());
        assert!(check_groups((0..=MAX_GROUPS).map(|i| format!("g{i}")).collect()).is_err());
    }

    #[test]
    fn the_halt_needs_enough_reports_and_a_rate_above_the_limit() {
        let cfg = RolloutsConfig {
            max_failure_rate: 0.25,
            min_reports: 4,
        };
        let o = |success, failed| Outcomes {
            success,
            failed,
            rolled_back: 0,
            since: 0,
        };
        assert!(!should_halt(&cfg, &o(0, 3)), "too few reports");
        assert!(!should_halt(&cfg, &o(3, 1)), "exactly at the limit");
        assert!(should_halt(&cfg, &o(2, 2)));
        cfg.validate().unwrap();
        assert!(RolloutsConfig {
            max_failure_rate: 1.5,
            min_reports: 1
        }
        .validate()
        .is_err());
        assert!(RolloutsConfig {
            max_failure_rate: f64::NAN,
            min_reports: 1
        }
        .validate()
        .is_err());
        assert!(RolloutsConfig {
            max_failure_rate: 0.1,
            min_reports: 0
        }
        .validate()
        .is_err());
    }
}
