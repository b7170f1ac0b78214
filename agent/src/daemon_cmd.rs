//! The command-line side of `otter-agent update`, `run`, `status` and `config`: the
//! configuration flags shared by the three (file, then `OTTER_*` environment, then flags),
//! and what each command prints.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result};
use otter_agent::config::{AgentConfig, TimeBasis, Window};
use otter_agent::status::{StatusFile, StatusReport};

/// Configuration flags of `update`, `run` and `status`; each overrides the config file.
#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    /// The agent's TOML config [default: /etc/otter/agent.toml when it exists].
    #[arg(long, env = "OTTER_AGENT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The agent's state dir (enrolled with `otter-agent enroll`).
    #[arg(long, env = "OTTER_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Where components are installed (versioned dirs, `current` symlinks, the journal).
    #[arg(long, env = "OTTER_INSTALL_ROOT", value_name = "DIR")]
    install_root: Option<PathBuf>,
    /// The release channel this terminal follows.
    #[arg(long, env = "OTTER_CHANNEL", value_name = "NAME")]
    channel: Option<String>,
    /// Seconds between polls of `run`.
    #[arg(long, env = "OTTER_POLL_INTERVAL_SECS", value_name = "SECS")]
    poll_interval: Option<u64>,
    /// A daily window HH:MM-HH:MM in which updates may be applied (repeatable, or
    /// comma-separated); replaces the config's windows.
    #[arg(
        long = "maintenance-window",
        env = "OTTER_MAINTENANCE_WINDOWS",
        value_name = "HH:MM-HH:MM",
        value_delimiter = ','
    )]
    windows: Vec<Window>,
    /// Whether windows are in local time or UTC.
    #[arg(long, env = "OTTER_WINDOW_TIME", value_name = "local|utc")]
    window_time: Option<TimeBasis>,
}

impl ConfigArgs {
    /// The configuration: file, then these overrides, validated.
    pub fn resolve(&self) -> Result<AgentConfig> {
        let mut c = AgentConfig::load_or_default(self.config.as_deref())?;
        if let Some(d) = &self.state_dir {
            c.state_dir = Some(d.clone());
        }
        if let Some(d) = &self.install_root {
            c.install_root = Some(d.clone());
        }
        if let Some(ch) = &self.channel {
            c.update.channel = ch.clone();
        }
        if let Some(p) = self.poll_interval {
            c.update.poll_interval_secs = p;
        }
        if !self.windows.is_empty() {
            c.update.maintenance_windows = self.windows.clone();
        }
        if let Some(t) = self.window_time {
            c.update.window_time = t;
        }
        c.validate()?;
        Ok(c)
    }
}

/// Options of `otter-agent update`.
#[derive(clap::Args, Debug)]
pub struct UpdateArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Download and verify the chosen updates, apply nothing.
    #[arg(long)]
    download_only: bool,
    /// Apply now even outside the maintenance windows.
    #[arg(long)]
    now: bool,
    /// Try again targets that were rolled back or refused before.
    #[arg(long)]
    retry_failed: bool,
}

/// `otter-agent update`: one pass. Exit status 1 when the pass failed or an update failed
/// or was rolled back.
pub fn update(a: UpdateArgs) -> Result<()> {
    let cfg = a.config.resolve()?;
    let report = otter_agent::update::run_pass(
        &cfg,
        &otter_agent::update::PassOptions {
            download_only: a.download_only,
            ignore_windows: a.now,
            retry_failed: a.retry_failed,
            progress: true,
            no_report: false,
            cancel: None,
        },
    )?;
    for l in &report.lines {
        println!("{l}");
    }
    if report.results.is_empty() && report.waiting.is_empty() {
        println!("up to date");
    }
    if let Some(Err(e)) = &report.reported {
        eprintln!("warning: the report did not reach the server (kept for the next poll): {e}");
    }
    let bad: Vec<String> = report
        .results
        .iter()
        .filter(|r| r.result != otter_agent::status::ResultKind::Success)
        .map(|r| format!("{} {}: {}", r.component, r.version, r.message))
        .collect();
    anyhow::ensure!(bad.is_empty(), "{}", bad.join("; "));
    Ok(())
}

/// Options of `otter-agent run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Run one iteration (backup if due, one update pass), then exit.
    #[arg(long)]
    once: bool,
}

/// `otter-agent run`: the daemon loop until SIGTERM/SIGINT.
pub fn run(a: RunArgs) -> Result<()> {
    let cfg = a.config.resolve()?;
    let stop = otter_agent::daemon::shutdown_flag()?;
    otter_agent::daemon::run(
        &cfg,
        &otter_agent::daemon::DaemonOptions {
            once: a.once,
            progress: std::io::stderr().is_terminal(),
        },
        &stop,
    )?;
    Ok(())
}

/// Options of `otter-agent status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// How many journal entries to show.
    #[arg(long, default_value_t = 10, value_name = "N")]
    history: usize,
}

/// `otter-agent status`.
pub fn status(a: StatusArgs) -> Result<()> {
    use otter_agent::device::AgentState;
    let cfg = a.config.resolve()?;
    let state_dir = cfg.state_dir()?;
    let state = AgentState::load(state_dir)?;
    let file = StatusFile::load(state_dir)?;
    let mut report = StatusReport {
        device_id: state.as_ref().map(|s| s.device_id.clone()),
        server_url: state.as_ref().map(|s| s.server_url.clone()),
        install_root: cfg.install_root.clone(),
        installed: Default::default(),
        pending_downloads: otter_agent::download::pending(
            &state_dir.join(otter_agent::update::DOWNLOADS_DIR),
        )?,
        waiting: file.waiting,
        last_poll: file.last_poll,
        consecutive_failures: file.consecutive_failures,
        results: file.results,
        blocked: file.blocked,
        unreported_events: file.unreported_events,
        history: Vec::new(),
        apply_error: None,
        last_backup: file.last_backup,
    };
    if let Some(root) = cfg.install_root.as_deref().filter(|r| r.exists()) {
        let limit = a.history;
        // Read-only: status never runs crash recovery nor waits on the daemon's lock.
        let read = otter_agent::apply::JournalView::open(root)
            .and_then(|view| Ok((view.installed()?, view.history(limit)?)));
        match read {
            Ok((installed, history)) => {
                report.installed = installed
                    .into_iter()
                    .map(|(k, v)| (k, v.to_string()))
                    .collect();
                report.history = history;
            }
            Err(e) => report.apply_error = Some(otter_keys::report::describe(&e)),
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

/// `otter-agent config ...`.
#[derive(clap::Subcommand, Debug)]
pub enum ConfigAction {
    /// Parse and check an agent config file with the agent's own parser (exit 1 with the
    /// reason if it is refused).
    Check {
        /// The file.
        file: PathBuf,
    },
    /// Print the example configuration (every key with its default).
    Default,
}

/// `otter-agent config check FILE` / `config default`.
pub fn config(a: ConfigAction) -> Result<()> {
    match a {
        ConfigAction::Check { file } => {
            let c = AgentConfig::load(&file)?;
            c.validate()
                .with_context(|| format!("checking {}", file.display()))?;
            println!(
                "{}: ok (poll every {}s, channel {}, {} maintenance window(s))",
                file.display(),
                c.update.poll_interval_secs,
                c.update.channel,
                c.update.maintenance_windows.len()
            );
        }
        ConfigAction::Default => print!("{}", otter_agent::config::EXAMPLE_CONFIG),
    }
    Ok(())
}
