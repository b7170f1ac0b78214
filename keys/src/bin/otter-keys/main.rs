//! `otter-keys`: the offline key ceremony for an Otter repository.
//!
//! One file per subcommand: `init`, `root` (rotate), `sign`, `verify`, `inspect`, `key`,
//! `recovery_key`, `backup` (re-encrypt a backup for a replacement terminal); `passphrase` gets secrets from a file, the environment or a prompt;
//! `repo` reads and writes the files of a key directory.

mod backup;
mod init;
mod inspect;
mod key;
mod passphrase;
mod recovery_key;
mod repo;
mod root;
mod sign;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

const ABOUT: &str = "Otter's offline key ceremony: create and rotate the root of trust of an \
Otter update repository, sign and verify TUF metadata, and make the fleet's backup recovery key.";

const LONG_ABOUT: &str = "\
Otter's offline key ceremony.

Otter repositories use The Update Framework (TUF 1.0). Trust starts at root.json, signed by a
threshold of offline root keys (say 2 of 3, each held by a different person on a different
offline machine). Root names the online keys the server signs with (targets, snapshot,
timestamp). If an online key leaks, a new root version replaces it; terminals accept the new
root only when a threshold of the old root keys AND of the new ones signed it.

A ceremony, in short:
  otter-keys init --dir ceremony                 # 3 root keys (threshold 2) + online keys
  otter-keys inspect ceremony/1.root.json        # check what you made
  otter-keys root rotate --dir ceremony --generate-key timestamp \\
      --remove-key timestamp:OLD_ID --sign-with ceremony/keys/root-1.key \\
      --sign-with ceremony/keys/root-2.key       # replace a leaked timestamp key
  otter-keys verify --root ceremony/1.root.json ceremony/2.root.json
  otter-keys recovery-key new --out recovery.age # fleet backup recovery identity

Private keys are written 0600, encrypted with a passphrase (age scrypt). Passphrases come from
--passphrase-file, the OTTER_KEYS_PASSPHRASE environment variable, or a prompt on a terminal.";

/// Command-line interface of `otter-keys`.
#[derive(Parser)]
#[command(name = "otter-keys", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    #[command(flatten)]
    secrets: passphrase::PassphraseArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new trust root: root keys, online keys and a signed 1.root.json.
    Init(init::InitArgs),
    /// Root metadata: rotate keys, change thresholds, revoke.
    #[command(subcommand)]
    Root(root::RootCommand),
    /// Add signatures to a metadata file (any role).
    Sign(sign::SignArgs),
    /// Verify metadata files against a trusted root (and delegations).
    Verify(verify::VerifyArgs),
    /// Show a metadata file in human form (roles, keys, thresholds, expiry).
    Inspect(inspect::InspectArgs),
    /// Single signing keys, e.g. a vendor's key for a delegated targets role.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// The fleet's backup recovery key (age X25519).
    #[command(subcommand, name = "recovery-key")]
    RecoveryKey(recovery_key::RecoveryKeyCommand),
    /// Backups: re-encrypt a terminal's backup for a replacement terminal, with the
    /// recovery key.
    #[command(subcommand)]
    Backup(backup::BackupCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init(a) => init::run(a, &cli.secrets),
        Command::Root(c) => root::run(c, &cli.secrets),
        Command::Sign(a) => sign::run(a, &cli.secrets),
        Command::Verify(a) => verify::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Key(c) => key::run(c, &cli.secrets),
        Command::RecoveryKey(c) => recovery_key::run(c, &cli.secrets),
        Command::Backup(c) => backup::run(c, &cli.secrets),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", otter_keys::report::describe(e.as_ref()));
            ExitCode::from(1)
        }
    }
}
