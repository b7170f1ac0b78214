//! The agent's own record of what it did, for `otter-agent status` and for the daemon's
//! next pass: `STATE_DIR/status.json` (the last poll and its result, the last update
//! results, updates waiting for a maintenance window, targets not to try again, security
//! events not yet reported, the last backup), written atomically with the shared helper.
//! [`StatusReport`] adds what the install root's journal says (installed versions and
//! recent history) and the unfinished downloads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::apply::HistoryEntry;
use crate::download::PendingDownload;

/// The status file's name in the state dir.
pub const STATUS_FILE: &str = "status.json";
/// Most update results kept.
pub const MAX_RESULTS: usize = 20;
/// Most unreported security events kept (the server takes at most 64 per report).
pub const MAX_EVENTS: usize = 64;

/// Why the status file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a status file.
    #[error(
        "{path}: not an agent status file ({reason}); remove it, the next poll writes a new one"
    )]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// One poll of the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollRecord {
    /// Unix seconds.
    pub at: i64,
    /// Whether the poll (refresh, downloads, applies, report) ran without error.
    pub ok: bool,
    /// What went wrong, or a summary.
    pub message: String,
}

/// How one update attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultKind {
    /// Installed and healthy.
    Success,
    /// Failed before switching (download, verification, unpack, hook).
    Failed,
    /// Switched, failed its health check, rolled back.
    RolledBack,
}

/// One update attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRecord {
    /// Unix seconds.
    pub at: i64,
    /// The TUF target name.
    pub target: String,
    /// The component.
    pub component: String,
    /// The version tried.
    pub version: String,
    /// How it ended.
    pub result: ResultKind,
    /// Details for people.
    pub message: String,
}

/// A verified download waiting for a maintenance window (or for `otter-agent update`
/// when downloads only are configured).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// The TUF target name.
    pub target: String,
    /// The component.
    pub component: String,
    /// The version.
    pub version: String,
    /// Why it waits.
    pub reason: String,
}

/// A security event kept until a report reached the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// E.g. `metadata_refused`, `target_refused`.
    pub kind: String,
    /// Details.
    pub detail: String,
    /// Unix seconds.
    pub at: i64,
}

/// The last scheduled backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// Unix seconds.
    pub at: i64,
    /// Whether it succeeded.
    pub ok: bool,
    /// A summary or the error.
    pub message: String,
}

/// `STATE_DIR/status.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusFile {
    /// The last poll.
    pub last_poll: Option<PollRecord>,
    /// Failed polls in a row (drives the daemon's backoff).
    pub consecutive_failures: u32,
    /// Update attempts, newest first.
    pub results: Vec<UpdateRecord>,
    /// Verified downloads waiting to be applied.
    pub waiting: Vec<Waiting>,
    /// Targets that were rolled back or refused by the apply engine: not tried again
    /// (target name to reason) until `otter-agent update --retry-failed`.
    pub blocked: BTreeMap<String, String>,
    /// Security events the server has not acknowledged yet, oldest first.
    pub unreported_events: Vec<Event>,
    /// The last scheduled backup.
    pub last_backup: Option<BackupRecord>,
}

impl StatusFile {
    /// Reads the status file of `state_dir` (the default when there is none).
    pub fn load(state_dir: &Path) -> Result<StatusFile, StatusError> {
        let path = state_dir.join(STATUS_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StatusFile::default()),
            Err(source) => return Err(StatusError::Io { path, source }),
        };
        serde_json::from_slice(&bytes).map_err(|e| StatusError::Malformed {
            path,
            reason: e.to_string(),
        })
    }

    /// Writes it atomically (temp file, fsync, rename, fsync dir), mode 0600.
    pub fn save(&self, state_dir: &Path) -> Result<(), StatusError> {
        let path = state_dir.join(STATUS_FILE);
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|e| StatusError::Malformed {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        bytes.push(b'\n');
        otter_keys::atomic::write_atomic(&path, &bytes, 0o600)
            .map_err(|source| StatusError::Io { path, source })
    }

    /// Adds an update result (newest first, at most [`MAX_RESULTS`]).
    pub fn push_result(&mut self, r: UpdateRecord) {
        self.results.insert(0, r);
        self.results.truncate(MAX_RESULTS);
    }

    /// Adds a security event (the oldest are dropped past [`MAX_EVENTS`]).
    pub fn push_event(&mut self, kind: &str, detail: String, at: i64) {
        let detail: String = detail
            .chars()
            .filter(|c| !c.is_control())
            .take(1000)
            .collect();
        self.unreported_events.push(Event {
            kind: kind.into(),
            detail,
            at,
        });
        let excess = self.unreported_events.len().saturating_sub(MAX_EVENTS);
        self.unreported_events.drain(..excess);
    }
}

/// What `otter-agent status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// The device id, when enrolled.
    pub device_id: Option<String>,
    /// The server, when enrolled.
    pub server_url: Option<String>,
    /// The install root.
    pub install_root: Option<PathBuf>,
    /// Active version of each component (from the apply journal).
    pub installed: BTreeMap<String, String>,
    /// Unfinished downloads (resumed at the next poll).
    pub pending_downloads: Vec<PendingDownload>,
    /// Verified downloads waiting to be applied.
    pub waiting: Vec<Waiting>,
    /// The last poll.
    pub last_poll: Option<PollRecord>,
    /// Failed polls in a row.
    pub consecutive_failures: u32,
    /// The last update results, newest first.
    pub results: Vec<UpdateRecord>,
    /// Targets not tried again.
    pub blocked: BTreeMap<String, String>,
    /// Security events not reported yet.
    pub unreported_events: Vec<Event>,
    /// Recent journal entries, newest first.
    pub history: Vec<HistoryEntry>,
    /// Why the install root could not be read, if it could not (e.g. busy).
    pub apply_error: Option<String>,
    /// The last scheduled backup.
    pub last_backup: Option<BackupRecord>,
}

fn when(at: i64) -> String {
    chrono::DateTime::from_timestamp(at, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| at.to_string())
}

impl std::fmt::Display for StatusReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.device_id, &self.server_url) {
            (Some(d), Some(s)) => writeln!(f, "device {d} (server {s})")?,
            _ => writeln!(f, "not enrolled")?,
        }
        if let Some(r) = &self.install_root {
            writeln!(f, "install root {}", r.display())?;
        }
        writeln!(f, "installed:")?;
        if self.installed.is_empty() {
            writeln!(f, "  (nothing)")?;
        }
        for (name, v) in &self.installed {
            writeln!(f, "  {name} {v}")?;
        }
        if let Some(e) = &self.apply_error {
            writeln!(f, "  (install root not readable: {e})")?;
        }
        match &self.last_poll {
            Some(p) => writeln!(
                f,
                "last poll: {} {}: {}{}",
                when(p.at),
                if p.ok { "ok" } else { "FAILED" },
                p.message,
                if self.consecutive_failures > 1 {
                    format!(" ({} failures in a row)", self.consecutive_failures)
                } else {
                    String::new()
                }
            )?,
            None => writeln!(f, "last poll: never")?,
        }
        for w in &self.waiting {
            writeln!(
                f,
                "waiting: {} {} ({}): {}",
                w.component, w.version, w.target, w.reason
            )?;
        }
        for p in &self.pending_downloads {
            writeln!(f, "pending download: {} ({} bytes so far)", p.file, p.bytes)?;
        }
        if !self.results.is_empty() {
            writeln!(f, "last results:")?;
        }
        for r in self.results.iter().take(5) {
            let result = match r.result {
                ResultKind::Success => "success",
                ResultKind::Failed => "FAILED",
                ResultKind::RolledBack => "ROLLED BACK",
            };
            writeln!(
                f,
                "  {} {} {} {result}: {}",
                when(r.at),
                r.component,
                r.version,
                r.message
            )?;
        }
        for (t, why) in &self.blocked {
            writeln!(f, "not retried: {t}: {why}")?;
        }
        if !self.unreported_events.is_empty() {
            writeln!(
                f,
                "security events not yet reported: {}",
                self.unreported_events.len()
            )?;
        }
        if !self.history.is_empty() {
            writeln!(f, "history:")?;
        }
        for h in &self.history {
            writeln!(
                f,
                "  #{} {} {} {} -> {} {}{}",
                h.id,
                when(h.updated_at),
                h.op,
                h.component,
                h.to.as_deref().unwrap_or("-"),
                h.state,
                h.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            )?;
        }
        if let Some(b) = &self.last_backup {
            writeln!(
                f,
                "last backup: {} {}: {}",
                when(b.at),
                if b.ok { "ok" } else { "FAILED" },
                b.message
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_file_round_trips_and_is_private() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(StatusFile::load(tmp.path()).unwrap(), StatusFile::default());
        let mut s = StatusFile::default();
        for i in 0..(MAX_EVENTS + 5) {
            s.push_event("metadata_refused", format!("n{i}\n"), i as i64);
        }
        assert_eq!(s.unreported_events.len(), MAX_EVENTS);
        assert_eq!(s.unreported_events[0].detail, "n5");
        for i in 0..(MAX_RESULTS + 3) {
            s.push_result(UpdateRecord {
                at: i as i64,
                target: "t".into(),
                component: "c".into(),
                version: "1.0.0".into(),
                result: ResultKind::Success,
                message: String::new(),
            });
        }
        assert_eq!(s.results.len(), MAX_RESULTS);
        assert_eq!(s.results[0].at, (MAX_RESULTS + 2) as i64);
        s.save(tmp.path()).unwrap();
        assert_eq!(StatusFile::load(tmp.path()).unwrap(), s);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(tmp.path().join(STATUS_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(tmp.path().join(STATUS_FILE), b"{\"results\": 5}").unwrap();
        let e = StatusFile::load(tmp.path()).unwrap_err();
        assert!(e.to_string().contains("not an agent status file"), "{e}");
    }
}
