//! `otter-agent delta apply`: rebuilds a file from a base and an Otter delta with the
//! codec the update flow uses (operators, `bench/run.sh`); the output appears only once it
//! verified.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, Context, Result};

/// `delta` subcommands.
#[derive(clap::Subcommand)]
pub enum DeltaCommand {
    /// Rebuild NEW from OLD and a delta made by `otter-server delta create`. The base's
    /// length and hash must be the delta's; the output is capped at --expect-length and
    /// checked against --expect-sha256 (and the delta's own hash), and appears at OUT only
    /// once it verified. Memory: the whole base plus about one segment.
    Apply {
        /// The base file (with --bundles: a .tar.zst bundle, whose tar is the base).
        #[arg(long, value_name = "OLD")]
        base: PathBuf,
        /// The delta.
        #[arg(long = "delta", value_name = "D")]
        delta: PathBuf,
        /// Where the rebuilt file goes.
        #[arg(long, value_name = "NEW")]
        out: PathBuf,
        /// The base is a zstd-compressed bundle (the output is its new tar).
        #[arg(long)]
        bundles: bool,
        /// The SHA-256 (hex) the rebuilt file must have (e.g. the signed one).
        #[arg(long, value_name = "H")]
        expect_sha256: Option<String>,
        /// The most bytes the rebuilt file may have (e.g. the signed length).
        #[arg(long, value_name = "N")]
        expect_length: Option<u64>,
    },
}

fn read_base(path: &Path, bundle: bool) -> std::io::Result<Vec<u8>> {
    let f = BufReader::new(File::open(path)?);
    let mut out = Vec::new();
    if bundle {
        let mut d = zstd::stream::read::Decoder::with_buffer(f)?;
        d.window_log_max(27)?;
        d.read_to_end(&mut out)?;
    } else {
        let mut f = f;
        f.read_to_end(&mut out)?;
    }
    Ok(out)
}

/// Runs a `delta` subcommand.
pub fn run(cmd: DeltaCommand) -> Result<()> {
    let DeltaCommand::Apply {
        base,
        delta,
        out,
        bundles,
        expect_sha256,
        expect_length,
    } = cmd;
    let started = Instant::now();
    let expect = expect_sha256
        .map(|h| {
            otter_delta::sha256_from_hex(&h.to_ascii_lowercase())
                .ok_or_else(|| anyhow!("--expect-sha256 {h:?} is not a hex SHA-256"))
        })
        .transpose()?;
    let base_bytes = read_base(&base, bundles)
        .with_context(|| format!("reading the base {}", base.display()))?;
    let d = BufReader::new(
        File::open(&delta).with_context(|| format!("opening the delta {}", delta.display()))?,
    );
    let name = out
        .file_name()
        .ok_or_else(|| anyhow!("--out {} names no file", out.display()))?;
    let tmp = out.with_file_name(format!(
        ".{}.part-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let applied = otter_delta::apply(
        &base_bytes,
        d,
        BufWriter::new(&file),
        &otter_delta::ApplyLimits {
            max_len: expect_length,
            expect_sha256: expect,
        },
    )
    .with_context(|| format!("applying {} to {}", delta.display(), base.display()))
    .and_then(|s| {
        file.sync_all()
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &out).with_context(|| format!("writing {}", out.display()))?;
        Ok(s)
    });
    let summary = match applied {
        Ok(s) => s,
        Err(e) => {
            // Nothing unverified is left behind.
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    eprintln!(
        "rebuilt {}: {} bytes, SHA-256 {} (verified), from a {}-byte delta in {:.2} s",
        out.display(),
        summary.header.out_len,
        hex::encode(summary.header.out_sha256),
        summary.delta_len,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
