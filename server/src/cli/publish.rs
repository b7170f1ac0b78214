//! `otter-server publish FILE`: uploads a bundle to a server's `POST /api/v1/releases`,
//! streaming it, with a progress bar when standard error is a terminal.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use zeroize::Zeroizing;

/// Arguments of `publish`.
#[derive(clap::Args, Debug)]
pub struct PublishArgs {
    /// The bundle: a zstd-compressed tar with manifest.json.
    file: PathBuf,
    /// The server's base URL, e.g. https://updates.example.com.
    #[arg(long, env = "OTTER_SERVER", value_name = "URL")]
    server: String,
    /// File holding the API token (first line). Otherwise the OTTER_TOKEN environment
    /// variable.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The channel to publish to [default: stable].
    #[arg(long)]
    channel: Option<String>,
    /// The rollout percent the release starts at, 0 to 100 [default: 100]. Raise it later
    /// with `otter-server rollout set NAME VERSION --percent P`.
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u64).range(0..=100))]
    percent: Option<u64>,
    /// Groups whose devices get the release whatever the percent (comma-separated, e.g.
    /// `pilot,lab`).
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    groups: Vec<String>,
}

/// Counts bytes read into a progress bar.
struct Progress<R> {
    inner: R,
    bar: Option<ProgressBar>,
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(b) = &self.bar {
            b.inc(n as u64);
        }
        Ok(n)
    }
}

fn token(a: &PublishArgs) -> Result<Zeroizing<String>> {
    if let Some(f) = &a.token_file {
        return super::first_line(f, "token");
    }
    match std::env::var("OTTER_TOKEN") {
        Ok(t) if !t.trim().is_empty() => Ok(Zeroizing::new(t.trim().to_owned())),
        _ => bail!("no API token: give --token-file FILE or set OTTER_TOKEN"),
    }
}

/// Runs `publish`.
pub fn run(a: PublishArgs) -> Result<()> {
    let token = token(&a)?;
    let file = std::fs::File::open(&a.file)
        .with_context(|| format!("opening the bundle {}", a.file.display()))?;
    let len = file.metadata()?.len();
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = ProgressBar::new(len);
        if let Ok(style) = ProgressStyle::with_template(
            "uploading {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            b.set_style(style);
        }
        b
    });
    let body = reqwest::blocking::Body::sized(
        Progress {
            inner: std::io::BufReader::with_capacity(1 << 20, file),
            bar: bar.clone(),
        },
        len,
    );
    let base = a.server.trim_end_matches('/');
    let mut url = reqwest::Url::parse(&format!("{base}/api/v1/releases"))
        .with_context(|| format!("--server {}: not a URL", a.server))?;
    {
        let mut q = url.query_pairs_mut();
        if let Some(c) = &a.channel {
            q.append_pair("channel", c);
        }
        if let Some(p) = a.percent {
            q.append_pair("percent", &p.to_string());
        }
        let groups: Vec<&str> = a
            .groups
            .iter()
            .map(|g| g.trim())
            .filter(|g| !g.is_empty())
            .collect();
        if !groups.is_empty() {
            q.append_pair("groups", &groups.join(","));
        }
    }
    if url.query() == Some("") {
        url.set_query(None);
    }
    let url = url.to_string();
    let client = super::api_client(&a.server, Duration::from_secs(3600))?;
    let res = client
        .post(&url)
        .bearer_auth(token.as_str())
        .header("Content-Type", "application/octet-stream")
        .body(body)
        .send()
        .with_context(|| format!("uploading to {url}"));
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let res = res?;
    let status = res.status();
    let text = res.text().unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        let code = json["error"]["code"].as_str().unwrap_or("?");
        let msg = json["error"]["message"].as_str().unwrap_or(text.as_str());
        return Err(anyhow!(
            "the server refused the bundle ({status}, {code}): {msg}"
        ));
    }
    let r = &json["release"];
    eprintln!(
        "published {} {} as {} (targets version {})",
        r["name"].as_str().unwrap_or("?"),
        r["version"].as_str().unwrap_or("?"),
        r["target"].as_str().unwrap_or("?"),
        json["versions"]["targets"]
    );
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}
