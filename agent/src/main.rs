//! `otter-agent`: the terminal agent. `enroll` registers the terminal with a server,
//! `report` sends it a signed report, `backup` backs the terminal's SQLite database up to
//! it (encrypted to the fleet's recovery key and the terminal's own backup key), and `tuf` is a standalone TUF client that checks any
//! TUF repository or mirror with the agent's own client code. `update` makes one update
//! pass, `run` is the daemon loop, `status` shows what is installed and pending, and
//! `config` checks the agent's configuration (see docs/agent.md).

mod daemon_cmd;
mod delta_cmd;
mod restore_cmd;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use otter_agent::device::EnrollOptions;
use otter_agent::tuf::{init_metadata_dir, HttpFetcher, Updater, UpdaterConfig};
use otter_keys::time::UtcTime;

/// Command-line interface of `otter-agent`.
#[derive(Parser)]
#[command(name = "otter-agent", version, about = "Otter's terminal agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll this terminal: create its keys, pin the trusted root shipped with the image,
    /// and register with the server using a single-use enrollment token.
    Enroll(EnrollArgs),
    /// Send a signed report (installed versions, health, security events) to the server.
    Report(ReportArgs),
    /// Back the terminal's SQLite database up to the server it enrolled with: only pages
    /// the server does not hold yet are shipped, encrypted to the fleet's recovery key and
    /// (unless the fleet is write-only) the terminal's own backup key, under a manifest
    /// signed by the device key.
    Backup(BackupArgs),
    /// Restore the terminal's database from a backup on the server, after verifying
    /// everything (signatures, chain, countersignatures, packs, pages, hashes, integrity,
    /// row counts); the live database is replaced atomically or left untouched.
    Restore(restore_cmd::RestoreArgs),
    /// On a write-only terminal: create the one-time key a backup is re-encrypted to for a
    /// restore (with the fleet recovery key) and print its recipient (age1...).
    RestoreKey(restore_cmd::RestoreKeyArgs),
    /// Switch a component back to its previous kept version (journaled and crash-safe like
    /// an install); the version switched away from becomes the previous one.
    Rollback(RollbackArgs),
    /// A standalone TUF client (the agent's own client code) for any TUF repository or
    /// mirror; follows the client CLI of the TUF conformance suite.
    Tuf(TufArgs),
    /// One update pass: refresh the signed metadata, choose updates, download them
    /// (resumable, verified), apply them inside the maintenance window, report.
    Update(daemon_cmd::UpdateArgs),
    /// The daemon: poll with jitter and backoff, apply in maintenance windows, make the
    /// scheduled backups; stops on SIGTERM or SIGINT.
    Run(daemon_cmd::RunArgs),
    /// What is installed, pending and waiting, the last poll and results, recent history.
    Status(daemon_cmd::StatusArgs),
    /// Check or print the agent's configuration file.
    #[command(subcommand)]
    Config(daemon_cmd::ConfigAction),
    /// Rebuild a file from a base and an Otter delta (operators, benchmarks).
    #[command(subcommand)]
    Delta(delta_cmd::DeltaCommand),
    /// Re-hash the installed components against their manifests and check the live
    /// database now; drift or corruption becomes a security event sent in a signed report.
    /// Exit status 1 when something was found (see docs/monitoring.md).
    Check(CheckArgs),
}

/// Options of `otter-agent check`.
#[derive(clap::Args)]
struct CheckArgs {
    #[command(flatten)]
    config: daemon_cmd::ConfigArgs,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Also run the slow `PRAGMA integrity_check` (instead of `quick_check`).
    #[arg(long)]
    full: bool,
    /// Record the events for the next report but do not send one now.
    #[arg(long)]
    no_report: bool,
}

fn check(a: CheckArgs) -> Result<()> {
    use otter_agent::integrity::{run_checks, watched_database, Due};
    let cfg = a.config.resolve()?;
    let has_db = watched_database(&cfg).is_some();
    let due = Due {
        integrity: true,
        quick_check: has_db && !a.full,
        full_check: has_db && a.full,
    };
    let r = run_checks(&cfg, due, !a.no_report)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        for c in r.components.iter().flatten() {
            if c.findings.is_empty() {
                println!("{} {}: intact ({} files)", c.component, c.version, c.files);
            }
            for f in &c.findings {
                let kind = serde_json::to_value(f.kind)?;
                println!(
                    "{} {}: {} {}: {}",
                    c.component,
                    c.version,
                    kind.as_str().unwrap_or("?"),
                    f.path,
                    f.detail
                );
            }
        }
        if let Some(d) = &r.database {
            println!(
                "database {}: PRAGMA {}: {}",
                d.path.display(),
                d.level.pragma(),
                d.messages.join("; ")
            );
        }
        for e in &r.events {
            println!("security event {}: {}", e.kind, e.detail);
        }
        match &r.reported {
            Some(Ok(())) => println!("reported to the server"),
            Some(Err(e)) => eprintln!(
                "warning: the report did not reach the server (kept for the next poll): {e}"
            ),
            None => {}
        }
    }
    anyhow::ensure!(
        !r.found_problems(),
        "integrity drift or database corruption found"
    );
    Ok(())
}

/// Options of `otter-agent enroll`.
#[derive(clap::Args)]
struct EnrollArgs {
    /// The server's base URL, e.g. https://otter.example.
    #[arg(long, value_name = "URL")]
    server: String,
    /// The enrollment token (prefer --token-file or OTTER_ENROLL_TOKEN: command lines are
    /// visible to other users).
    #[arg(
        long,
        env = "OTTER_ENROLL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// File whose first line is the enrollment token.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The trusted root metadata shipped with the terminal image (never from the network).
    #[arg(long, value_name = "FILE")]
    trusted_root: PathBuf,
    /// The agent's state dir (created 0700 if missing).
    #[arg(long, env = "OTTER_STATE_DIR", value_name = "DIR")]
    state_dir: PathBuf,
    /// The terminal's hardware model.
    #[arg(
        long,
        env = "OTTER_HARDWARE_MODEL",
        default_value = "generic",
        value_name = "MODEL"
    )]
    model: String,
}

/// Options of `otter-agent report`.
#[derive(clap::Args)]
struct ReportArgs {
    /// The agent's state dir (enrolled with `otter-agent enroll`).
    #[arg(long, env = "OTTER_STATE_DIR", value_name = "DIR")]
    state_dir: PathBuf,
    /// The agent's TOML config, for its install root [default: /etc/otter/agent.toml when
    /// it exists].
    #[arg(long, env = "OTTER_AGENT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where components are installed: the installed versions are read from its journal
    /// (read-only). Without one, the report says nothing is installed.
    #[arg(long, env = "OTTER_INSTALL_ROOT", value_name = "DIR")]
    install_root: Option<PathBuf>,
}

/// Options of `otter-agent backup`.
#[derive(clap::Args)]
struct BackupArgs {
    /// The agent's state dir (enrolled with `otter-agent enroll`); backup state is kept in
    /// its `backup/` subdirectory.
    #[arg(long, env = "OTTER_STATE_DIR", value_name = "DIR")]
    state_dir: PathBuf,
    /// The live SQLite database to back up.
    #[arg(long, env = "OTTER_DATABASE", value_name = "FILE")]
    database: PathBuf,
    /// Bytes of compressed pages after which a pack is sealed and uploaded.
    #[arg(long, value_name = "BYTES", default_value_t = otter_agent::backup::DEFAULT_PACK_TARGET)]
    pack_size: usize,
    /// Upload bandwidth cap in bytes per second, for all uploads of this run together
    /// (cellular links); 0: unlimited.
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    limit_rate: u64,
    /// Pack uploads in flight at once (at most N + 1 sealed packs are held in memory).
    #[arg(long, value_name = "N", default_value_t = otter_agent::backup::DEFAULT_PARALLEL_UPLOADS)]
    parallel: usize,
}

fn backup(a: BackupArgs) -> Result<()> {
    anyhow::ensure!(a.pack_size > 0, "--pack-size must be at least 1 byte");
    anyhow::ensure!(a.parallel > 0, "--parallel must be at least 1");
    // A progress bar of the pack bytes uploaded, on a terminal only.
    let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "uploading new packs {bar:40} {bytes}/{total_bytes} {bytes_per_sec}",
        ) {
            bar.set_style(style);
        }
        bar
    });
    let shipping = otter_agent::backup::Shipping {
        pack_size: a.pack_size,
        max_upload_bytes_per_sec: a.limit_rate,
        parallel_uploads: a.parallel,
        progress: bar.clone(),
    };
    let report = otter_agent::backup::backup_enrolled(&a.state_dir, &a.database, &shipping);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let otter_agent::backup::Shipped {
        device_id,
        report,
        receipt,
    } = report?;
    println!(
        "backup #{} of device {}: {} pages, {} new chunks, {} bytes shipped ({} in {} new packs, {} of manifest)",
        report.sequence,
        device_id,
        report.pages,
        report.new_chunks,
        report.pack_bytes + report.manifest_bytes,
        report.pack_bytes,
        report.new_packs,
        report.manifest_bytes
    );
    match receipt {
        Some(r) => {
            anyhow::ensure!(
                r.header_hash == report.header_hash && r.sequence == report.sequence,
                "the server's receipt names header {} (#{}), not the backup's {} (#{})",
                r.header_hash,
                r.sequence,
                report.header_hash,
                report.sequence
            );
            println!(
                "countersigned by the server: header {} (sequence {})",
                r.header_hash, r.sequence
            );
        }
        None => println!("header {} (no receipt from the server)", report.header_hash),
    }
    Ok(())
}

fn enroll(a: EnrollArgs) -> Result<()> {
    let token = match (a.token, &a.token_file) {
        (Some(t), _) => zeroize::Zeroizing::new(t),
        (None, Some(path)) => {
            let raw = zeroize::Zeroizing::new(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading the token file {}", path.display()))?,
            );
            zeroize::Zeroizing::new(raw.lines().next().unwrap_or("").trim().to_owned())
        }
        (None, None) => anyhow::bail!(
            "give the enrollment token with --token, --token-file or OTTER_ENROLL_TOKEN"
        ),
    };
    let opts = EnrollOptions {
        server_url: a.server,
        token,
        trusted_root: a.trusted_root,
        state_dir: a.state_dir,
        hardware_model: a.model,
    };
    let state = otter_agent::device::enroll(&opts, UtcTime::now())?;
    println!("enrolled as device {}", state.device_id);
    eprintln!(
        "model {}, group {}, repository {}; state in {}",
        state.hardware_model,
        state.group.as_deref().unwrap_or("none"),
        state.metadata_url,
        opts.state_dir.display()
    );
    Ok(())
}

fn report(a: ReportArgs) -> Result<()> {
    let install_root = match a.install_root {
        Some(r) => Some(r),
        None => otter_agent::config::AgentConfig::load_or_default(a.config.as_deref())?
            .install_root
            .clone(),
    };
    // Read-only: never runs crash recovery nor waits on the daemon's lock. A journal that
    // cannot be read is an error, not an empty inventory (that would wipe the server's).
    let installed = match install_root.as_deref().filter(|r| r.exists()) {
        Some(root) => otter_agent::apply::JournalView::open(root)
            .and_then(|v| v.installed())
            .with_context(|| format!("reading the installed versions under {}", root.display()))?
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect(),
        None => Default::default(),
    };
    let status = otter_agent::status::StatusFile::load(&a.state_dir)?;
    let answer = otter_agent::device::send_report(
        &a.state_dir,
        &otter_agent::device::enroll::current_report(&installed, &status),
    )?;
    println!(
        "report accepted for device {}",
        answer["device_id"].as_str().unwrap_or("?")
    );
    Ok(())
}

/// Options of `otter-agent tuf`; they may come in any order around the command.
#[derive(clap::Args)]
#[command(after_help = "\
Examples:
  otter-agent tuf --metadata-dir md init root.json
  otter-agent tuf --metadata-dir md --metadata-url http://mirror/metadata refresh
  otter-agent tuf --metadata-dir md --metadata-url http://mirror/metadata \\
      --target-name firmware/pos-a-1.2.3.tar.zst --target-base-url http://mirror/targets \\
      --target-dir downloads download

The metadata dir holds only root.json, timestamp.json, snapshot.json, targets.json and
ROLE.json for delegated roles, each byte-identical to what was received and verified.
Exit status 0 on success, 1 on any failure.")]
struct TufArgs {
    /// Directory of the trusted metadata.
    #[arg(long, global = true, value_name = "DIR")]
    metadata_dir: Option<PathBuf>,
    /// Base URL of the repository's metadata (http://, https:// or file://).
    #[arg(long, global = true, value_name = "URL")]
    metadata_url: Option<String>,
    /// Target path to download (repeatable; downloaded in order).
    #[arg(long = "target-name", global = true, value_name = "TARGET")]
    target_names: Vec<String>,
    /// Base URL of the repository's targets.
    #[arg(long, global = true, value_name = "URL")]
    target_base_url: Option<String>,
    /// Directory to store verified targets in.
    #[arg(long, global = true, value_name = "DIR")]
    target_dir: Option<PathBuf>,
    #[command(subcommand)]
    action: TufAction,
}

#[derive(Subcommand)]
enum TufAction {
    /// Store TRUSTED_ROOT as the trusted root (no network).
    Init {
        /// The initial trusted root metadata, obtained out of band.
        trusted_root: PathBuf,
    },
    /// Update the top-level metadata by the TUF client workflow.
    Refresh,
    /// Refresh, then download each --target-name into --target-dir (skipping files already
    /// there with the signed hashes).
    Download,
}

fn need<T>(v: Option<T>, flag: &str) -> Result<T> {
    v.with_context(|| format!("{flag} is required for this command"))
}

fn tuf(a: TufArgs) -> Result<()> {
    let dir = need(a.metadata_dir, "--metadata-dir")?;
    if let TufAction::Init { trusted_root } = &a.action {
        let bytes = std::fs::read(trusted_root)
            .with_context(|| format!("reading {}", trusted_root.display()))?;
        init_metadata_dir(&dir, &bytes)?;
        return Ok(());
    }
    let url = need(a.metadata_url, "--metadata-url")?;
    let mut cfg = UpdaterConfig::new(&url);
    cfg.targets_url = a.target_base_url;
    let fetcher = HttpFetcher::new(Duration::from_secs(10), Duration::from_secs(300))?;
    let mut updater = Updater::new(&dir, cfg, fetcher, UtcTime::now())?;
    updater.refresh()?;
    if let TufAction::Download = a.action {
        let target_dir = need(a.target_dir, "--target-dir")?;
        anyhow::ensure!(
            !a.target_names.is_empty(),
            "--target-name is required for download"
        );
        for name in &a.target_names {
            let info = updater.find_target(name)?;
            if updater.cached_target(name, &info, &target_dir).is_some() {
                continue;
            }
            updater.download_target(name, &info, &target_dir)?;
        }
    }
    Ok(())
}

/// Options of `otter-agent rollback`.
#[derive(clap::Args)]
struct RollbackArgs {
    /// The component to roll back.
    component: String,
    /// The install root holding `components/` and `journal.sqlite` [default: the config's].
    #[arg(long, env = "OTTER_INSTALL_ROOT", value_name = "DIR")]
    install_root: Option<PathBuf>,
    /// The agent's TOML config, for its `[apply]` table [default: /etc/otter/agent.toml
    /// when it exists].
    #[arg(long, env = "OTTER_AGENT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The agent's state dir [default: the config's]: when the version rolled back from
    /// migrated the database, its pre-migration snapshot kept there is put back too (the
    /// application stopped and started by `[migration]` stop/start commands).
    #[arg(long, env = "OTTER_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

fn rollback(a: RollbackArgs) -> Result<()> {
    let cfg = otter_agent::config::AgentConfig::load_or_default(a.config.as_deref())?;
    let root = match a.install_root {
        Some(r) => r,
        None => cfg.install_root()?.to_path_buf(),
    };
    let (mut applier, recoveries) = otter_agent::apply::Applier::open(&root, cfg.apply.clone())?;
    for r in recoveries {
        eprintln!(
            "recovered {} of {} (entry {}, found {}): {}",
            r.op, r.component, r.id, r.found_state, r.action
        );
    }
    let state_dir = a.state_dir.clone().or_else(|| cfg.state_dir.clone());
    let outcome = match &state_dir {
        Some(dir) => otter_agent::migration::rollback(&cfg, dir, &mut applier, &a.component)?,
        None => applier.rollback(&a.component)?,
    };
    match outcome {
        otter_agent::apply::Outcome::RolledBack {
            name,
            from,
            to,
            reason,
        } => {
            let to = to.map_or_else(|| "nothing".to_string(), |v| v.to_string());
            println!("{name}: rolled back from {from} to {to}");
            if let Some((_, note)) = reason.split_once("; ") {
                println!("{name}: {note}");
            }
            if let Some(dir) = &state_dir {
                hold_rolled_back(&applier, dir, &name, &from.to_string())?;
            }
        }
        other => println!("{other:?}"),
    }
    Ok(())
}

/// After `otter-agent rollback`, the version rolled back from is held: the daemon and
/// `update` do not install that target again (it is added to the status file's blocked
/// targets) until `otter-agent update --retry-failed` or a newer release.
fn hold_rolled_back(
    applier: &otter_agent::apply::Applier,
    state_dir: &std::path::Path,
    component: &str,
    from: &str,
) -> Result<()> {
    let target = applier.history(1000)?.into_iter().find_map(|h| {
        (h.component == component && h.op == "install" && h.to.as_deref() == Some(from))
            .then_some(h.target)
            .flatten()
    });
    let Some(target) = target else {
        // Installed without a TUF target (e.g. `tuf apply` by hand): nothing to hold.
        return Ok(());
    };
    let mut status = otter_agent::status::StatusFile::load(state_dir)?;
    status.blocked.insert(
        target.clone(),
        format!("rolled back by the operator (otter-agent rollback) from {from}"),
    );
    status.save(state_dir)?;
    println!(
        "{component}: {target} is held: not installed again until `otter-agent update --retry-failed` or a newer release"
    );
    Ok(())
}

fn main() -> ExitCode {
    // Usage errors exit 1 like every other failure (the conformance suite's contract).
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Tuf(a) => tuf(a),
        Command::Enroll(a) => enroll(a),
        Command::Report(a) => report(a),
        Command::Backup(a) => backup(a),
        Command::Restore(a) => restore_cmd::restore(a),
        Command::RestoreKey(a) => restore_cmd::restore_key(a),
        Command::Rollback(a) => rollback(a),
        Command::Update(a) => daemon_cmd::update(a),
        Command::Run(a) => daemon_cmd::run(a),
        Command::Status(a) => daemon_cmd::status(a),
        Command::Config(a) => daemon_cmd::config(a),
        Command::Delta(a) => delta_cmd::run(a),
        Command::Check(a) => check(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", otter_keys::report::describe(e.as_ref()));
            ExitCode::from(1)
        }
    }
}
