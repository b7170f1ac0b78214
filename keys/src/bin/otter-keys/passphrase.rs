//! Where passphrases come from: a file, the environment, or a prompt on the terminal.
//! Never from a command-line argument (it would show in `ps` and shell history).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use otter_keys::age::secrecy::{ExposeSecret, SecretString};
use otter_keys::keyfile::{DEFAULT_WORK_FACTOR, MAX_WORK_FACTOR, MIN_WORK_FACTOR};
use zeroize::Zeroizing;

/// Shortest passphrase accepted for a new key.
const MIN_PASSPHRASE_CHARS: usize = 10;

/// Passphrase sources shared by all subcommands.
#[derive(clap::Args)]
pub struct PassphraseArgs {
    /// Read the passphrase of the keys from this file (first line). Otherwise the
    /// OTTER_KEYS_PASSPHRASE environment variable, otherwise a prompt.
    #[arg(
        long,
        global = true,
        env = "OTTER_KEYS_PASSPHRASE_FILE",
        value_name = "FILE"
    )]
    passphrase_file: Option<PathBuf>,

    /// For `init`: a different passphrase for the online keys (targets, snapshot, timestamp),
    /// the one the server will be given. Otherwise OTTER_KEYS_ONLINE_PASSPHRASE, otherwise
    /// a prompt, otherwise the root keys' passphrase.
    #[arg(
        long,
        global = true,
        env = "OTTER_KEYS_ONLINE_PASSPHRASE_FILE",
        value_name = "FILE"
    )]
    online_passphrase_file: Option<PathBuf>,

    /// scrypt work factor (log2 N) for new key files. Only tests should lower it.
    #[arg(long, global = true, hide = true, env = "OTTER_KEYS_SCRYPT_LOG_N", default_value_t = DEFAULT_WORK_FACTOR)]
    scrypt_log_n: u8,
}

impl PassphraseArgs {
    /// The scrypt work factor for new key files, checked.
    pub fn work_factor(&self) -> Result<u8> {
        if !(MIN_WORK_FACTOR..=MAX_WORK_FACTOR).contains(&self.scrypt_log_n) {
            bail!(
                "scrypt work factor {} is outside {MIN_WORK_FACTOR}..={MAX_WORK_FACTOR}",
                self.scrypt_log_n
            );
        }
        Ok(self.scrypt_log_n)
    }

    /// The passphrase to open an existing key file `what`.
    pub fn existing(&self, what: &str) -> Result<SecretString> {
        if let Some(p) = read_source(self.passphrase_file.as_deref(), "OTTER_KEYS_PASSPHRASE")? {
            return Ok(p);
        }
        prompt(&format!("Passphrase for {what}: "))
    }

    /// A passphrase for new root keys (asked twice on a prompt).
    pub fn new_root(&self) -> Result<SecretString> {
        let p = match read_source(self.passphrase_file.as_deref(), "OTTER_KEYS_PASSPHRASE")? {
            Some(p) => p,
            None => prompt_new("root keys")?,
        };
        check_strength(&p)?;
        Ok(p)
    }

    /// A passphrase for a new key named `what` (asked twice on a prompt).
    pub fn new_key(&self, what: &str) -> Result<SecretString> {
        let p = match read_source(self.passphrase_file.as_deref(), "OTTER_KEYS_PASSPHRASE")? {
            Some(p) => p,
            None => prompt_new(what)?,
        };
        check_strength(&p)?;
        Ok(p)
    }

    /// A passphrase for new online keys. Without one configured and without a terminal to
    /// ask on, falls back to `fallback` or the root keys' configured passphrase.
    pub fn new_online(&self, fallback: Option<&SecretString>) -> Result<SecretString> {
        let p = match read_source(
            self.online_passphrase_file.as_deref(),
            "OTTER_KEYS_ONLINE_PASSPHRASE",
        )? {
            Some(p) => p,
            None if std::io::stdin().is_terminal() => prompt_new("online keys (the server's)")?,
            None => {
                let root = match fallback {
                    Some(p) => Some(p.clone()),
                    None => read_source(self.passphrase_file.as_deref(), "OTTER_KEYS_PASSPHRASE")?,
                };
                let Some(root) = root else {
                    return Err(no_terminal());
                };
                eprintln!(
                    "note: online keys use the root keys' passphrase (set --online-passphrase-file to separate them)"
                );
                root
            }
        };
        check_strength(&p)?;
        Ok(p)
    }
}

fn check_strength(p: &SecretString) -> Result<()> {
    if p.expose_secret().chars().count() < MIN_PASSPHRASE_CHARS {
        bail!("passphrase too short: use at least {MIN_PASSPHRASE_CHARS} characters");
    }
    Ok(())
}

fn no_terminal() -> anyhow::Error {
    anyhow::anyhow!(
        "no passphrase given and no terminal to ask on: use --passphrase-file FILE or set OTTER_KEYS_PASSPHRASE"
    )
}

fn prompt(msg: &str) -> Result<SecretString> {
    if !std::io::stdin().is_terminal() {
        return Err(no_terminal());
    }
    let p = rpassword::prompt_password(msg).context("reading passphrase")?;
    Ok(SecretString::from(p))
}

fn prompt_new(what: &str) -> Result<SecretString> {
    let a = prompt(&format!("New passphrase for {what}: "))?;
    let b = prompt("Repeat it: ")?;
    if a.expose_secret() != b.expose_secret() {
        bail!("the two passphrases differ");
    }
    Ok(a)
}

fn read_source(file: Option<&Path>, var: &str) -> Result<Option<SecretString>> {
    if let Some(path) = file {
        let raw = Zeroizing::new(
            std::fs::read(path)
                .with_context(|| format!("reading passphrase file {}", path.display()))?,
        );
        let text = std::str::from_utf8(&raw)
            .with_context(|| format!("passphrase file {} is not UTF-8", path.display()))?;
        let line = text.lines().next().unwrap_or("");
        if line.is_empty() {
            bail!("passphrase file {} is empty", path.display());
        }
        return Ok(Some(SecretString::from(line.to_owned())));
    }
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(Some(SecretString::from(v))),
        _ => Ok(None),
    }
}
