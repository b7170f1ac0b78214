//! The backup receipt key: the ed25519 key with which the server countersigns every backup
//! manifest it accepted, so that a device or an admin can later prove a backup was complete
//! on receipt, or spot one that was deleted. It signs nothing else (the countersignature's
//! context string keeps its signatures apart from all others) and cannot decrypt anything.
//!
//! Generated on the first start that needs it into `DATA_DIR/keys/backup-receipt.key`
//! (mode 0600), in the `otter-keys` key file format, encrypted with the passphrase the
//! repository's other online keys use: `keys/dev-passphrase` for a development repository,
//! the production passphrase (`key_passphrase_file` or `OTTER_SERVER_KEY_PASSPHRASE`) for a
//! production one. Its public key is written beside it in `backup-receipt.pub`.

use std::path::{Path, PathBuf};

use otter_keys::age::secrecy::SecretString;
use otter_keys::crypto::{PublicKey, SigningKey};
use otter_keys::keyfile::{load_public_key, load_signing_key, save_public_key, save_signing_key};
use zeroize::Zeroizing;

use crate::config::Config;
use crate::repo::{dev, production, RepoError, RepoMode};
use crate::tokens::random_bytes;

/// File name of the private key in the keys directory.
pub const KEY_FILE: &str = "backup-receipt.key";
/// File name of the public key in the keys directory.
pub const PUBLIC_FILE: &str = "backup-receipt.pub";
/// The key file's role label.
const ROLE: &str = "backup-receipt";

/// Where the receipt key's public half lies in `config`'s data dir.
pub fn public_key_path(config: &Config) -> PathBuf {
    config.keys_dir().join(PUBLIC_FILE)
}

/// Reads the receipt public key of a data dir (for tools and tests).
pub fn load_receipt_public_key(config: &Config) -> Result<PublicKey, RepoError> {
    Ok(load_public_key(&public_key_path(config))?)
}

fn passphrase(config: &Config, mode: RepoMode) -> Result<(SecretString, u8), RepoError> {
    match mode {
        RepoMode::Development => {
            let path = config.keys_dir().join(dev::PASSPHRASE_FILE);
            let text =
                Zeroizing::new(
                    std::fs::read_to_string(&path).map_err(|source| RepoError::Io {
                        path: path.clone(),
                        source,
                    })?,
                );
            Ok((
                SecretString::from(text.trim().to_string()),
                dev::DEV_KEY_WORK_FACTOR,
            ))
        }
        RepoMode::Production => Ok((
            production::passphrase(config)?,
            otter_keys::keyfile::DEFAULT_WORK_FACTOR,
        )),
    }
}

/// Opens the receipt key, generating and saving it on first use. Blocking (scrypt).
pub fn open_or_create(config: &Config, mode: RepoMode) -> Result<SigningKey, RepoError> {
    let dir = config.keys_dir();
    let path = dir.join(KEY_FILE);
    let (pass, work_factor) = passphrase(config, mode)?;
    if path.exists() {
        let key = load_signing_key(&path, &pass)?.key;
        ensure_public(&dir, &key)?;
        return Ok(key);
    }
    let mut seed = Zeroizing::new([0u8; 32]);
    random_bytes(&mut seed[..]).map_err(|e| RepoError::Random(e.to_string()))?;
    let key = SigningKey::from_seed(&seed);
    save_signing_key(&path, &key, ROLE, &pass, work_factor)?;
    ensure_public(&dir, &key)?;
    tracing::info!(
        key_id = key.key_id().short(),
        path = %path.display(),
        "generated the backup receipt key"
    );
    Ok(key)
}

fn ensure_public(dir: &Path, key: &SigningKey) -> Result<(), RepoError> {
    let path = dir.join(PUBLIC_FILE);
    if load_public_key(&path).ok().as_ref() != Some(&key.public_key()) {
        save_public_key(&path, &key.public_key())?;
    }
    Ok(())
}
