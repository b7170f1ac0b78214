//! File system steps of the apply engine, each durable when it returns: directory fsync,
//! the `current` symlink swap by `rename(2)`, and retiring a directory (atomic rename into
//! `trash/`, then removal).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Name of the active-version symlink in a component directory.
pub(crate) const CURRENT: &str = "current";
/// Temporary symlink renamed over [`CURRENT`].
pub(crate) const CURRENT_TMP: &str = ".current.tmp";

/// Fsyncs a directory, so that entries created, renamed or removed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Where `component_dir/current` points (`None`: no link).
pub(crate) fn read_current(component_dir: &Path) -> io::Result<Option<String>> {
    match fs::read_link(component_dir.join(CURRENT)) {
        Ok(t) => Ok(Some(t.to_string_lossy().into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Makes `component_dir/current` point to `version` (`None`: removes it): a new symlink is
/// created under a temporary name and renamed over the old one, then the directory is
/// fsynced. Idempotent.
pub(crate) fn switch_current(component_dir: &Path, version: Option<&str>) -> io::Result<()> {
    let link = component_dir.join(CURRENT);
    match version {
        Some(v) => {
            let tmp = component_dir.join(CURRENT_TMP);
            remove_file_if_any(&tmp)?;
            std::os::unix::fs::symlink(v, &tmp)?;
            fs::rename(&tmp, &link)?;
        }
        None => remove_file_if_any(&link)?,
    }
    sync_dir(component_dir)
}

/// Removes a file or symlink; a missing one is fine.
pub(crate) fn remove_file_if_any(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Moves `dir` (if present) into `trash` under `unique` in one `rename(2)` (both parents
/// fsynced), then deletes it. A crash leaves it either whole in place or in `trash`.
pub(crate) fn retire_dir(dir: &Path, trash: &Path, unique: &str) -> io::Result<()> {
    if fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    fs::create_dir_all(trash)?;
    let to = trash.join(unique);
    if fs::symlink_metadata(&to).is_ok() {
        fs::remove_dir_all(&to)?;
    }
    fs::rename(dir, &to)?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    sync_dir(trash)?;
    fs::remove_dir_all(&to)?;
    sync_dir(trash)
}

/// Deletes everything inside `dir` (created if missing), then fsyncs it.
pub(crate) fn empty_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    for e in fs::read_dir(dir)? {
        let p: PathBuf = e?.path();
        if fs::symlink_metadata(&p)?.is_dir() {
            fs::remove_dir_all(&p)?;
        } else {
            fs::remove_file(&p)?;
        }
    }
    sync_dir(dir)
}
