//! `otter-server`: the TUF repository server of Otter, as a library so that tests run the
//! real thing on `127.0.0.1:0`; the `otter-server` binary is a thin shell over it.
//!
//! It owns the HTTP API, the repository (signing targets, snapshot and timestamp with online
//! keys), storage of files through `object_store` and of records in SQLite, API tokens with
//! roles, publishing release bundles, and the fleet (enrollment, signed device requests,
//! reports), rollouts carried in signed targets, and a hash-chained audit log of every change.
//!
//! - [`config`]: defaults, TOML file, validation.
//! - [`setup`]: `otter-server init`, a production repository from `otter-keys init` output.
//! - [`backups`]: the backup catalog, keyless checks of received manifests, the receipt
//!   key that countersigns them.
//! - [`bundle`]: release bundles (zstd tar + manifest) and their validation.
//! - [`datadir`]: creating, checking and locking the data dir.
//! - [`db`]: SQLite in WAL mode, migrations, blocking calls off the executor.
//! - [`store`]: the object store and its keys.
//! - [`repo`]: the TUF repository: state, development setup, re-signing, publication order,
//!   and the file names it serves.
//! - [`tokens`]: API tokens, stored hashed; create, list, revoke, look up.
//! - [`fleet`]: enrollment tokens, devices and their keys, replay protection for signed
//!   device requests, device reports.
//! - [`http`]: routes, the bearer-token extractor and role policies, file serving with
//!   ranges and conditional requests, publishing endpoints, health, errors.
//! - [`resign`]: the background re-signing task.
//! - [`logging`]: `tracing` output as text or JSON.
//! - [`rollout`]: rollouts (percent, groups, pause, resume, abort) and the automatic halt.
//! - [`audit`]: the append-only, hash-chained audit log and its verification.
//! - [`metrics`]: Prometheus counters and their text exposition.
//! - [`console`]: the web console under `/console` (sessions, CSRF, server-rendered pages).

pub mod alerts;
pub mod audit;
pub mod backups;
pub mod bundle;
pub mod config;
pub mod console;
pub mod datadir;
pub mod db;
pub mod fleet;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod repo;
pub mod resign;
pub mod rollout;
pub mod setup;
pub mod store;
pub mod tokens;

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{middleware, web, App, HttpServer};

pub use config::{Config, ConfigError, LogFormat};
pub use repo::{DevRepositoryCreated, RepoError, Repository};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data dir cannot be used.
    #[error(transparent)]
    DataDir(#[from] datadir::DataDirError),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] db::DbError),
    /// The object store failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
}

/// A server that is ready to run: data dir locked, database migrated, repository open (or
/// just created), store up to date.
pub struct Server {
    config: Config,
    db: db::Db,
    store: store::Store,
    repo: Arc<Repository>,
    receipt_key: Arc<otter_keys::crypto::SigningKey>,
    created: Option<DevRepositoryCreated>,
    _lock: datadir::DataDirLock,
}

impl Server {
    /// Opens everything `serve` needs; on an empty data dir, creates a development
    /// repository (see [`Server::dev_repository_created`]).
    pub async fn open(config: Config) -> Result<Server, ServerError> {
        config.validate()?;
        let lock = datadir::prepare(&config.data_dir)?;
        datadir::clear_spool(&config.upload_dir());
        let db = db::Db::open(&config.db_path()).await?;
        let store = store::Store::open(&config.store, &config.default_store_dir())?;
        let (repo, created) = Repository::open_or_init(&config, db.clone(), store.clone()).await?;
        let receipt_key = {
            let (config, mode) = (config.clone(), repo.mode());
            tokio::task::spawn_blocking(move || backups::receipt::open_or_create(&config, mode))
                .await
                .map_err(|e| {
                    RepoError::Setup(format!("opening the backup receipt key failed: {e}"))
                })??
        };
        let v = repo.versions().await;
        if repo.mode() == repo::RepoMode::Development {
            tracing::warn!(
                keys_dir = %config.keys_dir().display(),
                "serving a DEVELOPMENT repository: its root key is online; never ship a device that trusts it"
            );
        }
        if let Some(w) = repo
            .root_expiry_warning(otter_keys::time::UtcTime::now())
            .await
        {
            tracing::warn!("{w}");
        }
        tracing::info!(
            data_dir = %config.data_dir.display(),
            store = store.url(),
            root = v.root,
            targets = v.targets,
            snapshot = v.snapshot,
            timestamp = v.timestamp,
            "repository open"
        );
        Ok(Server {
            config,
            db,
            store,
            repo: Arc::new(repo),
            receipt_key: Arc::new(receipt_key),
            created,
            _lock: lock,
        })
    }

    /// What this start created, when the data dir was empty: the one-time admin token and
    /// the development warning. `None` on every later start.
    pub fn dev_repository_created(&self) -> Option<&DevRepositoryCreated> {
        self.created.as_ref()
    }

    /// The repository.
    pub fn repository(&self) -> &Arc<Repository> {
        &self.repo
    }

    /// Serves on `listener` until `shutdown` completes, then stops accepting, lets requests
    /// in flight finish (up to `shutdown_timeout_secs`) and stops the re-signing task. Must
    /// run inside an actix system (`actix_web::rt::System`).
    pub async fn run<S>(self, listener: TcpListener, shutdown: S) -> Result<(), ServerError>
    where
        S: Future<Output = ()> + Send + 'static,
    {
        let Server {
            config,
            db,
            store,
            repo,
            receipt_key,
            created,
            _lock,
        } = self;
        drop(created);
        listener.set_nonblocking(true).map_err(ServerError::Http)?;
        let state = web::Data::new(http::AppState {
            db,
            store,
            repo: Arc::clone(&repo),
            publishing: config.publishing.clone(),
            upload_dir: config.upload_dir(),
            backups: config.backups.clone(),
            rollouts: config.rollouts.clone(),
            receipt_key,
            backup_lock: tokio::sync::Mutex::new(()),
        });
        let manifest_cap = config.backups.max_manifest_bytes;
        let console_state = web::Data::new(console::ConsoleState::new(config.console.clone()));
        let alerts = web::Data::new(
            alerts::Alerts::from_config(&config.alerts)
                .map_err(|e| ServerError::Config(ConfigError::Invalid(e.to_string())))?,
        );
        // Webhook deliveries that were pending when the server last stopped are sent again.
        alerts.resume_pending(&state.db).await;
        // Backup transfers an earlier run was importing or deleting when it stopped are
        // removed, in the background (they are hidden from devices meanwhile).
        let sweep = state.clone();
        actix_web::rt::spawn(async move {
            backups::transfers::sweep_unfinished(&sweep.db, &sweep.store).await;
        });
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(console_state.clone())
                .app_data(alerts.clone())
                .wrap(middleware::from_fn(metrics::track))
                .wrap(middleware::from_fn(http::log_request))
                .configure(|c| http::configure_with_manifest_cap(c, manifest_cap))
        })
        .disable_signals()
        // Small responses (timestamp.json, API answers) go out at once instead of waiting
        // for the client's delayed ACK (about 40 ms a request on a kept-alive connection).
        .tcp_nodelay(true)
        .shutdown_timeout(config.shutdown_timeout_secs);
        if let Some(n) = config.workers {
            server = server.workers(n);
        }
        let server = server.listen(listener).map_err(ServerError::Http)?.run();

        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let every = Duration::from_secs(config.repository.resign_check_secs);
        let resigner = tokio::spawn(resign::run(repo, every, stop_rx));

        let handle = server.handle();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: finishing requests in flight");
            handle.stop(true).await;
        });
        let result = server.await.map_err(ServerError::Http);
        let _ = stop_tx.send(());
        if let Err(e) = resigner.await {
            tracing::error!(error = %e, "the re-signing task failed");
        }
        tracing::info!("stopped");
        result
    }
}

/// Opens everything and serves on `listener` until `shutdown` completes: what the binary
/// does, for tests and embedding. Must run inside an actix system.
pub async fn launch_with_listener<S>(
    config: Config,
    listener: TcpListener,
    shutdown: S,
) -> Result<(), ServerError>
where
    S: Future<Output = ()> + Send + 'static,
{
    Server::open(config).await?.run(listener, shutdown).await
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM. The SIGTERM handler is registered when this is
/// called (inside the runtime), not when the future is first polled, so a SIGTERM that arrives
/// right after the server says it is listening still stops it gracefully.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let term = {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(term) => Some(term),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                None
            }
        }
    };
    let ctrl = Box::pin(ctrl_c());
    async move {
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = ctrl => {}
                _ = term.recv() => {}
            }
            return;
        }
        ctrl.await;
    }
}

/// Completes on Ctrl-C; never, if Ctrl-C cannot be listened for.
async fn ctrl_c() {
    if let Err(e) = tokio::signal::ctrl_c().await {
        tracing::warn!(error = %e, "cannot listen for Ctrl-C");
        std::future::pending::<()>().await;
    }
}
