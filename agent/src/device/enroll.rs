//! `otter-agent enroll`: create the device's secrets, pin the trusted root shipped with the
//! terminal image, register with the server using a single-use enrollment token, and record
//! the device id; `otter-agent report`: a signed report to the server.
//!
//! Order, so that a failure at any step can be retried with the same command: the state dir
//! and the secrets first (an unfinished enrollment reuses them), then the pinned root, then
//! the server, then `agent.json`, whose presence means "enrolled" and makes a second
//! enrollment into the same dir an error.

use std::path::{Path, PathBuf};

use otter_keys::atomic::write_atomic;
use otter_keys::time::UtcTime;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::client::{normalize_server_url, DeviceClient};
use super::identity::Identity;
use super::{io_err, DeviceError};
use crate::tuf::{init_metadata_dir, TrustedSet};

/// The enrollment record in the state dir.
pub const AGENT_FILE: &str = "agent.json";
/// Where the trusted root is pinned, under the state dir.
pub const TUF_DIR: &str = "tuf";
/// Largest trusted root file read.
const MAX_ROOT: u64 = 512 * 1024;

/// What `agent.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentState {
    /// The id the server gave this device.
    pub device_id: String,
    /// The server's base URL.
    pub server_url: String,
    /// The repository's metadata URL, as the server gave it.
    pub metadata_url: String,
    /// The repository's targets URL, as the server gave it.
    pub targets_url: String,
    /// The terminal's hardware model.
    pub hardware_model: String,
    /// The group the device joined.
    pub group: Option<String>,
    /// Enrollment time, Unix seconds (server clock).
    pub enrolled_at: i64,
    /// The fleet's backup recovery key (`age1...`) as the server gave it at enrollment;
    /// `None` when the server had none configured (older state files lack the field).
    #[serde(default)]
    pub recovery_recipient: Option<String>,
    /// The server said the fleet (or the device's group) is write-only: backups are
    /// encrypted to the recovery key alone and the terminal keeps no backup identity.
    #[serde(default)]
    pub backups_write_only: bool,
}

impl AgentState {
    /// Reads `agent.json` from the state dir; `None` if the dir is not enrolled.
    pub fn load(dir: &Path) -> Result<Option<AgentState>, DeviceError> {
        let path = dir.join(AGENT_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| DeviceError::Malformed {
                path,
                reason: format!("not an agent state file: {e}"),
            })
    }

    fn save(&self, dir: &Path) -> Result<(), DeviceError> {
        let path = dir.join(AGENT_FILE);
        let mut bytes =
            serde_json::to_vec_pretty(self).map_err(|e| DeviceError::Invalid(e.to_string()))?;
        bytes.push(b'\n');
        write_atomic(&path, &bytes, 0o600).map_err(io_err(&path))
    }
}

/// What `otter-agent enroll` was given.
#[derive(Debug)]
pub struct EnrollOptions {
    /// The server's base URL.
    pub server_url: String,
    /// The enrollment token (secret).
    pub token: Zeroizing<String>,
    /// The trusted root shipped with the terminal image.
    pub trusted_root: PathBuf,
    /// The agent's state dir.
    pub state_dir: PathBuf,
    /// The terminal's hardware model.
    pub hardware_model: String,
}

/// Creates `dir` (and missing parents) with mode 0700 if it does not exist.
fn create_state_dir(dir: &Path) -> Result<(), DeviceError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(io_err(dir))
}

fn read_trusted_root(path: &Path, now: UtcTime) -> Result<Vec<u8>, DeviceError> {
    let bad = |reason: String| DeviceError::TrustedRoot {
        path: path.into(),
        reason,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| bad(e.to_string()))?
        .len();
    if len > MAX_ROOT {
        return Err(bad(format!("{len} bytes is too large for root metadata")));
    }
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    TrustedSet::new(&bytes, now).map_err(|e| {
        bad(format!(
            "not a valid, unexpired, self-signed TUF root: {}",
            otter_keys::report::describe(&e)
        ))
    })?;
    Ok(bytes)
}

fn field(v: &Value, name: &str) -> Result<String, DeviceError> {
    v.get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| DeviceError::Transport {
            url: "enroll".into(),
            message: format!("the server's answer lacks {name:?}"),
        })
}

/// Enrolls the terminal (see the module documentation for the order of steps).
pub fn enroll(opts: &EnrollOptions, now: UtcTime) -> Result<AgentState, DeviceError> {
    let dir = &opts.state_dir;
    if let Some(state) = AgentState::load(dir)? {
        return Err(DeviceError::AlreadyEnrolled {
            dir: dir.clone(),
            device_id: state.device_id,
        });
    }
    let server_url = normalize_server_url(&opts.server_url)?;
    if opts.token.trim().is_empty() {
        return Err(DeviceError::Invalid(
            "the enrollment token is empty: give --token, --token-file or OTTER_ENROLL_TOKEN"
                .into(),
        ));
    }
    let root = read_trusted_root(&opts.trusted_root, now)?;
    create_state_dir(dir)?;
    // The backup identity is written only once the server said the fleet is not write-only:
    // a write-only terminal never has one on disk.
    let mut identity = if Identity::exists_in(dir) {
        Identity::load(dir)?
    } else {
        let mut id = Identity::generate();
        let backup = id.backup.take();
        id.save(dir)?;
        id.backup = backup;
        id
    };
    let backup = match identity.backup.take() {
        Some(b) => b,
        None => otter_keys::age::x25519::Identity::generate(),
    };
    let tuf = dir.join(TUF_DIR);
    init_metadata_dir(&tuf, &root).map_err(|e| DeviceError::Io {
        path: tuf.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let client = DeviceClient::new(&server_url)?;
    let answer = client.post_unsigned(
        "/api/v1/enroll",
        &json!({
            "token": opts.token.trim(),
            "public_key": identity.public_key_hex(),
            "backup_recipient": backup.to_public().to_string(),
            "hardware_model": opts.hardware_model,
        }),
    )?;
    let device_id = field(&answer, "device_id")?;
    otter_keys::request::check_device_id(&device_id).map_err(|_| DeviceError::Transport {
        url: server_url.clone(),
        message: "the server gave a malformed device id".into(),
    })?;
    let state = AgentState {
        device_id,
        server_url,
        metadata_url: field(&answer, "metadata_url")?,
        targets_url: field(&answer, "targets_url")?,
        hardware_model: opts.hardware_model.clone(),
        group: answer
            .get("group")
            .and_then(Value::as_str)
            .map(str::to_owned),
        enrolled_at: answer
            .get("enrolled_at")
            .and_then(Value::as_i64)
            .unwrap_or_else(|| now.unix()),
        recovery_recipient: answer
            .get("recovery_recipient")
            .and_then(Value::as_str)
            .map(str::to_owned),
        backups_write_only: answer
            .get("backups_write_only")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    let backup_key = dir.join(super::identity::BACKUP_KEY_FILE);
    if state.backups_write_only {
        drop(backup);
        match std::fs::remove_file(&backup_key) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&backup_key)(e)),
        }
    } else {
        super::identity::save_backup_identity(dir, &backup)?;
    }
    identity.backup = None;
    drop(identity);
    state.save(dir)?;
    Ok(state)
}

/// Sends a signed report (installed versions, last update, health, security events) from
/// the enrolled state dir; returns the server's answer.
pub fn send_report(state_dir: &Path, report: &Value) -> Result<Value, DeviceError> {
    let state = AgentState::load(state_dir)?.ok_or_else(|| DeviceError::NotEnrolled {
        dir: state_dir.to_path_buf(),
    })?;
    let identity = Identity::load(state_dir)?;
    let client = DeviceClient::new(&state.server_url)?;
    client.post_signed(
        "/api/v1/device/report",
        report,
        &state.device_id,
        &identity.signing,
    )
}

/// The body of a report made outside an update pass (`otter-agent report`): the installed
/// versions (as read from the apply journal, read-only), the newest update result known
/// from the status file, and the health those imply. Security events stay in the status
/// file for the daemon's next report, which clears them once the server took them.
pub fn current_report(
    installed: &std::collections::BTreeMap<String, String>,
    status: &crate::status::StatusFile,
) -> Value {
    use crate::status::ResultKind;
    let last = status.results.first();
    let last_update = last.map(|r| {
        let target = if r.target.is_empty() {
            &r.component
        } else {
            &r.target
        };
        json!({
            "target": target.chars().take(128).collect::<String>(),
            "result": match r.result {
                ResultKind::Success => "success",
                ResultKind::Failed => "failed",
                ResultKind::RolledBack => "rolled_back",
            },
            "message": r.message.chars().take(1000).collect::<String>(),
            "at": r.at,
        })
    });
    let health = match last.map(|r| r.result) {
        Some(ResultKind::RolledBack) => "degraded",
        _ if !installed.is_empty() => "ok",
        _ => "unknown",
    };
    json!({
        "installed": installed,
        "last_update": last_update,
        "health": health,
        "security_events": [],
        "agent_version": env!("CARGO_PKG_VERSION"),
    })
}
