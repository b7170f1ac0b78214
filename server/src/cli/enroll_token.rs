//! `otter-server enroll-token create [--group G] [--expires-in 24h]`: a single-use
//! enrollment token for a terminal, straight on the data dir's database (safe while the
//! server runs). Only the token is printed on stdout, once; it is stored hashed.

use anyhow::{bail, Result};
use otter_server::db::unix_now;
use otter_server::fleet::create_enrollment_token;

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
    },
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
        } => {
            if let Some(g) = &group {
                if let Err(e) = otter_server::fleet::check_name(g) {
                    bail!("--group {e}");
                }
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
