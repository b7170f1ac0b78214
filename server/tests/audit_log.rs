//! The audit log: every change made through the API and the host subcommands is appended in
//! its own transaction's commit; `otter-server audit verify` passes on the untouched chain,
//! prints its head, and exits 1 naming the first broken entry when a row is edited, deleted
//! or reordered directly in SQLite; a truncated tail is found against a recorded head.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use assert_cmd::Command;
use common::fleet::{enrolled_device, report};
use common::{api, bundle, client, config, make_token, run, start};
use serde_json::json;

fn cli(args: &[&str]) -> std::process::Output {
    Command::cargo_bin("otter-server")
        .unwrap()
        .args(args)
        .env_remove("OTTER_DATA_DIR")
        .env_remove("OTTER_CONFIG")
        .env_remove("OTTER_TOKEN")
        .output()
        .unwrap()
}

fn verify(data: &Path, anchor: Option<&str>) -> (bool, String, String) {
    let d = data.to_str().unwrap();
    let mut args = vec!["audit", "verify", "--data-dir", d];
    if let Some(a) = anchor {
        args.extend(["--anchor", a]);
    }
    let out = cli(&args);
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Runs SQL on the data dir's database with the append-only triggers dropped (as an
/// attacker with file access could), then puts them back.
fn tamper(data: &Path, sql: &str) {
    let c = rusqlite::Connection::open(data.join("otter.db")).unwrap();
    c.execute_batch(&format!(
        "BEGIN;
         DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;
         {sql}
         CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
         BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
         CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
         BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
         COMMIT;"
    ))
    .unwrap();
}

fn actions(data: &Path) -> Vec<(String, String, String)> {
    let c = rusqlite::Connection::open(data.join("otter.db")).unwrap();
    let mut s = c
        .prepare("SELECT actor, action, subject FROM audit_log ORDER BY seq")
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn every_change_is_chained_and_tampering_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    run(async {
        let (srv, admin) = start(config(&data)).await;
        let admin = admin.unwrap();
        let c = client();
        let (publisher_id, publisher) = make_token(&c, &srv, &admin, "publisher").await;
        let (_, auditor) = make_token(&c, &srv, &admin, "auditor").await;
        let (s, v) = api(
            &c,
            "POST",
            &srv.url("/api/v1/releases"),
            Some(&publisher),
            Some(bundle("pinpad", "1.0.0", &[("p", b"one")])),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        let (s, _) = api(
            &c,
            "DELETE",
            &srv.url("/api/v1/releases/pinpad/1.0.0"),
            Some(&publisher),
            None,
        )
        .await;
        assert_eq!(s, 200);
        let device = enrolled_device(&c, &srv, &admin, Some("lane-1")).await;
        let (s, _) = report(&c, &srv, &device, &json!({"health": "ok"})).await;
        assert_eq!(s, 200);
        let (s, _) = api(
            &c,
            "DELETE",
            &srv.url(&format!("/api/v1/tokens/{publisher_id}")),
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(s, 200);
        // Refused requests change nothing and leave no entry.
        let (s, _) = api(
            &c,
            "POST",
            &srv.url("/api/v1/tokens"),
            Some(&auditor),
            Some(br#"{"role":"admin","label":"x"}"#.to_vec()),
        )
        .await;
        assert_eq!(s, 403);

        // The host subcommands are audited too, while the server runs.
        let d = data.to_str().unwrap().to_owned();
        let out = tokio::task::spawn_blocking(move || {
            let made = cli(&["token", "create", "--data-dir", &d, "--role", "operator"]);
            let revoked = cli(&["token", "revoke", "--data-dir", &d, "2"]);
            (made, revoked)
        })
        .await
        .unwrap();
        assert!(out.0.status.success() && out.1.status.success());

        // audit list through the API.
        let base = srv.url("");
        let listed = tokio::task::spawn_blocking(move || {
            Command::cargo_bin("otter-server")
                .unwrap()
                .args(["audit", "list", "--server", &base, "--after", "1"])
                .env("OTTER_TOKEN", auditor)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            listed.status.success(),
            "{}",
            String::from_utf8_lossy(&listed.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
        assert_eq!(v["entries"][0]["seq"], 2);
        assert_eq!(v["head"]["seq"], v["entries"].as_array().unwrap().len() + 1);
        srv.stop().await;
    });

    let log = actions(&data);
    let want = [
        ("token:1", "token.create", "token:2"),
        ("token:1", "token.create", "token:3"),
        ("token:2", "release.publish", "release:pinpad/1.0.0"),
        ("token:2", "release.yank", "release:pinpad/1.0.0"),
        ("token:1", "enrollment_token.create", "enrollment_token:1"),
        ("device:", "device.enroll", "device:"),
        ("token:1", "token.revoke", "token:2"),
        ("host", "token.create", "token:4"),
    ];
    assert_eq!(log.len(), want.len(), "{log:?}");
    for ((actor, action, subject), (wa, wact, ws)) in log.iter().zip(want) {
        assert!(actor.starts_with(wa), "{actor} for {action}");
        assert_eq!(action, wact);
        assert!(subject.starts_with(ws), "{subject} for {action}");
    }
    // Revoking a revoked token changed nothing and was not logged again.

    let (ok, head, err) = verify(&data, None);
    assert!(ok, "{err}");
    let head = head.trim().to_owned();
    assert!(head.starts_with("8:"), "{head}");
    assert!(err.contains("8 entries"), "{err}");

    // An edited detail.
    tamper(
        &data,
        "UPDATE audit_log SET details = '{\"role\":\"admin\"}' WHERE seq = 2;",
    );
    let (ok, out, err) = verify(&data, None);
    assert!(!ok);
    assert_eq!(out.trim(), "broken 2", "{err}");
    assert!(err.contains("altered"), "{err}");
    tamper(
        &data,
        "UPDATE audit_log SET details = '{\"label\":\"test auditor\",\"role\":\"auditor\"}' WHERE seq = 2;",
    );
    assert!(verify(&data, None).0, "restored");

    // A deleted middle entry.
    tamper(
        &data,
        "CREATE TABLE saved AS SELECT * FROM audit_log WHERE seq = 4;
         DELETE FROM audit_log WHERE seq = 4;",
    );
    let (ok, out, err) = verify(&data, None);
    assert!(!ok);
    assert_eq!(out.trim(), "broken 4", "{err}");
    assert!(err.contains("missing"), "{err}");
    tamper(
        &data,
        "INSERT INTO audit_log SELECT * FROM saved; DROP TABLE saved;",
    );
    assert!(verify(&data, None).0, "restored");

    // Two entries swapped.
    let swap = "UPDATE audit_log SET seq = 100 WHERE seq = 5;
                UPDATE audit_log SET seq = 5 WHERE seq = 6;
                UPDATE audit_log SET seq = 6 WHERE seq = 100;";
    tamper(&data, swap);
    let (ok, out, err) = verify(&data, None);
    assert!(!ok);
    assert_eq!(out.trim(), "broken 5", "{err}");
    tamper(&data, swap);
    assert!(verify(&data, None).0, "restored");

    // A truncated tail verifies on its own, but not against the recorded head.
    assert!(verify(&data, Some(&head)).0);
    tamper(&data, "DELETE FROM audit_log WHERE seq >= 7;");
    let (ok, _, _) = verify(&data, None);
    assert!(ok, "truncation is invisible without an anchor");
    let (ok, out, err) = verify(&data, Some(&head));
    assert!(!ok);
    assert_eq!(out.trim(), "broken 8", "{err}");
    assert!(err.contains("removed from the end"), "{err}");
    let bad = cli(&[
        "audit",
        "verify",
        "--data-dir",
        data.to_str().unwrap(),
        "--anchor",
        "x",
    ]);
    assert!(!bad.status.success());
}
