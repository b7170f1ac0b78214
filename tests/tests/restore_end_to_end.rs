//! Restore end to end, with the real binaries on loopback: `otter-server serve` with a
//! recovery key, a terminal enrolled with `otter-agent enroll`, backups of the reference POS
//! database (`pos_db.py`, small) with `otter-agent backup`, then `otter-agent restore`:
//!
//! - `--latest`, `--id` and `--before` restore exactly the chosen backup (same `.dump`, and
//!   the file's SHA-256 is the one the signed manifest records), over a live database that
//!   changed since and was left with an un-checkpointed write-ahead log; `--dry-run` tells
//!   which rows would be lost and changes nothing; `--online` copies through SQLite's
//!   backup API; stop and start commands run around the replace; a replace is refused while
//!   another process holds the database open;
//! - refused with a clear error, the live database untouched: a pack tampered with or
//!   truncated in the server's store, a pack swapped for another device's, a manifest of
//!   another device in this device's place, the wrong backup key, a changed receipt key;
//! - SIGKILL at random moments of a restore (by rename, and every third one `--online`),
//!   `OTTER_RESTORE_TRIALS` times (default 30): the live database is always exactly the old
//!   one or exactly the restored one;
//! - after the server's retention pruned the oldest backups (`otter-server backups prune`),
//!   the kept ones still restore exactly;
//! - a replacement terminal restores a dead terminal's backup re-encrypted for it with the
//!   recovery key (`otter-keys backup reencrypt`, `otter-agent restore --from-transfer`).
//!
//! The binaries are taken from the target dir next to this test executable: build them
//! first (`cargo build --workspace`; `cargo test --workspace` does).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/fleet.rs"]
mod fleet;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{command, show};
use fleet::Fleet;
use otter_keys::envelope::{ManifestBody, SignedManifest};
use serde_json::Value;

/// Rows of the test database: small, so that the test is fast.
const ROWS: &str = "6000";

/// The reference database tool: `OTTER_POS_DB`, or `shared/tools/pos_db.py` beside the
/// repository.
fn pos_db() -> PathBuf {
    let path = std::env::var_os("OTTER_POS_DB")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/pos_db.py")
        });
    assert!(
        path.exists(),
        "the reference database tool is missing at {}: set OTTER_POS_DB to pos_db.py",
        path.display()
    );
    path
}

fn pos(args: &[&str]) {
    let out = Command::new("python3")
        .arg(pos_db())
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "pos_db.py {args:?}: {}", show(&out));
}

/// Runs a python3 snippet with `args`; returns stdout.
fn py(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The database's content as SQL (`iterdump`, like the shell's `.dump`), hashed, and its
/// `PRAGMA integrity_check`. Opening it applies a write-ahead log, as the application would.
fn dump(db: &Path) -> String {
    py(
        "import sqlite3, sys, hashlib\n\
         c = sqlite3.connect(sys.argv[1])\n\
         ok = c.execute('PRAGMA integrity_check').fetchone()[0]\n\
         h = hashlib.sha256('\\n'.join(c.iterdump()).encode()).hexdigest()\n\
         c.close()\n\
         print(ok, h)",
        &[db.to_str().unwrap()],
    )
    .trim()
    .to_owned()
}

/// SHA-256 of a file, hex.
fn sha256(path: &Path) -> String {
    py(
        "import hashlib, sys\nprint(hashlib.sha256(open(sys.argv[1], 'rb').read()).hexdigest())",
        &[path.to_str().unwrap()],
    )
    .trim()
    .to_owned()
}

/// The database file and its sidecars, byte for byte (what "untouched" means).
fn files_of(db: &Path) -> Vec<(String, Option<Vec<u8>>)> {
    ["", "-wal", "-journal"]
        .iter()
        .map(|s| {
            let p = format!("{}{s}", db.display());
            let bytes = std::fs::read(&p).ok();
            (p, bytes)
        })
        .collect()
}

/// Commits `sql` in WAL mode and exits without closing, so the log is left un-checkpointed
/// (as after a crash of the application).
fn write_and_crash(db: &Path, sql: &str) {
    py(
        "import sqlite3, sys, os\n\
         c = sqlite3.connect(sys.argv[1])\n\
         c.execute('PRAGMA journal_mode=WAL')\n\
         c.execute('PRAGMA wal_autocheckpoint=0')\n\
         c.executescript(sys.argv[2])\n\
         c.commit()\n\
         sys.stdout.flush()\n\
         os._exit(0)",
        &[db.to_str().unwrap(), sql],
    );
    assert!(
        std::fs::metadata(format!("{}-wal", db.display())).is_ok_and(|m| m.len() > 0),
        "the write-ahead log stays"
    );
}

/// A server with a recovery key and an enrolled terminal with a live database.
struct Setup {
    fleet: Fleet,
    state: PathBuf,
    db: PathBuf,
    device_id: String,
}

impl Setup {
    fn new() -> Setup {
        Setup::with_config("")
    }

    /// A setup whose server configuration has `extra` after the `[backups]` section.
    fn with_config(extra: &str) -> Setup {
        let fleet = Fleet::builder().recovery_key().server_toml(extra).start();
        let t = fleet.enroll("terminal");
        let s = Setup {
            db: t.dir.join("pos.db"),
            state: t.state,
            device_id: t.device_id,
            fleet,
        };
        pos(&["make", s.db.to_str().unwrap(), ROWS]);
        s
    }

    /// Enrolls a terminal with state in `TMP/NAME/state`; returns the state dir and id.
    fn enroll(&self, name: &str) -> (PathBuf, String) {
        let t = self.fleet.enroll(name);
        (t.state, t.device_id)
    }

    fn backup(&self, state: &Path, db: &Path) {
        let out = command("otter-agent")
            .args(["backup", "--pack-size", "65536", "--state-dir"])
            .arg(state)
            .arg("--database")
            .arg(db)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", show(&out));
    }

    fn restore_cmd(&self, args: &[&str]) -> Command {
        let mut c = command("otter-agent");
        c.arg("restore")
            .args(args)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--database")
            .arg(&self.db);
        c
    }

    fn restore(&self, args: &[&str]) -> Output {
        self.restore_cmd(args).output().unwrap()
    }

    fn manifest_path(&self, device: &str, seq: u64) -> PathBuf {
        self.fleet
            .data
            .join(format!("store/backups/{device}/manifests/{seq:020}"))
    }

    /// A stored manifest of this terminal, and its body opened with the recovery key.
    fn manifest(&self, seq: u64) -> (SignedManifest, ManifestBody) {
        let bytes = std::fs::read(self.manifest_path(&self.device_id, seq)).unwrap();
        let m = SignedManifest::from_bytes(&bytes, 1 << 28).unwrap();
        let body = m.open_body(self.fleet.recovery(), 1 << 28).unwrap();
        (m, body)
    }

    fn pack_path(&self, device: &str, id: &impl std::fmt::Display) -> PathBuf {
        self.fleet
            .data
            .join(format!("store/backups/{device}/packs/{id}"))
    }
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", show(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Refused: exit 1, the message contains `needle`, the live files are unchanged.
fn refused(s: &Setup, args: &[&str], needle: &str) -> String {
    let before = files_of(&s.db);
    let out = s.restore(args);
    assert!(!out.status.success(), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("refused {args:?}: {}", err.trim());
    assert!(err.contains(needle), "expected {needle:?}: {}", show(&out));
    assert!(
        err.contains("not touched") || err.contains("not changed"),
        "the error says the database was left alone: {err}"
    );
    assert!(files_of(&s.db) == before, "the live database is untouched");
    leftovers_none(&s.db);
    err
}

/// No temporary restore file is left beside the database.
fn leftovers_none(db: &Path) {
    let dir = db.parent().unwrap();
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".restore-"))
        .collect();
    assert!(left.is_empty(), "leftovers: {left:?}");
}

#[test]
fn latest_id_and_before_restore_exactly_the_chosen_backup() {
    let s = Setup::new();
    s.backup(&s.state, &s.db);
    // The first backup pinned the server's receipt key.
    let pinned = std::fs::read_to_string(s.state.join("backup/receipt-key")).unwrap();
    assert_eq!(pinned.trim().len(), 64, "{pinned}");
    let dump1 = dump(&s.db);
    assert!(dump1.starts_with("ok "), "{dump1}");
    std::thread::sleep(Duration::from_millis(1100));
    pos(&["mutate", s.db.to_str().unwrap(), "update", "1"]);
    pos(&["mutate", s.db.to_str().unwrap(), "append", "2"]);
    s.backup(&s.state, &s.db);
    let dump2 = dump(&s.db);
    assert_ne!(dump1, dump2);
    let (m1, body1) = s.manifest(1);
    let (m2, body2) = s.manifest(2);
    assert!(m2.header.created > m1.header.created);

    // The live database moves on, and is left with a write-ahead log a crash left behind.
    pos(&["mutate", s.db.to_str().unwrap(), "append", "3"]);
    write_and_crash(&s.db, "DELETE FROM transactions WHERE rowid % 97 = 0;");
    let live = dump(&s.db);
    assert_ne!(live, dump2);
    write_and_crash(
        &s.db,
        "UPDATE transactions SET rowid = rowid WHERE rowid = 1;",
    );

    // A dry run verifies everything, tells what would be lost, and changes nothing.
    let before = files_of(&s.db);
    let out = ok(&s.restore(&["--latest", "--dry-run"]));
    assert!(out.contains("verified backup #2"), "{out}");
    assert!(out.contains("would be lost"), "{out}");
    assert!(out.contains("dry run"), "{out}");
    assert!(files_of(&s.db) == before, "a dry run changes nothing");

    let out = ok(&s.restore(&["--latest"]));
    assert!(out.contains("restored backup #2"), "{out}");
    assert_eq!(dump(&s.db), dump2);
    assert_eq!(
        sha256(&s.db),
        body2.file_sha256,
        "the very snapshot's bytes"
    );
    assert!(!Path::new(&format!("{}-wal", s.db.display())).exists());
    leftovers_none(&s.db);

    // --id 1 and --before (a time between the two backups) pick #1.
    ok(&s.restore(&["--id", "1"]));
    assert_eq!(dump(&s.db), dump1);
    assert_eq!(sha256(&s.db), body1.file_sha256);
    ok(&s.restore(&["--latest"]));
    assert_eq!(dump(&s.db), dump2);
    let between = m1.header.created.to_string();
    let out = ok(&s.restore(&["--before", &between]));
    assert!(out.contains("restored backup #1"), "{out}");
    assert_eq!(dump(&s.db), dump1);
    // The same instant written with an offset.
    let t = m2.header.created.plus_secs(3600).to_string();
    let with_offset = format!("{}+01:00", &t[..19]);
    let out = ok(&s.restore(&["--before", &with_offset]));
    assert!(out.contains("restored backup #2"), "{out}");
    assert_eq!(dump(&s.db), dump2);

    // Nothing that old; a sequence that does not exist; a malformed time.
    let early = m1.header.created.plus_secs(-3600).to_string();
    refused(&s, &["--before", &early], "matches");
    refused(&s, &["--id", "9"], "matches");
    let out = s.restore(&["--before", "yesterday"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("RFC 3339"));
    let out = s.restore(&[]);
    assert!(!out.status.success(), "a selector is required");

    // Online: through SQLite's backup API while another process holds the database open;
    // a replace is refused then.
    ok(&s.restore(&["--id", "1"]));
    let mut holder = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1])\n\
             c.execute('SELECT count(*) FROM transactions').fetchone()\n\
             print('ready', flush=True)\n\
             sys.stdin.read()",
        ])
        .arg(&s.db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(holder.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
    }
    let err = refused(&s, &["--latest"], "open");
    assert!(err.contains(&holder.id().to_string()), "{err}");
    let out = ok(&s.restore(&["--latest", "--online"]));
    assert!(out.contains("(online)"), "{out}");
    assert_eq!(
        dump(&s.db),
        dump2,
        "the online copy holds the backup's content"
    );

    // Stop and start commands around the replace: the holder is stopped, then a start
    // marker written. A stop command that fails stops the restore before anything changes.
    ok(&s.restore(&["--id", "1", "--online"]));
    assert_eq!(dump(&s.db), dump1);
    let marker = s.fleet.tmp.path().join("started");
    let stop = format!("[\"kill\",\"{}\"]", holder.id());
    let start = format!("[\"touch\",\"{}\"]", marker.display());
    let out = ok(&s.restore(&[
        "--latest",
        "--stop-command",
        &stop,
        "--start-command",
        &start,
    ]));
    assert!(out.contains("restored backup #2"), "{out}");
    let _ = holder.wait();
    assert!(marker.exists(), "the start command ran");
    assert_eq!(dump(&s.db), dump2);
    std::fs::remove_file(&marker).unwrap();
    refused(
        &s,
        &[
            "--id",
            "1",
            "--stop-command",
            "false",
            "--start-command",
            &start,
        ],
        "stop",
    );
    assert!(!marker.exists(), "no start after a failed stop");
    assert_eq!(dump(&s.db), dump2);

    // The server replays the old manifest as the newest one, or hides the newest: refused
    // (the chain, and the head this terminal recorded).
    ok(&s.restore(&["--id", "1"]));
    let second = s.manifest_path(&s.device_id, 2);
    let second_bytes = std::fs::read(&second).unwrap();
    std::fs::copy(s.manifest_path(&s.device_id, 1), &second).unwrap();
    refused(&s, &["--latest"], "replayed");
    std::fs::write(&second, &second_bytes).unwrap();
    py(
        "import sqlite3, sys\n\
         c = sqlite3.connect(sys.argv[1])\n\
         c.execute('DELETE FROM backup_manifests WHERE device_id = ? AND sequence = 2', (sys.argv[2],))\n\
         c.commit()",
        &[s.fleet.data.join("otter.db").to_str().unwrap(), &s.device_id],
    );
    refused(&s, &["--latest"], "hidden");
    assert_eq!(dump(&s.db), dump1);
}

#[test]
fn damaged_swapped_or_foreign_backups_are_refused_and_the_live_database_is_untouched() {
    let s = Setup::new();
    s.backup(&s.state, &s.db);
    // A second terminal, with its own backups.
    let (state_b, id_b) = s.enroll("other");
    let db_b = s.fleet.tmp.path().join("other/pos.db");
    pos(&["make", db_b.to_str().unwrap(), "2000"]);
    s.backup(&state_b, &db_b);
    // The live database changes after the backup (so a restore would change it).
    pos(&["mutate", s.db.to_str().unwrap(), "append", "2"]);
    let live = dump(&s.db);

    let (m, _) = s.manifest(1);
    let pack = m.header.packs[0].id;
    let pack_file = s.pack_path(&s.device_id, &pack);
    let original = std::fs::read(&pack_file).unwrap();

    // A pack tampered with in the server's store.
    let mut bad = original.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    std::fs::write(&pack_file, &bad).unwrap();
    refused(&s, &["--latest"], "pack");
    // Truncated.
    std::fs::write(&pack_file, &original[..original.len() - 100]).unwrap();
    refused(&s, &["--latest"], "pack");
    // Swapped for a pack of the other terminal.
    let (mb, _) = {
        let bytes = std::fs::read(s.manifest_path(&id_b, 1)).unwrap();
        let m = SignedManifest::from_bytes(&bytes, 1 << 28).unwrap();
        (m, ())
    };
    let foreign = std::fs::read(s.pack_path(&id_b, &mb.header.packs[0].id)).unwrap();
    std::fs::write(&pack_file, &foreign).unwrap();
    refused(&s, &["--latest"], "pack");
    std::fs::write(&pack_file, &original).unwrap();
    assert_eq!(dump(&s.db), live);

    // The other terminal's manifest in this terminal's place.
    let mine = s.manifest_path(&s.device_id, 1);
    let my_manifest = std::fs::read(&mine).unwrap();
    std::fs::copy(s.manifest_path(&id_b, 1), &mine).unwrap();
    refused(&s, &["--latest"], "device");
    std::fs::write(&mine, &my_manifest).unwrap();

    // The wrong backup key (the other terminal's).
    let key_file = s.state.join("backup.key");
    let my_key = std::fs::read(&key_file).unwrap();
    std::fs::copy(state_b.join("backup.key"), &key_file).unwrap();
    refused(&s, &["--latest"], "decrypt");
    std::fs::write(&key_file, &my_key).unwrap();

    // A receipt key other than the one pinned by the first backup.
    let pinned = s.state.join("backup/receipt-key");
    ok(&s.restore(&["--latest", "--dry-run"]));
    let server_key = std::fs::read_to_string(&pinned).unwrap();
    assert_eq!(server_key.trim().len(), 64);
    std::fs::write(&pinned, format!("{}\n", "ab".repeat(32))).unwrap();
    refused(&s, &["--latest"], "receipt key");
    std::fs::write(&pinned, &server_key).unwrap();

    // Everything back in place: the restore goes through.
    assert_eq!(dump(&s.db), live);
    ok(&s.restore(&["--latest"]));
    assert_ne!(dump(&s.db), live);

    // A backup checks its receipt against the pinned key as well.
    std::fs::write(&pinned, format!("{}\n", "cd".repeat(32))).unwrap();
    let out = command("otter-agent")
        .args(["backup", "--state-dir"])
        .arg(&s.state)
        .arg("--database")
        .arg(&s.db)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("receipt key"),
        "{}",
        show(&out)
    );
}

/// A small deterministic generator for kill delays (seed printed, `OTTER_RESTORE_SEED`).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

#[test]
fn sigkill_during_restore_leaves_exactly_the_old_or_the_restored_database() {
    let trials: usize = std::env::var("OTTER_RESTORE_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("OTTER_RESTORE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("OTTER_RESTORE_TRIALS={trials} OTTER_RESTORE_SEED={seed}");
    let mut rng = Lcg(seed);

    let s = Setup::new();
    s.backup(&s.state, &s.db);
    let restored = dump(&s.db);
    // The old database: changed since, with a write-ahead log left by a crash. Kept as a
    // template (file and log) copied into place before each trial.
    pos(&["mutate", s.db.to_str().unwrap(), "append", "5"]);
    write_and_crash(&s.db, "DELETE FROM transactions WHERE rowid % 5 = 0;");
    let template = s.fleet.tmp.path().join("template");
    std::fs::create_dir_all(&template).unwrap();
    let wal = |p: &Path| PathBuf::from(format!("{}-wal", p.display()));
    std::fs::copy(&s.db, template.join("pos.db")).unwrap();
    std::fs::copy(wal(&s.db), template.join("pos.db-wal")).unwrap();
    let old = {
        let probe = s.fleet.tmp.path().join("probe");
        std::fs::create_dir_all(&probe).unwrap();
        std::fs::copy(&s.db, probe.join("pos.db")).unwrap();
        std::fs::copy(wal(&s.db), probe.join("pos.db-wal")).unwrap();
        dump(&probe.join("pos.db"))
    };
    assert_ne!(old, restored);
    let put_old = || {
        for suffix in ["-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", s.db.display()));
        }
        std::fs::copy(template.join("pos.db"), &s.db).unwrap();
        std::fs::copy(template.join("pos.db-wal"), wal(&s.db)).unwrap();
    };

    // How long an uninterrupted restore takes, to spread the kills over it.
    put_old();
    let started = Instant::now();
    ok(&s.restore(&["--latest"]));
    let full = started.elapsed();
    assert_eq!(dump(&s.db), restored);

    let (mut saw_old, mut saw_new) = (0, 0);
    for trial in 0..trials {
        put_old();
        // Every third trial copies through SQLite's backup API instead of renaming.
        let args: &[&str] = if trial % 3 == 2 {
            &["--latest", "--online"]
        } else {
            &["--latest"]
        };
        let mut child = s
            .restore_cmd(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Anywhere from the start to a little past the usual end.
        let max = full.as_micros() as u64 * 12 / 10 + 1;
        std::thread::sleep(Duration::from_micros(rng.next() % max));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let now = dump(&s.db);
        if now == old {
            saw_old += 1;
        } else if now == restored {
            saw_new += 1;
        } else {
            panic!("trial {trial} (seed {seed}): the database is neither the old nor the restored one: {now}");
        }
    }
    eprintln!("{trials} kills: {saw_old} left the old database, {saw_new} the restored one");
    // After the kills, a restore still goes through and cleans up what killed runs left.
    put_old();
    ok(&s.restore(&["--latest"]));
    assert_eq!(dump(&s.db), restored);
    leftovers_none(&s.db);
}

#[test]
fn a_replacement_terminal_restores_a_dead_terminals_backup_reencrypted_with_the_recovery_key() {
    use otter_keys::age::secrecy::ExposeSecret;

    let s = Setup::new();
    s.backup(&s.state, &s.db);
    pos(&["mutate", s.db.to_str().unwrap(), "append", "2"]);
    s.backup(&s.state, &s.db);
    let dead = dump(&s.db);
    let (_, body) = s.manifest(2);

    // The terminal dies; a new one enrolls. The admin reads both from the device list.
    let (new_state, new_id) = s.enroll("replacement");
    let out = command("otter-server")
        .args(["devices", "list", "--json", "--data-dir"])
        .arg(&s.fleet.data)
        .output()
        .unwrap();
    let devices: Value = serde_json::from_slice(ok(&out).as_bytes()).unwrap();
    let find = |id: &str| {
        devices
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device_id"] == id)
            .cloned()
            .unwrap()
    };
    let dead_key = find(&s.device_id)["public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let new_recipient = find(&new_id)["backup_recipient"]
        .as_str()
        .unwrap()
        .to_owned();

    // Offline, with the recovery identity (a plain age identity file here).
    let identity = s.fleet.tmp.path().join("recovery.txt");
    std::fs::write(
        &identity,
        format!("{}\n", s.fleet.recovery().to_string().expose_secret()),
    )
    .unwrap();
    let from = s.fleet.data.join(format!("store/backups/{}", s.device_id));
    let transfer = s.fleet.tmp.path().join("transfer");
    let reencrypt = |key: &str, out: &Path| {
        command("otter-keys")
            .args(["backup", "reencrypt", "--identity"])
            .arg(&identity)
            .arg("--from")
            .arg(&from)
            .args(["--device", &s.device_id, "--device-key", key])
            .args(["--to", &new_recipient])
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    };
    // The wrong device key: refused, nothing written.
    let wrong = hex_of_other_key();
    let out = reencrypt(&wrong, &transfer);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(!transfer.exists());
    let said = ok(&reencrypt(&dead_key, &transfer));
    assert!(said.contains("re-encrypted 2 manifests"), "{said}");

    // The new terminal restores it over its own (fresh) database.
    let new_db = s.fleet.tmp.path().join("replacement/pos.db");
    pos(&["make", new_db.to_str().unwrap(), "500"]);
    let restore = |args: &[&str]| {
        command("otter-agent")
            .arg("restore")
            .args(args)
            .arg("--from-transfer")
            .arg(&transfer)
            .arg("--state-dir")
            .arg(&new_state)
            .arg("--database")
            .arg(&new_db)
            .output()
            .unwrap()
    };
    // A damaged re-encrypted pack is refused, the database untouched.
    let packs = transfer.join("packs");
    let first_dir = std::fs::read_dir(&packs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let pack = std::fs::read_dir(&first_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let good = std::fs::read(&pack).unwrap();
    let mut bad = good.clone();
    let at = bad.len() - 10;
    bad[at] ^= 1;
    std::fs::write(&pack, &bad).unwrap();
    let before = files_of(&new_db);
    let out = restore(&["--latest"]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not touched"));
    assert!(files_of(&new_db) == before);
    std::fs::write(&pack, &good).unwrap();

    let said = ok(&restore(&["--latest"]));
    assert!(said.contains("restored backup #2"), "{said}");
    assert_eq!(dump(&new_db), dead);
    assert_eq!(sha256(&new_db), body.file_sha256);
    // --id picks from the transferred chain too.
    ok(&restore(&["--id", "1"]));
    assert_ne!(dump(&new_db), dead);
    // The copy is for the new terminal only: the old terminal's backup key cannot open it.
    let out = command("otter-agent")
        .args(["restore", "--latest", "--dry-run", "--from-transfer"])
        .arg(&transfer)
        .arg("--state-dir")
        .arg(&s.state)
        .arg("--database")
        .arg(&s.db)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("decrypt"),
        "{}",
        show(&out)
    );
}

/// Another ed25519 public key, hex: the "wrong device key".
fn hex_of_other_key() -> String {
    let k = otter_keys::crypto::SigningKey::from_seed(&[9; 32]);
    let mut s = String::new();
    for b in k.public_bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[test]
fn a_chain_pruned_by_the_servers_retention_still_restores() {
    let s = Setup::with_config("[backups.retention]\nkeep_last = 2\n");
    let mut dumps = Vec::new();
    for _ in 0..4 {
        pos(&["mutate", s.db.to_str().unwrap(), "append", "1"]);
        s.backup(&s.state, &s.db);
        dumps.push(dump(&s.db));
    }
    let config = s.fleet.tmp.path().join("server.toml");
    let out = command("otter-server")
        .args(["backups", "prune", "--device", &s.device_id, "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&s.fleet.data)
        .output()
        .unwrap();
    ok(&out);
    assert!(
        !s.manifest_path(&s.device_id, 2).exists(),
        "#1 and #2 pruned"
    );
    assert!(s.manifest_path(&s.device_id, 3).exists());

    pos(&["mutate", s.db.to_str().unwrap(), "append", "1"]);
    let said = ok(&s.restore(&["--latest"]));
    assert!(said.contains("restored backup #4"), "{said}");
    assert!(said.contains("2 manifests"), "{said}");
    assert_eq!(dump(&s.db), dumps[3]);
    ok(&s.restore(&["--id", "3"]));
    assert_eq!(dump(&s.db), dumps[2]);
    refused(&s, &["--id", "1"], "matches");
}
