//! `otter-server init`: a production repository from `otter-keys init` output.

use std::path::PathBuf;

use anyhow::Result;

use super::DataDirArgs;

/// Arguments of `init`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
The online keys' passphrase comes from --passphrase-file or the OTTER_SERVER_KEY_PASSPHRASE
environment variable (never from a flag value). `serve` needs it at every start too.
Example:
  otter-keys init --dir ceremony
  otter-server init --data-dir /var/lib/otter --root ceremony/1.root.json \\
      --keys-dir ceremony/keys --passphrase-file /etc/otter/key-passphrase")]
pub struct InitArgs {
    #[command(flatten)]
    dir: DataDirArgs,
    /// The root metadata made by `otter-keys init` (e.g. ceremony/1.root.json).
    #[arg(long, value_name = "ROOT_JSON")]
    root: PathBuf,
    /// The directory holding targets.key, snapshot.key and timestamp.key.
    #[arg(long, value_name = "KEYS_DIR")]
    keys_dir: PathBuf,
    /// File holding the online keys' passphrase (first line).
    #[arg(long, env = "OTTER_KEY_PASSPHRASE_FILE", value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

/// Runs `init`.
pub fn run(a: InitArgs) -> Result<()> {
    let mut config = a.dir.config()?;
    if a.passphrase_file.is_some() {
        config.key_passphrase_file = a.passphrase_file.clone();
    }
    otter_server::logging::init(config.log_format)?;
    let created = actix_web::rt::System::new().block_on(otter_server::setup::init_production(
        &config,
        &a.root,
        &a.keys_dir,
    ))?;
    let v = created.versions;
    eprintln!(
        "created a production repository in {} (root v{}, targets v{}, snapshot v{}, timestamp v{}); \
         start it with `otter-server serve --data-dir {}` and the same passphrase source",
        config.data_dir.display(),
        v.root,
        v.targets,
        v.snapshot,
        v.timestamp,
        config.data_dir.display()
    );
    if !created.root_keys_nearby.is_empty() {
        eprintln!(
            "WARNING: {} holds root keys ({}): move them offline; the server never needs them",
            a.keys_dir.display(),
            created.root_keys_nearby.join(", ")
        );
    }
    eprintln!("admin API token (shown once, it is stored only hashed):");
    println!("{}", created.admin_token.expose_dangerous());
    Ok(())
}
