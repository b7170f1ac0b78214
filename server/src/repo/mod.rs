//! The TUF repository the server publishes: its state, initialisation of a development
//! repository, re-signing, and the order in which files reach the object store.
//!
//! The database is the source of truth. A new metadata version is committed there first;
//! then its file is written to the store, and the file that points to it (the timestamp)
//! last. A crash at any point leaves the store serving the previous consistent state, and the
//! next start writes whatever the database holds and the store lacks.

pub mod build;
pub mod delegated;
pub mod deltas;
pub mod dev;
pub mod names;
pub mod production;
mod records;
pub mod release;
pub mod rotation;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use otter_keys::crypto::KeyId;
use otter_keys::keyfile::KeyFileError;
use otter_keys::metadata::MetadataError;
use otter_keys::time::UtcTime;
use tokio::sync::Mutex;

use crate::config::Config;
use crate::db::{Db, DbError};
use crate::store::{metadata_key, Store, StoreError};
use crate::tokens::{insert_token, ApiToken, RandomError, TokenRole};
use build::{FileRecord, Lifetimes, OnlineKeys, Plan, RepoState, SignedFile, TopRole};

/// What went wrong with the repository.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The object store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A key file could not be written or opened.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// Metadata could not be built or parsed.
    #[error("{context}: {source}")]
    Metadata {
        /// What was being done.
        context: &'static str,
        /// The cause.
        source: MetadataError,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The operating system's random generator failed.
    #[error("{0}")]
    Random(String),
    /// What the data dir holds does not form a valid repository.
    #[error(
        "the repository in the data dir is inconsistent: {0}; restore the data dir from a backup"
    )]
    Inconsistent(String),
    /// The data dir holds a repository this build cannot serve.
    #[error("{0}")]
    Unsupported(String),
    /// A blocking task did not complete.
    #[error("internal task failed: {0}")]
    Task(String),
    /// The request conflicts with what exists (e.g. a version published before).
    #[error("{0}")]
    Conflict(String),
    /// What the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Production setup material is wrong or missing (keys, root, passphrase).
    #[error("{0}")]
    Setup(String),
}

impl From<RandomError> for RepoError {
    fn from(e: RandomError) -> Self {
        RepoError::Random(e.to_string())
    }
}

fn metadata_err(context: &'static str) -> impl FnOnce(MetadataError) -> RepoError {
    move |source| RepoError::Metadata { context, source }
}

/// How the repository's keys are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoMode {
    /// Made by the server on an empty data dir; every key, root included, is on the server.
    Development,
    /// Set up with `otter-server init` from `otter-keys init` material: the root key is
    /// offline; the server holds only the encrypted online keys.
    Production,
}

/// Root metadata expiring within this many seconds is warned about: the server cannot
/// re-sign a production root.
pub const ROOT_EXPIRY_WARNING_SECS: i64 = 30 * 86_400;

/// What a first start on an empty data dir created; shown once to the person starting it.
#[derive(Debug)]
pub struct DevRepositoryCreated {
    /// The admin API token. It is stored only hashed: this is the one chance to see it.
    pub admin_token: ApiToken,
    /// The key id of the (online) root key.
    pub root_key_id: KeyId,
    /// Where the keys were saved.
    pub keys_dir: PathBuf,
}

impl DevRepositoryCreated {
    /// The loud warning about the online root key and how to set up production. Holds no
    /// secret.
    pub fn warning(&self) -> String {
        format!(
            "\
################################################################################
#  DEVELOPMENT REPOSITORY CREATED - ITS ROOT KEY IS ONLINE                     #
################################################################################
  otter-server generated all four TUF keys (root {root}) and keeps them in
  {dir}, with the passphrase beside them. Anyone who can read that
  directory can sign updates for every device that trusts this root.
  Use it for development and tests only; never ship a device that trusts it.

  Production: create offline root keys with `otter-keys init`, then set the
  server up with `otter-server init --root ROOT_JSON --keys-dir KEYS_DIR`.
################################################################################",
            root = self.root_key_id.short(),
            dir = self.keys_dir.display()
        )
    }
}

/// The versions currently published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    /// Root.
    pub root: u64,
    /// Targets.
    pub targets: u64,
    /// Snapshot.
    pub snapshot: u64,
    /// Timestamp.
    pub timestamp: u64,
}

fn versions_of(s: &RepoState) -> Versions {
    Versions {
        root: s.root.version(),
        targets: s.targets.version(),
        snapshot: s.snapshot.version(),
        timestamp: s.timestamp.version(),
    }
}

/// The repository: current state, online keys, database and store.
pub struct Repository {
    db: Db,
    store: Store,
    /// The online keys; replaced whole (under the state lock) when a new root takes effect.
    keys: rotation::KeysHandle,
    /// Where the online key files are and their passphrase (for rotations).
    key_source: Arc<rotation::KeySource>,
    lifetimes: Lifetimes,
    mode: RepoMode,
    /// Which deltas a publish builds (`[deltas]`).
    deltas: deltas::DeltasConfig,
    state: Mutex<RepoState>,
    /// Set when the database holds versions the store may lack (a write failed).
    store_behind: AtomicBool,
}

impl Repository {
    /// Opens the repository in the data dir, or initialises a development repository when
    /// there is none (then returns what was created). Writes to the store whatever the
    /// database holds and the store lacks, and re-signs what is due.
    pub async fn open_or_init(
        config: &Config,
        db: Db,
        store: Store,
    ) -> Result<(Repository, Option<DevRepositoryCreated>), RepoError> {
        let lifetimes = Lifetimes::from(&config.repository);
        let keys_dir = config.keys_dir();
        let mode = db.call(|c| records::mode(c)).await?;
        let mode = match mode.as_deref() {
            None => None,
            Some("development") => Some(RepoMode::Development),
            Some("production") => Some(RepoMode::Production),
            Some(other) => {
                return Err(RepoError::Unsupported(format!(
                "the data dir holds a {other} repository, which this otter-server cannot serve yet"
            )))
            }
        };
        let (state, keys, created, mode) = match mode {
            None => {
                refuse_foreign_repository(&store).await?;
                let (state, keys, created) = init_development(&db, keys_dir, &lifetimes).await?;
                (state, keys, Some(created), RepoMode::Development)
            }
            Some(mode) => {
                let (state, keys) = open_existing(config, &db, &store, mode, &lifetimes).await?;
                (state, keys, None, mode)
            }
        };
        let key_source = Arc::new(rotation::KeySource::for_mode(mode, config)?);
        let repo = Repository {
            db,
            store,
            keys: std::sync::RwLock::new(Arc::new(keys)),
            key_source,
            lifetimes,
            mode,
            deltas: config.deltas.clone(),
            state: Mutex::new(state),
            store_behind: AtomicBool::new(true),
        };
        {
            let state = repo.state.lock().await;
            repo.republish(&state).await?;
        }
        repo.refresh(UtcTime::now()).await?;
        Ok((repo, created))
    }

    /// The online keys signing now.
    fn keys(&self) -> Arc<OnlineKeys> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Switches to other online keys (call it holding the state lock).
    fn swap_keys(&self, keys: OnlineKeys) {
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
    }

    /// How the keys are held.
    pub fn mode(&self) -> RepoMode {
        self.mode
    }

    /// The versions currently published.
    pub async fn versions(&self) -> Versions {
        versions_of(&*self.state.lock().await)
    }

    /// A warning when the root expires within [`ROOT_EXPIRY_WARNING_SECS`] of `now`: only
    /// the offline root keys can sign a new root (`otter-keys root rotate`).
    pub async fn root_expiry_warning(&self, now: UtcTime) -> Option<String> {
        let state = self.state.lock().await;
        let expires = state.root.expires();
        let left = expires.unix().saturating_sub(now.unix());
        (left < ROOT_EXPIRY_WARNING_SECS).then(|| {
            let when = if left <= 0 {
                "has EXPIRED".to_string()
            } else {
                format!("expires in {} days ({expires})", left / 86_400)
            };
            format!(
                "root metadata version {} {when}: sign a new root with the offline keys \
                 (otter-keys root rotate) and publish it, or devices will stop updating",
                state.root.version()
            )
        })
    }

    /// Commits `next` (and whatever `extra` writes in the same transaction) to the
    /// database, then writes the changed files to the store, the timestamp last. When
    /// `extra` returns `false` the transaction is rolled back and nothing changes (`None`).
    async fn commit_and_publish<F>(
        &self,
        state: &mut RepoState,
        next: RepoState,
        changed: Vec<TopRole>,
        now: UtcTime,
        extra: F,
    ) -> Result<Option<Versions>, RepoError>
    where
        F: FnOnce(&rusqlite::Transaction) -> Result<bool, DbError> + Send + 'static,
    {
        let new_records: Vec<FileRecord> = changed.iter().map(|r| next.record(*r)).collect();
        let rows = new_records.clone();
        let committed = self
            .db
            .call(move |c| {
                let tx = c.transaction()?;
                if !extra(&tx)? {
                    return Ok(false);
                }
                records::insert_versions(&tx, &rows, now.unix())?;
                tx.commit()?;
                Ok(true)
            })
            .await?;
        if !committed {
            return Ok(None);
        }
        *state = next;
        self.store_behind.store(true, Ordering::SeqCst);
        self.publish(&new_records).await?;
        self.store_behind.store(false, Ordering::SeqCst);
        Ok(Some(versions_of(state)))
    }

    /// Re-signs targets, snapshot and timestamp as they come due at `now` (less than half
    /// their lifetime left). Returns the new versions, or `None` when nothing was due.
    pub async fn refresh(&self, now: UtcTime) -> Result<Option<Versions>, RepoError> {
        let mut state = self.state.lock().await;
        if self.store_behind.load(Ordering::SeqCst) {
            self.republish(&state).await?;
        }
        let plan = build::plan(&state, now, &self.lifetimes);
        if plan == Plan::default() {
            return Ok(None);
        }
        let (next, changed) = build::resign(&state, plan, &self.keys(), now, &self.lifetimes)
            .map_err(metadata_err("re-signing metadata"))?;
        build::verify_state(&next).map_err(RepoError::Inconsistent)?;
        // The database decides (from its commit on, these versions exist); the store
        // follows, the timestamp last.
        self.commit_and_publish(&mut state, next, changed, now, |_| Ok(true))
            .await
    }

    /// Writes new files in order: versioned files first, the timestamp that names them last.
    async fn publish(&self, new: &[FileRecord]) -> Result<(), RepoError> {
        let (pointers, versioned): (Vec<&FileRecord>, Vec<&FileRecord>) =
            new.iter().partition(|r| r.role == TopRole::Timestamp);
        for r in versioned.into_iter().chain(pointers) {
            self.store
                .put(&metadata_key(&r.file_name()), r.bytes.clone())
                .await?;
            if r.role == TopRole::Root {
                // The unversioned copy some clients start from; the timestamp still last.
                self.store
                    .put(&metadata_key("root.json"), r.bytes.clone())
                    .await?;
            }
        }
        Ok(())
    }

    /// Makes the store hold every root version and the current state, writing only what is
    /// missing or different (so immutable files keep their ETags), the timestamp last.
    async fn republish(&self, state: &RepoState) -> Result<(), RepoError> {
        self.republish_delegated(state).await?;
        let roots = self.db.call(|c| records::all_roots(c)).await?;
        let mut files: Vec<(String, Vec<u8>)> = roots
            .into_iter()
            .map(|(v, bytes)| (format!("{v}.root.json"), bytes))
            .collect();
        for role in [TopRole::Targets, TopRole::Snapshot] {
            let r = state.record(role);
            files.push((r.file_name(), r.bytes));
        }
        files.push(("root.json".into(), state.root.bytes.clone()));
        files.push(("timestamp.json".into(), state.timestamp.bytes.clone()));
        for (name, bytes) in files {
            let key = metadata_key(&name);
            if self.store.get_bytes(&key).await?.as_deref() != Some(&bytes[..]) {
                self.store.put(&key, bytes).await?;
            }
        }
        self.store_behind.store(false, Ordering::SeqCst);
        Ok(())
    }
}

async fn blocking<T, F>(f: F) -> Result<T, RepoError>
where
    F: FnOnce() -> Result<T, RepoError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RepoError::Task(e.to_string()))?
}

/// A new repository must not overwrite one already in the store (a shared bucket, or the
/// store of a lost data dir): its root and releases would be replaced under the terminals.
pub(crate) async fn refuse_foreign_repository(store: &Store) -> Result<(), RepoError> {
    if store.holds_repository().await? {
        return Err(RepoError::Setup(format!(
            "the store {} already holds a TUF repository (repo/metadata/1.root.json) that \
             this data dir does not know; refusing to overwrite it. Use a new bucket or \
             prefix, or start with the data dir that belongs to that store",
            store.url()
        )));
    }
    Ok(())
}

async fn init_development(
    db: &Db,
    keys_dir: PathBuf,
    lifetimes: &Lifetimes,
) -> Result<(RepoState, OnlineKeys, DevRepositoryCreated), RepoError> {
    let dir = keys_dir.clone();
    // Key files go through scrypt and fsync: off the executor.
    let keys = blocking(move || dev::generate_and_save(&dir)).await?;
    let now = UtcTime::now();
    let state = build::initial_state(&keys, now, lifetimes)
        .map_err(metadata_err("building the initial metadata"))?;
    build::verify_state(&state).map_err(RepoError::Inconsistent)?;
    let token = ApiToken::generate()?;
    let rows: Vec<FileRecord> = [
        TopRole::Root,
        TopRole::Targets,
        TopRole::Snapshot,
        TopRole::Timestamp,
    ]
    .into_iter()
    .map(|r| state.record(r))
    .collect();
    let token = db
        .call(move |c| {
            let tx = c.transaction()?;
            records::insert_repository(&tx, "development", now.unix())?;
            records::insert_versions(&tx, &rows, now.unix())?;
            insert_token(
                &tx,
                &token,
                TokenRole::Admin,
                "created with the development repository",
                now.unix(),
            )?;
            tx.commit()?;
            Ok(token)
        })
        .await?;
    tracing::info!(
        root_key = keys.root.key_id().short(),
        keys_dir = %keys_dir.display(),
        "created a development repository"
    );
    let created = DevRepositoryCreated {
        admin_token: token,
        root_key_id: keys.root.key_id(),
        keys_dir,
    };
    Ok((state, keys.online, created))
}

/// Opens an existing repository: its state from the database, checked against the store
/// (a store ahead of the database means an older database copy: refused, or with
/// `resume_above_store` re-signed above the store's versions), and the online keys its
/// root names.
async fn open_existing(
    config: &Config,
    db: &Db,
    store: &Store,
    mode: RepoMode,
    lifetimes: &Lifetimes,
) -> Result<(RepoState, OnlineKeys), RepoError> {
    let state = load_state(db).await?;
    let in_store = rotation::store_versions(store).await?;
    let ahead = rotation::store_ahead(&versions_of(&state), &in_store);
    let source = rotation::KeySource::for_mode(mode, config)?;
    if ahead.is_empty() || !config.resume_above_store {
        // Missing keys are named first: they are the plainer mistake in a restore.
        let root = state.root.signed().clone();
        let keys = blocking(move || rotation::load_online_keys(&source, &root)).await?;
        build::check_online_keys(state.root.signed(), &keys).map_err(RepoError::Inconsistent)?;
        if !ahead.is_empty() {
            return Err(rotation::stale_refusal(&ahead));
        }
        return Ok((state, keys));
    }
    let roots = rotation::store_roots_after(store, &state.root, in_store.root).await?;
    let root = roots.last().unwrap_or(&state.root).signed().clone();
    let keys = blocking(move || rotation::load_online_keys(&source, &root)).await?;
    build::check_online_keys(roots.last().unwrap_or(&state.root).signed(), &keys)
        .map_err(RepoError::Inconsistent)?;
    let now = UtcTime::now();
    let (next, records) = rotation::resign_above(&state, roots, &in_store, &keys, now, lifetimes)?;
    rotation::commit_resume(db, records, &keys, &ahead, now).await?;
    tracing::warn!(
        targets = next.targets.version(),
        snapshot = next.snapshot.version(),
        timestamp = next.timestamp.version(),
        root = next.root.version(),
        "the store was ahead of the database: re-signed the database's state above it \
         (--resume-above-store)"
    );
    Ok((next, keys))
}

/// Reads the latest version of each role back from the database and checks the state.
async fn load_state(db: &Db) -> Result<RepoState, RepoError> {
    let rows = db
        .call(|c| {
            let mut out = Vec::new();
            for role in [
                TopRole::Root,
                TopRole::Targets,
                TopRole::Snapshot,
                TopRole::Timestamp,
            ] {
                out.push((role, records::latest(c, role)?));
            }
            Ok(out)
        })
        .await?;
    let bytes_of = |role: TopRole| -> Result<Vec<u8>, RepoError> {
        rows.iter()
            .find(|(r, _)| *r == role)
            .and_then(|(_, row)| row.as_ref())
            .map(|(_, b)| b.clone())
            .ok_or_else(|| {
                RepoError::Inconsistent(format!("the database holds no {} metadata", role.name()))
            })
    };
    let parse = metadata_err("reading metadata back from the database");
    let state = RepoState {
        root: SignedFile::from_bytes(bytes_of(TopRole::Root)?).map_err(parse)?,
        targets: SignedFile::from_bytes(bytes_of(TopRole::Targets)?)
            .map_err(metadata_err("reading targets back from the database"))?,
        snapshot: SignedFile::from_bytes(bytes_of(TopRole::Snapshot)?)
            .map_err(metadata_err("reading snapshot back from the database"))?,
        timestamp: SignedFile::from_bytes(bytes_of(TopRole::Timestamp)?)
            .map_err(metadata_err("reading timestamp back from the database"))?,
    };
    build::verify_state(&state).map_err(RepoError::Inconsistent)?;
    Ok(state)
}
