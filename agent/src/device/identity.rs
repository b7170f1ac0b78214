//! The device's three secrets: the ed25519 identity key, the age X25519 backup identity (none
//! on a write-only terminal) and the chunk key. Created once at enrollment, written 0600
//! through the atomic-write helper, held in zeroizing memory, never printed.

use std::fmt;
use std::path::Path;

use otter_keys::age::secrecy::ExposeSecret;
use otter_keys::age::x25519;
use otter_keys::atomic::write_atomic;
use otter_keys::crypto::SigningKey;
use otter_keys::envelope::ChunkKey;
use zeroize::Zeroizing;

use super::{io_err, DeviceError};

/// File of the ed25519 identity key (hex seed).
pub const DEVICE_KEY_FILE: &str = "device.key";
/// File of the age backup identity (`AGE-SECRET-KEY-1...`).
pub const BACKUP_KEY_FILE: &str = "backup.key";
/// File of the chunk key (hex).
pub const CHUNK_KEY_FILE: &str = "chunk.key";
/// Largest secret file read.
const MAX_SECRET_FILE: u64 = 4096;

/// The device's secrets. `Debug` shows only the public halves.
pub struct Identity {
    /// Signs every request and backup manifest.
    pub signing: SigningKey,
    /// Opens the device's own backups; `None` on a write-only terminal, which keeps no
    /// backup identity (no `backup.key`).
    pub backup: Option<x25519::Identity>,
    /// Keys the chunk ids of backups.
    pub chunk: ChunkKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("Identity")
            .field("public_key", &self.public_key_hex())
            .field("backup_recipient", &self.backup_recipient())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// New random secrets from the operating system's generator.
    pub fn generate() -> Identity {
        Identity {
            signing: SigningKey::generate(),
            backup: Some(x25519::Identity::generate()),
            chunk: ChunkKey::generate(),
        }
    }

    /// The identity key's public half, 64 hex digits.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.signing.public_bytes())
    }

    /// The backup recipient (`age1...`); `None` without a backup identity.
    pub fn backup_recipient(&self) -> Option<String> {
        self.backup.as_ref().map(|b| b.to_public().to_string())
    }

    /// Whether `dir` holds any of the secret files.
    pub fn exists_in(dir: &Path) -> bool {
        [DEVICE_KEY_FILE, BACKUP_KEY_FILE, CHUNK_KEY_FILE]
            .iter()
            .any(|f| dir.join(f).exists())
    }

    /// Writes the files into `dir`, each 0600, atomically (`backup.key` only when there is a
    /// backup identity).
    pub fn save(&self, dir: &Path) -> Result<(), DeviceError> {
        let seed = Zeroizing::new(format!("{}\n", hex::encode(*self.signing.seed_dangerous())));
        let chunk = Zeroizing::new(format!(
            "{}\n",
            hex::encode(*self.chunk.to_bytes_dangerous())
        ));
        for (name, text) in [(DEVICE_KEY_FILE, &seed), (CHUNK_KEY_FILE, &chunk)] {
            let path = dir.join(name);
            write_atomic(&path, text.as_bytes(), 0o600).map_err(io_err(&path))?;
        }
        if let Some(backup) = &self.backup {
            save_backup_identity(dir, backup)?;
        }
        Ok(())
    }

    /// Reads the files from `dir`; a missing `backup.key` gives no backup identity (a
    /// write-only terminal).
    pub fn load(dir: &Path) -> Result<Identity, DeviceError> {
        let seed_path = dir.join(DEVICE_KEY_FILE);
        let seed: Zeroizing<[u8; 32]> = read_hex32(&seed_path)?;
        let chunk_path = dir.join(CHUNK_KEY_FILE);
        let chunk = read_hex32(&chunk_path)?;
        let backup_path = dir.join(BACKUP_KEY_FILE);
        let backup = if backup_path.exists() {
            Some(load_age_identity(&backup_path)?)
        } else {
            None
        };
        Ok(Identity {
            signing: SigningKey::from_seed(&seed),
            backup,
            chunk: ChunkKey::from_bytes(&chunk),
        })
    }
}

/// Writes an age identity file (`AGE-SECRET-KEY-1...`, with its public key as a comment) at
/// `dir/BACKUP_KEY_FILE`, 0600.
pub fn save_backup_identity(dir: &Path, backup: &x25519::Identity) -> Result<(), DeviceError> {
    save_age_identity(
        &dir.join(BACKUP_KEY_FILE),
        backup,
        "Otter device backup identity",
    )
}

/// Writes an age X25519 identity file at `path` (0600, atomically), with `title` and the
/// public key as comments: the format `age -i` reads.
pub fn save_age_identity(
    path: &Path,
    identity: &x25519::Identity,
    title: &str,
) -> Result<(), DeviceError> {
    let text = Zeroizing::new(format!(
        "# {title}\n# public key: {}\n{}\n",
        identity.to_public(),
        identity.to_string().expose_secret()
    ));
    write_atomic(path, text.as_bytes(), 0o600).map_err(io_err(path))
}

/// Reads the age X25519 identity (`AGE-SECRET-KEY-1...` line) of the file at `path`.
pub fn load_age_identity(path: &Path) -> Result<x25519::Identity, DeviceError> {
    let text = read_secret(path)?;
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .and_then(|l| l.parse::<x25519::Identity>().ok())
        .ok_or_else(|| DeviceError::Malformed {
            path: path.to_path_buf(),
            reason: "no age X25519 identity inside".into(),
        })
}

fn read_secret(path: &Path) -> Result<Zeroizing<String>, DeviceError> {
    let len = std::fs::metadata(path).map_err(io_err(path))?.len();
    if len > MAX_SECRET_FILE {
        return Err(DeviceError::Malformed {
            path: path.into(),
            reason: format!("{len} bytes is too large for a key file"),
        });
    }
    let bytes = Zeroizing::new(std::fs::read(path).map_err(io_err(path))?);
    let text = std::str::from_utf8(&bytes).map_err(|_| DeviceError::Malformed {
        path: path.into(),
        reason: "not text".into(),
    })?;
    Ok(Zeroizing::new(text.to_owned()))
}

fn read_hex32(path: &Path) -> Result<Zeroizing<[u8; 32]>, DeviceError> {
    let text = read_secret(path)?;
    let mut out = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), &mut out[..]).map_err(|_| DeviceError::Malformed {
        path: path.into(),
        reason: "64 hex digits expected".into(),
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_identities_load_back_with_mode_0600_and_debug_hides_them() {
        let d = tempfile::tempdir().unwrap();
        assert!(!Identity::exists_in(d.path()));
        let id = Identity::generate();
        id.save(d.path()).unwrap();
        assert!(Identity::exists_in(d.path()));
        let back = Identity::load(d.path()).unwrap();
        assert_eq!(back.public_key_hex(), id.public_key_hex());
        assert_eq!(back.backup_recipient(), id.backup_recipient());
        assert_eq!(
            *back.chunk.to_bytes_dangerous(),
            *id.chunk.to_bytes_dangerous()
        );
        #[cfg(unix)]
        for f in [DEVICE_KEY_FILE, BACKUP_KEY_FILE, CHUNK_KEY_FILE] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(d.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let dbg = format!("{id:?}");
        assert!(!dbg.contains(&hex::encode(*id.signing.seed_dangerous())));
        assert!(!dbg.contains("AGE-SECRET-KEY"));
    }

    #[test]
    fn without_a_backup_identity_no_backup_key_is_written_or_needed() {
        let d = tempfile::tempdir().unwrap();
        let mut id = Identity::generate();
        id.backup = None;
        id.save(d.path()).unwrap();
        assert!(!d.path().join(BACKUP_KEY_FILE).exists());
        let back = Identity::load(d.path()).unwrap();
        assert!(back.backup.is_none());
        assert_eq!(back.backup_recipient(), None);
        assert_eq!(back.public_key_hex(), id.public_key_hex());
    }

    #[test]
    fn damaged_files_are_reported() {
        let d = tempfile::tempdir().unwrap();
        Identity::generate().save(d.path()).unwrap();
        std::fs::write(d.path().join(CHUNK_KEY_FILE), "zz").unwrap();
        let e = Identity::load(d.path()).unwrap_err();
        assert!(e.to_string().contains("chunk.key"), "{e}");
    }
}
