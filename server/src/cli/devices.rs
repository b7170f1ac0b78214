//! `otter-server devices list|revoke`: the device inventory, straight on the data dir's
//! database (safe while the server runs; a revocation takes effect on the next request), or
//! through the server's API with `--server URL` and an API token. Also owns [`ApiMode`], the
//! `--server`/`--token-file` pair `devices` and `token` share.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use otter_server::db::unix_now;
use otter_server::fleet::{list_devices, revoke_device, DeviceFilter};
use otter_server::http::fleet_api::DeviceQuery;
use reqwest::Method;

use super::rollout::ApiArgs;
use super::DataDirArgs;

/// `--server URL` and `--token-file FILE`: go through the API instead of the data dir.
#[derive(clap::Args, Debug)]
pub struct ApiMode {
    /// Go through this server's API (base URL, e.g. https://updates.example.com) with an API
    /// token instead of opening the data dir's database (which needs the server host).
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// With --server: file holding the API token (first line). Otherwise the OTTER_TOKEN
    /// environment variable.
    #[arg(long, value_name = "FILE", requires = "server")]
    pub token_file: Option<PathBuf>,
}

impl ApiMode {
    /// The API client when `--server` is given; `None` means host mode.
    pub fn api(&self) -> Option<ApiArgs> {
        self.server.as_ref().map(|server| ApiArgs {
            server: server.clone(),
            token_file: self.token_file.clone(),
        })
    }
}

/// The JSON answer's `key` as `T`, or an error naming what the server sent.
pub fn field<T: serde::de::DeserializeOwned>(v: &serde_json::Value, key: &str) -> Result<T> {
    serde_json::from_value(v[key].clone())
        .with_context(|| format!("the server's answer has no valid {key:?}: {v}"))
}

/// `devices` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum DevicesCommand {
    /// List enrolled devices with group, model, last seen and installed versions.
    List {
        /// Only devices of this group.
        #[arg(long)]
        group: Option<String>,
        /// Only devices of this hardware model.
        #[arg(long)]
        model: Option<String>,
        /// Only devices that last reported a component at this version: V (any component)
        /// or NAME=V.
        #[arg(long, value_name = "[NAME=]V")]
        installed: Option<String>,
        /// Only devices whose id, model or group contains this text (case-insensitive).
        #[arg(long, value_name = "TEXT")]
        search: Option<String>,
        /// Print JSON (with the last report) instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: DataDirArgs,
        #[command(flatten)]
        api: ApiMode,
    },
    /// Revoke a device: its signed requests are refused from now on.
    Revoke {
        /// The device id (see `devices list`).
        device_id: String,
        #[command(flatten)]
        dir: DataDirArgs,
        #[command(flatten)]
        api: ApiMode,
    },
}

fn or_dash(v: Option<impl ToString>) -> String {
    v.map_or_else(|| "-".to_string(), |x| x.to_string())
}

fn print_table(devices: &[serde_json::Value]) {
    println!(
        "{:<32}  {:<16}  {:<16}  {:<12}  {:<12}  INSTALLED",
        "DEVICE", "MODEL", "GROUP", "LAST SEEN", "REVOKED"
    );
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    for d in devices {
        let installed: Vec<String> = d["installed"]
            .as_object()
            .map(|m| m.iter().map(|(n, v)| format!("{n}={}", text(v))).collect())
            .unwrap_or_default();
        println!(
            "{:<32}  {:<16}  {:<16}  {:<12}  {:<12}  {}",
            text(&d["device_id"]),
            text(&d["hardware_model"]),
            text(&d["group"]),
            text(&d["last_seen"]),
            text(&d["revoked_at"]),
            if installed.is_empty() {
                "-".to_string()
            } else {
                installed.join(",")
            }
        );
    }
}

/// `/api/v1/devices` with the filters as an encoded query.
fn list_path(q: &DeviceQuery) -> Result<String> {
    let params: Vec<(&str, &String)> = [
        ("group", &q.group),
        ("model", &q.model),
        ("version", &q.version),
        ("search", &q.search),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
    .collect();
    if params.is_empty() {
        return Ok("/api/v1/devices".to_owned());
    }
    let url = reqwest::Url::parse_with_params("http://otter.invalid/api/v1/devices", &params)
        .context("encoding the device filters")?;
    Ok(format!("/api/v1/devices?{}", url.query().unwrap_or("")))
}

/// A device id as a URL path segment (ids are letters, digits, `-`, `_` and `.`).
fn device_segment(id: &str) -> Result<&str> {
    let ok = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && id != "."
        && id != "..";
    if ok {
        Ok(id)
    } else {
        bail!("{id:?} is not a device id (see `otter-server devices list`)")
    }
}

/// Runs a `devices` subcommand.
pub fn run(cmd: DevicesCommand) -> Result<()> {
    match cmd {
        DevicesCommand::List {
            group,
            model,
            installed,
            search,
            json,
            dir,
            api,
        } => {
            let query = DeviceQuery {
                group,
                model,
                version: installed,
                search,
            };
            if let Some(api) = api.api() {
                let v = api.call(Method::GET, &list_path(&query)?, None)?;
                let devices: Vec<serde_json::Value> = field(&v, "devices")?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&devices)?);
                } else {
                    print_table(&devices);
                }
                return Ok(());
            }
            let db = super::token::open(&dir)?;
            let filter = DeviceFilter {
                group: query.group.clone(),
                model: query.model.clone(),
            };
            let mut devices =
                db.with_conn_blocking(|c| -> Result<_> { Ok(list_devices(c, &filter)?) })?;
            devices.retain(|d| query.keeps(d));
            if json {
                println!("{}", serde_json::to_string_pretty(&devices)?);
            } else {
                let rows: Vec<serde_json::Value> = devices
                    .iter()
                    .map(serde_json::to_value)
                    .collect::<Result<_, _>>()?;
                print_table(&rows);
            }
        }
        DevicesCommand::Revoke {
            device_id,
            dir,
            api,
        } => {
            if let Some(api) = api.api() {
                let d = api.call(
                    Method::DELETE,
                    &format!("/api/v1/devices/{}", device_segment(&device_id)?),
                    None,
                )?;
                let id: String = field(&d, "device_id")?;
                let model: String = field(&d, "hardware_model")?;
                let revoked: Option<i64> = field(&d, "revoked_at")?;
                println!(
                    "device {id} ({model}) is revoked since {}",
                    or_dash(revoked)
                );
                return Ok(());
            }
            let db = super::token::open(&dir)?;
            let d = db.with_conn_blocking(|c| -> Result<_> {
                let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let now = unix_now();
                let was_valid = otter_server::fleet::device_key(&tx, &device_id)?
                    .is_some_and(|k| k.revoked_at.is_none());
                let d = revoke_device(&tx, &device_id, now)?;
                if was_valid {
                    otter_server::audit::append(
                        &tx,
                        &otter_server::audit::Actor::host("otter-server devices revoke"),
                        "device.revoke",
                        &format!("device:{}", d.device_id),
                        &serde_json::json!({"hardware_model": d.hardware_model, "group": d.group}),
                        now,
                    )?;
                }
                tx.commit()?;
                Ok(d)
            })?;
            println!(
                "device {} ({}) is revoked since {}",
                d.device_id,
                d.hardware_model,
                or_dash(d.revoked_at)
            );
        }
    }
    Ok(())
}
