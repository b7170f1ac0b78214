//! Production repositories: the root is made and signed offline by `otter-keys init`; the
//! server gets the root metadata and the three online key files (targets, snapshot,
//! timestamp), still encrypted with their passphrase, which it needs at every start. The
//! root key never reaches the server, so it cannot re-sign the root: it warns when the root
//! nears expiry instead.
//!
//! The passphrase comes from a file (`key_passphrase_file`, `--passphrase-file`) or the
//! `OTTER_SERVER_KEY_PASSPHRASE` environment variable; never from a flag's value, which
//! other users could read from the process list.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use otter_keys::age::secrecy::SecretString;
use otter_keys::atomic::write_atomic;
use otter_keys::crypto::SigningKey;
use otter_keys::keyfile::{load_signing_key, KeyFileError};
use otter_keys::metadata::{MetadataError, Root, Targets, SPEC_VERSION};
use otter_keys::time::UtcTime;
use zeroize::Zeroizing;

use super::build::{self, Lifetimes, OnlineKeys, RepoState, SignedFile};
use super::RepoError;
use crate::config::Config;

/// The environment variable holding the online keys' passphrase.
pub const PASSPHRASE_ENV: &str = "OTTER_SERVER_KEY_PASSPHRASE";

/// The online roles, whose key files are `ROLE.key` (and `ROLE.pub.json`).
pub const ONLINE_ROLES: [&str; 3] = ["targets", "snapshot", "timestamp"];

/// The online keys' passphrase: the first line of `config.key_passphrase_file`, else
/// [`PASSPHRASE_ENV`]. An error says how to give it.
pub fn passphrase(config: &Config) -> Result<SecretString, RepoError> {
    if let Some(path) = &config.key_passphrase_file {
        let raw = Zeroizing::new(std::fs::read(path).map_err(|e| {
            RepoError::Setup(format!(
                "cannot read the key passphrase file {}: {e}",
                path.display()
            ))
        })?);
        let text = std::str::from_utf8(&raw).map_err(|_| {
            RepoError::Setup(format!(
                "the key passphrase file {} is not UTF-8",
                path.display()
            ))
        })?;
        let line = text.lines().next().unwrap_or("");
        if line.is_empty() {
            return Err(RepoError::Setup(format!(
                "the key passphrase file {} is empty",
                path.display()
            )));
        }
        return Ok(SecretString::from(line.to_owned()));
    }
    match std::env::var(PASSPHRASE_ENV) {
        Ok(v) if !v.is_empty() => Ok(SecretString::from(v)),
        _ => Err(RepoError::Setup(format!(
            "this is a production repository: its online keys need their passphrase; give \
             --passphrase-file FILE (or key_passphrase_file in the config) or set {PASSPHRASE_ENV}"
        ))),
    }
}

fn load_role_key(dir: &Path, role: &str, pass: &SecretString) -> Result<SigningKey, RepoError> {
    let path = dir.join(format!("{role}.key"));
    match load_signing_key(&path, pass) {
        Ok(k) => Ok(k.key),
        Err(KeyFileError::Io { source, .. }) => Err(RepoError::Setup(format!(
            "cannot read the {role} key {}: {source}",
            path.display()
        ))),
        Err(e) => Err(RepoError::Setup(format!(
            "cannot open the {role} key {}: {e} (wrong passphrase?)",
            path.display()
        ))),
    }
}

/// Opens `targets.key`, `snapshot.key` and `timestamp.key` in `dir`. Blocking (scrypt).
pub fn load_online_keys(dir: &Path, pass: &SecretString) -> Result<OnlineKeys, RepoError> {
    Ok(OnlineKeys {
        targets: load_role_key(dir, "targets", pass)?,
        snapshot: load_role_key(dir, "snapshot", pass)?,
        timestamp: load_role_key(dir, "timestamp", pass)?,
    })
}

/// Checks production material: the root signs itself (threshold met), is unexpired, uses
/// consistent snapshots, and authorises exactly these keys, one per online role with
/// threshold 1. Errors name the role at fault.
pub fn check_material(
    root_bytes: Vec<u8>,
    keys: &OnlineKeys,
    now: UtcTime,
) -> Result<SignedFile<Root>, RepoError> {
    let root = SignedFile::<Root>::from_bytes(root_bytes)
        .map_err(|e| RepoError::Setup(format!("the root metadata does not parse: {e}")))?;
    root.meta.verify_self().map_err(|e| {
        RepoError::Setup(format!(
            "the root metadata does not verify with its own keys: {e}"
        ))
    })?;
    if root.expires().unix() <= now.unix() {
        return Err(RepoError::Setup(format!(
            "the root metadata expired at {}: sign a new one with otter-keys",
            root.expires()
        )));
    }
    if !root.signed().consistent_snapshot() {
        return Err(RepoError::Setup(
            "the root does not use consistent snapshots, which otter-server needs: make it \
             without --no-consistent-snapshot"
                .into(),
        ));
    }
    for (role, key) in [
        ("targets", &keys.targets),
        ("snapshot", &keys.snapshot),
        ("timestamp", &keys.timestamp),
    ] {
        let authorised = root
            .signed()
            .role(role)
            .map_err(|e| RepoError::Setup(e.to_string()))?;
        let ids: Vec<&str> = authorised.keyids.iter().map(|k| k.short()).collect();
        if !authorised.keyids.contains(&key.key_id()) {
            return Err(RepoError::Setup(format!(
                "the {role} key given (key id {}) is not the {role} key this root authorises \
                 (it authorises {}): give the online keys made with this root",
                key.key_id().short(),
                ids.join(", ")
            )));
        }
        if authorised.threshold != 1 {
            return Err(RepoError::Setup(format!(
                "root requires {} signatures for {role}; the server signs with one key, so \
                 the threshold of an online role must be 1",
                authorised.threshold
            )));
        }
    }
    build::check_online_keys(root.signed(), keys).map_err(RepoError::Setup)?;
    Ok(root)
}

/// Copies the online key files (still encrypted) and their public keys from `from` into
/// the data dir's `to`, 0600 and 0644. Refuses to overwrite. Blocking.
pub fn copy_key_files(from: &Path, to: &Path) -> Result<Vec<PathBuf>, RepoError> {
    crate::store::create_dir_private(to).map_err(|source| RepoError::Io {
        path: to.into(),
        source,
    })?;
    let mut written = Vec::new();
    for role in ONLINE_ROLES {
        for (name, mode) in [
            (format!("{role}.key"), 0o600),
            (format!("{role}.pub.json"), 0o644),
        ] {
            let src = from.join(&name);
            let dst = to.join(&name);
            if dst.exists() {
                return Err(RepoError::Setup(format!(
                    "{} exists already: refusing to overwrite a key",
                    dst.display()
                )));
            }
            let bytes = match std::fs::read(&src) {
                Ok(b) => Zeroizing::new(b),
                Err(e) if mode == 0o644 && e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(RepoError::Io { path: src, source }),
            };
            write_atomic(&dst, &bytes, mode).map_err(|source| RepoError::Io {
                path: dst.clone(),
                source,
            })?;
            written.push(dst);
        }
    }
    Ok(written)
}

/// Whether `dir` holds root key files (`root*.key`): they belong offline.
pub fn root_keys_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("root") && n.ends_with(".key"))
                .collect()
        })
        .unwrap_or_default()
}

/// Version 1 of targets, snapshot and timestamp under a root made elsewhere (production:
/// `otter-keys init`), signed with the online keys.
pub fn initial_online_state(
    root: SignedFile<Root>,
    keys: &OnlineKeys,
    now: UtcTime,
    l: &Lifetimes,
) -> Result<RepoState, MetadataError> {
    let targets = SignedFile::sign(
        Targets {
            type_: "targets".into(),
            spec_version: SPEC_VERSION.into(),
            version: 1,
            expires: now.plus_secs(l.targets),
            targets: BTreeMap::new(),
            delegations: None,
            extra: BTreeMap::new(),
        },
        &keys.targets,
    )?;
    let snapshot = build::new_snapshot(1, BTreeMap::new(), &targets, now, l, keys)?;
    let timestamp = build::new_timestamp(1, &snapshot, now, l, keys)?;
    Ok(RepoState {
        root,
        targets,
        snapshot,
        timestamp,
    })
}

/// Records a new production repository in the database: the given root, version 1 of
/// targets, snapshot and timestamp signed with `keys`, and a first admin token, which is
/// returned (shown once). Refuses a database that holds a repository already.
pub async fn create(
    db: &crate::db::Db,
    root: SignedFile<Root>,
    keys: &OnlineKeys,
    lifetimes: &Lifetimes,
) -> Result<crate::tokens::ApiToken, RepoError> {
    use super::build::{FileRecord, TopRole};
    use super::records;
    use crate::tokens::{insert_token, ApiToken, TokenRole};

    let now = UtcTime::now();
    let state = initial_online_state(root, keys, now, lifetimes)
        .map_err(super::metadata_err("signing the initial metadata"))?;
    build::verify_state(&state).map_err(RepoError::Inconsistent)?;
    let rows: Vec<FileRecord> = [
        TopRole::Root,
        TopRole::Targets,
        TopRole::Snapshot,
        TopRole::Timestamp,
    ]
    .into_iter()
    .map(|r| state.record(r))
    .collect();
    let token = ApiToken::generate()?;
    let created = db
        .call(move |c| {
            let tx = c.transaction()?;
            if records::mode(&tx)?.is_some() {
                return Ok(None);
            }
            records::insert_repository(&tx, "production", now.unix())?;
            records::insert_versions(&tx, &rows, now.unix())?;
            insert_token(
                &tx,
                &token,
                TokenRole::Admin,
                "created by otter-server init",
                now.unix(),
            )?;
            tx.commit()?;
            Ok(Some(token))
        })
        .await?;
    created.ok_or_else(|| {
        RepoError::Setup("the data dir holds a repository already: give an empty --data-dir".into())
    })
}
