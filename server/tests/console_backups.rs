//! Backups, restore requests, the audit log and security events in the console, against the
//! real server on loopback with a real signed backup (packs and manifest made with
//! `otter_keys::envelope`, uploaded with signed device requests): the backups page shows the
//! device's chain; a restore request (typed confirmation) is refused for an auditor (403,
//! nothing recorded) and accepted for a restorer (recorded in the audit log); the audit page
//! shows the chain intact and the request; the security page lists reported events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod console_support;

use std::collections::BTreeMap;

use common::fleet::{enrolled_device, now, report, TestDevice};
use common::{api, config, make_token, run, start, Running};
use console_support::{client, get, post, sign_in};
use otter_keys::age::x25519::Identity;
use otter_keys::envelope::{ChunkKey, ManifestBody, ManifestFields, PackBuilder, SignedManifest};
use otter_keys::request::sign_request;
use otter_keys::time::UtcTime;

async fn signed(
    c: &reqwest::Client,
    srv: &Running,
    dev: &TestDevice,
    method: &str,
    path: &str,
    body: &[u8],
) -> u16 {
    let h = sign_request(&dev.key, &dev.id, method, path, body, now()).unwrap();
    let mut req = c
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            srv.url(path),
        )
        .body(body.to_vec());
    for (name, value) in h.pairs() {
        req = req.header(name, value);
    }
    req.send().await.unwrap().status().as_u16()
}

/// Uploads one pack of four pages and the first manifest of `dev`'s chain.
async fn back_up(c: &reqwest::Client, srv: &Running, dev: &TestDevice) {
    let key = ChunkKey::generate();
    let identity = Identity::generate();
    let pages: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i.wrapping_mul(37); 512]).collect();
    let mut b = PackBuilder::new();
    for p in &pages {
        b.add(key.chunk_id(p), p).unwrap();
    }
    let pack = b.finish(&[identity.to_public()]).unwrap();
    let s = signed(
        c,
        srv,
        dev,
        "PUT",
        &format!("/api/v1/device/backups/packs/{}", pack.id),
        &pack.ciphertext,
    )
    .await;
    assert_eq!(s, 201);
    let body = ManifestBody {
        page_size: 512,
        page_count: pages.len() as u64,
        pages: pack.entries.iter().map(|e| e.chunk).collect(),
        chunks: pack.locations().collect(),
        file_blake3: "11".repeat(32),
        file_sha256: "22".repeat(32),
        row_counts: [("sales".to_string(), 5u64)].into(),
        schema_version: 1,
        extra: BTreeMap::new(),
    };
    let fields = ManifestFields {
        device_id: dev.id.clone(),
        sequence: 1,
        created: UtcTime::now(),
        previous: None,
        packs: vec![pack.pack_ref()],
    };
    let m = SignedManifest::seal(fields, &body, &dev.key, &[identity.to_public()]).unwrap();
    let s = signed(
        c,
        srv,
        dev,
        "POST",
        "/api/v1/device/backups/manifests",
        &m.to_bytes().unwrap(),
    )
    .await;
    assert_eq!(s, 201);
}

async fn audit_entries(c: &reqwest::Client, srv: &Running, admin: &str) -> Vec<serde_json::Value> {
    let (s, v) = api(c, "GET", &srv.url("/api/v1/audit"), Some(admin), None).await;
    assert_eq!(s, 200, "{v}");
    v["entries"].as_array().unwrap().clone()
}

#[test]
fn restore_requests_audit_log_and_security_events() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, admin) = start(config(dir.path())).await;
        let admin = admin.unwrap();
        let api_client = common::client();
        let dev = enrolled_device(&api_client, &srv, &admin, Some("lane-3")).await;
        back_up(&api_client, &srv, &dev).await;
        let (st, _) = report(
            &api_client,
            &srv,
            &dev,
            &serde_json::json!({"security_events": [{"kind": "file_changed", "detail": "/opt/pos/bin/app", "at": now()}]}),
        )
        .await;
        assert_eq!(st, 200);
        // A full server-side verification of the catalog, as an operator runs it.
        let data = dir.path().to_str().unwrap().to_owned();
        let out = tokio::task::spawn_blocking(move || {
            assert_cmd::Command::cargo_bin("otter-server")
                .unwrap()
                .args(["backups", "verify", "--data-dir", &data])
                .env_remove("OTTER_DATA_DIR")
                .env_remove("OTTER_CONFIG")
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (_, restorer) = make_token(&api_client, &srv, &admin, "restorer").await;
        let (_, auditor) = make_token(&api_client, &srv, &admin, "auditor").await;
        let c = client();
        let page = format!("/console/backups?device={}", dev.id);
        let action = format!("/console/backups/{}/restore", dev.id);

        // The restorer sees the chain and the form.
        let re = sign_in(&c, &srv, &restorer).await;
        let (st, _, html) = get(&c, &srv, "/console/backups", Some(&re.cookie)).await;
        assert_eq!(st, 200);
        assert!(
            html.contains(&dev.id) && html.contains("unbroken"),
            "{html}"
        );
        let (st, _, html) = get(&c, &srv, &page, Some(&re.cookie)).await;
        assert_eq!(st, 200);
        assert!(html.contains("id=\"restore-form\""));
        assert!(
            html.contains("Last full verification") && html.contains("health-ok\">ok</span>"),
            "{html}"
        );

        // An auditor reads the catalog, gets no form, and its post is refused.
        let au = sign_in(&c, &srv, &auditor).await;
        let (st, _, html) = get(&c, &srv, &page, Some(&au.cookie)).await;
        assert_eq!(st, 200);
        assert!(html.contains(&dev.id) && !html.contains("restore-form"));
        let before = audit_entries(&api_client, &srv, &admin).await.len();
        let form = |csrf: &str, confirm: &str, seq: &str| {
            vec![
                ("csrf".to_owned(), csrf.to_owned()),
                ("sequence".to_owned(), seq.to_owned()),
                (
                    "reason".to_owned(),
                    "terminal replaced after a spill".to_owned(),
                ),
                ("confirm".to_owned(), confirm.to_owned()),
            ]
        };
        let send = |cookie: String, f: Vec<(String, String)>| {
            let (c, srv, action) = (&c, &srv, action.clone());
            async move {
                let f: Vec<(&str, &str)> =
                    f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                post(c, srv, &action, Some(&cookie), &f).await
            }
        };
        let (st, _, body) = send(au.cookie.clone(), form(&au.csrf, &dev.id, "1")).await;
        assert_eq!(st, 403, "{body}");
        assert!(body.contains("restorer"));
        // The restorer without the CSRF token, with a wrong confirmation, for a missing backup.
        let (st, _, _) = send(re.cookie.clone(), form("", &dev.id, "1")).await;
        assert_eq!(st, 403);
        let (st, _, body) = send(re.cookie.clone(), form(&re.csrf, "someone-else", "1")).await;
        assert_eq!(st, 400, "{body}");
        let (st, _, _) = send(re.cookie.clone(), form(&re.csrf, &dev.id, "9")).await;
        assert_eq!(st, 404);
        assert_eq!(
            audit_entries(&api_client, &srv, &admin).await.len(),
            before,
            "nothing recorded"
        );

        // Accepted for the restorer: recorded in the audit log and shown on the page.
        let (st, h, _) = send(re.cookie.clone(), form(&re.csrf, &dev.id, "1")).await;
        assert_eq!(st, 303);
        let to = h["location"].to_str().unwrap().to_owned();
        assert!(to.ends_with("&requested=1"), "{to}");
        let entries = audit_entries(&api_client, &srv, &admin).await;
        assert_eq!(entries.len(), before + 1);
        let last = entries.last().unwrap();
        assert_eq!(last["action"], "backup.restore_request");
        assert_eq!(last["subject"], format!("device:{}", dev.id));
        let (_, _, html) = get(&c, &srv, &to, Some(&re.cookie)).await;
        assert!(html.contains("was requested") && html.contains("terminal replaced after a spill"));

        // The audit page: the chain is intact and shows the request; auditors read it,
        // restorers may not.
        let (st, _, html) = get(&c, &srv, "/console/audit", Some(&au.cookie)).await;
        assert_eq!(st, 200);
        assert!(
            html.contains("chain intact") && html.contains("backup.restore_request"),
            "{html}"
        );
        let (st, _, _) = get(&c, &srv, "/console/audit", Some(&re.cookie)).await;
        assert_eq!(st, 403);

        // Security events across the fleet.
        let (st, _, html) = get(&c, &srv, "/console/security", Some(&au.cookie)).await;
        assert_eq!(st, 200);
        assert!(
            html.contains("file_changed")
                && html.contains("/opt/pos/bin/app")
                && html.contains(&dev.id)
        );
        // Every page's navigation shows the open alert the security event raised.
        let (_, _, html) = get(&c, &srv, "/console/backups", Some(&au.cookie)).await;
        assert!(
            html.contains("id=\"alert-count\" title=\"open alerts\">1</span>"),
            "{html}"
        );
        srv.stop().await;
    });
}
