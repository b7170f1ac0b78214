//! `otter-agent rollback` by an operator holds the version rolled back from: the next
//! `otter-agent update` does not install it again (it would undo the operator's decision on
//! the next poll), `update --retry-failed` does, and a newer release is installed as usual.
//! Real binaries on loopback: `otter-server serve`, `otter-server publish`, `otter-agent`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/fleet.rs"]
mod fleet;

use common::show;
use fleet::{bundle, Fleet, COMPONENT};

const HEALTHY: &[&str] = &["/bin/true"];

#[test]
fn a_manual_rollback_is_not_undone_by_the_next_update() {
    let fleet = Fleet::start("");
    let t = fleet.enroll("terminal");

    fleet.publish("1.0.0", &bundle("1.0.0", b"one", HEALTHY), &[]);
    let out = t.agent(&["update"]);
    assert!(out.status.success(), "{}", show(&out));
    let target2 = fleet.publish("1.1.0", &bundle("1.1.0", b"two", HEALTHY), &[])["release"]
        ["target"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = t.agent(&["update"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(t.active().as_deref(), Some("1.1.0"));

    // The operator rolls back: 1.1.0 is held.
    let out = t.agent(&["rollback", COMPONENT]);
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("rolled back from 1.1.0 to 1.0.0"),
        "{}",
        show(&out)
    );
    assert!(stdout.contains("is held"), "{}", show(&out));
    assert_eq!(t.active().as_deref(), Some("1.0.0"));
    let st = t.status();
    assert!(
        st["blocked"][&target2]
            .as_str()
            .is_some_and(|why| why.contains("rolled back by the operator")),
        "{st}"
    );

    // The next pass leaves it rolled back.
    let out = t.agent(&["update"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(t.active().as_deref(), Some("1.0.0"), "{}", show(&out));

    // The operator changes their mind.
    let out = t.agent(&["update", "--retry-failed"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(t.active().as_deref(), Some("1.1.0"), "{}", show(&out));

    // Roll back again, then a newer release arrives: it is installed.
    let out = t.agent(&["rollback", COMPONENT]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(t.active().as_deref(), Some("1.0.0"));
    fleet.publish("1.2.0", &bundle("1.2.0", b"three", HEALTHY), &[]);
    let out = t.agent(&["update"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(t.active().as_deref(), Some("1.2.0"), "{}", show(&out));
}
