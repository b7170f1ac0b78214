//! `otter-server devices list|revoke`: the device inventory, straight on the data dir's
//! database (safe while the server runs; a revocation takes effect on the next request).

use anyhow::Result;
use otter_server::db::unix_now;
use otter_server::fleet::{list_devices, revoke_device, DeviceFilter, DeviceInfo};

use super::DataDirArgs;

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
        /// Print JSON (with the last report) instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: DataDirArgs,
    },
    /// Revoke a device: its signed requests are refused from now on.
    Revoke {
        /// The device id (see `devices list`).
        device_id: String,
        #[command(flatten)]
        dir: DataDirArgs,
    },
}

fn or_dash(v: Option<impl ToString>) -> String {
    v.map_or_else(|| "-".to_string(), |x| x.to_string())
}

fn print_table(devices: &[DeviceInfo]) {
    println!(
        "{:<32}  {:<16}  {:<16}  {:<12}  {:<12}  INSTALLED",
        "DEVICE", "MODEL", "GROUP", "LAST SEEN", "REVOKED"
    );
    for d in devices {
        let installed: Vec<String> = d
            .installed
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        println!(
            "{:<32}  {:<16}  {:<16}  {:<12}  {:<12}  {}",
            d.device_id,
            d.hardware_model,
            or_dash(d.group.as_deref()),
            or_dash(d.last_seen),
            or_dash(d.revoked_at),
            if installed.is_empty() {
                "-".to_string()
            } else {
                installed.join(",")
            }
        );
    }
}

/// Runs a `devices` subcommand.
pub fn run(cmd: DevicesCommand) -> Result<()> {
    match cmd {
        DevicesCommand::List {
            group,
            model,
            json,
            dir,
        } => {
            let db = super::token::open(&dir)?;
            let filter = DeviceFilter { group, model };
            let devices =
                db.with_conn_blocking(|c| -> Result<_> { Ok(list_devices(c, &filter)?) })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&devices)?);
            } else {
                print_table(&devices);
            }
        }
        DevicesCommand::Revoke { device_id, dir } => {
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
