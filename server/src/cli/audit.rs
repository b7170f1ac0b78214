//! `otter-server audit verify|head|list`: the hash-chained audit log. `verify` and `head`
//! read the data dir's database on the server host; `list` asks the API (admin or auditor).

use anyhow::{bail, Result};
use otter_server::audit::{self, Head};

use super::rollout::ApiArgs;
use super::DataDirArgs;

/// `audit` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum AuditCommand {
    /// Walk the whole chain and report the first broken entry (exit status 1). Prints the
    /// head (SEQ:HASH): record it elsewhere, since removing the newest entries is detected
    /// only against a recorded head (--anchor).
    Verify {
        /// A head recorded earlier (SEQ:HASH): that entry must still be there, unchanged.
        #[arg(long, value_name = "SEQ:HASH")]
        anchor: Option<Head>,
        #[command(flatten)]
        dir: DataDirArgs,
    },
    /// Print the head, SEQ:HASH, to record elsewhere.
    Head {
        #[command(flatten)]
        dir: DataDirArgs,
    },
    /// List entries through the API, oldest first, as JSON.
    List {
        /// Entries after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// Runs an `audit` subcommand.
pub fn run(cmd: AuditCommand) -> Result<()> {
    match cmd {
        AuditCommand::Verify { anchor, dir } => {
            let db = super::token::open(&dir)?;
            let v =
                db.with_conn_blocking(|c| -> Result<_> { Ok(audit::verify(c, anchor.as_ref())?) })?;
            if let Some(b) = &v.broken {
                eprintln!(
                    "audit log BROKEN at entry {}: {} ({} entries verified before it)",
                    b.seq, b.reason, v.verified
                );
                println!("broken {}", b.seq);
                std::process::exit(1);
            }
            eprintln!(
                "audit log verified: {} entries chain correctly{}; record the head elsewhere",
                v.verified,
                if anchor.is_some() {
                    ", the anchor holds"
                } else {
                    ""
                }
            );
            println!("{}", v.head);
        }
        AuditCommand::Head { dir } => {
            let db = super::token::open(&dir)?;
            let h = db.with_conn_blocking(|c| -> Result<_> { Ok(audit::head(c)?) })?;
            println!("{h}");
        }
        AuditCommand::List { after, limit, api } => {
            if !(1..=1000).contains(&limit) {
                bail!("--limit {limit}: give 1 to 1000");
            }
            let v = api.call(
                reqwest::Method::GET,
                &format!("/api/v1/audit?after={after}&limit={limit}"),
                None,
            )?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
    }
    Ok(())
}
