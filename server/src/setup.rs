//! `otter-server init`: sets a data dir up as a production repository from the output of
//! `otter-keys init` (root metadata and the three online key files), after checking that
//! they belong together. The root key stays offline.

use std::path::Path;

use otter_keys::time::UtcTime;

use crate::config::Config;
use crate::repo::build::Lifetimes;
use crate::repo::{production, RepoError, Repository, Versions};
use crate::tokens::ApiToken;
use crate::ServerError;

/// What `init` created.
#[derive(Debug)]
pub struct ProductionCreated {
    /// The first admin API token (stored only hashed: shown once).
    pub admin_token: ApiToken,
    /// The versions published.
    pub versions: Versions,
    /// Root key files found beside the online keys, which should be moved offline.
    pub root_keys_nearby: Vec<String>,
}

/// Checks the material, then creates the repository in `config.data_dir` (which must be
/// empty or hold no repository yet) and writes it to the store.
pub async fn init_production(
    config: &Config,
    root_json: &Path,
    keys_dir: &Path,
) -> Result<ProductionCreated, ServerError> {
    config.validate()?;
    let pass = production::passphrase(config)?;
    let root_bytes = std::fs::read(root_json).map_err(|source| RepoError::Io {
        path: root_json.into(),
        source,
    })?;
    // Opening the keys runs scrypt: off the executor.
    let dir = keys_dir.to_path_buf();
    let keys = tokio::task::spawn_blocking(move || production::load_online_keys(&dir, &pass))
        .await
        .map_err(|e| RepoError::Task(e.to_string()))??;
    let root = production::check_material(root_bytes, &keys, UtcTime::now())?;

    let lock = crate::datadir::prepare(&config.data_dir)?;
    let db = crate::db::Db::open(&config.db_path()).await?;
    if config.keys_dir().exists() {
        return Err(RepoError::Setup(format!(
            "{} exists already: give an empty --data-dir",
            config.keys_dir().display()
        ))
        .into());
    }
    let store = crate::store::Store::open(&config.store, &config.default_store_dir())?;
    crate::repo::refuse_foreign_repository(&store).await?;
    let (from, to) = (keys_dir.to_path_buf(), config.keys_dir());
    tokio::task::spawn_blocking(move || production::copy_key_files(&from, &to))
        .await
        .map_err(|e| RepoError::Task(e.to_string()))??;
    let lifetimes = Lifetimes::from(&config.repository);
    let admin_token = match production::create(&db, root, &keys, &lifetimes).await {
        Ok(t) => t,
        Err(e) => {
            // Leave the data dir as it was found, so that init can be run again.
            if let Err(rm) = std::fs::remove_dir_all(config.keys_dir()) {
                tracing::warn!(error = %rm, "cannot remove the copied key files");
            }
            return Err(e.into());
        }
    };
    let (repo, _) = Repository::open_or_init(config, db, store).await?;
    let versions = repo.versions().await;
    drop(lock);
    Ok(ProductionCreated {
        admin_token,
        versions,
        root_keys_nearby: production::root_keys_in(keys_dir),
    })
}
