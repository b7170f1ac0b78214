//! `otter-keys verify`: check metadata files against a trusted root, as a TUF client would.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use otter_keys::canonical::DEFAULT_MAX_METADATA_BYTES;
use otter_keys::metadata::{AnyMetadata, Metadata, Root, Targets};
use otter_keys::time::UtcTime;

use crate::repo;

/// Arguments of `verify`.
#[derive(clap::Args)]
#[command(after_help = "\
Files are checked in the order given. A root file whose version is the trusted version + 1 is
checked as a rotation (signed by a threshold of the trusted root's root keys AND of its own)
and becomes the trusted root for the files after it. Other files (targets, snapshot,
timestamp) are checked against the trusted root's keys for their role; with --delegator and
--role, a delegated targets role is checked against the keys its delegator names.

Examples:
  otter-keys verify --root 1.root.json 2.root.json 3.root.json timestamp.json
  otter-keys verify --root root.json --delegator targets.json --role card-reader card-reader.json

Exit status 0 when every file verifies, 1 otherwise.")]
pub struct VerifyArgs {
    /// The trusted root metadata (obtained out of band).
    #[arg(long, value_name = "ROOT_JSON")]
    root: PathBuf,
    /// Targets metadata that delegates to --role (itself verified against the root first).
    #[arg(long, value_name = "TARGETS_JSON", requires = "role")]
    delegator: Option<PathBuf>,
    /// Name of the delegated role the files are checked as.
    #[arg(long, value_name = "NAME", requires = "delegator")]
    role: Option<String>,
    /// Do not refuse expired metadata.
    #[arg(long)]
    allow_expired: bool,
    /// Reference time for expiry (YYYY-MM-DDTHH:MM:SSZ; default now).
    #[arg(long, value_name = "TIME")]
    at: Option<UtcTime>,
    /// The metadata files to verify.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// Runs `verify`.
pub fn run(a: VerifyArgs) -> Result<()> {
    let now = a.at.unwrap_or_else(UtcTime::now);
    let mut trusted: Metadata<Root> = repo::read_metadata(&a.root)?;
    let n = trusted.verify_self().with_context(|| {
        format!(
            "trusted root {} does not verify by itself",
            a.root.display()
        )
    })?;
    println!(
        "ok: {}: root v{} ({n} valid root signature(s))",
        a.root.display(),
        trusted.signed().version
    );

    let delegator: Option<(Metadata<Targets>, String)> = match (&a.delegator, &a.role) {
        (Some(path), Some(role)) => {
            let d: Metadata<Targets> = repo::read_metadata(path)?;
            trusted
                .verify_by(&d, "targets")
                .with_context(|| format!("delegator {}", path.display()))?;
            Some((d, role.clone()))
        }
        _ => None,
    };

    for path in &a.files {
        let bytes = repo::read_capped(path)?;
        let md = AnyMetadata::from_bytes(&bytes, DEFAULT_MAX_METADATA_BYTES)
            .with_context(|| format!("{}", path.display()))?;
        let shown = path.display();
        match md {
            AnyMetadata::Root(new) => {
                let tv = trusted.signed().version;
                let nv = new.signed().version;
                if nv == tv {
                    new.verify_self().with_context(|| format!("{shown}"))?;
                    if new.canonical_signed() != trusted.canonical_signed() {
                        bail!(
                            "{shown}: root v{nv} differs from the trusted root of the same version"
                        );
                    }
                    println!("ok: {shown}: same root v{nv}");
                } else {
                    trusted
                        .verify_successor(&new)
                        .with_context(|| format!("{shown}: root rotation v{tv} -> v{nv}"))?;
                    println!("ok: {shown}: root v{nv}, rotation from v{tv} verified");
                    trusted = new;
                }
            }
            other => {
                let valid = match &delegator {
                    Some((d, role)) => verify_delegated(d, role, &other)
                        .with_context(|| format!("{shown}: delegated role {role:?}"))?,
                    None => {
                        verify_top_level(&trusted, &other).with_context(|| format!("{shown}"))?
                    }
                };
                if !a.allow_expired {
                    otter_keys::metadata::check_expiry(other.role_type(), other.expires(), now)
                        .with_context(|| format!("{shown}"))?;
                }
                println!(
                    "ok: {shown}: {} v{} ({valid} valid signature(s), expires {})",
                    other.role_type(),
                    other.version(),
                    other.expires()
                );
            }
        }
    }
    if !a.allow_expired {
        trusted
            .check_expiry(now)
            .context("the newest trusted root")?;
    }
    Ok(())
}

fn verify_top_level(root: &Metadata<Root>, md: &AnyMetadata) -> Result<u32> {
    Ok(match md {
        AnyMetadata::Targets(m) => root.verify_by(m, "targets")?,
        AnyMetadata::Snapshot(m) => root.verify_by(m, "snapshot")?,
        AnyMetadata::Timestamp(m) => root.verify_by(m, "timestamp")?,
        AnyMetadata::Root(_) => bail!("root files are checked as rotations"),
    })
}

fn verify_delegated(delegator: &Metadata<Targets>, role: &str, md: &AnyMetadata) -> Result<u32> {
    let AnyMetadata::Targets(m) = md else {
        bail!(
            "a delegated role's metadata must be of type targets, not {}",
            md.role_type()
        );
    };
    let delegations = delegator
        .signed()
        .delegations
        .as_ref()
        .context("the delegator delegates to no role")?;
    let d = delegations
        .roles()
        .iter()
        .find(|r| r.name == role)
        .with_context(|| format!("the delegator does not delegate to {role:?}"))?;
    Ok(otter_keys::metadata::verify_threshold(
        role,
        m.canonical_signed(),
        m.signatures(),
        &delegations.keys,
        &d.keyids,
        d.threshold,
    )?)
}
