//! Private key files: encrypted at rest with a passphrase (age's scrypt recipient), written
//! 0600 through the atomic-write helper, and held in zeroizing memory once opened.
//!
//! A signing key file is an age file whose plaintext is a small JSON document; a recovery
//! identity file is an age file whose plaintext is a standard age identity, so the standard
//! `age -d -i FILE` tool can use it (it asks for the passphrase).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use age::secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::atomic::write_atomic;
use crate::crypto::{PublicKey, SigningKey};

/// The scrypt work factor (log2 N) Otter uses by default: about a second per key here.
pub const DEFAULT_WORK_FACTOR: u8 = 18;
/// The lowest work factor accepted when writing (tests use it; never use it for real keys).
pub const MIN_WORK_FACTOR: u8 = 10;
/// The highest work factor accepted when reading (bounds a hostile file's cost).
pub const MAX_WORK_FACTOR: u8 = 22;
/// Largest key file read.
pub const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// What went wrong with a key file. Never carries key material or the passphrase.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The passphrase does not open the file, or the file was altered.
    #[error("{path}: wrong passphrase, or the key file is damaged")]
    WrongPassphrase {
        /// The file.
        path: PathBuf,
    },
    /// The file is not an Otter key file of the kind expected.
    #[error("{path}: not an Otter key file of the kind expected ({reason})")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Encryption failed.
    #[error("encrypting the key failed: {0}")]
    Encrypt(String),
    /// The requested work factor is outside the accepted range.
    #[error("scrypt work factor {0} is outside {MIN_WORK_FACTOR}..={MAX_WORK_FACTOR}")]
    WorkFactor(u8),
}

/// Encrypts `plaintext` to a passphrase as an age file.
pub fn encrypt_with_passphrase(
    plaintext: &[u8],
    passphrase: &SecretString,
    work_factor: u8,
) -> Result<Vec<u8>, KeyFileError> {
    if !(MIN_WORK_FACTOR..=MAX_WORK_FACTOR).contains(&work_factor) {
        return Err(KeyFileError::WorkFactor(work_factor));
    }
    let mut recipient = age::scrypt::Recipient::new(passphrase.clone());
    recipient.set_work_factor(work_factor);
    age::encrypt(&recipient, plaintext).map_err(|e| KeyFileError::Encrypt(e.to_string()))
}

/// Decrypts an age file made by [`encrypt_with_passphrase`] (or `age -p`).
pub fn decrypt_with_passphrase(
    path: &Path,
    ciphertext: &[u8],
    passphrase: &SecretString,
) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    let mut identity = age::scrypt::Identity::new(passphrase.clone());
    identity.set_max_work_factor(MAX_WORK_FACTOR);
    match age::decrypt(&identity, ciphertext) {
        Ok(p) => Ok(Zeroizing::new(p)),
        Err(age::DecryptError::DecryptionFailed | age::DecryptError::KeyDecryptionFailed) => {
            Err(KeyFileError::WrongPassphrase { path: path.into() })
        }
        Err(e) => Err(KeyFileError::Malformed {
            path: path.into(),
            reason: e.to_string(),
        }),
    }
}

fn read_capped(path: &Path) -> Result<Vec<u8>, KeyFileError> {
    let io_err = |source| KeyFileError::Io {
        path: path.into(),
        source,
    };
    let len = fs::metadata(path).map_err(io_err)?.len();
    if len > MAX_KEY_FILE_BYTES {
        return Err(KeyFileError::Malformed {
            path: path.into(),
            reason: format!("{len} bytes is too large for a key file"),
        });
    }
    fs::read(path).map_err(io_err)
}

#[derive(Serialize, Deserialize)]
struct SigningKeyDoc {
    otter_key_file: u32,
    keytype: String,
    label: String,
    seed: String,
    public: String,
}

/// A signing key opened from a file, with the label it was saved under (e.g. `root-1`).
#[derive(Debug)]
pub struct LoadedKey {
    /// The key.
    pub key: SigningKey,
    /// Its label.
    pub label: String,
}

/// Saves an ed25519 key encrypted to `passphrase`, mode 0600, atomically.
pub fn save_signing_key(
    path: &Path,
    key: &SigningKey,
    label: &str,
    passphrase: &SecretString,
    work_factor: u8,
) -> Result<(), KeyFileError> {
    let seed = key.seed_dangerous();
    let mut doc = SigningKeyDoc {
        otter_key_file: 1,
        keytype: "ed25519".into(),
        label: label.into(),
        seed: hex::encode(*seed),
        public: hex::encode(key.public_bytes()),
    };
    let plain = serde_json::to_vec(&doc).map(Zeroizing::new);
    zeroize::Zeroize::zeroize(&mut doc.seed);
    let plain = plain.map_err(|e| KeyFileError::Encrypt(e.to_string()))?;
    let ct = encrypt_with_passphrase(&plain, passphrase, work_factor)?;
    write_atomic(path, &ct, 0o600).map_err(|source| KeyFileError::Io {
        path: path.into(),
        source,
    })
}

/// Opens an ed25519 key file with its passphrase.
pub fn load_signing_key(path: &Path, passphrase: &SecretString) -> Result<LoadedKey, KeyFileError> {
    let ct = read_capped(path)?;
    let plain = decrypt_with_passphrase(path, &ct, passphrase)?;
    let malformed = |reason: &str| KeyFileError::Malformed {
        path: path.into(),
        reason: reason.into(),
    };
    let mut doc: SigningKeyDoc =
        serde_json::from_slice(&plain).map_err(|_| malformed("not a signing key"))?;
    let seed_hex = Zeroizing::new(std::mem::take(&mut doc.seed));
    if doc.otter_key_file != 1 || doc.keytype != "ed25519" {
        return Err(malformed("unsupported key type or version"));
    }
    let mut seed = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(seed_hex.as_bytes(), &mut seed[..]).map_err(|_| malformed("bad seed"))?;
    let key = SigningKey::from_seed(&seed);
    if hex::encode(key.public_bytes()) != doc.public {
        return Err(malformed("public key does not match the private key"));
    }
    Ok(LoadedKey {
        key,
        label: doc.label,
    })
}

/// Saves a public key (TUF key object, pretty JSON) next to its private key file.
pub fn save_public_key(path: &Path, key: &PublicKey) -> Result<(), KeyFileError> {
    let mut bytes =
        serde_json::to_vec_pretty(key).map_err(|e| KeyFileError::Encrypt(e.to_string()))?;
    bytes.push(b'\n');
    write_atomic(path, &bytes, 0o644).map_err(|source| KeyFileError::Io {
        path: path.into(),
        source,
    })
}

/// Reads a public key file written by [`save_public_key`].
pub fn load_public_key(path: &Path) -> Result<PublicKey, KeyFileError> {
    let bytes = read_capped(path)?;
    serde_json::from_slice(&bytes).map_err(|e| KeyFileError::Malformed {
        path: path.into(),
        reason: format!("not a public key file: {e}"),
    })
}

/// Saves an age X25519 identity encrypted to `passphrase` (mode 0600); `age -d -i FILE`
/// accepts the result.
pub fn save_age_identity(
    path: &Path,
    identity: &age::x25519::Identity,
    passphrase: &SecretString,
    work_factor: u8,
) -> Result<(), KeyFileError> {
    let text = identity.to_string();
    let plain = Zeroizing::new(format!(
        "# Otter fleet recovery identity\n# public key: {}\n{}\n",
        identity.to_public(),
        text.expose_secret()
    ));
    let ct = encrypt_with_passphrase(plain.as_bytes(), passphrase, work_factor)?;
    write_atomic(path, &ct, 0o600).map_err(|source| KeyFileError::Io {
        path: path.into(),
        source,
    })
}

/// Opens an identity file written by [`save_age_identity`].
pub fn load_age_identity(
    path: &Path,
    passphrase: &SecretString,
) -> Result<age::x25519::Identity, KeyFileError> {
    let ct = read_capped(path)?;
    let plain = decrypt_with_passphrase(path, &ct, passphrase)?;
    let text = std::str::from_utf8(&plain).map_err(|_| KeyFileError::Malformed {
        path: path.into(),
        reason: "identity is not text".into(),
    })?;
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| KeyFileError::Malformed {
            path: path.into(),
            reason: "no age identity inside".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn signing_key_round_trip_with_mode_0600() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("root-1.key");
        let k = SigningKey::generate();
        save_signing_key(&p, &k, "root-1", &pass("correct horse"), MIN_WORK_FACTOR).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let raw = fs::read(&p).unwrap();
        assert!(!raw
            .windows(64)
            .any(|w| w == hex::encode(*k.seed_dangerous()).as_bytes()));
        let back = load_signing_key(&p, &pass("correct horse")).unwrap();
        assert_eq!(back.key.public_bytes(), k.public_bytes());
        assert_eq!(back.label, "root-1");
    }

    #[test]
    fn wrong_passphrase_is_reported_as_such() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.key");
        save_signing_key(
            &p,
            &SigningKey::generate(),
            "k",
            &pass("a"),
            MIN_WORK_FACTOR,
        )
        .unwrap();
        let err = load_signing_key(&p, &pass("b")).unwrap_err();
        assert!(matches!(err, KeyFileError::WrongPassphrase { .. }), "{err}");
        assert!(err.to_string().contains("wrong passphrase"));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.key");
        fs::write(&p, b"hello").unwrap();
        assert!(matches!(
            load_signing_key(&p, &pass("a")),
            Err(KeyFileError::Malformed { .. })
        ));
    }

    #[test]
    fn age_identity_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("recovery.age");
        let id = age::x25519::Identity::generate();
        save_age_identity(&p, &id, &pass("pw"), MIN_WORK_FACTOR).unwrap();
        let back = load_age_identity(&p, &pass("pw")).unwrap();
        assert_eq!(back.to_public().to_string(), id.to_public().to_string());
    }

    #[test]
    fn work_factor_out_of_range_is_refused() {
        assert!(matches!(
            encrypt_with_passphrase(b"x", &pass("p"), 5),
            Err(KeyFileError::WorkFactor(5))
        ));
    }
}
