//! Backing up an enrolled terminal's database to its server: the set-up (enrollment state,
//! identity, recipients, a store pinned to the server's receipt key) that `otter-agent backup`,
//! the daemon's schedule and the pre-migration backup share.

use std::path::{Path, PathBuf};

use super::{
    run_backup_parallel, BackupConfig, BackupError, BackupKeys, BackupRecipients, BackupReport,
    HttpBackupStore, ManifestReceipt, StoreError,
};
use crate::device::enroll::AGENT_FILE;
use crate::device::{AgentState, DeviceError, Identity};

/// How one backup is shipped.
#[derive(Debug, Clone)]
pub struct Shipping {
    /// Bytes of compressed pages after which a pack is sealed.
    pub pack_size: usize,
    /// Upload cap in bytes per second for the whole run; 0: unlimited.
    pub max_upload_bytes_per_sec: u64,
    /// Pack uploads in flight at once (1: one at a time).
    pub parallel_uploads: usize,
    /// A progress bar of the pack bytes uploaded (on a terminal).
    pub progress: Option<indicatif::ProgressBar>,
}

/// A backup made by [`backup_enrolled`].
#[derive(Debug)]
pub struct Shipped {
    /// The terminal's device id.
    pub device_id: String,
    /// What the backup engine did.
    pub report: BackupReport,
    /// The server's receipt for the manifest, if it gave one.
    pub receipt: Option<ManifestReceipt>,
}

/// Why a backup of the enrolled terminal could not be made.
#[derive(Debug, thiserror::Error)]
pub enum EnrolledBackupError {
    /// The state dir holds no enrollment, or its keys are unreadable.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The server handed out no fleet recovery key at enrollment.
    #[error(
        "the fleet has no recovery key configured on the server (no recovery_recipient in \
         {}): set [backups] recovery_recipient in the server's configuration, then enroll \
         the terminal again",
        file.display()
    )]
    NoRecoveryKey {
        /// The enrollment file.
        file: PathBuf,
    },
    /// The recovery key in the enrollment file does not parse.
    #[error("the recovery key in {} is not an age X25519 recipient: {reason}", file.display())]
    BadRecoveryKey {
        /// The enrollment file.
        file: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A terminal that is not write-only has lost its backup identity.
    #[error(
        "{} is missing, and the terminal is not write-only: it cannot encrypt backups it could \
         read back; restore the file from the terminal's image or enroll the terminal again",
        path.display()
    )]
    NoBackupKey {
        /// The missing identity file.
        path: PathBuf,
    },
    /// The store could not be set up.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The backup itself failed.
    #[error(transparent)]
    Backup(#[from] BackupError),
}

/// Backs `database` up to the server the terminal in `state_dir` enrolled with: encrypted to
/// the fleet's recovery key and, unless the server made the terminal write-only at
/// enrollment, the terminal's own backup key; signed by the device key, the server's
/// receipts checked against the pinned receipt key.
pub fn backup_enrolled(
    state_dir: &Path,
    database: &Path,
    shipping: &Shipping,
) -> Result<Shipped, EnrolledBackupError> {
    let state = AgentState::load(state_dir)?.ok_or_else(|| DeviceError::NotEnrolled {
        dir: state_dir.to_path_buf(),
    })?;
    let identity = Identity::load(state_dir)?;
    let file = state_dir.join(AGENT_FILE);
    let recovery = state
        .recovery_recipient
        .as_deref()
        .ok_or_else(|| EnrolledBackupError::NoRecoveryKey { file: file.clone() })?
        .trim()
        .parse::<otter_keys::age::x25519::Recipient>()
        .map_err(|e| EnrolledBackupError::BadRecoveryKey {
            file,
            reason: e.to_string(),
        })?;
    let keys = BackupKeys {
        signing: &identity.signing,
        chunk_key: &identity.chunk,
        recipients: BackupRecipients {
            recovery,
            terminal: terminal_recipient(&state, &identity, state_dir)?,
        },
    };
    let mut config = BackupConfig::new(database, state_dir, &state.device_id);
    config.pack_target_size = shipping.pack_size;
    let mut store = HttpBackupStore::new(&state.server_url, &state.device_id, &identity.signing)?
        .with_receipt_pin(super::http::receipt_pin_path(state_dir))
        .with_rate_limit(shipping.max_upload_bytes_per_sec);
    if let Some(bar) = &shipping.progress {
        store = store.with_progress(bar.clone());
    }
    let report = run_backup_parallel(&config, &keys, &store, shipping.parallel_uploads)?;
    Ok(Shipped {
        receipt: store.last_receipt(),
        device_id: state.device_id,
        report,
    })
}

/// The terminal's own recipient for its backups: none on a write-only terminal (the recovery
/// key alone opens them), else the public half of its backup identity, which must exist.
fn terminal_recipient(
    state: &AgentState,
    identity: &Identity,
    state_dir: &Path,
) -> Result<Option<otter_keys::age::x25519::Recipient>, EnrolledBackupError> {
    if state.backups_write_only {
        return Ok(None);
    }
    match &identity.backup {
        Some(b) => Ok(Some(b.to_public())),
        None => Err(EnrolledBackupError::NoBackupKey {
            path: state_dir.join(crate::device::identity::BACKUP_KEY_FILE),
        }),
    }
}
