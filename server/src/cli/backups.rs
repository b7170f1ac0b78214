//! `otter-server backups list|show`: the backup catalog, straight on the data dir's
//! database (safe while the server runs).

use anyhow::{bail, Result};
use otter_server::backups::{list_manifests, show_manifest, ManifestRecord};

use super::DataDirArgs;

/// `backups` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum BackupsCommand {
    /// List accepted backups: device, sequence, time, sizes.
    List {
        /// Only this device's backups.
        #[arg(long)]
        device: Option<String>,
        /// Print JSON (with the countersignatures) instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: DataDirArgs,
    },
    /// Show one backup: its catalog record and signed header (packs, chain link), as JSON.
    Show {
        /// The device id.
        device: String,
        /// The backup's sequence number in the device's chain.
        sequence: u64,
        #[command(flatten)]
        dir: DataDirArgs,
    },
}

fn print_table(backups: &[ManifestRecord]) {
    println!(
        "{:<32}  {:>8}  {:>12}  {:>6}  {:>14}  {:>14}  HEADER",
        "DEVICE", "SEQUENCE", "CREATED", "PACKS", "TOTAL BYTES", "NEW BYTES"
    );
    for b in backups {
        println!(
            "{:<32}  {:>8}  {:>12}  {:>6}  {:>14}  {:>14}  {}",
            b.device_id,
            b.sequence,
            b.created,
            b.pack_count,
            b.total_pack_bytes,
            b.new_pack_bytes,
            b.header_hash.get(..16).unwrap_or(&b.header_hash)
        );
    }
}

/// Runs a `backups` subcommand.
pub fn run(cmd: BackupsCommand) -> Result<()> {
    match cmd {
        BackupsCommand::List { device, json, dir } => {
            let db = super::token::open(&dir)?;
            let backups = db.with_conn_blocking(|c| -> Result<_> {
                Ok(list_manifests(c, device.as_deref())?)
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&backups)?);
            } else {
                print_table(&backups);
            }
        }
        BackupsCommand::Show {
            device,
            sequence,
            dir,
        } => {
            let db = super::token::open(&dir)?;
            let found = db.with_conn_blocking(|c| -> Result<_> {
                Ok(show_manifest(c, &device, sequence)?)
            })?;
            let Some((record, header)) = found else {
                bail!(
                    "no backup #{sequence} of device {device:?} (see `otter-server backups list`)"
                );
            };
            let v = serde_json::json!({ "backup": record, "header": header });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
    }
    Ok(())
}
