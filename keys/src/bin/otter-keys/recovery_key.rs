//! `otter-keys recovery-key`: the fleet's backup recovery identity (age X25519).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use otter_keys::atomic::write_atomic;
use otter_keys::keyfile;

use crate::passphrase::PassphraseArgs;

/// Subcommands of `recovery-key`.
#[derive(clap::Subcommand)]
pub enum RecoveryKeyCommand {
    /// Create the fleet recovery identity: every backup is also encrypted to its public
    /// part, so admins can restore any terminal's database (or move it to a replacement).
    #[command(after_help = "\
Writes FILE (the identity, encrypted with a passphrase, 0600) and FILE.pub (the public
recipient, age1..., to configure on the server). Keep FILE offline. The standard age tool
can use it directly: `age -d -i FILE pack.age > pack` asks for its passphrase.")]
    New {
        /// Where to write the encrypted identity.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the public recipient of an identity file.
    Public {
        /// The encrypted identity file.
        #[arg(long)]
        key: PathBuf,
    },
}

/// Runs `recovery-key …`.
pub fn run(cmd: RecoveryKeyCommand, secrets: &PassphraseArgs) -> Result<()> {
    match cmd {
        RecoveryKeyCommand::New { out } => {
            if out.exists() {
                bail!(
                    "{} exists already: refusing to overwrite a recovery key",
                    out.display()
                );
            }
            let pass = secrets.new_root()?;
            let id = otter_keys::age::x25519::Identity::generate();
            keyfile::save_age_identity(&out, &id, &pass, secrets.work_factor()?)?;
            let public = id.to_public().to_string();
            let mut pub_path = out.clone().into_os_string();
            pub_path.push(".pub");
            let pub_path = PathBuf::from(pub_path);
            write_atomic(&pub_path, format!("{public}\n").as_bytes(), 0o644)
                .with_context(|| format!("writing {}", pub_path.display()))?;
            println!("{public}");
            eprintln!(
                "wrote {} (keep offline) and {} (give to the server)",
                out.display(),
                pub_path.display()
            );
            Ok(())
        }
        RecoveryKeyCommand::Public { key } => {
            let pass = secrets.existing(&key.display().to_string())?;
            let id = keyfile::load_age_identity(&key, &pass)?;
            println!("{}", id.to_public());
            Ok(())
        }
    }
}
