//! `verify`: checks the backup catalog against the object store without any key that
//! decrypts. For each device: the chain of all its manifests, kept and pruned, link by link
//! (sequence, previous hash, time) and the server's countersignature of each; for each kept
//! manifest, the stored manifest (the catalogued header, the device's signature, the body's
//! length and hash) and every pack it references (catalogued with the signed length, stored
//! with that size and a SHA-256 of the ciphertext equal to the pack id, re-hashed from the
//! store as a stream). The result of each kept manifest is recorded in
//! `backup_verifications` for the console.
//!
//! A pruned manifest is trusted through the chain: the next manifest's signed `previous`
//! commits to its header hash, and the catalog keeps its header and countersignature.

use std::collections::{BTreeMap, HashMap};

use futures_util::StreamExt;
use object_store::ObjectStoreExt;
use otter_keys::crypto::PublicKey;
use otter_keys::envelope::{Countersignature, ManifestHeader, PackId, SignedManifest};
use rusqlite::Connection;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{manifest_key, pack_key, BackupError};
use crate::db::{Db, DbError};
use crate::store::Store;

/// Why verification could not run at all (a problem found in a backup is not an error: it
/// is in the report).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The catalog failed.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// The database failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database handle failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// `--device` names a device without backups.
    #[error("device {0:?} has no backups in the catalog (see `otter-server backups list`)")]
    UnknownDevice(String),
}

/// One thing wrong with a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The device.
    pub device_id: String,
    /// The backup, when the problem is one backup's.
    pub sequence: Option<u64>,
    /// The pack, when the problem is a pack's.
    pub pack: Option<String>,
    /// What is wrong and what it means.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "device {}", self.device_id)?;
        if let Some(s) = self.sequence {
            write!(f, " backup #{s}")?;
        }
        if let Some(p) = &self.pack {
            write!(f, " pack {}", p.get(..16).unwrap_or(p))?;
        }
        write!(f, ": {}", self.message)
    }
}

/// What a verification found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// No problem found.
    pub ok: bool,
    /// Devices checked.
    pub devices: u64,
    /// Kept manifests checked in full.
    pub manifests: u64,
    /// Pruned manifests checked as chain links.
    pub pruned_links: u64,
    /// Distinct packs re-hashed.
    pub packs: u64,
    /// Bytes read from the store and hashed.
    pub bytes_hashed: u64,
    /// Everything wrong, in chain order.
    pub problems: Vec<Problem>,
    /// When it ran, Unix seconds.
    pub verified_at: i64,
}

/// The last recorded verification of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerificationRecord {
    /// The device.
    pub device_id: String,
    /// The backup.
    pub sequence: u64,
    /// When, Unix seconds.
    pub verified_at: i64,
    /// Whether it verified.
    pub ok: bool,
    /// What was wrong.
    pub problems: Vec<String>,
}

/// One manifest of a chain as the catalog holds it.
struct Link {
    sequence: u64,
    header_hash: String,
    header: Vec<u8>,
    countersignature: String,
    pruned: bool,
}

/// A device's chain, its key and its catalogued packs.
struct DeviceRows {
    device_id: String,
    public_key: Option<PublicKey>,
    links: Vec<Link>,
    packs: HashMap<String, u64>,
}

fn load(conn: &Connection, device: Option<&str>) -> Result<Vec<DeviceRows>, VerifyError> {
    let mut stmt = conn.prepare(
        "SELECT DISTINCT device_id FROM backup_manifests WHERE ?1 IS NULL OR device_id = ?1
         ORDER BY 1",
    )?;
    let ids = stmt
        .query_map([device], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    if let (Some(d), true) = (device, ids.is_empty()) {
        return Err(VerifyError::UnknownDevice(d.chars().take(64).collect()));
    }
    let mut out = Vec::new();
    for device_id in ids {
        let public_key = crate::fleet::device_key(conn, &device_id)
            .ok()
            .flatten()
            .map(|k| k.public_key);
        let mut links = Vec::new();
        for (table, pruned) in [
            ("backup_manifests", false),
            ("backup_pruned_manifests", true),
        ] {
            let sql = format!(
                "SELECT sequence, header_hash, header, countersignature FROM {table}
                 WHERE device_id = ?1"
            );
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map([&device_id], |r| {
                Ok(Link {
                    sequence: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                    header_hash: r.get(1)?,
                    header: r.get(2)?,
                    countersignature: r.get(3)?,
                    pruned,
                })
            })?;
            for l in rows {
                links.push(l?);
            }
        }
        links.sort_by_key(|l| l.sequence);
        let mut stmt =
            conn.prepare("SELECT pack_id, length FROM backup_packs WHERE device_id = ?1")?;
        let packs = stmt
            .query_map([&device_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                ))
            })?
            .collect::<Result<HashMap<_, _>, _>>()?;
        out.push(DeviceRows {
            device_id,
            public_key,
            links,
            packs,
        });
    }
    Ok(out)
}

/// Streams a stored pack: its size and SHA-256, `None` when it is not in the store.
async fn hash_object(store: &Store, key: &str) -> Result<Option<(u64, [u8; 32])>, String> {
    let path = crate::store::object_path(key).map_err(|e| e.to_string())?;
    let got = match store.inner().get(&path).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(format!("reading {key} from the object store: {e}")),
    };
    let mut stream = got.into_stream();
    let (mut h, mut size) = (Sha256::new(), 0u64);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("reading {key} from the object store: {e}"))?;
        size += chunk.len() as u64;
        h.update(&chunk);
    }
    Ok(Some((size, h.finalize().into())))
}

/// What was found for one pack (cached: incremental backups share packs).
#[derive(Clone)]
enum PackState {
    Good,
    Bad(String),
}

/// Verifies the catalog (one device's when `device` is given) and records the results.
pub async fn verify(
    db: &Db,
    store: &Store,
    receipt_public: &PublicKey,
    device: Option<&str>,
    now: i64,
) -> Result<VerifyReport, VerifyError> {
    let d = device.map(str::to_owned);
    let devices = db.call(move |c| Ok(load(c, d.as_deref()))).await??;
    let mut report = VerifyReport {
        ok: true,
        devices: devices.len() as u64,
        manifests: 0,
        pruned_links: 0,
        packs: 0,
        bytes_hashed: 0,
        problems: Vec::new(),
        verified_at: now,
    };
    // (device, sequence) -> problems, for every kept manifest.
    let mut results: BTreeMap<(String, u64), Vec<String>> = BTreeMap::new();
    for dev in &devices {
        verify_device(store, receipt_public, dev, &mut report, &mut results).await;
    }
    report.ok = report.problems.is_empty();
    db.call(move |c| Ok(record(c, &results, now))).await??;
    Ok(report)
}

async fn verify_device(
    store: &Store,
    receipt_public: &PublicKey,
    dev: &DeviceRows,
    report: &mut VerifyReport,
    results: &mut BTreeMap<(String, u64), Vec<String>>,
) {
    let id = &dev.device_id;
    for l in dev.links.iter().filter(|l| !l.pruned) {
        results.insert((id.clone(), l.sequence), Vec::new());
    }
    let mut problem =
        |report: &mut VerifyReport, seq: Option<u64>, pack: Option<String>, m: String| {
            if let Some(s) = seq {
                if let Some(list) = results.get_mut(&(id.clone(), s)) {
                    list.push(match &pack {
                        Some(p) => format!("pack {p}: {m}"),
                        None => m.clone(),
                    });
                }
            }
            report.problems.push(Problem {
                device_id: id.clone(),
                sequence: seq,
                pack,
                message: m,
            });
        };
    let mut packs_seen: HashMap<String, PackState> = HashMap::new();
    let mut previous: Option<ManifestHeader> = None;
    let mut expected_seq = 1u64;
    for link in &dev.links {
        let seq = link.sequence;
        if seq != expected_seq {
            problem(
                report,
                Some(seq),
                None,
                format!(
                    "manifests #{expected_seq} to #{} are neither catalogued nor recorded as \
                     pruned: they were deleted outside Otter, and the chain cannot be checked \
                     across the gap",
                    seq.saturating_sub(1)
                ),
            );
            previous = None;
        }
        expected_seq = seq.saturating_add(1);
        if link.pruned {
            report.pruned_links += 1;
        } else {
            report.manifests += 1;
        }
        let header: ManifestHeader = match serde_json::from_slice(&link.header) {
            Ok(h) => h,
            Err(e) => {
                problem(
                    report,
                    Some(seq),
                    None,
                    format!("the catalogued header does not parse: {e}"),
                );
                previous = None;
                continue;
            }
        };
        match header.hash() {
            Ok(h) if h == link.header_hash => {}
            _ => problem(
                report,
                Some(seq),
                None,
                "the catalogued header does not hash to its catalogued header hash (the catalog was edited)".into(),
            ),
        }
        if previous.is_some() || seq == 1 {
            if let Err(e) = header.check_follows(previous.as_ref()) {
                problem(report, Some(seq), None, format!("chain: {e}"));
            }
        }
        // The countersignature covers only the header hash: check it on the header alone.
        match serde_json::from_str::<Countersignature>(&link.countersignature) {
            Ok(cs) => {
                let probe = SignedManifest {
                    header: header.clone(),
                    signature: cs.signature.clone(),
                    body_ciphertext: Vec::new(),
                };
                if let Err(e) = probe.verify_countersignature(receipt_public, &cs) {
                    problem(report, Some(seq), None, format!("countersignature: {e}"));
                }
            }
            Err(e) => problem(
                report,
                Some(seq),
                None,
                format!("the catalogued countersignature does not parse: {e}"),
            ),
        }
        if !link.pruned {
            check_stored_manifest(store, dev, seq, &header, report, &mut problem).await;
            for p in &header.packs {
                let pack = p.id.to_string();
                let state = match packs_seen.get(&pack) {
                    Some(s) => s.clone(),
                    None => {
                        let s = check_pack(store, dev, &p.id, p.length, report).await;
                        packs_seen.insert(pack.clone(), s.clone());
                        s
                    }
                };
                if let PackState::Bad(m) = state {
                    problem(report, Some(seq), Some(pack), m);
                }
            }
        }
        previous = Some(header);
    }
}

async fn check_stored_manifest(
    store: &Store,
    dev: &DeviceRows,
    seq: u64,
    header: &ManifestHeader,
    report: &mut VerifyReport,
    problem: &mut impl FnMut(&mut VerifyReport, Option<u64>, Option<String>, String),
) {
    let key = manifest_key(&dev.device_id, seq);
    let bytes = match store.get_bytes(&key).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            problem(
                report,
                Some(seq),
                None,
                format!("the manifest is missing from the object store ({key}): the backup cannot be restored"),
            );
            return;
        }
        Err(e) => {
            problem(
                report,
                Some(seq),
                None,
                format!("reading the manifest: {e}"),
            );
            return;
        }
    };
    report.bytes_hashed += bytes.len() as u64;
    let manifest = match SignedManifest::from_bytes(&bytes, bytes.len()) {
        Ok(m) => m,
        Err(e) => {
            problem(
                report,
                Some(seq),
                None,
                format!("the stored manifest ({key}) does not parse: {e}"),
            );
            return;
        }
    };
    if &manifest.header != header {
        problem(
            report,
            Some(seq),
            None,
            format!("the stored manifest ({key}) is not the one catalogued: its header differs"),
        );
    }
    match &dev.public_key {
        Some(k) => {
            if let Err(e) = manifest.verify_signature(k) {
                problem(report, Some(seq), None, format!("device signature: {e}"));
            }
        }
        None => problem(
            report,
            Some(seq),
            None,
            "the device is not enrolled (or its key is unreadable): its signature cannot be checked".into(),
        ),
    }
}

async fn check_pack(
    store: &Store,
    dev: &DeviceRows,
    pack: &PackId,
    length: u64,
    report: &mut VerifyReport,
) -> PackState {
    let id = pack.to_string();
    match dev.packs.get(&id) {
        None => {
            return PackState::Bad(
                "a backup needs this pack but the catalog does not list it".into(),
            )
        }
        Some(l) if *l != length => {
            return PackState::Bad(format!(
                "catalogued with {l} bytes, the signed manifest says {length}"
            ))
        }
        Some(_) => {}
    }
    report.packs += 1;
    let key = pack_key(&dev.device_id, pack);
    match hash_object(store, &key).await {
        Ok(None) => PackState::Bad(format!(
            "missing from the object store ({key}): the backups that need it cannot be restored"
        )),
        Ok(Some((size, digest))) => {
            report.bytes_hashed += size;
            if size != length {
                PackState::Bad(format!(
                    "the stored object ({key}) has {size} bytes, the signed manifest says {length}"
                ))
            } else if PackId::from_bytes(digest) != *pack {
                PackState::Bad(format!(
                    "the stored object ({key}) hashes to {}, not to its id: it is damaged",
                    hex::encode(digest)
                ))
            } else {
                PackState::Good
            }
        }
        Err(e) => PackState::Bad(e),
    }
}

fn record(
    conn: &mut Connection,
    results: &BTreeMap<(String, u64), Vec<String>>,
    now: i64,
) -> Result<(), VerifyError> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare(
            "INSERT INTO backup_verifications (device_id, sequence, verified_at, ok, problems)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (device_id, sequence) DO UPDATE SET verified_at = excluded.verified_at,
                 ok = excluded.ok, problems = excluded.problems",
        )?;
        for ((device, seq), problems) in results {
            let json = serde_json::to_string(problems)
                .map_err(|e| BackupError::Corrupt(format!("problems: {e}")))?;
            stmt.execute(rusqlite::params![
                device,
                i64::try_from(*seq).map_err(|_| BackupError::TooLarge("sequence"))?,
                now,
                problems.is_empty(),
                json
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// The last recorded verification of each catalogued backup (`device`'s only when given).
pub fn last_verifications(
    conn: &Connection,
    device: Option<&str>,
) -> Result<Vec<VerificationRecord>, VerifyError> {
    let mut stmt = conn.prepare(
        "SELECT device_id, sequence, verified_at, ok, problems FROM backup_verifications
         WHERE ?1 IS NULL OR device_id = ?1 ORDER BY device_id, sequence",
    )?;
    let rows = stmt.query_map([device], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, bool>(3)?,
            r.get::<_, String>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (device_id, seq, verified_at, ok, problems) = row?;
        out.push(VerificationRecord {
            device_id,
            sequence: u64::try_from(seq).unwrap_or(0),
            verified_at,
            ok,
            problems: serde_json::from_str(&problems)
                .map_err(|e| BackupError::Corrupt(format!("stored problems: {e}")))?,
        });
    }
    Ok(out)
}
