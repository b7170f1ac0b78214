//! Receiving terminals' encrypted backups, without any key that decrypts them: the catalog
//! of packs and manifests in SQLite, the keyless checks a manifest passes on receipt
//! (device signature, chain, every pack stored with its length), and the server's
//! countersignature. Plain functions on a SQLite connection, shared by the HTTP API and the
//! `otter-server backups` subcommand.
//!
//! Objects live in the store at `backups/{device}/packs/{pack_id}` and
//! `backups/{device}/manifests/{sequence:020}`; a catalog row is written only after its
//! object, so the catalog never lists a pack or manifest that is not stored.
//!
//! - [`receipt`]: the server's backup receipt key, which countersigns manifests.
//! - [`retention`]: which backups the retention policy keeps (pure).
//! - [`gc`]: `prune`: retention, then garbage collection of unreferenced packs.
//! - [`verify`]: keyless verification of the catalog against the store.
//! - [`quota`]: which pack uploads are admitted (stored-bytes quota, packs being collected).
//! - [`requests`]: restore requests from admins/restorers, fetched and answered by devices.
//! - [`transfers`]: backups exported as ciphertext, and transfers imported for a device.

pub mod gc;
pub mod quota;
pub mod receipt;
pub mod requests;
pub mod restore_outcome;
pub mod retention;
pub mod transfers;
pub mod verify;

use otter_keys::envelope::{
    Countersignature, EnvelopeError, ManifestHeader, PackId, SignedManifest,
};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;

/// Why a backup was refused or the catalog failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The manifest does not parse (framing, canonical JSON, size).
    #[error("the backup manifest is malformed: {0}")]
    Malformed(EnvelopeError),
    /// The manifest names another device than the one that sent it.
    #[error("the manifest is for device {manifest:?}, but device {sender:?} sent it")]
    WrongDevice {
        /// The device in the header.
        manifest: String,
        /// The authenticated device.
        sender: String,
    },
    /// The device signature (or the body's hash or length) does not verify.
    #[error("the backup manifest does not verify with the device's key: {0}")]
    Signature(EnvelopeError),
    /// The manifest does not follow the device's latest catalogued manifest.
    #[error("the backup manifest does not follow the device's latest backup: {0}")]
    Chain(EnvelopeError),
    /// Another manifest with this sequence number is catalogued already.
    #[error("device {device:?} already has a different backup manifest #{sequence}")]
    SequenceConflict {
        /// The device.
        device: String,
        /// The sequence number.
        sequence: u64,
    },
    /// A pack the manifest needs was not uploaded, or with another length.
    #[error("pack {pack} is not stored for this device{detail}: upload it before the manifest")]
    PackMissing {
        /// The pack.
        pack: String,
        /// Length mismatch detail, if any.
        detail: String,
    },
    /// No such device is enrolled, or its stored key is unusable.
    #[error("device {0}")]
    Device(String),
    /// A stored value could not be read back.
    #[error("the backup catalog holds an unreadable value: {0}")]
    Corrupt(String),
    /// A number does not fit the database.
    #[error("{0} is too large")]
    TooLarge(&'static str),
    /// The database failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database handle failed.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
}

/// The store key of a pack.
pub fn pack_key(device_id: &str, pack: &PackId) -> String {
    format!("backups/{device_id}/packs/{pack}")
}

/// The store key of a manifest.
pub fn manifest_key(device_id: &str, sequence: u64) -> String {
    format!("backups/{device_id}/manifests/{sequence:020}")
}

fn to_i64(v: u64, what: &'static str) -> Result<i64, BackupError> {
    i64::try_from(v).map_err(|_| BackupError::TooLarge(what))
}

/// The catalogued length of a device's pack; `None` when it was not uploaded.
pub fn pack_length(
    conn: &Connection,
    device_id: &str,
    pack: &PackId,
) -> Result<Option<u64>, BackupError> {
    let len: Option<i64> = conn
        .query_row(
            "SELECT length FROM backup_packs WHERE device_id = ?1 AND pack_id = ?2",
            rusqlite::params![device_id, pack.to_string()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(len.map(|l| u64::try_from(l).unwrap_or(0)))
}

/// The length of a device's pack that one of the device's catalogued manifests references;
/// `None` when the device has no such pack, or uploaded it without a manifest naming it yet.
/// What a device may read back: only its own packs, only once they are part of a backup.
pub fn referenced_pack_length(
    conn: &Connection,
    device_id: &str,
    pack: &PackId,
) -> Result<Option<u64>, BackupError> {
    let len: Option<i64> = conn
        .query_row(
            "SELECT length FROM backup_packs
             WHERE device_id = ?1 AND pack_id = ?2 AND first_sequence IS NOT NULL",
            rusqlite::params![device_id, pack.to_string()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(len.map(|l| u64::try_from(l).unwrap_or(0)))
}

/// Records a stored pack. Returns whether it is new (an identical pack may be uploaded
/// again, by an agent resuming).
pub fn record_pack(
    conn: &Connection,
    device_id: &str,
    pack: &PackId,
    length: u64,
    now: i64,
) -> Result<bool, BackupError> {
    let n = conn.execute(
        "INSERT INTO backup_packs (device_id, pack_id, length, stored_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (device_id, pack_id) DO NOTHING",
        rusqlite::params![
            device_id,
            pack.to_string(),
            to_i64(length, "pack length")?,
            now
        ],
    )?;
    Ok(n == 1)
}

/// The header of the device's latest catalogued manifest, if it has any.
pub fn latest_header(
    conn: &Connection,
    device_id: &str,
) -> Result<Option<ManifestHeader>, BackupError> {
    let raw: Option<Vec<u8>> = conn
        .query_row(
            "SELECT header FROM backup_manifests WHERE device_id = ?1
             ORDER BY sequence DESC LIMIT 1",
            [device_id],
            |r| r.get(0),
        )
        .optional()?;
    raw.map(|b| {
        serde_json::from_slice(&b).map_err(|e| BackupError::Corrupt(format!("stored header: {e}")))
    })
    .transpose()
}

/// The header hash and countersignature of the device's manifest `sequence`, if any.
pub fn manifest_receipt(
    conn: &Connection,
    device_id: &str,
    sequence: u64,
) -> Result<Option<(String, Countersignature)>, BackupError> {
    let row: Option<(String, String)> = conn
        .query_row(
            "SELECT header_hash, countersignature FROM backup_manifests
             WHERE device_id = ?1 AND sequence = ?2",
            rusqlite::params![device_id, to_i64(sequence, "sequence")?],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    row.map(|(h, c)| {
        let cs = serde_json::from_str(&c)
            .map_err(|e| BackupError::Corrupt(format!("stored countersignature: {e}")))?;
        Ok((h, cs))
    })
    .transpose()
}

/// Checks that every pack of `header` is catalogued for its device with that exact length.
/// Returns the total bytes and the bytes of packs no earlier manifest referenced.
pub fn check_packs(conn: &Connection, header: &ManifestHeader) -> Result<(u64, u64), BackupError> {
    let (mut total, mut new) = (0u64, 0u64);
    let mut stmt = conn.prepare(
        "SELECT length, first_sequence FROM backup_packs WHERE device_id = ?1 AND pack_id = ?2",
    )?;
    for p in &header.packs {
        let row: Option<(i64, Option<i64>)> = stmt
            .query_row(rusqlite::params![header.device_id, p.id.to_string()], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let Some((len, first)) = row else {
            return Err(BackupError::PackMissing {
                pack: p.id.to_string(),
                detail: String::new(),
            });
        };
        if u64::try_from(len).ok() != Some(p.length) {
            return Err(BackupError::PackMissing {
                pack: p.id.to_string(),
                detail: format!(" with length {} (the stored one has {len})", p.length),
            });
        }
        total = total.saturating_add(p.length);
        if first.is_none() {
            new = new.saturating_add(p.length);
        }
    }
    Ok((total, new))
}

/// An accepted manifest, as catalogued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestRecord {
    /// The device.
    pub device_id: String,
    /// Its place in the device's chain.
    pub sequence: u64,
    /// Hex SHA-256 of the canonical header.
    pub header_hash: String,
    /// When the backup was taken (device clock), Unix seconds.
    pub created: i64,
    /// Number of packs the backup needs.
    pub pack_count: u64,
    /// Bytes of all packs the backup needs.
    pub total_pack_bytes: u64,
    /// Bytes of packs this backup referenced first.
    pub new_pack_bytes: u64,
    /// Length of the encrypted body.
    pub body_length: u64,
    /// Length of the stored manifest.
    pub manifest_length: u64,
    /// When the server accepted it, Unix seconds.
    pub received_at: i64,
    /// The server's receipt.
    pub countersignature: Countersignature,
}

/// Catalogs an accepted manifest (its object is stored already) and marks its packs as
/// referenced. Refuses, changing nothing, when the chain moved on since the checks: the
/// latest catalogued header must still be `previous_hash`'s.
pub fn insert_manifest(
    conn: &mut Connection,
    header: &ManifestHeader,
    record: &ManifestRecord,
) -> Result<(), BackupError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let latest: Option<i64> = tx.query_row(
        "SELECT MAX(sequence) FROM backup_manifests WHERE device_id = ?1",
        [&record.device_id],
        |r| r.get(0),
    )?;
    let expected = header.sequence.saturating_sub(1);
    if latest.map_or(0, |l| u64::try_from(l).unwrap_or(0)) != expected {
        return Err(BackupError::SequenceConflict {
            device: record.device_id.clone(),
            sequence: header.sequence,
        });
    }
    // Again inside the transaction: a prune may have collected a pack since the checks on
    // receipt, and a catalogued backup must never miss one (see `gc`).
    check_packs(&tx, header)?;
    let header_json =
        serde_json::to_vec(header).map_err(|e| BackupError::Corrupt(format!("header: {e}")))?;
    let cs = serde_json::to_string(&record.countersignature)
        .map_err(|e| BackupError::Corrupt(format!("countersignature: {e}")))?;
    let seq = to_i64(record.sequence, "sequence")?;
    tx.execute(
        "INSERT INTO backup_manifests (device_id, sequence, header_hash, header, created,
             pack_count, total_pack_bytes, new_pack_bytes, body_length, manifest_length,
             received_at, countersignature)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        rusqlite::params![
            record.device_id,
            seq,
            record.header_hash,
            header_json,
            record.created,
            to_i64(record.pack_count, "pack count")?,
            to_i64(record.total_pack_bytes, "pack bytes")?,
            to_i64(record.new_pack_bytes, "pack bytes")?,
            to_i64(record.body_length, "body length")?,
            to_i64(record.manifest_length, "manifest length")?,
            record.received_at,
            cs,
        ],
    )?;
    {
        let mut stmt = tx.prepare(
            "UPDATE backup_packs SET first_sequence = ?3
             WHERE device_id = ?1 AND pack_id = ?2 AND first_sequence IS NULL",
        )?;
        for p in &header.packs {
            stmt.execute(rusqlite::params![record.device_id, p.id.to_string(), seq])?;
        }
    }
    tx.commit()?;
    Ok(())
}

const RECORD_COLUMNS: &str = "device_id, sequence, header_hash, created, pack_count,
    total_pack_bytes, new_pack_bytes, body_length, manifest_length, received_at,
    countersignature";

/// A catalog row as read, before its countersignature JSON is parsed.
type RawRecord = ([i64; 8], String, String, String);

fn raw_record(r: &rusqlite::Row) -> rusqlite::Result<RawRecord> {
    let mut n = [0i64; 8];
    for (slot, col) in n.iter_mut().zip([1usize, 3, 4, 5, 6, 7, 8, 9]) {
        *slot = r.get(col)?;
    }
    Ok((n, r.get(0)?, r.get(2)?, r.get(10)?))
}

fn finish(raw: RawRecord) -> Result<ManifestRecord, BackupError> {
    let (n, device_id, header_hash, cs) = raw;
    let u = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(ManifestRecord {
        device_id,
        sequence: u(n[0]),
        header_hash,
        created: n[1],
        pack_count: u(n[2]),
        total_pack_bytes: u(n[3]),
        new_pack_bytes: u(n[4]),
        body_length: u(n[5]),
        manifest_length: u(n[6]),
        received_at: n[7],
        countersignature: serde_json::from_str(&cs)
            .map_err(|e| BackupError::Corrupt(format!("stored countersignature: {e}")))?,
    })
}

/// Catalogued manifests, oldest first per device; only `device`'s when given.
pub fn list_manifests(
    conn: &Connection,
    device: Option<&str>,
) -> Result<Vec<ManifestRecord>, BackupError> {
    let sql = format!(
        "SELECT {RECORD_COLUMNS} FROM backup_manifests
         WHERE ?1 IS NULL OR device_id = ?1 ORDER BY device_id, sequence"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([device], raw_record)?;
    rows.map(|r| finish(r?)).collect()
}

/// One catalogued manifest, with its header (packs and chain link).
pub fn show_manifest(
    conn: &Connection,
    device: &str,
    sequence: u64,
) -> Result<Option<(ManifestRecord, ManifestHeader)>, BackupError> {
    let sql = format!(
        "SELECT {RECORD_COLUMNS}, header FROM backup_manifests
         WHERE device_id = ?1 AND sequence = ?2"
    );
    let row = conn
        .query_row(
            &sql,
            rusqlite::params![device, to_i64(sequence, "sequence")?],
            |r| Ok((raw_record(r)?, r.get::<_, Vec<u8>>(11)?)),
        )
        .optional()?;
    let Some((rec, header)) = row else {
        return Ok(None);
    };
    let header: ManifestHeader = serde_json::from_slice(&header)
        .map_err(|e| BackupError::Corrupt(format!("stored header: {e}")))?;
    Ok(Some((finish(rec)?, header)))
}

/// What the keyless checks of a received manifest found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A new manifest that follows the chain and whose packs are all stored.
    New {
        /// Bytes of all its packs.
        total_pack_bytes: u64,
        /// Bytes of the packs it references first.
        new_pack_bytes: u64,
    },
    /// This very manifest was accepted before (an agent retrying): its receipt.
    Duplicate(Countersignature),
}

/// The server's checks on receipt, without any decryption key and changing nothing: the
/// device's signature over the header (and the body's hash and length), then either the
/// same manifest catalogued already, or a manifest that follows the device's latest one
/// and whose packs are all stored for the device with their exact lengths. The caller has
/// checked that the header names `device_id`.
pub fn check_received(
    conn: &Connection,
    device_id: &str,
    manifest: &SignedManifest,
) -> Result<Received, BackupError> {
    let key = crate::fleet::device_key(conn, device_id)
        .map_err(|e| BackupError::Device(e.to_string()))?
        .ok_or_else(|| BackupError::Device(format!("{device_id:?} is not enrolled")))?;
    manifest
        .verify_signature(&key.public_key)
        .map_err(BackupError::Signature)?;
    let header = &manifest.header;
    let hash = manifest.header_hash().map_err(BackupError::Malformed)?;
    if let Some((stored, cs)) = manifest_receipt(conn, device_id, header.sequence)? {
        if stored == hash {
            return Ok(Received::Duplicate(cs));
        }
        return Err(BackupError::SequenceConflict {
            device: device_id.to_owned(),
            sequence: header.sequence,
        });
    }
    let previous = latest_header(conn, device_id)?;
    header
        .check_follows(previous.as_ref())
        .map_err(BackupError::Chain)?;
    let (total_pack_bytes, new_pack_bytes) = check_packs(conn, header)?;
    Ok(Received::New {
        total_pack_bytes,
        new_pack_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use otter_keys::crypto::SigningKey;
    use otter_keys::envelope::PackRef;
    use otter_keys::time::UtcTime;

    fn db() -> (tempfile::TempDir, crate::db::Db) {
        let d = tempfile::tempdir().unwrap();
        let db = crate::db::Db::open_blocking(&d.path().join("otter.db")).unwrap();
        (d, db)
    }

    fn header(sequence: u64, packs: Vec<PackRef>) -> ManifestHeader {
        ManifestHeader {
            format: 1,
            device_id: "till-1".into(),
            sequence,
            created: UtcTime::from_unix(1_700_000_000),
            previous: (sequence > 1).then(|| "ab".repeat(32)),
            packs,
            body_sha256: "cd".repeat(32),
            body_length: 10,
            body_plaintext_sha256: "ef".repeat(32),
        }
    }

    fn record(h: &ManifestHeader) -> ManifestRecord {
        ManifestRecord {
            device_id: h.device_id.clone(),
            sequence: h.sequence,
            header_hash: h.hash().unwrap(),
            created: h.created.unix(),
            pack_count: h.packs.len() as u64,
            total_pack_bytes: 0,
            new_pack_bytes: 0,
            body_length: h.body_length,
            manifest_length: 100,
            received_at: 5,
            countersignature: Countersignature {
                header_hash: h.hash().unwrap(),
                signature: SigningKey::from_seed(&[3; 32]).sign(b"x"),
            },
        }
    }

    #[test]
    fn packs_are_recorded_once_and_checked_by_length() {
        let (_d, db) = db();
        db.with_conn_blocking(|c| -> Result<(), BackupError> {
            let p = PackId::from_bytes([7; 32]);
            assert!(record_pack(c, "till-1", &p, 42, 1)?);
            assert!(!record_pack(c, "till-1", &p, 42, 2)?);
            assert_eq!(pack_length(c, "till-1", &p)?, Some(42));
            assert_eq!(pack_length(c, "till-2", &p)?, None);
            let ok = header(1, vec![PackRef { id: p, length: 42 }]);
            assert_eq!(check_packs(c, &ok)?, (42, 42));
            let wrong = header(1, vec![PackRef { id: p, length: 41 }]);
            assert!(matches!(
                check_packs(c, &wrong),
                Err(BackupError::PackMissing { .. })
            ));
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn manifests_are_catalogued_in_order_and_packs_counted_new_once() {
        let (_d, db) = db();
        db.with_conn_blocking(|c| -> Result<(), BackupError> {
            let p = PackId::from_bytes([1; 32]);
            record_pack(c, "till-1", &p, 9, 1)?;
            let refs = vec![PackRef { id: p, length: 9 }];
            let h1 = header(1, refs.clone());
            insert_manifest(c, &h1, &record(&h1))?;
            assert_eq!(latest_header(c, "till-1")?, Some(h1.clone()));
            // The pack is no longer new for the next manifest.
            assert_eq!(check_packs(c, &header(2, refs.clone()))?, (9, 0));
            // A second #1, or a #3 before #2: refused, nothing changes.
            let mut again = header(1, refs.clone());
            again.body_length = 11;
            assert!(matches!(
                insert_manifest(c, &again, &record(&again)),
                Err(BackupError::SequenceConflict { sequence: 1, .. })
            ));
            let h3 = header(3, refs.clone());
            assert!(insert_manifest(c, &h3, &record(&h3)).is_err());
            // Readable back once a manifest references it, by its device only.
            assert_eq!(referenced_pack_length(c, "till-1", &p)?, Some(9));
            assert_eq!(referenced_pack_length(c, "till-2", &p)?, None);
            let unreferenced = PackId::from_bytes([2; 32]);
            record_pack(c, "till-1", &unreferenced, 5, 1)?;
            assert_eq!(referenced_pack_length(c, "till-1", &unreferenced)?, None);
            let h2 = header(2, refs);
            insert_manifest(c, &h2, &record(&h2))?;
            let all = list_manifests(c, None)?;
            assert_eq!(all.iter().map(|r| r.sequence).collect::<Vec<_>>(), [1, 2]);
            assert!(list_manifests(c, Some("till-2"))?.is_empty());
            let (rec, back) = show_manifest(c, "till-1", 2)?.unwrap();
            assert_eq!((rec, back), (record(&h2), h2));
            assert!(show_manifest(c, "till-1", 3)?.is_none());
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn store_keys_are_per_device() {
        let p = PackId::from_bytes([0xab; 32]);
        assert_eq!(
            pack_key("till-1", &p),
            format!("backups/till-1/packs/{}", "ab".repeat(32))
        );
        assert_eq!(
            manifest_key("till-1", 7),
            "backups/till-1/manifests/00000000000000000007"
        );
    }
}
