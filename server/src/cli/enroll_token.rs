//! `otter-server enroll-token create [--group G] [--expires-in 24h] | list | revoke ID`:
//! single-use enrollment tokens for terminals, straight on the data dir's database (safe
//! while the server runs), or with `--server URL` through the API with a token (create:
//! admin or operator; list: admin, operator or auditor; revoke: admin). `create` prints only
//! the token on stdout, once; it is stored hashed.

use anyhow::{bail, Result};
use otter_server::audit::{self, Actor};
use otter_server::db::unix_now;
use otter_server::fleet::{
    create_enrollment_token, list_enrollment_tokens, revoke_enrollment_token, EnrollmentTokenInfo,
};
use reqwest::Method;
use rusqlite::TransactionBehavior;
use serde_json::{json, Value};

use super::devices::{field, ApiMode};
use super::DataDirArgs;

/// `enroll-token` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum EnrollTokenCommand {
    /// Create an enrollment token; prints only the token on stdout (shown once).
    Create {
        /// The group devices enrolled with this token join.
        #[arg(long)]
        group: Option<String>,
        /// Lifetime: seconds, or a number with s, m, h or d (60 s to 30 days).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        expires_in: u64,
        #[command(flatten)]
        dir: DataDirArgs,
        #[command(flatten)]
        api: ApiMode,
    },
    /// List enrollment tokens, newest first, with their state (unused, used, expired,
    /// revoked); never the tokens themselves.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: DataDirArgs,
        #[command(flatten)]
        api: ApiMode,
    },
    /// Revoke an unused enrollment token by its id: enrolling with it is refused from now
    /// on. A used token cannot be revoked (revoke the device instead: `devices revoke`).
    Revoke {
        /// The enrollment token's id (see `enroll-token list`).
        id: i64,
        #[command(flatten)]
        dir: DataDirArgs,
        #[command(flatten)]
        api: ApiMode,
    },
}

fn print_header() {
    println!(
        "{:>5}  {:<8}  {:<16}  {:<12}  {:<12}  {:<12}  DEVICE",
        "ID", "STATE", "GROUP", "CREATED", "EXPIRES", "REVOKED"
    );
}

fn print_row(t: &Value) {
    let text = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!(
        "{:>5}  {:<8}  {:<16}  {:<12}  {:<12}  {:<12}  {}",
        text(&t["id"]),
        text(&t["state"]),
        text(&t["group"]),
        text(&t["created_at"]),
        text(&t["expires_at"]),
        text(&t["revoked_at"]),
        text(&t["used_by_device"])
    );
}

/// A token as the API lists it: its record and its state.
fn as_listed(t: &EnrollmentTokenInfo, now: i64) -> Result<Value> {
    let mut v = serde_json::to_value(t)?;
    v["state"] = json!(t.state(now));
    Ok(v)
}

/// Parses `90`, `90s`, `30m`, `24h` or `7d` into seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c),
        _ => (t, 's'),
    };
    let factor = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("{text:?}: give a duration such as 3600, 30m, 24h or 7d"))
}

/// Runs an `enroll-token` subcommand.
pub fn run(cmd: EnrollTokenCommand) -> Result<()> {
    match cmd {
        EnrollTokenCommand::Create {
            group,
            expires_in,
            dir,
            api,
        } => {
            if let Some(g) = &group {
                if let Err(e) = otter_server::fleet::check_name(g) {
                    bail!("--group {e}");
                }
            }
            if let Some(api) = api.api() {
                let v = api.call(
                    Method::POST,
                    "/api/v1/enrollment-tokens",
                    Some(json!({"group": group, "expires_in_secs": expires_in})),
                )?;
                let id: i64 = field(&v, "id")?;
                let expires_at: i64 = field(&v, "expires_at")?;
                let token = zeroize::Zeroizing::new(field::<String>(&v, "token")?);
                eprintln!(
                    "created enrollment token {id} (group {}, expires at {expires_at} Unix time; single-use, shown once, stored only hashed)",
                    group.as_deref().unwrap_or("none")
                );
                println!("{}", token.as_str());
                return Ok(());
            }
            let db = super::token::open(&dir)?;
            let (info, token) = db.with_conn_blocking(|c| -> Result<_> {
                let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let now = unix_now();
                let made = create_enrollment_token(&tx, group.as_deref(), expires_in, None, now)?;
                otter_server::audit::append(
                    &tx,
                    &otter_server::audit::Actor::host("otter-server enroll-token create"),
                    "enrollment_token.create",
                    &format!("enrollment_token:{}", made.0.id),
                    &serde_json::json!({"group": made.0.group, "expires_at": made.0.expires_at}),
                    now,
                )?;
                tx.commit()?;
                Ok(made)
            })?;
            eprintln!(
                "created enrollment token {} (group {}, expires at {} Unix time; single-use, shown once, stored only hashed)",
                info.id,
                info.group.as_deref().unwrap_or("none"),
                info.expires_at
            );
            println!("{}", token.expose_dangerous());
        }
        EnrollTokenCommand::List { json, dir, api } => {
            let tokens: Vec<Value> = if let Some(api) = api.api() {
                let v = api.call(Method::GET, "/api/v1/enrollment-tokens", None)?;
                field(&v, "enrollment_tokens")?
            } else {
                let db = super::token::open(&dir)?;
                let listed =
                    db.with_conn_blocking(|c| -> Result<_> { Ok(list_enrollment_tokens(c)?) })?;
                let now = unix_now();
                listed
                    .iter()
                    .map(|t| as_listed(t, now))
                    .collect::<Result<_>>()?
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
            } else {
                print_header();
                tokens.iter().for_each(print_row);
            }
        }
        EnrollTokenCommand::Revoke { id, dir, api } => {
            if let Some(api) = api.api() {
                let v = api.call(
                    Method::DELETE,
                    &format!("/api/v1/enrollment-tokens/{id}"),
                    None,
                )?;
                let revoked_at: i64 = field(&v, "revoked_at")?;
                println!("enrollment token {id} is revoked (since {revoked_at} Unix time)");
                return Ok(());
            }
            let db = super::token::open(&dir)?;
            let (info, _) = db.with_conn_blocking(|c| -> Result<_> {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let now = unix_now();
                let (info, newly) = revoke_enrollment_token(&tx, id, now)?;
                if newly {
                    audit::append(
                        &tx,
                        &Actor::host("otter-server enroll-token revoke"),
                        "enrollment_token.revoke",
                        &format!("enrollment_token:{id}"),
                        &json!({"group": info.group, "expires_at": info.expires_at}),
                        now,
                    )?;
                }
                tx.commit()?;
                Ok((info, newly))
            })?;
            println!(
                "enrollment token {id} is revoked (since {} Unix time)",
                info.revoked_at.unwrap_or_default()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("30m"), Ok(1800));
        assert_eq!(parse_duration("24h"), Ok(86_400));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        for bad in ["", "h", "1w", "-1h", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
