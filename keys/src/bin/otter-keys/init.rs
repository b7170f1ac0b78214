//! `otter-keys init`: a new trust root.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use otter_keys::crypto::{KeyId, PublicKey};
use otter_keys::metadata::{Metadata, RoleKeys, Root, SPEC_VERSION};
use otter_keys::time::UtcTime;

use crate::passphrase::PassphraseArgs;
use crate::repo;

/// Arguments of `init`.
#[derive(clap::Args)]
#[command(after_help = "\
Writes DIR/1.root.json and, under DIR/keys/, root-1.key .. root-N.key, targets.key,
snapshot.key and timestamp.key (encrypted, 0600) with their .pub.json public keys.
Move each root key to its holder's offline medium; give the server the three online keys
(`otter-server init`). Example, non-interactive:
  OTTER_KEYS_PASSPHRASE_FILE=/secure/pass otter-keys init --dir ceremony --root-keys 5 --threshold 3")]
pub struct InitArgs {
    /// Directory to create the trust root in (created if missing; must not hold one yet).
    #[arg(long)]
    dir: PathBuf,
    /// Number of offline root keys.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    root_keys: u32,
    /// How many root keys must sign a root (must not exceed --root-keys).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    threshold: u32,
    /// Days until root.json expires (renew it before with `root rotate`).
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(i64).range(1..=3650))]
    expires_days: i64,
    /// Do not use consistent snapshots (Otter's server always does; only for other setups).
    #[arg(long)]
    no_consistent_snapshot: bool,
}

/// Runs `init`.
pub fn run(a: InitArgs, secrets: &PassphraseArgs) -> Result<()> {
    if a.threshold > a.root_keys {
        bail!(
            "threshold {} is more than the {} root keys: nobody could ever sign a root",
            a.threshold,
            a.root_keys
        );
    }
    let root_path = a.dir.join("1.root.json");
    if root_path.exists() {
        bail!(
            "{} exists already: this directory holds a trust root (use `otter-keys root rotate`)",
            root_path.display()
        );
    }
    let work_factor = secrets.work_factor()?;
    let root_pass = secrets.new_root()?;
    let online_pass = secrets.new_online(Some(&root_pass))?;
    let keys_dir = repo::keys_dir(&a.dir);
    std::fs::create_dir_all(&keys_dir)
        .with_context(|| format!("creating {}", keys_dir.display()))?;

    let mut keys: BTreeMap<KeyId, PublicKey> = BTreeMap::new();
    let mut roles = BTreeMap::new();
    let mut root_signers = Vec::new();
    let mut root_ids = Vec::new();
    for i in 1..=a.root_keys {
        let k = repo::create_key(&keys_dir, &format!("root-{i}"), &root_pass, work_factor)?;
        eprintln!("created root key root-{i} ({})", k.key_id().short());
        root_ids.push(k.key_id());
        keys.insert(k.key_id(), k.public_key());
        root_signers.push(k);
    }
    roles.insert(
        "root".to_string(),
        RoleKeys {
            keyids: root_ids,
            threshold: a.threshold,
            extra: Default::default(),
        },
    );
    for role in ["targets", "snapshot", "timestamp"] {
        let k = repo::create_key(&keys_dir, role, &online_pass, work_factor)?;
        eprintln!("created online key {role} ({})", k.key_id().short());
        keys.insert(k.key_id(), k.public_key());
        roles.insert(
            role.to_string(),
            RoleKeys {
                keyids: vec![k.key_id()],
                threshold: 1,
                extra: Default::default(),
            },
        );
    }
    let root = Root {
        type_: "root".into(),
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: Some(!a.no_consistent_snapshot),
        version: 1,
        expires: UtcTime::now().plus_days(a.expires_days),
        keys,
        roles,
        extra: Default::default(),
    };
    let mut md = Metadata::new(root)?;
    for k in &root_signers {
        md.sign(k);
    }
    md.verify_self().context("checking the new root")?;
    repo::write_metadata(&root_path, &md)?;
    println!(
        "wrote {} (version 1, {} root keys, threshold {}, expires {})",
        root_path.display(),
        a.root_keys,
        a.threshold,
        md.signed().expires
    );
    println!(
        "keys are in {}: move each root key offline to its holder",
        keys_dir.display()
    );
    Ok(())
}
