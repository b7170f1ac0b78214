//! Server configuration: embedded defaults, then an optional TOML file, then `OTTER_*`
//! environment variables and command-line flags (the binary applies those two).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The example configuration, every value at its default; `otter-server default-config`
/// prints it.
pub const EXAMPLE_CONFIG: &str = include_str!("../otter-server.example.toml");

/// One day in seconds.
const DAY: u64 = 86_400;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration (unknown keys are refused).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said, with the line.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "log format {other:?} is neither \"text\" nor \"json\""
            )),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// Everything `otter-server serve` needs; [`Config::default`] is a working development setup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Holds the database (`otter.db`), the keys (`keys/`) and, by default, the object store
    /// (`store/`).
    pub data_dir: PathBuf,
    /// Address to listen on, `HOST:PORT` (port 0 picks a free port).
    pub listen: String,
    /// Log format.
    pub log_format: LogFormat,
    /// HTTP worker threads; unset: one per CPU core.
    pub workers: Option<usize>,
    /// Seconds that requests in flight get to finish on shutdown.
    pub shutdown_timeout_secs: u64,
    /// File holding the passphrase of a production repository's online keys (first line).
    /// Unset: the `OTTER_SERVER_KEY_PASSPHRASE` environment variable.
    pub key_passphrase_file: Option<PathBuf>,
    /// The TUF repository.
    pub repository: RepositoryConfig,
    /// Uploads of release bundles.
    pub publishing: PublishingConfig,
    /// When rollouts halt by themselves (`[rollouts]`).
    pub rollouts: crate::rollout::RolloutsConfig,
    /// Which deltas publishing precomputes (`[deltas]`).
    pub deltas: crate::repo::deltas::DeltasConfig,
    /// Receiving terminals' encrypted backups.
    pub backups: BackupsConfig,
    /// The object store for blobs, repository files and backups (`[store]`).
    pub store: StoreConfig,
    /// The web console's sessions (`[console]`).
    pub console: crate::console::ConsoleConfig,
    /// Alerts from devices' security events: the optional signed webhook (`[alerts]`).
    pub alerts: crate::alerts::AlertsConfig,
    /// `serve --resume-above-store`: when the store holds newer metadata than the database
    /// (an older database copy was restored), re-sign above the store's versions instead of
    /// refusing to start. A one-time operator decision, so a flag, never a config key.
    #[serde(skip)]
    pub resume_above_store: bool,
}

/// Where blobs, repository files and backups are kept (`[store]`): a local directory, or an
/// S3 bucket (AWS or any S3-compatible service such as Garage). See `docs/storage.md`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `file:///ABSOLUTE/PATH` or `s3://BUCKET[/PREFIX]`; unset: `DATA_DIR/store`.
    pub url: Option<String>,
    /// S3 endpoint, e.g. `http://127.0.0.1:3900` (Garage); unset: AWS (or `AWS_ENDPOINT`).
    pub endpoint: Option<String>,
    /// S3 region (Garage: `garage`); unset: `AWS_REGION`/`AWS_DEFAULT_REGION`, else
    /// `us-east-1`.
    pub region: Option<String>,
    /// Allow a plain `http://` endpoint (loopback test servers, a private network).
    pub allow_http: bool,
    /// Address buckets as `https://BUCKET.ENDPOINT` instead of `https://ENDPOINT/BUCKET`
    /// (path style, what S3-compatible servers expect).
    pub virtual_hosted_style_request: bool,
    /// S3 access key id; unset: `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// S3 secret access key; unset: `AWS_SECRET_ACCESS_KEY`. Never logged.
    pub secret_access_key: Option<crate::store::Secret>,
}

/// Limits on received backups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupsConfig {
    /// Largest backup pack accepted, in bytes; larger ones get 413.
    pub max_pack_bytes: u64,
    /// Largest serialized backup manifest accepted, in bytes; larger ones get 413.
    pub max_manifest_bytes: u64,
    /// The fleet's offline recovery key (an age X25519 recipient, `age1...`), given to
    /// terminals at enrollment so that every backup can be opened by it; `None` when unset.
    pub recovery_recipient: Option<String>,
    /// A write-only fleet: terminals are told at enrollment to keep no backup identity and
    /// to encrypt backups to the recovery key alone, so that no terminal can read even its
    /// own backups (restores go through the recovery key). Needs `recovery_recipient`.
    pub write_only: bool,
    /// Device groups that are write-only even when `write_only` is off.
    pub write_only_groups: Vec<String>,
    /// Largest backup transfer an admin may import for a device
    /// (`POST /api/v1/devices/{id}/transfers`), in bytes; larger ones get 413.
    pub max_transfer_bytes: u64,
    /// Most bytes a device may have stored (its packs and manifests); a pack upload that
    /// would go over is refused with 413 `backup_quota_exceeded`. `None`: no quota.
    pub quota_bytes_per_device: Option<u64>,
    /// A pack no kept backup references is garbage-collected by `prune` only once it was
    /// uploaded this many seconds ago: the packs of a backup still uploading are left alone.
    /// Must be longer than the longest backup upload.
    pub unreferenced_pack_grace_secs: u64,
    /// Which backups `prune` keeps (`[backups.retention]`).
    pub retention: crate::backups::retention::RetentionConfig,
}

impl BackupsConfig {
    /// Whether a device of `group` is write-only: the whole fleet is, or its group is listed
    /// in `write_only_groups`.
    pub fn write_only_for(&self, group: Option<&str>) -> bool {
        self.write_only || group.is_some_and(|g| self.write_only_groups.iter().any(|w| w == g))
    }
}

/// Hard ceiling of [`BackupsConfig::max_manifest_bytes`]: a manifest is held in memory.
pub const MAX_MANIFEST_BYTES_CEILING: u64 = 256 * 1024 * 1024;

impl Default for BackupsConfig {
    fn default() -> Self {
        BackupsConfig {
            max_pack_bytes: 64 * 1024 * 1024,
            max_manifest_bytes: 32 * 1024 * 1024,
            recovery_recipient: None,
            write_only: false,
            write_only_groups: Vec::new(),
            max_transfer_bytes: 4 * 1024 * 1024 * 1024,
            quota_bytes_per_device: None,
            unreferenced_pack_grace_secs: 2 * DAY,
            retention: crate::backups::retention::RetentionConfig::default(),
        }
    }
}

/// Limits on uploaded bundles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishingConfig {
    /// Largest bundle upload accepted, in bytes; larger ones get 413.
    pub max_upload_bytes: u64,
    /// Most bytes a bundle may unpack to (decompression bomb defence).
    pub max_unpacked_bytes: u64,
    /// Most entries in a bundle's tar.
    pub max_entries: usize,
}

impl Default for PublishingConfig {
    fn default() -> Self {
        PublishingConfig {
            max_upload_bytes: 1024 * 1024 * 1024,
            max_unpacked_bytes: 4 * 1024 * 1024 * 1024,
            max_entries: 10_000,
        }
    }
}

/// Lifetimes of the signed metadata and how often the re-signing task looks at them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepositoryConfig {
    /// Lifetime of a development repository's root metadata.
    pub root_expiry_secs: u64,
    /// Lifetime of targets metadata.
    pub targets_expiry_secs: u64,
    /// Lifetime of snapshot metadata.
    pub snapshot_expiry_secs: u64,
    /// Lifetime of timestamp metadata.
    pub timestamp_expiry_secs: u64,
    /// Seconds between two checks of the re-signing task. Metadata is re-signed when less
    /// than half its lifetime remains.
    pub resign_check_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./otter-data"),
            listen: "127.0.0.1:8080".into(),
            log_format: LogFormat::Text,
            workers: None,
            shutdown_timeout_secs: 30,
            key_passphrase_file: None,
            repository: RepositoryConfig::default(),
            publishing: PublishingConfig::default(),
            rollouts: crate::rollout::RolloutsConfig::default(),
            deltas: crate::repo::deltas::DeltasConfig::default(),
            backups: BackupsConfig::default(),
            store: StoreConfig::default(),
            console: crate::console::ConsoleConfig::default(),
            alerts: crate::alerts::AlertsConfig::default(),
            resume_above_store: false,
        }
    }
}

impl Default for RepositoryConfig {
    fn default() -> Self {
        RepositoryConfig {
            root_expiry_secs: 365 * DAY,
            targets_expiry_secs: 90 * DAY,
            snapshot_expiry_secs: 7 * DAY,
            timestamp_expiry_secs: DAY,
            resign_check_secs: 60,
        }
    }
}

impl Config {
    /// Parses a TOML configuration; keys it does not know are refused. `origin` names the
    /// source in messages.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.into(),
            message: e.to_string(),
        })
    }

    /// Reads and parses a TOML configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Checks values that the types cannot: non-zero lifetimes, a re-signing check frequent
    /// enough that nothing can expire between two checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let r = &self.repository;
        let lifetimes = [
            ("root_expiry_secs", r.root_expiry_secs),
            ("targets_expiry_secs", r.targets_expiry_secs),
            ("snapshot_expiry_secs", r.snapshot_expiry_secs),
            ("timestamp_expiry_secs", r.timestamp_expiry_secs),
        ];
        for (name, v) in lifetimes {
            // Bounded so that adding it to the current time cannot overflow.
            if !(2..=100 * 365 * DAY).contains(&v) {
                return Err(ConfigError::Invalid(format!(
                    "repository.{name} = {v}: must be between 2 seconds and 100 years"
                )));
            }
        }
        let shortest = lifetimes[1..].iter().map(|(_, v)| *v).min().unwrap_or(DAY);
        if r.resign_check_secs == 0 || r.resign_check_secs.saturating_mul(2) > shortest {
            return Err(ConfigError::Invalid(format!(
                "repository.resign_check_secs = {}: must be at least 1 and at most half the \
                 shortest lifetime ({shortest} s), or metadata could expire between two checks",
                r.resign_check_secs
            )));
        }
        let p = &self.publishing;
        if p.max_upload_bytes == 0 || p.max_unpacked_bytes == 0 || p.max_entries == 0 {
            return Err(ConfigError::Invalid(
                "publishing limits must be at least 1".into(),
            ));
        }
        let b = &self.backups;
        if b.max_pack_bytes == 0
            || b.max_transfer_bytes == 0
            || b.max_manifest_bytes == 0
            || b.max_manifest_bytes > MAX_MANIFEST_BYTES_CEILING
        {
            return Err(ConfigError::Invalid(format!(
                "backups limits must be at least 1, and max_manifest_bytes at most \
                 {MAX_MANIFEST_BYTES_CEILING} (a manifest is checked in memory)"
            )));
        }
        if let Some(r) = &b.recovery_recipient {
            if r.trim()
                .parse::<otter_keys::age::x25519::Recipient>()
                .is_err()
            {
                return Err(ConfigError::Invalid(format!(
                    "backups.recovery_recipient = {r:?}: not an age X25519 recipient \
                     (age1...); give the public half of the fleet's recovery key"
                )));
            }
        }
        if (b.write_only || !b.write_only_groups.is_empty()) && b.recovery_recipient.is_none() {
            return Err(ConfigError::Invalid(
                "backups.write_only (or write_only_groups) needs backups.recovery_recipient: a \
                 write-only terminal encrypts its backups to the recovery key alone"
                    .into(),
            ));
        }
        for g in &b.write_only_groups {
            crate::fleet::check_name(g).map_err(|e| {
                ConfigError::Invalid(format!("backups.write_only_groups: {g:?}: {e}"))
            })?;
        }
        if b.quota_bytes_per_device == Some(0) || b.unreferenced_pack_grace_secs < 600 {
            return Err(ConfigError::Invalid(
                "backups.quota_bytes_per_device must be at least 1 (or unset for no quota), and \
                 backups.unreferenced_pack_grace_secs at least 600 (longer than a backup upload)"
                    .into(),
            ));
        }
        b.retention.validate().map_err(ConfigError::Invalid)?;
        self.rollouts.validate().map_err(ConfigError::Invalid)?;
        self.deltas.validate().map_err(ConfigError::Invalid)?;
        self.console.validate().map_err(ConfigError::Invalid)?;
        crate::alerts::Alerts::from_config(&self.alerts)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if self.workers == Some(0) {
            return Err(ConfigError::Invalid("workers = 0: give at least 1".into()));
        }
        if self.listen.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "listen is empty: give HOST:PORT".into(),
            ));
        }
        crate::store::check_config(&self.store)
            .map_err(|e| ConfigError::Invalid(format!("[store]: {e}")))?;
        Ok(())
    }

    /// Where the SQLite database lives.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("otter.db")
    }

    /// Where the repository's key files live.
    pub fn keys_dir(&self) -> PathBuf {
        self.data_dir.join("keys")
    }

    /// Where uploads are spooled while they are checked.
    pub fn upload_dir(&self) -> PathBuf {
        self.data_dir.join("uploads")
    }

    /// The default object store directory, used when `store.url` is unset.
    pub fn default_store_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_is_the_default() {
        let c = Config::from_toml(EXAMPLE_CONFIG, Path::new("example")).unwrap();
        assert_eq!(c, Config::default());
        c.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::from_toml("listne = \"0.0.0.0:1\"\n", Path::new("f.toml")).unwrap_err();
        assert!(err.to_string().contains("listne"), "{err}");
        let err =
            Config::from_toml("[repository]\ntimestamp = 5\n", Path::new("f.toml")).unwrap_err();
        assert!(err.to_string().contains("timestamp"), "{err}");
    }

    #[test]
    fn partial_files_keep_the_other_defaults() {
        let c = Config::from_toml(
            "data_dir = \"/srv/otter\"\nlog_format = \"json\"\n[repository]\ntimestamp_expiry_secs = 3600\n",
            Path::new("f.toml"),
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/otter"));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.repository.timestamp_expiry_secs, 3600);
        assert_eq!(c.listen, "127.0.0.1:8080");
    }

    #[test]
    fn the_recovery_recipient_must_be_an_age_x25519_recipient() {
        let recipient = otter_keys::age::x25519::Identity::generate()
            .to_public()
            .to_string();
        let c = Config::from_toml(
            &format!("[backups]\nrecovery_recipient = \"{recipient}\"\n"),
            Path::new("f.toml"),
        )
        .unwrap();
        assert_eq!(
            c.backups.recovery_recipient.as_deref(),
            Some(recipient.as_str())
        );
        c.validate().unwrap();
        let mut bad = c.clone();
        bad.backups.recovery_recipient = Some("age1notakey".into());
        let err = bad.validate().unwrap_err();
        assert!(err.to_string().contains("recovery_recipient"), "{err}");
    }

    #[test]
    fn write_only_needs_a_recovery_key_and_applies_per_group() {
        let mut c = Config::from_toml(
            "[backups]\nwrite_only_groups = [\"lab\"]\n",
            Path::new("f.toml"),
        )
        .unwrap();
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("recovery_recipient"), "{err}");
        c.backups.recovery_recipient = Some(
            otter_keys::age::x25519::Identity::generate()
                .to_public()
                .to_string(),
        );
        c.validate().unwrap();
        assert!(c.backups.write_only_for(Some("lab")));
        assert!(!c.backups.write_only_for(Some("shop")));
        assert!(!c.backups.write_only_for(None));
        c.backups.write_only = true;
        assert!(c.backups.write_only_for(None));
        c.backups.write_only_groups = vec!["a b".into()];
        assert!(c.validate().is_err());
    }

    #[test]
    fn a_check_interval_longer_than_half_a_lifetime_is_refused() {
        let mut c = Config::default();
        c.repository.timestamp_expiry_secs = 100;
        c.repository.resign_check_secs = 51;
        assert!(c.validate().is_err());
        c.repository.resign_check_secs = 50;
        c.validate().unwrap();
        c.repository.resign_check_secs = 0;
        assert!(c.validate().is_err());
    }
}
