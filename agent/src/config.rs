//! The agent's configuration: embedded defaults, then a TOML file (`--config FILE`, else
//! `/etc/otter/agent.toml` when it exists), then `OTTER_*` environment variables and
//! command-line flags (the binary applies those two through clap). Unknown keys are
//! refused; [`AgentConfig::validate`] checks what the types cannot. Maintenance windows
//! (`"02:00-04:00"`, in local time or UTC, crossing midnight allowed) live here too.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use crate::apply::ApplyConfig;

/// Where the agent looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/otter/agent.toml";

/// The example configuration (`deploy/agent.example.toml`), every value at its default.
pub const EXAMPLE_CONFIG: &str = include_str!("../../deploy/agent.example.toml");

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the agent config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not valid TOML for this configuration (unknown keys are refused).
    #[error("agent config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said, with the line.
        message: String,
    },
    /// A value is out of range or missing.
    #[error("invalid agent configuration: {0}")]
    Invalid(String),
}

/// Everything `otter-agent update`, `run` and `status` need.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The agent's state dir (enrollment, keys, trusted metadata, downloads, status).
    /// Environment: `OTTER_STATE_DIR`; flag: `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// Where components are installed (`components/<name>/<version>/`, the journal).
    /// Environment: `OTTER_INSTALL_ROOT`; flag: `--install-root`.
    pub install_root: Option<PathBuf>,
    /// HTTP towards the enrolled server (its URL is recorded at enrollment).
    pub server: ServerConfig,
    /// Polling, downloads and maintenance windows.
    pub update: UpdateConfig,
    /// The apply engine.
    pub apply: ApplyConfig,
    /// Scheduled backups by `otter-agent run`.
    pub backup: BackupSchedule,
    /// Backups before database migrations and restores on rollback (`[migration]`,
    /// docs/apply.md).
    pub migration: crate::migration::MigrationConfig,
    /// Integrity passes over the installed components (`[integrity]`).
    pub integrity: crate::integrity::IntegrityConfig,
    /// Health checks of the live database (`[database]`).
    pub database: crate::integrity::DatabaseHealthConfig,
    /// Restores requested through the server (`[restore]`).
    pub restore: RestoreConfig,
}

/// Restores an admin or restorer requests through the server (`[restore]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestoreConfig {
    /// Whether `otter-agent run` acts on restore requests from the server. Off by default:
    /// replacing a payment terminal's sales database is opted into per terminal.
    pub allow_remote_requests: bool,
    /// Command (argv, no shell) that stops the application before a requested restore.
    pub stop_command: Option<Vec<String>>,
    /// Command (argv, no shell) that starts it again afterwards.
    pub start_command: Option<Vec<String>>,
}

/// HTTP limits towards the server and its repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Seconds to wait for a connection.
    pub connect_timeout_secs: u64,
    /// Seconds one metadata or target request may take in all.
    pub request_timeout_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            connect_timeout_secs: 10,
            request_timeout_secs: 3600,
        }
    }
}

/// How and when updates are looked for and applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateConfig {
    /// Seconds between two polls of `otter-agent run`.
    pub poll_interval_secs: u64,
    /// Up to this many seconds, at random, added to every wait (spreads a fleet's polls).
    pub jitter_secs: u64,
    /// First wait after a failed poll; doubled after each further failure.
    pub retry_base_secs: u64,
    /// Longest wait after failures.
    pub max_backoff_secs: u64,
    /// The release channel this terminal follows.
    pub channel: String,
    /// When updates may be applied (downloads happen any time). Empty: any time.
    pub maintenance_windows: Vec<Window>,
    /// Whether the windows are in the terminal's local time or UTC.
    pub window_time: TimeBasis,
    /// Attempts per download within one poll (a cut connection is resumed).
    pub download_attempts: u32,
    /// `run` only downloads, never applies (an operator applies with `otter-agent update`).
    pub download_only: bool,
    /// A metered link: never fall back to a full download of an installed component; only
    /// a signed delta from the installed version is used, else the update waits (reported).
    /// A component not installed yet is still downloaded in full (docs/deltas.md).
    pub metered: bool,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            poll_interval_secs: 900,
            jitter_secs: 300,
            retry_base_secs: 60,
            max_backoff_secs: 3600,
            channel: "stable".into(),
            maintenance_windows: Vec::new(),
            window_time: TimeBasis::Local,
            download_attempts: 3,
            download_only: false,
            metered: false,
        }
    }
}

/// Scheduled backups of the terminal's database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupSchedule {
    /// The live SQLite database to back up. Unset: `run` makes no backups.
    pub database: Option<PathBuf>,
    /// Seconds between two backups.
    pub interval_secs: u64,
    /// Bytes of compressed pages after which a pack is sealed and uploaded.
    pub pack_size: usize,
    /// Upload bandwidth cap in bytes per second for the whole agent process (every upload
    /// together); `0`: unlimited.
    pub max_upload_bytes_per_sec: u64,
    /// Pack uploads in flight at once (at most this many + 1 sealed packs in memory).
    pub parallel_uploads: usize,
}

impl Default for BackupSchedule {
    fn default() -> Self {
        BackupSchedule {
            database: None,
            interval_secs: 86_400,
            pack_size: crate::backup::DEFAULT_PACK_TARGET,
            max_upload_bytes_per_sec: 0,
            parallel_uploads: crate::backup::DEFAULT_PARALLEL_UPLOADS,
        }
    }
}

impl AgentConfig {
    /// Parses a TOML configuration; `origin` names the source in messages.
    pub fn from_toml(text: &str, origin: &Path) -> Result<AgentConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.into(),
            message: e.to_string(),
        })
    }

    /// Reads and parses a TOML configuration file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        AgentConfig::from_toml(&text, path)
    }

    /// The file named by `--config`, else [`DEFAULT_CONFIG_PATH`] if it exists, else the
    /// defaults.
    pub fn load_or_default(explicit: Option<&Path>) -> Result<AgentConfig, ConfigError> {
        match explicit {
            Some(p) => AgentConfig::load(p),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                AgentConfig::load(Path::new(DEFAULT_CONFIG_PATH))
            }
            None => Ok(AgentConfig::default()),
        }
    }

    /// Checks values the types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let u = &self.update;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !(1..=7 * 86_400).contains(&u.poll_interval_secs) {
            return bad(format!(
                "update.poll_interval_secs = {}: must be between 1 second and 7 days",
                u.poll_interval_secs
            ));
        }
        if u.jitter_secs > 86_400 {
            return bad(format!(
                "update.jitter_secs = {}: must be at most 1 day",
                u.jitter_secs
            ));
        }
        if u.retry_base_secs == 0 || u.max_backoff_secs < u.retry_base_secs {
            return bad(format!(
                "update.retry_base_secs = {} and max_backoff_secs = {}: the base must be at least 1 and the cap at least the base",
                u.retry_base_secs, u.max_backoff_secs
            ));
        }
        if u.max_backoff_secs > 7 * 86_400 {
            return bad("update.max_backoff_secs must be at most 7 days".into());
        }
        if !otter_keys::release::is_label(&u.channel) {
            return bad(format!(
                "update.channel = {:?} is not a channel name",
                u.channel
            ));
        }
        if !(1..=100).contains(&u.download_attempts) {
            return bad("update.download_attempts must be between 1 and 100".into());
        }
        for kind in self.apply.hooks.keys() {
            if crate::apply::Kind::from_name(kind).is_none() {
                return bad(format!(
                    "[apply.hooks.{kind}]: hooks are per kind, one of firmware, driver, patch"
                ));
            }
        }
        if self.apply.keep_versions < 2 {
            return bad("apply.keep_versions must be at least 2 (the active and the previous version, for rollback)".into());
        }
        if self.server.connect_timeout_secs == 0 || self.server.request_timeout_secs == 0 {
            return bad("server timeouts must be at least 1 second".into());
        }
        let b = &self.backup;
        if b.interval_secs < 60 {
            return bad(format!(
                "backup.interval_secs = {}: must be at least 60",
                b.interval_secs
            ));
        }
        if b.pack_size == 0 {
            return bad("backup.pack_size must be at least 1 byte".into());
        }
        if b.parallel_uploads == 0 || b.parallel_uploads > 64 {
            return bad(format!(
                "backup.parallel_uploads = {}: must be between 1 and 64",
                b.parallel_uploads
            ));
        }
        Ok(())
    }

    /// The state dir, or an error saying how to give one.
    pub fn state_dir(&self) -> Result<&Path, ConfigError> {
        self.state_dir.as_deref().ok_or_else(|| {
            ConfigError::Invalid(
                "no state dir: give --state-dir, OTTER_STATE_DIR or state_dir in the config file"
                    .into(),
            )
        })
    }

    /// The install root, or an error saying how to give one.
    pub fn install_root(&self) -> Result<&Path, ConfigError> {
        self.install_root.as_deref().ok_or_else(|| {
            ConfigError::Invalid(
                "no install root: give --install-root, OTTER_INSTALL_ROOT or install_root in the config file"
                    .into(),
            )
        })
    }
}

/// Which clock maintenance windows are read on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeBasis {
    /// The terminal's local time (`TZ`, else `/etc/localtime`): what the shop's hours are.
    #[default]
    Local,
    /// UTC.
    Utc,
}

impl FromStr for TimeBasis {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(TimeBasis::Local),
            "utc" => Ok(TimeBasis::Utc),
            o => Err(format!(
                "window time {o:?} is neither \"local\" nor \"utc\""
            )),
        }
    }
}

/// A daily maintenance window `HH:MM-HH:MM`: from the start minute (included) to the end
/// minute (excluded). An end before the start crosses midnight (`22:00-02:00`);
/// `00:00-24:00` is the whole day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    /// Minutes after midnight, `0..1440`.
    pub start: u16,
    /// Minutes after midnight, `1..=1440`.
    pub end: u16,
}

/// Minutes in a day.
const DAY_MINUTES: u16 = 1440;

fn parse_hhmm(s: &str, allow_24: bool) -> Option<u16> {
    let (h, m) = s.trim().split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    match (h, m) {
        (24, 0) if allow_24 => Some(DAY_MINUTES),
        (0..=23, 0..=59) => Some(h * 60 + m),
        _ => None,
    }
}

impl FromStr for Window {
    type Err = String;
    fn from_str(s: &str) -> Result<Window, String> {
        let shown: String = s.chars().take(40).collect();
        let (a, b) = s.split_once('-').ok_or_else(|| {
            format!("maintenance window {shown:?} is not HH:MM-HH:MM (e.g. \"02:00-04:00\")")
        })?;
        let start = parse_hhmm(a, false).ok_or_else(|| {
            format!("maintenance window {shown:?}: start {a:?} is not a time 00:00..23:59")
        })?;
        let end = parse_hhmm(b, true).ok_or_else(|| {
            format!("maintenance window {shown:?}: end {b:?} is not a time 00:00..24:00")
        })?;
        if start == end {
            return Err(format!(
                "maintenance window {shown:?} is empty: write 00:00-24:00 for the whole day"
            ));
        }
        Ok(Window { start, end })
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

impl Serialize for Window {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Window, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Window {
    /// Whether the second of the day `sec` (`0..86400`) is inside the window.
    pub fn contains(&self, sec: u32) -> bool {
        let (start, end) = (u32::from(self.start) * 60, u32::from(self.end) * 60);
        if start < end {
            (start..end).contains(&sec)
        } else {
            sec >= start || sec < end
        }
    }

    /// Seconds from the second of the day `sec` until the window next opens (0 inside it).
    pub fn secs_until_open(&self, sec: u32) -> u32 {
        if self.contains(sec) {
            return 0;
        }
        let start = u32::from(self.start) * 60;
        (start + 86_400 - sec) % 86_400
    }
}

/// Whether `windows` allow applying at the second of the day `sec` (no windows: always).
pub fn in_windows(windows: &[Window], sec: u32) -> bool {
    windows.is_empty() || windows.iter().any(|w| w.contains(sec))
}

/// Seconds until one of `windows` opens, from the second of the day `sec` (0 when inside
/// one, or when there are none).
pub fn secs_until_window(windows: &[Window], sec: u32) -> u32 {
    windows
        .iter()
        .map(|w| w.secs_until_open(sec))
        .min()
        .unwrap_or(0)
}

/// The current second of the day on the given clock.
pub fn second_of_day(basis: TimeBasis) -> u32 {
    use chrono::Timelike;
    match basis {
        TimeBasis::Local => chrono::Local::now().num_seconds_from_midnight(),
        TimeBasis::Utc => chrono::Utc::now().num_seconds_from_midnight(),
    }
}

/// Parses a comma-separated list of windows (the `OTTER_MAINTENANCE_WINDOWS` form).
pub fn parse_windows(list: &str) -> Result<Vec<Window>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Window::from_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Window {
        s.parse().unwrap()
    }
    const H: u32 = 3600;

    #[test]
    fn the_example_config_is_the_default() {
        let c = AgentConfig::from_toml(EXAMPLE_CONFIG, Path::new("agent.example.toml")).unwrap();
        c.validate().unwrap();
        // The example names the production paths; the built-in default has none.
        let d = AgentConfig {
            state_dir: c.state_dir.clone(),
            install_root: c.install_root.clone(),
            ..AgentConfig::default()
        };
        assert_eq!(c, d);
        assert!(c.state_dir.is_some() && c.install_root.is_some());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_their_name() {
        let e = AgentConfig::from_toml("[update]\npoll_intervall_secs = 5\n", Path::new("x"))
            .unwrap_err();
        assert!(e.to_string().contains("poll_intervall_secs"), "{e}");
        let e = AgentConfig::from_toml(
            "[update]\nmaintenance_windows = [\"25:00-02:00\"]\n",
            Path::new("x"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("25:00"), "{e}");
        let e =
            AgentConfig::from_toml("[apply]\nhealth_timeout = 5\n", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("health_timeout"), "{e}");
        let c =
            AgentConfig::from_toml("[update]\npoll_interval_secs = 0\n", Path::new("x")).unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("poll_interval_secs"));
        let c = AgentConfig::from_toml("[apply.hooks.firmwar]\n", Path::new("x")).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("firmwar"));
    }

    #[test]
    fn partial_files_keep_the_other_defaults() {
        let c = AgentConfig::from_toml(
            "state_dir = \"/s\"\n[update]\nchannel = \"beta\"\nwindow_time = \"utc\"\nmaintenance_windows = [\"22:30-01:15\", \"12:00-12:30\"]\n",
            Path::new("x"),
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.update.channel, "beta");
        assert_eq!(c.update.window_time, TimeBasis::Utc);
        assert_eq!(c.update.maintenance_windows.len(), 2);
        assert_eq!(c.update.poll_interval_secs, 900);
        assert_eq!(c.apply, ApplyConfig::default());
        assert_eq!(c.state_dir().unwrap(), Path::new("/s"));
    }

    #[test]
    fn windows_parse_strictly() {
        assert_eq!(
            w("02:00-04:00"),
            Window {
                start: 120,
                end: 240
            }
        );
        assert_eq!(
            w("00:00-24:00"),
            Window {
                start: 0,
                end: 1440
            }
        );
        assert_eq!(w(" 23:30 - 00:15 ").to_string(), "23:30-00:15");
        for bad in [
            "",
            "02:00",
            "2:00-04:00",
            "02:00-4:00",
            "24:00-01:00",
            "02:60-03:00",
            "02:00-24:01",
            "02:00-02:00",
            "00:00-00:00",
            "aa:bb-cc:dd",
            "02:00-04:00-05:00",
            "+1:00-02:00",
        ] {
            assert!(bad.parse::<Window>().is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_windows("02:00-04:00, 13:00-13:30,").unwrap(),
            vec![w("02:00-04:00"), w("13:00-13:30")]
        );
        assert!(parse_windows("02:00-04:00,x").is_err());
    }

    #[test]
    fn a_window_contains_its_start_but_not_its_end() {
        let win = w("02:00-04:00");
        assert!(!win.contains(2 * H - 1));
        assert!(win.contains(2 * H));
        assert!(win.contains(4 * H - 1));
        assert!(!win.contains(4 * H));
        assert_eq!(win.secs_until_open(H), H);
        assert_eq!(win.secs_until_open(3 * H), 0);
        assert_eq!(win.secs_until_open(5 * H), 21 * H);
    }

    #[test]
    fn a_window_crossing_midnight_works_on_both_sides() {
        let win = w("22:00-02:00");
        assert!(win.contains(23 * H));
        assert!(win.contains(0));
        assert!(win.contains(H + 59 * 60));
        assert!(!win.contains(2 * H));
        assert!(!win.contains(12 * H));
        assert!(!win.contains(22 * H - 1));
        assert_eq!(win.secs_until_open(21 * H), H);
        assert_eq!(win.secs_until_open(3 * H), 19 * H);
        let all = w("00:00-24:00");
        assert!((0..86_400).step_by(997).all(|s| all.contains(s)));
    }

    #[test]
    fn several_windows_and_none() {
        let ws = vec![w("02:00-03:00"), w("22:00-23:00")];
        assert!(in_windows(&ws, 2 * H + 5));
        assert!(in_windows(&ws, 22 * H));
        assert!(!in_windows(&ws, 12 * H));
        assert_eq!(secs_until_window(&ws, 12 * H), 10 * H);
        assert_eq!(secs_until_window(&ws, 23 * H), 3 * H);
        assert!(in_windows(&[], 12 * H));
        assert_eq!(secs_until_window(&[], 12 * H), 0);
    }
}
