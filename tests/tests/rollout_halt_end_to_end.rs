//! End to end, with the real binaries on loopback: a server with `[rollouts] min_reports =
//! 2, max_failure_rate = 0.4`, a release whose health check fails, and real terminals that
//! run `otter-agent update`: each rolls back and reports, the server counts the failures
//! and halts the rollout by itself (the API shows `halted`, the newly signed targets carry
//! percent 0), and a terminal enrolled afterwards does not pick the release up. Also
//! `otter-server publish --percent P --groups a,b` starts a staged rollout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/fleet.rs"]
mod fleet;

use common::show;
use fleet::{bundle, Fleet, COMPONENT};

const HEALTHY: &[&str] = &["/bin/sh", "-c", "test -f app.bin"];

#[test]
fn failures_reported_by_real_agents_halt_the_rollout() {
    let fleet = Fleet::start("[rollouts]\nmin_reports = 2\nmax_failure_rate = 0.4\n");
    let auditor = fleet.token("auditor");
    fleet.publish("1.0.0", &bundle("1.0.0", b"one", HEALTHY), &[]);
    let a = fleet.enroll("lane-1");
    let b = fleet.enroll("lane-2");
    for t in [&a, &b] {
        let out = t.agent(&["update"]);
        assert!(out.status.success(), "{}", show(&out));
        assert_eq!(t.active().as_deref(), Some("1.0.0"));
    }

    let bad = bundle("1.1.0", b"two", &["/bin/sh", "-c", "exit 3"]);
    let published = fleet.publish("1.1.0", &bad, &[]);
    let target = published["release"]["target"].as_str().unwrap().to_owned();
    let rollout = format!("/api/v1/rollouts/{COMPONENT}/1.1.0");

    // The first failure: below min_reports, the rollout goes on.
    let out = a.agent(&["update"]);
    assert!(!out.status.success(), "rolled back: {}", show(&out));
    assert_eq!(a.active().as_deref(), Some("1.0.0"));
    let d = fleet.device(&a.device_id);
    assert_eq!(d["last_report"]["last_update"]["target"], target.as_str());
    assert_eq!(d["last_report"]["last_update"]["result"], "rolled_back");
    let (code, r) = fleet.get(&rollout, &auditor);
    let r = &r["rollout"];
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["status"], "active", "{r}");
    assert_eq!(
        r["outcomes"]["rolled_back"], 1,
        "the failure was counted: {r}"
    );

    // The second: 2 of 2 failed, above 40%: halted by the server.
    let out = b.agent(&["update"]);
    assert!(!out.status.success(), "rolled back: {}", show(&out));
    assert_eq!(b.active().as_deref(), Some("1.0.0"));
    let (code, r) = fleet.get(&rollout, &auditor);
    let r = &r["rollout"];
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["status"], "halted", "{r}");
    assert_eq!(r["outcomes"]["rolled_back"], 2, "{r}");
    assert_eq!(r["signed"]["percent"], 0, "{r}");
    let targets = fleet.latest_targets();
    let entry = &targets["signed"]["targets"][&target];
    assert_eq!(entry["custom"]["rollout"]["percent"], 0, "{entry}");
    assert_eq!(
        entry["custom"]["rollout"]["groups"],
        serde_json::json!([]),
        "{entry}"
    );

    // A terminal enrolled now gets 1.0.0, never the halted 1.1.0.
    let c = fleet.enroll("lane-3");
    let out = c.agent(&["update"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(c.active().as_deref(), Some("1.0.0"));
    let out = c.agent(&["update"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("up to date"),
        "{}",
        show(&out)
    );
    assert_eq!(c.status()["installed"][COMPONENT], "1.0.0");
}

#[test]
fn publish_starts_a_staged_rollout_with_percent_and_groups() {
    let fleet = Fleet::start("");
    let auditor = fleet.token("auditor");
    let published = fleet.publish(
        "2.0.0",
        &bundle("2.0.0", b"staged", HEALTHY),
        &["--percent", "5", "--groups", "pilot,lab"],
    );
    let target = published["release"]["target"].as_str().unwrap().to_owned();
    let (code, r) = fleet.get(&format!("/api/v1/rollouts/{COMPONENT}/2.0.0"), &auditor);
    let r = &r["rollout"];
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["percent"], 5, "{r}");
    assert_eq!(r["groups"], serde_json::json!(["lab", "pilot"]), "{r}");
    let entry = &fleet.latest_targets()["signed"]["targets"][&target];
    assert_eq!(entry["custom"]["rollout"]["percent"], 5, "{entry}");
    assert_eq!(
        entry["custom"]["rollout"]["groups"],
        serde_json::json!(["lab", "pilot"]),
        "{entry}"
    );

    // A percent out of range is refused by the CLI, and nothing is published.
    let out = fleet.publish_raw(
        "2.1.0",
        &bundle("2.1.0", b"x", HEALTHY),
        &["--percent", "101"],
    );
    assert!(!out.status.success(), "{}", show(&out));
    let (_, list) = fleet.get("/api/v1/rollouts", &auditor);
    assert!(
        !list.to_string().contains("2.1.0"),
        "nothing published: {list}"
    );
}
