//! Updates through signed deltas (agent issue, item 5; `docs/deltas.md`).
//!
//! For a chosen update of an installed component, [`fetch_update`] looks for the signed
//! delta target `COMPONENT-VERSION.from-INSTALLED.delta` whose `custom.delta` names the
//! chosen full target (and its exact SHA-256). It is used only when the agent keeps the
//! exact base: `STATE_DIR/bundles/COMPONENT-INSTALLED.tar.zst`, a zstd form of the installed
//! version's tar, whose tar must match the signed `base_tar_sha256` and length (checked
//! while it is read into memory). The delta is downloaded like any target (resumable, capped
//! at its signed length, hash-checked), applied with [`otter_delta::apply`] (output capped at
//! the signed tar length) and the rebuilt tar checked against the signed `tar_sha256`;
//! it is recompressed on the way into `STATE_DIR/deltas/`, but that file is handed to the
//! apply engine only after the hash matched. Any failure falls back to the full download,
//! unless `[update] metered` forbids it: then the update waits and the reason is reported.
//!
//! After an install, [`after_install`] keeps the installed bundle in `bundles/` as the base
//! of the next delta, and drops kept bundles of versions the apply engine no longer keeps.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read};
use std::path::{Path, PathBuf};

use otter_delta::{ApplyLimits, DeltaCustom, DeltaEntry};
use otter_keys::metadata::TargetFile;
use otter_keys::time::UtcTime;
use sha2::{Digest, Sha256};

use crate::apply::Applier;
use crate::download::{self, DownloadError, DownloadOptions, Downloaded};
use crate::select::Update;
use crate::status::{StatusFile, Waiting};
use crate::tuf::{Fetcher, Updater};
use crate::update::PassReport;

/// Kept bundles of installed versions (bases of deltas), under the state dir.
pub const BUNDLES_DIR: &str = "bundles";
/// Delta downloads and rebuilt bundles, under the state dir.
pub const DELTAS_DIR: &str = "deltas";
/// zstd level of rebuilt bundles (only this terminal reads them).
const REBUILD_LEVEL: i32 = 1;
/// Largest zstd window accepted in a kept bundle.
const MAX_WINDOW_LOG: u32 = 27;

/// Why a delta was not used (the caller falls back to the full download).
#[derive(Debug, thiserror::Error)]
pub enum DeltaUseError {
    /// No signed delta from the installed version to this target.
    #[error("no signed delta from the installed version")]
    NoDelta,
    /// The signed delta entry is malformed or names another target.
    #[error("the signed delta entry {name} is unusable: {why}")]
    BadEntry {
        /// The delta target.
        name: String,
        /// Why.
        why: String,
    },
    /// The base is not kept, or the kept file is not the signed base.
    #[error("the base {base} is not kept intact on this terminal: {why}")]
    NoBase {
        /// The base target.
        base: String,
        /// Why.
        why: String,
    },
    /// The delta could not be downloaded or did not verify.
    #[error(transparent)]
    Download(#[from] DownloadError),
    /// Rebuilding failed or gave bytes other than the signed ones.
    #[error("rebuilding {target} from {delta}: {source}")]
    Rebuild {
        /// The full target.
        target: String,
        /// The delta target.
        delta: String,
        /// The cause.
        #[source]
        source: otter_delta::DeltaError,
    },
    /// A local file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl DeltaUseError {
    /// Whether the server or a mirror served bytes other than the signed ones (reported as
    /// a security event).
    fn is_security_event(&self) -> bool {
        match self {
            DeltaUseError::Download(e) => e.is_security_event(),
            DeltaUseError::Rebuild { source, .. } => matches!(
                source,
                otter_delta::DeltaError::Mismatch(_)
                    | otter_delta::DeltaError::TooLarge { .. }
                    | otter_delta::DeltaError::WrongBase { .. }
                    | otter_delta::DeltaError::Corrupt(_)
                    | otter_delta::DeltaError::NotADelta(_)
            ),
            _ => false,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DeltaUseError + '_ {
    move |source| DeltaUseError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The kept bundle of target `target` (a `COMPONENT-VERSION.tar.zst` name).
pub fn kept_bundle(state_dir: &Path, target: &str) -> PathBuf {
    state_dir.join(BUNDLES_DIR).join(crate::tuf::quote(target))
}

/// The signed delta from the installed version to `u`, if the metadata lists one.
fn find_delta<'a>(
    u: &Update,
    targets: &'a [(String, TargetFile)],
) -> Result<(String, &'a TargetFile, DeltaEntry), DeltaUseError> {
    let from = u.from.as_ref().ok_or(DeltaUseError::NoDelta)?;
    let name = otter_delta::delta_target_name(&u.target, &from.to_string())
        .ok_or(DeltaUseError::NoDelta)?;
    let mut found = targets.iter().filter(|(n, _)| *n == name);
    let (_, file) = found.next().ok_or(DeltaUseError::NoDelta)?;
    let bad = |why: String| DeltaUseError::BadEntry {
        name: name.clone(),
        why,
    };
    if found.next().is_some() {
        return Err(bad("it is listed more than once".into()));
    }
    let custom = file
        .custom()
        .ok_or_else(|| bad("it has no custom member".into()))?;
    let entry = DeltaCustom::parse(&name, custom).map_err(&bad)?.delta;
    if entry.target != u.target {
        return Err(bad(format!(
            "it rebuilds {}, not {}",
            entry.target, u.target
        )));
    }
    if u.file.hashes.get("sha256") != Some(&entry.target_sha256) {
        return Err(bad(
            "it stands for another signed version of the full target (SHA-256 differs)".into(),
        ));
    }
    if entry.base != format!("{}-{from}{}", u.component, otter_delta::BUNDLE_SUFFIX) {
        return Err(bad(format!(
            "its base {} is not the installed version",
            entry.base
        )));
    }
    Ok((name, file, entry))
}

/// Reads the kept base's tar into memory (at most the signed length) and checks its hash.
fn load_base(state_dir: &Path, e: &DeltaEntry) -> Result<Vec<u8>, DeltaUseError> {
    let path = kept_bundle(state_dir, &e.base);
    let no_base = |why: String| DeltaUseError::NoBase {
        base: e.base.clone(),
        why,
    };
    let f = File::open(&path).map_err(|err| no_base(format!("{}: {err}", path.display())))?;
    let mut d = zstd::stream::read::Decoder::new(f)
        .map_err(|err| no_base(format!("{}: {err}", path.display())))?;
    d.window_log_max(MAX_WINDOW_LOG)
        .map_err(|err| no_base(err.to_string()))?;
    let mut tar = Vec::new();
    let read = d
        .take(e.base_tar_length.saturating_add(1))
        .read_to_end(&mut tar);
    let intact = read.is_ok()
        && tar.len() as u64 == e.base_tar_length
        && hex::encode(Sha256::digest(&tar)) == e.base_tar_sha256;
    if !intact {
        // Damaged or not the signed base: useless from now on.
        let _ = fs::remove_file(&path);
        return Err(no_base(format!(
            "{} does not unpack to the signed base tar; it was removed",
            path.display()
        )));
    }
    Ok(tar)
}

/// Whether `path` is a zstd file whose content has the signed length and SHA-256.
fn holds_tar(path: &Path, len: u64, sha256: &str) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    let Ok(mut d) = zstd::stream::read::Decoder::new(f) else {
        return false;
    };
    if d.window_log_max(MAX_WINDOW_LOG).is_err() {
        return false;
    }
    let mut h = Sha256::new();
    let mut r = d.take(len.saturating_add(1));
    let mut buf = vec![0u8; 256 * 1024];
    let mut n_total = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                h.update(&buf[..n]);
                n_total += n as u64;
            }
            Err(_) => return false,
        }
    }
    n_total == len && hex::encode(h.finalize()) == sha256
}

/// Removes every file in `dir` but `keep`.
fn prune_dir(dir: &Path, keep: &[&Path]) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if !keep.contains(&p.as_path()) {
                let _ = fs::remove_file(&p);
            }
        }
    }
}

/// Rebuilds the tar from `base` and the delta file, checks it, and writes it
/// zstd-compressed to `tmp`, then renames it to `rebuilt`.
fn rebuild(
    base: &[u8],
    delta_file: &Path,
    entry: &DeltaEntry,
    tmp: &Path,
    rebuilt: &Path,
    names: (&str, &str),
) -> Result<(), DeltaUseError> {
    let out = File::create(tmp).map_err(io_err(tmp))?;
    let mut z = zstd::stream::write::Encoder::new(BufWriter::new(out), REBUILD_LEVEL)
        .map_err(io_err(tmp))?;
    let delta = BufReader::new(File::open(delta_file).map_err(io_err(delta_file))?);
    otter_delta::apply(
        base,
        delta,
        &mut z,
        &ApplyLimits {
            max_len: Some(entry.tar_length),
            expect_sha256: otter_delta::sha256_from_hex(&entry.tar_sha256),
        },
    )
    .map_err(|source| DeltaUseError::Rebuild {
        target: names.0.into(),
        delta: names.1.into(),
        source,
    })?;
    let w = z.finish().map_err(io_err(tmp))?;
    let f = w.into_inner().map_err(|e| DeltaUseError::Io {
        path: tmp.to_path_buf(),
        source: e.into_error(),
    })?;
    f.sync_all().map_err(io_err(tmp))?;
    fs::rename(tmp, rebuilt).map_err(io_err(rebuilt))?;
    let dir = rebuilt.parent().unwrap_or(Path::new("."));
    otter_keys::atomic::sync_dir(dir).map_err(io_err(dir))
}

/// Downloads the delta, rebuilds and verifies; returns the rebuilt bundle.
fn via_delta<F: Fetcher>(
    updater: &Updater<F>,
    fetcher: &F,
    state_dir: &Path,
    u: &Update,
    targets: &[(String, TargetFile)],
    opts: &DownloadOptions,
    report: &mut PassReport,
) -> Result<Downloaded, DeltaUseError> {
    let (name, file, entry) = find_delta(u, targets)?;
    let dir = state_dir.join(DELTAS_DIR);
    let dl_name = download::file_name(&name, file)?;
    let full_name = download::file_name(&u.target, &u.file)?;
    let rebuilt = dir.join(format!("{full_name}.rebuilt"));
    let tmp = dir.join(format!("{full_name}.rebuilt{}", download::PART_SUFFIX));
    let part = dir.join(format!("{dl_name}{}", download::PART_SUFFIX));
    let delta_path = dir.join(&dl_name);
    prune_dir(&dir, &[&rebuilt, &part, &delta_path]);
    if holds_tar(&rebuilt, entry.tar_length, &entry.tar_sha256) {
        report.lines.push(format!(
            "{}: using {} rebuilt earlier from delta {name} (verified again)",
            u.component, u.target
        ));
        return Ok(Downloaded {
            path: rebuilt,
            resumed_from: 0,
            fetched: 0,
            restarted: false,
            cached: true,
        });
    }
    let base = load_base(state_dir, &entry)?;
    let url = updater
        .target_url(&name, file)
        .map_err(|e| DeltaUseError::BadEntry {
            name: name.clone(),
            why: otter_keys::report::describe(&e),
        })?;
    let got = download::download_target(fetcher, &url, &name, file, &dir, opts)?;
    let result = rebuild(&base, &got.path, &entry, &tmp, &rebuilt, (&u.target, &name));
    // The delta is spent either way: a damaged one must be fetched again.
    let _ = fs::remove_file(&got.path);
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    report.lines.push(format!(
        "{}: updated via delta {name}: fetched {} bytes instead of {}; rebuilt {} and verified \
         it against the signed hash",
        u.component, got.fetched, u.file.length, u.target
    ));
    Ok(Downloaded {
        path: rebuilt,
        resumed_from: got.resumed_from,
        fetched: got.fetched,
        restarted: got.restarted,
        // Reported above: nothing more to say about a download.
        cached: true,
    })
}

/// Gets the bundle of update `u`: through a signed delta when the exact base is kept (see
/// the module documentation), else the full target from `full_url`. `Ok(None)`: `metered` forbids the full
/// download and no delta worked; the update waits (recorded in `status` and `report`).
#[allow(clippy::too_many_arguments)]
pub fn fetch_update<F: Fetcher>(
    updater: &Updater<F>,
    fetcher: &F,
    state_dir: &Path,
    downloads: &Path,
    u: &Update,
    full_url: &str,
    targets: &[(String, TargetFile)],
    opts: &DownloadOptions,
    metered: bool,
    status: &mut StatusFile,
    report: &mut PassReport,
) -> Result<Option<Downloaded>, DownloadError> {
    // A full download verified in an earlier pass is used as it is.
    let full_path = downloads.join(download::file_name(&u.target, &u.file)?);
    let full_ready = download::verified_file(&full_path, &u.file).is_some();
    let why = if u.from.is_none() || full_ready {
        None
    } else {
        match via_delta(updater, fetcher, state_dir, u, targets, opts, report) {
            Ok(d) => return Ok(Some(d)),
            Err(DeltaUseError::Download(e @ DownloadError::Cancelled { .. })) => return Err(e),
            Err(e) => {
                if e.is_security_event() {
                    status.push_event(
                        "delta_refused",
                        otter_keys::report::describe(&e),
                        UtcTime::now().unix(),
                    );
                }
                Some(e)
            }
        }
    };
    if let Some(e) = &why {
        let text = otter_keys::report::describe(e);
        if metered {
            let w = Waiting {
                target: u.target.clone(),
                component: u.component.clone(),
                version: u.version().to_string(),
                reason: format!(
                    "metered link: no full download of an installed component, and no delta \
                     could be used ({text}); waiting for a usable delta"
                ),
            };
            report.lines.push(format!("waiting: {}", w.reason));
            status.waiting.push(w.clone());
            report.waiting.push(w);
            return Ok(None);
        }
        if !matches!(e, DeltaUseError::NoDelta) {
            report.lines.push(format!(
                "{}: delta not used ({text}); falling back to the full download of {}",
                u.component, u.target
            ));
        }
    }
    download::download_target(fetcher, full_url, &u.target, &u.file, downloads, opts).map(Some)
}

/// After an install attempt of `u` from `bundle`: when `u`'s version is now active, keeps
/// the bundle as `bundles/TARGET` (the base of the next delta), else removes it; then drops
/// kept bundles of versions the apply engine no longer keeps. Failures only cost a future
/// delta, so they are ignored.
pub fn after_install(state_dir: &Path, applier: &Applier, u: &Update, bundle: &Path) {
    let dir = state_dir.join(BUNDLES_DIR);
    let active = applier
        .installed()
        .ok()
        .and_then(|i| i.get(&u.component).cloned());
    if active.as_ref() == Some(u.version()) && fs::create_dir_all(&dir).is_ok() {
        let kept = kept_bundle(state_dir, &u.target);
        if fs::rename(bundle, &kept).is_ok() {
            let _ = otter_keys::atomic::sync_dir(&dir);
        }
    }
    let _ = fs::remove_file(bundle);
    prune_kept(state_dir, applier);
}

/// `COMPONENT-VERSION.tar.zst` split into component and version.
fn split_target(name: &str) -> Option<(&str, &str)> {
    let stem = name.strip_suffix(otter_delta::BUNDLE_SUFFIX)?;
    stem.char_indices()
        .filter(|(_, c)| *c == '-')
        .map(|(i, _)| (&stem[..i], &stem[i + 1..]))
        .find(|(c, v)| {
            otter_keys::release::is_component_name(c) && semver::Version::parse(v).is_ok()
        })
}

/// Removes kept bundles whose version directory the apply engine no longer holds.
fn prune_kept(state_dir: &Path, applier: &Applier) {
    let dir = state_dir.join(BUNDLES_DIR);
    let components = applier.root().join("components");
    let Ok(rd) = fs::read_dir(&dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let kept = split_target(&name.to_string_lossy())
            .is_some_and(|(component, version)| components.join(component).join(version).is_dir());
        if !kept {
            let _ = fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::collections::BTreeMap;

    fn update(from: Option<&str>) -> Update {
        let custom = serde_json::json!({
            "kind": "driver", "version": "2.0.0", "hardware": ["pos-a"], "channel": "stable",
            "rollout": {"percent": 100, "groups": []},
        });
        let file = TargetFile {
            length: 10,
            hashes: BTreeMap::from([("sha256".to_string(), "a".repeat(64))]),
            extra: BTreeMap::from([("custom".to_string(), custom.clone())]),
        };
        Update {
            component: "app".into(),
            target: "app-2.0.0.tar.zst".into(),
            custom: crate::select::TargetCustom::parse("app-2.0.0.tar.zst", Some(&custom)).unwrap(),
            file,
            from: from.map(|v| semver::Version::parse(v).unwrap()),
            downgrade: false,
        }
    }

    fn delta_entry(target_sha: &str, base: &str) -> (String, TargetFile) {
        let name = "app-2.0.0.from-1.0.0.delta".to_string();
        let custom = serde_json::json!({"delta": {
            "format": otter_delta::FORMAT, "target": "app-2.0.0.tar.zst",
            "target_sha256": target_sha, "tar_sha256": "b".repeat(64), "tar_length": 5,
            "base": base, "base_tar_sha256": "c".repeat(64), "base_tar_length": 4,
        }});
        (
            name,
            TargetFile {
                length: 3,
                hashes: BTreeMap::from([("sha256".to_string(), "d".repeat(64))]),
                extra: BTreeMap::from([("custom".to_string(), custom)]),
            },
        )
    }

    #[test]
    fn a_delta_is_found_only_for_the_installed_base_and_the_exact_target() {
        let good = vec![delta_entry(&"a".repeat(64), "app-1.0.0.tar.zst")];
        assert!(find_delta(&update(Some("1.0.0")), &good).is_ok());
        assert!(matches!(
            find_delta(&update(Some("1.1.0")), &good),
            Err(DeltaUseError::NoDelta)
        ));
        assert!(matches!(
            find_delta(&update(None), &good),
            Err(DeltaUseError::NoDelta)
        ));
        let other_sha = vec![delta_entry(&"e".repeat(64), "app-1.0.0.tar.zst")];
        assert!(matches!(
            find_delta(&update(Some("1.0.0")), &other_sha),
            Err(DeltaUseError::BadEntry { .. })
        ));
        let twice = vec![good[0].clone(), good[0].clone()];
        assert!(matches!(
            find_delta(&update(Some("1.0.0")), &twice),
            Err(DeltaUseError::BadEntry { .. })
        ));
    }

    #[test]
    fn a_kept_base_that_does_not_match_is_refused_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let tar = b"base tar bytes".to_vec();
        let (_, f) = delta_entry(&"a".repeat(64), "app-1.0.0.tar.zst");
        let mut e = DeltaCustom::parse("app-2.0.0.from-1.0.0.delta", f.custom().unwrap())
            .unwrap()
            .delta;
        e.base_tar_length = tar.len() as u64;
        e.base_tar_sha256 = hex::encode(Sha256::digest(&tar));
        let kept = kept_bundle(dir.path(), "app-1.0.0.tar.zst");
        fs::create_dir_all(kept.parent().unwrap()).unwrap();
        fs::write(&kept, zstd::encode_all(&tar[..], 3).unwrap()).unwrap();
        assert_eq!(load_base(dir.path(), &e).unwrap(), tar);
        fs::write(&kept, zstd::encode_all(&b"other bytes"[..], 3).unwrap()).unwrap();
        assert!(matches!(
            load_base(dir.path(), &e),
            Err(DeltaUseError::NoBase { .. })
        ));
        assert!(!kept.exists());
    }

    #[test]
    fn target_names_split_into_component_and_version() {
        assert_eq!(
            split_target("card-reader-1.2.3-rc.1.tar.zst"),
            Some(("card-reader", "1.2.3-rc.1"))
        );
        assert_eq!(split_target("x.tar.zst"), None);
    }
}
