//! `otter-agent`: the terminal side of Otter.
//!
//! - [`tuf`]: the TUF client workflow (specification section 5): trusted metadata, the
//!   update sequence over any mirror, delegation search, verified target downloads.
//! - [`apply`]: atomic apply of verified bundles (safe unpack, versioned dirs, symlink swap
//!   by `rename(2)`, SQLite journal, health check, rollback, crash recovery).
//! - [`backup`]: backups of the terminal's SQLite database (one-step snapshot, page chunks,
//!   encrypted packs, signed manifest chain) and verified, atomic restores.
//! - [`device`]: enrollment (identity key, backup identity, chunk key, pinned root) and
//!   signed requests to the server's device API.
//! - [`select`]: choosing an update from signed target metadata only (kind, hardware,
//!   channel, rollout bucket and groups, minimum installed version, no unsigned downgrade).
//! - [`download`]: resumable (HTTP `Range`), length-capped, verified target downloads.
//! - [`update`]: one update pass (refresh, choose, download, apply in the maintenance
//!   window, signed report); [`daemon`]: the `run` loop (jitter, backoff, signals,
//!   scheduled backups); [`status`]: the agent's status file; [`config`]: the agent's TOML
//!   configuration and maintenance windows.
//!
//! - [`restore_requests`]: restores an admin or restorer requested through the server.
//! - [`server_transfer`]: backup transfers (re-encrypted with the recovery key) fetched from
//!   the server.
//! - [`integrity`]: the integrity pass over installed components and the scheduling of the
//!   database checks ([`dbhealth`]); drift and corruption become security events.
//! - [`delta`]: updates through signed deltas from the installed version, rebuilt and
//!   verified against the signed hash before use, with the fall-back to the full download.

pub mod apply;
pub mod backup;
pub mod config;
pub mod daemon;
pub mod dbhealth;
pub mod delta;
pub mod device;
pub mod download;
pub mod integrity;
pub mod migration;
pub mod restore_requests;
pub mod select;
pub mod server_transfer;
pub mod status;
pub mod tuf;
pub mod update;
