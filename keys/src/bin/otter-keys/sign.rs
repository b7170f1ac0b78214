//! `otter-keys sign`: add signatures to a metadata file of any role.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use otter_keys::atomic::write_atomic;
use otter_keys::canonical::DEFAULT_MAX_METADATA_BYTES;
use otter_keys::metadata::AnyMetadata;

use crate::passphrase::PassphraseArgs;
use crate::repo;

/// Arguments of `sign`.
#[derive(clap::Args)]
#[command(after_help = "\
Signs the canonical form of the file's `signed` part and adds the signature, replacing an
earlier one by the same key. The contents are not changed: to change them, make a new version
(e.g. `root rotate`). Example, a root key holder adding their signature to a partial root:
  otter-keys sign --key /media/offline/root-3.key ceremony/2.root.json")]
pub struct SignArgs {
    /// Key file(s) to sign with. Repeatable.
    #[arg(long = "key", value_name = "KEYFILE", required = true)]
    keys: Vec<PathBuf>,
    /// Write the result here instead of replacing FILE.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The metadata file.
    file: PathBuf,
}

/// Runs `sign`.
pub fn run(a: SignArgs, secrets: &PassphraseArgs) -> Result<()> {
    let bytes = repo::read_capped(&a.file)?;
    let mut md = AnyMetadata::from_bytes(&bytes, DEFAULT_MAX_METADATA_BYTES)
        .with_context(|| format!("{}", a.file.display()))?;
    let root_keyids = match &md {
        AnyMetadata::Root(r) => Some(r.signed().role("root")?.keyids.clone()),
        _ => None,
    };
    let signers = repo::open_keys(&a.keys, secrets)?;
    if signers.is_empty() {
        bail!("no key given");
    }
    for s in &signers {
        if let Some(ids) = &root_keyids {
            if !ids.contains(&s.key.key_id()) {
                eprintln!(
                    "note: {} ({}) is not a root key of this version; its signature only counts for the previous root",
                    s.label,
                    s.key.key_id().short()
                );
            }
        }
        md.sign(&s.key);
    }
    let out = a.out.as_ref().unwrap_or(&a.file);
    write_atomic(out, &md.to_bytes(), 0o644)
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "signed {} ({} v{}) with {} key(s); it now has {} signature(s)",
        out.display(),
        md.role_type(),
        md.version(),
        a.keys.len(),
        md.signatures().len()
    );
    Ok(())
}
