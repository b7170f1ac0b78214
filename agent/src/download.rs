//! Resumable, verified target downloads: a target is streamed into
//! `DIR/<sha256>.<name>.part` with its hashes computed on the way, never past the signed
//! length, resumed with an HTTP `Range` request after a cut connection or a restart, and
//! renamed to `DIR/<sha256>.<name>` only once its length and every signed hash (`sha256`,
//! and `sha512` when signed) match the trusted metadata.
//!
//! Resuming re-hashes the bytes already in the part file (they are on disk, not in memory),
//! then asks the mirror for the rest. The mirror may answer:
//! - `206` from exactly the asked offset: the rest is appended;
//! - `200`: it ignored the range, so the part is truncated and the whole file is taken from
//!   this answer, from byte 0 (a clean restart, never a mix);
//! - `416`: it has nothing past the offset, so the part is discarded and the download starts
//!   again from byte 0.
//!
//! A body longer than the signed length (endless data) or bytes whose hashes differ from the
//! signed ones, or a body that ends cleanly before the signed length, discard the part and
//! fail; a cut connection (a transport error) keeps it for the next attempt.
//! A progress bar is drawn only when standard error is a terminal.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use otter_keys::hash::{HashError, MultiHasher};
use otter_keys::metadata::TargetFile;

use crate::tuf::{quote, FetchError, Fetcher, RangedBody};

/// The suffix of unfinished downloads.
pub const PART_SUFFIX: &str = ".part";

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The mirror could not be reached, refused, or sent more than the signed length.
    #[error("downloading {target}: {source}")]
    Fetch {
        /// The target name.
        target: String,
        /// The cause.
        #[source]
        source: FetchError,
    },
    /// The downloaded bytes are not the signed ones (the part file was discarded).
    #[error("downloading {target}: the file is not the one signed in the trusted metadata ({source}); it was discarded")]
    Verify {
        /// The target name.
        target: String,
        /// The mismatch.
        #[source]
        source: HashError,
    },
    /// The download was asked to stop (the part is kept and resumed next time).
    #[error("downloading {target}: stopped on request after {kept} bytes; the part is kept and resumed next time")]
    Cancelled {
        /// The target name.
        target: String,
        /// Bytes in the part.
        kept: u64,
    },
    /// The signed entry has no sha256 hash (the download's file name needs it).
    #[error("target {0}: its signed entry has no sha256 hash")]
    NoSha256(String),
    /// A local file could not be read or written (full disk, permissions, ...).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl DownloadError {
    /// Whether another attempt may succeed (a cut connection or a transport failure),
    /// as opposed to bytes that are wrong or a file the mirror does not have.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            DownloadError::Fetch {
                source: FetchError::Transport { .. },
                ..
            }
        )
    }

    /// Whether the error is a security event: the mirror served bytes that differ from the
    /// signed metadata, or more than the signed length.
    pub fn is_security_event(&self) -> bool {
        matches!(
            self,
            DownloadError::Verify { .. }
                | DownloadError::Fetch {
                    source: FetchError::TooLarge { .. },
                    ..
                }
        )
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> DownloadError + '_ {
    move |source| DownloadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How downloads behave.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Attempts within one call: after a cut connection the next attempt resumes.
    pub attempts: u32,
    /// Pause between attempts.
    pub retry_delay: Duration,
    /// Draw a progress bar (only ever when standard error is a terminal).
    pub progress: bool,
    /// When set (e.g. by SIGTERM), the download stops at the next chunk, keeping its part.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            attempts: 3,
            retry_delay: Duration::from_secs(2),
            progress: true,
            cancel: None,
        }
    }
}

/// What a finished download did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    /// The verified file.
    pub path: PathBuf,
    /// The byte offset the last request resumed from (0: from the start).
    pub resumed_from: u64,
    /// Bytes received from the mirror in this call.
    pub fetched: u64,
    /// Whether a part had to be thrown away and restarted (the mirror ignored a range or
    /// could not satisfy it).
    pub restarted: bool,
    /// Whether the verified file was already there and nothing was fetched.
    pub cached: bool,
}

/// The file name of a target's download: `<sha256>.<quoted name>`.
pub fn file_name(target: &str, info: &TargetFile) -> Result<String, DownloadError> {
    let sha = info
        .hashes
        .get("sha256")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| DownloadError::NoSha256(target.to_string()))?;
    Ok(format!("{}.{}", sha.to_ascii_lowercase(), quote(target)))
}

/// Downloads `target` (signed entry `info`) from `url` into `dir` (see the module
/// documentation); returns the verified file `dir/<sha256>.<name>`.
pub fn download_target<F: Fetcher + ?Sized>(
    fetcher: &F,
    url: &str,
    target: &str,
    info: &TargetFile,
    dir: &Path,
    opts: &DownloadOptions,
) -> Result<Downloaded, DownloadError> {
    let name = file_name(target, info)?;
    create_dir(dir)?;
    let final_path = dir.join(&name);
    let part_path = dir.join(format!("{name}{PART_SUFFIX}"));
    download_to(fetcher, url, target, info, &final_path, &part_path, opts)
}

fn create_dir(dir: &Path) -> Result<(), DownloadError> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(io_err(dir))
}

/// Downloads `target` from `url` through the part file `part_path`, renamed to
/// `final_path` once verified. A `final_path` that already holds the signed bytes is kept
/// and nothing is fetched.
pub fn download_to<F: Fetcher + ?Sized>(
    fetcher: &F,
    url: &str,
    target: &str,
    info: &TargetFile,
    final_path: &Path,
    part_path: &Path,
    opts: &DownloadOptions,
) -> Result<Downloaded, DownloadError> {
    if verified_file(final_path, info).is_some() {
        return Ok(Downloaded {
            path: final_path.to_path_buf(),
            resumed_from: 0,
            fetched: 0,
            restarted: false,
            cached: true,
        });
    }
    let attempts = opts.attempts.max(1);
    let mut restarted = false;
    let mut fetched = 0;
    let mut attempt = 0;
    let mut fresh_retry = false;
    let cancelled = || {
        opts.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst))
    };
    loop {
        attempt += 1;
        if cancelled() {
            return Err(DownloadError::Cancelled {
                target: target.into(),
                kept: std::fs::metadata(part_path).map(|m| m.len()).unwrap_or(0),
            });
        }
        let mut once = Once {
            fetcher,
            url,
            target,
            info,
            part_path,
            progress: opts.progress,
            cancel: opts.cancel.as_deref(),
            restarted: false,
            fetched: 0,
            resumed: false,
        };
        let result = once.run();
        restarted |= once.restarted;
        let resumed = once.resumed;
        fetched += once.fetched;
        match result {
            Ok(resumed_from) => {
                let dir = final_path.parent().unwrap_or(Path::new("."));
                std::fs::rename(part_path, final_path).map_err(io_err(final_path))?;
                otter_keys::atomic::sync_dir(dir).map_err(io_err(dir))?;
                return Ok(Downloaded {
                    path: final_path.to_path_buf(),
                    resumed_from,
                    fetched,
                    restarted,
                    cached: false,
                });
            }
            // Bytes kept from an earlier attempt did not verify (the mirror's file changed,
            // or the part was damaged): they are discarded; start once more from byte 0.
            Err(DownloadError::Verify { .. }) if resumed && !fresh_retry => {
                fresh_retry = true;
                restarted = true;
            }
            Err(e) if e.is_transient() && attempt < attempts => {
                std::thread::sleep(opts.retry_delay);
            }
            Err(e) => return Err(e),
        }
    }
}

/// `path` if it holds exactly the signed length and hashes.
pub fn verified_file(path: &Path, info: &TargetFile) -> Option<PathBuf> {
    if std::fs::metadata(path).ok()?.len() != info.length {
        return None;
    }
    let mut h = MultiHasher::for_hashes(&info.hashes).ok()?;
    let mut f = File::open(path).ok()?;
    hash_into(&mut f, &mut h, info.length).ok()?;
    h.finish(Some(info.length), &info.hashes).ok()?;
    Some(path.to_path_buf())
}

/// Feeds at most `len` bytes of `r` to `h`; returns how many there were.
fn hash_into(r: &mut dyn Read, h: &mut MultiHasher, len: u64) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut r = r.take(len);
    let mut n_total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(n_total);
        }
        h.update(&buf[..n]);
        n_total += n as u64;
    }
}

/// One request of a download.
struct Once<'a, F: Fetcher + ?Sized> {
    fetcher: &'a F,
    url: &'a str,
    target: &'a str,
    info: &'a TargetFile,
    part_path: &'a Path,
    progress: bool,
    cancel: Option<&'a AtomicBool>,
    restarted: bool,
    fetched: u64,
    /// Whether bytes of an earlier attempt were used.
    resumed: bool,
}

impl<F: Fetcher + ?Sized> Once<'_, F> {
    fn hasher(&self) -> Result<MultiHasher, DownloadError> {
        MultiHasher::for_hashes(&self.info.hashes).map_err(|source| DownloadError::Verify {
            target: self.target.into(),
            source,
        })
    }

    fn discard(&self) -> Result<(), DownloadError> {
        match std::fs::remove_file(self.part_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(self.part_path)(e)),
            _ => Ok(()),
        }
    }

    fn fetch_err(&self, source: FetchError) -> DownloadError {
        DownloadError::Fetch {
            target: self.target.into(),
            source,
        }
    }

    /// The part file's verified prefix: its length and a hasher fed with it.
    fn existing_part(&mut self) -> Result<(u64, MultiHasher), DownloadError> {
        let mut hasher = self.hasher()?;
        let len = match std::fs::metadata(self.part_path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, hasher)),
            Err(e) => return Err(io_err(self.part_path)(e)),
        };
        if len == 0 || len > self.info.length {
            self.discard()?;
            return Ok((0, hasher));
        }
        let mut f = File::open(self.part_path).map_err(io_err(self.part_path))?;
        let n = hash_into(&mut f, &mut hasher, len).map_err(io_err(self.part_path))?;
        if n != len {
            self.discard()?;
            return Ok((0, self.hasher()?));
        }
        Ok((len, hasher))
    }

    /// Runs one request; `Ok(offset)` once the part holds exactly the signed bytes.
    fn run(&mut self) -> Result<u64, DownloadError> {
        let (mut offset, mut hasher) = self.existing_part()?;
        self.resumed = offset > 0;
        if offset == self.info.length {
            // A complete part from an earlier run (e.g. a crash before the rename).
            return match hasher.finish(Some(self.info.length), &self.info.hashes) {
                Ok(()) => Ok(offset),
                Err(source) => {
                    self.discard()?;
                    Err(DownloadError::Verify {
                        target: self.target.into(),
                        source,
                    })
                }
            };
        }
        let mut body = self
            .fetcher
            .open_from(self.url, offset, self.info.length)
            .map_err(|e| self.fetch_err(e))?;
        if matches!(body, RangedBody::NotSatisfiable) {
            // The mirror has nothing past our part: it is not a prefix of its file.
            self.discard()?;
            self.restarted = true;
            offset = 0;
            hasher = self.hasher()?;
            body = self
                .fetcher
                .open_from(self.url, 0, self.info.length)
                .map_err(|e| self.fetch_err(e))?;
        }
        let (reader, file) = match body {
            RangedBody::Partial(r) if offset > 0 => {
                let f = OpenOptions::new()
                    .append(true)
                    .open(self.part_path)
                    .map_err(io_err(self.part_path))?;
                (r, f)
            }
            RangedBody::Partial(r) | RangedBody::Whole(r) => {
                if offset > 0 {
                    // The range was ignored: start cleanly from byte 0 with this answer.
                    self.restarted = true;
                    offset = 0;
                    hasher = self.hasher()?;
                }
                (r, create_part(self.part_path)?)
            }
            RangedBody::NotSatisfiable => {
                return Err(self.fetch_err(FetchError::Status {
                    url: self.url.to_string(),
                    status: 416,
                }))
            }
        };
        let resumed_from = offset;
        let bar = self.bar(offset);
        let copied = self.copy(reader, file, &mut hasher, offset, bar.as_ref());
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        let total = copied?;
        if total < self.info.length {
            // The body ended cleanly (a cut connection is a transport error): the mirror's
            // file is shorter than the signed one.
            self.discard()?;
            return Err(DownloadError::Verify {
                target: self.target.into(),
                source: HashError::Length {
                    expected: self.info.length,
                    found: total,
                },
            });
        }
        if let Err(source) = hasher.finish(Some(self.info.length), &self.info.hashes) {
            self.discard()?;
            return Err(DownloadError::Verify {
                target: self.target.into(),
                source,
            });
        }
        Ok(resumed_from)
    }

    fn bar(&self, offset: u64) -> Option<indicatif::ProgressBar> {
        if !self.progress || !std::io::stderr().is_terminal() {
            return None;
        }
        let b = indicatif::ProgressBar::new(self.info.length);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            b.set_style(style);
        }
        b.set_message(format!("downloading {}", self.target));
        b.set_position(offset);
        Some(b)
    }

    /// Appends the body to the part, hashing it; returns the part's length. Bytes past the
    /// signed length discard the part. Whatever arrived before a cut is flushed to disk.
    fn copy(
        &mut self,
        mut reader: Box<dyn Read>,
        mut file: File,
        hasher: &mut MultiHasher,
        offset: u64,
        bar: Option<&indicatif::ProgressBar>,
    ) -> Result<u64, DownloadError> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = offset;
        let result = loop {
            if self.cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
                break Err(DownloadError::Cancelled {
                    target: self.target.into(),
                    kept: total,
                });
            }
            let n = match reader.read(&mut buf) {
                Ok(0) => break Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    break Err(self.fetch_err(FetchError::Transport {
                        url: self.url.to_string(),
                        message: format!("reading the body: {e}"),
                    }))
                }
            };
            if total.saturating_add(n as u64) > self.info.length {
                break Err(self.fetch_err(FetchError::TooLarge {
                    url: self.url.to_string(),
                    max: self.info.length,
                }));
            }
            if let Err(e) = file.write_all(&buf[..n]) {
                break Err(io_err(self.part_path)(e));
            }
            hasher.update(&buf[..n]);
            total += n as u64;
            self.fetched += n as u64;
            if let Some(b) = bar {
                b.inc(n as u64);
            }
        };
        match &result {
            Err(e) if e.is_security_event() => {
                drop(file);
                self.discard()?;
            }
            _ => file.sync_all().map_err(io_err(self.part_path))?,
        }
        result
    }
}

fn create_part(path: &Path) -> Result<File, DownloadError> {
    let mut o = OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path).map_err(io_err(path))
}

/// An unfinished download in a downloads dir.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PendingDownload {
    /// The part file's name (`<sha256>.<name>.part`).
    pub file: String,
    /// Bytes already there.
    pub bytes: u64,
}

/// Unfinished downloads in `dir` (none if it does not exist), sorted by name.
pub fn pending(dir: &Path) -> Result<Vec<PendingDownload>, DownloadError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(PART_SUFFIX) {
            let bytes = entry.metadata().map_err(io_err(&entry.path()))?.len();
            out.push(PendingDownload { file: name, bytes });
        }
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(out)
}

/// Removes every file of `dir` except those named in `keep` (after an install, finished
/// downloads of other versions are of no use). Returns how many were removed.
pub fn prune(dir: &Path, keep: &[&Path]) -> Result<usize, DownloadError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        if keep.iter().any(|k| *k == path) || !entry.file_type().map_err(io_err(&path))?.is_file() {
            continue;
        }
        std::fs::remove_file(&path).map_err(io_err(&path))?;
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn info(data: &[u8]) -> TargetFile {
        TargetFile {
            length: data.len() as u64,
            hashes: otter_keys::hash::hashes_of(data),
            extra: Default::default(),
        }
    }

    #[test]
    fn file_names_need_a_sha256_and_are_quoted() {
        let i = info(b"abc");
        let name = file_name("fw/a b-1.0.0.tar.zst", &i).unwrap();
        assert!(name.starts_with(&i.hashes["sha256"]));
        assert!(name.ends_with(".fw%2Fa%20b-1.0.0.tar.zst"), "{name}");
        let mut no_sha = i.clone();
        no_sha.hashes = BTreeMap::from([("sha512".into(), "00".into())]);
        assert!(matches!(
            file_name("x", &no_sha),
            Err(DownloadError::NoSha256(_))
        ));
    }

    #[test]
    fn file_urls_resume_and_verify() {
        let tmp = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let src = tmp.path().join("src.bin");
        std::fs::write(&src, &data).unwrap();
        let i = info(&data);
        let dir = tmp.path().join("downloads");
        let name = file_name("t.tar.zst", &i).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.part")), &data[..70_000]).unwrap();
        let fetcher =
            crate::tuf::HttpFetcher::new(Duration::from_secs(1), Duration::from_secs(5)).unwrap();
        let url = format!("file://{}", src.display());
        let opts = DownloadOptions {
            progress: false,
            ..DownloadOptions::default()
        };
        let d = download_target(&fetcher, &url, "t.tar.zst", &i, &dir, &opts).unwrap();
        assert_eq!(d.resumed_from, 70_000);
        assert_eq!(d.fetched, 130_000);
        assert_eq!(std::fs::read(&d.path).unwrap(), data);
        assert!(pending(&dir).unwrap().is_empty());
        let again = download_target(&fetcher, &url, "t.tar.zst", &i, &dir, &opts).unwrap();
        assert!(again.cached);
        // A part that is not a prefix of the file fails verification, is discarded, and the
        // file is fetched once more from byte 0.
        std::fs::remove_file(&d.path).unwrap();
        let mut wrong = data[..50_000].to_vec();
        wrong[10] ^= 1;
        std::fs::write(dir.join(format!("{name}.part")), &wrong).unwrap();
        let d = download_target(&fetcher, &url, "t.tar.zst", &i, &dir, &opts).unwrap();
        assert!(
            d.restarted,
            "the bad part was discarded and the file fetched anew"
        );
        assert_eq!(d.resumed_from, 0);
        assert_eq!(std::fs::read(&d.path).unwrap(), data);
        assert!(pending(&dir).unwrap().is_empty());
        // A file that is wrong from byte 0 on fails, and leaves nothing.
        std::fs::remove_file(&d.path).unwrap();
        let other = i.clone();
        let mut wrong_all = data.clone();
        wrong_all[0] ^= 1;
        std::fs::write(&src, &wrong_all).unwrap();
        let err = download_target(&fetcher, &url, "t.tar.zst", &other, &dir, &opts).unwrap_err();
        assert!(matches!(err, DownloadError::Verify { .. }), "{err}");
        assert!(std::fs::read_dir(&dir).unwrap().next().is_none());
    }
}
