//! Backup transfers fetched from the server: an admin imported another device's backup,
//! re-encrypted for this terminal with the fleet recovery key (`otter-server backups
//! import-transfer`); the terminal downloads it with a signed request
//! (`GET /api/v1/device/transfers/{id}`, `latest` for the newest) as a tar and unpacks it,
//! refusing anything outside a transfer's layout, into a directory that `otter-agent restore
//! --from-transfer` then verifies exactly as a directory carried by hand.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use otter_keys::request::sign_request;

use crate::device::{AgentState, DeviceError, Identity};

/// Most bytes a transfer download may hold.
pub const MAX_TRANSFER_BYTES: u64 = 64 * 1024 * 1024 * 1024;

/// Whether `path` belongs to a transfer directory: `transfer.json`,
/// `manifests/DEVICE/SEQ.manifest`, `reencrypted/DEVICE/SEQ.body` or `packs/AB/ABCD…`.
pub fn transfer_entry(path: &str) -> bool {
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let seq = |s: &str, suffix: &str| {
        s.strip_suffix(suffix)
            .is_some_and(|d| d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit()))
    };
    match path.split('/').collect::<Vec<_>>().as_slice() {
        ["transfer.json"] => true,
        ["manifests", dev, f] => hex(dev, 32) && seq(f, ".manifest"),
        ["reencrypted", dev, f] => hex(dev, 32) && seq(f, ".body"),
        ["packs", ab, id] => hex(ab, 2) && hex(id, 64) && id.starts_with(ab),
        _ => false,
    }
}

/// What was fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Files written.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// Downloads this device's transfer `which` (an id, or `latest`) into `dest`, an existing
/// empty directory.
pub fn fetch_transfer(state_dir: &Path, which: &str, dest: &Path) -> Result<Fetched, DeviceError> {
    if which != "latest" && !(which.len() == 32 && which.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Err(DeviceError::Invalid(format!(
            "--from-server-transfer {which:?}: give a transfer id (32 hex digits, see \
             `otter-server backups transfers`) or latest"
        )));
    }
    let state = AgentState::load(state_dir)?.ok_or_else(|| DeviceError::NotEnrolled {
        dir: state_dir.to_path_buf(),
    })?;
    let identity = Identity::load(state_dir)?;
    let path = format!("/api/v1/device/transfers/{which}");
    let url = format!("{}{path}", state.server_url);
    let transport = |message: String| DeviceError::Transport {
        url: url.clone(),
        message,
    };
    let now = otter_keys::time::UtcTime::now().unix();
    let headers = sign_request(&identity.signing, &state.device_id, "GET", &path, b"", now)?;
    let http = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(6 * 3600))
        .user_agent(concat!("otter-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| transport(format!("cannot set up the HTTP client: {e}")))?;
    let mut req = http.get(&url);
    for (name, value) in headers.pairs() {
        req = req.header(name, value);
    }
    let resp = req.send().map_err(|e| transport(e.to_string()))?;
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        let mut raw = Vec::new();
        let _ = resp.take(64 * 1024).read_to_end(&mut raw);
        let v: serde_json::Value = serde_json::from_slice(&raw).unwrap_or_default();
        let text = |k: &str| {
            v["error"][k]
                .as_str()
                .unwrap_or("?")
                .chars()
                .take(512)
                .collect::<String>()
        };
        return Err(DeviceError::Server {
            status,
            code: text("code"),
            message: text("message"),
        });
    }
    let mut archive = tar::Archive::new(resp.take(MAX_TRANSFER_BYTES));
    let mut fetched = Fetched { files: 0, bytes: 0 };
    let entries = archive
        .entries()
        .map_err(|e| transport(format!("reading the transfer: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| transport(format!("reading the transfer (it broke off): {e}")))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if !entry.header().entry_type().is_file() || !transfer_entry(&name) {
            return Err(transport(format!(
                "the transfer holds an unexpected entry {:?}",
                name.chars().take(120).collect::<String>()
            )));
        }
        let target = dest.join(&name);
        if let Some(p) = target.parent() {
            std::fs::create_dir_all(p).map_err(|e| DeviceError::Io {
                path: p.to_path_buf(),
                source: e,
            })?;
        }
        let io = |e: std::io::Error| DeviceError::Io {
            path: target.clone(),
            source: e,
        };
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .map_err(io)?;
        fetched.bytes += std::io::copy(&mut entry, &mut out)
            .map_err(|e| transport(format!("reading {name} of the transfer: {e}")))?;
        fetched.files += 1;
    }
    if !dest.join("transfer.json").is_file() {
        return Err(transport("the transfer has no transfer.json".into()));
    }
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::transfer_entry;

    #[test]
    fn only_a_transfers_layout_is_written() {
        let dev = "0123456789abcdef0123456789abcdef";
        assert!(transfer_entry("transfer.json"));
        assert!(transfer_entry(&format!(
            "manifests/{dev}/00000000000000000001.manifest"
        )));
        assert!(transfer_entry(&format!(
            "reencrypted/{dev}/00000000000000000001.body"
        )));
        assert!(transfer_entry(&format!("packs/ab/ab{}", "0".repeat(62))));
        assert!(!transfer_entry("../transfer.json"));
        assert!(!transfer_entry(&format!("packs/cd/ab{}", "0".repeat(62))));
        assert!(!transfer_entry(&format!("manifests/{dev}/../x.manifest")));
        assert!(!transfer_entry("/etc/passwd"));
    }
}
