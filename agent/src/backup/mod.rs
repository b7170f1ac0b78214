//! Backups of the terminal's SQLite database, and verified restores (DESIGN.md, "Backups").
//!
//! - [`snapshot`]: a consistent copy of the live database with one online-backup step.
//! - [`pages`]: page-by-page reading, per-page zstd, file hashes, row counts and checks.
//! - [`store`]: the [`BackupStore`] trait and its local-directory implementation.
//! - [`http`]: [`HttpBackupStore`], the store of the server the terminal enrolled with.
//! - [`throttle`]: the upload bandwidth cap shared by all uploads of the process.
//! - [`index`]: the agent's local state: chunks already stored, the chain head, pending packs.
//! - [`engine`]: [`run_backup`]: snapshot → pages → packs → signed, chained manifest.
//! - [`enrolled`]: [`backup_enrolled`]: a backup of the enrolled terminal to its server (the
//!   set-up shared by `otter-agent backup`, the daemon and the pre-migration backup).
//! - [`restore`](mod@restore): [`restore`](restore::restore()): chain and signature checks, every pack and
//!   page verified, the rebuilt file checked, then an atomic replace of the live database.
//!
//! Everything is blocking: the agent is synchronous.

pub mod engine;
pub mod enrolled;
pub mod http;
pub mod index;
pub mod pages;
pub mod restore;
pub mod snapshot;
pub mod store;
pub mod throttle;

use std::path::PathBuf;

use otter_keys::age::x25519::Recipient;
use otter_keys::crypto::SigningKey;
use otter_keys::envelope::ChunkKey;

pub use engine::{run_backup, run_backup_parallel, BackupError, BackupReport};
pub use enrolled::{backup_enrolled, EnrolledBackupError, Shipped, Shipping};
pub use http::{HttpBackupStore, ManifestReceipt, ServerReceipts};
pub use restore::{
    prepare, restore, PreparedRestore, ReceiptCheck, Reencrypted, RestoreError, RestoreOptions,
    RestoreReport, Selector,
};
pub use store::{BackupStore, LocalDirStore, StoreError};

/// Default target size of a pack: a few MiB, so that an S3-style store is not charged one
/// request per page.
pub const DEFAULT_PACK_TARGET: usize = 4 * 1024 * 1024;
/// Default number of pack uploads in flight at once.
pub const DEFAULT_PARALLEL_UPLOADS: usize = 2;
/// Largest stored manifest accepted (header, signature and encrypted body).
pub const MAX_MANIFEST_BYTES: u64 = 256 * 1024 * 1024;
/// Key, in a manifest body's `extra`, of the chunk key (hex) the pages' ids were made with.
///
/// It travels inside the encrypted body, so that whoever may read the backup (the terminal,
/// or an admin with the recovery key restoring onto a replacement terminal) can check every
/// page's keyed id; it gives nobody more than the pages themselves.
pub const CHUNK_KEY_EXTRA: &str = "chunk_key";

/// What to back up, and where the agent keeps its backup state.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    /// The live database.
    pub database: PathBuf,
    /// The agent's state directory (backup state lives in its `backup/` subdirectory).
    pub state_dir: PathBuf,
    /// This terminal's device id.
    pub device_id: String,
    /// Bytes of compressed pages after which a pack is sealed and stored.
    pub pack_target_size: usize,
}

impl BackupConfig {
    /// A configuration with the default pack size.
    pub fn new(
        database: impl Into<PathBuf>,
        state_dir: impl Into<PathBuf>,
        device_id: impl Into<String>,
    ) -> Self {
        BackupConfig {
            database: database.into(),
            state_dir: state_dir.into(),
            device_id: device_id.into(),
            pack_target_size: DEFAULT_PACK_TARGET,
        }
    }
}

/// Who can decrypt backups: always the fleet recovery key; the terminal's own backup key
/// too, unless the fleet is write-only.
#[derive(Debug, Clone)]
pub struct BackupRecipients {
    /// The fleet's offline recovery key.
    pub recovery: Recipient,
    /// The terminal's own backup key; `None` in a write-only fleet.
    pub terminal: Option<Recipient>,
}

impl BackupRecipients {
    /// The recipients as a list for the envelope.
    pub fn to_vec(&self) -> Vec<Recipient> {
        let mut v = vec![self.recovery.clone()];
        v.extend(self.terminal.clone());
        v
    }
}

/// The keys a backup is made with.
#[derive(Debug)]
pub struct BackupKeys<'a> {
    /// The device's ed25519 key: signs manifests.
    pub signing: &'a SigningKey,
    /// The terminal's chunk key: keys the pages' ids.
    pub chunk_key: &'a ChunkKey,
    /// Who can decrypt.
    pub recipients: BackupRecipients,
}
