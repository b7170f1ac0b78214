//! `otter-server root push` (a new root version, through the API with an admin token) and
//! `otter-server keys import` (online keys for a rotated root, on the server host).

use std::path::PathBuf;

use anyhow::{Context, Result};
use otter_keys::metadata::{Metadata, Root};
use otter_server::repo::rotation::{import_keys, KeySource, MAX_ROOT_BYTES};
use serde_json::Value;

use super::rollout::ApiArgs;
use super::DataDirArgs;

/// `root` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum RootCommand {
    /// Publish root version N+1 (made offline by `otter-keys root rotate`) on a running
    /// server: PUT /api/v1/root with an admin token.
    #[command(after_help = "\
The server takes only version N+1 of its current root N, signed by a threshold of root N's
root keys and of its own, unexpired. If it names new targets, snapshot or timestamp keys,
install them on the server host first with `otter-server keys import`. On success the server
signs with the new keys at once and serves N+1.root.json; terminals follow at their next poll.

Example:
  otter-server keys import --data-dir /var/lib/otter --root ceremony/2.root.json \\
      --passphrase-file /etc/otter/key-passphrase ceremony/keys/timestamp-v2-1.key
  otter-server root push --server https://otter.example --token-file admin.token ceremony/2.root.json")]
    Push {
        /// The new root metadata file (N+1.root.json).
        root: PathBuf,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// `keys` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum KeysCommand {
    /// Install online key files for a new root version into the data dir (keys/ROLE-KEYID.key,
    /// 0600, still encrypted), without using them: the server switches to them when that root
    /// is pushed. Runs on the server host; the server may be running.
    #[command(after_help = "\
Each key file must open with the server's online passphrase (make new online keys with
`otter-keys root rotate --generate-key ROLE --online-passphrase-file FILE`) and be named for
targets, snapshot or timestamp by the given root. Root keys are refused. Nothing is written
unless every file passes.")]
    Import {
        #[command(flatten)]
        dir: DataDirArgs,
        /// The root version that names the keys (e.g. ceremony/2.root.json).
        #[arg(long, value_name = "ROOT_JSON")]
        root: PathBuf,
        /// File holding the online keys' passphrase (first line); else the config's
        /// key_passphrase_file or OTTER_SERVER_KEY_PASSPHRASE.
        #[arg(long, env = "OTTER_KEY_PASSPHRASE_FILE", value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
        /// The key files to install.
        #[arg(required = true, value_name = "KEYFILE")]
        keys: Vec<PathBuf>,
    },
}

fn read_root(path: &PathBuf) -> Result<(Vec<u8>, Metadata<Root>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let root = Metadata::<Root>::from_bytes(&bytes, MAX_ROOT_BYTES)
        .with_context(|| format!("{} is not root metadata", path.display()))?;
    Ok((bytes, root))
}

/// Runs `root …`.
pub fn run_root(cmd: RootCommand) -> Result<()> {
    match cmd {
        RootCommand::Push { root, api } => {
            let (bytes, md) = read_root(&root)?;
            // The file itself, byte for byte: the server serves exactly what was signed.
            let answer = api.call_raw(reqwest::Method::PUT, "/api/v1/root", Some(bytes))?;
            let rotated: Vec<&str> = answer["rotated_roles"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            println!(
                "root version {} accepted (targets v{}, snapshot v{}, timestamp v{}){}",
                md.signed().version,
                answer["versions"]["targets"],
                answer["versions"]["snapshot"],
                answer["versions"]["timestamp"],
                if rotated.is_empty() {
                    String::new()
                } else {
                    format!("; now signing {} with the new key(s)", rotated.join(", "))
                }
            );
            Ok(())
        }
    }
}

/// Runs `keys …`.
pub fn run_keys(cmd: KeysCommand) -> Result<()> {
    match cmd {
        KeysCommand::Import {
            dir,
            root,
            passphrase_file,
            keys,
        } => {
            let mut config = dir.config()?;
            if passphrase_file.is_some() {
                config.key_passphrase_file = passphrase_file;
            }
            let (_, md) = read_root(&root)?;
            md.verify_self()
                .with_context(|| format!("{} does not verify with its own keys", root.display()))?;
            let source = KeySource::on_host(&config)?;
            let installed = import_keys(&source, md.signed(), &keys)?;
            for k in installed {
                println!(
                    "{} {} key {} as {}",
                    if k.new {
                        "installed"
                    } else {
                        "already installed:"
                    },
                    k.role,
                    k.key_id.short(),
                    k.path.display()
                );
            }
            eprintln!(
                "the server uses these keys once root version {} is pushed \
                 (otter-server root push)",
                md.signed().version
            );
            Ok(())
        }
    }
}
