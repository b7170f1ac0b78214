//! `otter-agent run`: the daemon loop. Each iteration makes the scheduled backup when it is
//! due (`[backup] database`, `interval_secs`) and one update pass ([`crate::update`]), then
//! waits `poll_interval_secs` plus a random jitter; after a failed pass it waits
//! `retry_base_secs`, doubled after each further failure up to `max_backoff_secs` (plus
//! jitter). When an update waits for a maintenance window, the wait ends when the window
//! opens. SIGTERM or SIGINT ends the loop after the step in progress (a pass is crash-safe
//! anyway: downloads resume and the apply journal recovers); `--once` runs one iteration.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use otter_keys::time::UtcTime;
use rand_core::RngCore;

use crate::config::AgentConfig;
use crate::status::{BackupRecord, StatusFile};
use crate::update::{run_pass, PassError, PassOptions};

/// Why the daemon could not start or a backup could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Signal handling could not be set up.
    #[error("cannot watch for SIGTERM/SIGINT: {0}")]
    Signals(std::io::Error),
    /// The pass machinery refused to start (configuration, enrollment).
    #[error(transparent)]
    Pass(#[from] PassError),
    /// A backup failed.
    #[error("backup: {0}")]
    Backup(String),
}

/// A flag set by SIGTERM or SIGINT (watched by a small thread with its own signal
/// runtime); a second signal while the agent is stopping exits at once with status 130.
pub fn shutdown_flag() -> Result<Arc<AtomicBool>, DaemonError> {
    let flag = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    let f = flag.clone();
    std::thread::Builder::new()
        .name("otter-signals".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let (mut term, mut int) = match (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) {
                    (Ok(t), Ok(i)) => (t, i),
                    (Err(e), _) | (_, Err(e)) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(()));
                loop {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                    if f.swap(true, Ordering::SeqCst) {
                        eprintln!("otter-agent: second signal, exiting now");
                        std::process::exit(130);
                    }
                    eprintln!("otter-agent: stopping after the current step");
                }
            });
        })
        .map_err(DaemonError::Signals)?;
    match rx.recv() {
        Ok(Ok(())) => Ok(flag),
        Ok(Err(e)) => Err(DaemonError::Signals(e)),
        Err(_) => Err(DaemonError::Signals(std::io::Error::other(
            "the signal thread ended",
        ))),
    }
}

/// How the loop runs.
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// One iteration, then return.
    pub once: bool,
    /// Progress bars (on a terminal only).
    pub progress: bool,
}

/// The wait after a pass: the poll interval after success, an exponential backoff after
/// `failures` failed passes in a row, capped; jitter is added by the caller.
pub fn next_wait(cfg: &crate::config::UpdateConfig, failures: u32) -> Duration {
    if failures == 0 {
        return Duration::from_secs(cfg.poll_interval_secs);
    }
    let exp = failures.saturating_sub(1).min(30);
    let secs = cfg
        .retry_base_secs
        .saturating_mul(1u64 << exp)
        .min(cfg.max_backoff_secs);
    Duration::from_secs(secs)
}

/// A random jitter in `0..=max_secs` seconds (from the OS's random source).
pub fn jitter(max_secs: u64) -> Duration {
    if max_secs == 0 {
        return Duration::ZERO;
    }
    let ms = rand_core::OsRng.next_u64() % (max_secs.saturating_mul(1000) + 1);
    Duration::from_millis(ms)
}

/// Sleeps `d`, waking early when `stop` is set. Returns whether it was set.
pub fn sleep_unless(stop: &AtomicBool, d: Duration) -> bool {
    let end = Instant::now() + d;
    loop {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        let now = Instant::now();
        if now >= end {
            return false;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(200)));
    }
}

/// Seconds until the next scheduled backup is due (0: now; `None`: none configured).
fn backup_due_in(cfg: &AgentConfig, status: &StatusFile, now: i64) -> Option<u64> {
    cfg.backup.database.as_ref()?;
    let Some(last) = &status.last_backup else {
        return Some(0);
    };
    // A failed backup is tried again sooner: after the update backoff's cap at most.
    let interval = if last.ok {
        cfg.backup.interval_secs
    } else {
        cfg.backup.interval_secs.min(cfg.update.max_backoff_secs)
    };
    let due = last
        .at
        .saturating_add(i64::try_from(interval).unwrap_or(i64::MAX));
    Some(u64::try_from(due.saturating_sub(now)).unwrap_or(0))
}

/// Makes one backup of `database` with the enrolled identity, like `otter-agent backup`;
/// returns a one-line summary.
pub fn backup_once(
    state_dir: &Path,
    database: &Path,
    pack_size: usize,
    max_upload_bytes_per_sec: u64,
    parallel_uploads: usize,
) -> Result<String, DaemonError> {
    let shipping = crate::backup::Shipping {
        pack_size,
        max_upload_bytes_per_sec,
        parallel_uploads,
        progress: None,
    };
    let r = crate::backup::backup_enrolled(state_dir, database, &shipping)
        .map_err(|e| DaemonError::Backup(otter_keys::report::describe(&e)))?
        .report;
    Ok(format!(
        "backup #{}: {} pages, {} new chunks, {} bytes shipped",
        r.sequence,
        r.pages,
        r.new_chunks,
        r.pack_bytes + r.manifest_bytes
    ))
}

fn log(line: &str) {
    eprintln!("otter-agent: {line}");
}

/// Runs the loop until `stop` is set. Fails only when it cannot start (bad configuration,
/// not enrolled); failed passes are logged, recorded and retried. With `once`, runs one
/// iteration and returns the pass's error, if any.
pub fn run(
    cfg: &AgentConfig,
    opts: &DaemonOptions,
    stop: &Arc<AtomicBool>,
) -> Result<(), DaemonError> {
    let state = crate::update::check_enrolled(cfg)?;
    cfg.install_root().map_err(PassError::from)?;
    let state_dir = cfg.state_dir().map_err(PassError::from)?.to_path_buf();
    log(&format!(
        "device {} polling {} every {}s (+ up to {}s jitter); maintenance windows: {}",
        state.device_id,
        state.server_url,
        cfg.update.poll_interval_secs,
        cfg.update.jitter_secs,
        if cfg.update.maintenance_windows.is_empty() {
            "none (apply any time)".to_string()
        } else {
            let w: Vec<String> = cfg
                .update
                .maintenance_windows
                .iter()
                .map(|w| w.to_string())
                .collect();
            format!("{} ({:?} time)", w.join(", "), cfg.update.window_time)
        }
    ));
    loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        // The scheduled backup, when due.
        let status = StatusFile::load(&state_dir).unwrap_or_default();
        if let (Some(0), Some(db)) = (
            backup_due_in(cfg, &status, UtcTime::now().unix()),
            cfg.backup.database.as_deref(),
        ) {
            let result = backup_once(
                &state_dir,
                db,
                cfg.backup.pack_size,
                cfg.backup.max_upload_bytes_per_sec,
                cfg.backup.parallel_uploads,
            );
            let record = match &result {
                Ok(msg) => {
                    log(msg);
                    BackupRecord {
                        at: UtcTime::now().unix(),
                        ok: true,
                        message: msg.clone(),
                    }
                }
                Err(e) => {
                    log(&format!("backup failed: {e}"));
                    BackupRecord {
                        at: UtcTime::now().unix(),
                        ok: false,
                        message: e.to_string(),
                    }
                }
            };
            if let Ok(_lock) = crate::update::lock(&state_dir) {
                let mut s = StatusFile::load(&state_dir).unwrap_or_default();
                s.last_backup = Some(record);
                if let Err(e) = s.save(&state_dir) {
                    log(&format!("cannot record the backup: {e}"));
                }
            }
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        // Restores requested through the server (`[restore] allow_remote_requests`).
        match crate::restore_requests::pickup(cfg) {
            Ok(Some(m)) => log(&m),
            Ok(None) => {}
            Err(e) => log(&format!("restore requests: {e}")),
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        // Integrity pass and database checks, when due; their events go with this report.
        match crate::integrity::run_scheduled(cfg) {
            Ok(m) => {
                for e in &m.events {
                    log(&format!("security event {}: {}", e.kind, e.detail));
                }
            }
            Err(e) => log(&format!(
                "integrity or database check failed: {}",
                otter_keys::report::describe(&e)
            )),
        }
        let pass = run_pass(
            cfg,
            &PassOptions {
                progress: opts.progress,
                cancel: Some(stop.clone()),
                download_only: cfg.update.download_only,
                ..PassOptions::default()
            },
        );
        let mut wait = match &pass {
            Ok(r) => {
                for l in &r.lines {
                    log(l);
                }
                if let Some(Err(e)) = &r.reported {
                    log(&format!(
                        "report not delivered (kept for the next poll): {e}"
                    ));
                }
                let base = next_wait(&cfg.update, 0);
                match r.window_opens_in {
                    Some(s) => base.min(Duration::from_secs(s.saturating_add(1))),
                    None => base,
                }
            }
            Err(e) => {
                let failures = StatusFile::load(&state_dir)
                    .map(|s| s.consecutive_failures)
                    .unwrap_or(1)
                    .max(1);
                let w = next_wait(&cfg.update, failures);
                log(&format!(
                    "poll failed ({failures} in a row), next try in {}s: {}",
                    w.as_secs(),
                    otter_keys::report::describe(e)
                ));
                w
            }
        };
        if opts.once {
            log("one iteration done (--once)");
            return pass.map(|_| ()).map_err(DaemonError::Pass);
        }
        let status = StatusFile::load(&state_dir).unwrap_or_default();
        if let Some(b) = backup_due_in(cfg, &status, UtcTime::now().unix()) {
            wait = wait.min(Duration::from_secs(b));
        }
        if let Ok(m) = crate::integrity::MonitorState::load(&state_dir) {
            if let Some(c) = crate::integrity::next_due_in(cfg, &m, UtcTime::now().unix()) {
                wait = wait.min(Duration::from_secs(c));
            }
        }
        wait += jitter(cfg.update.jitter_secs);
        if sleep_unless(stop, wait) {
            break;
        }
    }
    log("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpdateConfig;

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap() {
        let cfg = UpdateConfig {
            poll_interval_secs: 900,
            retry_base_secs: 60,
            max_backoff_secs: 1000,
            ..UpdateConfig::default()
        };
        let secs: Vec<u64> = (0..7).map(|f| next_wait(&cfg, f).as_secs()).collect();
        assert_eq!(secs, vec![900, 60, 120, 240, 480, 960, 1000]);
        assert_eq!(next_wait(&cfg, u32::MAX).as_secs(), 1000);
    }

    #[test]
    fn jitter_stays_in_bounds_and_varies() {
        assert_eq!(jitter(0), Duration::ZERO);
        let v: Vec<Duration> = (0..50).map(|_| jitter(10)).collect();
        assert!(v.iter().all(|d| *d <= Duration::from_secs(10)));
        assert!(v.iter().any(|d| *d != v[0]), "{v:?}");
    }

    #[test]
    fn a_set_flag_ends_the_sleep_at_once() {
        let stop = AtomicBool::new(true);
        let t = Instant::now();
        assert!(sleep_unless(&stop, Duration::from_secs(30)));
        assert!(t.elapsed() < Duration::from_secs(1));
        let go = AtomicBool::new(false);
        assert!(!sleep_unless(&go, Duration::from_millis(10)));
    }

    #[test]
    fn backups_are_due_after_their_interval() {
        let mut cfg = AgentConfig::default();
        let mut s = StatusFile::default();
        assert_eq!(backup_due_in(&cfg, &s, 1000), None);
        cfg.backup.database = Some("/db".into());
        cfg.backup.interval_secs = 100;
        assert_eq!(backup_due_in(&cfg, &s, 1000), Some(0));
        s.last_backup = Some(BackupRecord {
            at: 950,
            ok: true,
            message: String::new(),
        });
        assert_eq!(backup_due_in(&cfg, &s, 1000), Some(50));
        assert_eq!(backup_due_in(&cfg, &s, 2000), Some(0));
        cfg.backup.interval_secs = 86_400;
        cfg.update.max_backoff_secs = 600;
        s.last_backup = Some(BackupRecord {
            at: 1000,
            ok: false,
            message: String::new(),
        });
        assert_eq!(backup_due_in(&cfg, &s, 1000), Some(600));
    }
}
