//! The structured outcome of a restore request, against the real server on loopback with a
//! real signed backup chain: a device's report with a malformed, oversized or misfitting
//! `outcome` is refused with 400 and changes nothing (the request stays open, nothing is
//! audited); a good one is stored, returned by the API and shown by the console instead of
//! what the message says; a report without one (an older agent) is read from its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backup_support;
mod common;
mod console_support;

use backup_support::{backup, config_file, signed, Chain};
use common::fleet::{enrolled_device, now};
use common::{api, run, start};
use console_support::{client, get, sign_in};
use serde_json::{json, Value};

#[test]
fn bad_outcomes_are_refused_and_good_ones_reach_the_console() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (_, cfg) = config_file(dir.path(), "");
        let (srv, admin) = start(cfg).await;
        let admin = admin.unwrap();
        let c = common::client();
        let dev = enrolled_device(&c, &srv, &admin, Some("lane-7")).await;
        let mut chain = Chain::new();
        let p1 = chain.pack(1, 2);
        let p2 = chain.pack(2, 2);
        backup(&c, &srv, &dev, &mut chain, now() - 600, &[&p1]).await;
        backup(&c, &srv, &dev, &mut chain, now() - 60, &[&p1, &p2]).await;
        let list = format!("/api/v1/backups/{}/restore-requests", dev.id);
        let ask = |backup: Value| {
            let (c, srv, admin, list) = (&c, &srv, &admin, &list);
            async move {
                let (s, v) = api(
                    c,
                    "POST",
                    &srv.url(list),
                    Some(admin),
                    Some(serde_json::to_vec(&json!({"backup": backup, "reason": "test"})).unwrap()),
                )
                .await;
                assert_eq!(s, 201, "{v}");
                v["request"]["id"].as_i64().unwrap()
            }
        };
        let plain = ask(json!(1)).await;
        let repair = ask(json!("newest-verifying")).await;
        let audit_len = || async {
            let (s, v) = api(&c, "GET", &srv.url("/api/v1/audit"), Some(&admin), None).await;
            assert_eq!(s, 200, "{v}");
            v["entries"].as_array().unwrap().len()
        };
        let audited = audit_len().await;
        let report = |id: i64, body: Value| {
            let (c, srv, dev) = (&c, &srv, &dev);
            async move {
                let path = format!("/api/v1/device/restore-requests/{id}");
                signed(
                    c,
                    srv,
                    dev,
                    "POST",
                    &path,
                    &serde_json::to_vec(&body).unwrap(),
                )
                .await
            }
        };
        let lost = |table: &str| json!({"table": table, "rows": 3, "live": 10, "backup": 7});
        let many_tables: Vec<Value> = (0..201).map(|i| lost(&format!("t{i}"))).collect();
        let many_refused: Vec<Value> = (1..=51)
            .map(|s| json!({"sequence": s, "reason": "bad"}))
            .collect();
        for (id, outcome, why) in [
            (plain, json!({"restored": 1}), "unknown field"),
            (plain, json!("restored #1"), "not an object"),
            (plain, json!({"restored_sequence": -1}), "negative"),
            (plain, json!({"restored_sequence": 0}), "zero"),
            (
                plain,
                json!({"restored_sequence": 2}),
                "not the requested backup",
            ),
            (plain, json!({}), "ok without restored_sequence"),
            (
                plain,
                json!({"restored_sequence": 1, "rows_lost": {"sales": 3}}),
                "rows_lost is a list",
            ),
            (
                plain,
                json!({"restored_sequence": 1, "rows_lost": [{"table": "sales", "rows": 4, "live": 10, "backup": 7}]}),
                "rows is not live - backup",
            ),
            (
                plain,
                json!({"restored_sequence": 1, "rows_lost": [lost("sales"), lost("sales")]}),
                "a table twice",
            ),
            (
                plain,
                json!({"restored_sequence": 1, "rows_lost": [lost(&"x".repeat(257))]}),
                "table name too long",
            ),
            (
                plain,
                json!({"restored_sequence": 1, "rows_lost": [lost("sa\u{1b}[31mles")]}),
                "control characters",
            ),
            (
                plain,
                json!({"restored_sequence": 1, "rows_lost": many_tables}),
                "too many tables",
            ),
            (
                plain,
                json!({"restored_sequence": 1, "refused": [{"sequence": 2, "reason": "x"}]}),
                "refusals in a plain restore",
            ),
            (
                repair,
                json!({"restored_sequence": 1, "refused": [{"sequence": 3, "reason": "x"}]}),
                "refused a backup the repair did not try",
            ),
            (
                repair,
                json!({"restored_sequence": 1, "refused": [{"sequence": 2, "reason": "y".repeat(301)}]}),
                "reason too long",
            ),
            (
                repair,
                json!({"restored_sequence": 1, "refused": many_refused}),
                "too many refusals",
            ),
        ] {
            let (s, v) = report(id, json!({"ok": true, "message": "m", "outcome": outcome})).await;
            assert_eq!(s, 400, "{why}: {v}");
            assert_eq!(v["error"]["code"], "invalid_outcome", "{why}: {v}");
        }
        // A body far over the limit.
        let huge = "z".repeat(100 * 1024);
        let (s, _) = report(plain, json!({"ok": true, "message": "m", "outcome": {"restored_sequence": 1, "rows_lost": [lost(&huge)]}})).await;
        assert_eq!(s, 413);
        // Nothing changed.
        let (_, v) = api(&c, "GET", &srv.url(&list), Some(&admin), None).await;
        let reqs = v["requests"].as_array().unwrap();
        assert_eq!(reqs.len(), 2, "{v}");
        assert!(
            reqs.iter()
                .all(|r| r["status"] == "pending" && r["outcome"].is_null()),
            "{v}"
        );
        assert_eq!(audit_len().await, audited);

        // A good one, with a message that says otherwise: the console shows the facts.
        let outcome = json!({
            "restored_sequence": 1,
            "rows_lost": [{"table": "items", "rows": 2, "live": 9, "backup": 7},
                          {"table": "sales<x>", "rows": 12, "live": 100, "backup": 88}],
            "refused": [{"sequence": 2, "reason": "pack <ab> missing"}]
        });
        let (s, v) = report(
            repair,
            json!({"ok": true, "message": "restored backup #7; all fine", "outcome": outcome}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["request"]["outcome"], outcome, "{v}");
        // An older agent's report on the plain request: only a message.
        let (s, v) = report(
            plain,
            json!({"ok": true, "message": "restored backup #1; rows newer than the backup would be lost: sales: 5 rows (live 15, backup 10)"}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert!(v["request"]["outcome"].is_null(), "{v}");
        let (_, v) = api(&c, "GET", &srv.url(&list), Some(&admin), None).await;
        assert_eq!(v["requests"][0]["outcome"], outcome, "{v}");
        assert_eq!(v["requests"][0]["status"], "done", "{v}");
        let (_, audit) = api(&c, "GET", &srv.url("/api/v1/audit"), Some(&admin), None).await;
        assert_eq!(audit["entries"].as_array().unwrap().len(), audited + 2);
        assert!(audit.to_string().contains("pack <ab> missing"), "{audit}");

        let browser = client();
        let session = sign_in(&browser, &srv, &admin).await;
        let (st, _, html) = get(
            &browser,
            &srv,
            &format!("/console/backups?device={}", dev.id),
            Some(&session.cookie),
        )
        .await;
        assert_eq!(st, 200, "{html}");
        let row = |id: i64| {
            let at = html.find(&format!("data-request=\"{id}\"")).unwrap();
            let rest = &html[at..];
            rest[..rest.find("</tr>").unwrap()].to_owned()
        };
        let r = row(repair);
        assert!(r.contains("data-outcome=\"structured\""), "{r}");
        assert!(r.contains("<td>#1</td>") && !r.contains("#7</td>"), "{r}");
        assert!(
            r.contains(
                "<td class=\"rows-lost\" title=\"items: live 9, backup 7; sales&lt;x&gt;: live \
                 100, backup 88\">14 (items 2, sales&lt;x&gt; 12)</td>"
            ),
            "{r}"
        );
        assert!(
            r.contains("refused backups: #2 (pack &lt;ab&gt; missing)"),
            "{r}"
        );
        let r = row(plain);
        assert!(r.contains("data-outcome=\"message\""), "{r}");
        assert!(
            r.contains("<td class=\"rows-lost\">5 (sales 5)</td>"),
            "{r}"
        );
        srv.stop().await;
    });
}
