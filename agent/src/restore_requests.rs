//! Restore requests made by an admin or restorer on the server: fetch this device's pending
//! ones (`GET /api/v1/device/restore-requests`, signed) and report how one ended
//! (`POST /api/v1/device/restore-requests/{id}`, signed). The restore itself is
//! `otter-agent restore --requested`, which `otter-agent run` starts when
//! `[restore] allow_remote_requests = true`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::device::{AgentState, DeviceClient, DeviceError, Identity};

/// One pending request, as the server gives it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PendingRequest {
    /// The request's id.
    pub id: i64,
    /// The backup to restore.
    pub sequence: u64,
    /// Its manifest header hash: the restored backup must have exactly this one.
    pub header_hash: String,
    /// Why it was asked.
    #[serde(default)]
    pub reason: String,
    /// Who asked.
    #[serde(default)]
    pub requested_by: String,
    /// A repair: restore the newest backup that verifies completely, starting at
    /// `sequence` and walking back to older ones.
    #[serde(default)]
    pub repair: bool,
}

fn enrolled(state_dir: &Path) -> Result<(AgentState, Identity, DeviceClient), DeviceError> {
    let state = AgentState::load(state_dir)?.ok_or_else(|| DeviceError::NotEnrolled {
        dir: state_dir.to_path_buf(),
    })?;
    let identity = Identity::load(state_dir)?;
    let client = DeviceClient::new(&state.server_url)?;
    Ok((state, identity, client))
}

/// This device's pending requests, oldest first.
pub fn pending(state_dir: &Path) -> Result<Vec<PendingRequest>, DeviceError> {
    let (state, identity, client) = enrolled(state_dir)?;
    let answer = client.get_signed(
        "/api/v1/device/restore-requests",
        &state.device_id,
        &identity.signing,
    )?;
    let mut list: Vec<PendingRequest> =
        serde_json::from_value(answer.get("requests").cloned().unwrap_or_default())
            .map_err(|e| DeviceError::Invalid(format!("the server's restore requests: {e}")))?;
    list.sort_by_key(|r| r.id);
    Ok(list)
}

/// Most refused backups a report lists (the server's bound); the message names them all.
pub const MAX_REFUSED: usize = 50;
/// Longest refusal reason sent, in characters.
pub const MAX_REASON: usize = 200;

/// How a requested restore ended, as facts (sent as `outcome` next to the message).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// The backup restored; `None` when none was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored_sequence: Option<u64>,
    /// Tables with more rows live than in the restored backup (empty: none); `None` when
    /// the live rows could not be counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_lost: Option<Vec<TableLoss>>,
    /// Backups a repair refused, newest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<RefusedBackup>,
}

/// Rows lost in one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableLoss {
    /// The table.
    pub table: String,
    /// Rows lost (`live - backup`).
    pub rows: u64,
    /// Its rows in the live database before the restore.
    pub live: u64,
    /// Its rows in the backup.
    pub backup: u64,
}

/// A backup a repair refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusedBackup {
    /// Its sequence.
    pub sequence: u64,
    /// Why.
    pub reason: String,
}

impl Outcome {
    /// Records the rows lost, from [`crate::backup::restore::rows_lost`].
    pub fn with_rows_lost(mut self, lost: &[crate::backup::restore::RowLoss]) -> Outcome {
        self.rows_lost = Some(
            lost.iter()
                .map(|l| TableLoss {
                    table: l.table.clone(),
                    rows: l.live.saturating_sub(l.backup),
                    live: l.live,
                    backup: l.backup,
                })
                .collect(),
        );
        self
    }

    /// Adds a refused backup (its reason without control characters, cut to
    /// [`MAX_REASON`]); beyond [`MAX_REFUSED`] only the message names it.
    pub fn refuse(&mut self, sequence: u64, reason: &str) {
        if self.refused.len() >= MAX_REFUSED {
            return;
        }
        let mut reason: String = reason
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_REASON)
            .collect();
        if reason.trim().is_empty() {
            reason = "refused".into();
        }
        self.refused.push(RefusedBackup { sequence, reason });
    }
}

/// Reports how request `id` ended (`ok`, with a message for people).
pub fn report(state_dir: &Path, id: i64, ok: bool, message: &str) -> Result<(), DeviceError> {
    report_outcome(state_dir, id, ok, message, None).map(|_| ())
}

/// Reports how request `id` ended, with its `outcome` as facts. A server that refuses the
/// outcome (400: one older than it, whose strict body has no such field, or one whose bounds
/// it exceeds) gets the report again without it, so the message always arrives. Returns
/// whether the server took the outcome.
pub fn report_outcome(
    state_dir: &Path,
    id: i64,
    ok: bool,
    message: &str,
    outcome: Option<&Outcome>,
) -> Result<bool, DeviceError> {
    let (state, identity, client) = enrolled(state_dir)?;
    let message: String = message
        .chars()
        .filter(|c| !c.is_control())
        .take(1000)
        .collect();
    let path = format!("/api/v1/device/restore-requests/{id}");
    let plain = json!({"ok": ok, "message": message});
    if let Some(o) = outcome {
        let mut body = plain.clone();
        body["outcome"] = serde_json::to_value(o)
            .map_err(|e| DeviceError::Invalid(format!("the restore outcome: {e}")))?;
        match client.post_signed(&path, &body, &state.device_id, &identity.signing) {
            Ok(_) => return Ok(true),
            Err(DeviceError::Server { status: 400, .. }) => {}
            Err(e) => return Err(e),
        }
    }
    client.post_signed(&path, &plain, &state.device_id, &identity.signing)?;
    Ok(false)
}

/// Why a requested restore could not be started from the daemon.
#[derive(Debug, thiserror::Error)]
pub enum PickupError {
    /// The server could not be asked.
    #[error("fetching restore requests: {0}")]
    Device(#[from] DeviceError),
    /// The configuration lacks something.
    #[error("{0}")]
    Config(String),
    /// `otter-agent restore --requested` could not be run.
    #[error("running `otter-agent restore --requested`: {0}")]
    Spawn(std::io::Error),
}

/// For `otter-agent run`: when `[restore] allow_remote_requests` is on and a request is
/// pending, runs `otter-agent restore --requested` (this executable) with the configured
/// database and stop/start commands; it reports the outcome to the server itself. Returns
/// what happened, for the log (`None`: disabled or nothing pending).
pub fn pickup(cfg: &crate::config::AgentConfig) -> Result<Option<String>, PickupError> {
    if !cfg.restore.allow_remote_requests {
        return Ok(None);
    }
    let state_dir = cfg
        .state_dir()
        .map_err(|e| PickupError::Config(e.to_string()))?;
    if pending(state_dir)?.is_empty() {
        return Ok(None);
    }
    let db = cfg.backup.database.as_deref().ok_or_else(|| {
        PickupError::Config(
            "a restore is requested but [backup] database is not set: nothing to restore".into(),
        )
    })?;
    let exe = std::env::current_exe().map_err(PickupError::Spawn)?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("restore")
        .arg("--requested")
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--database")
        .arg(db);
    for (flag, argv) in [
        ("--stop-command", &cfg.restore.stop_command),
        ("--start-command", &cfg.restore.start_command),
    ] {
        if let Some(argv) = argv {
            let text =
                serde_json::to_string(argv).map_err(|e| PickupError::Config(e.to_string()))?;
            cmd.arg(flag).arg(text);
        }
    }
    let out = cmd.output().map_err(PickupError::Spawn)?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
    Ok(Some(if out.status.success() {
        text(&out.stdout)
    } else {
        format!(
            "requested restore failed ({}): {}",
            out.status,
            text(&out.stderr)
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::restore::RowLoss;

    #[test]
    fn the_outcome_is_sent_in_the_servers_shape_and_bounded() {
        let mut o = Outcome {
            restored_sequence: Some(3),
            ..Outcome::default()
        }
        .with_rows_lost(&[RowLoss {
            table: "sales".into(),
            live: 100,
            backup: 88,
        }]);
        o.refuse(4, "pack 1f\nmissing");
        o.refuse(5, " \t");
        assert_eq!(
            serde_json::to_value(&o).unwrap(),
            json!({"restored_sequence": 3,
                   "rows_lost": [{"table": "sales", "rows": 12, "live": 100, "backup": 88}],
                   "refused": [{"sequence": 4, "reason": "pack 1fmissing"},
                               {"sequence": 5, "reason": "refused"}]})
        );
        let mut o = Outcome::default();
        for s in 1..=(MAX_REFUSED as u64 + 5) {
            o.refuse(s, &"x".repeat(MAX_REASON + 10));
        }
        assert_eq!(o.refused.len(), MAX_REFUSED);
        assert!(o.refused.iter().all(|r| r.reason.len() == MAX_REASON));
        assert_eq!(serde_json::to_value(Outcome::default()).unwrap(), json!({}));
        let none_lost = Outcome::default().with_rows_lost(&[]);
        assert_eq!(
            serde_json::to_value(none_lost).unwrap(),
            json!({"rows_lost": []})
        );
    }
}
