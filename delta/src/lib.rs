//! `otter-delta`: the binary delta codec the server (creating) and the agent (applying)
//! share, and the signed names and `custom` fields of delta targets.
//!
//! A delta rebuilds one file (the *new* file: a bundle's uncompressed tar) from another
//! (the *base*: the uncompressed tar of an installed version). It is zstd's "patch-from":
//! the new file is compressed with the whole base as a referenced prefix, long-distance
//! matching on and a window covering base and segment, so unchanged stretches of the base
//! become short matches wherever they moved.
//!
//! # Format (version 1)
//!
//! ```text
//! magic        8 bytes   "OTRDELT1"
//! base_len     u64 BE    length of the base
//! base_sha256  32 bytes  SHA-256 of the base
//! out_len      u64 BE    length of the file it rebuilds
//! out_sha256   32 bytes  SHA-256 of the file it rebuilds
//! segment      u32 BE    bytes of output per frame (the last frame may hold fewer)
//! frames       ceil(out_len / segment) zstd frames, each with its content size, each
//!              compressed with the whole base as its prefix
//! ```
//!
//! Segments bound the decoder's memory to the base plus about one segment: nothing of the
//! output is kept once written. [`apply`] refuses a base whose length or hash differs from
//! the header's, an output longer than the caller's cap (the signed length), frames that
//! decode to more or fewer bytes than their segment, trailing bytes, and an output whose
//! SHA-256 differs from the header's (and from the caller's expected hash).
//!
//! The header's hashes only catch mistakes (wrong base, damaged file); authenticity comes
//! from the signed metadata: the agent downloads a delta only as a signed target and checks
//! the rebuilt file against the signed hash before anything uses it.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zstd::zstd_safe::{self, CCtx, CParameter, DCtx, DParameter, InBuffer, OutBuffer};

/// The first bytes of every delta file.
pub const MAGIC: [u8; 8] = *b"OTRDELT1";
/// Length of the header.
pub const HEADER_LEN: usize = 8 + 8 + 32 + 8 + 32 + 4;
/// Default bytes of output per frame: the decoder's memory beyond the base.
pub const DEFAULT_SEGMENT: u32 = 32 * 1024 * 1024;
/// Smallest segment accepted (keeps a hostile header from asking for millions of frames).
pub const MIN_SEGMENT: u32 = 64 * 1024;
/// Largest segment accepted.
pub const MAX_SEGMENT: u32 = 256 * 1024 * 1024;
/// Default zstd level for creating deltas.
pub const DEFAULT_LEVEL: i32 = 12;
/// The largest window zstd allows (64-bit builds): base plus segment must fit in it.
const MAX_WINDOW_LOG: u32 = 31;
/// The smallest window zstd allows.
const MIN_WINDOW_LOG: u32 = 10;
/// The `format` of the signed delta entries this crate writes and reads.
pub const FORMAT: &str = "otter-delta-1";
/// The suffix of every delta target name.
pub const DELTA_SUFFIX: &str = ".delta";
/// The suffix of every full bundle target name.
pub const BUNDLE_SUFFIX: &str = ".tar.zst";

/// What went wrong creating or applying a delta.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// Reading an input or writing the output failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being read or written.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file does not start with a delta header.
    #[error("not an Otter delta (version 1): {0}")]
    NotADelta(String),
    /// The base given is not the one the delta was made from.
    #[error(
        "the delta was made from a different base (expected {expected_len} bytes with SHA-256 \
         {expected_sha256}, got {got_len} bytes with SHA-256 {got_sha256}); use the exact base \
         version, or the full file"
    )]
    WrongBase {
        /// Length the header names.
        expected_len: u64,
        /// Hash the header names.
        expected_sha256: String,
        /// Length of the base given.
        got_len: u64,
        /// Hash of the base given.
        got_sha256: String,
    },
    /// The delta would write more than the cap allows.
    #[error("the delta rebuilds {len} bytes, more than the allowed {cap}; refused")]
    TooLarge {
        /// What the delta rebuilds (or has written so far).
        len: u64,
        /// The cap.
        cap: u64,
    },
    /// The rebuilt bytes are not the expected ones.
    #[error("the rebuilt file is not the expected one: {0}; it must not be used")]
    Mismatch(String),
    /// The delta's frames are damaged or inconsistent with its header.
    #[error("the delta is damaged: {0}")]
    Corrupt(String),
    /// Base plus segment do not fit in zstd's largest window.
    #[error(
        "the base ({0} bytes) is too large for a delta: base plus segment must stay below 2 GiB"
    )]
    BaseTooLarge(u64),
    /// zstd refused a parameter or failed.
    #[error("zstd {what}: {name}")]
    Zstd {
        /// What was being done.
        what: &'static str,
        /// zstd's error name.
        name: &'static str,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> DeltaError {
    move |source| DeltaError::Io { what, source }
}

fn zerr(what: &'static str) -> impl FnOnce(usize) -> DeltaError {
    move |code| DeltaError::Zstd {
        what,
        name: zstd_safe::get_error_name(code),
    }
}

/// A delta's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Length of the base.
    pub base_len: u64,
    /// SHA-256 of the base.
    pub base_sha256: [u8; 32],
    /// Length of the file the delta rebuilds.
    pub out_len: u64,
    /// SHA-256 of the file the delta rebuilds.
    pub out_sha256: [u8; 32],
    /// Output bytes per frame.
    pub segment: u32,
}

impl Header {
    /// The header's bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(&MAGIC);
        b[8..16].copy_from_slice(&self.base_len.to_be_bytes());
        b[16..48].copy_from_slice(&self.base_sha256);
        b[48..56].copy_from_slice(&self.out_len.to_be_bytes());
        b[56..88].copy_from_slice(&self.out_sha256);
        b[88..92].copy_from_slice(&self.segment.to_be_bytes());
        b
    }

    /// Parses and checks a header.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<Header, DeltaError> {
        if b[..8] != MAGIC {
            return Err(DeltaError::NotADelta(
                "the file does not start with OTRDELT1".into(),
            ));
        }
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(a)
        };
        let mut base_sha256 = [0u8; 32];
        base_sha256.copy_from_slice(&b[16..48]);
        let mut out_sha256 = [0u8; 32];
        out_sha256.copy_from_slice(&b[56..88]);
        let mut seg = [0u8; 4];
        seg.copy_from_slice(&b[88..92]);
        let h = Header {
            base_len: u64_at(8),
            base_sha256,
            out_len: u64_at(48),
            out_sha256,
            segment: u32::from_be_bytes(seg),
        };
        if !(MIN_SEGMENT..=MAX_SEGMENT).contains(&h.segment) {
            return Err(DeltaError::NotADelta(format!(
                "segment {} outside {MIN_SEGMENT}..={MAX_SEGMENT}",
                h.segment
            )));
        }
        window_log(h.base_len, h.segment)?;
        Ok(h)
    }

    /// Reads and checks the header at the start of `r`.
    pub fn read_from(r: &mut dyn Read) -> Result<Header, DeltaError> {
        let mut b = [0u8; HEADER_LEN];
        r.read_exact(&mut b).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                DeltaError::NotADelta("the file is shorter than a delta header".into())
            } else {
                DeltaError::Io {
                    what: "reading the delta header",
                    source: e,
                }
            }
        })?;
        Header::parse(&b)
    }
}

/// The zstd window log that lets every byte of the base be matched from anywhere in a
/// segment.
fn window_log(base_len: u64, segment: u32) -> Result<u32, DeltaError> {
    let span = base_len
        .checked_add(u64::from(segment))
        .filter(|s| *s <= 1u64 << MAX_WINDOW_LOG)
        .ok_or(DeltaError::BaseTooLarge(base_len))?;
    let log = 64 - span.saturating_sub(1).leading_zeros();
    Ok(log.clamp(MIN_WINDOW_LOG, MAX_WINDOW_LOG))
}

/// How [`create`] works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateOptions {
    /// zstd level (1..=19 make sense; higher is smaller and slower).
    pub level: i32,
    /// Output bytes per frame ([`MIN_SEGMENT`]..=[`MAX_SEGMENT`]).
    pub segment: u32,
    /// Segments compressed at once, each on its own thread (each holds a segment of input
    /// and zstd's tables in memory).
    pub threads: usize,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            level: DEFAULT_LEVEL,
            segment: DEFAULT_SEGMENT,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(4),
        }
    }
}

/// What [`create`] or [`apply`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// The delta's header.
    pub header: Header,
    /// Bytes of the delta (header included).
    pub delta_len: u64,
}

fn sha256(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// Reads up to `buf.len()` bytes; fewer only at the end of `r`.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Creates the delta that rebuilds the new file from `base`, writing it to `out`.
/// `open_new` is called twice: the new file is hashed first (the header carries its hash),
/// then compressed segment by segment; it must give the same bytes both times.
pub fn create<R, F, W>(
    base: &[u8],
    mut open_new: F,
    mut out: W,
    opts: &CreateOptions,
) -> Result<Summary, DeltaError>
where
    R: Read,
    F: FnMut() -> io::Result<R>,
    W: Write,
{
    if !(MIN_SEGMENT..=MAX_SEGMENT).contains(&opts.segment) {
        return Err(DeltaError::Corrupt(format!(
            "segment {} outside {MIN_SEGMENT}..={MAX_SEGMENT}",
            opts.segment
        )));
    }
    let base_len = base.len() as u64;
    let wlog = window_log(base_len, opts.segment)?;
    // Pass 1: the new file's length and hash.
    let mut hasher = Sha256::new();
    let mut out_len = 0u64;
    {
        let mut r = open_new().map_err(io_err("opening the new file"))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = r.read(&mut buf).map_err(io_err("reading the new file"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out_len += n as u64;
        }
    }
    let header = Header {
        base_len,
        base_sha256: sha256(base),
        out_len,
        out_sha256: hasher.finalize().into(),
        segment: opts.segment,
    };
    out.write_all(&header.to_bytes())
        .map_err(io_err("writing the delta"))?;
    let mut delta_len = HEADER_LEN as u64;
    // Pass 2: segments, `threads` at a time.
    let mut r = open_new().map_err(io_err("opening the new file"))?;
    let threads = opts.threads.max(1);
    let seg = opts.segment as usize;
    let mut hasher = Sha256::new();
    let mut seen = 0u64;
    let mut done = false;
    while !done {
        let mut batch: Vec<Vec<u8>> = Vec::with_capacity(threads);
        for _ in 0..threads {
            let mut buf = vec![0u8; seg];
            let n = read_full(&mut r, &mut buf).map_err(io_err("reading the new file"))?;
            buf.truncate(n);
            if n > 0 {
                hasher.update(&buf);
                seen += n as u64;
                batch.push(buf);
            }
            if n < seg {
                done = true;
                break;
            }
        }
        let frames: Vec<Result<Vec<u8>, DeltaError>> = std::thread::scope(|s| {
            let handles: Vec<_> = batch
                .iter()
                .map(|b| s.spawn(move || compress_segment(base, b, opts.level, wlog)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(DeltaError::Corrupt("a compression thread failed".into()))
                    })
                })
                .collect()
        });
        for f in frames {
            let f = f?;
            out.write_all(&f).map_err(io_err("writing the delta"))?;
            delta_len += f.len() as u64;
        }
    }
    let again: [u8; 32] = hasher.finalize().into();
    if seen != header.out_len || again != header.out_sha256 {
        return Err(DeltaError::Io {
            what: "reading the new file",
            source: io::Error::other("it changed between the two passes"),
        });
    }
    out.flush().map_err(io_err("writing the delta"))?;
    Ok(Summary { header, delta_len })
}

/// Compresses one segment at level 1 and, unless that frame is already tiny, at `level`,
/// keeping the smaller frame: level 1's match finder picks matches up again right after
/// each changed block (it wins on images whose changes are scattered incompressible
/// blocks), higher levels win on executables.
fn compress_segment(base: &[u8], seg: &[u8], level: i32, wlog: u32) -> Result<Vec<u8>, DeltaError> {
    let fast = compress_at(base, seg, 1, wlog)?;
    // Below 1/32 of its segment, the frame is nearly all matches into the base: a higher
    // level could shave only a fraction of an already tiny frame, at many times the time.
    if level <= 1 || fast.len() < seg.len() / 32 {
        return Ok(fast);
    }
    let strong = compress_at(base, seg, level, wlog)?;
    Ok(if strong.len() < fast.len() {
        strong
    } else {
        fast
    })
}

fn compress_at(base: &[u8], seg: &[u8], level: i32, wlog: u32) -> Result<Vec<u8>, DeltaError> {
    let mut c = CCtx::try_create().ok_or(DeltaError::Zstd {
        what: "creating a compression context",
        name: "out of memory",
    })?;
    c.set_parameter(CParameter::CompressionLevel(level))
        .map_err(zerr("setting the level"))?;
    c.set_parameter(CParameter::WindowLog(wlog))
        .map_err(zerr("setting the window"))?;
    c.set_parameter(CParameter::EnableLongDistanceMatching(true))
        .map_err(zerr("enabling long-distance matching"))?;
    c.set_parameter(CParameter::ContentSizeFlag(true))
        .map_err(zerr("setting the content size flag"))?;
    c.set_parameter(CParameter::ChecksumFlag(false))
        .map_err(zerr("setting the checksum flag"))?;
    c.ref_prefix(base).map_err(zerr("referencing the base"))?;
    let mut frame = Vec::with_capacity(zstd_safe::compress_bound(seg.len()));
    c.compress2(&mut frame, seg)
        .map_err(zerr("compressing a segment"))?;
    Ok(frame)
}

/// What [`apply`] must check beyond the header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyLimits {
    /// Most bytes the output may have (the signed length); `None`: the header's length.
    pub max_len: Option<u64>,
    /// The output's expected SHA-256 (signed); `None`: the header's hash only.
    pub expect_sha256: Option<[u8; 32]>,
}

/// Rebuilds the new file from `base` and the delta read from `delta`, streaming it into
/// `out`. Memory: the base (the caller's) plus about one segment. On any error the bytes
/// written to `out` so far must be discarded.
pub fn apply<R: Read, W: Write>(
    base: &[u8],
    mut delta: R,
    mut out: W,
    limits: &ApplyLimits,
) -> Result<Summary, DeltaError> {
    let header = Header::read_from(&mut delta)?;
    let got_sha = sha256(base);
    if header.base_len != base.len() as u64 || header.base_sha256 != got_sha {
        return Err(DeltaError::WrongBase {
            expected_len: header.base_len,
            expected_sha256: hex::encode(header.base_sha256),
            got_len: base.len() as u64,
            got_sha256: hex::encode(got_sha),
        });
    }
    if let Some(cap) = limits.max_len {
        if header.out_len > cap {
            return Err(DeltaError::TooLarge {
                len: header.out_len,
                cap,
            });
        }
    }
    if let Some(want) = limits.expect_sha256 {
        if want != header.out_sha256 {
            return Err(DeltaError::Mismatch(format!(
                "the delta rebuilds SHA-256 {}, the expected file is {}",
                hex::encode(header.out_sha256),
                hex::encode(want)
            )));
        }
    }
    let wlog = window_log(header.base_len, header.segment)?;
    let mut d = DCtx::try_create().ok_or(DeltaError::Zstd {
        what: "creating a decompression context",
        name: "out of memory",
    })?;
    d.set_parameter(DParameter::WindowLogMax(wlog))
        .map_err(zerr("setting the window limit"))?;
    let mut hasher = Sha256::new();
    let mut inbuf = vec![0u8; 128 * 1024];
    let (mut in_pos, mut in_len) = (0usize, 0usize);
    let mut outbuf = vec![0u8; 256 * 1024];
    let mut delta_len = HEADER_LEN as u64;
    let mut written = 0u64;
    while written < header.out_len {
        let want = (header.out_len - written).min(u64::from(header.segment));
        d.reset(zstd_safe::ResetDirective::SessionOnly)
            .map_err(zerr("starting a frame"))?;
        d.ref_prefix(base).map_err(zerr("referencing the base"))?;
        let mut frame_out = 0u64;
        loop {
            if in_pos == in_len {
                in_len = delta
                    .read(&mut inbuf)
                    .map_err(io_err("reading the delta"))?;
                in_pos = 0;
                delta_len += in_len as u64;
                if in_len == 0 {
                    return Err(DeltaError::Corrupt(format!(
                        "it ends inside a frame, {written} of {} bytes rebuilt",
                        header.out_len
                    )));
                }
            }
            let mut input = InBuffer::around(&inbuf[in_pos..in_len]);
            let mut output = OutBuffer::around(&mut outbuf[..]);
            let hint = d
                .decompress_stream(&mut output, &mut input)
                .map_err(|code| {
                    DeltaError::Corrupt(format!("zstd: {}", zstd_safe::get_error_name(code)))
                })?;
            in_pos += input.pos();
            let n = output.pos();
            if n > 0 {
                frame_out += n as u64;
                if frame_out > want {
                    return Err(DeltaError::Corrupt(format!(
                        "a frame decodes to more than its {want} bytes"
                    )));
                }
                if let Some(cap) = limits.max_len {
                    if written + frame_out > cap {
                        return Err(DeltaError::TooLarge {
                            len: written + frame_out,
                            cap,
                        });
                    }
                }
                hasher.update(&outbuf[..n]);
                out.write_all(&outbuf[..n])
                    .map_err(io_err("writing the rebuilt file"))?;
            }
            // 0: the frame is complete and flushed (a full output buffer may hold more).
            if hint == 0 && n < outbuf.len() {
                break;
            }
        }
        if frame_out != want {
            return Err(DeltaError::Corrupt(format!(
                "a frame decodes to {frame_out} bytes instead of {want}"
            )));
        }
        written += frame_out;
    }
    // Nothing may follow the last frame.
    if in_pos < in_len {
        return Err(DeltaError::Corrupt("bytes after the last frame".into()));
    }
    let mut probe = [0u8; 1];
    if delta
        .read(&mut probe)
        .map_err(io_err("reading the delta"))?
        != 0
    {
        return Err(DeltaError::Corrupt("bytes after the last frame".into()));
    }
    let got: [u8; 32] = hasher.finalize().into();
    if got != header.out_sha256 {
        return Err(DeltaError::Mismatch(format!(
            "SHA-256 {} instead of {}",
            hex::encode(got),
            hex::encode(header.out_sha256)
        )));
    }
    out.flush().map_err(io_err("writing the rebuilt file"))?;
    Ok(Summary { header, delta_len })
}

/// The name of the delta target that rebuilds the full target `full` (a
/// `COMPONENT-VERSION.tar.zst` name) from version `base_version` of the same component:
/// `COMPONENT-VERSION.from-BASEVERSION.delta`. It starts with the full target's stem, so a
/// delegation's path patterns trust the same roles for both.
pub fn delta_target_name(full: &str, base_version: &str) -> Option<String> {
    let stem = full.strip_suffix(BUNDLE_SUFFIX)?;
    Some(format!("{stem}.from-{base_version}{DELTA_SUFFIX}"))
}

/// Whether `name` is a delta target's name (never a full bundle to install).
pub fn is_delta_target_name(name: &str) -> bool {
    name.ends_with(DELTA_SUFFIX) && name.contains(".from-")
}

/// The signed `custom` member of a delta target entry: `{"delta": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaCustom {
    /// What the delta rebuilds, from what.
    pub delta: DeltaEntry,
}

/// The fields of a delta target's `custom.delta`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaEntry {
    /// [`FORMAT`].
    pub format: String,
    /// The full target it stands for.
    pub target: String,
    /// That full target's SHA-256 (binds the delta to one exact signed entry).
    pub target_sha256: String,
    /// SHA-256 of the full target's uncompressed tar: what the delta rebuilds.
    pub tar_sha256: String,
    /// Length of that tar.
    pub tar_length: u64,
    /// The base's full target name.
    pub base: String,
    /// SHA-256 of the base's uncompressed tar.
    pub base_tar_sha256: String,
    /// Length of the base's uncompressed tar.
    pub base_tar_length: u64,
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A 64-digit lowercase hex SHA-256 as bytes.
pub fn sha256_from_hex(s: &str) -> Option<[u8; 32]> {
    if !is_sha256_hex(s) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

impl DeltaCustom {
    /// Parses and checks the `custom` member of the delta target named `name`: strict
    /// fields, the known format, lowercase hex hashes, and the name
    /// `COMPONENT-VERSION.from-BASEVERSION.delta` matching `target` and `base`.
    pub fn parse(name: &str, custom: &serde_json::Value) -> Result<DeltaCustom, String> {
        let c = DeltaCustom::deserialize(custom).map_err(|e| format!("custom: {e}"))?;
        let d = &c.delta;
        if d.format != FORMAT {
            return Err(format!("format {:?} is not {FORMAT}", d.format));
        }
        for (field, h) in [
            ("target_sha256", &d.target_sha256),
            ("tar_sha256", &d.tar_sha256),
            ("base_tar_sha256", &d.base_tar_sha256),
        ] {
            if !is_sha256_hex(h) {
                return Err(format!("{field} is not a lowercase hex SHA-256"));
            }
        }
        let base_stem = d
            .base
            .strip_suffix(BUNDLE_SUFFIX)
            .ok_or_else(|| format!("base {:?} is not a bundle target", d.base))?;
        let base_version = base_stem
            .rsplit_once('-')
            .map(|(_, v)| v)
            .ok_or_else(|| format!("base {:?} is not COMPONENT-VERSION.tar.zst", d.base))?;
        let expected = delta_target_name(&d.target, base_version)
            .ok_or_else(|| format!("target {:?} is not a bundle target", d.target))?;
        if expected != name {
            return Err(format!(
                "the delta target's name {name:?} is not {expected:?} (from its target and base)"
            ));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    fn small() -> CreateOptions {
        CreateOptions {
            level: 3,
            segment: MIN_SEGMENT,
            threads: 2,
        }
    }

    fn make(base: &[u8], new: &[u8], opts: &CreateOptions) -> Vec<u8> {
        let mut d = Vec::new();
        create(base, || Ok(new), &mut d, opts).unwrap();
        d
    }

    fn rebuild(base: &[u8], d: &[u8], l: &ApplyLimits) -> Result<Vec<u8>, DeltaError> {
        let mut out = Vec::new();
        apply(base, d, &mut out, l)?;
        Ok(out)
    }

    /// Deterministic pseudo-random bytes.
    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn round_trip_over_several_segments_is_small() {
        let base = noise(600_000, 1);
        let mut new = base.clone();
        // Change a few blocks, insert some bytes (shifting the rest), append a tail.
        new[1000..1100].copy_from_slice(&noise(100, 2));
        new.splice(300_000..300_000, noise(5000, 3));
        new.extend_from_slice(&noise(10_000, 4));
        let d = make(&base, &new, &small());
        let got = rebuild(&base, &d, &ApplyLimits::default()).unwrap();
        assert_eq!(got, new);
        // Noise does not compress: only the changed bytes may cost anything.
        assert!(d.len() < 30_000, "delta is {} bytes", d.len());
        let h = Header::parse(&d[..HEADER_LEN].try_into().unwrap()).unwrap();
        assert_eq!(h.out_len, new.len() as u64);
        assert_eq!(h.out_sha256, sha256(&new));
    }

    #[test]
    fn empty_files_round_trip() {
        for (b, n) in [(&b""[..], &b""[..]), (b"", b"abc"), (b"abc", b"")] {
            let d = make(b, n, &small());
            assert_eq!(rebuild(b, &d, &ApplyLimits::default()).unwrap(), n);
        }
    }

    #[test]
    fn wrong_base_is_refused() {
        let base = noise(100_000, 5);
        let new = noise(100_000, 6);
        let d = make(&base, &new, &small());
        let mut other = base.clone();
        other[7] ^= 1;
        let e = rebuild(&other, &d, &ApplyLimits::default()).unwrap_err();
        assert!(matches!(e, DeltaError::WrongBase { .. }), "{e}");
        let e = rebuild(&base[1..], &d, &ApplyLimits::default()).unwrap_err();
        assert!(matches!(e, DeltaError::WrongBase { .. }), "{e}");
    }

    #[test]
    fn output_cap_and_expected_hash() {
        let base = noise(50_000, 7);
        let new = noise(200_000, 8);
        let d = make(&base, &new, &small());
        let e = rebuild(
            &base,
            &d,
            &ApplyLimits {
                max_len: Some(199_999),
                expect_sha256: None,
            },
        )
        .unwrap_err();
        assert!(matches!(e, DeltaError::TooLarge { .. }), "{e}");
        let e = rebuild(
            &base,
            &d,
            &ApplyLimits {
                max_len: Some(200_000),
                expect_sha256: Some([0; 32]),
            },
        )
        .unwrap_err();
        assert!(matches!(e, DeltaError::Mismatch(_)), "{e}");
        let ok = rebuild(
            &base,
            &d,
            &ApplyLimits {
                max_len: Some(200_000),
                expect_sha256: Some(sha256(&new)),
            },
        )
        .unwrap();
        assert_eq!(ok, new);
    }

    #[test]
    fn a_lying_header_length_is_caught_while_decoding() {
        let base = noise(10_000, 9);
        let new = noise(100_000, 10);
        let mut d = make(&base, &new, &small());
        // Claim a shorter output: the first frame then decodes to more than its segment
        // or the total stops early; either way it is refused, never silently truncated.
        let mut h = Header::parse(&d[..HEADER_LEN].try_into().unwrap()).unwrap();
        h.out_len = 50_000;
        d[..HEADER_LEN].copy_from_slice(&h.to_bytes());
        let e = rebuild(&base, &d, &ApplyLimits::default()).unwrap_err();
        assert!(matches!(e, DeltaError::Corrupt(_)), "{e}");
    }

    #[test]
    fn damage_is_refused() {
        let base = noise(100_000, 11);
        let mut new = base.clone();
        new[500..600].fill(0);
        let d = make(&base, &new, &small());
        // Truncated.
        let e = rebuild(&base, &d[..d.len() - 1], &ApplyLimits::default()).unwrap_err();
        assert!(matches!(e, DeltaError::Corrupt(_)), "{e}");
        // Trailing garbage.
        let mut t = d.clone();
        t.push(0);
        let e = rebuild(&base, &t, &ApplyLimits::default()).unwrap_err();
        assert!(matches!(e, DeltaError::Corrupt(_)), "{e}");
        // Not a delta.
        let e = rebuild(&base, &b"hello"[..], &ApplyLimits::default()).unwrap_err();
        assert!(matches!(e, DeltaError::NotADelta(_)), "{e}");
        // Every flipped byte after the header is refused or still yields the right file
        // (the final hash check guarantees nothing else comes out).
        for i in (HEADER_LEN..d.len()).step_by(7) {
            let mut x = d.clone();
            x[i] ^= 0x55;
            if let Ok(out) = rebuild(&base, &x, &ApplyLimits::default()) {
                assert_eq!(out, new);
            }
        }
    }

    #[test]
    fn names_and_custom() {
        let n = delta_target_name("pos-app-1.2.0.tar.zst", "1.1.0").unwrap();
        assert_eq!(n, "pos-app-1.2.0.from-1.1.0.delta");
        assert!(is_delta_target_name(&n));
        assert!(!is_delta_target_name("pos-app-1.2.0.tar.zst"));
        let c = serde_json::json!({"delta": {
            "format": FORMAT, "target": "pos-app-1.2.0.tar.zst", "target_sha256": "a".repeat(64),
            "tar_sha256": "b".repeat(64), "tar_length": 10, "base": "pos-app-1.1.0.tar.zst",
            "base_tar_sha256": "c".repeat(64), "base_tar_length": 9,
        }});
        let p = DeltaCustom::parse(&n, &c).unwrap();
        assert_eq!(p.delta.tar_length, 10);
        assert!(DeltaCustom::parse("pos-app-1.2.0.from-1.0.0.delta", &c).is_err());
        let mut extra = c.clone();
        extra["delta"]["x"] = serde_json::json!(1);
        assert!(DeltaCustom::parse(&n, &extra).is_err());
        let mut upper = c.clone();
        upper["delta"]["tar_sha256"] = serde_json::json!("B".repeat(64));
        assert!(DeltaCustom::parse(&n, &upper).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_pair_round_trips(
            base in proptest::collection::vec(any::<u8>(), 0..3000),
            new in proptest::collection::vec(any::<u8>(), 0..3000),
            edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 0..20),
            use_base in any::<bool>(),
        ) {
            // Half the cases derive the new file from the base with edits.
            let new = if use_base && !base.is_empty() {
                let mut n = base.clone();
                for (at, v) in edits {
                    let i = usize::from(at) % n.len();
                    n[i] = v;
                }
                n
            } else {
                new
            };
            let d = make(&base, &new, &small());
            let out = rebuild(&base, &d, &ApplyLimits {
                max_len: Some(new.len() as u64),
                expect_sha256: Some(sha256(&new)),
            }).unwrap();
            prop_assert_eq!(out, new);
        }
    }
}
