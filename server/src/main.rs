//! `otter-server`: serves an Otter TUF repository. `otter-server serve` with no options keeps
//! its data in `./otter-data` and listens on `127.0.0.1:8080`. `init`, `token`, `publish`,
//! `enroll-token`, `devices`, `backups`, `rollout` and `audit` administer it (see [`cli`]).

mod cli;

use std::io::Write;
use std::net::{TcpListener, ToSocketAddrs};
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand};
use otter_server::{Config, LogFormat, Server};

#[derive(Parser)]
#[command(
    name = "otter-server",
    version,
    about = "Otter's update and backup server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the repository (on an empty data dir, create a development repository first).
    Serve(ServeArgs),
    /// Set up a production repository from `otter-keys init` output.
    Init(cli::init::InitArgs),
    /// Create, list or revoke API tokens, on the server host (no token needed).
    #[command(subcommand)]
    Token(cli::token::TokenCommand),
    /// Upload and publish a release bundle.
    Publish(cli::publish::PublishArgs),
    /// Create, list or revoke single-use enrollment tokens for terminals, on the server
    /// host (or with --server through the API).
    #[command(subcommand)]
    EnrollToken(cli::enroll_token::EnrollTokenCommand),
    /// List or revoke enrolled devices, on the server host.
    #[command(subcommand)]
    Devices(cli::devices::DevicesCommand),
    /// List, show, verify or prune received backups, on the server host; export a backup and
    /// import transfers through the API.
    #[command(subcommand)]
    Backups(cli::backups::BackupsCommand),
    /// Show or change a release's rollout (percent, groups, pause, resume, abort), through
    /// the API.
    #[command(subcommand)]
    Rollout(cli::rollout::RolloutCommand),
    /// Verify the hash-chained audit log (on the server host) or list it (through the API).
    #[command(subcommand)]
    Audit(cli::audit::AuditCommand),
    /// Publish a new root version (rotated offline with otter-keys) through the API.
    #[command(subcommand)]
    Root(cli::root::RootCommand),
    /// Install online keys for a rotated root into the data dir, on the server host.
    #[command(subcommand)]
    Keys(cli::root::KeysCommand),
    /// Create binary deltas with the codec publishing uses (operators, benchmarks).
    #[command(subcommand)]
    Delta(cli::delta::DeltaCommand),
    /// Print an example configuration file holding every default.
    DefaultConfig,
    /// Print the API's OpenAPI 3.1 document (JSON), or with --markdown the reference
    /// docs/api.md is generated from (scripts/gen-api-docs.sh).
    Openapi {
        /// Print the Markdown reference instead of JSON.
        #[arg(long)]
        markdown: bool,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file (unknown keys are refused).
    #[arg(long, env = "OTTER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory [default: ./otter-data].
    #[arg(long, env = "OTTER_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free one [default: 127.0.0.1:8080].
    #[arg(long, env = "OTTER_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    /// Object store URL, file:///ABSOLUTE/PATH or s3://BUCKET/PREFIX (the rest of an S3
    /// store is set in the config file's [store]) [default: DATA_DIR/store].
    #[arg(long, env = "OTTER_STORE_URL", value_name = "URL")]
    store_url: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "OTTER_LOG_FORMAT", value_name = "text|json")]
    log_format: Option<LogFormat>,
    /// Production repositories: file holding the online keys' passphrase (else the
    /// OTTER_SERVER_KEY_PASSPHRASE environment variable).
    #[arg(long, env = "OTTER_KEY_PASSPHRASE_FILE", value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// When the store holds newer TUF metadata than the database (an older database copy
    /// was restored), re-sign the database's state at versions above the store's instead of
    /// refusing to start (docs/disaster-recovery.md).
    #[arg(long)]
    resume_above_store: bool,
    /// A write-only backup fleet, true or false ([backups] write_only): terminals enrolled
    /// from now on encrypt backups to the recovery key alone and keep no backup identity.
    #[arg(long, env = "OTTER_BACKUPS_WRITE_ONLY", value_name = "true|false")]
    backups_write_only: Option<bool>,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => serve(args),
        Command::Init(args) => cli::init::run(args),
        Command::Token(cmd) => cli::token::run(cmd),
        Command::Publish(args) => cli::publish::run(args),
        Command::EnrollToken(cmd) => cli::enroll_token::run(cmd),
        Command::Devices(cmd) => cli::devices::run(cmd),
        Command::Backups(cmd) => cli::backups::run(cmd),
        Command::Rollout(cmd) => cli::rollout::run(cmd),
        Command::Audit(cmd) => cli::audit::run(cmd),
        Command::Root(cmd) => cli::root::run_root(cmd),
        Command::Keys(cmd) => cli::root::run_keys(cmd),
        Command::Delta(cmd) => cli::delta::run(cmd),
        Command::DefaultConfig => {
            print!("{}", otter_server::config::EXAMPLE_CONFIG);
            Ok(())
        }
        Command::Openapi { markdown } => {
            if markdown {
                print!("{}", otter_server::http::openapi::markdown());
            } else {
                let doc = otter_server::http::openapi::document();
                println!("{}", serde_json::to_string_pretty(&doc)?);
            }
            Ok(())
        }
    }
}

fn serve(args: ServeArgs) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    config.data_dir = args.data_dir.unwrap_or(config.data_dir);
    config.listen = args.listen.unwrap_or(config.listen);
    config.store.url = args.store_url.or(config.store.url);
    config.log_format = args.log_format.unwrap_or(config.log_format);
    config.key_passphrase_file = args.passphrase_file.or(config.key_passphrase_file);
    config.resume_above_store = args.resume_above_store;
    config.backups.write_only = args.backups_write_only.unwrap_or(config.backups.write_only);
    config.validate()?;
    otter_server::logging::init(config.log_format)?;
    let listener = bind(&config.listen)?;
    let addr = listener.local_addr()?;
    let log_format = config.log_format;
    actix_web::rt::System::new().block_on(async move {
        let shutdown = otter_server::shutdown_signal();
        let server = Server::open(config).await?;
        if let Some(created) = server.dev_repository_created() {
            match log_format {
                otter_server::config::LogFormat::Text => eprintln!("{}", created.warning()),
                // Log collectors parse every line: `Server::open` has already logged the
                // online-root warning as a structured WARN line.
                otter_server::config::LogFormat::Json => {}
            }
            println!(
                "admin API token (shown once, it is stored only hashed): {}",
                created.admin_token.expose_dangerous()
            );
        }
        println!("listening on http://{addr}");
        std::io::stdout().flush()?;
        server.run(listener, shutdown).await?;
        Ok(())
    })
}

fn bind(listen: &str) -> Result<TcpListener> {
    let addrs = listen
        .to_socket_addrs()
        .with_context(|| format!("--listen {listen:?}: not a HOST:PORT address"))?;
    let mut last = None;
    for addr in addrs {
        match TcpListener::bind(addr) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(anyhow!(e).context(format!("cannot listen on {addr}"))),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("--listen {listen:?} resolves to no address")))
}
