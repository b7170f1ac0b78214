//! `otter-keys key new`: one signing key on its own, e.g. for a team or vendor that signs a
//! delegated targets role offline.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::passphrase::PassphraseArgs;
use crate::repo;

/// `key` subcommands.
#[derive(clap::Subcommand)]
pub enum KeyCommand {
    /// Create an ed25519 key: DIR/NAME.key (encrypted, 0600) and DIR/NAME.pub.json.
    #[command(after_help = "\
The .pub.json file is the TUF public key object: give it to the repository admin, who declares
the delegation with it (POST /api/v1/delegations, \"keys\": [CONTENTS]). Keep the .key file
offline; sign the role's metadata with `otter-keys sign --key DIR/NAME.key FILE`.
Example:
  otter-keys key new --dir vendor-keys --name card-reader-1")]
    New(NewArgs),
}

/// Arguments of `key new`.
#[derive(clap::Args)]
pub struct NewArgs {
    /// Directory for the key files (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// The key's name: 1 to 64 of A-Z, a-z, 0-9, '_' and '-'.
    #[arg(long)]
    name: String,
}

/// Runs a `key` subcommand.
pub fn run(c: KeyCommand, secrets: &PassphraseArgs) -> Result<()> {
    match c {
        KeyCommand::New(a) => new(a, secrets),
    }
}

fn new(a: NewArgs, secrets: &PassphraseArgs) -> Result<()> {
    let ok = !a.name.is_empty()
        && a.name.len() <= 64
        && a.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if !ok {
        bail!(
            "key name {:?} is not allowed: use 1 to 64 of A-Z, a-z, 0-9, '_' and '-'",
            a.name.chars().take(64).collect::<String>()
        );
    }
    let work_factor = secrets.work_factor()?;
    let pass = secrets.new_key(&format!("key {}", a.name))?;
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let key = repo::create_key(&a.dir, &a.name, &pass, work_factor)?;
    println!(
        "created key {} (key id {}): {} (private, keep it offline) and {} (public, for the admin)",
        a.name,
        key.key_id().0,
        a.dir.join(format!("{}.key", a.name)).display(),
        a.dir.join(format!("{}.pub.json", a.name)).display()
    );
    Ok(())
}
