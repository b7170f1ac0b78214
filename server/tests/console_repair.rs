//! Repairs and restore request status in the console, against the real server on loopback
//! with a real signed backup chain: the "Repair…" button shows for admins and restorers
//! only; its confirmation page says what the repair will restore and lose, using the
//! server's last full verification (a tampered pack makes it expect the older backup); the
//! CSRF-checked form with typed confirmation orders the same repair as the API (stored,
//! audited); the request then shows as pending, delivered once the terminal fetched it, and
//! done or failed with the terminal's report (backup restored, rows lost, refused backups).
//! The Security badge counts open alerts, not devices with events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backup_support;
mod common;
mod console_support;

use backup_support::{backup, cli, config_file, device_store, signed, Chain};
use common::fleet::{enrolled_device, now, report};
use common::{api, make_token, run, start, Running};
use console_support::{client, get, post, sign_in, Session};
use serde_json::{json, Value};

async fn requests_of(c: &reqwest::Client, srv: &Running, admin: &str, dev: &str) -> Vec<Value> {
    let (s, v) = api(
        c,
        "GET",
        &srv.url(&format!("/api/v1/backups/{dev}/restore-requests")),
        Some(admin),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["requests"].as_array().unwrap().clone()
}

async fn order(
    c: &reqwest::Client,
    srv: &Running,
    s: &Session,
    dev: &str,
    csrf: &str,
    confirm: &str,
) -> (u16, String, String) {
    let (st, h, body) = post(
        c,
        srv,
        &format!("/console/devices/{dev}/repair"),
        Some(&s.cookie),
        &[
            ("csrf", csrf),
            ("reason", "quick_check reports a damaged page"),
            ("confirm", confirm),
        ],
    )
    .await;
    let to = h
        .get("location")
        .map(|l| l.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (st, to, body)
}

/// The `data-status` of the console's row for request `id`.
fn row_status(html: &str, id: i64) -> Option<String> {
    let at = html.find(&format!("data-request=\"{id}\" data-status=\""))?;
    let rest = &html[at..];
    let rest = &rest[rest.find("data-status=\"")? + 13..];
    Some(rest[..rest.find('"')?].to_owned())
}

#[test]
fn a_repair_is_confirmed_ordered_and_followed_to_its_report() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (file, cfg) = config_file(dir.path(), "");
        let (srv, admin) = start(cfg.clone()).await;
        let admin = admin.unwrap();
        let api_client = common::client();
        let dev = enrolled_device(&api_client, &srv, &admin, Some("lane-4")).await;
        let mut chain = Chain::new();
        let p1 = chain.pack(1, 3);
        let p2 = chain.pack(2, 3);
        let t1 = now() - 3 * 3600;
        backup(&api_client, &srv, &dev, &mut chain, t1, &[&p1]).await;
        backup(
            &api_client,
            &srv,
            &dev,
            &mut chain,
            now() - 600,
            &[&p1, &p2],
        )
        .await;
        let (st, _) = report(
            &api_client,
            &srv,
            &dev,
            &json!({"security_events": [{"kind": "database_corruption", "detail": "quick_check: page 17 <bad>", "at": now()}]}),
        )
        .await;
        assert_eq!(st, 200);
        let (_, restorer) = make_token(&api_client, &srv, &admin, "restorer").await;
        let (_, operator) = make_token(&api_client, &srv, &admin, "operator").await;
        let (_, auditor) = make_token(&api_client, &srv, &admin, "auditor").await;
        let c = client();
        let re = sign_in(&c, &srv, &restorer).await;
        let ad = sign_in(&c, &srv, &admin).await;
        let op = sign_in(&c, &srv, &operator).await;
        let au = sign_in(&c, &srv, &auditor).await;
        let device_page = format!("/console/devices/{}", dev.id);
        let backups_page = format!("/console/backups?device={}", dev.id);
        let confirm_page = format!("/console/devices/{}/repair", dev.id);

        // The button: admins on the device page, restorers on the device's backups page;
        // not for operators or auditors.
        let (_, _, html) = get(&c, &srv, &device_page, Some(&ad.cookie)).await;
        assert!(
            html.contains("id=\"repair\"") && html.contains(&confirm_page),
            "{html}"
        );
        assert!(html.contains("No restore request"), "{html}");
        let (_, _, html) = get(&c, &srv, &backups_page, Some(&re.cookie)).await;
        assert!(html.contains("id=\"repair\""), "{html}");
        for s in [&op, &au] {
            let (st, _, html) = get(&c, &srv, &device_page, Some(&s.cookie)).await;
            assert_eq!(st, 200);
            assert!(!html.contains("id=\"repair\""), "{html}");
        }

        // The confirmation page: from #2, losing what was written after it; the database
        // event, escaped.
        let (st, _, html) = get(&c, &srv, &confirm_page, Some(&re.cookie)).await;
        assert_eq!(st, 200, "{html}");
        assert!(
            html.contains("starting at backup <strong>#2</strong>"),
            "{html}"
        );
        assert!(
            html.contains("after backup <strong>#2</strong> was taken"),
            "{html}"
        );
        assert!(
            html.contains("not fully verified this backup yet"),
            "{html}"
        );
        assert!(
            html.contains("database_corruption") && html.contains("page 17 &lt;bad&gt;"),
            "{html}"
        );
        assert!(html.contains("id=\"repair-form\"") && html.contains(&re.csrf));
        for s in [&op, &au] {
            let (st, _, _) = get(&c, &srv, &confirm_page, Some(&s.cookie)).await;
            assert_eq!(st, 403);
        }

        // Backup #2's pack is altered in the store; the server's full verification finds it
        // and the page now expects #1, three hours of sales lost.
        let pack_file = device_store(&cfg, &dev.id)
            .join("packs")
            .join(p2.id.to_string());
        let mut bytes = std::fs::read(&pack_file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&pack_file, bytes).unwrap();
        let f = file.clone();
        let out = tokio::task::spawn_blocking(move || cli(&f, &["backups", "verify"]))
            .await
            .unwrap();
        assert!(!out.status.success(), "the altered pack is found");
        assert!(String::from_utf8_lossy(&out.stdout).contains("PROBLEM"));
        let (_, _, html) = get(&c, &srv, &confirm_page, Some(&re.cookie)).await;
        assert!(
            html.contains("Backup #2 failed the server's last full verification"),
            "{html}"
        );
        assert!(
            html.contains("after backup <strong>#1</strong> was taken"),
            "{html}"
        );
        assert!(
            html.contains("the last <strong>3 h</strong> of sales"),
            "{html}"
        );

        // Refused without the CSRF token, with a wrong confirmation, for an auditor: nothing
        // recorded.
        let (st, _, _) = order(&c, &srv, &re, &dev.id, "", &dev.id).await;
        assert_eq!(st, 403);
        let (st, _, body) = order(&c, &srv, &re, &dev.id, &re.csrf, "another").await;
        assert_eq!(st, 400, "{body}");
        let (st, _, _) = order(&c, &srv, &au, &dev.id, &au.csrf, &dev.id).await;
        assert_eq!(st, 403);
        assert!(requests_of(&api_client, &srv, &admin, &dev.id)
            .await
            .is_empty());

        // Ordered by the restorer: the API's repair, audited.
        let (st, to, body) = order(&c, &srv, &re, &dev.id, &re.csrf, &dev.id).await;
        assert_eq!(st, 303, "{body}");
        let reqs = requests_of(&api_client, &srv, &admin, &dev.id).await;
        assert_eq!(reqs.len(), 1);
        let id = reqs[0]["id"].as_i64().unwrap();
        assert_eq!(
            (reqs[0]["repair"].as_bool(), reqs[0]["sequence"].as_u64()),
            (Some(true), Some(2))
        );
        assert!(to.ends_with(&format!("&repair={id}")), "{to}");
        let (s, v) = api(
            &api_client,
            "GET",
            &srv.url("/api/v1/audit"),
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(s, 200);
        let last = v["entries"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["action"], "backup.restore_request");
        assert!(
            last["details"]
                .as_str()
                .unwrap()
                .contains("\"repair\":true"),
            "{last}"
        );
        let (_, _, html) = get(&c, &srv, &to, Some(&re.cookie)).await;
        assert!(html.contains("id=\"repair-ordered\""), "{html}");
        assert_eq!(row_status(&html, id).as_deref(), Some("pending"), "{html}");
        // A second repair while this one is open is refused.
        let (st, _, body) = order(&c, &srv, &ad, &dev.id, &ad.csrf, &dev.id).await;
        assert_eq!(st, 409, "{body}");
        assert!(body.contains("still pending"), "{body}");

        // The terminal fetches it: delivered.
        let (s, v) = signed(
            &api_client,
            &srv,
            &dev,
            "GET",
            "/api/v1/device/restore-requests",
            b"",
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["requests"][0]["id"].as_i64(), Some(id));
        let (_, _, html) = get(&c, &srv, &device_page, Some(&ad.cookie)).await;
        assert_eq!(
            row_status(&html, id).as_deref(),
            Some("delivered"),
            "{html}"
        );

        // It reports, as `otter-agent restore --requested` does: done, #1, 12 sales lost.
        let message = "repair: restored backup #1, the newest that verifies; rows newer than \
                       the backup would be lost: sales: 12 rows (live 100, backup 88); refused: \
                       #2 (pack hash mismatch)";
        let body = serde_json::to_vec(&json!({"ok": true, "message": message})).unwrap();
        let path = format!("/api/v1/device/restore-requests/{id}");
        let (s, v) = signed(&api_client, &srv, &dev, "POST", &path, &body).await;
        assert_eq!(s, 200, "{v}");
        let (_, _, html) = get(&c, &srv, &backups_page, Some(&re.cookie)).await;
        assert_eq!(row_status(&html, id).as_deref(), Some("done"), "{html}");
        assert!(html.contains("<td>#1</td>"), "{html}");
        assert!(
            html.contains("<td class=\"rows-lost\">12 (sales 12)</td>"),
            "{html}"
        );
        assert!(
            html.contains("refused backups: #2 (pack hash mismatch)"),
            "{html}"
        );

        // A second repair, failed on the terminal.
        let (st, _, _) = order(&c, &srv, &ad, &dev.id, &ad.csrf, &dev.id).await;
        assert_eq!(st, 303);
        let id2 = requests_of(&api_client, &srv, &admin, &dev.id).await[0]["id"]
            .as_i64()
            .unwrap();
        assert_ne!(id2, id);
        let failed = "repair: no backup verifies; the live database was not touched";
        let body = serde_json::to_vec(&json!({"ok": false, "message": failed})).unwrap();
        let path = format!("/api/v1/device/restore-requests/{id2}");
        let (s, _) = signed(&api_client, &srv, &dev, "POST", &path, &body).await;
        assert_eq!(s, 200);
        let (_, _, html) = get(&c, &srv, &device_page, Some(&au.cookie)).await;
        assert_eq!(row_status(&html, id2).as_deref(), Some("failed"), "{html}");
        assert_eq!(row_status(&html, id).as_deref(), Some("done"), "{html}");
        assert!(html.contains("no backup verifies"), "{html}");

        // A revoked device cannot be repaired.
        let (s, _) = api(
            &api_client,
            "DELETE",
            &srv.url(&format!("/api/v1/devices/{}", dev.id)),
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(s, 200);
        let (_, _, html) = get(&c, &srv, &confirm_page, Some(&ad.cookie)).await;
        assert!(
            html.contains("id=\"repair-refused\"") && !html.contains("id=\"repair-form\""),
            "{html}"
        );
        let (st, _, _) = order(&c, &srv, &ad, &dev.id, &ad.csrf, &dev.id).await;
        assert_eq!(st, 409);
        let (st, _, _) = get(
            &c,
            &srv,
            "/console/devices/nothing/repair",
            Some(&ad.cookie),
        )
        .await;
        assert_eq!(st, 404);
        assert_eq!(
            requests_of(&api_client, &srv, &admin, &dev.id).await.len(),
            2
        );
        srv.stop().await;
    });
}

/// The number on the Security entry of the navigation, if shown.
fn badge(html: &str) -> Option<u64> {
    let at = html.find("id=\"alert-count\" title=\"open alerts\">")?;
    let rest = &html[at + 37..];
    rest[..rest.find('<')?].parse().ok()
}

#[test]
fn the_security_badge_counts_open_alerts() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (_, cfg) = config_file(dir.path(), "");
        let (srv, admin) = start(cfg).await;
        let admin = admin.unwrap();
        let api_client = common::client();
        let a = enrolled_device(&api_client, &srv, &admin, None).await;
        let b = enrolled_device(&api_client, &srv, &admin, None).await;
        let c = client();
        let ad = sign_in(&c, &srv, &admin).await;
        let (_, _, html) = get(&c, &srv, "/console/fleet", Some(&ad.cookie)).await;
        assert_eq!(badge(&html), None, "{html}");
        // Two devices, three events: three alerts.
        let t = now();
        for (dev, events) in [
            (
                &a,
                json!([{"kind": "file_changed", "detail": "/opt/pos/a", "at": t},
                        {"kind": "file_added", "detail": "/opt/pos/b", "at": t}]),
            ),
            (
                &b,
                json!([{"kind": "metadata_refused", "detail": "bad signature", "at": t}]),
            ),
        ] {
            let (st, _) = report(&api_client, &srv, dev, &json!({"security_events": events})).await;
            assert_eq!(st, 200);
        }
        let (_, _, html) = get(&c, &srv, "/console/fleet", Some(&ad.cookie)).await;
        assert_eq!(badge(&html), Some(3), "{html}");
        // Acknowledging lowers it although the devices' last reports still hold the events.
        let (_, _, html) = get(&c, &srv, "/console/security", Some(&ad.cookie)).await;
        let ids: Vec<String> = html
            .match_indices("action=\"/console/alerts/")
            .map(|(i, _)| {
                let rest = &html[i + 24..];
                rest[..rest.find('/').unwrap()].to_owned()
            })
            .collect();
        assert_eq!(ids.len(), 3, "{html}");
        for (n, id) in ids.iter().enumerate() {
            let (st, _, _) = post(
                &c,
                &srv,
                &format!("/console/alerts/{id}/ack"),
                Some(&ad.cookie),
                &[("csrf", &ad.csrf)],
            )
            .await;
            assert_eq!(st, 303);
            let (_, _, html) = get(&c, &srv, "/console/backups", Some(&ad.cookie)).await;
            let left = 2 - n as u64;
            assert_eq!(badge(&html), (left > 0).then_some(left), "{html}");
        }
        let (_, _, html) = get(&c, &srv, "/console/security", Some(&ad.cookie)).await;
        assert!(
            html.contains("0 open alerts") && html.contains("/opt/pos/a"),
            "{html}"
        );
        srv.stop().await;
    });
}
