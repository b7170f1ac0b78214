//! The `otter-server` binary's administrative subcommands (binary only, not part of the
//! library): `init`, `token`, `publish`, `enroll-token`, `devices`, `backups`, `rollout`,
//! `audit`, `delta`. Each file holds one subcommand.

pub mod audit;
pub mod backups;
pub mod delta;
pub mod devices;
pub mod enroll_token;
pub mod init;
pub mod publish;
pub mod rollout;
pub mod token;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use otter_server::Config;

/// Where the data dir is: `--config` and `--data-dir`, as `serve` takes them.
#[derive(clap::Args, Debug)]
pub struct DataDirArgs {
    /// TOML configuration file (unknown keys are refused).
    #[arg(long, env = "OTTER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./otter-data].
    #[arg(long, env = "OTTER_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl DataDirArgs {
    /// The configuration these arguments select.
    pub fn config(&self) -> Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(d) = &self.data_dir {
            config.data_dir = d.clone();
        }
        Ok(config)
    }
}

/// Reads a secret from the first line of a file.
pub fn first_line(path: &std::path::Path, what: &str) -> Result<zeroize::Zeroizing<String>> {
    let raw = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the {what} file {}", path.display()))?,
    );
    let line = raw.lines().next().unwrap_or("").trim().to_owned();
    if line.is_empty() {
        bail!("the {what} file {} is empty", path.display());
    }
    Ok(zeroize::Zeroizing::new(line))
}
