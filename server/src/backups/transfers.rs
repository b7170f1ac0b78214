//! Backup transfers through the server: a device's backup exported as ciphertext (what
//! `otter-keys backup reencrypt` reads), and a transfer (what it writes: another device's
//! backup re-encrypted with the fleet recovery key) imported for a device, checked without
//! any key, stored at `transfers/{device}/{transfer_id}/{path}` and catalogued in
//! `backup_transfers`; the device fetches it with signed requests and restores it with the
//! checks of `otter-agent restore --from-transfer`. A transfer is catalogued `importing`
//! before its objects are written and becomes `ready` (visible to the device) once all are;
//! a delete, or a failed import's clean-up, marks it `deleting` (hidden again), removes its
//! objects ([`remove_objects`]) and then its row, so an interrupted one can be repeated.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use object_store::ObjectStoreExt;
use otter_keys::envelope::SignedManifest;
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

/// Schema of the transfer catalog (database migration 14).
pub const SCHEMA: &str = r#"
-- Transfers imported for a device: files (a JSON array of [path, length]) are stored at
-- transfers/{device_id}/{transfer_id}/{path}. Migration 16 adds the state column.
CREATE TABLE backup_transfers (
    transfer_id        TEXT    PRIMARY KEY,
    device_id          TEXT    NOT NULL,
    source_device_id   TEXT    NOT NULL,
    source_public_key  TEXT    NOT NULL,
    files              TEXT    NOT NULL,
    manifests          INTEGER NOT NULL,
    packs              INTEGER NOT NULL,
    bytes              INTEGER NOT NULL,
    created_by         TEXT    NOT NULL,
    created_at         INTEGER NOT NULL,
    fetched_at         INTEGER
) STRICT;
CREATE INDEX backup_transfers_device ON backup_transfers (device_id, created_at);
"#;

/// Migration 16: a transfer's state (`importing` while its objects are written, `ready`
/// once they all are, `deleting` while they are removed). Rows from before are `ready`.
pub const STATE_SCHEMA: &str = "ALTER TABLE backup_transfers ADD COLUMN state TEXT NOT NULL \
     DEFAULT 'ready' CHECK (state IN ('importing', 'ready', 'deleting'));";

/// Most files a transfer may hold.
pub const MAX_TRANSFER_FILES: usize = 200_000;
/// Largest `transfer.json`.
const MAX_DESCRIPTION: u64 = 64 * 1024;

/// Why a transfer was refused or the catalog failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The upload is not a valid transfer (layout, description, manifests).
    #[error("not a valid backup transfer (the output of `otter-keys backup reencrypt`): {0}")]
    Invalid(String),
    /// Reading or unpacking the upload failed.
    #[error("unpacking the transfer failed: {0}")]
    Io(#[from] std::io::Error),
    /// The database failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored value could not be read back.
    #[error("the transfer catalog holds an unreadable value: {0}")]
    Corrupt(String),
    /// The transfer was deleted (or its import given up) while it was being imported.
    #[error("backup transfer {0} was deleted while it was being imported; import it again")]
    Withdrawn(String),
    /// Objects of a transfer could not be removed from the object store.
    #[error(
        "removing {failed} object(s) of backup transfer {transfer} failed (first: {first}); \
             repeat the DELETE once the object store works"
    )]
    Remove {
        /// The transfer.
        transfer: String,
        /// How many objects (or listings) failed.
        failed: usize,
        /// The first failure.
        first: String,
    },
}

fn invalid(m: impl Into<String>) -> TransferError {
    TransferError::Invalid(m.into())
}

/// `transfer.json`, as `otter-keys backup reencrypt` writes it (other fields are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct Description {
    /// Layout version, 1.
    pub format: u32,
    /// The device whose backup this is.
    pub device_id: String,
    /// Its ed25519 public key, hex: the manifests are signed with it.
    pub device_public_key: String,
}

/// What one file of a transfer is, by its path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Description,
    Manifest { device: String, sequence: u64 },
    Body { device: String, sequence: u64 },
    Pack,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn sequence_file(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
        .filter(|s| *s >= 1)
}

/// Classifies a path inside a transfer; `None` for anything outside the layout.
fn classify(path: &str) -> Option<Entry> {
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["transfer.json"] => Some(Entry::Description),
        ["manifests", device, file] if otter_keys::request::check_device_id(device).is_ok() => {
            sequence_file(file, ".manifest").map(|sequence| Entry::Manifest {
                device: (*device).to_owned(),
                sequence,
            })
        }
        ["reencrypted", device, file] if otter_keys::request::check_device_id(device).is_ok() => {
            sequence_file(file, ".body").map(|sequence| Entry::Body {
                device: (*device).to_owned(),
                sequence,
            })
        }
        ["packs", prefix, id] if is_hex(prefix, 2) && is_hex(id, 64) && id.starts_with(prefix) => {
            Some(Entry::Pack)
        }
        _ => None,
    }
}

/// A transfer unpacked into a private directory and checked without any key.
#[derive(Debug)]
pub struct Unpacked {
    /// The directory (removed on drop).
    pub dir: tempfile::TempDir,
    /// Its description.
    pub description: Description,
    /// Every file: path inside the transfer and length.
    pub files: Vec<(String, u64)>,
    /// Manifests in it.
    pub manifests: usize,
    /// Packs in it.
    pub packs: usize,
}

impl Unpacked {
    /// The file of `path` (one of [`Unpacked::files`]).
    pub fn file(&self, path: &str) -> PathBuf {
        self.dir.path().join(path)
    }

    /// Bytes of all files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|(_, n)| n).sum()
    }
}

/// Unpacks the tar at `tar_file` into a new private directory under `work`, refusing
/// anything but the transfer layout (`transfer.json`, `manifests/DEVICE/SEQ.manifest`,
/// `reencrypted/DEVICE/SEQ.body`, `packs/AB/ABCD…`: regular files only, no duplicates), then
/// checks it without a key: one device throughout, the one `transfer.json` names; every
/// manifest is that device's, under its own sequence, signed with the key `transfer.json`
/// names, with its re-encrypted body, and every pack its header names is present.
pub fn unpack_checked(
    tar_file: &Path,
    work: &Path,
    max_manifest_bytes: usize,
) -> Result<Unpacked, TransferError> {
    crate::store::create_dir_private(work)?;
    let dir = tempfile::Builder::new()
        .prefix("transfer-")
        .tempdir_in(work)?;
    let mut archive = tar::Archive::new(std::fs::File::open(tar_file)?);
    let mut files: BTreeMap<String, (Entry, u64)> = BTreeMap::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        let raw = entry.path_bytes().into_owned();
        let path = std::str::from_utf8(&raw)
            .map_err(|_| invalid("a file name is not UTF-8"))?
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            return Err(invalid(format!("{path:?} is not a regular file")));
        }
        let what = classify(&path).ok_or_else(|| {
            invalid(format!(
                "{:?} is not part of a transfer's layout",
                path.chars().take(120).collect::<String>()
            ))
        })?;
        if files.len() >= MAX_TRANSFER_FILES {
            return Err(invalid(format!("more than {MAX_TRANSFER_FILES} files")));
        }
        if what == Entry::Description && entry.size() > MAX_DESCRIPTION {
            return Err(invalid("transfer.json is too large"));
        }
        let target = dir.path().join(&path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => invalid(format!("{path:?} appears twice")),
                _ => TransferError::Io(e),
            })?;
        let length = std::io::copy(&mut entry, &mut out)?;
        out.sync_all()?;
        files.insert(path, (what, length));
    }
    let text = std::fs::read(dir.path().join("transfer.json"))
        .map_err(|_| invalid("transfer.json is missing"))?;
    let description: Description =
        serde_json::from_slice(&text).map_err(|e| invalid(format!("transfer.json: {e}")))?;
    if description.format != 1 {
        return Err(invalid(format!(
            "transfer.json: unknown format {}",
            description.format
        )));
    }
    let source = description.device_id.clone();
    otter_keys::request::check_device_id(&source)
        .map_err(|_| invalid("transfer.json: device_id is not a device id"))?;
    let key = otter_keys::request::parse_device_public_key(&description.device_public_key)
        .map_err(|_| invalid("transfer.json: device_public_key is not an ed25519 key"))?;
    let mut manifests = BTreeSet::new();
    let mut bodies = BTreeSet::new();
    let mut packs = BTreeSet::new();
    for (path, (what, _)) in &files {
        match what {
            Entry::Manifest { device, sequence } | Entry::Body { device, sequence }
                if device != &source =>
            {
                return Err(invalid(format!(
                    "{path} is of device {device}, but transfer.json names {source} (#{sequence})"
                )));
            }
            Entry::Manifest { sequence, .. } => {
                manifests.insert(*sequence);
            }
            Entry::Body { sequence, .. } => {
                bodies.insert(*sequence);
            }
            Entry::Pack => {
                packs.insert(path.rsplit('/').next().unwrap_or_default().to_owned());
            }
            Entry::Description => {}
        }
    }
    if manifests.is_empty() {
        return Err(invalid("it holds no manifest"));
    }
    if manifests != bodies {
        return Err(invalid(
            "the manifests and the re-encrypted bodies do not match one to one",
        ));
    }
    for seq in &manifests {
        let path = format!("manifests/{source}/{seq:020}.manifest");
        let bytes = std::fs::read(dir.path().join(&path))?;
        let m = SignedManifest::from_bytes(&bytes, max_manifest_bytes)
            .map_err(|e| invalid(format!("{path}: {e}")))?;
        if m.header.device_id != source || m.header.sequence != *seq {
            return Err(invalid(format!(
                "{path} holds manifest #{} of device {}",
                m.header.sequence, m.header.device_id
            )));
        }
        m.verify_signature(&key).map_err(|e| {
            invalid(format!(
                "{path} is not signed by the key transfer.json names: {e}"
            ))
        })?;
        if let Some(p) = m
            .header
            .packs
            .iter()
            .find(|p| !packs.contains(&p.id.to_string()))
        {
            return Err(invalid(format!("pack {} of {path} is missing", p.id)));
        }
    }
    Ok(Unpacked {
        dir,
        description,
        files: files.into_iter().map(|(p, (_, n))| (p, n)).collect(),
        manifests: manifests.len(),
        packs: packs.len(),
    })
}

/// The store key of a transfer's file.
pub fn object_key(device_id: &str, transfer_id: &str, path: &str) -> String {
    format!("transfers/{device_id}/{transfer_id}/{path}")
}

/// A catalogued transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransferRecord {
    /// Its id (32 hex digits).
    pub id: String,
    /// The device it is for.
    pub device_id: String,
    /// The device whose backup it is.
    pub source_device_id: String,
    /// That device's public key, which signed the manifests.
    pub source_public_key: String,
    /// Manifests in it.
    pub manifests: u64,
    /// Packs in it.
    pub packs: u64,
    /// Bytes of all its files.
    pub bytes: u64,
    /// Who imported it (audit actor).
    pub created_by: String,
    /// When, Unix seconds.
    pub created_at: i64,
    /// When the device first fetched it.
    pub fetched_at: Option<i64>,
    /// Where it is in its life; only `ready` ones are shown to the device.
    pub state: TransferState,
    /// Its files: path and length.
    #[serde(skip)]
    pub files: Vec<(String, u64)>,
}

/// Where a transfer is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferState {
    /// Its objects are being written (or an import was cut off by a crash): hidden from
    /// the device; a `DELETE` removes what was written.
    Importing,
    /// Stored and catalogued: the device may fetch it.
    Ready,
    /// Being removed, by a delete or a failed import's clean-up that has not finished:
    /// hidden from the device; repeating the `DELETE` finishes it.
    Deleting,
}

impl TransferState {
    /// The value in the `state` column.
    pub fn as_str(self) -> &'static str {
        match self {
            TransferState::Importing => "importing",
            TransferState::Ready => "ready",
            TransferState::Deleting => "deleting",
        }
    }

    fn parse(s: &str) -> Option<TransferState> {
        [
            TransferState::Importing,
            TransferState::Ready,
            TransferState::Deleting,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

const COLUMNS: &str = "transfer_id, device_id, source_device_id, source_public_key, files, \
                       manifests, packs, bytes, created_by, created_at, fetched_at, state";

fn row(r: &rusqlite::Row) -> rusqlite::Result<(TransferRecord, String)> {
    let state: String = r.get(11)?;
    let state = TransferState::parse(&state).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            11,
            rusqlite::types::Type::Text,
            format!("unknown transfer state {state:?}").into(),
        )
    })?;
    Ok((
        TransferRecord {
            id: r.get(0)?,
            device_id: r.get(1)?,
            source_device_id: r.get(2)?,
            source_public_key: r.get(3)?,
            files: Vec::new(),
            manifests: r.get::<_, i64>(5)?.try_into().unwrap_or(0),
            packs: r.get::<_, i64>(6)?.try_into().unwrap_or(0),
            bytes: r.get::<_, i64>(7)?.try_into().unwrap_or(0),
            created_by: r.get(8)?,
            created_at: r.get(9)?,
            fetched_at: r.get(10)?,
            state,
        },
        r.get(4)?,
    ))
}

fn finish((mut t, files): (TransferRecord, String)) -> Result<TransferRecord, TransferError> {
    t.files = serde_json::from_str(&files)
        .map_err(|e| TransferError::Corrupt(format!("transfer {}: files: {e}", t.id)))?;
    Ok(t)
}

/// Catalogues a transfer about to be stored, as `importing` (hidden from the device), before
/// its first object is written: whatever an interrupted import leaves in the store is named
/// by a row a `DELETE` can clean up. Audited once ready ([`mark_ready`]).
pub fn insert_importing(conn: &Connection, t: &TransferRecord) -> Result<(), TransferError> {
    let files =
        serde_json::to_string(&t.files).map_err(|e| TransferError::Corrupt(e.to_string()))?;
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    conn.execute(
        &format!(
            "INSERT INTO backup_transfers ({COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, NULL, 'importing')"
        ),
        rusqlite::params![
            t.id,
            t.device_id,
            t.source_device_id,
            t.source_public_key,
            files,
            n(t.manifests),
            n(t.packs),
            n(t.bytes),
            t.created_by,
            t.created_at
        ],
    )?;
    Ok(())
}

/// Makes an `importing` transfer whose objects are all stored `ready` (the device sees it
/// from now on) and audits the import (`backup.transfer_import`), in one transaction.
/// [`TransferError::Withdrawn`] when it is no longer `importing` (deleted meanwhile).
pub fn mark_ready(
    conn: &mut Connection,
    actor: &crate::audit::Actor,
    t: &TransferRecord,
    now: i64,
) -> Result<(), TransferError> {
    let tx = conn.transaction()?;
    let changed = tx.execute(
        "UPDATE backup_transfers SET state = 'ready'
         WHERE transfer_id = ?1 AND state = 'importing'",
        [&t.id],
    )?;
    if changed != 1 {
        return Err(TransferError::Withdrawn(t.id.clone()));
    }
    audit(
        &tx,
        actor,
        "backup.transfer_import",
        &t.device_id,
        &serde_json::json!({
            "transfer": t.id,
            "source_device": t.source_device_id,
            "source_public_key": t.source_public_key,
            "manifests": t.manifests,
            "packs": t.packs,
            "bytes": t.bytes,
        }),
        now,
    )?;
    tx.commit()?;
    Ok(())
}

/// Starts deleting transfer `id` of `device_id`, whatever its state: marks it `deleting`
/// (the device no longer sees it) and audits `backup.transfer_delete`, in one transaction.
/// `None` when there is no such transfer. Then remove its objects ([`remove_objects`]) and
/// its row ([`forget`]); a delete cut off in between is finished by calling this again.
pub fn begin_delete(
    conn: &mut Connection,
    actor: &crate::audit::Actor,
    device_id: &str,
    id: &str,
    now: i64,
) -> Result<Option<TransferRecord>, TransferError> {
    let tx = conn.transaction()?;
    let Some(mut t) = find(&tx, device_id, id)? else {
        return Ok(None);
    };
    tx.execute(
        "UPDATE backup_transfers SET state = 'deleting' WHERE transfer_id = ?1",
        [&t.id],
    )?;
    audit(
        &tx,
        actor,
        "backup.transfer_delete",
        device_id,
        &serde_json::json!({
            "transfer": t.id,
            "source_device": t.source_device_id,
            "state": t.state.as_str(),
            "manifests": t.manifests,
            "packs": t.packs,
            "bytes": t.bytes,
        }),
        now,
    )?;
    tx.commit()?;
    t.state = TransferState::Deleting;
    Ok(Some(t))
}

/// Marks a transfer whose import failed `deleting` (not audited: nothing was imported), so
/// that its remaining objects are listed and a `DELETE` removes them.
pub fn abandon(conn: &Connection, id: &str) -> Result<(), TransferError> {
    conn.execute(
        "UPDATE backup_transfers SET state = 'deleting' WHERE transfer_id = ?1",
        [id],
    )?;
    Ok(())
}

/// Removes the row of a transfer that is not `ready` (its objects are gone); whether there
/// was one.
pub fn forget(conn: &Connection, id: &str) -> Result<bool, TransferError> {
    Ok(conn.execute(
        "DELETE FROM backup_transfers WHERE transfer_id = ?1 AND state <> 'ready'",
        [id],
    )? == 1)
}

/// Deletes every object of transfer `transfer_id` of `device_id` from the store: its
/// catalogued `files` (one already gone is fine), then anything else the store lists under
/// its prefix `transfers/DEVICE/ID/`, and, in a local store, that directory (empty
/// directories and unfinished uploads). Failures are logged and reported together:
/// [`TransferError::Remove`]; calling it again retries.
pub async fn remove_objects(
    store: &crate::store::Store,
    device_id: &str,
    transfer_id: &str,
    files: &[(String, u64)],
) -> Result<(), TransferError> {
    use futures_util::StreamExt;
    let prefix = format!("transfers/{device_id}/{transfer_id}");
    let mut keys: BTreeSet<String> = files
        .iter()
        .map(|(p, _)| object_key(device_id, transfer_id, p))
        .collect();
    let mut failures: Vec<String> = Vec::new();
    match crate::store::object_path(&prefix) {
        Ok(path) => {
            let mut listed = store.inner().list(Some(&path));
            while let Some(item) = listed.next().await {
                match item {
                    Ok(meta) => {
                        keys.insert(meta.location.to_string());
                    }
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => {
                        failures.push(format!("listing {prefix}/: {e}"));
                        break;
                    }
                }
            }
        }
        Err(e) => failures.push(e.to_string()),
    }
    let delete = |key: String| async move {
        let path = crate::store::object_path(&key).map_err(|e| (key.clone(), e.to_string()))?;
        match store.inner().delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err((key.clone(), format!("deleting {key}: {e}"))),
        }
    };
    let first: Vec<Result<(), (String, String)>> = futures_util::stream::iter(keys)
        .map(delete)
        .buffer_unordered(8)
        .collect()
        .await;
    // Failures get a second try, one at a time, after all the others: a transient error, or
    // an object whose path was blocked by another one removed meanwhile.
    for (key, _) in first.into_iter().filter_map(Result::err) {
        if let Err((_, e)) = delete(key).await {
            failures.push(e);
        }
    }
    if failures.is_empty() {
        if let Some(dir) = store.local_file(&prefix) {
            let removed =
                tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(format!("removing the directory {}: {e}", dir.display()))
                    }
                    _ => Ok(()),
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            if let Err(e) = removed {
                failures.push(e);
            }
        }
    }
    for f in &failures {
        tracing::warn!(
            device = device_id,
            transfer = transfer_id,
            error = f.as_str(),
            "removing an object of a backup transfer failed"
        );
    }
    match failures.first() {
        None => Ok(()),
        Some(first) => Err(TransferError::Remove {
            transfer: transfer_id.to_owned(),
            failed: failures.len(),
            first: first.clone(),
        }),
    }
}

/// Appends an audit entry about `device`'s backups.
pub fn audit(
    conn: &Connection,
    actor: &crate::audit::Actor,
    action: &str,
    device: &str,
    details: &serde_json::Value,
    now: i64,
) -> Result<(), TransferError> {
    crate::audit::append(
        conn,
        actor,
        action,
        &format!("device:{device}"),
        details,
        now,
    )
    .map(|_| ())
    .map_err(|e| match e {
        crate::audit::AuditError::Sqlite(e) => TransferError::Sqlite(e),
        other => TransferError::Corrupt(other.to_string()),
    })
}

/// A device's `ready` transfers (those it may fetch), newest first.
pub fn list(conn: &Connection, device_id: &str) -> Result<Vec<TransferRecord>, TransferError> {
    list_where(conn, device_id, true)
}

/// All of a device's transfers, also those being imported or deleted, newest first.
pub fn list_all(conn: &Connection, device_id: &str) -> Result<Vec<TransferRecord>, TransferError> {
    list_where(conn, device_id, false)
}

fn list_where(
    conn: &Connection,
    device_id: &str,
    ready_only: bool,
) -> Result<Vec<TransferRecord>, TransferError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM backup_transfers WHERE device_id = ?1
           AND (state = 'ready' OR NOT ?2)
         ORDER BY created_at DESC, rowid DESC"
    ))?;
    let rows = stmt.query_map(rusqlite::params![device_id, ready_only], row)?;
    rows.map(|r| finish(r?)).collect()
}

/// Transfers left `importing` or `deleting` by a server that stopped in the middle of an
/// import or a delete (when the server starts, none can be in flight), oldest first.
pub fn unfinished(conn: &Connection) -> Result<Vec<TransferRecord>, TransferError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM backup_transfers WHERE state <> 'ready'
         ORDER BY created_at, rowid"
    ))?;
    let rows = stmt.query_map([], row)?;
    rows.map(|r| finish(r?)).collect()
}

/// Why [`discard`] stopped short.
#[derive(Debug, thiserror::Error)]
pub enum DiscardError {
    /// Objects remain ([`TransferError::Remove`]): the transfer stays, marked `deleting`
    /// (hidden from devices), for a repeated delete or the next start to finish.
    #[error("{0}")]
    Objects(TransferError),
    /// The objects are gone; the catalog row could not be removed.
    #[error("removing the catalog row: {0}")]
    Catalog(TransferError),
    /// The same, the database being unreachable.
    #[error("removing the catalog row: {0}")]
    Db(crate::db::DbError),
}

/// Removes a transfer that is not `ready` (being deleted, or an import that failed or was
/// cut off): its objects ([`remove_objects`]), then its row ([`forget`]). When objects
/// remain it is marked `deleting` ([`abandon`]), so devices never see it.
pub async fn discard(
    db: &crate::db::Db,
    store: &crate::store::Store,
    t: &TransferRecord,
) -> Result<(), DiscardError> {
    let id = t.id.clone();
    if let Err(e) = remove_objects(store, &t.device_id, &t.id, &t.files).await {
        if !matches!(db.call(move |c| Ok(abandon(c, &id))).await, Ok(Ok(()))) {
            tracing::error!(
                device = t.device_id,
                transfer = t.id,
                "marking the backup transfer deleting failed too; it stays hidden from the \
                 device in the state it has"
            );
        }
        return Err(DiscardError::Objects(e));
    }
    match db.call(move |c| Ok(forget(c, &id))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(DiscardError::Catalog(e)),
        Err(e) => Err(DiscardError::Db(e)),
    }
}

/// Finishes what a stopped server left half-done (see [`unfinished`]): [`discard`]s each
/// such transfer; logged. A failure leaves it for the next start or a `DELETE`, hidden
/// from devices either way.
pub async fn sweep_unfinished(db: &crate::db::Db, store: &crate::store::Store) {
    let found = match db.call(|c| Ok(unfinished(c))).await {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot list unfinished backup transfers");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot list unfinished backup transfers");
            return;
        }
    };
    for t in found {
        tracing::warn!(
            device = t.device_id,
            transfer = t.id,
            state = t.state.as_str(),
            "a backup transfer import or delete was cut off when the server stopped; removing it"
        );
        match discard(db, store, &t).await {
            Ok(()) => tracing::info!(
                device = t.device_id,
                transfer = t.id,
                "the cut-off backup transfer is gone"
            ),
            Err(e) => tracing::error!(device = t.device_id, transfer = t.id, error = %e,
                "the cut-off backup transfer could not be removed; delete it once the store \
                 works"),
        }
    }
}

/// One of a device's `ready` transfers; `"latest"` is the newest.
pub fn get(
    conn: &Connection,
    device_id: &str,
    id: &str,
) -> Result<Option<TransferRecord>, TransferError> {
    if id == "latest" {
        return Ok(list(conn, device_id)?.into_iter().next());
    }
    Ok(find(conn, device_id, id)?.filter(|t| t.state == TransferState::Ready))
}

/// One of a device's transfers, in any state.
fn find(
    conn: &Connection,
    device_id: &str,
    id: &str,
) -> Result<Option<TransferRecord>, TransferError> {
    conn.query_row(
        &format!(
            "SELECT {COLUMNS} FROM backup_transfers WHERE device_id = ?1 AND transfer_id = ?2"
        ),
        [device_id, id],
        row,
    )
    .optional()?
    .map(finish)
    .transpose()
}

/// Records the device's fetch of a transfer (the first time sets `fetched_at`), audited.
pub fn record_fetch(
    conn: &mut Connection,
    t: &TransferRecord,
    now: i64,
) -> Result<(), TransferError> {
    let tx = conn.transaction()?;
    tx.execute(
        "UPDATE backup_transfers SET fetched_at = COALESCE(fetched_at, ?2) WHERE transfer_id = ?1",
        rusqlite::params![t.id, now],
    )?;
    audit(
        &tx,
        &crate::audit::Actor::device(&t.device_id),
        "backup.transfer_fetch",
        &t.device_id,
        &serde_json::json!({ "transfer": t.id, "source_device": t.source_device_id }),
        now,
    )?;
    tx.commit()?;
    Ok(())
}

/// The files of a device's exported backup: `(path in the export, store key, length)`, the
/// layout of `DATA_DIR/store/backups/DEVICE` (`manifests/SEQ`, `packs/ID`): every catalogued
/// manifest and every catalogued pack (not those being collected).
pub fn export_files(
    conn: &Connection,
    device_id: &str,
) -> Result<Vec<(String, String, u64)>, TransferError> {
    let mut out = Vec::new();
    let mut stmt = conn.prepare(
        "SELECT sequence, manifest_length FROM backup_manifests WHERE device_id = ?1
         ORDER BY sequence",
    )?;
    let rows = stmt.query_map([device_id], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
    })?;
    for r in rows {
        let (seq, len) = r?;
        let seq = u64::try_from(seq).map_err(|_| TransferError::Corrupt("sequence".into()))?;
        out.push((
            format!("manifests/{seq:020}"),
            super::manifest_key(device_id, seq),
            u64::try_from(len).unwrap_or(0),
        ));
    }
    let mut stmt = conn.prepare(
        "SELECT pack_id, length FROM backup_packs p WHERE device_id = ?1 AND NOT EXISTS
           (SELECT 1 FROM backup_pack_tombstones t
            WHERE t.device_id = p.device_id AND t.pack_id = p.pack_id)
         ORDER BY pack_id",
    )?;
    let rows = stmt.query_map([device_id], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })?;
    for r in rows {
        let (id, len) = r?;
        out.push((
            format!("packs/{id}"),
            format!("backups/{device_id}/packs/{id}"),
            u64::try_from(len).unwrap_or(0),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry of a test tar: raw name, entry type, data.
    type RawEntry<'a> = (&'a [u8], tar::EntryType, &'a [u8]);

    /// A tar of `entries`.
    fn tar_of(entries: &[RawEntry]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut b = tar::Builder::new(f.reopen().unwrap());
        for (name, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.finish().unwrap();
        f
    }

    #[test]
    fn hostile_or_incomplete_uploads_are_refused_and_nothing_escapes() {
        let work = tempfile::tempdir().unwrap();
        let dev = "0123456789abcdef0123456789abcdef";
        let desc = format!(
            "{{\"format\":1,\"device_id\":\"{dev}\",\"device_public_key\":\"{}\"}}",
            hex::encode(otter_keys::crypto::SigningKey::from_seed(&[3; 32]).public_bytes())
        );
        let cases: Vec<(Vec<RawEntry>, &str)> = vec![
            (
                vec![(b"../escaped", tar::EntryType::Regular, b"x")],
                "not part of a transfer",
            ),
            (
                vec![(b"transfer.json", tar::EntryType::Symlink, b"")],
                "not a regular file",
            ),
            (
                vec![(b"transfer.json", tar::EntryType::Regular, desc.as_bytes())],
                "no manifest",
            ),
            (
                vec![
                    (b"transfer.json", tar::EntryType::Regular, desc.as_bytes()),
                    (b"transfer.json", tar::EntryType::Regular, desc.as_bytes()),
                ],
                "twice",
            ),
            (
                vec![(b"transfer.json", tar::EntryType::Regular, b"{}")],
                "transfer.json",
            ),
        ];
        for (entries, expected) in cases {
            let tar = tar_of(&entries);
            let err = unpack_checked(tar.path(), work.path(), 1 << 20).unwrap_err();
            assert!(err.to_string().contains(expected), "{expected}: {err}");
        }
        assert!(!work.path().parent().unwrap().join("escaped").exists());
        // Every unpacking directory is gone again.
        assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);
    }

    fn record(id: &str, created_at: i64) -> TransferRecord {
        TransferRecord {
            id: id.into(),
            device_id: "new".into(),
            source_device_id: "dead".into(),
            source_public_key: "ab".repeat(32),
            manifests: 1,
            packs: 2,
            bytes: 30,
            created_by: "token:1".into(),
            created_at,
            fetched_at: None,
            state: TransferState::Importing,
            files: vec![("transfer.json".into(), 10), ("packs/ab/x".into(), 20)],
        }
    }

    fn actions(c: &Connection) -> Vec<String> {
        let mut stmt = c
            .prepare("SELECT action FROM audit_log ORDER BY seq")
            .unwrap();
        let rows = stmt.query_map([], |r| r.get(0)).unwrap();
        rows.map(Result::unwrap).collect()
    }

    #[test]
    fn only_ready_transfers_reach_the_device_and_a_delete_can_be_repeated() {
        let mut c = Connection::open_in_memory().unwrap();
        for m in crate::db::MIGRATIONS {
            c.execute_batch(m.sql).unwrap();
        }
        let admin = crate::audit::Actor::token(1);
        let (a, b) = (
            record("a".repeat(32).as_str(), 10),
            record(&"b".repeat(32), 20),
        );
        insert_importing(&c, &a).unwrap();
        insert_importing(&c, &b).unwrap();
        // Being imported: listed for admins only, never fetched, not audited yet.
        assert!(list(&c, "new").unwrap().is_empty());
        assert_eq!(list_all(&c, "new").unwrap().len(), 2);
        assert_eq!(get(&c, "new", "latest").unwrap(), None);
        assert_eq!(get(&c, "new", &a.id).unwrap(), None);
        assert!(actions(&c).is_empty());
        mark_ready(&mut c, &admin, &a, 30).unwrap();
        let ready = get(&c, "new", "latest").unwrap().unwrap();
        assert_eq!(
            (ready.id.as_str(), ready.state),
            (a.id.as_str(), TransferState::Ready)
        );
        assert_eq!(ready.files, a.files);
        assert_eq!(actions(&c), ["backup.transfer_import"]);

        // Deleting: hidden from the device at once, audited; a second call (an interrupted
        // delete repeated) finds it again; once forgotten it is unknown.
        let d = begin_delete(&mut c, &admin, "new", &a.id, 40)
            .unwrap()
            .unwrap();
        assert_eq!(d.state, TransferState::Deleting);
        assert_eq!(get(&c, "new", &a.id).unwrap(), None);
        assert!(list(&c, "new").unwrap().is_empty());
        assert_eq!(
            begin_delete(&mut c, &admin, "other", &a.id, 41).unwrap(),
            None
        );
        assert!(begin_delete(&mut c, &admin, "new", &a.id, 42)
            .unwrap()
            .is_some());
        assert!(forget(&c, &a.id).unwrap());
        assert_eq!(
            begin_delete(&mut c, &admin, "new", &a.id, 43).unwrap(),
            None
        );
        assert_eq!(
            actions(&c),
            [
                "backup.transfer_import",
                "backup.transfer_delete",
                "backup.transfer_delete"
            ]
        );
        // A ready transfer's row is never forgotten without a delete; one deleted while it
        // was imported cannot become ready.
        insert_importing(&c, &a).unwrap();
        mark_ready(&mut c, &admin, &a, 50).unwrap();
        assert!(!forget(&c, &a.id).unwrap());
        abandon(&c, &b.id).unwrap();
        assert!(matches!(
            mark_ready(&mut c, &admin, &b, 60),
            Err(TransferError::Withdrawn(_))
        ));
        let states: Vec<_> = list_all(&c, "new")
            .unwrap()
            .into_iter()
            .map(|t| (t.id, t.state))
            .collect();
        assert_eq!(
            states,
            [
                (b.id.clone(), TransferState::Deleting),
                (a.id.clone(), TransferState::Ready)
            ]
        );
    }

    #[test]
    fn only_the_transfer_layout_is_accepted() {
        let dev = "0123456789abcdef0123456789abcdef";
        let id = "ab".to_owned() + &"0".repeat(62);
        assert_eq!(classify("transfer.json"), Some(Entry::Description));
        assert_eq!(
            classify(&format!("manifests/{dev}/00000000000000000002.manifest")),
            Some(Entry::Manifest {
                device: dev.into(),
                sequence: 2
            })
        );
        assert_eq!(
            classify(&format!("reencrypted/{dev}/00000000000000000001.body")),
            Some(Entry::Body {
                device: dev.into(),
                sequence: 1
            })
        );
        assert_eq!(classify(&format!("packs/ab/{id}")), Some(Entry::Pack));
        for bad in [
            "../transfer.json".to_owned(),
            "/etc/passwd".to_owned(),
            format!("packs/cd/{id}"),
            format!("packs/ab/{id}/x"),
            format!("manifests/{dev}/../../x.manifest"),
            format!("manifests/{dev}/00000000000000000000.manifest"),
            format!("manifests/{dev}/1.manifest"),
            "manifests/../00000000000000000001.manifest".to_owned(),
            format!("reencrypted/{dev}/00000000000000000001.manifest"),
            "transfer.json/x".to_owned(),
        ] {
            assert_eq!(classify(&bad), None, "{bad}");
        }
    }
}
