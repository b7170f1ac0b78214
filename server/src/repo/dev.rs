//! The development repository's keys. On first start the server generates the root,
//! targets, snapshot and timestamp keys and saves them under `DATA_DIR/keys/`, encrypted with
//! a random passphrase that it writes (0600) beside them in `dev-passphrase`. That protects
//! nothing against anyone who can read the directory: it only keeps the key file format the
//! same as `otter-keys` uses. A development repository's root key is online; never ship a
//! device that trusts it.

use std::path::{Path, PathBuf};

use otter_keys::age::secrecy::SecretString;
use otter_keys::atomic::write_atomic;
use otter_keys::crypto::SigningKey;
use otter_keys::keyfile::{load_signing_key, save_public_key, save_signing_key};
use zeroize::Zeroizing;

use super::build::{DevKeys, OnlineKeys};
use super::RepoError;
use crate::tokens::random_bytes;

/// The scrypt work factor of development key files. The passphrase lies beside them, so a
/// costly KDF would only slow every start down.
pub const DEV_KEY_WORK_FACTOR: u8 = 12;

/// The passphrase file of a development repository.
pub const PASSPHRASE_FILE: &str = "dev-passphrase";

const README: &str = "\
DEVELOPMENT KEYS - NOT FOR PRODUCTION

otter-server generated these keys when it started on an empty data dir. They are encrypted
with the passphrase in dev-passphrase, which lies right here: anyone who can read this
directory can sign updates, and the root key (root.key) is online.

For production, make the root keys offline with `otter-keys init` and set the server up with
`otter-server init`.
";

fn key_path(dir: &Path, role: &str) -> PathBuf {
    dir.join(format!("{role}.key"))
}

fn random_key() -> Result<SigningKey, RepoError> {
    let mut seed = Zeroizing::new([0u8; 32]);
    random_bytes(&mut seed[..]).map_err(|e| RepoError::Random(e.to_string()))?;
    Ok(SigningKey::from_seed(&seed))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RepoError + '_ {
    move |source| RepoError::Io {
        path: path.into(),
        source,
    }
}

/// Generates the four keys and saves them (and the passphrase, and a README) in `dir`.
/// Blocking.
pub fn generate_and_save(dir: &Path) -> Result<DevKeys, RepoError> {
    crate::store::create_dir_private(dir).map_err(io_err(dir))?;
    let mut raw = Zeroizing::new([0u8; 32]);
    random_bytes(&mut raw[..]).map_err(|e| RepoError::Random(e.to_string()))?;
    let passphrase = Zeroizing::new(hex::encode(&raw[..]));
    let pass_path = dir.join(PASSPHRASE_FILE);
    write_atomic(&pass_path, passphrase.as_bytes(), 0o600).map_err(io_err(&pass_path))?;
    let secret = SecretString::from(passphrase.to_string());
    let keys = DevKeys {
        root: random_key()?,
        online: OnlineKeys {
            targets: random_key()?,
            snapshot: random_key()?,
            timestamp: random_key()?,
        },
    };
    for (role, key) in [
        ("root", &keys.root),
        ("targets", &keys.online.targets),
        ("snapshot", &keys.online.snapshot),
        ("timestamp", &keys.online.timestamp),
    ] {
        save_signing_key(
            &key_path(dir, role),
            key,
            role,
            &secret,
            DEV_KEY_WORK_FACTOR,
        )?;
        save_public_key(&dir.join(format!("{role}.pub")), &key.public_key())?;
    }
    let readme = dir.join("README.txt");
    write_atomic(&readme, README.as_bytes(), 0o644).map_err(io_err(&readme))?;
    Ok(keys)
}

/// The passphrase of a development repository's key files, from the file beside them.
pub fn passphrase(dir: &Path) -> Result<SecretString, RepoError> {
    let pass_path = dir.join(PASSPHRASE_FILE);
    let text = Zeroizing::new(std::fs::read_to_string(&pass_path).map_err(io_err(&pass_path))?);
    Ok(SecretString::from(text.trim().to_string()))
}

/// Opens the online keys of a development repository. Blocking.
pub fn load_online_keys(dir: &Path) -> Result<OnlineKeys, RepoError> {
    let secret = passphrase(dir)?;
    let load = |role: &str| -> Result<SigningKey, RepoError> {
        Ok(load_signing_key(&key_path(dir, role), &secret)?.key)
    };
    Ok(OnlineKeys {
        targets: load("targets")?,
        snapshot: load("snapshot")?,
        timestamp: load("timestamp")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_keys_load_back_and_are_private() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("keys");
        let keys = generate_and_save(&dir).unwrap();
        let back = load_online_keys(&dir).unwrap();
        assert_eq!(back.timestamp.key_id(), keys.online.timestamp.key_id());
        assert_eq!(back.snapshot.key_id(), keys.online.snapshot.key_id());
        assert_eq!(back.targets.key_id(), keys.online.targets.key_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in [
                "dev-passphrase",
                "root.key",
                "targets.key",
                "snapshot.key",
                "timestamp.key",
            ] {
                let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
    }
}
