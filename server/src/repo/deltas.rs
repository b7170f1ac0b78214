//! Deltas between releases of a component (`[deltas]`): when a version is published, the
//! server builds `otter-delta` patches from the previous `from_previous` versions still in
//! the signed targets, between the *uncompressed* tars of the bundles (a compressed stream
//! diverges after its first change, so deltas between compressed bundles are poor). Each
//! is stored content-addressed and signed as a target of its own,
//! `COMPONENT-VERSION.from-BASEVERSION.delta`, whose `custom.delta` names the full target
//! it stands for and the SHA-256 and length of the tar it rebuilds (see
//! [`otter_delta::DeltaCustom`] and `docs/deltas.md`). They go into the same targets
//! version as the release, so a crash leaves either neither or both. Yanking a version
//! removes the deltas to and from it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use otter_delta::{CreateOptions, DeltaCustom, DeltaEntry};
use otter_keys::metadata::{TargetFile, Targets};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};

/// `[deltas]`: which deltas the server precomputes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeltasConfig {
    /// Deltas from this many previous versions of the component (the highest versions below
    /// the new one that are still published); 0 disables deltas.
    pub from_previous: usize,
    /// Bases whose uncompressed tar is larger get no delta: the server and the terminal
    /// hold the whole base tar in memory while making or applying one.
    pub max_base_bytes: u64,
    /// zstd level of the deltas (1 to 19; higher is smaller and slower to make).
    pub level: i32,
}

impl Default for DeltasConfig {
    fn default() -> Self {
        DeltasConfig {
            from_previous: 2,
            max_base_bytes: 512 * 1024 * 1024,
            level: otter_delta::DEFAULT_LEVEL,
        }
    }
}

impl DeltasConfig {
    /// Checks the values are in range.
    pub fn validate(&self) -> Result<(), String> {
        if self.from_previous > 16 {
            return Err(format!(
                "deltas.from_previous = {}: give 0 (no deltas) to 16",
                self.from_previous
            ));
        }
        if self.max_base_bytes > 1024 * 1024 * 1024 * 3 / 2 {
            return Err(format!(
                "deltas.max_base_bytes = {}: give at most 1.5 GiB (zstd's window must hold the \
                 base and a segment)",
                self.max_base_bytes
            ));
        }
        if !(1..=19).contains(&self.level) {
            return Err(format!("deltas.level = {}: give 1 to 19", self.level));
        }
        Ok(())
    }
}

/// Why a delta could not be built (the release is published without it).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A local file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A bundle did not decompress.
    #[error("decompressing {what}: {source}")]
    Bundle {
        /// Which bundle.
        what: String,
        /// The cause.
        source: io::Error,
    },
    /// The base tar is larger than `deltas.max_base_bytes`.
    #[error("the base {0} unpacks to more than deltas.max_base_bytes; no delta from it")]
    BaseTooLarge(String),
    /// The codec failed.
    #[error(transparent)]
    Codec(#[from] otter_delta::DeltaError),
}

/// A base: a published full target of the same component.
#[derive(Debug, Clone)]
pub struct Base {
    /// Its target name.
    pub target: String,
    /// Its version (text).
    pub version: String,
    /// Its compressed bundle bytes (from the store, verified against its signed SHA-256).
    pub bundle: Vec<u8>,
}

/// A built delta, in a temporary file until it is stored.
#[derive(Debug)]
pub struct Built {
    /// The delta target's name.
    pub name: String,
    /// The signed entry (length, sha256 and sha512, custom).
    pub entry: TargetFile,
    /// Its SHA-256, hex.
    pub sha256: String,
    /// The temporary file holding it.
    pub file: tempfile::NamedTempFile,
}

/// The published full targets of `component` with a version below `new`, highest first:
/// the bases for deltas to `new`, `k` of them at most.
pub fn choose_bases(
    targets: &Targets,
    component: &str,
    new: &semver::Version,
    k: usize,
) -> Vec<(String, String, String)> {
    let mut found: Vec<(semver::Version, String, String)> = Vec::new();
    for (name, entry) in &targets.targets {
        if otter_delta::is_delta_target_name(name) {
            continue;
        }
        let Some(version) = entry
            .extra
            .get("custom")
            .and_then(|c| c.get("version"))
            .and_then(|v| v.as_str())
        else {
            continue;
        };
        if name != &format!("{component}-{version}{}", otter_delta::BUNDLE_SUFFIX) {
            continue;
        }
        let Ok(v) = semver::Version::parse(version) else {
            continue;
        };
        let Some(sha) = entry.hashes.get("sha256") else {
            continue;
        };
        if v.cmp_precedence(new).is_lt() {
            found.push((v, name.clone(), sha.clone()));
        }
    }
    found.sort_by(|a, b| b.0.cmp_precedence(&a.0).then_with(|| b.0.cmp(&a.0)));
    found
        .into_iter()
        .take(k)
        .map(|(v, name, sha)| (name, v.to_string(), sha))
        .collect()
}

/// Decompresses a bundle into memory, refusing more than `cap` bytes.
fn unpack_capped(r: impl Read, what: &str, cap: u64) -> Result<Vec<u8>, BuildError> {
    let bundle_err = |source| BuildError::Bundle {
        what: what.into(),
        source,
    };
    let mut d = zstd::stream::read::Decoder::new(r).map_err(bundle_err)?;
    d.window_log_max(27).map_err(bundle_err)?;
    let mut out = Vec::new();
    let n = d
        .take(cap.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(bundle_err)?;
    if n as u64 > cap {
        return Err(BuildError::BaseTooLarge(what.into()));
    }
    Ok(out)
}

/// Hashes what is written through it.
struct HashingWriter<W> {
    inner: W,
    sha256: Sha256,
    sha512: Sha512,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha256.update(&buf[..n]);
        self.sha512.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Builds the delta from `base` to the new bundle (file `new_bundle`, full target
/// `new_target` with SHA-256 `new_sha256`) in a temporary file in `tmp_dir`. Blocking and
/// CPU-heavy: run it off the async executor.
pub fn build(
    base: &Base,
    new_bundle: &Path,
    new_target: &str,
    new_sha256: &str,
    tmp_dir: &Path,
    config: &DeltasConfig,
) -> Result<Built, BuildError> {
    let name = otter_delta::delta_target_name(new_target, &base.version).ok_or_else(|| {
        BuildError::Bundle {
            what: new_target.into(),
            source: io::Error::other("not a COMPONENT-VERSION.tar.zst name"),
        }
    })?;
    let base_tar = unpack_capped(&base.bundle[..], &base.target, config.max_base_bytes)?;
    let file = tempfile::Builder::new()
        .prefix("delta-")
        .tempfile_in(tmp_dir)
        .map_err(|source| BuildError::Io {
            path: tmp_dir.to_path_buf(),
            source,
        })?;
    let out = file
        .as_file()
        .try_clone()
        .map_err(|source| BuildError::Io {
            path: file.path().to_path_buf(),
            source,
        })?;
    let mut w = HashingWriter {
        inner: io::BufWriter::new(out),
        sha256: Sha256::new(),
        sha512: Sha512::new(),
        len: 0,
    };
    let open_new = || -> io::Result<_> {
        let mut d = zstd::stream::read::Decoder::new(File::open(new_bundle)?)?;
        d.window_log_max(27)?;
        Ok(d)
    };
    let opts = CreateOptions {
        level: config.level,
        ..CreateOptions::default()
    };
    let summary = otter_delta::create(&base_tar, open_new, &mut w, &opts)?;
    w.flush().map_err(|source| BuildError::Io {
        path: file.path().to_path_buf(),
        source,
    })?;
    file.as_file().sync_all().map_err(|source| BuildError::Io {
        path: file.path().to_path_buf(),
        source,
    })?;
    let sha256 = hex::encode(w.sha256.finalize());
    let custom = DeltaCustom {
        delta: DeltaEntry {
            format: otter_delta::FORMAT.into(),
            target: new_target.into(),
            target_sha256: new_sha256.into(),
            tar_sha256: hex::encode(summary.header.out_sha256),
            tar_length: summary.header.out_len,
            base: base.target.clone(),
            base_tar_sha256: hex::encode(summary.header.base_sha256),
            base_tar_length: summary.header.base_len,
        },
    };
    let custom = serde_json::to_value(&custom).map_err(|e| BuildError::Io {
        path: file.path().to_path_buf(),
        source: io::Error::other(e),
    })?;
    let entry = TargetFile {
        length: w.len,
        hashes: BTreeMap::from([
            ("sha256".to_string(), sha256.clone()),
            ("sha512".to_string(), hex::encode(w.sha512.finalize())),
        ]),
        extra: BTreeMap::from([("custom".to_string(), custom)]),
    };
    Ok(Built {
        name,
        entry,
        sha256,
        file,
    })
}

/// Removes from `targets` every delta to or from the full target `target`; returns their
/// names.
pub fn remove_touching(targets: &mut Targets, target: &str) -> Vec<String> {
    let doomed: Vec<String> = targets
        .targets
        .iter()
        .filter(|(name, entry)| {
            otter_delta::is_delta_target_name(name)
                && entry
                    .extra
                    .get("custom")
                    .and_then(|c| c.get("delta"))
                    .is_some_and(|d| {
                        d.get("target").and_then(|t| t.as_str()) == Some(target)
                            || d.get("base").and_then(|t| t.as_str()) == Some(target)
                    })
        })
        .map(|(name, _)| name.clone())
        .collect();
    for name in &doomed {
        targets.targets.remove(name);
    }
    doomed
}

impl super::Repository {
    /// Builds and stores the deltas to a new release (full target `target`, SHA-256
    /// `sha256`, bundle file `file`) from the previous versions of `component` that `state`
    /// publishes. Failures are logged and skip that delta: the release is published anyway.
    pub(crate) async fn build_deltas(
        &self,
        state: &super::build::RepoState,
        component: &str,
        version: &str,
        target: &str,
        sha256: &str,
        file: &Path,
    ) -> Vec<Built> {
        let k = self.deltas.from_previous;
        let Ok(new_version) = semver::Version::parse(version) else {
            return Vec::new();
        };
        if k == 0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (base_target, base_version, base_sha) in
            choose_bases(state.targets.signed(), component, &new_version, k)
        {
            let key = crate::store::target_key(&format!("{base_sha}.{base_target}"));
            let bundle = match self.store.get_bytes(&key).await {
                Ok(Some(b)) if hex::encode(Sha256::digest(&b)) == base_sha => b,
                Ok(Some(_)) => {
                    tracing::error!(base = %base_target, "the stored base bundle does not match its signed SHA-256; no delta from it");
                    continue;
                }
                Ok(None) => {
                    tracing::warn!(base = %base_target, "the base bundle is missing from the store; no delta from it");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(base = %base_target, error = %e, "cannot read the base bundle; no delta from it");
                    continue;
                }
            };
            let base = Base {
                target: base_target.clone(),
                version: base_version,
                bundle,
            };
            let (file, target_s, sha, cfg) = (
                file.to_path_buf(),
                target.to_string(),
                sha256.to_string(),
                self.deltas.clone(),
            );
            let started = std::time::Instant::now();
            let built = tokio::task::spawn_blocking(move || {
                let tmp = file.parent().unwrap_or(Path::new(".")).to_path_buf();
                build(&base, &file, &target_s, &sha, &tmp, &cfg)
            })
            .await;
            let built = match built {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => {
                    tracing::warn!(base = %base_target, target, error = %e, "no delta");
                    continue;
                }
                Err(e) => {
                    tracing::error!(base = %base_target, target, error = %e, "the delta task failed");
                    continue;
                }
            };
            let key = crate::store::target_key(&format!("{}.{}", built.sha256, built.name));
            if let Err(e) = self.store.put_file(&key, built.file.path()).await {
                tracing::warn!(delta = %built.name, error = %e, "cannot store the delta; not published");
                continue;
            }
            tracing::info!(
                delta = %built.name,
                bytes = built.entry.length,
                millis = started.elapsed().as_millis() as u64,
                "delta built"
            );
            out.push(built);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn the_default_is_valid_and_limits_are_checked() {
        DeltasConfig::default().validate().unwrap();
        let bad = DeltasConfig {
            level: 0,
            ..DeltasConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = DeltasConfig {
            max_base_bytes: 4 << 30,
            ..DeltasConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn a_base_over_the_cap_is_refused() {
        let data = vec![7u8; 10_000];
        let z = zstd::encode_all(&data[..], 3).unwrap();
        assert_eq!(unpack_capped(&z[..], "b", 10_000).unwrap(), data);
        assert!(matches!(
            unpack_capped(&z[..], "b", 9_999),
            Err(BuildError::BaseTooLarge(_))
        ));
    }
}
