//! `otter-keys backup reencrypt`: opens a terminal's backup with the fleet recovery identity
//! (a dead terminal, or any terminal of a write-only fleet), checks its manifest chain with
//! that terminal's device key, and re-encrypts every manifest body and pack for another
//! terminal, which then restores it through the server (`otter-server backups
//! import-transfer`, `otter-agent restore --from-server-transfer`) or from the directory
//! (`otter-agent restore --from-transfer DIR`).
//!
//! Output layout (the agent's local backup store, plus the re-encrypted bodies):
//!
//! ```text
//! OUT/transfer.json                                  device id and public key, sequences
//! OUT/manifests/DEVICE/00000000000000000001.manifest the signed manifests, unchanged
//! OUT/reencrypted/DEVICE/00000000000000000001.body   each body, re-encrypted
//! OUT/packs/ab/abcdef…                               each pack, re-encrypted, under its
//!                                                    original id
//! ```
//!
//! The directory is written beside OUT under a temporary name and renamed at the end: an
//! interrupted run leaves no OUT.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use otter_keys::age::x25519::{Identity, Recipient};
use otter_keys::atomic::write_atomic;
use otter_keys::crypto::PublicKey;
use otter_keys::envelope::{reencrypt, ManifestHeader, PackRef, SignedManifest};
use otter_keys::keyfile;

use crate::passphrase::PassphraseArgs;

/// Largest manifest or pack read.
const MAX_OBJECT: usize = 512 * 1024 * 1024;

/// Subcommands of `backup`.
#[derive(clap::Subcommand)]
pub enum BackupCommand {
    /// Re-encrypt a terminal's backup for another terminal (a replacement), with the fleet
    /// recovery identity; the chain is checked with the old terminal's device key first.
    #[command(after_help = "\
FROM is the old device's backup as the server stores it: the directory `otter-server backups
export --device DEVICE --out DIR` writes through the API, or DATA_DIR/store/backups/DEVICE (with
packs/ and manifests/), or a copy of that prefix of an S3 bucket. The device's public key is in
`otter-server devices list`; the new terminal's backup recipient (age1...) too, once it
enrolled. The recovery identity is a file from `otter-keys recovery-key new` (its passphrase is
asked for, or read from --passphrase-file / OTTER_KEYS_PASSPHRASE) or a plain age identity
file. Every body and pack is encrypted to the new recipients and the recovery key again.

Then import OUT for the new terminal through the server and restore it there:
  otter-server backups import-transfer --server URL --device NEW_DEVICE --from OUT
  otter-agent restore --from-server-transfer latest --latest --stop-command ... --start-command ...
or, without the server, copy OUT to the new terminal and run:
  otter-agent restore --from-transfer OUT --latest --stop-command ... --start-command ...")]
    Reencrypt(ReencryptArgs),
}

/// Options of `backup reencrypt`.
#[derive(clap::Args)]
pub struct ReencryptArgs {
    /// The fleet recovery identity file.
    #[arg(long, value_name = "FILE")]
    identity: PathBuf,
    /// The old device's stored backup (DATA_DIR/store/backups/DEVICE).
    #[arg(long, value_name = "DIR")]
    from: PathBuf,
    /// The old device's id.
    #[arg(long, value_name = "ID")]
    device: String,
    /// The old device's ed25519 public key (64 hex digits).
    #[arg(long, value_name = "HEX")]
    device_key: String,
    /// A recipient to encrypt to (repeatable): the new terminal's backup recipient.
    #[arg(long = "to", value_name = "AGE_RECIPIENT", required = true)]
    to: Vec<String>,
    /// Where to write the re-encrypted backup (must not exist).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// Runs `backup …`.
pub fn run(cmd: BackupCommand, secrets: &PassphraseArgs) -> Result<()> {
    match cmd {
        BackupCommand::Reencrypt(a) => reencrypt_backup(&a, secrets),
    }
}

/// Loads an age identity: a passphrase-encrypted key file, or a plain identity file.
fn load_identity(path: &Path, secrets: &PassphraseArgs) -> Result<Identity> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.starts_with(b"age-encryption.org/") {
        let pass = secrets.existing(&path.display().to_string())?;
        return Ok(keyfile::load_age_identity(path, &pass)?);
    }
    let text = zeroize::Zeroizing::new(String::from_utf8(bytes).map_err(|_| {
        anyhow::anyhow!(
            "{} is neither an encrypted key file nor an age identity file",
            path.display()
        )
    })?);
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .with_context(|| format!("{} holds no AGE-SECRET-KEY-… line", path.display()))?;
    line.parse::<Identity>()
        .map_err(|e| anyhow::anyhow!("{}: not an age X25519 identity: {e}", path.display()))
}

fn parse_device_key(text: &str) -> Result<PublicKey> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("--device-key must be 64 hex digits (an ed25519 key)"))?;
    Ok(PublicKey::ed25519(&bytes))
}

/// The stored manifests' sequence numbers (file names of 20 digits), ascending.
fn sequences(dir: &Path) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()) {
            out.push(name.parse::<u64>()?);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn reencrypt_backup(a: &ReencryptArgs, secrets: &PassphraseArgs) -> Result<()> {
    if a.out.exists() {
        bail!("{} exists already: choose a new directory", a.out.display());
    }
    let device_key = parse_device_key(&a.device_key)?;
    let mut recipients: Vec<Recipient> =
        a.to.iter()
            .map(|r| {
                r.trim()
                    .parse::<Recipient>()
                    .map_err(|e| anyhow::anyhow!("--to {r:?} is not an age X25519 recipient: {e}"))
            })
            .collect::<Result<_>>()?;
    let identity = load_identity(&a.identity, secrets)?;
    recipients.push(identity.to_public());

    // Check the whole chain before writing anything.
    let seqs = sequences(&a.from.join("manifests"))?;
    if seqs.is_empty() {
        bail!(
            "no manifests in {}: is it DATA_DIR/store/backups/DEVICE?",
            a.from.join("manifests").display()
        );
    }
    let mut manifests: Vec<(Vec<u8>, SignedManifest)> = Vec::new();
    let mut previous: Option<ManifestHeader> = None;
    for &seq in &seqs {
        let path = a.from.join("manifests").join(format!("{seq:020}"));
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let m = SignedManifest::from_bytes(&bytes, MAX_OBJECT)
            .with_context(|| format!("{}", path.display()))?;
        if m.header.device_id != a.device || m.header.sequence != seq {
            bail!(
                "{} is manifest #{} of device {:?}, not #{seq} of {:?} (moved or replayed); \
                 nothing was written",
                path.display(),
                m.header.sequence,
                m.header.device_id.chars().take(64).collect::<String>(),
                a.device
            );
        }
        m.verify_signature(&device_key)
            .with_context(|| format!("{}: not signed by the device key given", path.display()))?;
        match (&previous, seq) {
            // Retention pruned backups in between: the hash link cannot be checked across
            // the gap, but the manifest is still the device's, later and not older.
            (Some(p), _) if p.sequence.saturating_add(1) < seq => {
                if m.header.created < p.created {
                    bail!(
                        "{}: manifest #{seq} was created before #{}; nothing was written",
                        path.display(),
                        p.sequence
                    );
                }
                eprintln!(
                    "note: #{} to #{} were pruned by retention",
                    p.sequence + 1,
                    seq - 1
                );
            }
            (Some(p), _) => m.header.check_follows(Some(p))?,
            (None, 1) => m.header.check_follows(None)?,
            (None, _) => eprintln!("note: the chain starts at #{seq} (older backups pruned)"),
        }
        previous = Some(m.header.clone());
        manifests.push((bytes, m));
    }

    let tmp = {
        let name = a
            .out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "transfer".into());
        a.out
            .with_file_name(format!(".{name}.partial-{}", std::process::id()))
    };
    let _ = fs::remove_dir_all(&tmp);
    let result = write_transfer(a, &tmp, &identity, &recipients, &manifests);
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, &a.out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), a.out.display()))?;
    println!(
        "re-encrypted {} manifests of device {} (#{} to #{}) into {}",
        manifests.len(),
        a.device,
        seqs.first().copied().unwrap_or(0),
        seqs.last().copied().unwrap_or(0),
        a.out.display()
    );
    Ok(())
}

fn write_transfer(
    a: &ReencryptArgs,
    tmp: &Path,
    identity: &Identity,
    recipients: &[Recipient],
    manifests: &[(Vec<u8>, SignedManifest)],
) -> Result<()> {
    let mdir = tmp.join("manifests").join(&a.device);
    let bdir = tmp.join("reencrypted").join(&a.device);
    for d in [&mdir, &bdir] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut packs: BTreeSet<PackRef> = BTreeSet::new();
    for (bytes, m) in manifests {
        let seq = m.header.sequence;
        let body = m
            .reencrypt_body(identity, recipients, MAX_OBJECT)
            .with_context(|| format!("manifest #{seq}: the recovery identity cannot open it"))?;
        write_atomic(&mdir.join(format!("{seq:020}.manifest")), bytes, 0o600)?;
        write_atomic(&bdir.join(format!("{seq:020}.body")), &body, 0o600)?;
        packs.extend(m.header.packs.iter().copied());
    }
    for p in &packs {
        let src = a.from.join("packs").join(p.id.to_string());
        let ct = fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
        p.check(&ct).with_context(|| format!("{}", src.display()))?;
        let moved = reencrypt(identity, &ct, recipients, ct.len())
            .with_context(|| format!("pack {}: the recovery identity cannot open it", p.id))?;
        let hex = p.id.to_string();
        let dir = tmp.join("packs").join(&hex[..2]);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        write_atomic(&dir.join(&hex), &moved, 0o600)?;
    }
    let description = serde_json::json!({
        "format": 1,
        "device_id": a.device,
        "device_public_key": a.device_key.trim().to_ascii_lowercase(),
        "sequences": manifests.iter().map(|(_, m)| m.header.sequence).collect::<Vec<_>>(),
        "packs": packs.len(),
    });
    write_atomic(
        &tmp.join("transfer.json"),
        serde_json::to_string_pretty(&description)?.as_bytes(),
        0o644,
    )?;
    Ok(())
}
