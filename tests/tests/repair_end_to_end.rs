//! Repair end to end, with the real binaries on loopback: two backups, the newest one's
//! pack damaged in the server's store, the live database damaged; a restorer orders a
//! repair (`"backup": "newest-verifying"`); `otter-agent restore --requested` refuses the
//! newest backup, restores the older one, and the server stores a report naming the refused
//! backup, the restored one and the rows lost per table, both as text and as a structured
//! outcome, which the console's backups page shows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/fleet.rs"]
mod fleet;

use std::collections::BTreeSet;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::show;
use fleet::{console_session, Fleet};
use serde_json::{json, Value};

/// Runs a Python snippet on the SQLite database `db`; returns its standard output.
fn py(db: &Path, code: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            &format!("import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\n{code}"),
        ])
        .arg(db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn sql(db: &Path, sql: &str) {
    py(db, &format!("c.executescript({sql:?})\nc.commit()"));
}

fn dump(db: &Path) -> String {
    py(db, "print('\\n'.join(c.iterdump()))")
}

/// Every pack file of the server's store under `dir`.
fn packs(dir: &Path) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p.parent().and_then(Path::file_name) == Some("packs".as_ref()) {
                found.insert(p);
            }
        }
    }
    found
}

fn backup(state: &Path, db: &Path) {
    let out = common::command("otter-agent")
        .args(["backup", "--state-dir"])
        .arg(state)
        .arg("--database")
        .arg(db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
}

#[test]
fn a_repair_restores_the_newest_backup_that_verifies_and_reports_the_loss() {
    let fleet = Fleet::builder().recovery_key().start();
    let restorer = fleet.token("restorer");
    let t = fleet.enroll("lane-1");
    let db = t.state.parent().unwrap().join("pos.db");
    sql(
        &db,
        "CREATE TABLE sales (id INTEGER PRIMARY KEY, amount INTEGER);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
         INSERT INTO sales (amount) SELECT i * 7 FROM n;",
    );
    backup(&t.state, &db);
    let first = dump(&db);
    let before = packs(&fleet.data);
    assert!(!before.is_empty(), "no pack in {}", fleet.data.display());
    sql(
        &db,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
         INSERT INTO sales (amount) SELECT i * 11 FROM n;",
    );
    backup(&t.state, &db);
    let newer: Vec<PathBuf> = packs(&fleet.data).difference(&before).cloned().collect();
    assert!(!newer.is_empty(), "the second backup shipped no pack");
    // Damage the newest backup's packs in the server's store.
    for p in &newer {
        let mut bytes = std::fs::read(p).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        std::fs::write(p, bytes).unwrap();
    }
    // Rows newer than both backups, then damage the live database: a large blob's
    // overflow chain (counting rows still works, the integrity check does not).
    sql(
        &db,
        "INSERT INTO sales (amount) VALUES (1), (2), (3);
         CREATE TABLE scans (b BLOB);
         INSERT INTO scans VALUES (zeroblob(400000));",
    );
    let len = std::fs::metadata(&db).unwrap().len();
    let mut f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    f.seek(SeekFrom::Start((len / 2 / 4096) * 4096 + 4096 * 10))
        .unwrap();
    f.write_all(&[0xff; 4096]).unwrap();
    drop(f);
    assert_ne!(
        py(
            &db,
            "print(c.execute('PRAGMA integrity_check').fetchone()[0])"
        )
        .trim(),
        "ok"
    );

    let requests = format!("/api/v1/backups/{}/restore-requests", t.device_id);
    let res = reqwest::blocking::Client::new()
        .post(format!("{}{requests}", fleet.server.url))
        .bearer_auth(&restorer)
        .json(&json!({"backup": "newest-verifying", "reason": "database corrupt"}))
        .send()
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let v: Value = res.json().unwrap();
    assert_eq!(v["request"]["repair"], true, "{v}");
    assert_eq!(v["request"]["sequence"], 2, "{v}");
    // A strict API: anything else is refused.
    let res = reqwest::blocking::Client::new()
        .post(format!("{}{requests}", fleet.server.url))
        .bearer_auth(&restorer)
        .json(&json!({"backup": "newest", "reason": "x"}))
        .send()
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);

    let out = common::command("otter-agent")
        .args(["restore", "--requested", "--state-dir"])
        .arg(&t.state)
        .arg("--database")
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(dump(&db), first, "the database is the older snapshot");
    assert_eq!(
        py(
            &db,
            "print(c.execute('PRAGMA integrity_check').fetchone()[0])"
        )
        .trim(),
        "ok"
    );

    let (code, v) = fleet.get(&requests, &restorer);
    assert_eq!(code, 200, "{v}");
    let r = &v["requests"][0];
    assert_eq!(r["status"], "done", "{v}");
    assert_eq!(r["repair"], true, "{v}");
    let report = r["result"].as_str().unwrap();
    assert!(report.contains("restored backup #1"), "{report}");
    assert!(report.contains("refused: #2 ("), "{report}");
    assert!(
        report.contains("sales: 303 rows (live 803, backup 500)"),
        "{report}"
    );
    // The same as facts.
    let o = &r["outcome"];
    assert_eq!(o["restored_sequence"], 1, "{v}");
    assert_eq!(
        o["rows_lost"],
        json!([{"table": "sales", "rows": 303, "live": 803, "backup": 500},
               {"table": "scans", "rows": 1, "live": 1, "backup": 0}]),
        "{v}"
    );
    assert_eq!(o["refused"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(o["refused"][0]["sequence"], 2, "{v}");
    assert!(
        o["refused"][0]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{v}"
    );

    // The console's backups page shows them from the structured outcome: the live and
    // backup counts per table are only there.
    let c = reqwest::blocking::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let session = console_session(&c, &fleet.server.url, &restorer);
    let html = c
        .get(format!(
            "{}/console/backups?device={}",
            fleet.server.url, t.device_id
        ))
        .header("cookie", format!("otter_session={session}"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let id = r["id"].as_i64().unwrap();
    let at = html
        .find(&format!("data-request=\"{id}\""))
        .unwrap_or_else(|| panic!("request {id} on the page: {html}"));
    let row = &html[at..at + html[at..].find("</tr>").unwrap()];
    assert!(row.contains("data-outcome=\"structured\""), "{row}");
    assert!(row.contains("<td>#1</td>"), "{row}");
    assert!(
        row.contains(
            "<td class=\"rows-lost\" title=\"sales: live 803, backup 500; scans: live 1, backup \
             0\">304 (sales 303, scans 1)</td>"
        ),
        "{row}"
    );
    assert!(row.contains("refused backups: #2 ("), "{row}");
}
