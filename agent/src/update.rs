//! One update pass (`otter-agent update`, and each iteration of `otter-agent run`):
//! refresh the trusted metadata from the enrolled server's repository by the TUF client
//! workflow, choose updates from the signed target entries ([`crate::select`]) with the
//! device's facts and the installed versions, download each chosen target (resumable,
//! verified: [`crate::download`]), apply it with [`crate::apply::Applier`] when a
//! maintenance window is open, and send the server a signed report of the installed
//! versions, the outcome and the security events (refused metadata or targets).
//!
//! Targets that were rolled back (failed health check) or refused by the apply engine are
//! remembered in the status file and not tried again, so a bad release cannot make a
//! terminal restart at every poll; a newer release is tried as usual.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use otter_keys::metadata::TargetFile;
use otter_keys::time::UtcTime;
use serde_json::{json, Value};

use crate::apply::{Applier, ApplyError, Expected, JournalView, Outcome, Recovery};
use crate::config::{in_windows, second_of_day, secs_until_window, AgentConfig};
use crate::device::{AgentState, DeviceError, Identity};
use crate::download::{self, DownloadOptions};
use crate::select::{choose_update, DeviceFacts};
use crate::status::{ResultKind, StatusError, StatusFile, UpdateRecord, Waiting};
use crate::tuf::{HttpFetcher, UpdateError, Updater, UpdaterConfig};

/// The downloads dir, under the state dir.
pub const DOWNLOADS_DIR: &str = "downloads";
/// The lock file that keeps two update passes from running at once, under the state dir.
pub const LOCK_FILE: &str = "update.lock";

/// Why a pass failed as a whole (single updates that fail are results, not errors).
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// The configuration lacks something.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Enrollment state or the device key.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The trusted metadata could not be refreshed (server down, or metadata refused).
    #[error("refreshing the trusted metadata: {0}{hint}", hint = clock_hint(.0))]
    Refresh(#[source] UpdateError),
    /// The install root could not be opened or read.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The status file.
    #[error(transparent)]
    Status(#[from] StatusError),
    /// A pre-migration snapshot could not be put back (or its records read).
    #[error(transparent)]
    Migration(#[from] crate::migration::MigrationError),
    /// Another pass holds the lock.
    #[error(
        "another otter-agent update pass is running on {0} (lock held); try again when it ends"
    )]
    Busy(PathBuf),
    /// A local file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// How one pass behaves beyond the configuration.
#[derive(Debug, Clone, Default)]
pub struct PassOptions {
    /// Download and verify only, apply nothing.
    pub download_only: bool,
    /// Apply even outside the maintenance windows (an operator's explicit decision).
    pub ignore_windows: bool,
    /// Forget targets blocked after a rollback and try them again.
    pub retry_failed: bool,
    /// Progress bars on a terminal.
    pub progress: bool,
    /// Do not send the report to the server.
    pub no_report: bool,
    /// When set (SIGTERM), downloads stop at the next chunk (their parts kept) and no
    /// further update is started; the pass ends normally.
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// What one pass did.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    /// Things for people, one per line (chosen updates, downloads, notes).
    pub lines: Vec<String>,
    /// Update attempts that ran to an end in this pass.
    pub results: Vec<UpdateRecord>,
    /// Verified downloads not applied in this pass.
    pub waiting: Vec<Waiting>,
    /// What opening the install root recovered from a crash.
    pub recoveries: Vec<Recovery>,
    /// Whether the report reached the server (`None`: not sent).
    pub reported: Option<Result<(), String>>,
    /// Seconds until a maintenance window opens when an update waits for one.
    pub window_opens_in: Option<u64>,
    /// Active versions at the end of the pass (`None`: the install root was not read).
    pub installed: Option<std::collections::BTreeMap<String, String>>,
}

impl PassReport {
    /// Whether an update failed or was rolled back in this pass.
    pub fn had_failures(&self) -> bool {
        self.results.iter().any(|r| r.result != ResultKind::Success)
    }
}

/// Holds `STATE_DIR/update.lock` for the lifetime of a pass.
pub struct PassLock {
    _file: File,
}

/// Takes the update lock of `state_dir`, failing at once if another pass holds it.
pub fn lock(state_dir: &Path) -> Result<PassLock, PassError> {
    let path = state_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| PassError::Io {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(PassLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(PassError::Busy(path)),
        Err(std::fs::TryLockError::Error(source)) => Err(PassError::Io { path, source }),
    }
}

/// A hint for expired metadata: either this terminal's clock is far off or the repository
/// (or a mirror freezing it) serves stale metadata.
fn clock_hint(e: &UpdateError) -> String {
    use otter_keys::metadata::MetadataError;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(MetadataError::Expired { now, .. }) = err.downcast_ref::<MetadataError>() {
            return format!(
                " (the terminal's clock says {now}: if that is far off, set the clock right; \
                 otherwise the repository or a mirror serves stale metadata)"
            );
        }
        cur = err.source();
    }
    String::new()
}

fn short(s: &str, n: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(n).collect()
}

fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    otter_keys::report::describe(e)
}

/// Whether a refresh failure is a security event (metadata refused) rather than the
/// server being unreachable.
fn refresh_event(e: &UpdateError) -> Option<&'static str> {
    use crate::tuf::FetchError;
    match e {
        UpdateError::Trust(_) | UpdateError::Target { .. } => Some("metadata_refused"),
        UpdateError::Fetch(FetchError::TooLarge { .. }) => Some("endless_data"),
        _ => None,
    }
}

fn record_of(outcome: &Outcome, target: &str, at: i64) -> UpdateRecord {
    match outcome {
        Outcome::Installed { name, from, to } => UpdateRecord {
            at,
            target: target.into(),
            component: name.clone(),
            version: to.to_string(),
            result: ResultKind::Success,
            message: match from {
                Some(f) if f == to => format!("{to} was already active"),
                Some(f) => format!("installed {to} over {f}"),
                None => format!("installed {to}"),
            },
        },
        Outcome::RolledBack {
            name,
            from,
            to,
            reason,
        } => UpdateRecord {
            at,
            target: target.into(),
            component: name.clone(),
            version: from.to_string(),
            result: ResultKind::RolledBack,
            message: format!(
                "{from} rolled back to {}: {}",
                to.as_ref()
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "nothing".into()),
                short(reason, 600)
            ),
        },
    }
}

/// Runs one pass (see the module documentation) with the configuration `cfg`.
pub fn run_pass(cfg: &AgentConfig, opts: &PassOptions) -> Result<PassReport, PassError> {
    let state_dir = cfg.state_dir()?.to_path_buf();
    let install_root = cfg.install_root()?.to_path_buf();
    let state = AgentState::load(&state_dir)?.ok_or_else(|| DeviceError::NotEnrolled {
        dir: state_dir.clone(),
    })?;
    let _lock = lock(&state_dir)?;
    let mut status = StatusFile::load(&state_dir).unwrap_or_default();
    if opts.retry_failed {
        status.blocked.clear();
    }
    let mut report = PassReport::default();
    let result = pass(
        cfg,
        opts,
        &state_dir,
        &install_root,
        &state,
        &mut status,
        &mut report,
    );
    let now = UtcTime::now().unix();
    let poll = match &result {
        Ok(()) => crate::status::PollRecord {
            at: now,
            ok: true,
            message: summary(&report),
        },
        Err(e) => crate::status::PollRecord {
            at: now,
            ok: false,
            message: short(&describe(e), 1000),
        },
    };
    status.consecutive_failures = if poll.ok {
        0
    } else {
        status.consecutive_failures.saturating_add(1)
    };
    status.last_poll = Some(poll);
    if !opts.no_report {
        let sent = send_report(&state_dir, &install_root, &mut status, &report);
        report.reported = Some(sent.map(|_| ()).map_err(|e| describe(&e)));
    }
    status.save(&state_dir)?;
    result.map(|()| report)
}

fn summary(r: &PassReport) -> String {
    let ok = r
        .results
        .iter()
        .filter(|x| x.result == ResultKind::Success)
        .count();
    let bad = r.results.len() - ok;
    match (r.results.len(), r.waiting.len()) {
        (0, 0) => "up to date".into(),
        _ => format!(
            "{ok} installed, {bad} failed or rolled back, {} waiting",
            r.waiting.len()
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn pass(
    cfg: &AgentConfig,
    opts: &PassOptions,
    state_dir: &Path,
    install_root: &Path,
    state: &AgentState,
    status: &mut StatusFile,
    report: &mut PassReport,
) -> Result<(), PassError> {
    let connect = Duration::from_secs(cfg.server.connect_timeout_secs);
    let timeout = Duration::from_secs(cfg.server.request_timeout_secs);
    let fetcher = HttpFetcher::new(connect, timeout)
        .map_err(|e| PassError::Refresh(UpdateError::Fetch(e)))?;
    let mut ucfg = UpdaterConfig::new(&state.metadata_url);
    ucfg.targets_url = Some(state.targets_url.clone());
    let tuf_dir = state_dir.join(crate::device::enroll::TUF_DIR);
    let now = UtcTime::now();
    let refreshed = Updater::new(&tuf_dir, ucfg, fetcher, now).and_then(|mut u| {
        u.refresh()?;
        Ok(u)
    });
    let mut updater = match refreshed {
        Ok(u) => u,
        Err(e) => {
            if let Some(kind) = refresh_event(&e) {
                status.push_event(kind, describe(&e), now.unix());
            }
            return Err(PassError::Refresh(e));
        }
    };
    // Top-level and delegated entries, each as the delegation search resolves it.
    let listed = match updater.list_targets() {
        Ok(l) => l,
        Err(e) => {
            if let Some(kind) = refresh_event(&e) {
                status.push_event(kind, describe(&e), now.unix());
            }
            return Err(PassError::Refresh(e));
        }
    };
    let targets: Vec<(String, TargetFile)> = listed
        .into_iter()
        .filter(|(name, _)| !status.blocked.contains_key(name))
        .collect();

    let (mut applier, recoveries) = Applier::open(install_root, cfg.apply.clone())?;
    for r in &recoveries {
        report.lines.push(format!(
            "recovered {} of {} (journal #{}, found {}): {}",
            r.op, r.component, r.id, r.found_state, r.action
        ));
        if let Some(o) = &r.outcome {
            let rec = record_of(o, "", now.unix());
            status.push_result(rec.clone());
            report.results.push(rec);
        }
    }
    report.recoveries = recoveries;
    // Migrations a crash or a failed restore left open: committed or restored first.
    let last_backup_at = status.last_backup.as_ref().filter(|b| b.ok).map(|b| b.at);
    for line in crate::migration::reconcile(cfg, state_dir, &applier, last_backup_at)? {
        report.lines.push(line);
    }
    let installed = applier.installed()?;
    let facts = DeviceFacts {
        device_id: state.device_id.clone(),
        hardware_model: state.hardware_model.clone(),
        channel: cfg.update.channel.clone(),
        groups: state.group.iter().cloned().collect::<BTreeSet<_>>(),
    };
    let decision = choose_update(&targets, &facts, &installed);
    for n in &decision.notes {
        report.lines.push(n.to_string());
    }

    let downloads = state_dir.join(DOWNLOADS_DIR);
    let mut keep: Vec<PathBuf> = Vec::new();
    for u in &decision.updates {
        if let Ok(name) = download::file_name(&u.target, &u.file) {
            keep.push(downloads.join(&name));
            keep.push(downloads.join(format!("{name}{}", download::PART_SUFFIX)));
        }
    }
    let keep_refs: Vec<&Path> = keep.iter().map(PathBuf::as_path).collect();
    let _ = download::prune(&downloads, &keep_refs);

    let dl_fetcher = HttpFetcher::new(connect, timeout)
        .map_err(|e| PassError::Refresh(UpdateError::Fetch(e)))?;
    let dl_opts = DownloadOptions {
        attempts: cfg.update.download_attempts,
        retry_delay: Duration::from_secs(2),
        progress: opts.progress,
        cancel: opts.cancel.clone(),
    };
    let stopping = || {
        opts.cancel
            .as_ref()
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst))
    };
    let windows = &cfg.update.maintenance_windows;
    let download_only = opts.download_only;
    status.waiting.clear();
    for u in &decision.updates {
        if stopping() {
            report
                .lines
                .push("stopping: no further update is started".into());
            break;
        }
        let version = u.version().to_string();
        let at = || UtcTime::now().unix();
        let fail = |status: &mut StatusFile, report: &mut PassReport, message: String| {
            let rec = UpdateRecord {
                at: at(),
                target: u.target.clone(),
                component: u.component.clone(),
                version: version.clone(),
                result: ResultKind::Failed,
                message: short(&message, 1000),
            };
            status.push_result(rec.clone());
            report.results.push(rec);
        };
        report.lines.push(format!(
            "update: {} {} -> {} ({})",
            u.component,
            u.from
                .as_ref()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "none".into()),
            version,
            u.target
        ));
        let url = match updater.target_url(&u.target, &u.file) {
            Ok(url) => url,
            Err(e) => {
                fail(status, report, describe(&e));
                continue;
            }
        };
        let got = match crate::delta::fetch_update(
            &updater,
            &dl_fetcher,
            state_dir,
            &downloads,
            u,
            &url,
            &targets,
            &dl_opts,
            cfg.update.metered,
            status,
            report,
        ) {
            Ok(Some(d)) => d,
            // Metered and no usable delta: waiting (reported by fetch_update).
            Ok(None) => continue,
            Err(e @ download::DownloadError::Cancelled { .. }) => {
                report.lines.push(describe(&e));
                break;
            }
            Err(e) => {
                if e.is_security_event() {
                    status.push_event("target_refused", describe(&e), at());
                }
                fail(status, report, describe(&e));
                continue;
            }
        };
        if !got.cached {
            report.lines.push(if got.resumed_from > 0 {
                format!(
                    "downloaded {} ({} bytes, resumed at byte {})",
                    u.target, u.file.length, got.resumed_from
                )
            } else {
                format!("downloaded {} ({} bytes)", u.target, u.file.length)
            });
        }
        let wait = |reason: String| Waiting {
            target: u.target.clone(),
            component: u.component.clone(),
            version: version.clone(),
            reason,
        };
        if download_only {
            let w = wait("downloaded only; apply with otter-agent update".into());
            report.lines.push(format!("waiting: {}", w.reason));
            status.waiting.push(w.clone());
            report.waiting.push(w);
            continue;
        }
        let sec = second_of_day(cfg.update.window_time);
        if !opts.ignore_windows && !in_windows(windows, sec) {
            let secs = u64::from(secs_until_window(windows, sec));
            let names: Vec<String> = windows.iter().map(|w| w.to_string()).collect();
            let w = wait(format!(
                "outside the maintenance windows {} ({:?} time); the next opens in {}h{:02}m",
                names.join(", "),
                cfg.update.window_time,
                secs / 3600,
                (secs % 3600) / 60
            ));
            report.lines.push(format!("waiting: {}", w.reason));
            report.window_opens_in = Some(secs);
            status.waiting.push(w.clone());
            report.waiting.push(w);
            continue;
        }
        if stopping() {
            report
                .lines
                .push(format!("stopping: {} not applied", u.target));
            break;
        }
        let expected = Expected {
            name: u.component.clone(),
            version: u.version().clone(),
            kind: u.custom.kind,
            target: u.target.clone(),
        };
        match crate::migration::install(cfg, state_dir, &mut applier, &got.path, &expected) {
            Ok(outcome) => {
                let rec = record_of(&outcome, &u.target, at());
                if rec.result != ResultKind::Success {
                    status.blocked.insert(u.target.clone(), rec.message.clone());
                }
                report
                    .lines
                    .push(format!("{}: {}", u.component, rec.message));
                status.push_result(rec.clone());
                report.results.push(rec);
            }
            Err(e) => {
                if matches!(
                    e,
                    crate::migration::MigrationError::Apply(
                        ApplyError::Bundle { .. }
                            | ApplyError::Mismatch { .. }
                            | ApplyError::Hook { .. }
                    )
                ) {
                    status
                        .blocked
                        .insert(u.target.clone(), short(&describe(&e), 600));
                }
                fail(status, report, describe(&e));
            }
        }
        // Applied: kept as the next delta's base; refused: removed.
        crate::delta::after_install(state_dir, &applier, u, &got.path);
    }
    report.installed = Some(
        applier
            .installed()?
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect(),
    );
    drop(applier);
    Ok(())
}

/// Sends the signed report: installed versions, the most telling result of this pass,
/// health, and the unreported security events (dropped once the server took them).
fn send_report(
    state_dir: &Path,
    install_root: &Path,
    status: &mut StatusFile,
    report: &PassReport,
) -> Result<Value, DeviceError> {
    let installed = match &report.installed {
        Some(i) => i.clone(),
        // The pass stopped before reading the install root: read its journal now, read-only
        // as `otter-agent status` does (no crash recovery, no wait on the lock another
        // process may hold); never create the install root just for a report.
        None if !install_root.exists() => Default::default(),
        None => JournalView::open(install_root)
            .and_then(|v| v.installed())
            .map(|i| i.into_iter().map(|(k, v)| (k, v.to_string())).collect())
            .unwrap_or_default(),
    };
    let worst = report
        .results
        .iter()
        .find(|r| r.result == ResultKind::RolledBack)
        .or_else(|| {
            report
                .results
                .iter()
                .find(|r| r.result == ResultKind::Failed)
        })
        .or_else(|| report.results.first());
    let last_update = worst.map(|r| {
        json!({
            "target": short(if r.target.is_empty() { &r.component } else { &r.target }, 128),
            "result": match r.result {
                ResultKind::Success => "success",
                ResultKind::Failed => "failed",
                ResultKind::RolledBack => "rolled_back",
            },
            "message": short(&r.message, 1000),
            "at": r.at,
        })
    });
    let health = if report
        .results
        .iter()
        .any(|r| r.result == ResultKind::RolledBack)
    {
        "degraded"
    } else if !installed.is_empty() {
        "ok"
    } else {
        "unknown"
    };
    let events: Vec<Value> = status
        .unreported_events
        .iter()
        .map(|e| json!({"kind": short(&e.kind, 128), "detail": short(&e.detail, 1000), "at": e.at}))
        .collect();
    let body = json!({
        "installed": installed,
        "last_update": last_update,
        "health": health,
        "security_events": events,
        "agent_version": env!("CARGO_PKG_VERSION"),
    });
    let answer = crate::device::send_report(state_dir, &body)?;
    status.unreported_events.clear();
    Ok(answer)
}

/// Loads the identity to check the state dir is usable before a long-running loop starts.
pub fn check_enrolled(cfg: &AgentConfig) -> Result<AgentState, PassError> {
    let dir = cfg.state_dir()?;
    let state = AgentState::load(dir)?.ok_or_else(|| DeviceError::NotEnrolled {
        dir: dir.to_path_buf(),
    })?;
    Identity::load(dir)?;
    Ok(state)
}
