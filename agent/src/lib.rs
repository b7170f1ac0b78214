//! `otter-agent`: the terminal side of Otter.
//!
//! - [`tuf`]: the TUF client workflow (specification section 5): trusted metadata, the
//!   update sequence over any mirror, delegation search, verified target downloads.
//! - [`backup`]: backups of the terminal's SQLite database (one-step snapshot, page chunks,
//!   encrypted packs, signed manifest chain) and verified, atomic restores.
//! - [`device`]: enrollment (identity key, backup identity, chunk key, pinned root) and
//!   signed requests to the server's device API.
//! - [`select`]: choosing an update from signed target metadata only (kind, hardware,
//!   channel, rollout bucket and groups, minimum installed version, no unsigned downgrade).
//!
//! Still to come (see the agent and backup issues): resumable downloads and deltas, atomic
//! apply with health check and rollback, the daemon, and the backup/restore commands.

pub mod backup;
pub mod device;
pub mod select;
pub mod tuf;
