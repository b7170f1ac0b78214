//! Atomic apply of verified bundles: safe unpack into versioned directories, the `current`
//! symlink swapped with `rename(2)`, a SQLite journal of every step, health checks with a
//! start counter, automatic and manual rollback, and crash recovery on open.
//!
//! Layout under the install root:
//! - `components/<name>/<version>/`: an unpacked bundle (payload files and `manifest.json`);
//! - `components/<name>/current`: symlink to `<version>`, replaced by `rename(2)`;
//! - `journal.sqlite`: the journal (WAL, `synchronous=FULL`);
//! - `staging/`: bundles being unpacked (removed by recovery when a crash cut them);
//! - `logs/`: output of hooks and health checks;
//! - `lock`: held (advisory lock) while an [`Applier`] is open.
//!
//! See `docs/apply.md` for the journal states and what recovery does with each.

mod fsx;
mod journal;
mod run;
mod unpack;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use otter_keys::release::Kind;

/// Pre/post install commands for one bundle kind, as argv lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Run before the switch, in the new version's directory; a failure aborts the install
    /// (nothing switched).
    #[serde(default)]
    pub pre_install: Option<Vec<String>>,
    /// Run after the switch, before the health check; a failure rolls back.
    #[serde(default)]
    pub post_install: Option<Vec<String>>,
}

fn default_health_timeout() -> u64 {
    60
}
fn default_hook_timeout() -> u64 {
    300
}
fn default_max_failed_starts() -> u32 {
    3
}
fn default_keep_versions() -> usize {
    2
}
fn default_max_unpacked() -> u64 {
    4 * 1024 * 1024 * 1024
}

/// What the apply engine may do: the agent config's `[apply]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyConfig {
    /// Deadline of one health check run, in seconds (default 60); killed when it passes.
    #[serde(default = "default_health_timeout")]
    pub health_timeout_secs: u64,
    /// Deadline of one hook or install command, in seconds (default 300).
    #[serde(default = "default_hook_timeout")]
    pub hook_timeout_secs: u64,
    /// Health trials that may be cut (crash, power loss) before the engine rolls back by
    /// itself (default 3).
    #[serde(default = "default_max_failed_starts")]
    pub max_failed_starts: u32,
    /// Versions kept per component, the active and previous ones included (default 2).
    #[serde(default = "default_keep_versions")]
    pub keep_versions: usize,
    /// Most bytes a bundle may unpack to, tar headers included (default 4 GiB).
    #[serde(default = "default_max_unpacked")]
    pub max_unpacked_bytes: u64,
    /// Hooks per kind: `firmware`, `driver` or `patch`.
    #[serde(default)]
    pub hooks: BTreeMap<String, Hooks>,
}

impl Default for ApplyConfig {
    fn default() -> Self {
        ApplyConfig {
            health_timeout_secs: default_health_timeout(),
            hook_timeout_secs: default_hook_timeout(),
            max_failed_starts: default_max_failed_starts(),
            keep_versions: default_keep_versions(),
            max_unpacked_bytes: default_max_unpacked(),
            hooks: BTreeMap::new(),
        }
    }
}

/// What the caller verified against signed metadata; the bundle's manifest must match it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Component name.
    pub name: String,
    /// Version.
    pub version: semver::Version,
    /// Kind.
    pub kind: Kind,
    /// The TUF target name the bundle was downloaded as (recorded in the journal).
    pub target: String,
}

mod ser {
    //! Serializes versions as their text.
    pub fn ver<S: serde::Serializer>(v: &semver::Version, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }
    pub fn opt_ver<S: serde::Serializer>(
        v: &Option<semver::Version>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }
}

/// The result of [`Applier::install`] or [`Applier::rollback`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// `to` is active and healthy (`from == Some(to)`: it already was, nothing done).
    Installed {
        /// Component.
        name: String,
        /// Version active before (`None`: first install).
        #[serde(serialize_with = "ser::opt_ver")]
        from: Option<semver::Version>,
        /// Version active now.
        #[serde(serialize_with = "ser::ver")]
        to: semver::Version,
    },
    /// `from` failed (or a manual rollback was asked for) and `to` is active again.
    RolledBack {
        /// Component.
        name: String,
        /// The version switched away from.
        #[serde(serialize_with = "ser::ver")]
        from: semver::Version,
        /// Version active now (`None`: nothing, the failed version was a first install).
        #[serde(serialize_with = "ser::opt_ver")]
        to: Option<semver::Version>,
        /// Why.
        reason: String,
    },
}

/// What [`Applier::open`] did about an operation a crash interrupted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recovery {
    /// Journal entry id.
    pub id: i64,
    /// Component.
    pub component: String,
    /// `install` or `rollback`.
    pub op: String,
    /// The journal state the crash left.
    pub found_state: String,
    /// What recovery did, in words.
    pub action: String,
    /// How the operation ended after recovery, when it ran to an end.
    pub outcome: Option<Outcome>,
}

/// One journal entry (one install or rollback), for `otter-agent status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    /// Journal entry id (increasing).
    pub id: i64,
    /// Component.
    pub component: String,
    /// `install` or `rollback`.
    pub op: String,
    /// Active version before (text).
    pub from: Option<String>,
    /// Version switched to or attempted (text).
    pub to: Option<String>,
    /// Last state: `unpacking`, `staged`, `switching`, `switched`, `checking`, `committed`,
    /// `rolling_back`, `rolled_back` or `aborted`.
    pub state: String,
    /// Health trials started.
    pub starts: u32,
    /// Why it was rolled back or aborted.
    pub reason: Option<String>,
    /// TUF target name, for installs.
    pub target: Option<String>,
    /// Unix seconds when it began.
    pub started_at: i64,
    /// Unix seconds of its last step.
    pub updated_at: i64,
}

/// Why applying failed. Nothing switched unless the variant says otherwise.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A file system step failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The journal database failed.
    #[error("apply journal {path}: {message}")]
    Journal {
        /// The journal file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// Another process holds the install root.
    #[error("install root {0} is in use by another otter-agent process; wait for it to finish")]
    Busy(PathBuf),
    /// The bundle is hostile or corrupt; nothing was changed.
    #[error("bundle {path} refused: {reason}")]
    Bundle {
        /// The bundle file.
        path: PathBuf,
        /// What rule it broke.
        reason: String,
    },
    /// The bundle's manifest is not what the signed metadata announced.
    #[error("bundle {path} is not the release that was verified: {reason}")]
    Mismatch {
        /// The bundle file.
        path: PathBuf,
        /// Which field differs.
        reason: String,
    },
    /// A pre-install hook or the bundle's install command failed; nothing was switched.
    #[error("{step} for {component} {version} failed: {reason}; nothing was switched")]
    Hook {
        /// Which command.
        step: String,
        /// Component.
        component: String,
        /// Version being installed.
        version: String,
        /// Exit status or deadline, and the output's tail.
        reason: String,
    },
    /// No such component installed.
    #[error("component {0:?} is not installed under this install root")]
    NotInstalled(String),
    /// Rollback asked for but no previous version is kept.
    #[error("component {0:?} has no previous version kept to roll back to")]
    NoPrevious(String),
    /// The install root holds something the engine did not write.
    #[error("install root is inconsistent: {0}")]
    Corrupt(String),
}

/// The apply engine: owns an install root (held with an advisory lock) and its journal.
#[derive(Debug)]
pub struct Applier {
    root: PathBuf,
    config: ApplyConfig,
    journal: journal::Journal,
    _lock: fs::File,
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ApplyError {
    let path = path.to_path_buf();
    move |source| ApplyError::Io { what, path, source }
}

fn parse_version(component: &str, v: &str) -> Result<semver::Version, ApplyError> {
    semver::Version::parse(v).map_err(|e| {
        ApplyError::Corrupt(format!(
            "the journal names version {v:?} of {component}, which is not a version: {e}"
        ))
    })
}

fn opt_version(component: &str, v: Option<&str>) -> Result<Option<semver::Version>, ApplyError> {
    v.map(|v| parse_version(component, v)).transpose()
}

/// How long [`Applier::open`] waits for another holder of the install root's lock.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Hook and health logs are kept for this many most recent journal entries.
const KEEP_LOGS_OF: i64 = 100;

/// Reason recorded for a rollback asked for with [`Applier::rollback`].
const MANUAL_REASON: &str = "rollback asked for by the operator";

impl Applier {
    /// Opens or creates the install root; finishes or undoes what a crash interrupted
    /// (returned so the caller can report it). Recovery may run the health check of an
    /// install that was cut after its switch, and rolls back one whose trials were cut
    /// `max_failed_starts` times.
    pub fn open(
        install_root: &Path,
        config: ApplyConfig,
    ) -> Result<(Applier, Vec<Recovery>), ApplyError> {
        fs::create_dir_all(install_root).map_err(io_err("creating install root", install_root))?;
        let lock_path = install_root.join("lock");
        let lock = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err("opening", &lock_path))?;
        // A process killed while it was starting a hook may leave a child that holds the
        // lock until its exec; wait a little before calling the root busy.
        let give_up = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(ApplyError::Busy(install_root.to_path_buf()))
                }
                Err(fs::TryLockError::Error(e)) => return Err(io_err("locking", &lock_path)(e)),
            }
        }
        for sub in ["components", "staging", "trash", "logs"] {
            let p = install_root.join(sub);
            fs::create_dir_all(&p).map_err(io_err("creating", &p))?;
        }
        fsx::sync_dir(install_root).map_err(io_err("syncing directory", install_root))?;
        let journal = journal::Journal::open(&install_root.join("journal.sqlite"))?;
        let mut applier = Applier {
            root: install_root.to_path_buf(),
            config,
            journal,
            _lock: lock,
        };
        let recoveries = applier.recover()?;
        Ok((applier, recoveries))
    }

    /// The install root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of the active version of `component` (`None`: not installed).
    pub fn active_dir(&self, component: &str) -> Result<Option<PathBuf>, ApplyError> {
        if !otter_keys::release::is_component_name(component) {
            return Ok(None);
        }
        Ok(self
            .journal
            .component(component)?
            .active
            .map(|v| self.component_dir(component).join(v)))
    }

    /// The previous kept version of `component`, the one [`Applier::rollback`] would switch
    /// to (`None`: not installed, or none kept).
    pub fn previous_version(&self, component: &str) -> Result<Option<String>, ApplyError> {
        if !otter_keys::release::is_component_name(component) {
            return Ok(None);
        }
        Ok(self.journal.component(component)?.previous)
    }

    /// Active version of every installed component.
    pub fn installed(&self) -> Result<BTreeMap<String, semver::Version>, ApplyError> {
        installed_in(&self.journal)
    }

    /// Recent journal entries, newest first (for `otter-agent status`).
    pub fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>, ApplyError> {
        self.journal.history(limit)
    }

    /// Applies a bundle whose bytes were already verified against signed metadata: safe
    /// unpack into a new versioned dir, manifest checked against `expected`, pre-install hook
    /// and install command, atomic switch, post-install hook, health check with deadline and
    /// start counter, rollback on failure. Installing the active version again does nothing
    /// and returns `Installed { from: Some(v), to: v }`.
    pub fn install(&mut self, bundle: &Path, expected: &Expected) -> Result<Outcome, ApplyError> {
        let name = expected.name.as_str();
        if !otter_keys::release::is_component_name(name) {
            return Err(ApplyError::Mismatch {
                path: bundle.to_path_buf(),
                reason: format!("{name:?} is not a component name"),
            });
        }
        let to = expected.version.to_string();
        let current = self.journal.component(name)?;
        if current.active.as_deref() == Some(to.as_str()) {
            return Ok(Outcome::Installed {
                name: name.into(),
                from: Some(expected.version.clone()),
                to: expected.version.clone(),
            });
        }
        let kind = expected.kind.as_str();
        let id = self.journal.begin(
            name,
            "install",
            kind,
            current.active.as_deref(),
            Some(&to),
            Some(&expected.target),
            "unpacking",
        )?;
        if let Err(e) = self.prepare(id, bundle, expected) {
            // Nothing was switched: remove what was unpacked. If cleaning up fails too, the
            // entry stays open and the next open() finishes it.
            let _ = self.abort_install(id, &e.to_string());
            return Err(e);
        }
        let cdir = self.component_dir(name);
        self.journal.set_state(id, "switching", None)?;
        fsx::switch_current(&cdir, Some(&to)).map_err(io_err("switching", &cdir))?;
        self.journal.set_state(id, "switched", None)?;
        self.after_switch(id)
    }

    /// Switches a component back to its previous kept version (`otter-agent rollback`).
    /// The version switched away from becomes the previous one (so a second rollback undoes
    /// the first). No health check is run.
    pub fn rollback(&mut self, component: &str) -> Result<Outcome, ApplyError> {
        if !otter_keys::release::is_component_name(component) {
            return Err(ApplyError::NotInstalled(component.into()));
        }
        let c = self.journal.component(component)?;
        let active = c
            .active
            .ok_or_else(|| ApplyError::NotInstalled(component.into()))?;
        let previous = c
            .previous
            .ok_or_else(|| ApplyError::NoPrevious(component.into()))?;
        if !self.component_dir(component).join(&previous).is_dir() {
            return Err(ApplyError::NoPrevious(component.into()));
        }
        let id = self.journal.begin(
            component,
            "rollback",
            &c.kind,
            Some(&active),
            Some(&previous),
            None,
            "switching",
        )?;
        self.finish_manual_rollback(id)
    }

    fn component_dir(&self, name: &str) -> PathBuf {
        self.root.join("components").join(name)
    }

    fn staging_dir(&self, id: i64) -> PathBuf {
        self.root.join("staging").join(id.to_string())
    }

    fn trash_dir(&self) -> PathBuf {
        self.root.join("trash")
    }

    /// Everything before the switch of install `id`: unpack and check into `staging/<id>`,
    /// move it to `components/<name>/<version>`, then the pre-install hook and the bundle's
    /// install command.
    fn prepare(&mut self, id: i64, bundle: &Path, expected: &Expected) -> Result<(), ApplyError> {
        let name = expected.name.as_str();
        let to = expected.version.to_string();
        let staging = self.staging_dir(id);
        self.stage(id, bundle, expected, &staging)?;
        let cdir = self.component_dir(name);
        let vdir = cdir.join(&to);
        if fs::symlink_metadata(&vdir).is_ok() {
            // A kept copy of the same version (never the active one): replaced by the new.
            self.journal.forget_previous(name, &to)?;
            fsx::retire_dir(&vdir, &self.trash_dir(), &format!("{id}-replaced"))
                .map_err(io_err("removing", &vdir))?;
        }
        fs::rename(&staging, &vdir).map_err(io_err("moving staged bundle to", &vdir))?;
        fsx::sync_dir(&cdir).map_err(io_err("syncing directory", &cdir))?;
        let staging_root = self.root.join("staging");
        fsx::sync_dir(&staging_root).map_err(io_err("syncing directory", &staging_root))?;
        self.journal.set_state(id, "staged", None)?;

        let manifest = read_manifest(&vdir)?;
        let hooks = self
            .config
            .hooks
            .get(expected.kind.as_str())
            .cloned()
            .unwrap_or_default();
        let steps = [
            ("pre-install hook", hooks.pre_install),
            ("install command", manifest.install.clone()),
        ];
        for (step, argv) in steps {
            let Some(argv) = argv else { continue };
            let op = self.journal.op(id)?;
            if let Err(reason) = self.run_step(&op, &argv, step, 0) {
                return Err(ApplyError::Hook {
                    step: step.into(),
                    component: name.into(),
                    version: to,
                    reason,
                });
            }
        }
        Ok(())
    }

    /// Unpacks and checks the bundle into `staging` (fsynced).
    fn stage(
        &self,
        id: i64,
        bundle: &Path,
        expected: &Expected,
        staging: &Path,
    ) -> Result<(), ApplyError> {
        let _ = id;
        if fs::symlink_metadata(staging).is_ok() {
            fs::remove_dir_all(staging).map_err(io_err("removing", staging))?;
        }
        fs::create_dir(staging).map_err(io_err("creating", staging))?;
        let manifest = unpack::unpack(bundle, staging, self.config.max_unpacked_bytes).map_err(
            |e| match e {
                unpack::UnpackError::Bundle(reason) => ApplyError::Bundle {
                    path: bundle.to_path_buf(),
                    reason,
                },
                unpack::UnpackError::Io(what, path, source) => {
                    ApplyError::Io { what, path, source }
                }
            },
        )?;
        let mismatch = |reason: String| ApplyError::Mismatch {
            path: bundle.to_path_buf(),
            reason,
        };
        if manifest.name != expected.name {
            return Err(mismatch(format!(
                "manifest.json names component {:?}, the signed metadata {:?}",
                manifest.name, expected.name
            )));
        }
        let version = manifest.semver().map_err(|e| mismatch(e.to_string()))?;
        if version != expected.version {
            return Err(mismatch(format!(
                "manifest.json says version {version}, the signed metadata {}",
                expected.version
            )));
        }
        if manifest.kind != expected.kind {
            return Err(mismatch(format!(
                "manifest.json says kind {}, the signed metadata {}",
                manifest.kind.as_str(),
                expected.kind.as_str()
            )));
        }
        let staging_root = self.root.join("staging");
        fsx::sync_dir(&staging_root).map_err(io_err("syncing directory", &staging_root))?;
        let cdir = self.component_dir(&expected.name);
        fs::create_dir_all(&cdir).map_err(io_err("creating", &cdir))?;
        let components = self.root.join("components");
        fsx::sync_dir(&components).map_err(io_err("syncing directory", &components))?;
        Ok(())
    }

    /// Runs one command of operation `op` in its new version's directory.
    fn run_step(
        &self,
        op: &journal::Op,
        argv: &[String],
        step: &str,
        start: u32,
    ) -> Result<(), String> {
        let to = op.to.clone().unwrap_or_default();
        let vdir = self.component_dir(&op.component).join(&to);
        let envs = [
            ("OTTER_COMPONENT", op.component.clone()),
            ("OTTER_KIND", op.kind.clone()),
            ("OTTER_VERSION", to),
            ("OTTER_FROM_VERSION", op.from.clone().unwrap_or_default()),
            ("OTTER_VERSION_DIR", vdir.to_string_lossy().into_owned()),
            (
                "OTTER_INSTALL_ROOT",
                self.root.to_string_lossy().into_owned(),
            ),
            ("OTTER_HEALTH_START", start.to_string()),
        ];
        let timeout = if step == "health check" {
            self.config.health_timeout_secs
        } else {
            self.config.hook_timeout_secs
        };
        let log = self.root.join("logs").join(format!(
            "{}-{}{}.log",
            op.id,
            step.replace(' ', "-"),
            if start > 0 {
                format!("-{start}")
            } else {
                String::new()
            }
        ));
        run::run(argv, &vdir, &envs, Duration::from_secs(timeout), &log)
    }

    /// After the switch of install `id`: post-install hook, then health trials.
    fn after_switch(&mut self, id: i64) -> Result<Outcome, ApplyError> {
        let op = self.journal.op(id)?;
        let hooks = self.config.hooks.get(&op.kind).cloned().unwrap_or_default();
        if let Some(argv) = hooks.post_install {
            if let Err(reason) = self.run_step(&op, &argv, "post-install hook", 0) {
                return self.roll_back_install(id, &format!("post-install hook failed: {reason}"));
            }
        }
        self.health_trials(id)
    }

    /// Runs the health check of install `id`, its start counter raised first; a trial cut
    /// before it ended (crash, power loss) has counted as a failed start.
    fn health_trials(&mut self, id: i64) -> Result<Outcome, ApplyError> {
        let op = self.journal.op(id)?;
        let max = self.config.max_failed_starts.max(1);
        if op.starts >= max {
            return self.roll_back_install(
                id,
                &format!(
                    "the health check was cut {} times (crash or power loss during the trial); max_failed_starts is {max}",
                    op.starts
                ),
            );
        }
        let to = op.to.clone().unwrap_or_default();
        let vdir = self.component_dir(&op.component).join(&to);
        let manifest = match read_manifest(&vdir) {
            Ok(m) => m,
            Err(e) => return self.roll_back_install(id, &e.to_string()),
        };
        let start = self.journal.bump_starts(id)?;
        if let Some(argv) = &manifest.health {
            if let Err(reason) = self.run_step(&op, argv, "health check", start) {
                return self.roll_back_install(id, &format!("health check failed: {reason}"));
            }
        }
        self.journal.commit(
            id,
            &op.component,
            &op.kind,
            Some(&to),
            op.from.as_deref().filter(|f| *f != to),
        )?;
        self.prune(&op.component)?;
        Ok(Outcome::Installed {
            name: op.component.clone(),
            from: opt_version(&op.component, op.from.as_deref())?,
            to: parse_version(&op.component, &to)?,
        })
    }

    /// Records that install `id` is rolled back for `reason`, then does it.
    fn roll_back_install(&mut self, id: i64, reason: &str) -> Result<Outcome, ApplyError> {
        self.journal.set_state(id, "rolling_back", Some(reason))?;
        self.finish_install_rollback(id)
    }

    /// Switches back to the version active before install `id` (or removes the link after a
    /// first install) and removes the failed version. Idempotent.
    fn finish_install_rollback(&mut self, id: i64) -> Result<Outcome, ApplyError> {
        let op = self.journal.op(id)?;
        let cdir = self.component_dir(&op.component);
        fsx::switch_current(&cdir, op.from.as_deref()).map_err(io_err("switching", &cdir))?;
        if let Some(to) = op.to.as_deref().filter(|t| Some(*t) != op.from.as_deref()) {
            self.journal.forget_previous(&op.component, to)?;
            let vdir = cdir.join(to);
            fsx::retire_dir(&vdir, &self.trash_dir(), &format!("{id}-failed"))
                .map_err(io_err("removing", &vdir))?;
        }
        self.journal.set_state(id, "rolled_back", None)?;
        let to = op.to.as_deref().unwrap_or_default();
        Ok(Outcome::RolledBack {
            name: op.component.clone(),
            from: parse_version(&op.component, to)?,
            to: opt_version(&op.component, op.from.as_deref())?,
            reason: op.reason.unwrap_or_default(),
        })
    }

    /// Undoes install `id` before its switch: removes what was unpacked. Idempotent.
    fn abort_install(&mut self, id: i64, reason: &str) -> Result<(), ApplyError> {
        let op = self.journal.op(id)?;
        let staging = self.staging_dir(id);
        if fs::symlink_metadata(&staging).is_ok() {
            fs::remove_dir_all(&staging).map_err(io_err("removing", &staging))?;
        }
        let active = self.journal.component(&op.component)?.active;
        if let Some(to) = op.to.as_deref().filter(|t| Some(*t) != active.as_deref()) {
            self.journal.forget_previous(&op.component, to)?;
            let vdir = self.component_dir(&op.component).join(to);
            fsx::retire_dir(&vdir, &self.trash_dir(), &format!("{id}-aborted"))
                .map_err(io_err("removing", &vdir))?;
        }
        self.journal.set_state(id, "aborted", Some(reason))
    }

    /// Completes manual rollback `id` (link first, then the journal). Idempotent.
    fn finish_manual_rollback(&mut self, id: i64) -> Result<Outcome, ApplyError> {
        let op = self.journal.op(id)?;
        let (Some(from), Some(to)) = (op.from.clone(), op.to.clone()) else {
            return Err(ApplyError::Corrupt(format!(
                "journal entry {id} is a rollback without versions"
            )));
        };
        let cdir = self.component_dir(&op.component);
        fsx::switch_current(&cdir, Some(&to)).map_err(io_err("switching", &cdir))?;
        self.journal
            .commit(id, &op.component, &op.kind, Some(&to), Some(&from))?;
        Ok(Outcome::RolledBack {
            name: op.component.clone(),
            from: parse_version(&op.component, &from)?,
            to: Some(parse_version(&op.component, &to)?),
            reason: MANUAL_REASON.into(),
        })
    }

    /// Finishes or undoes every operation a crash left open, then tidies up: staging and
    /// trash emptied, temporary links removed, `current` links checked against the journal,
    /// old versions pruned.
    fn recover(&mut self) -> Result<Vec<Recovery>, ApplyError> {
        let mut out = Vec::new();
        for op in self.journal.open_ops()? {
            let (action, outcome) = match (op.op.as_str(), op.state.as_str()) {
                ("install", "unpacking" | "staged") => {
                    self.abort_install(
                        op.id,
                        "interrupted before the switch (crash or power loss)",
                    )?;
                    (
                        "removed the partly installed version; nothing had been switched",
                        None,
                    )
                }
                ("install", "switching") => {
                    let cdir = self.component_dir(&op.component);
                    let to = op.to.clone().unwrap_or_default();
                    fsx::switch_current(&cdir, Some(&to)).map_err(io_err("switching", &cdir))?;
                    self.journal.set_state(op.id, "switched", None)?;
                    (
                        "completed the interrupted switch, then ran the post-install hook and health check",
                        Some(self.after_switch(op.id)?),
                    )
                }
                ("install", "switched") => (
                    "ran the post-install hook and health check the crash cut off",
                    Some(self.after_switch(op.id)?),
                ),
                ("install", "checking") => (
                    "counted the cut health trial as a failed start and went on",
                    Some(self.health_trials(op.id)?),
                ),
                ("install", "rolling_back") => (
                    "finished the interrupted rollback",
                    Some(self.finish_install_rollback(op.id)?),
                ),
                ("rollback", "switching") => (
                    "finished the interrupted rollback",
                    Some(self.finish_manual_rollback(op.id)?),
                ),
                (o, s) => {
                    return Err(ApplyError::Corrupt(format!(
                        "journal entry {} is an {o} in unknown state {s:?}",
                        op.id
                    )))
                }
            };
            out.push(Recovery {
                id: op.id,
                component: op.component.clone(),
                op: op.op.clone(),
                found_state: op.state.clone(),
                action: action.into(),
                outcome,
            });
        }
        for sub in ["staging", "trash"] {
            let p = self.root.join(sub);
            fsx::empty_dir(&p).map_err(io_err("emptying", &p))?;
        }
        self.prune_logs()?;
        for (name, c) in self.journal.components()? {
            let cdir = self.component_dir(&name);
            let tmp = cdir.join(fsx::CURRENT_TMP);
            fsx::remove_file_if_any(&tmp).map_err(io_err("removing", &tmp))?;
            let link = fsx::read_current(&cdir).map_err(io_err("reading link in", &cdir))?;
            if link != c.active {
                let usable = c.active.as_ref().is_some_and(|v| cdir.join(v).is_dir());
                let target = if usable { c.active.clone() } else { None };
                fsx::switch_current(&cdir, target.as_deref())
                    .map_err(io_err("switching", &cdir))?;
                if !usable {
                    self.journal.set_active(&name, None)?;
                }
                out.push(Recovery {
                    id: 0,
                    component: name.clone(),
                    op: "repair".into(),
                    found_state: format!("current -> {}", link.as_deref().unwrap_or("(none)")),
                    action: format!(
                        "pointed current at {} as the journal records",
                        target.as_deref().unwrap_or("nothing")
                    ),
                    outcome: None,
                });
            }
            self.prune(&name)?;
        }
        Ok(out)
    }

    /// Deletes the logs of all but the last [`KEEP_LOGS_OF`] journal entries.
    fn prune_logs(&mut self) -> Result<(), ApplyError> {
        let Some(newest) = self.journal.history(1)?.first().map(|e| e.id) else {
            return Ok(());
        };
        let logs = self.root.join("logs");
        let entries = fs::read_dir(&logs).map_err(io_err("listing", &logs))?;
        for e in entries {
            let e = e.map_err(io_err("listing", &logs))?;
            let file_name = e.file_name().to_string_lossy().into_owned();
            let id = file_name
                .split('-')
                .next()
                .and_then(|n| n.parse::<i64>().ok());
            if id.is_some_and(|id| id <= newest - KEEP_LOGS_OF) {
                let p = e.path();
                fsx::remove_file_if_any(&p).map_err(io_err("removing", &p))?;
            }
        }
        Ok(())
    }

    /// Deletes old versions of `name` beyond `keep_versions`, never the active or previous.
    fn prune(&mut self, name: &str) -> Result<(), ApplyError> {
        let c = self.journal.component(name)?;
        let cdir = self.component_dir(name);
        let entries = match fs::read_dir(&cdir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("listing", &cdir)(e)),
        };
        let mut others = Vec::new();
        let mut protected = 0usize;
        for e in entries {
            let e = e.map_err(io_err("listing", &cdir))?;
            let file_name = e.file_name().to_string_lossy().into_owned();
            let Ok(v) = semver::Version::parse(&file_name) else {
                continue;
            };
            if !fs::symlink_metadata(e.path()).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            if Some(&file_name) == c.active.as_ref() || Some(&file_name) == c.previous.as_ref() {
                protected += 1;
            } else {
                others.push((v, file_name));
            }
        }
        others.sort_by(|a, b| b.0.cmp(&a.0));
        let room = self.config.keep_versions.saturating_sub(protected);
        for (_, old) in others.into_iter().skip(room) {
            let dir = cdir.join(&old);
            fsx::retire_dir(&dir, &self.trash_dir(), &format!("pruned-{name}-{old}"))
                .map_err(io_err("removing", &dir))?;
        }
        Ok(())
    }
}

/// A read-only look at an install root's journal: no lock taken, no recovery run, so
/// `otter-agent status` can read it while the daemon applies. What it shows may include an
/// operation still in progress (or one a crash interrupted, until the next
/// [`Applier::open`]).
#[derive(Debug)]
pub struct JournalView {
    journal: Option<journal::Journal>,
}

impl JournalView {
    /// Opens the journal of `install_root` read-only; an install root without a journal
    /// (nothing ever installed) gives an empty view.
    pub fn open(install_root: &Path) -> Result<JournalView, ApplyError> {
        let path = install_root.join("journal.sqlite");
        if !path.exists() {
            return Ok(JournalView { journal: None });
        }
        Ok(JournalView {
            journal: Some(journal::Journal::open_read_only(&path)?),
        })
    }

    /// Active version of every installed component, as last committed.
    pub fn installed(&self) -> Result<BTreeMap<String, semver::Version>, ApplyError> {
        match &self.journal {
            Some(j) => installed_in(j),
            None => Ok(BTreeMap::new()),
        }
    }

    /// Recent journal entries, newest first.
    pub fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>, ApplyError> {
        match &self.journal {
            Some(j) => j.history(limit),
            None => Ok(Vec::new()),
        }
    }
}

fn installed_in(j: &journal::Journal) -> Result<BTreeMap<String, semver::Version>, ApplyError> {
    let mut out = BTreeMap::new();
    for (name, c) in j.components()? {
        if let Some(v) = c.active {
            let v = parse_version(&name, &v)?;
            out.insert(name, v);
        }
    }
    Ok(out)
}

/// Whether the (verified) bundle at `bundle` declares a database migration
/// (`"migrates_database": true` in its `manifest.json`). Streams the bundle up to its
/// manifest only; the full checks happen in [`Applier::install`].
pub fn bundle_migrates_database(
    bundle: &Path,
    max_unpacked_bytes: u64,
) -> Result<bool, ApplyError> {
    match unpack::peek_manifest(bundle, max_unpacked_bytes) {
        Ok(m) => Ok(m.migrates_database),
        Err(unpack::UnpackError::Bundle(reason)) => Err(ApplyError::Bundle {
            path: bundle.to_path_buf(),
            reason,
        }),
        Err(unpack::UnpackError::Io(what, path, source)) => {
            Err(ApplyError::Io { what, path, source })
        }
    }
}

/// Reads the manifest kept in an unpacked version directory.
fn read_manifest(vdir: &Path) -> Result<unpack::Manifest, ApplyError> {
    let path = vdir.join("manifest.json");
    let bytes = fs::read(&path).map_err(io_err("reading", &path))?;
    unpack::Manifest::parse(&bytes)
        .map_err(|e| ApplyError::Corrupt(format!("{}: {e}", path.display())))
}
