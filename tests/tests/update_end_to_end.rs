//! End to end, with the real binaries on loopback: `otter-server serve` (development
//! repository), a bundle published with `otter-server publish`, a terminal enrolled with
//! `otter-agent enroll`, then `otter-agent update` downloads it (resuming a part left by an
//! earlier cut, with an HTTP Range request to the real server), verifies and installs it;
//! `otter-agent status --json` and the server's device inventory show it. A second release
//! whose health check fails is rolled back, reported as such to the server, and not tried
//! again by `otter-agent run --once`. A third release downloaded outside the maintenance
//! window waits, verified, and is applied by `update --now`. Metadata refused from a hostile
//! mirror reaches the server as a security event, and `run --once` makes the scheduled
//! backup when (and only when) it is due.
//!
//! The binaries are taken from the target dir next to this test executable: build them
//! first (`cargo build --workspace`; `cargo test --workspace` does).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/fleet.rs"]
mod fleet;

use std::path::Path;

use common::{command, show};
use fleet::{bundle, Fleet, Terminal, COMPONENT};
use serde_json::Value;

/// Incompressible-ish payload bytes, so the bundle is large enough to be cut in two.
fn payload(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// The inventory entry of the one terminal.
fn device(fleet: &Fleet) -> Value {
    let list = fleet.devices();
    assert_eq!(list.len(), 1, "{list:?}");
    list[0].clone()
}

/// A fleet and one enrolled terminal.
fn setup() -> (Fleet, Terminal) {
    let fleet = Fleet::start("");
    let t = fleet.enroll("terminal");
    (fleet, t)
}

#[test]
fn a_published_release_is_downloaded_installed_reported_and_a_failing_one_rolled_back() {
    let (fleet, t) = setup();

    // Release 1.0.0, healthy.
    let p1 = payload(1, 600_000);
    let b1 = bundle("1.0.0", &p1, &["/bin/sh", "-c", "test -f app.bin"]);
    let published = fleet.publish("1.0.0", &b1, &[]);
    let target = published["release"]["target"].as_str().unwrap().to_owned();
    assert_eq!(target, format!("{COMPONENT}-1.0.0.tar.zst"));

    // An earlier run was cut after the first 200000 bytes: the part is on disk.
    let downloads = t.state.join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let name = format!("{}.{target}", otter_keys::hash::sha256_hex(&b1));
    std::fs::write(downloads.join(format!("{name}.part")), &b1[..200_000]).unwrap();

    let out = t.agent(&["update"]);
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("resumed at byte 200000"),
        "the part was resumed with a Range request: {}",
        show(&out)
    );
    assert!(stdout.contains("installed 1.0.0"), "{}", show(&out));
    assert_eq!(t.active().as_deref(), Some("1.0.0"));
    let installed = t
        .root
        .join("components")
        .join(COMPONENT)
        .join("current/app.bin");
    assert_eq!(std::fs::read(&installed).unwrap(), p1);
    // The bundle's bytes are gone once applied; no part is left.
    assert_eq!(std::fs::read_dir(&downloads).unwrap().count(), 0);

    let st = t.status();
    assert_eq!(st["installed"][COMPONENT], "1.0.0", "{st}");
    assert_eq!(st["last_poll"]["ok"], true, "{st}");
    assert_eq!(st["results"][0]["result"], "success", "{st}");
    assert_eq!(st["results"][0]["target"], target.as_str(), "{st}");
    assert!(
        st["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["to"] == "1.0.0"),
        "{st}"
    );
    let d = device(&fleet);
    assert_eq!(d["last_report"]["installed"][COMPONENT], "1.0.0", "{d}");
    assert_eq!(d["last_report"]["last_update"]["result"], "success", "{d}");
    assert_eq!(
        d["last_report"]["last_update"]["target"],
        target.as_str(),
        "{d}"
    );

    // Nothing new: a second pass changes nothing.
    let out = t.agent(&["update"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("up to date"),
        "{}",
        show(&out)
    );

    // Release 1.1.0 fails its health check: switched, rolled back, reported.
    let b2 = bundle("1.1.0", &payload(2, 1000), &["/bin/sh", "-c", "exit 3"]);
    let target2 = fleet.publish("1.1.0", &b2, &[])["release"]["target"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = t.agent(&["update"]);
    assert!(
        !out.status.success(),
        "a rolled-back update fails the command: {}",
        show(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rolled back"),
        "{}",
        show(&out)
    );
    assert_eq!(t.active().as_deref(), Some("1.0.0"));
    assert_eq!(std::fs::read(&installed).unwrap(), p1);
    let st = t.status();
    assert_eq!(st["installed"][COMPONENT], "1.0.0", "{st}");
    assert_eq!(st["results"][0]["result"], "rolled_back", "{st}");
    assert_eq!(st["results"][0]["version"], "1.1.0", "{st}");
    assert!(st["blocked"][&target2].is_string(), "{st}");
    let d = device(&fleet);
    assert_eq!(
        d["last_report"]["last_update"]["result"], "rolled_back",
        "{d}"
    );
    assert_eq!(
        d["last_report"]["last_update"]["target"],
        target2.as_str(),
        "{d}"
    );
    assert_eq!(d["last_report"]["health"], "degraded", "{d}");
    assert_eq!(d["last_report"]["installed"][COMPONENT], "1.0.0", "{d}");

    // The daemon's iteration does not try the rolled-back release again.
    let out = t.agent(&["run", "--once"]);
    assert!(out.status.success(), "{}", show(&out));
    let st = t.status();
    assert_eq!(st["last_poll"]["ok"], true, "{st}");
    assert_eq!(st["last_poll"]["message"], "up to date", "{st}");
    assert_eq!(
        st["results"][0]["result"], "rolled_back",
        "no new attempt: {st}"
    );
    assert_eq!(t.active().as_deref(), Some("1.0.0"));

    // Release 1.2.0 outside the maintenance window: downloaded, verified, waiting.
    let p3 = payload(3, 5000);
    let b3 = bundle("1.2.0", &p3, &["/bin/sh", "-c", "test -f app.bin"]);
    fleet.publish("1.2.0", &b3, &[]);
    // First, downloads only: verified and kept, nothing applied.
    let out = t.agent(&["update", "--download-only"]);
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Fetched in full or through a signed delta from the installed 1.0.0.
    assert!(
        stdout.contains("downloaded pos-app-1.2.0.tar.zst") || stdout.contains("via delta"),
        "{}",
        show(&out)
    );
    assert!(stdout.contains("downloaded only"), "{}", show(&out));
    assert_eq!(t.active().as_deref(), Some("1.0.0"));
    let hour = (otter_keys::time::UtcTime::now().unix() / 3600) % 24;
    let window = format!("{:02}:00-{:02}:00", (hour + 2) % 24, (hour + 3) % 24);
    let out = t.agent(&[
        "update",
        "--window-time",
        "utc",
        "--maintenance-window",
        &window,
    ]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("outside the maintenance windows"),
        "{}",
        show(&out)
    );
    assert_eq!(t.active().as_deref(), Some("1.0.0"));
    let st = t.status();
    assert_eq!(st["waiting"][0]["version"], "1.2.0", "{st}");
    // Verified and kept: the full bundle in downloads/, or the bundle rebuilt from a delta
    // (checked against the signed hash) in deltas/.
    let waiting_file = downloads.join(format!(
        "{}.{COMPONENT}-1.2.0.tar.zst",
        otter_keys::hash::sha256_hex(&b3)
    ));
    let rebuilt = std::fs::read_dir(t.state.join("deltas"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(
        std::fs::read(&waiting_file).is_ok_and(|b| b == b3) || rebuilt > 0,
        "verified and kept"
    );

    // The operator applies it now.
    let out = t.agent(&[
        "update",
        "--now",
        "--window-time",
        "utc",
        "--maintenance-window",
        &window,
    ]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(t.active().as_deref(), Some("1.2.0"));
    assert_eq!(std::fs::read(&installed).unwrap(), p3);
    let st = t.status();
    assert_eq!(st["installed"][COMPONENT], "1.2.0", "{st}");
    assert!(st["waiting"].as_array().unwrap().is_empty(), "{st}");
    assert_eq!(
        device(&fleet)["last_report"]["installed"][COMPONENT],
        "1.2.0"
    );
}

#[test]
fn update_refuses_an_unenrolled_state_dir_and_a_bad_config_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = command("otter-agent")
        .args(["update", "--state-dir"])
        .arg(tmp.path().join("nothing"))
        .arg("--install-root")
        .arg(tmp.path().join("root"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("run otter-agent enroll first"),
        "{}",
        show(&out)
    );
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[update]\nmaintenance_windows = [\"02:00-26:00\"]\n").unwrap();
    let out = command("otter-agent")
        .args(["run", "--once", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("26:00"),
        "{}",
        show(&out)
    );
    assert!(
        !Path::new(&tmp.path().join("root")).exists(),
        "nothing was created"
    );
}

/// Copies the files of `from` into `to` (one level).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Points the terminal at a mirror (a copy of the repository) whose timestamp was altered
/// after signing.
fn point_at_a_hostile_mirror(fleet: &Fleet, t: &Terminal) {
    let mirror = fleet.tmp.path().join("mirror/metadata");
    copy_dir(&fleet.data.join("store/repo/metadata"), &mirror);
    let ts_path = mirror.join("timestamp.json");
    let mut ts: Value = serde_json::from_slice(&std::fs::read(&ts_path).unwrap()).unwrap();
    let v = ts["signed"]["version"].as_u64().unwrap();
    ts["signed"]["version"] = Value::from(v + 1);
    std::fs::write(&ts_path, serde_json::to_vec(&ts).unwrap()).unwrap();
    let agent_json = t.state.join("agent.json");
    let mut a: Value = serde_json::from_slice(&std::fs::read(&agent_json).unwrap()).unwrap();
    a["metadata_url"] = Value::from(format!("file://{}/", mirror.display()));
    std::fs::write(&agent_json, serde_json::to_vec(&a).unwrap()).unwrap();
}

#[test]
fn refused_metadata_from_a_hostile_mirror_is_reported_as_a_security_event() {
    let (fleet, t) = setup();
    point_at_a_hostile_mirror(&fleet, &t);

    let out = t.agent(&["update"]);
    assert!(!out.status.success(), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refreshing the trusted metadata"), "{err}");
    assert!(err.contains("timestamp"), "{err}");

    // The report reached the server with the event; the agent no longer holds it.
    let d = device(&fleet);
    let events = d["last_report"]["security_events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{d}");
    assert_eq!(events[0]["kind"], "metadata_refused", "{d}");
    assert!(
        events[0]["detail"].as_str().unwrap().contains("timestamp"),
        "{d}"
    );
    let st = t.status();
    assert!(
        st["unreported_events"].as_array().unwrap().is_empty(),
        "{st}"
    );
    assert_eq!(st["last_poll"]["ok"], false, "{st}");
    assert!(!t.root.join("components").exists(), "nothing was installed");
}

/// A pass that fails before it reads the install root (its metadata refused) still reports
/// the installed versions, read from the journal without the install root's lock: another
/// process holding that lock (an operator's rollback, say) never makes the report wipe
/// the server's inventory.
#[test]
fn a_failed_pass_reports_the_installed_versions_while_another_process_holds_the_lock() {
    let (fleet, t) = setup();
    let b1 = bundle("1.0.0", b"one", &["/bin/sh", "-c", "test -f app.bin"]);
    fleet.publish("1.0.0", &b1, &[]);
    let out = t.agent(&["update"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(t.active().as_deref(), Some("1.0.0"));

    let lock = std::fs::File::options()
        .read(true)
        .write(true)
        .open(t.root.join("lock"))
        .unwrap();
    lock.try_lock().unwrap();
    point_at_a_hostile_mirror(&fleet, &t);
    let out = t.agent(&["update"]);
    assert!(!out.status.success(), "{}", show(&out));
    let d = device(&fleet);
    let events = d["last_report"]["security_events"].as_array().unwrap();
    assert_eq!(
        events[0]["kind"], "metadata_refused",
        "this pass reported: {d}"
    );
    assert_eq!(d["last_report"]["installed"][COMPONENT], "1.0.0", "{d}");
    drop(lock);
    assert_eq!(t.status()["installed"][COMPONENT], "1.0.0");
}

#[test]
fn the_daemon_makes_the_scheduled_backup_when_it_is_due() {
    let fleet = Fleet::builder().recovery_key().start();
    let t = fleet.enroll("terminal");
    // A small till database.
    let db = t.dir.join("pos.db");
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1])\n\
             c.execute('CREATE TABLE sales (id INTEGER PRIMARY KEY, cents INTEGER)')\n\
             c.executemany('INSERT INTO sales VALUES (?, ?)', [(i, i * 7) for i in range(500)])\n\
             c.commit()",
        ])
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    t.append_config(&format!(
        "[backup]\ndatabase = {:?}\ninterval_secs = 3600\npack_size = 65536\n",
        db.to_str().unwrap()
    ));

    let backups = || fleet.backups(None).len();
    let out = t.agent(&["run", "--once"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("backup #1"),
        "{}",
        show(&out)
    );
    let st = t.status();
    assert_eq!(st["last_backup"]["ok"], true, "{st}");
    let at = st["last_backup"]["at"].as_i64().unwrap();
    assert_eq!(backups(), 1);

    // Not due again within the interval: the next iteration only polls.
    let out = t.agent(&["run", "--once"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("backup #"),
        "{}",
        show(&out)
    );
    assert_eq!(t.status()["last_backup"]["at"].as_i64().unwrap(), at);
    assert_eq!(backups(), 1);
}
