//! `otter-agent restore`: the command-line glue around [`otter_agent::backup::restore`]:
//! which backup, the server's receipt key pinned in the state dir, the application stopped
//! and started through configured commands (or an online restore), a dry run that tells
//! what the restore would lose, and a progress bar on a terminal.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use otter_agent::backup::http::{check_pinned_receipt_key, parse_receipt_key, receipt_pin_path};
use otter_agent::backup::index::BackupState;
use otter_agent::backup::restore::{live_row_counts, processes_using, rows_lost, ProgressFn};
use otter_agent::backup::{
    prepare, BackupStore, HttpBackupStore, LocalDirStore, ReceiptCheck, Reencrypted,
    RestoreOptions, Selector,
};
use otter_agent::device::{AgentState, DeviceError, Identity};
use otter_agent::restore_requests::Outcome;
use otter_keys::time::UtcTime;

/// Options of `otter-agent restore`.
#[derive(clap::Args, Clone)]
#[command(
    group(clap::ArgGroup::new("which").required(true).args(["latest", "id", "before", "requested"])),
    after_help = "\
Everything is verified before the live database is touched: the device's signature on every
manifest of the chain, the chain itself, the server's countersignature of each (its receipt key
is pinned in STATE/backup/receipt-key on first use), every pack's hash, every page's keyed id,
the whole-file hashes, PRAGMA integrity_check and the row counts. Then the database is replaced
by one atomic rename (the application stopped), or copied in through SQLite's backup API
(--online). If anything fails the live database is left exactly as it was.

Commands (--stop-command, --start-command) are run without a shell: a JSON array of strings
([\"systemctl\",\"stop\",\"pos.service\"]) or words separated by spaces.

Examples:
  otter-agent restore --latest --dry-run
  otter-agent restore --before 2026-11-25T12:00:00Z \\
      --stop-command 'systemctl stop pos.service' --start-command 'systemctl start pos.service'
  otter-agent restore --id 42 --online
  otter-agent restore --requested --stop-command 'systemctl stop pos.service' \\
      --start-command 'systemctl start pos.service'

--requested picks up the oldest restore request an admin or restorer made on the server
(POST /api/v1/backups/DEVICE/restore-requests or the console), restores exactly that backup
and reports the outcome to the server; with no pending request it does nothing. A repair
request (\"backup\": \"newest-verifying\") restores the newest backup that verifies completely,
walking back from the newest, and reports the backups refused and the rows lost per table."
)]
pub struct RestoreArgs {
    /// The agent's state dir (enrolled with `otter-agent enroll`).
    #[arg(long, env = "OTTER_STATE_DIR", value_name = "DIR")]
    state_dir: PathBuf,
    /// The live SQLite database to restore.
    #[arg(long, env = "OTTER_DATABASE", value_name = "FILE")]
    database: PathBuf,
    /// Restore the newest backup.
    #[arg(long)]
    latest: bool,
    /// Restore the backup with this sequence number.
    #[arg(long, value_name = "ID")]
    id: Option<u64>,
    /// Restore the newest backup taken at or before this time (RFC 3339, e.g.
    /// 2026-11-25T12:00:00Z or 2026-11-25T13:00:00+01:00).
    #[arg(long, value_name = "TIME")]
    before: Option<String>,
    /// Restore the backup of the oldest pending restore request made on the server, then
    /// report the outcome to the server (nothing to do when none is pending).
    #[arg(long, conflicts_with_all = ["dry_run", "from_transfer", "from_server_transfer"])]
    requested: bool,
    /// The header hash the chosen backup must have (set for a requested restore).
    #[arg(skip)]
    expect_header: Option<String>,
    /// Verify everything and tell what the restore would lose, but change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Copy the backup into the live database through SQLite's backup API while the
    /// application runs (it waits on the database lock), instead of replacing the file.
    #[arg(long, conflicts_with_all = ["stop_command", "start_command"])]
    online: bool,
    /// Command that stops the application before the database is replaced (then the
    /// restore waits up to 10 s for its processes to close the database).
    #[arg(long, env = "OTTER_RESTORE_STOP_COMMAND", value_name = "COMMAND")]
    stop_command: Option<String>,
    /// Command that starts the application again (also run when the replace failed).
    #[arg(long, env = "OTTER_RESTORE_START_COMMAND", value_name = "COMMAND")]
    start_command: Option<String>,
    /// The server's backup receipt public key (64 hex digits), instead of the pinned one.
    #[arg(long, env = "OTTER_RECEIPT_KEY", value_name = "HEX")]
    receipt_key: Option<String>,
    /// Restore from a directory written by `otter-keys backup reencrypt` (another
    /// terminal's backup, re-encrypted for this one with the fleet recovery key) instead
    /// of from the server.
    #[arg(long, value_name = "DIR")]
    from_transfer: Option<PathBuf>,
    /// Like --from-transfer, but fetch the transfer an admin imported for this terminal on
    /// the server (`otter-server backups import-transfer`) with a signed request: its id, or
    /// `latest`. It is downloaded into the state dir, verified exactly as a directory, and
    /// removed afterwards.
    #[arg(long, value_name = "ID|latest", conflicts_with = "from_transfer")]
    from_server_transfer: Option<String>,
    /// How long an online restore waits for the application's locks.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    busy_timeout: u64,
}

/// Parses a command: a JSON array of strings, or words separated by white space.
fn parse_command(text: &str, flag: &str) -> Result<Vec<String>> {
    let text = text.trim();
    let argv: Vec<String> = if text.starts_with('[') {
        serde_json::from_str(text)
            .with_context(|| format!("{flag}: not a JSON array of strings"))?
    } else {
        text.split_whitespace().map(str::to_owned).collect()
    };
    if argv.first().is_none_or(String::is_empty) {
        bail!("{flag} is empty");
    }
    Ok(argv)
}

/// Runs a configured command; fails unless it exits 0.
fn run_command(argv: &[String], what: &str) -> Result<()> {
    let (program, args) = argv
        .split_first()
        .with_context(|| format!("the {what} command is empty"))?;
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("cannot run the {what} command {program:?}"))?;
    if !status.success() {
        bail!("the {what} command {argv:?} failed ({status})");
    }
    Ok(())
}

/// Parses RFC 3339 (`Z` or a `±HH:MM` offset, optional fraction of a second, dropped: backup
/// times are whole seconds) into UTC.
fn parse_time(text: &str) -> Result<UtcTime> {
    let t = text.trim();
    let bad = || {
        anyhow::anyhow!(
            "--before {t:?} is not an RFC 3339 time such as 2026-11-25T12:00:00Z or \
             2026-11-25T13:00:00+01:00"
        )
    };
    if t.len() < 20 || !t.is_char_boundary(19) {
        return Err(bad());
    }
    let (main, mut rest) = t.split_at(19);
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        rest = &frac[digits..];
    }
    let offset_secs: i64 = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let h: i64 = o[1..3].parse().map_err(|_| bad())?;
            let m: i64 = o[4..6].parse().map_err(|_| bad())?;
            if h > 23 || m > 59 {
                return Err(bad());
            }
            let s = h * 3600 + m * 60;
            if o.starts_with('-') {
                -s
            } else {
                s
            }
        }
        _ => return Err(bad()),
    };
    let local: UtcTime = format!("{}Z", main.replace('t', "T"))
        .parse()
        .map_err(|_| bad())?;
    Ok(local.plus_secs(-offset_secs))
}

fn progress_bar() -> Option<(indicatif::ProgressBar, ProgressFn)> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar.set_message("fetching and verifying packs");
    let b = bar.clone();
    let f: ProgressFn = Arc::new(move |done, total| {
        b.set_length(total);
        b.set_position(done);
    });
    Some((bar, f))
}

/// What a restore loses (or would lose): the text for people and, when the live rows
/// could be counted, the tables (for a requested restore's structured outcome).
struct Loss {
    text: String,
    rows: Option<Vec<otter_agent::backup::restore::RowLoss>>,
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

fn describe_loss(
    live: &Result<std::collections::BTreeMap<String, u64>>,
    backup: &std::collections::BTreeMap<String, u64>,
) -> Loss {
    let (text, rows) = match live {
        Err(e) => (
            format!("the live database's rows cannot be counted ({e:#}); nothing to compare"),
            None,
        ),
        Ok(live) => {
            let lost = rows_lost(live, backup);
            let text = if lost.is_empty() {
                "no table has more rows live than in the backup".into()
            } else {
                let parts: Vec<String> = lost
                    .iter()
                    .map(|l| {
                        format!(
                            "{}: {} rows (live {}, backup {})",
                            l.table,
                            l.live - l.backup,
                            l.live,
                            l.backup
                        )
                    })
                    .collect();
                format!(
                    "rows newer than the backup would be lost: {}",
                    parts.join(", ")
                )
            };
            (text, Some(lost))
        }
    };
    Loss { text, rows }
}

/// The chain checks for a restore from the server: the server's countersignatures under
/// the pinned receipt key, and the chain head this terminal recorded.
fn server_options(
    a: &RestoreArgs,
    store: &HttpBackupStore<'_>,
    device_id: &str,
    progress: Option<ProgressFn>,
) -> Result<RestoreOptions> {
    let backup_state = BackupState::new(&a.state_dir, device_id);
    let receipts = store.receipts()?;
    if let Some(k) = &a.receipt_key {
        parse_receipt_key(k).context("--receipt-key")?;
    }
    let pin = receipt_pin_path(&a.state_dir);
    let pinned =
        check_pinned_receipt_key(&pin, &receipts.receipt_public_hex, a.receipt_key.as_deref())
            .map_err(|e| anyhow::anyhow!("{e}; the live database was not touched"))?;
    if pinned {
        eprintln!(
            "pinned the server's backup receipt key {} in {}",
            receipts.receipt_public_hex,
            pin.display()
        );
    }
    let known_head = match backup_state.load_head() {
        Ok(head) => match head {
            Some(h) => Some((h.sequence, h.hash()?)),
            None => None,
        },
        Err(e) => {
            eprintln!(
                "warning: the local backup index is unreadable ({e}); the chain is checked \
                 without the head this terminal recorded"
            );
            None
        }
    };
    Ok(RestoreOptions {
        // Retention on the server prunes old backups: the chain may start later and have
        // gaps; every manifest is still checked against the server's countersignature.
        allow_pruned_prefix: true,
        allow_pruned_gaps: true,
        pruned_headers: receipts.pruned,
        known_head,
        receipts: Some(ReceiptCheck {
            server_key: receipts.receipt_public_key,
            by_sequence: receipts.by_sequence,
        }),
        progress,
        ..RestoreOptions::default()
    })
}

/// How long a restore waits, after the stop command, for the application's processes to
/// close the database.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The processes that have `database` open; after a stop command, polled for up to
/// [`STOP_GRACE`] until there are none.
fn users_after_stop(database: &std::path::Path, stopped: bool) -> Vec<u32> {
    let deadline = std::time::Instant::now() + STOP_GRACE;
    loop {
        let users = processes_using(database);
        if users.is_empty() || !stopped || std::time::Instant::now() >= deadline {
            return users;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Subdirectory of a transfer directory holding the re-encrypted manifest bodies.
const TRANSFER_BODIES: &str = "reencrypted";

/// `transfer.json` of a directory written by `otter-keys backup reencrypt`.
#[derive(serde::Deserialize)]
struct Transfer {
    format: u32,
    device_id: String,
    device_public_key: String,
}

impl Transfer {
    fn load(dir: &std::path::Path) -> Result<Transfer> {
        let path = dir.join("transfer.json");
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "reading {} (a directory written by `otter-keys backup reencrypt`)",
                path.display()
            )
        })?;
        let t: Transfer = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a transfer description", path.display()))?;
        if t.format != 1 {
            bail!("{}: unknown format {}", path.display(), t.format);
        }
        Ok(t)
    }

    fn public_key(&self) -> Result<otter_keys::crypto::PublicKey> {
        parse_receipt_key(&self.device_public_key).map_err(|_| {
            anyhow::anyhow!(
                "transfer.json: device_public_key is not 64 hex digits (an ed25519 key)"
            )
        })
    }
}

/// A backup refused by verification (the live database untouched): a repair goes on with
/// the next older backup.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// A repair: walks back from the request's backup (the newest when it was made) and
/// restores the first that verifies completely. Returns the outcome and the report for the
/// server: the backup restored, the rows lost per table, and each backup refused and why.
fn repair(
    a: &RestoreArgs,
    req: &otter_agent::restore_requests::PendingRequest,
) -> (Result<()>, String, Outcome) {
    let mut refused: Vec<String> = Vec::new();
    let mut outcome = Outcome::default();
    let listed = |refused: &[String]| {
        if refused.is_empty() {
            String::new()
        } else {
            format!("; refused: {}", refused.join("; "))
        }
    };
    for seq in (1..=req.sequence).rev() {
        let one = RestoreArgs {
            requested: false,
            latest: false,
            before: None,
            id: Some(seq),
            expect_header: (seq == req.sequence).then(|| req.header_hash.clone()),
            ..a.clone()
        };
        match restore_one(one) {
            Ok(loss) => {
                let msg = format!(
                    "repair: restored backup #{seq}, the newest that verifies; {loss}{}",
                    listed(&refused)
                );
                outcome.restored_sequence = Some(seq);
                if let Some(rows) = &loss.rows {
                    outcome = outcome.with_rows_lost(rows);
                }
                return (Ok(()), msg, outcome);
            }
            Err(e) if e.downcast_ref::<Refused>().is_some() => {
                eprintln!("repair: backup #{seq} refused: {e:#}");
                let why: String = format!("{e:#}").chars().take(200).collect();
                outcome.refuse(seq, &why);
                refused.push(format!("#{seq} ({why})"));
            }
            Err(e) => {
                let msg = format!(
                    "repair: restoring backup #{seq} failed: {e:#}{}",
                    listed(&refused)
                );
                return (Err(e), msg, outcome);
            }
        }
    }
    let msg = format!(
        "repair: no backup verifies; the live database was not touched{}",
        listed(&refused)
    );
    (Err(anyhow::anyhow!("{msg}")), msg, outcome)
}

/// `otter-agent restore --requested`: one pickup of the oldest pending request, its outcome
/// reported to the server.
fn requested(a: RestoreArgs) -> Result<()> {
    let pending = otter_agent::restore_requests::pending(&a.state_dir)?;
    let Some(req) = pending.first() else {
        println!("no pending restore request");
        return Ok(());
    };
    println!(
        "restore request {} by {}: {}backup #{} ({})",
        req.id,
        req.requested_by,
        if req.repair {
            "repair from the newest verifying "
        } else {
            ""
        },
        req.sequence,
        req.reason
    );
    let (result, message, outcome) = if req.repair {
        repair(&a, req)
    } else {
        let one = RestoreArgs {
            requested: false,
            id: Some(req.sequence),
            expect_header: Some(req.header_hash.clone()),
            ..a.clone()
        };
        let result = restore_one(one);
        let (message, outcome) = match &result {
            Ok(loss) => {
                let o = Outcome {
                    restored_sequence: Some(req.sequence),
                    ..Outcome::default()
                };
                let o = match &loss.rows {
                    Some(rows) => o.with_rows_lost(rows),
                    None => o,
                };
                (format!("restored backup #{}; {loss}", req.sequence), o)
            }
            Err(e) => (format!("{e:#}"), Outcome::default()),
        };
        (result.map(|_| ()), message, outcome)
    };
    println!("{message}");
    let ok = result.is_ok();
    let reported = otter_agent::restore_requests::report_outcome(
        &a.state_dir,
        req.id,
        ok,
        &message,
        Some(&outcome),
    );
    if let Ok(false) = reported {
        eprintln!("the server took the report without its structured outcome (an older server?)");
    }
    if let Err(e) = reported {
        let e = anyhow::Error::from(e).context(format!(
            "reporting the outcome of restore request {} to the server",
            req.id
        ));
        return match result {
            Ok(()) => Err(e.context("the database was restored")),
            Err(r) => Err(r.context(format!("{e:#}"))),
        };
    }
    println!(
        "reported restore request {}: {}",
        req.id,
        if ok { "done" } else { "failed" }
    );
    result
}

/// File of the one-time restore identity of a terminal without a backup identity (a
/// write-only one), under the state dir.
pub const RESTORE_KEY_FILE: &str = "restore.key";

/// What a write-only terminal says when asked to restore from the server.
fn write_only_refusal(state_dir: &std::path::Path) -> String {
    format!(
        "this terminal is write-only (the server's [backups] write_only or write_only_groups): \
         it holds no key that opens its backups, not even its own, and the live database was \
         not touched. Restore through the fleet recovery key: run `otter-agent restore-key \
         --state-dir {}` here and give the age1 recipient it prints to an admin, who \
         re-encrypts the backup with `otter-keys backup reencrypt --to RECIPIENT` (the \
         recovery identity stays offline); then restore that transfer with `otter-agent \
         restore --from-transfer DIR` (see docs/backups.md, write-only fleets)",
        state_dir.display()
    )
}

/// The age identity that opens what this restore reads, and whether it is the one-time
/// restore identity: the terminal's backup identity, or on a terminal without one
/// (write-only) its restore identity, for a transfer only.
fn decryption_key(
    a: &RestoreArgs,
    state: &AgentState,
    backup: Option<&otter_keys::age::x25519::Identity>,
) -> Result<(otter_keys::age::x25519::Identity, bool)> {
    let transfer = a.from_transfer.is_some();
    match backup {
        Some(b) if !state.backups_write_only => Ok((b.clone(), false)),
        _ if !transfer => Err(anyhow::anyhow!("{}", write_only_refusal(&a.state_dir))),
        _ => {
            let path = a.state_dir.join(RESTORE_KEY_FILE);
            if !path.exists() {
                return Err(anyhow::anyhow!(
                    "this terminal has no backup identity (write-only) and no restore identity \
                     {}: run `otter-agent restore-key --state-dir {}`, have the transfer \
                     re-encrypted to the recipient it prints, then restore again; the live \
                     database was not touched",
                    path.display(),
                    a.state_dir.display()
                ));
            }
            Ok((
                otter_agent::device::identity::load_age_identity(&path)?,
                true,
            ))
        }
    }
}

/// Options of `otter-agent restore-key`.
#[derive(clap::Args)]
#[command(after_help = "\
A write-only terminal keeps no backup identity, so a backup can reach it only re-encrypted
with the fleet recovery key to a key it holds for that restore. This command creates that
key (STATE/restore.key, 0600; the same one again until a restore from a transfer succeeds,
which deletes it) and prints its public half (age1...). Give it to the admin, who runs
`otter-keys backup reencrypt ... --to RECIPIENT`; then `otter-agent restore --from-transfer`.")]
pub struct RestoreKeyArgs {
    /// The agent's state dir (enrolled with `otter-agent enroll`).
    #[arg(long, env = "OTTER_STATE_DIR", value_name = "DIR")]
    state_dir: PathBuf,
}

/// `otter-agent restore-key`: creates the one-time restore identity if there is none and
/// prints its recipient.
pub fn restore_key(a: RestoreKeyArgs) -> Result<()> {
    AgentState::load(&a.state_dir)?.ok_or_else(|| DeviceError::NotEnrolled {
        dir: a.state_dir.clone(),
    })?;
    let path = a.state_dir.join(RESTORE_KEY_FILE);
    let identity = if path.exists() {
        otter_agent::device::identity::load_age_identity(&path)?
    } else {
        let id = otter_keys::age::x25519::Identity::generate();
        otter_agent::device::identity::save_age_identity(
            &path,
            &id,
            "Otter one-time restore identity (deleted after a restore from a transfer)",
        )?;
        id
    };
    println!("{}", identity.to_public());
    Ok(())
}

/// Deletes the one-time restore identity after a restore that used it.
fn forget_restore_key(a: &RestoreArgs) {
    let path = a.state_dir.join(RESTORE_KEY_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => eprintln!("removed the one-time restore identity {}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => eprintln!(
            "warning: cannot remove the one-time restore identity {}: {e}; remove it by hand",
            path.display()
        ),
    }
}

/// The directory a transfer from the server is downloaded into (`STATE/transfer-download`),
/// removed when dropped; a leftover of a killed restore is removed first.
struct Download(PathBuf);

impl Download {
    fn create(state_dir: &std::path::Path) -> Result<Download> {
        let dir = state_dir.join("transfer-download");
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("removing the leftover {}", dir.display()))?;
        }
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Download(dir))
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `otter-agent restore`.
pub fn restore(a: RestoreArgs) -> Result<()> {
    if a.requested {
        return requested(a);
    }
    if let Some(which) = &a.from_server_transfer {
        let download = Download::create(&a.state_dir)?;
        let fetched =
            otter_agent::server_transfer::fetch_transfer(&a.state_dir, which, &download.0)
                .map_err(|e| {
                    anyhow::Error::from(e).context(format!(
                        "fetching backup transfer {which} from the server; the live database \
                         was not touched"
                    ))
                })?;
        eprintln!(
            "fetched backup transfer {which} from the server: {} files, {} bytes",
            fetched.files, fetched.bytes
        );
        let one = RestoreArgs {
            from_server_transfer: None,
            from_transfer: Some(download.0.clone()),
            ..a.clone()
        };
        return restore_one(one).map(|_| ());
    }
    restore_one(a).map(|_| ())
}

/// One restore (or dry run) of the selected backup; returns what it lost (or would lose).
/// A backup that fails verification is a [`Refused`] error.
fn restore_one(a: RestoreArgs) -> Result<Loss> {
    let selector = match (a.latest, a.id, &a.before) {
        (true, None, None) => Selector::Latest,
        (false, Some(n), None) => Selector::Sequence(n),
        (false, None, Some(t)) => Selector::AtOrBefore(parse_time(t)?),
        _ => bail!("give exactly one of --latest, --id and --before"),
    };
    let stop = a
        .stop_command
        .as_deref()
        .map(|c| parse_command(c, "--stop-command"))
        .transpose()?;
    let start = a
        .start_command
        .as_deref()
        .map(|c| parse_command(c, "--start-command"))
        .transpose()?;
    if a.online && (stop.is_some() || start.is_some()) {
        bail!("--online restores while the application runs: do not give stop/start commands");
    }
    let state = AgentState::load(&a.state_dir)?.ok_or_else(|| DeviceError::NotEnrolled {
        dir: a.state_dir.clone(),
    })?;
    let identity = Identity::load(&a.state_dir)?;
    let (key, one_time_key) = decryption_key(&a, &state, identity.backup.as_ref())?;
    let bar = progress_bar();
    let progress = bar.as_ref().map(|(_, f)| Arc::clone(f));
    let (source_device, prepared) = match &a.from_transfer {
        None => {
            let store =
                HttpBackupStore::new(&state.server_url, &state.device_id, &identity.signing)?;
            let options = server_options(&a, &store, &state.device_id, progress)?;
            let prepared = prepare(
                &store,
                &state.device_id,
                &identity.signing.public_key(),
                &key,
                selector,
                &a.database,
                &options,
            );
            (state.device_id.clone(), prepared)
        }
        Some(dir) => {
            let t = Transfer::load(dir)?;
            let store = LocalDirStore::new(dir);
            let mut bodies = std::collections::BTreeMap::new();
            for seq in store.list_manifests(&t.device_id)? {
                let path = dir
                    .join(TRANSFER_BODIES)
                    .join(&t.device_id)
                    .join(format!("{seq:020}.body"));
                let body = std::fs::read(&path).with_context(|| {
                    format!(
                        "reading {}: the transfer directory is incomplete; the live database \
                         was not touched",
                        path.display()
                    )
                })?;
                bodies.insert(seq, body);
            }
            eprintln!(
                "restoring a backup of device {} re-encrypted for this terminal; its \
                 manifests are checked with that device's key {}",
                t.device_id, t.device_public_key
            );
            let options = RestoreOptions {
                reencrypted: Some(Reencrypted { bodies }),
                allow_pruned_prefix: true,
                allow_pruned_gaps: true,
                progress,
                ..RestoreOptions::default()
            };
            let prepared = prepare(
                &store,
                &t.device_id,
                &t.public_key()?,
                &key,
                selector,
                &a.database,
                &options,
            );
            (t.device_id, prepared)
        }
    };
    if let Some((b, _)) = &bar {
        b.finish_and_clear();
    }
    let prepared = prepared
        .map_err(|e| anyhow::Error::new(Refused(format!("{:#}", anyhow::Error::from(e)))))?;
    let r = prepared.report().clone();
    if let Some(h) = &a.expect_header {
        if &r.header_hash != h {
            return Err(anyhow::Error::new(Refused(format!(
                "backup #{} has header {} but the request names {h}; the live database was \
                 not touched",
                r.sequence, r.header_hash
            ))));
        }
    }
    println!(
        "verified backup #{} of device {} (taken {}, header {}): {} manifests, {} packs \
         ({} bytes), {} pages, {} bytes of database",
        r.sequence,
        source_device,
        r.created,
        r.header_hash,
        r.manifests_checked,
        r.packs,
        r.pack_bytes,
        r.pages,
        r.database_bytes
    );
    if a.dry_run {
        let live = live_row_counts(&a.database).map_err(anyhow::Error::from);
        let loss = describe_loss(&live, prepared.row_counts());
        println!("dry run: {loss}");
        println!("dry run: {} was not changed", a.database.display());
        return Ok(loss);
    }

    if let Some(argv) = &stop {
        run_command(argv, "stop")
            .map_err(|e| anyhow::anyhow!("{e:#}; the live database was not touched"))?;
    }
    let result = (|| -> Result<Loss> {
        let live = live_row_counts(&a.database).map_err(anyhow::Error::from);
        let loss = describe_loss(&live, prepared.row_counts());
        if a.online {
            prepared.apply_online(&a.database, Duration::from_secs(a.busy_timeout))?;
        } else {
            // A stop command may return before the application has exited (`kill PID`):
            // give it a moment to let go of the database.
            let users = users_after_stop(&a.database, stop.is_some());
            if !users.is_empty() {
                let named: Vec<String> = users
                    .iter()
                    .map(|pid| {
                        let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
                            .map(|c| {
                                String::from_utf8_lossy(&c)
                                    .replace('\0', " ")
                                    .trim()
                                    .chars()
                                    .take(120)
                                    .collect::<String>()
                            })
                            .unwrap_or_default();
                        format!("{pid} ({cmd})")
                    })
                    .collect();
                bail!(
                    "processes {} have {} open: stop the application first \
                     (--stop-command) or restore with --online; the live database was not \
                     touched",
                    named.join(", "),
                    a.database.display()
                );
            }
            prepared.replace(&a.database)?;
        }
        println!(
            "restored backup #{} into {}{}; {loss}",
            r.sequence,
            a.database.display(),
            if a.online { " (online)" } else { "" }
        );
        if one_time_key {
            forget_restore_key(&a);
        }
        Ok(loss)
    })();
    if stop.is_some() || start.is_some() {
        if let Some(argv) = &start {
            if let Err(e) = run_command(argv, "start") {
                return match result {
                    Ok(_) => Err(e.context("the database was restored")),
                    Err(r) => Err(r.context(format!("and starting the application failed: {e:#}"))),
                };
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_with_offsets_and_fractions() {
        let z: UtcTime = "2026-11-25T12:00:00Z".parse().unwrap();
        assert_eq!(parse_time("2026-11-25T12:00:00Z").unwrap(), z);
        assert_eq!(parse_time("2026-11-25T13:00:00+01:00").unwrap(), z);
        assert_eq!(parse_time("2026-11-25T10:30:00-01:30").unwrap(), z);
        assert_eq!(parse_time("2026-11-25T12:00:00.999Z").unwrap(), z);
        for bad in [
            "",
            "yesterday",
            "2026-11-25",
            "2026-11-25T12:00:00",
            "2026-11-25T12:00:00+1",
            "2026-11-25T12:00:00.Z",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn commands_are_json_arrays_or_words() {
        assert_eq!(
            parse_command(r#"["systemctl","stop","pos app"]"#, "--x").unwrap(),
            ["systemctl", "stop", "pos app"]
        );
        assert_eq!(
            parse_command(" systemctl  stop pos ", "--x").unwrap(),
            ["systemctl", "stop", "pos"]
        );
        assert!(parse_command("  ", "--x").is_err());
        assert!(parse_command("[]", "--x").is_err());
        assert!(parse_command("[1]", "--x").is_err());
    }
}
