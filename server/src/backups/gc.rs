//! `prune`: applies the retention policy to every device's chain, then garbage-collects the
//! packs no kept backup references, safely while a backup of the same device is uploading.
//!
//! One SQLite transaction decides and marks (and appends the audit entry):
//! 1. per device, [`super::retention::select`] over its catalogued manifests; each pruned
//!    manifest's row moves to `backup_pruned_manifests`, keeping its header and the server's
//!    countersignature, so the hash chain of what remains is still checked link by link
//!    (the newest backup, the chain's head, is never pruned);
//! 2. the packs no kept manifest references are collected when some (now pruned) manifest
//!    referenced them, or when they were uploaded longer ago than
//!    `backups.unreferenced_pack_grace_secs`: a pack uploaded for a backup whose manifest
//!    has not come yet is younger than that and stays. A collected pack's catalog row is
//!    replaced by a tombstone.
//!
//! Then the objects are deleted: each pruned manifest's, and each tombstoned pack's, whose
//! tombstone goes once its object is gone. A prune that is interrupted leaves tombstones and
//! undeleted objects that the next prune finishes.
//!
//! Why a running backup is safe: its manifest is catalogued only in a transaction that
//! finds every pack it names still catalogued ([`super::insert_manifest`]), so it either
//! commits before the prune's transaction (and the prune sees its packs referenced) or after
//! (and is refused with `backup_pack_missing` if a pack it reused was collected; never
//! catalogued with a pack missing). An upload of a pack with a tombstone is refused until
//! the object is deleted ([`super::quota::admit_pack`]), so a deletion never removes a pack
//! that was uploaded again.

use std::collections::HashSet;

use object_store::ObjectStoreExt;
use otter_keys::envelope::ManifestHeader;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use serde_json::json;

use super::retention::{select, Candidate, Decision, RetentionConfig, RetentionPolicy};
use super::{manifest_key, pack_key, BackupError};
use crate::audit::{Actor, AuditError};
use crate::db::{Db, DbError};
use crate::store::Store;

/// Why a prune failed.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The catalog failed or holds an unreadable value.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// The database failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database handle failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The audit entry could not be appended (nothing was pruned).
    #[error("recording the prune in the audit log: {0}")]
    Audit(#[from] AuditError),
    /// `--device` names a device with nothing catalogued.
    #[error(
        "device {0:?} has no backups or packs in the catalog (see `otter-server backups list`)"
    )]
    UnknownDevice(String),
}

/// What to prune.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Only this device; all devices when `None`.
    pub device: Option<String>,
    /// Decide and report only; change nothing.
    pub dry_run: bool,
    /// The current time, Unix seconds.
    pub now: i64,
    /// `backups.unreferenced_pack_grace_secs`.
    pub grace_secs: u64,
}

/// What a prune did (or would do) to one device.
#[derive(Debug, Clone, Serialize)]
pub struct DevicePrune {
    /// The device.
    pub device_id: String,
    /// Its group, which chose the policy.
    pub group: Option<String>,
    /// The policy applied.
    pub policy: RetentionPolicy,
    /// Every backup with the reasons it is kept (none: pruned), newest first.
    pub decisions: Vec<Decision>,
    /// Sequences pruned.
    pub pruned: Vec<u64>,
    /// Packs collected.
    pub collected_packs: Vec<String>,
    /// Their bytes.
    pub collected_bytes: u64,
    /// Unreferenced packs left alone because they are younger than the grace period (a
    /// backup still uploading).
    pub packs_in_grace: u64,
}

/// What a prune did (or would do).
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// Per device.
    pub devices: Vec<DevicePrune>,
    /// Manifests pruned, all devices.
    pub manifests_pruned: u64,
    /// Packs collected, all devices.
    pub packs_collected: u64,
    /// Bytes of the packs collected.
    pub bytes_freed: u64,
    /// Object deletions that failed (the catalog is consistent; the next prune retries).
    pub store_errors: Vec<String>,
}

/// Runs a prune: decide and mark in one transaction, then delete the objects.
pub async fn prune(
    db: &Db,
    store: &Store,
    retention: &RetentionConfig,
    opts: PruneOptions,
    actor: Actor,
) -> Result<PruneReport, GcError> {
    let (r, o) = (retention.clone(), opts.clone());
    let mut report = db
        .call(move |c| Ok(plan_and_mark(c, &r, &o, &actor)))
        .await??;
    if !opts.dry_run {
        report.store_errors = sweep(db, store, opts.device.as_deref()).await?;
    }
    Ok(report)
}

fn header_of(raw: &[u8]) -> Result<ManifestHeader, BackupError> {
    serde_json::from_slice(raw).map_err(|e| BackupError::Corrupt(format!("stored header: {e}")))
}

/// Devices with anything catalogued, `device` only when given.
fn devices(conn: &Connection, device: Option<&str>) -> Result<Vec<String>, GcError> {
    let mut stmt = conn.prepare(
        "SELECT device_id FROM backup_manifests WHERE ?1 IS NULL OR device_id = ?1
         UNION SELECT device_id FROM backup_packs WHERE ?1 IS NULL OR device_id = ?1
         ORDER BY 1",
    )?;
    let rows = stmt.query_map([device], |r| r.get::<_, String>(0))?;
    let found = rows.collect::<Result<Vec<_>, _>>()?;
    match device {
        Some(d) if found.is_empty() => Err(GcError::UnknownDevice(d.chars().take(64).collect())),
        _ => Ok(found),
    }
}

/// Step 1 and 2 of the module documentation, in one immediate transaction.
pub fn plan_and_mark(
    conn: &mut Connection,
    retention: &RetentionConfig,
    opts: &PruneOptions,
    actor: &Actor,
) -> Result<PruneReport, GcError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut report = PruneReport {
        dry_run: opts.dry_run,
        devices: Vec::new(),
        manifests_pruned: 0,
        packs_collected: 0,
        bytes_freed: 0,
        store_errors: Vec::new(),
    };
    let horizon = opts
        .now
        .saturating_sub(i64::try_from(opts.grace_secs).unwrap_or(i64::MAX));
    for device in devices(&tx, opts.device.as_deref())? {
        let d = prune_device(&tx, retention, opts, horizon, &device)?;
        if !opts.dry_run && (!d.pruned.is_empty() || !d.collected_packs.is_empty()) {
            crate::audit::append(
                &tx,
                actor,
                "backups.prune",
                &format!("device:{device}"),
                &json!({
                    "policy": d.policy,
                    "pruned_sequences": d.pruned,
                    "collected_packs": d.collected_packs.len(),
                    "collected_bytes": d.collected_bytes,
                }),
                opts.now,
            )?;
        }
        report.manifests_pruned += d.pruned.len() as u64;
        report.packs_collected += d.collected_packs.len() as u64;
        report.bytes_freed = report.bytes_freed.saturating_add(d.collected_bytes);
        report.devices.push(d);
    }
    if opts.dry_run {
        tx.rollback()?;
    } else {
        tx.commit()?;
    }
    Ok(report)
}

fn prune_device(
    tx: &Connection,
    retention: &RetentionConfig,
    opts: &PruneOptions,
    horizon: i64,
    device: &str,
) -> Result<DevicePrune, GcError> {
    let group: Option<String> = tx
        .query_row(
            "SELECT device_group FROM devices WHERE device_id = ?1",
            [device],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    let policy = retention.policy_for(group.as_deref());
    let manifests: Vec<(u64, i64, Vec<u8>)> = {
        let mut stmt = tx.prepare(
            "SELECT sequence, created, header FROM backup_manifests WHERE device_id = ?1
             ORDER BY sequence",
        )?;
        let rows = stmt.query_map([device], |r| {
            Ok((
                u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                r.get(1)?,
                r.get(2)?,
            ))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    let candidates: Vec<Candidate> = manifests
        .iter()
        .map(|(sequence, created, _)| Candidate {
            sequence: *sequence,
            created: *created,
        })
        .collect();
    let decisions = select(&policy, &candidates);
    let kept: HashSet<u64> = decisions
        .iter()
        .filter(|d| d.keep())
        .map(|d| d.sequence)
        .collect();
    let mut referenced: HashSet<String> = HashSet::new();
    for (sequence, _, raw) in &manifests {
        if kept.contains(sequence) {
            referenced.extend(header_of(raw)?.packs.iter().map(|p| p.id.to_string()));
        }
    }
    let mut pruned: Vec<u64> = decisions
        .iter()
        .filter(|d| !d.keep())
        .map(|d| d.sequence)
        .collect();
    pruned.sort_unstable();
    if !opts.dry_run {
        for seq in &pruned {
            let seq = i64::try_from(*seq).map_err(|_| BackupError::TooLarge("sequence"))?;
            tx.execute(
                "INSERT INTO backup_pruned_manifests (device_id, sequence, header_hash, header,
                     created, received_at, countersignature, pruned_at)
                 SELECT device_id, sequence, header_hash, header, created, received_at,
                     countersignature, ?3
                 FROM backup_manifests WHERE device_id = ?1 AND sequence = ?2",
                rusqlite::params![device, seq, opts.now],
            )?;
            tx.execute(
                "DELETE FROM backup_manifests WHERE device_id = ?1 AND sequence = ?2",
                rusqlite::params![device, seq],
            )?;
            tx.execute(
                "DELETE FROM backup_verifications WHERE device_id = ?1 AND sequence = ?2",
                rusqlite::params![device, seq],
            )?;
        }
    }
    let packs: Vec<(String, i64, i64, bool)> = {
        let mut stmt = tx.prepare(
            "SELECT pack_id, length, stored_at, first_sequence IS NOT NULL FROM backup_packs
             WHERE device_id = ?1 ORDER BY pack_id",
        )?;
        let rows = stmt.query_map([device], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    let (mut collected, mut collected_bytes, mut in_grace) = (Vec::new(), 0u64, 0u64);
    for (pack, length, stored_at, was_referenced) in packs {
        if referenced.contains(&pack) {
            continue;
        }
        if !was_referenced && stored_at > horizon {
            in_grace += 1;
            continue;
        }
        if !opts.dry_run {
            tx.execute(
                "DELETE FROM backup_packs WHERE device_id = ?1 AND pack_id = ?2",
                rusqlite::params![device, pack],
            )?;
            tx.execute(
                "INSERT INTO backup_pack_tombstones (device_id, pack_id, since) VALUES (?1, ?2, ?3)
                 ON CONFLICT (device_id, pack_id) DO NOTHING",
                rusqlite::params![device, pack, opts.now],
            )?;
        }
        collected_bytes = collected_bytes.saturating_add(u64::try_from(length).unwrap_or(0));
        collected.push(pack);
    }
    Ok(DevicePrune {
        device_id: device.to_owned(),
        group,
        policy,
        decisions,
        pruned,
        collected_packs: collected,
        collected_bytes,
        packs_in_grace: in_grace,
    })
}

/// Deletes from the store the objects of pruned manifests and tombstoned packs (also those
/// an interrupted prune left), and then their tombstones. Returns the deletions that failed.
pub async fn sweep(db: &Db, store: &Store, device: Option<&str>) -> Result<Vec<String>, GcError> {
    let dev = device.map(str::to_owned);
    let (manifests, packs) = db
        .call(move |c| {
            let mut stmt = c.prepare(
                "SELECT device_id, sequence FROM backup_pruned_manifests
                 WHERE store_deleted = 0 AND (?1 IS NULL OR device_id = ?1)",
            )?;
            let m = stmt
                .query_map([&dev], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut stmt = c.prepare(
                "SELECT device_id, pack_id FROM backup_pack_tombstones
                 WHERE ?1 IS NULL OR device_id = ?1",
            )?;
            let p = stmt
                .query_map([&dev], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok((m, p))
        })
        .await?;
    let mut errors = Vec::new();
    for (device, seq) in manifests {
        let key = manifest_key(&device, u64::try_from(seq).unwrap_or(0));
        if let Err(e) = delete_object(store, &key).await {
            errors.push(e);
            continue;
        }
        db.call(move |c| {
            c.execute(
                "UPDATE backup_pruned_manifests SET store_deleted = 1
                 WHERE device_id = ?1 AND sequence = ?2",
                rusqlite::params![device, seq],
            )?;
            Ok(())
        })
        .await?;
    }
    for (device, pack) in packs {
        let Ok(id) = pack.parse::<otter_keys::envelope::PackId>() else {
            errors.push(format!(
                "a tombstone of device {device:?} names {pack:?}, which is not a pack id; \
                 remove that row from backup_pack_tombstones"
            ));
            continue;
        };
        let key = pack_key(&device, &id);
        if let Err(e) = delete_object(store, &key).await {
            errors.push(e);
            continue;
        }
        db.call(move |c| {
            c.execute(
                "DELETE FROM backup_pack_tombstones WHERE device_id = ?1 AND pack_id = ?2",
                rusqlite::params![device, pack],
            )?;
            Ok(())
        })
        .await?;
    }
    Ok(errors)
}

/// A pruned manifest as the catalog keeps it: enough to check the chain across it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrunedLink {
    /// Its place in the chain.
    pub sequence: u64,
    /// Its header, as the device signed it (the next manifest's `previous` is its hash).
    pub header: ManifestHeader,
    /// Hex SHA-256 of the canonical header.
    pub header_hash: String,
    /// The server's receipt of it.
    pub countersignature: otter_keys::envelope::Countersignature,
    /// When it was pruned, Unix seconds.
    pub pruned_at: i64,
}

/// The pruned manifests of a device, oldest first: with the kept ones, the whole chain.
pub fn pruned_links(conn: &Connection, device_id: &str) -> Result<Vec<PrunedLink>, BackupError> {
    let mut stmt = conn.prepare(
        "SELECT sequence, header, header_hash, countersignature, pruned_at
         FROM backup_pruned_manifests WHERE device_id = ?1 ORDER BY sequence",
    )?;
    let rows = stmt.query_map([device_id], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, header, header_hash, cs, pruned_at) = row?;
        out.push(PrunedLink {
            sequence: u64::try_from(seq).unwrap_or(0),
            header: header_of(&header)?,
            header_hash,
            countersignature: serde_json::from_str(&cs)
                .map_err(|e| BackupError::Corrupt(format!("stored countersignature: {e}")))?,
            pruned_at,
        });
    }
    Ok(out)
}

/// Deletes an object; one that is already gone is fine.
async fn delete_object(store: &Store, key: &str) -> Result<(), String> {
    let path = crate::store::object_path(key).map_err(|e| e.to_string())?;
    match store.inner().delete(&path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => {
            tracing::warn!(key, error = %e, "deleting a pruned backup object failed");
            Err(format!("deleting {key}: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backups::{insert_manifest, record_pack, ManifestRecord};
    use otter_keys::crypto::SigningKey;
    use otter_keys::envelope::{Countersignature, PackId, PackRef};
    use otter_keys::time::UtcTime;

    const T0: i64 = 1_767_225_600;

    fn header(seq: u64, prev: Option<&ManifestHeader>, packs: &[PackId]) -> ManifestHeader {
        ManifestHeader {
            format: 1,
            device_id: "till".into(),
            sequence: seq,
            created: UtcTime::from_unix(T0 + seq as i64 * 86_400),
            previous: prev.map(|p| p.hash().unwrap()),
            packs: packs
                .iter()
                .map(|id| PackRef {
                    id: *id,
                    length: 10,
                })
                .collect(),
            body_sha256: "cd".repeat(32),
            body_length: 10,
            body_plaintext_sha256: "ef".repeat(32),
        }
    }

    fn catalog(c: &mut Connection, h: &ManifestHeader) -> Result<(), BackupError> {
        let rec = ManifestRecord {
            device_id: h.device_id.clone(),
            sequence: h.sequence,
            header_hash: h.hash().unwrap(),
            created: h.created.unix(),
            pack_count: h.packs.len() as u64,
            total_pack_bytes: 0,
            new_pack_bytes: 0,
            body_length: 10,
            manifest_length: 100,
            received_at: h.created.unix(),
            countersignature: Countersignature {
                header_hash: h.hash().unwrap(),
                signature: SigningKey::from_seed(&[3; 32]).sign(b"x"),
            },
        };
        insert_manifest(c, h, &rec)
    }

    fn opts(dry_run: bool, now: i64) -> PruneOptions {
        PruneOptions {
            device: None,
            dry_run,
            now,
            grace_secs: 3600,
        }
    }

    #[test]
    fn pruning_keeps_referenced_and_young_packs_and_moves_rows() {
        let d = tempfile::tempdir().unwrap();
        let db = Db::open_blocking(&d.path().join("otter.db")).unwrap();
        let p: Vec<PackId> = (1..=5).map(|i| PackId::from_bytes([i; 32])).collect();
        let retention = RetentionConfig {
            keep_last: 1,
            ..Default::default()
        };
        let now = T0 + 10 * 86_400;
        db.with_conn_blocking(|c| -> Result<(), GcError> {
            for id in &p[..4] {
                record_pack(c, "till", id, 10, T0)?;
            }
            let h1 = header(1, None, &p[0..2]);
            catalog(c, &h1)?;
            let h2 = header(2, Some(&h1), &p[1..3]);
            catalog(c, &h2)?;
            // p[3]: uploaded long ago, never referenced. p[4]: uploaded just now for a
            // backup whose manifest has not come.
            record_pack(c, "till", &p[4], 10, now - 10)?;

            let dry = plan_and_mark(c, &retention, &opts(true, now), &Actor::host("test"))?;
            assert_eq!(dry.devices[0].pruned, vec![1]);
            assert_eq!(dry.packs_collected, 2);
            assert_eq!(dry.devices[0].packs_in_grace, 1);
            let left: i64 = c.query_row("SELECT COUNT(*) FROM backup_packs", [], |r| r.get(0))?;
            assert_eq!(left, 5, "a dry run changes nothing");

            let done = plan_and_mark(c, &retention, &opts(false, now), &Actor::host("test"))?;
            let mut collected = done.devices[0].collected_packs.clone();
            collected.sort();
            let mut want = vec![p[0].to_string(), p[3].to_string()];
            want.sort();
            assert_eq!(collected, want);
            assert_eq!(done.bytes_freed, 20);
            let kept: Vec<u64> = crate::backups::list_manifests(c, None)?
                .iter()
                .map(|r| r.sequence)
                .collect();
            assert_eq!(kept, vec![2]);
            let pruned: String = c.query_row(
                "SELECT header_hash FROM backup_pruned_manifests WHERE sequence = 1",
                [],
                |r| r.get(0),
            )?;
            assert_eq!(pruned, h1.hash().unwrap());
            let tombs: i64 =
                c.query_row("SELECT COUNT(*) FROM backup_pack_tombstones", [], |r| {
                    r.get(0)
                })?;
            assert_eq!(tombs, 2);
            // The audit log says so.
            let action: String = c.query_row(
                "SELECT action FROM audit_log ORDER BY seq DESC LIMIT 1",
                [],
                |r| r.get(0),
            )?;
            assert_eq!(action, "backups.prune");
            // The next backup still follows the head, and a pack collected meanwhile is
            // refused inside the catalog transaction.
            let h3 = header(3, Some(&h2), &[p[2], p[0]]);
            assert!(matches!(
                catalog(c, &h3),
                Err(BackupError::PackMissing { .. })
            ));
            let h3 = header(3, Some(&h2), &[p[2], p[4]]);
            catalog(c, &h3)?;
            Ok(())
        })
        .unwrap();
    }
}
