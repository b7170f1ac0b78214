//! `otter-server rollout list|show|set|pause|resume|abort`: a release's rollout, through the
//! server's `/api/v1/rollouts` API with an API token (operator or admin to change it).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use zeroize::Zeroizing;

/// How to reach the API: `--server URL` and a token.
#[derive(clap::Args, Debug)]
pub struct ApiArgs {
    /// The server's base URL, e.g. https://updates.example.com.
    #[arg(long, env = "OTTER_SERVER", value_name = "URL")]
    pub server: String,
    /// File holding the API token (first line). Otherwise the OTTER_TOKEN environment
    /// variable.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

impl ApiArgs {
    fn token(&self) -> Result<Zeroizing<String>> {
        if let Some(f) = &self.token_file {
            return super::first_line(f, "token");
        }
        match std::env::var("OTTER_TOKEN") {
            Ok(t) if !t.trim().is_empty() => Ok(Zeroizing::new(t.trim().to_owned())),
            _ => bail!("no API token: give --token-file FILE or set OTTER_TOKEN"),
        }
    }

    /// Sends a request to `path` (under the base URL); returns the JSON answer of a 2xx, or
    /// the server's error as an error.
    pub fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        self.call_raw(method, path, body.map(|b| b.to_string().into_bytes()))
    }

    /// [`ApiArgs::call`] with a body sent exactly as given (a signed JSON file, byte for
    /// byte), as `application/json`.
    pub fn call_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Value> {
        let token = self.token()?;
        let url = format!("{}{path}", self.server.trim_end_matches('/'));
        let client = super::api_client(&self.server, Duration::from_secs(120))?;
        let mut req = client
            .request(method.clone(), &url)
            .bearer_auth(token.as_str());
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b);
        }
        let res = req.send().with_context(|| format!("{method} {url}"))?;
        let status = res.status();
        let text = res.text().unwrap_or_default();
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let code = json["error"]["code"].as_str().unwrap_or("?");
            let msg = json["error"]["message"].as_str().unwrap_or(text.as_str());
            return Err(anyhow!(
                "the server refused {method} {path} ({status}, {code}): {msg}"
            ));
        }
        Ok(json)
    }
}

/// `rollout` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum RolloutCommand {
    /// List every release's rollout.
    List {
        /// Include yanked releases.
        #[arg(long)]
        yanked: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show a release's rollout: percent, groups, status, what is signed, outcomes.
    Show {
        /// Release (component) name.
        name: String,
        /// Version.
        version: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Set the percent and/or the groups. The percent only goes up unless --force. Given
    /// both, the groups are set first, then the percent: two changes, each signed.
    Set {
        /// Release (component) name.
        name: String,
        /// Version.
        version: String,
        /// Whole percent of devices, 0 to 100.
        #[arg(long)]
        percent: Option<u64>,
        /// Comma-separated groups whose devices get it whatever the percent ("" for none).
        #[arg(long)]
        groups: Option<String>,
        /// Allow lowering the percent (devices that installed the release keep it).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Pause: the signed rollout becomes percent 0, no groups; resume restores it.
    Pause {
        /// Release (component) name.
        name: String,
        /// Version.
        version: String,
        /// Why, for the audit log.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Resume a paused or automatically halted rollout at its stored percent and groups.
    Resume {
        /// Release (component) name.
        name: String,
        /// Version.
        version: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Abort for good: the signed rollout becomes percent 0, no groups.
    Abort {
        /// Release (component) name.
        name: String,
        /// Version.
        version: String,
        /// Why, for the audit log.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

fn seg(s: &str) -> Result<&str> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'));
    if ok {
        Ok(s)
    } else {
        bail!("{s:?} is not a release name or version")
    }
}

fn base(name: &str, version: &str) -> Result<String> {
    Ok(format!("/api/v1/rollouts/{}/{}", seg(name)?, seg(version)?))
}

fn summary(v: &Value) -> String {
    let r = &v["rollout"];
    format!(
        "{} {}: {} at {}% groups {} (signed: {}){}",
        r["name"].as_str().unwrap_or("?"),
        r["version"].as_str().unwrap_or("?"),
        r["status"].as_str().unwrap_or("?"),
        r["percent"],
        r["groups"],
        r["signed"],
        match v["versions"]["targets"].as_u64() {
            Some(t) => format!("; new targets version {t}"),
            None => String::new(),
        }
    )
}

fn print(v: &Value) -> Result<()> {
    eprintln!("{}", summary(v));
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Runs a `rollout` subcommand.
pub fn run(cmd: RolloutCommand) -> Result<()> {
    use reqwest::Method;
    match cmd {
        RolloutCommand::List { yanked, api } => {
            let path = if yanked {
                "/api/v1/rollouts?yanked=true"
            } else {
                "/api/v1/rollouts"
            };
            let v = api.call(Method::GET, path, None)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        RolloutCommand::Show { name, version, api } => {
            let v = api.call(Method::GET, &base(&name, &version)?, None)?;
            print(&v)?;
        }
        RolloutCommand::Set {
            name,
            version,
            percent,
            groups,
            force,
            api,
        } => {
            if percent.is_none() && groups.is_none() {
                bail!("give --percent P and/or --groups a,b");
            }
            let b = base(&name, &version)?;
            let mut last = None;
            if let Some(g) = groups {
                let groups = otter_server::http::rollouts_api::split_groups(&g);
                last = Some(api.call(
                    Method::POST,
                    &format!("{b}/groups"),
                    Some(json!({ "groups": groups })),
                )?);
            }
            if let Some(p) = percent {
                last = Some(api.call(
                    Method::POST,
                    &format!("{b}/percent"),
                    Some(json!({"percent": p, "force": force})),
                )?);
            }
            if let Some(v) = last {
                print(&v)?;
            }
        }
        RolloutCommand::Pause {
            name,
            version,
            reason,
            api,
        } => {
            let path = format!("{}/pause", base(&name, &version)?);
            print(&api.call(Method::POST, &path, Some(json!({ "reason": reason })))?)?;
        }
        RolloutCommand::Resume { name, version, api } => {
            let path = format!("{}/resume", base(&name, &version)?);
            print(&api.call(Method::POST, &path, None)?)?;
        }
        RolloutCommand::Abort {
            name,
            version,
            reason,
            api,
        } => {
            let path = format!("{}/abort", base(&name, &version)?);
            print(&api.call(Method::POST, &path, Some(json!({ "reason": reason })))?)?;
        }
    }
    Ok(())
}
