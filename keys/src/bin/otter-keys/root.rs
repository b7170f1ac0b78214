//! `otter-keys root rotate`: a new root version that adds, removes or replaces keys, changes
//! thresholds, or just renews the expiry; signed by a threshold of the old root and of the
//! new root, as specification 5.3.4 requires.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use otter_keys::crypto::{KeyId, SigningKey};
use otter_keys::keyfile;
use otter_keys::metadata::{Metadata, Root, TOP_LEVEL_ROLES};
use otter_keys::time::UtcTime;

use crate::passphrase::PassphraseArgs;
use crate::repo;

/// Subcommands of `root`.
#[derive(clap::Subcommand)]
pub enum RootCommand {
    /// Make root version N+1 from the latest N.root.json: rotate or revoke keys, change
    /// thresholds, renew expiry.
    Rotate(RotateArgs),
}

/// Arguments of `root rotate`.
#[derive(clap::Args)]
#[command(after_help = "\
ROLE is one of root, targets, snapshot, timestamp. KEYID may be a unique prefix.

Examples:
  Revoke a leaked timestamp key and make a new one:
    otter-keys root rotate --dir ceremony --remove-key timestamp=3f2a \\
        --generate-key timestamp --sign-with ceremony/keys/root-1.key --sign-with ceremony/keys/root-2.key
  Replace root key 3 (lost) with a new holder's key, keeping threshold 2:
    otter-keys root rotate --dir ceremony --remove-key root=9c1e --add-key root=alice.pub.json \\
        --sign-with keys/root-1.key --sign-with keys/root-2.key --allow-partial
    (then Alice runs: otter-keys sign --key alice.key ceremony/2.root.json)
  Renew the expiry only:
    otter-keys root rotate --dir ceremony --sign-with keys/root-1.key --sign-with keys/root-2.key

The new root must be signed by a threshold of the OLD root keys and a threshold of the NEW
root keys. Without --allow-partial nothing is written until both are met; with it, the file
is written with the signatures given and the missing ones are listed, to be added with
`otter-keys sign`.")]
pub struct RotateArgs {
    /// Ceremony directory holding N.root.json and keys/.
    #[arg(long)]
    dir: PathBuf,
    /// The root to start from (default: the highest N.root.json in --dir).
    #[arg(long)]
    from: Option<PathBuf>,
    /// Key files to sign the new root with (old and new root keys). Repeatable.
    #[arg(long = "sign-with", value_name = "KEYFILE")]
    sign_with: Vec<PathBuf>,
    /// Authorise a public key (a .pub.json file) for a role. Repeatable.
    #[arg(long = "add-key", value_name = "ROLE=PUBFILE")]
    add_key: Vec<String>,
    /// Create a new key for a role (saved under DIR/keys/). Repeatable.
    #[arg(long = "generate-key", value_name = "ROLE")]
    generate_key: Vec<String>,
    /// Revoke a key from a role. Repeatable.
    #[arg(long = "remove-key", value_name = "ROLE=KEYID")]
    remove_key: Vec<String>,
    /// Set a role's threshold. Repeatable.
    #[arg(long = "threshold", value_name = "ROLE=N")]
    threshold: Vec<String>,
    /// Days until the new root expires.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(i64).range(1..=3650))]
    expires_days: i64,
    /// Write the new root even if signatures are still missing (they are listed).
    #[arg(long)]
    allow_partial: bool,
}

fn split_role<'a>(spec: &'a str, flag: &str) -> Result<(&'a str, &'a str)> {
    let (role, rest) = spec
        .split_once('=')
        .with_context(|| format!("--{flag} {spec:?}: expected ROLE=VALUE"))?;
    check_role(role)?;
    Ok((role, rest))
}

fn check_role(role: &str) -> Result<()> {
    if !TOP_LEVEL_ROLES.contains(&role) {
        bail!("unknown role {role:?}: use one of root, targets, snapshot, timestamp");
    }
    Ok(())
}

/// Runs `root …`.
pub fn run(cmd: RootCommand, secrets: &PassphraseArgs) -> Result<()> {
    match cmd {
        RootCommand::Rotate(a) => rotate(a, secrets),
    }
}

fn rotate(a: RotateArgs, secrets: &PassphraseArgs) -> Result<()> {
    let from = match &a.from {
        Some(p) => p.clone(),
        None => repo::latest_root(&a.dir)?.1,
    };
    let old: Metadata<Root> = repo::read_metadata(&from)?;
    old.verify_self()
        .with_context(|| format!("{} does not verify by itself", from.display()))?;
    let old_root = old.signed();
    let new_version = old_root.version + 1;
    let out = a.dir.join(format!("{new_version}.root.json"));
    if out.exists() {
        bail!("{} exists already", out.display());
    }
    let mut root = old_root.clone();
    root.version = new_version;
    root.expires = UtcTime::now().plus_days(a.expires_days);

    for spec in &a.remove_key {
        let (role, prefix) = split_role(spec, "remove-key")?;
        let role_keys = root.roles.get_mut(role).context("role missing from root")?;
        let matches: Vec<KeyId> = role_keys
            .keyids
            .iter()
            .filter(|id| id.0.starts_with(prefix))
            .cloned()
            .collect();
        match matches.as_slice() {
            [id] => {
                role_keys.keyids.retain(|k| k != id);
                eprintln!("revoked {} from {role}", id.short());
            }
            [] => bail!("--remove-key {spec}: no {role} key id starts with {prefix:?}"),
            _ => bail!("--remove-key {spec}: {prefix:?} matches several keys; give more of the id"),
        }
    }
    for spec in &a.add_key {
        let (role, file) = split_role(spec, "add-key")?;
        let pk = keyfile::load_public_key(std::path::Path::new(file))?;
        let id = pk.key_id()?;
        let role_keys = root.roles.get_mut(role).context("role missing from root")?;
        if role_keys.keyids.contains(&id) {
            bail!(
                "--add-key {spec}: key {} is already a {role} key",
                id.short()
            );
        }
        role_keys.keyids.push(id.clone());
        root.keys.insert(id.clone(), pk);
        eprintln!("added {} to {role}", id.short());
    }
    let mut generated: Vec<(PathBuf, SigningKey)> = Vec::new();
    let result = (|| -> Result<()> {
        let keys_dir = repo::keys_dir(&a.dir);
        std::fs::create_dir_all(&keys_dir)?;
        let mut root_pass = None;
        let mut online_pass = None;
        for role in &a.generate_key {
            check_role(role)?;
            let work_factor = secrets.work_factor()?;
            let pass = if role == "root" {
                root_pass.get_or_insert(secrets.new_root()?).clone()
            } else {
                online_pass.get_or_insert(secrets.new_online(None)?).clone()
            };
            let label = (1..)
                .map(|i| format!("{role}-v{new_version}-{i}"))
                .find(|l| !keys_dir.join(format!("{l}.key")).exists())
                .context("no free key name")?;
            let k = repo::create_key(&keys_dir, &label, &pass, work_factor)?;
            eprintln!("generated {role} key {label} ({})", k.key_id().short());
            let id = k.key_id();
            root.roles
                .get_mut(role.as_str())
                .context("role missing")?
                .keyids
                .push(id.clone());
            root.keys.insert(id, k.public_key());
            generated.push((keys_dir.join(format!("{label}.key")), k));
        }
        for spec in &a.threshold {
            let (role, n) = split_role(spec, "threshold")?;
            let n: u32 = n
                .parse()
                .with_context(|| format!("--threshold {spec}: not a number"))?;
            root.roles.get_mut(role).context("role missing")?.threshold = n;
        }
        for (name, r) in &root.roles {
            if r.threshold == 0 || (r.keyids.len() as u64) < u64::from(r.threshold) {
                bail!(
                    "role {name} would have {} key(s) and threshold {}: it could never be signed",
                    r.keyids.len(),
                    r.threshold
                );
            }
        }
        // Keys no role uses any more leave the root.
        let used: BTreeSet<KeyId> = root
            .roles
            .values()
            .flat_map(|r| r.keyids.iter().cloned())
            .collect();
        root.keys.retain(|id, _| used.contains(id));

        let mut md = Metadata::new(root.clone())?;
        let old_root_ids = &old_root.role("root")?.keyids;
        let new_root_ids = &root.role("root")?.keyids;
        let signers = repo::open_keys(&a.sign_with, secrets)?;
        for s in &signers {
            let id = s.key.key_id();
            if old_root_ids.contains(&id) || new_root_ids.contains(&id) {
                md.sign(&s.key);
            } else {
                eprintln!(
                    "warning: {} ({}) is a root key of neither version: not used",
                    s.label,
                    id.short()
                );
            }
        }
        // New root keys made here sign the root that introduces them.
        for (_, k) in &generated {
            if new_root_ids.contains(&k.key_id()) {
                md.sign(k);
            }
        }
        let old_ok = old.verify_by(&md, "root");
        let new_ok = md.verify_self();
        match (&old_ok, &new_ok) {
            (Ok(_), Ok(_)) => {}
            _ if a.allow_partial => {
                if let Err(e) = &old_ok {
                    eprintln!("still missing (old root): {e}");
                }
                if let Err(e) = &new_ok {
                    eprintln!("still missing (new root): {e}");
                }
            }
            _ => {
                let mut msg =
                    String::from("the new root is not signed well enough, nothing written");
                if let Err(e) = &old_ok {
                    msg.push_str(&format!("\n  by the old root ({}): {e}", from.display()));
                }
                if let Err(e) = &new_ok {
                    msg.push_str(&format!("\n  by the new root itself: {e}"));
                }
                msg.push_str("\n  add --sign-with KEYFILE for more root keys, or --allow-partial to collect signatures later");
                bail!(msg);
            }
        }
        repo::write_metadata(&out, &md)?;
        println!(
            "wrote {} (version {new_version}, expires {}){}",
            out.display(),
            md.signed().expires,
            if old_ok.is_ok() && new_ok.is_ok() {
                ""
            } else {
                " — PARTIAL: more signatures needed"
            }
        );
        Ok(())
    })();
    if result.is_err() {
        for (p, _) in &generated {
            let _ = std::fs::remove_file(p);
            let _ = std::fs::remove_file(p.with_extension("pub.json"));
        }
    }
    result
}
