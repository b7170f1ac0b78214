//! End to end, with the real binaries on loopback: `otter-agent status` reads the install
//! root read-only (no crash recovery, no wait on the lock a running daemon holds), and
//! `otter-agent report` sends the real installed versions and the last update result, so a
//! manual report never wipes the server's inventory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/fleet.rs"]
mod fleet;

use std::time::{Duration, Instant};

use common::show;
use fleet::{bundle, Fleet, COMPONENT};

#[test]
fn status_and_report_read_the_journal_without_the_daemons_lock() {
    let fleet = Fleet::start("");
    let t = fleet.enroll("lane-1");
    let b1 = bundle("1.0.0", b"one", &["/bin/sh", "-c", "test -f app.bin"]);
    fleet.publish("1.0.0", &b1, &[]);
    let out = t.agent(&["update"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(t.active().as_deref(), Some("1.0.0"));
    let b2 = bundle("1.1.0", b"two", &["/bin/sh", "-c", "exit 3"]);
    let target2 = fleet.publish("1.1.0", &b2, &[])["release"]["target"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = t.agent(&["update"]);
    assert!(!out.status.success(), "rolled back: {}", show(&out));

    // A daemon (here: this test) holds the install root's lock.
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(t.root().join("lock"))
        .unwrap();
    lock.try_lock().unwrap();

    let started = Instant::now();
    let st = t.status();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "status did not wait on the lock"
    );
    assert!(st["apply_error"].is_null(), "{st}");
    assert_eq!(st["installed"][COMPONENT], "1.0.0", "{st}");
    assert!(
        st["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["to"] == "1.1.0"),
        "{st}"
    );

    // The inventory is overwritten by a manual report: it must keep the versions.
    let out = t.agent(&["report", "--state-dir", t.state.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    let d = fleet.device(&t.device_id);
    let r = &d["last_report"];
    assert_eq!(r["installed"][COMPONENT], "1.0.0", "{d}");
    assert_eq!(r["last_update"]["target"], target2.as_str(), "{d}");
    assert_eq!(r["last_update"]["result"], "rolled_back", "{d}");
    assert_eq!(r["health"], "degraded", "{d}");
    drop(lock);

    // An unreadable journal is an error, never an empty inventory.
    std::fs::write(t.root().join("journal.sqlite"), b"not a database").unwrap();
    let out = t.agent(&["report", "--state-dir", t.state.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("installed versions"),
        "{}",
        show(&out)
    );
    let d = fleet.device(&t.device_id);
    assert_eq!(d["last_report"]["installed"][COMPONENT], "1.0.0", "{d}");
}
