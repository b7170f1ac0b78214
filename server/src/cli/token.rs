//! `otter-server token create|list|revoke`: API tokens, straight on the data dir's database
//! (no API token needed on the server host). Safe while the server runs: SQLite in WAL mode
//! with a busy timeout, and the server looks tokens up on every request. With `--server URL`
//! the same operations go through the API with an admin (or, to list, auditor) token.

use anyhow::{bail, Context, Result};
use otter_server::audit::{self, Actor};
use otter_server::db::{unix_now, Db};
use otter_server::tokens::{create_token, list_tokens, revoke_token, TokenRole};
use reqwest::Method;
use rusqlite::TransactionBehavior;
use serde_json::{json, Value};

use super::devices::{field, ApiMode};
use super::DataDirArgs;

/// `token` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token; prints only the token on stdout (shown once, stored hashed).
    Create {
        /// admin, publisher, operator, auditor or restorer.
        #[arg(long)]
        role: TokenRole,
        /// What the token is for (who holds it).
        #[arg(long, default_value = "created with otter-server token create")]
        label: String,
        #[command(flatten)]
        dir: DataDirArgs,
        #[command(flatten)]
        api: ApiMode,
    },
    /// List tokens (never the tokens themselves).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: DataDirArgs,
        #[command(flatten)]
        api: ApiMode,
    },
    /// Revoke a token by its id; effective at once.
    Revoke {
        /// The token's id (see `token list`).
        id: i64,
        #[command(flatten)]
        dir: DataDirArgs,
        #[command(flatten)]
        api: ApiMode,
    },
}

/// Opens the database of the data dir these arguments select; it must exist.
pub fn open(dir: &DataDirArgs) -> Result<Db> {
    let config = dir.config()?;
    let path = config.db_path();
    if !path.exists() {
        bail!(
            "{} holds no Otter database: give the data dir of a server (--data-dir) that has run `serve` or `init`",
            config.data_dir.display()
        );
    }
    Db::open_blocking(&path).with_context(|| format!("opening {}", path.display()))
}

fn print_header() {
    println!(
        "{:>5}  {:<10}  {:<12}  {:<12}  LABEL",
        "ID", "ROLE", "CREATED", "REVOKED"
    );
}

fn print_row(id: &str, role: &str, created: &str, revoked: &str, label: &str) {
    println!("{id:>5}  {role:<10}  {created:<12}  {revoked:<12}  {label}");
}

/// Runs a `token` subcommand.
pub fn run(cmd: TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Create {
            role,
            label,
            dir,
            api,
        } => {
            if let Some(api) = api.api() {
                let v = api.call(
                    Method::POST,
                    "/api/v1/tokens",
                    Some(json!({"role": role.as_str(), "label": label})),
                )?;
                let id: i64 = field(&v, "id")?;
                let token: zeroize::Zeroizing<String> =
                    zeroize::Zeroizing::new(field(&v, "token")?);
                eprintln!(
                    "created token {id} with role {role} (shown once; it is stored only hashed)"
                );
                println!("{}", token.as_str());
                return Ok(());
            }
            let db = open(&dir)?;
            let (id, token) = db.with_conn_blocking(|c| -> Result<_> {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let now = unix_now();
                let made = create_token(&tx, role, &label, now)?;
                audit::append(
                    &tx,
                    &Actor::host("otter-server token create"),
                    "token.create",
                    &format!("token:{}", made.0),
                    &serde_json::json!({"role": role, "label": label}),
                    now,
                )?;
                tx.commit()?;
                Ok(made)
            })?;
            eprintln!("created token {id} with role {role} (shown once; it is stored only hashed)");
            println!("{}", token.expose_dangerous());
        }
        TokenCommand::List { json, dir, api } => {
            if let Some(api) = api.api() {
                let v = api.call(Method::GET, "/api/v1/tokens", None)?;
                let tokens: Vec<Value> = field(&v, "tokens")?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&tokens)?);
                } else {
                    print_header();
                    let text = |v: &Value| match v {
                        Value::Null => "-".to_string(),
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    for t in &tokens {
                        print_row(
                            &text(&t["id"]),
                            &text(&t["role"]),
                            &text(&t["created_at"]),
                            &text(&t["revoked_at"]),
                            &text(&t["label"]),
                        );
                    }
                }
                return Ok(());
            }
            let db = open(&dir)?;
            let tokens = db.with_conn_blocking(|c| -> Result<_> { Ok(list_tokens(c)?) })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
            } else {
                print_header();
                for t in tokens {
                    let revoked = t.revoked_at.map_or("-".to_string(), |r| r.to_string());
                    print_row(
                        &t.id.to_string(),
                        t.role.as_str(),
                        &t.created_at.to_string(),
                        &revoked,
                        &t.label,
                    );
                }
            }
        }
        TokenCommand::Revoke { id, dir, api } => {
            if let Some(api) = api.api() {
                let t = api.call(Method::DELETE, &format!("/api/v1/tokens/{id}"), None)?;
                let role: String = field(&t, "role")?;
                let label: String = field(&t, "label")?;
                println!("token {id} ({role}, {label:?}) is revoked");
                return Ok(());
            }
            let db = open(&dir)?;
            let t = db.with_conn_blocking(|c| -> Result<_> {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let now = unix_now();
                let was_valid = list_tokens(&tx)?
                    .iter()
                    .any(|t| t.id == id && t.revoked_at.is_none());
                let t = revoke_token(&tx, id, now)?;
                if was_valid {
                    audit::append(
                        &tx,
                        &Actor::host("otter-server token revoke"),
                        "token.revoke",
                        &format!("token:{id}"),
                        &serde_json::json!({"role": t.role, "label": t.label}),
                        now,
                    )?;
                }
                tx.commit()?;
                Ok(t)
            })?;
            println!("token {} ({}, {:?}) is revoked", t.id, t.role, t.label);
        }
    }
    Ok(())
}
