//! Migration-aware apply and rollback: a bundle whose manifest says
//! `"migrates_database": true` is applied only after the terminal's database (`[backup]
//! database`) was copied to a local pre-migration snapshot (and, by default, backed up to the
//! server); any rollback of that release, automatic (failed install or health check) or
//! manual (`otter-agent rollback`), puts that snapshot back, so old code never runs on a
//! migrated database. Records of which snapshot belongs to which transition live in
//! `STATE_DIR/migration/records.json`; see docs/apply.md, "Database migrations".

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use otter_keys::time::UtcTime;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::apply::{Applier, ApplyError, Expected, Outcome};
use crate::config::AgentConfig;

/// The directory of pre-migration snapshots and records, under the state dir (0700).
pub const MIGRATION_DIR: &str = "migration";
/// The records file, in [`MIGRATION_DIR`].
pub const RECORDS_FILE: &str = "records.json";
/// Finished records kept for history.
const KEEP_FINISHED: usize = 20;

fn default_true() -> bool {
    true
}
fn default_command_timeout() -> u64 {
    120
}

/// The agent config's `[migration]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationConfig {
    /// Also back the database up to the server before a migration (default true). When
    /// this backup fails the update is not applied. The local snapshot is always taken.
    #[serde(default = "default_true")]
    pub server_backup: bool,
    /// Stops the application (argv, no shell) before the pre-migration snapshot and before
    /// a restore; a failure means nothing is done.
    #[serde(default)]
    pub stop_command: Option<Vec<String>>,
    /// Starts the application again (argv) once the migrating update or rollback ended,
    /// whatever the outcome.
    #[serde(default)]
    pub start_command: Option<Vec<String>>,
    /// Deadline of the stop and start commands, in seconds (default 120).
    #[serde(default = "default_command_timeout")]
    pub command_timeout_secs: u64,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        MigrationConfig {
            server_backup: true,
            stop_command: None,
            start_command: None,
            command_timeout_secs: default_command_timeout(),
        }
    }
}

/// Where a migration record stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordState {
    /// Snapshot taken, the install may be running (or was cut by a crash).
    Prepared,
    /// The migrating version was installed and is healthy.
    Committed,
    /// The snapshot is being put back (a crash here is finished on the next start).
    Restoring,
    /// The snapshot was put back: the database is as it was before the migration.
    Restored,
}

/// Which pre-migration snapshot belongs to which transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationRecord {
    /// Increasing id.
    pub id: u64,
    /// Component.
    pub component: String,
    /// Version active before (`None`: first install).
    pub from: Option<String>,
    /// The migrating version.
    pub to: String,
    /// Its TUF target name.
    pub target: String,
    /// The live database.
    pub database: PathBuf,
    /// File name of the local snapshot in [`MIGRATION_DIR`] (`None`: removed once a later
    /// backup existed).
    pub snapshot: Option<String>,
    /// SHA-256 of the snapshot file, checked before it is put back.
    pub snapshot_sha256: String,
    /// Sequence of the server backup taken before the migration, when one was.
    pub server_backup: Option<u64>,
    /// Where it stands.
    pub state: RecordState,
    /// Unix seconds when it was created.
    pub created_at: i64,
    /// Unix seconds of its last change.
    pub updated_at: i64,
}

/// `STATE_DIR/migration/records.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Records {
    /// The next record's id.
    pub next_id: u64,
    /// Records, oldest first.
    pub records: Vec<MigrationRecord>,
}

/// Why a migration step failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The apply engine failed (the update itself).
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The bundle migrates a database but none is configured.
    #[error(
        "{target} declares a database migration but no database is configured ([backup] \
         database in the agent config); the update was not applied"
    )]
    NoDatabase {
        /// The target.
        target: String,
    },
    /// The pre-migration backup failed: the update was not applied.
    #[error("pre-migration backup of {database} failed: {reason}; the update was not applied")]
    Backup {
        /// The database.
        database: PathBuf,
        /// What failed.
        reason: String,
    },
    /// Putting the pre-migration snapshot back failed.
    #[error(
        "restoring the pre-migration database {database} for {component} failed: {reason}; \
         the application was left stopped where possible; fix the cause and run otter-agent \
         update or rollback again (the restore is retried on every start)"
    )]
    Restore {
        /// Component.
        component: String,
        /// The database.
        database: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A manual rollback that cannot be done safely.
    #[error("{0}")]
    Refused(String),
    /// The records file or the snapshot directory.
    #[error("{path}: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A stop or start command failed.
    #[error("the application's {what} command {argv:?} failed: {reason}")]
    Command {
        /// `stop` or `start`.
        what: &'static str,
        /// The command.
        argv: Vec<String>,
        /// Exit status, deadline or spawn error.
        reason: String,
    },
}

fn now() -> i64 {
    UtcTime::now().unix()
}

/// The migration dir of `state_dir`, created 0700.
fn dir(state_dir: &Path) -> Result<PathBuf, MigrationError> {
    let d = state_dir.join(MIGRATION_DIR);
    let state = |e: io::Error| MigrationError::State {
        path: d.clone(),
        reason: e.to_string(),
    };
    match fs::DirBuilder::new().mode(0o700).create(&d) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => {}
        Err(e) => return Err(state(e)),
    }
    fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).map_err(state)?;
    Ok(d)
}

impl Records {
    /// Loads the records of `state_dir` (none yet: empty).
    pub fn load(state_dir: &Path) -> Result<Records, MigrationError> {
        let path = state_dir.join(MIGRATION_DIR).join(RECORDS_FILE);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| MigrationError::State {
                path,
                reason: format!("not a migration records file: {e}"),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Records::default()),
            Err(e) => Err(MigrationError::State {
                path,
                reason: e.to_string(),
            }),
        }
    }

    /// Writes the records atomically (0600).
    pub fn save(&self, state_dir: &Path) -> Result<(), MigrationError> {
        let path = dir(state_dir)?.join(RECORDS_FILE);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| MigrationError::State {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        otter_keys::atomic::write_atomic(&path, &bytes, 0o600).map_err(|e| MigrationError::State {
            path,
            reason: e.to_string(),
        })
    }

    fn set(&mut self, id: u64, state: RecordState) {
        if let Some(r) = self.records.iter_mut().find(|r| r.id == id) {
            r.state = state;
            r.updated_at = now();
        }
    }

    fn get(&self, id: u64) -> Option<&MigrationRecord> {
        self.records.iter().find(|r| r.id == id)
    }
}

/// Runs `argv` (no shell) with a deadline.
fn run_command(
    what: &'static str,
    argv: &[String],
    timeout: Duration,
) -> Result<(), MigrationError> {
    let fail = |reason: String| MigrationError::Command {
        what,
        argv: argv.to_vec(),
        reason,
    };
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| fail("empty command".into()))?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| fail(format!("cannot start it: {e}")))?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(fail(status.to_string())),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("still running after {timeout:?}; killed")));
            }
            Err(e) => return Err(fail(e.to_string())),
        }
    }
}

/// The application, stopped through the configured command and started again on
/// [`App::start`].
struct App<'a> {
    cfg: &'a MigrationConfig,
}

impl<'a> App<'a> {
    fn stop(cfg: &'a MigrationConfig) -> Result<App<'a>, MigrationError> {
        if let Some(argv) = &cfg.stop_command {
            run_command("stop", argv, Duration::from_secs(cfg.command_timeout_secs))?;
        }
        Ok(App { cfg })
    }

    fn start(self) -> Result<(), MigrationError> {
        match &self.cfg.start_command {
            Some(argv) => run_command(
                "start",
                argv,
                Duration::from_secs(self.cfg.command_timeout_secs),
            ),
            None => Ok(()),
        }
    }
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn sync_dir(d: &Path) -> io::Result<()> {
    fs::File::open(d)?.sync_all()
}

/// Takes the local pre-migration snapshot `pre-<id>.sqlite` (0600, fsynced); returns its
/// file name and SHA-256.
fn take_local_snapshot(
    database: &Path,
    mdir: &Path,
    id: u64,
) -> Result<(String, String), MigrationError> {
    let fail = |reason: String| MigrationError::Backup {
        database: database.to_path_buf(),
        reason,
    };
    let snap = crate::backup::snapshot::take_snapshot(database, mdir)
        .map_err(|e| fail(otter_keys::report::describe(&e)))?;
    let name = format!("pre-{id}.sqlite");
    let path = mdir.join(&name);
    fs::set_permissions(snap.path(), fs::Permissions::from_mode(0o600))
        .and_then(|()| fs::File::open(snap.path())?.sync_all())
        .and_then(|()| fs::rename(snap.path(), &path))
        .and_then(|()| sync_dir(mdir))
        .map_err(|e| fail(format!("keeping the snapshot as {}: {e}", path.display())))?;
    drop(snap);
    let sha = sha256_file(&path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    Ok((name, sha))
}

/// Backs `database` up to the enrolled server (like `otter-agent backup`); returns the
/// backup's sequence.
fn server_backup(cfg: &AgentConfig, state_dir: &Path, database: &Path) -> Result<u64, String> {
    use crate::backup::{backup_enrolled, EnrolledBackupError, Shipping};
    use crate::device::DeviceError;
    let shipping = Shipping {
        pack_size: cfg.backup.pack_size,
        max_upload_bytes_per_sec: 0,
        parallel_uploads: 1,
        progress: None,
    };
    match backup_enrolled(state_dir, database, &shipping) {
        Ok(shipped) => Ok(shipped.report.sequence),
        Err(EnrolledBackupError::Device(DeviceError::NotEnrolled { .. })) => Err(format!(
            "{} is not enrolled, so no server backup can be made (set [migration] \
             server_backup = false to rely on the local snapshot only)",
            state_dir.display()
        )),
        Err(e) => Err(otter_keys::report::describe(&e)),
    }
}

fn sidecar(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Puts record `rec`'s snapshot back over its database: checked copy beside it, the
/// migrated database's `-wal`/`-journal`/`-shm` removed, one `rename(2)`, fsyncs.
/// Idempotent: a crash anywhere is finished by running it again.
fn put_back(state_dir: &Path, rec: &MigrationRecord) -> Result<(), MigrationError> {
    let fail = |reason: String| MigrationError::Restore {
        component: rec.component.clone(),
        database: rec.database.clone(),
        reason,
    };
    let name = rec.snapshot.as_deref().ok_or_else(|| {
        fail(format!(
            "the local pre-migration snapshot was removed after a later backup; restore the \
             server backup #{} with `otter-agent restore --id {}` (application stopped)",
            rec.server_backup.unwrap_or(0),
            rec.server_backup.unwrap_or(0)
        ))
    })?;
    let snap = state_dir.join(MIGRATION_DIR).join(name);
    let sha = sha256_file(&snap).map_err(|e| fail(format!("{}: {e}", snap.display())))?;
    if sha != rec.snapshot_sha256 {
        return Err(fail(format!(
            "{} does not have the SHA-256 recorded when it was taken (damaged); nothing replaced",
            snap.display()
        )));
    }
    let users = crate::backup::restore::processes_using(&rec.database);
    if !users.is_empty() {
        return Err(fail(format!(
            "processes {users:?} have the database open: configure [migration] stop_command; \
             nothing replaced"
        )));
    }
    let parent = match rec.database.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = rec
        .database
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "database".into());
    let temp = parent.join(format!(".{file_name}.premigration-{}", rec.id));
    let mode = fs::metadata(&rec.database).map_or(0o600, |m| m.permissions().mode() & 0o777);
    let copy = || -> io::Result<()> {
        let _ = fs::remove_file(&temp);
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        let mut input = fs::File::open(&snap)?;
        io::copy(&mut input, &mut out)?;
        out.flush()?;
        out.sync_all()
    };
    if let Err(e) = copy() {
        let _ = fs::remove_file(&temp);
        return Err(fail(format!(
            "copying the snapshot to {}: {e}; nothing replaced",
            temp.display()
        )));
    }
    // The migrated database's logs belong to the state being discarded: left beside the
    // restored file they would be applied to it.
    for s in ["-wal", "-journal", "-shm"] {
        let p = sidecar(&rec.database, s);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(format!("removing {}: {e}", p.display()))),
        }
    }
    fs::rename(&temp, &rec.database)
        .and_then(|()| sync_dir(&parent))
        .map_err(|e| fail(format!("renaming {} into place: {e}", temp.display())))?;
    Ok(())
}

/// Marks record `id` restoring, puts its snapshot back and marks it restored.
fn restore_record(state_dir: &Path, records: &mut Records, id: u64) -> Result<(), MigrationError> {
    records.set(id, RecordState::Restoring);
    records.save(state_dir)?;
    let rec = records
        .get(id)
        .cloned()
        .ok_or_else(|| MigrationError::Refused(format!("no migration record {id}")))?;
    put_back(state_dir, &rec)?;
    records.set(id, RecordState::Restored);
    records.save(state_dir)?;
    forget_snapshot(state_dir, records, id)
}

/// Removes record `id`'s local snapshot (its job is done) and records that.
fn forget_snapshot(state_dir: &Path, records: &mut Records, id: u64) -> Result<(), MigrationError> {
    let name = records
        .records
        .iter_mut()
        .find(|r| r.id == id)
        .and_then(|r| r.snapshot.take());
    if let Some(name) = name {
        records.save(state_dir)?;
        let _ = fs::remove_file(state_dir.join(MIGRATION_DIR).join(name));
    }
    Ok(())
}

/// How the install of a prepared record ended, from the apply journal.
enum Decision {
    Commit,
    Restore,
    Pending,
}

fn decide(applier: &Applier, rec: &MigrationRecord) -> Result<Decision, ApplyError> {
    let entry = applier.history(200)?.into_iter().find(|e| {
        e.op == "install" && e.component == rec.component && e.to.as_deref() == Some(&rec.to)
    });
    Ok(match entry.as_ref().map(|e| e.state.as_str()) {
        Some("committed") => Decision::Commit,
        Some("aborted" | "rolled_back") | None => Decision::Restore,
        Some(_) => Decision::Pending,
    })
}

fn with_note(outcome: Outcome, note: &str) -> Outcome {
    match outcome {
        Outcome::RolledBack {
            name,
            from,
            to,
            reason,
        } => Outcome::RolledBack {
            name,
            from,
            to,
            reason: format!("{reason}; {note}"),
        },
        o => o,
    }
}

/// Installs `bundle` with `applier` like [`Applier::install`], taking the pre-migration
/// backup first when the bundle declares a migration, and putting it back when the install
/// fails or is rolled back. A failed pre-migration backup means nothing is applied.
pub fn install(
    cfg: &AgentConfig,
    state_dir: &Path,
    applier: &mut Applier,
    bundle: &Path,
    expected: &Expected,
) -> Result<Outcome, MigrationError> {
    let migrates = crate::apply::bundle_migrates_database(bundle, cfg.apply.max_unpacked_bytes)?;
    let from = applier
        .installed()?
        .get(&expected.name)
        .map(ToString::to_string);
    if !migrates || from.as_deref() == Some(expected.version.to_string().as_str()) {
        return Ok(applier.install(bundle, expected)?);
    }
    let database = cfg
        .backup
        .database
        .clone()
        .ok_or_else(|| MigrationError::NoDatabase {
            target: expected.target.clone(),
        })?;
    let mdir = dir(state_dir)?;
    crate::backup::snapshot::remove_leftovers(&mdir);
    let mut records = Records::load(state_dir)?;
    let id = records.next_id.max(1);
    let app = App::stop(&cfg.migration).map_err(|e| MigrationError::Backup {
        database: database.clone(),
        reason: otter_keys::report::describe(&e),
    })?;
    let prepared = (|| -> Result<(String, String, Option<u64>), MigrationError> {
        let (name, sha) = take_local_snapshot(&database, &mdir, id)?;
        let seq = if cfg.migration.server_backup {
            match server_backup(cfg, state_dir, &database) {
                Ok(s) => Some(s),
                Err(reason) => {
                    let _ = fs::remove_file(mdir.join(&name));
                    return Err(MigrationError::Backup {
                        database: database.clone(),
                        reason: format!("backup to the server: {reason}"),
                    });
                }
            }
        } else {
            None
        };
        Ok((name, sha, seq))
    })();
    let (snapshot, snapshot_sha256, seq) = match prepared {
        Ok(p) => p,
        Err(e) => {
            let _ = app.start();
            return Err(e);
        }
    };
    let at = now();
    records.next_id = id + 1;
    records.records.push(MigrationRecord {
        id,
        component: expected.name.clone(),
        from,
        to: expected.version.to_string(),
        target: expected.target.clone(),
        database,
        snapshot: Some(snapshot),
        snapshot_sha256,
        server_backup: seq,
        state: RecordState::Prepared,
        created_at: at,
        updated_at: at,
    });
    if let Err(e) = records.save(state_dir) {
        let _ = app.start();
        return Err(e);
    }
    let result = applier.install(bundle, expected);
    let rec = records.get(id).cloned();
    let settled = match rec {
        Some(rec) => settle(state_dir, applier, &mut records, &rec),
        None => Ok(None),
    };
    let started = app.start();
    let note = match settled {
        Ok(Some(n)) => n,
        Ok(None) => String::new(),
        Err(e) => return Err(e),
    };
    let outcome = result?;
    started?;
    Ok(if note.is_empty() {
        outcome
    } else {
        with_note(outcome, &note)
    })
}

/// Commits or restores a prepared record as the journal says; `Some(note)` when the
/// database was put back.
fn settle(
    state_dir: &Path,
    applier: &Applier,
    records: &mut Records,
    rec: &MigrationRecord,
) -> Result<Option<String>, MigrationError> {
    match decide(applier, rec)? {
        Decision::Commit => {
            records.set(rec.id, RecordState::Committed);
            records.save(state_dir)?;
            Ok(None)
        }
        Decision::Restore => {
            restore_record(state_dir, records, rec.id)?;
            Ok(Some(format!(
                "the database {} was restored to its pre-migration snapshot",
                rec.database.display()
            )))
        }
        Decision::Pending => Ok(None),
    }
}

/// Finishes what a crash or an earlier failure left: prepared records are committed or
/// restored as the apply journal says (call after [`Applier::open`] recovered it),
/// interrupted restores are done again, and local snapshots of committed migrations are
/// removed once a later successful backup exists (`last_backup_at`, unix seconds). Returns
/// lines for people.
pub fn reconcile(
    cfg: &AgentConfig,
    state_dir: &Path,
    applier: &Applier,
    last_backup_at: Option<i64>,
) -> Result<Vec<String>, MigrationError> {
    let mut records = Records::load(state_dir)?;
    let mut lines = Vec::new();
    let open: Vec<MigrationRecord> = records
        .records
        .iter()
        .filter(|r| matches!(r.state, RecordState::Prepared | RecordState::Restoring))
        .cloned()
        .collect();
    for rec in open {
        let restore = match rec.state {
            RecordState::Restoring => true,
            _ => matches!(decide(applier, &rec)?, Decision::Restore),
        };
        if restore {
            let app = App::stop(&cfg.migration)?;
            let r = restore_record(state_dir, &mut records, rec.id);
            let started = app.start();
            r?;
            started?;
            lines.push(format!(
                "{} {}: restored the pre-migration database {} (an interrupted rollback)",
                rec.component,
                rec.to,
                rec.database.display()
            ));
        } else if let Some(note) = settle(state_dir, applier, &mut records, &rec)? {
            lines.push(note);
        }
    }
    let mdir = state_dir.join(MIGRATION_DIR);
    let mut changed = false;
    for r in &mut records.records {
        let later_backup = last_backup_at.is_some_and(|t| t > r.updated_at);
        if r.state == RecordState::Committed && later_backup && r.snapshot.is_some()
            || r.state == RecordState::Restored && r.snapshot.is_some()
        {
            if let Some(name) = r.snapshot.take() {
                let _ = fs::remove_file(mdir.join(&name));
                changed = true;
            }
        }
    }
    let finished = records
        .records
        .iter()
        .filter(|r| r.snapshot.is_none() && r.state != RecordState::Prepared)
        .count();
    if finished > KEEP_FINISHED {
        let mut drop_n = finished - KEEP_FINISHED;
        records.records.retain(|r| {
            if drop_n > 0 && r.snapshot.is_none() && r.state != RecordState::Prepared {
                drop_n -= 1;
                false
            } else {
                true
            }
        });
        changed = true;
    }
    if changed {
        records.save(state_dir)?;
    }
    Ok(lines)
}

/// `otter-agent rollback`: switches `component` back to its previous version; when the
/// version switched away from migrated the database from that previous version, the
/// pre-migration snapshot is put back too (application stopped and started through the
/// configured commands). Rolling forward by rollback onto a version whose migration was
/// undone is refused.
pub fn rollback(
    cfg: &AgentConfig,
    state_dir: &Path,
    applier: &mut Applier,
    component: &str,
) -> Result<Outcome, MigrationError> {
    for line in reconcile(cfg, state_dir, applier, None)? {
        eprintln!("otter-agent: {line}");
    }
    let mut records = Records::load(state_dir)?;
    let active = applier.installed()?.get(component).map(ToString::to_string);
    let previous = applier.previous_version(component)?;
    let (Some(active), Some(previous)) = (active, previous) else {
        return Ok(applier.rollback(component)?);
    };
    let migrated = records
        .records
        .iter()
        .rev()
        .find(|r| {
            r.component == component
                && r.to == active
                && r.from.as_deref() == Some(previous.as_str())
                && matches!(r.state, RecordState::Committed | RecordState::Restoring)
        })
        .cloned();
    if migrated.is_none()
        && records.records.iter().rev().any(|r| {
            r.component == component
                && r.to == previous
                && r.from.as_deref() == Some(active.as_str())
                && r.state == RecordState::Restored
        })
    {
        return Err(MigrationError::Refused(format!(
            "{component} {previous} migrated the database and that migration was undone; a \
             rollback onto it would run it on the old database: install it again with \
             `otter-agent update --retry-failed`"
        )));
    }
    let Some(rec) = migrated else {
        return Ok(applier.rollback(component)?);
    };
    if rec.snapshot.is_none() {
        return Err(MigrationError::Refused(format!(
            "{component} {active} migrated the database {} and its local pre-migration \
             snapshot was removed after a later backup; stop the application, restore the \
             server backup with `otter-agent restore --id {}` (rows written since are lost), \
             then roll back; nothing was changed",
            rec.database.display(),
            rec.server_backup
                .map_or_else(|| "ID".to_string(), |s| s.to_string())
        )));
    }
    let app = App::stop(&cfg.migration)?;
    let result = (|| -> Result<Outcome, MigrationError> {
        records.set(rec.id, RecordState::Restoring);
        records.save(state_dir)?;
        let outcome = match applier.rollback(component) {
            Ok(o) => o,
            Err(e) => {
                records.set(rec.id, RecordState::Committed);
                records.save(state_dir)?;
                return Err(e.into());
            }
        };
        put_back(state_dir, &rec)?;
        records.set(rec.id, RecordState::Restored);
        records.save(state_dir)?;
        forget_snapshot(state_dir, &mut records, rec.id)?;
        Ok(with_note(
            outcome,
            &format!(
                "the database {} was restored to its pre-migration snapshot (rows written \
                 since the update are lost)",
                rec.database.display()
            ),
        ))
    })();
    let started = app.start();
    let outcome = result?;
    started?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_privately_and_refuse_unknown_members() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(Records::load(tmp.path()).unwrap(), Records::default());
        let rec = MigrationRecord {
            id: 1,
            component: "pos-app".into(),
            from: Some("1.0.0".into()),
            to: "2.0.0".into(),
            target: "pos-app-2.0.0.tar.zst".into(),
            database: "/var/lib/pos.db".into(),
            snapshot: Some("pre-1.sqlite".into()),
            snapshot_sha256: "ab".repeat(32),
            server_backup: Some(7),
            state: RecordState::Prepared,
            created_at: 1,
            updated_at: 1,
        };
        let r = Records {
            next_id: 2,
            records: vec![rec],
        };
        r.save(tmp.path()).unwrap();
        assert_eq!(Records::load(tmp.path()).unwrap(), r);
        let path = tmp.path().join(MIGRATION_DIR).join(RECORDS_FILE);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&tmp.path().join(MIGRATION_DIR)), 0o700);
        let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        v["records"][0]["surprise"] = serde_json::json!(1);
        fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        let e = Records::load(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("records.json") && e.contains("surprise"), "{e}");
    }

    #[test]
    fn commands_fail_on_status_and_deadline() {
        run_command("stop", &["/bin/true".into()], Duration::from_secs(5)).unwrap();
        let e = run_command("stop", &["/bin/false".into()], Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("stop command"), "{e}");
        let started = Instant::now();
        let e = run_command(
            "start",
            &["/bin/sleep".into(), "10".into()],
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(e.to_string().contains("killed"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(run_command("stop", &[], Duration::from_secs(1)).is_err());
    }
}
