//! `otter-server backups list|show|verify|prune`: the backup catalog, straight on the data
//! dir's database and object store (safe while the server runs).

use anyhow::{bail, Context, Result};
use otter_server::audit::Actor;
use otter_server::backups::gc::{prune, PruneOptions, PruneReport};
use otter_server::backups::verify::{verify, VerifyReport};
use otter_server::backups::{list_manifests, show_manifest, ManifestRecord};
use otter_server::db::unix_now;
use otter_server::store::Store;

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
    /// Verify backups without any key: each device's chain (kept and pruned manifests),
    /// the device's signature and the server's countersignature of every manifest, and every
    /// pack a backup needs, re-hashed from the object store. Records the result of each
    /// backup in the catalog. Exits with status 1 when anything is wrong.
    Verify {
        /// Only this device's backups.
        #[arg(long)]
        device: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: DataDirArgs,
    },
    /// Apply the retention policy ([backups.retention]) and delete the backups it does not
    /// keep, then the packs no kept backup needs (packs of a backup still uploading are left
    /// alone for backups.unreferenced_pack_grace_secs). Audited. Safe while the server runs.
    Prune {
        /// Only report what would be pruned; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Only this device's backups.
        #[arg(long)]
        device: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: DataDirArgs,
    },
    /// Export a device's stored backup, ciphertext only, through the server's API (admin or
    /// restorer token) into a new directory: what `otter-keys backup reencrypt --from` reads.
    /// Audited.
    Export(super::transfers::ExportArgs),
    /// Import a transfer (the directory `otter-keys backup reencrypt --out` wrote) for a
    /// device through the server's API; the terminal fetches it with `otter-agent restore
    /// --from-server-transfer`. Checked without a key, stored as ciphertext, audited.
    ImportTransfer(super::transfers::ImportArgs),
    /// List the transfers imported for a device (JSON), through the server's API.
    Transfers(super::transfers::ListArgs),
    /// Delete a transfer through the server's API (admin or restorer token): the device no
    /// longer sees it, its objects are removed from the store, audited. If the store fails
    /// part-way, run it again to finish.
    DeleteTransfer(super::transfers::DeleteArgs),
}

fn open_store(config: &otter_server::Config) -> Result<Store> {
    Store::open(&config.store, &config.default_store_dir())
        .with_context(|| format!("opening the object store of {}", config.data_dir.display()))
}

fn print_verify(r: &VerifyReport) {
    println!(
        "verified {} device(s): {} backup(s), {} pruned chain link(s), {} pack(s), {} bytes hashed",
        r.devices, r.manifests, r.pruned_links, r.packs, r.bytes_hashed
    );
    for p in &r.problems {
        println!("PROBLEM {p}");
    }
    if r.ok {
        println!("OK: every backup verifies");
    }
}

fn print_prune(r: &PruneReport) {
    let verb = if r.dry_run { "would prune" } else { "pruned" };
    for d in &r.devices {
        let kept: Vec<String> = d
            .decisions
            .iter()
            .filter(|x| x.keep())
            .map(|x| format!("#{}", x.sequence))
            .collect();
        println!(
            "{}: keeps {} [{}]; {verb} {:?}; {} pack(s), {} bytes; {} young unreferenced pack(s) left alone",
            d.device_id,
            kept.len(),
            kept.join(" "),
            d.pruned,
            d.collected_packs.len(),
            d.collected_bytes,
            d.packs_in_grace
        );
    }
    println!(
        "{verb} {} backup(s), {} pack(s), {} bytes{}",
        r.manifests_pruned,
        r.packs_collected,
        r.bytes_freed,
        if r.dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        }
    );
    for e in &r.store_errors {
        println!("WARNING {e} (the next prune retries)");
    }
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
        BackupsCommand::Export(a) => super::transfers::export(a)?,
        BackupsCommand::ImportTransfer(a) => super::transfers::import(a)?,
        BackupsCommand::Transfers(a) => super::transfers::list(a)?,
        BackupsCommand::DeleteTransfer(a) => super::transfers::delete(a)?,
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
        BackupsCommand::Verify { device, json, dir } => {
            let db = super::token::open(&dir)?;
            let config = dir.config()?;
            let store = open_store(&config)?;
            let receipt = otter_server::backups::receipt::load_receipt_public_key(&config)
                .context("reading the backup receipt public key (keys/backup-receipt.pub)")?;
            let report = actix_web::rt::System::new().block_on(verify(
                &db,
                &store,
                &receipt,
                device.as_deref(),
                unix_now(),
            ))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_verify(&report);
            }
            if !report.ok {
                bail!(
                    "{} problem(s) found in the backups (listed above)",
                    report.problems.len()
                );
            }
        }
        BackupsCommand::Prune {
            dry_run,
            device,
            json,
            dir,
        } => {
            let db = super::token::open(&dir)?;
            let config = dir.config()?;
            config.validate()?;
            let store = open_store(&config)?;
            let opts = PruneOptions {
                device,
                dry_run,
                now: unix_now(),
                grace_secs: config.backups.unreferenced_pack_grace_secs,
            };
            let report = actix_web::rt::System::new().block_on(prune(
                &db,
                &store,
                &config.backups.retention,
                opts,
                Actor::host("otter-server backups prune"),
            ))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_prune(&report);
            }
        }
    }
    Ok(())
}
