//! Restore requests made by an admin or restorer on the server: fetch this device's pending
//! ones (`GET /api/v1/device/restore-requests`, signed) and report how one ended
//! (`POST /api/v1/device/restore-requests/{id}`, signed). The restore itself is
//! `otter-agent restore --requested`, which `otter-agent run` starts when
//! `[restore] allow_remote_requests = true`.

use std::path::Path;

use serde::Deserialize;
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

/// Reports how request `id` ended (`ok`, with a message for people).
pub fn report(state_dir: &Path, id: i64, ok: bool, message: &str) -> Result<(), DeviceError> {
    let (state, identity, client) = enrolled(state_dir)?;
    let message: String = message
        .chars()
        .filter(|c| !c.is_control())
        .take(1000)
        .collect();
    client.post_signed(
        &format!("/api/v1/device/restore-requests/{id}"),
        &json!({"ok": ok, "message": message}),
        &state.device_id,
        &identity.signing,
    )?;
    Ok(())
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
