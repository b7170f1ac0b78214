//! Which pack uploads are admitted before anything is stored: a device's stored bytes
//! (its catalogued packs, referenced or not, and its catalogued manifests) plus the new
//! pack must stay within `backups.quota_bytes_per_device`, and a pack that a `prune` is
//! collecting right now (it has a tombstone, see [`super::gc`]) is not uploaded again
//! until that collection has deleted its object.
//!
//! The check runs before the object is written. Packs uploaded in parallel by one device
//! are each checked against the bytes already catalogued, so a device can go over its
//! quota by at most the packs it has in flight at once; manifests are never refused for
//! the quota, so a backup whose packs were admitted always completes.

use otter_keys::envelope::PackId;
use rusqlite::{Connection, OptionalExtension};

use super::BackupError;

/// What [`admit_pack`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Store it.
    Admit,
    /// A prune is collecting this very pack: retry once it is done.
    BeingCollected,
    /// Storing it would put the device over its quota.
    OverQuota {
        /// The quota, bytes.
        quota: u64,
        /// What the device has stored, bytes.
        stored: u64,
        /// The pack's length.
        incoming: u64,
    },
}

/// Bytes a device has stored: every catalogued pack (referenced or not) and every
/// catalogued manifest.
pub fn stored_bytes(conn: &Connection, device_id: &str) -> Result<u64, BackupError> {
    let packs: i64 = conn.query_row(
        "SELECT COALESCE(SUM(length), 0) FROM backup_packs WHERE device_id = ?1",
        [device_id],
        |r| r.get(0),
    )?;
    let manifests: i64 = conn.query_row(
        "SELECT COALESCE(SUM(manifest_length), 0) FROM backup_manifests WHERE device_id = ?1",
        [device_id],
        |r| r.get(0),
    )?;
    let u = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(u(packs).saturating_add(u(manifests)))
}

/// Whether `device_id` may store the new pack `pack` of `length` bytes under `quota`
/// (`None`: no quota). Call it for packs not stored yet only (an identical re-upload adds
/// nothing).
pub fn admit_pack(
    conn: &Connection,
    device_id: &str,
    pack: &PackId,
    length: u64,
    quota: Option<u64>,
) -> Result<Admission, BackupError> {
    let tombstone: Option<i64> = conn
        .query_row(
            "SELECT since FROM backup_pack_tombstones WHERE device_id = ?1 AND pack_id = ?2",
            rusqlite::params![device_id, pack.to_string()],
            |r| r.get(0),
        )
        .optional()?;
    if tombstone.is_some() {
        return Ok(Admission::BeingCollected);
    }
    let Some(quota) = quota else {
        return Ok(Admission::Admit);
    };
    let stored = stored_bytes(conn, device_id)?;
    if stored.saturating_add(length) > quota {
        return Ok(Admission::OverQuota {
            quota,
            stored,
            incoming: length,
        });
    }
    Ok(Admission::Admit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backups::record_pack;

    #[test]
    fn quota_counts_stored_packs_and_tombstones_block_reuploads() {
        let d = tempfile::tempdir().unwrap();
        let db = crate::db::Db::open_blocking(&d.path().join("otter.db")).unwrap();
        db.with_conn_blocking(|c| -> Result<(), BackupError> {
            let (a, b) = (PackId::from_bytes([1; 32]), PackId::from_bytes([2; 32]));
            assert_eq!(admit_pack(c, "till", &a, 60, Some(100))?, Admission::Admit);
            record_pack(c, "till", &a, 60, 1)?;
            record_pack(c, "other", &b, 500, 1)?;
            assert_eq!(stored_bytes(c, "till")?, 60);
            assert_eq!(admit_pack(c, "till", &b, 40, Some(100))?, Admission::Admit);
            assert_eq!(
                admit_pack(c, "till", &b, 41, Some(100))?,
                Admission::OverQuota {
                    quota: 100,
                    stored: 60,
                    incoming: 41
                }
            );
            assert_eq!(admit_pack(c, "till", &b, 41, None)?, Admission::Admit);
            c.execute(
                "INSERT INTO backup_pack_tombstones (device_id, pack_id, since) VALUES ('till', ?1, 5)",
                [b.to_string()],
            )?;
            assert_eq!(
                admit_pack(c, "till", &b, 1, None)?,
                Admission::BeingCollected
            );
            assert_eq!(admit_pack(c, "other", &b, 1, None)?, Admission::Admit);
            Ok(())
        })
        .unwrap();
    }
}
