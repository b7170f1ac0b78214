//! Restore requests end to end, with the real binaries on loopback: a restorer asks the
//! server to restore a terminal's backup (`POST /api/v1/backups/{device}/restore-requests`),
//! an auditor's request is refused (403); `otter-agent restore --requested` picks the
//! request up by hand, restores exactly that backup and reports the outcome, so the request
//! is marked done with the result and its structured outcome (rows lost per table) and both
//! steps are in the audit log; `otter-agent run --once` picks a request up only with
//! `[restore] allow_remote_requests = true`, and when the server refuses the structured
//! outcome (as an older server does) the agent reports the message alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/fleet.rs"]
mod fleet;

use std::path::Path;
use std::process::Command;

use common::show;
use fleet::Fleet;
use serde_json::{json, Value};

/// Runs `sql` on the SQLite database `db` (created if missing).
fn sql(db: &Path, sql: &str) {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nc.executescript(sys.argv[2])\nc.commit()\nc.close()",
        ])
        .arg(db)
        .arg(sql)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
}

/// The number of rows of `sales`.
fn rows(db: &Path) -> u64 {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\nprint(sqlite3.connect(sys.argv[1]).execute('SELECT COUNT(*) FROM sales').fetchone()[0])",
        ])
        .arg(db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn post(fleet: &Fleet, path: &str, token: &str, body: &Value) -> (u16, Value) {
    let res = reqwest::blocking::Client::new()
        .post(format!("{}{path}", fleet.server.url))
        .bearer_auth(token)
        .json(body)
        .send()
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().unwrap_or(Value::Null))
}

#[test]
fn a_restorer_requests_a_restore_and_the_terminal_carries_it_out() {
    let fleet = Fleet::builder().recovery_key().start();
    let restorer = fleet.token("restorer");
    let auditor = fleet.token("auditor");
    let t = fleet.enroll("lane-1");
    let db = t.state.parent().unwrap().join("pos.db");
    sql(
        &db,
        "CREATE TABLE sales (id INTEGER PRIMARY KEY, amount INTEGER);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
         INSERT INTO sales (amount) SELECT i * 7 FROM n;",
    );
    let out = common::command("otter-agent")
        .args(["backup", "--state-dir"])
        .arg(&t.state)
        .arg("--database")
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    sql(&db, "INSERT INTO sales (amount) VALUES (1), (2), (3);");
    assert_eq!(rows(&db), 503);

    let requests = format!("/api/v1/backups/{}/restore-requests", t.device_id);
    let body = json!({"backup": "latest", "reason": "till 3 lost its sales"});
    // An auditor reads but may not ask for a restore.
    let (code, v) = post(&fleet, &requests, &auditor, &body);
    assert_eq!(code, 403, "{v}");
    assert_eq!(v["error"]["code"], "forbidden", "{v}");
    // Bad requests change nothing.
    let (code, v) = post(
        &fleet,
        &requests,
        &restorer,
        &json!({"backup": 0, "reason": "x"}),
    );
    assert_eq!(code, 400, "{v}");
    let (code, v) = post(
        &fleet,
        &requests,
        &restorer,
        &json!({"backup": 1, "reason": ""}),
    );
    assert_eq!(code, 400, "{v}");
    let (code, v) = post(
        &fleet,
        &requests,
        &restorer,
        &json!({"backup": 7, "reason": "x"}),
    );
    assert_eq!(code, 404, "{v}");
    let (code, v) = post(
        &fleet,
        "/api/v1/backups/no-such-device/restore-requests",
        &restorer,
        &body,
    );
    assert_eq!(code, 404, "{v}");
    let (code, v) = fleet.get(&requests, &restorer);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["requests"], json!([]), "nothing stored: {v}");

    let (code, v) = post(&fleet, &requests, &restorer, &body);
    assert_eq!(code, 201, "{v}");
    let id = v["request"]["id"].as_i64().unwrap();
    assert_eq!(v["request"]["sequence"], 1, "{v}");
    assert_eq!(v["request"]["status"], "pending", "{v}");

    // By hand: one pickup.
    let out = common::command("otter-agent")
        .args(["restore", "--requested", "--state-dir"])
        .arg(&t.state)
        .arg("--database")
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(rows(&db), 500, "the backup's rows are back");
    let (_, v) = fleet.get(&requests, &restorer);
    let r = &v["requests"][0];
    assert_eq!(r["id"], id, "{v}");
    assert_eq!(r["status"], "done", "{v}");
    assert!(
        r["result"].as_str().unwrap().contains("restored backup #1"),
        "{v}"
    );
    assert_eq!(
        r["outcome"],
        json!({"restored_sequence": 1,
               "rows_lost": [{"table": "sales", "rows": 3, "live": 503, "backup": 500}]}),
        "the structured outcome: {v}"
    );
    assert!(r["finished_at"].as_i64().is_some(), "{v}");
    // Nothing left to do.
    let out = common::command("otter-agent")
        .args(["restore", "--requested", "--state-dir"])
        .arg(&t.state)
        .arg("--database")
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no pending restore request"),
        "{}",
        show(&out)
    );
    let (_, audit) = fleet.get("/api/v1/audit", &auditor);
    let text = audit.to_string();
    assert!(text.contains("backup.restore_request"), "{audit}");
    assert!(text.contains("backup.restore_result"), "{audit}");

    // The daemon: only with allow_remote_requests.
    sql(&db, "DELETE FROM sales WHERE id > 100;");
    let (code, v) = post(
        &fleet,
        &requests,
        &restorer,
        &json!({"backup": 1, "reason": "again"}),
    );
    assert_eq!(code, 201, "{v}");
    let base = std::fs::read_to_string(&t.config).unwrap();
    let daemon_config = |allow: bool| {
        let path = t
            .state
            .parent()
            .unwrap()
            .join(format!("agent-{allow}.toml"));
        let text = base.replace(
            "[update]",
            &format!(
                "[restore]\nallow_remote_requests = {allow}\n[backup]\ndatabase = {:?}\n[update]",
                db.to_str().unwrap()
            ),
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let run_once = |config: &Path| {
        let out = common::command("otter-agent")
            .args(["run", "--once", "--config"])
            .arg(config)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", show(&out));
        out
    };
    run_once(&daemon_config(false));
    let (_, v) = fleet.get(&requests, &restorer);
    assert_eq!(v["requests"][0]["status"], "pending", "not enabled: {v}");
    assert_eq!(rows(&db), 100);
    // A table whose name is longer than the server takes in a structured outcome: the
    // server refuses the outcome (400, as a server older than it refuses the field) and the
    // agent reports again with the message alone.
    let long = "t".repeat(300);
    sql(
        &db,
        &format!("CREATE TABLE {long} (a); INSERT INTO {long} VALUES (1);"),
    );
    let out = run_once(&daemon_config(true));
    let (_, v) = fleet.get(&requests, &restorer);
    assert_eq!(v["requests"][0]["status"], "done", "{v}\n{}", show(&out));
    assert!(v["requests"][0]["outcome"].is_null(), "{v}");
    assert!(
        v["requests"][0]["result"]
            .as_str()
            .unwrap()
            .contains("restored backup #1"),
        "{v}"
    );
    assert_eq!(rows(&db), 500);
}
