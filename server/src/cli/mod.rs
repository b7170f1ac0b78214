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
pub mod root;
pub mod token;
pub mod transfers;

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

/// A blocking HTTP client for the admin subcommands. A server on a loopback address
/// (`localhost`, `127.0.0.0/8`, `::1`) is reached directly even when `HTTP_PROXY` /
/// `HTTPS_PROXY` are set: a proxy cannot reach the operator's own loopback, and the API token
/// must not travel through one.
pub fn api_client(server: &str, timeout: std::time::Duration) -> Result<reqwest::blocking::Client> {
    let mut b = reqwest::blocking::Client::builder().timeout(timeout);
    if is_loopback_url(server) {
        b = b.no_proxy();
    }
    b.build().context("setting up the HTTP client")
}

/// Whether `url`'s host is a loopback name or address.
fn is_loopback_url(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else {
        return false;
    };
    let Some(host) = u.host_str() else {
        return false;
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok_and(|a| a.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::is_loopback_url;

    #[test]
    fn loopback_servers_are_recognised() {
        assert!(is_loopback_url("http://127.0.0.1:8080"));
        assert!(is_loopback_url("http://127.3.4.5/"));
        assert!(is_loopback_url("http://[::1]:80"));
        assert!(is_loopback_url("http://LOCALHOST:8080"));
        assert!(!is_loopback_url("https://updates.example.com"));
        assert!(!is_loopback_url("http://10.0.0.1:8080"));
        assert!(!is_loopback_url("not a url"));
    }
}
