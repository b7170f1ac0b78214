//! `otter-server delta create`: builds an Otter delta between two files with the codec
//! publishing uses (for operators and `bench/run.sh`); `otter-agent delta apply` rebuilds.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

/// `delta` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum DeltaCommand {
    /// Create the delta that rebuilds NEW from OLD (raw files, or with --bundles the
    /// uncompressed tars of two .tar.zst bundles, as publishing does). The whole of OLD is
    /// held in memory.
    Create {
        /// The base file (what the terminal has).
        #[arg(long, value_name = "OLD")]
        base: PathBuf,
        /// The file the delta rebuilds.
        #[arg(long, value_name = "NEW")]
        new: PathBuf,
        /// Where to write the delta (written to a temporary file beside it, then renamed).
        #[arg(long, value_name = "DELTA")]
        out: PathBuf,
        /// Treat OLD and NEW as zstd-compressed bundles: the delta is between their tars.
        #[arg(long)]
        bundles: bool,
        /// zstd level, 1 to 19.
        #[arg(long, default_value_t = otter_delta::DEFAULT_LEVEL)]
        level: i32,
        /// Bytes of output per frame (the applier's memory beyond the base).
        #[arg(long, default_value_t = otter_delta::DEFAULT_SEGMENT)]
        segment: u32,
        /// Segments compressed in parallel [default: CPUs, at most 4].
        #[arg(long)]
        threads: Option<usize>,
    },
}

fn open_input(path: &Path, bundle: bool) -> std::io::Result<Box<dyn Read>> {
    let f = BufReader::new(File::open(path)?);
    if bundle {
        let mut d = zstd::stream::read::Decoder::with_buffer(f)?;
        d.window_log_max(27)?;
        Ok(Box::new(d))
    } else {
        Ok(Box::new(f))
    }
}

/// Runs a `delta` subcommand.
pub fn run(cmd: DeltaCommand) -> Result<()> {
    match cmd {
        DeltaCommand::Create {
            base,
            new,
            out,
            bundles,
            level,
            segment,
            threads,
        } => {
            let started = Instant::now();
            let mut base_bytes = Vec::new();
            open_input(&base, bundles)
                .and_then(|mut r| r.read_to_end(&mut base_bytes))
                .with_context(|| format!("reading the base {}", base.display()))?;
            let dir = out
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let tmp = tempfile::Builder::new()
                .prefix(".delta-")
                .tempfile_in(dir)
                .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
            let mut opts = otter_delta::CreateOptions {
                level,
                segment,
                ..Default::default()
            };
            if let Some(t) = threads {
                opts.threads = t.max(1);
            }
            let w = std::io::BufWriter::new(tmp.as_file());
            let summary = otter_delta::create(&base_bytes, || open_input(&new, bundles), w, &opts)
                .with_context(|| {
                    format!(
                        "creating the delta from {} to {}",
                        base.display(),
                        new.display()
                    )
                })?;
            tmp.as_file()
                .sync_all()
                .with_context(|| format!("writing {}", out.display()))?;
            tmp.persist(&out)
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!(
                "delta {}: {} bytes rebuilding {} bytes (SHA-256 {}) from a base of {} bytes, in {:.2} s",
                out.display(),
                summary.delta_len,
                summary.header.out_len,
                hex::encode(summary.header.out_sha256),
                summary.header.base_len,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}
