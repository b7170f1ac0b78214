//! Safe, streaming unpack of a bundle (zstd-compressed tar of `manifest.json` plus payload
//! files) into a staging directory, trusting nothing in it: only regular files and
//! directories, safe relative paths, no duplicates, an unpacked size cap, a strict manifest
//! whose payload list must match the files exactly (sizes and SHA-256).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::Kind;

/// Largest `manifest.json` accepted.
const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;
/// Most entries a bundle may hold.
const MAX_ENTRIES: usize = 100_000;
/// The zstd window a bundle may use (128 MiB of decoder memory at most).
const MAX_WINDOW_LOG: u32 = 27;

/// One payload file as the manifest declares it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PayloadFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// `manifest.json`, parsed strictly (the same shape the server validates on publish).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Manifest {
    pub name: String,
    pub kind: Kind,
    pub version: String,
    pub hardware: Vec<String>,
    pub payload: Vec<PayloadFile>,
    #[serde(default)]
    pub install: Option<Vec<String>>,
    #[serde(default)]
    pub health: Option<Vec<String>>,
    #[serde(default)]
    #[allow(dead_code)]
    pub min_installed_version: Option<String>,
    /// The install command migrates the terminal's database: the agent backs it up first
    /// and restores it with any rollback (`crate::migration`).
    #[serde(default)]
    pub migrates_database: bool,
}

/// Whether `p` is a safe relative path: `/`-separated components of `[A-Za-z0-9._+-]`, none
/// empty, `.` or `..`, none starting with `-`; at most 255 bytes.
pub(crate) fn is_safe_relative_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 255
        && p.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && !c.starts_with('-')
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
        })
}

fn check_argv(field: &str, argv: &Option<Vec<String>>) -> Result<(), String> {
    if let Some(a) = argv {
        if a.is_empty() || a.len() > 64 || a[0].is_empty() {
            return Err(format!(
                "manifest.json: {field} must be an argv list of 1 to 64 strings"
            ));
        }
        if a.iter().any(|s| s.len() > 4096 || s.contains('\0')) {
            return Err(format!(
                "manifest.json: {field} arguments must be at most 4096 bytes without NUL"
            ));
        }
    }
    Ok(())
}

impl Manifest {
    /// Parses and checks `manifest.json`.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| format!("manifest.json is malformed: {e}"))?;
        if !otter_keys::release::is_component_name(&m.name) {
            return Err(format!(
                "manifest.json: name {:?} is not a component name",
                shown(m.name.as_bytes())
            ));
        }
        let v = semver::Version::parse(&m.version).map_err(|e| {
            format!(
                "manifest.json: version {:?}: {e}",
                shown(m.version.as_bytes())
            )
        })?;
        if v.to_string() != m.version {
            return Err(format!(
                "manifest.json: version {:?} is not in canonical form",
                m.version
            ));
        }
        if m.hardware.is_empty() || m.hardware.iter().any(|h| !otter_keys::release::is_label(h)) {
            return Err("manifest.json: hardware must list safe hardware model names".into());
        }
        if m.payload.is_empty() {
            return Err("manifest.json: payload lists no file".into());
        }
        let mut seen = BTreeSet::new();
        for f in &m.payload {
            if !is_safe_relative_path(&f.path) || f.path == "manifest.json" {
                return Err(format!(
                    "manifest.json: payload path {:?} is unsafe",
                    shown(f.path.as_bytes())
                ));
            }
            if !seen.insert(f.path.as_str()) {
                return Err(format!(
                    "manifest.json: payload path {:?} is listed twice",
                    f.path
                ));
            }
            if f.sha256.len() != 64
                || !f
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(format!(
                    "manifest.json: payload {:?}: sha256 must be 64 lowercase hex digits",
                    f.path
                ));
            }
        }
        check_argv("install", &m.install)?;
        check_argv("health", &m.health)?;
        Ok(m)
    }

    /// The version, parsed (checked in [`Manifest::parse`]).
    pub(crate) fn semver(&self) -> Result<semver::Version, String> {
        semver::Version::parse(&self.version).map_err(|e| e.to_string())
    }
}

fn shown(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().take(120).collect()
}

/// Counts decompressed bytes and fails once they pass the cap.
struct Capped<R> {
    inner: R,
    left: u64,
    tripped: bool,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.left.saturating_add(1)).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            self.tripped = true;
            return Err(io::Error::other("unpacked size cap reached"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Why an unpack failed: the bundle is bad, or the local file system failed.
#[derive(Debug)]
pub(crate) enum UnpackError {
    /// The bundle breaks a rule (refused).
    Bundle(String),
    /// Writing the staging directory failed.
    Io(&'static str, PathBuf, io::Error),
}

fn entry_kind(t: tar::EntryType) -> Option<&'static str> {
    use tar::EntryType as E;
    match t {
        E::Regular | E::Continuous | E::Directory => None,
        E::Symlink => Some("symbolic link"),
        E::Link => Some("hard link"),
        E::Char => Some("character device"),
        E::Block => Some("block device"),
        E::Fifo => Some("FIFO"),
        _ => Some("special entry"),
    }
}

fn mkdir(path: &Path) -> Result<(), UnpackError> {
    match fs::DirBuilder::new().mode(0o755).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(UnpackError::Bundle(format!(
            "{} is both a file and a directory",
            path.display()
        ))),
        Err(e) => Err(UnpackError::Io("creating directory", path.to_path_buf(), e)),
    }
}

/// Creates every missing directory from `dest` down to `rel`'s parent, remembering them.
fn make_parents(dest: &Path, rel: &str, dirs: &mut BTreeSet<String>) -> Result<(), UnpackError> {
    let parts: Vec<&str> = rel.split('/').collect();
    let mut sofar = String::new();
    for part in &parts[..parts.len().saturating_sub(1)] {
        if !sofar.is_empty() {
            sofar.push('/');
        }
        sofar.push_str(part);
        if dirs.insert(sofar.clone()) {
            mkdir(&dest.join(&sofar))?;
        }
    }
    Ok(())
}

/// Streams the bundle at `bundle` into `dest` (an empty directory), checking everything;
/// every file and directory is fsynced before it returns. On error `dest` holds a partial
/// tree the caller removes.
pub(crate) fn unpack(
    bundle: &Path,
    dest: &Path,
    max_unpacked: u64,
) -> Result<Manifest, UnpackError> {
    let file = fs::File::open(bundle)
        .map_err(|e| UnpackError::Io("opening bundle", bundle.to_path_buf(), e))?;
    let mut decoder = zstd::stream::read::Decoder::new(file)
        .map_err(|e| UnpackError::Bundle(format!("not a zstd stream: {e}")))?;
    decoder
        .window_log_max(MAX_WINDOW_LOG)
        .map_err(|e| UnpackError::Bundle(format!("not a zstd stream: {e}")))?;
    let mut capped = Capped {
        inner: decoder,
        left: max_unpacked,
        tripped: false,
    };
    let result = read_tar(&mut capped, dest);
    if capped.tripped {
        return Err(UnpackError::Bundle(format!(
            "it unpacks to more than {max_unpacked} bytes (apply.max_unpacked_bytes)"
        )));
    }
    result
}

/// Reads only `manifest.json` from the bundle at `bundle` (streaming, nothing written) and
/// parses it; the payload is not checked here ([`unpack`] does that).
pub(crate) fn peek_manifest(bundle: &Path, max_unpacked: u64) -> Result<Manifest, UnpackError> {
    let file = fs::File::open(bundle)
        .map_err(|e| UnpackError::Io("opening bundle", bundle.to_path_buf(), e))?;
    let mut decoder = zstd::stream::read::Decoder::new(file)
        .map_err(|e| UnpackError::Bundle(format!("not a zstd stream: {e}")))?;
    decoder
        .window_log_max(MAX_WINDOW_LOG)
        .map_err(|e| UnpackError::Bundle(format!("not a zstd stream: {e}")))?;
    let capped = Capped {
        inner: decoder,
        left: max_unpacked,
        tripped: false,
    };
    let mut archive = tar::Archive::new(capped);
    for entry in archive.entries().map_err(bad_stream)? {
        let entry = entry.map_err(bad_stream)?;
        if entry.path_bytes().as_ref() != b"manifest.json" {
            continue;
        }
        if entry.size() > MAX_MANIFEST_BYTES {
            return Err(UnpackError::Bundle(format!(
                "manifest.json is larger than {MAX_MANIFEST_BYTES} bytes"
            )));
        }
        let mut bytes = Vec::new();
        entry
            .take(MAX_MANIFEST_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(bad_stream)?;
        return Manifest::parse(&bytes).map_err(UnpackError::Bundle);
    }
    Err(UnpackError::Bundle(
        "no manifest.json at its top level".into(),
    ))
}

fn bad_stream(e: io::Error) -> UnpackError {
    UnpackError::Bundle(format!("corrupt zstd or tar stream: {e}"))
}

fn read_tar<R: Read>(reader: R, dest: &Path) -> Result<Manifest, UnpackError> {
    let mut archive = tar::Archive::new(reader);
    let mut files: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    let mut explicit_dirs: BTreeSet<String> = BTreeSet::new();
    let mut manifest_bytes: Option<Vec<u8>> = None;
    let mut buf = vec![0u8; 64 * 1024];
    let mut count = 0usize;
    for entry in archive.entries().map_err(bad_stream)? {
        let mut entry = entry.map_err(bad_stream)?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(UnpackError::Bundle(format!(
                "more than {MAX_ENTRIES} entries"
            )));
        }
        let raw = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        if let Some(what) = entry_kind(kind) {
            return Err(UnpackError::Bundle(format!(
                "tar entry {:?} is a {what}; bundles hold only regular files and directories",
                shown(&raw)
            )));
        }
        let unsafe_path = || {
            UnpackError::Bundle(format!(
                "tar entry {:?} has an unsafe path (absolute, '..', or characters outside A-Z a-z 0-9 . _ + -)",
                shown(&raw)
            ))
        };
        let text = std::str::from_utf8(&raw).map_err(|_| unsafe_path())?;
        let is_dir = kind == tar::EntryType::Directory;
        let text = if is_dir {
            text.strip_suffix('/').unwrap_or(text)
        } else {
            text
        };
        if !is_safe_relative_path(text) {
            return Err(unsafe_path());
        }
        let name = text.to_owned();
        if files.contains_key(&name) || explicit_dirs.contains(&name) {
            return Err(UnpackError::Bundle(format!(
                "tar entry {name:?} appears twice"
            )));
        }
        make_parents(dest, &name, &mut dirs)?;
        if is_dir {
            explicit_dirs.insert(name.clone());
            if dirs.insert(name.clone()) {
                mkdir(&dest.join(&name))?;
            }
            continue;
        }
        if dirs.contains(&name) {
            return Err(UnpackError::Bundle(format!(
                "{name:?} is both a file and a directory"
            )));
        }
        let is_manifest = name == "manifest.json";
        if is_manifest && entry.size() > MAX_MANIFEST_BYTES {
            return Err(UnpackError::Bundle(format!(
                "manifest.json is larger than {MAX_MANIFEST_BYTES} bytes"
            )));
        }
        let mode = if entry.header().mode().unwrap_or(0o644) & 0o100 != 0 {
            0o755
        } else {
            0o644
        };
        let path = dest.join(&name);
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(|e| UnpackError::Io("creating", path.clone(), e))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut kept = Vec::new();
        loop {
            let n = entry.read(&mut buf).map_err(bad_stream)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
            if is_manifest {
                if size > MAX_MANIFEST_BYTES {
                    return Err(UnpackError::Bundle("manifest.json is too large".into()));
                }
                kept.extend_from_slice(&buf[..n]);
            }
            out.write_all(&buf[..n])
                .map_err(|e| UnpackError::Io("writing", path.clone(), e))?;
        }
        out.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| UnpackError::Io("setting mode of", path.clone(), e))?;
        out.sync_all()
            .map_err(|e| UnpackError::Io("syncing", path.clone(), e))?;
        if is_manifest {
            manifest_bytes = Some(kept);
        }
        files.insert(name, (size, hex::encode(hasher.finalize())));
    }
    let manifest_bytes = manifest_bytes
        .ok_or_else(|| UnpackError::Bundle("no manifest.json at its top level".into()))?;
    let manifest = Manifest::parse(&manifest_bytes).map_err(UnpackError::Bundle)?;
    files.remove("manifest.json");
    for f in &manifest.payload {
        let Some((size, sha)) = files.remove(&f.path) else {
            return Err(UnpackError::Bundle(format!(
                "payload {:?} is listed in manifest.json but not in the archive",
                f.path
            )));
        };
        if size != f.size {
            return Err(UnpackError::Bundle(format!(
                "payload {:?} is {size} bytes, manifest.json says {}",
                f.path, f.size
            )));
        }
        if sha != f.sha256 {
            return Err(UnpackError::Bundle(format!(
                "payload {:?} has another SHA-256 than manifest.json says",
                f.path
            )));
        }
    }
    if let Some(extra) = files.keys().next() {
        return Err(UnpackError::Bundle(format!(
            "{extra:?} is in the archive but not listed in manifest.json's payload"
        )));
    }
    // Directories deepest first, then the staging directory itself.
    for d in dirs.iter().rev() {
        let p = dest.join(d);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
            .map_err(|e| UnpackError::Io("setting mode of", p.clone(), e))?;
        super::fsx::sync_dir(&p).map_err(|e| UnpackError::Io("syncing directory", p.clone(), e))?;
    }
    super::fsx::sync_dir(dest)
        .map_err(|e| UnpackError::Io("syncing directory", dest.to_path_buf(), e))?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        for ok in ["a", "a/b.c", "lib/x+y-1.so", "manifest.json"] {
            assert!(is_safe_relative_path(ok), "{ok}");
        }
        for bad in [
            "", "/a", "a/../b", "..", "./a", "a//b", "a/", "-rf", "a\\b", "a b", "a\0b",
        ] {
            assert!(!is_safe_relative_path(bad), "{bad:?}");
        }
        assert!(!is_safe_relative_path(&"a".repeat(256)));
    }

    #[test]
    fn manifests_are_parsed_strictly() {
        let good = serde_json::json!({
            "name": "app", "kind": "patch", "version": "1.2.3", "hardware": ["pos-a"],
            "payload": [{"path": "bin/x", "size": 1, "sha256": "a".repeat(64)}],
            "health": ["bin/x", "--quick"]
        });
        let m = Manifest::parse(&serde_json::to_vec(&good).unwrap()).unwrap();
        assert_eq!(m.semver().unwrap(), semver::Version::new(1, 2, 3));
        let cases = [
            ("name", serde_json::json!("../x")),
            ("version", serde_json::json!("01.2.3")),
            ("kind", serde_json::json!("kernel")),
            ("hardware", serde_json::json!([])),
            ("payload", serde_json::json!([])),
            (
                "payload",
                serde_json::json!([{"path": "manifest.json", "size": 1, "sha256": "a".repeat(64)}]),
            ),
            (
                "payload",
                serde_json::json!([{"path": "x", "size": 1, "sha256": "A".repeat(64)}]),
            ),
            ("health", serde_json::json!([])),
            ("install", serde_json::json!([""])),
            ("extra", serde_json::json!(1)),
            ("migrates_database", serde_json::json!("yes")),
        ];
        for (field, value) in cases {
            let mut v = good.clone();
            v[field] = value.clone();
            assert!(
                Manifest::parse(&serde_json::to_vec(&v).unwrap()).is_err(),
                "{field} = {value}"
            );
        }
    }
}
