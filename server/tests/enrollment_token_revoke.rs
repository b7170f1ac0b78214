//! Enrollment tokens can be listed and revoked, through the API (`GET` and
//! `DELETE /api/v1/enrollment-tokens[/{id}]`) and through the real `otter-server
//! enroll-token list|revoke` binary, on the host (`--data-dir`) and over the API
//! (`--server`): only admins revoke, each revocation is audited once, an enrollment with a
//! revoked token is refused with a clear error and records nothing, a used token cannot be
//! revoked (the device must be), and no listing shows a token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cli::{args, cli, ok};
use common::fleet::{create_enrollment_token, enroll_body, post_enroll};
use common::{api, audit_entries, client, config, make_token, run, start, Running};
use otter_keys::crypto::SigningKey;
use serde_json::{json, Value};

async fn listed(c: &reqwest::Client, srv: &Running, token: &str) -> Vec<Value> {
    let (s, v) = api(
        c,
        "GET",
        &srv.url("/api/v1/enrollment-tokens"),
        Some(token),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["enrollment_tokens"].as_array().unwrap().clone()
}

async fn revocations(c: &reqwest::Client, srv: &Running, admin: &str, id: i64) -> usize {
    audit_entries(c, srv, admin)
        .await
        .iter()
        .filter(|e| {
            e["action"] == "enrollment_token.revoke"
                && e["subject"] == format!("enrollment_token:{id}")
        })
        .count()
}

async fn device_count(c: &reqwest::Client, srv: &Running, admin: &str) -> usize {
    let (s, v) = api(c, "GET", &srv.url("/api/v1/devices"), Some(admin), None).await;
    assert_eq!(s, 200, "{v}");
    v["devices"].as_array().unwrap().len()
}

#[test]
fn enrollment_tokens_are_listed_and_revoked_over_the_api() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, admin) = start(config(dir.path())).await;
        let admin = admin.unwrap();
        let c = client();
        let (_, operator) = make_token(&c, &srv, &admin, "operator").await;
        let (_, auditor) = make_token(&c, &srv, &admin, "auditor").await;

        let (s, a) = create_enrollment_token(&c, &srv, &operator, json!({"group": "lane-1"})).await;
        assert_eq!(s, 201, "{a}");
        let (s, b) = create_enrollment_token(&c, &srv, &operator, json!({})).await;
        assert_eq!(s, 201, "{b}");
        let (a_id, a_token) = (a["id"].as_i64().unwrap(), a["token"].as_str().unwrap());
        let (b_id, b_token) = (b["id"].as_i64().unwrap(), b["token"].as_str().unwrap());

        // Listed newest first, unused, without the tokens.
        let list = listed(&c, &srv, &auditor).await;
        assert_eq!(
            list.iter()
                .map(|t| (t["id"].as_i64().unwrap(), t["state"].as_str().unwrap()))
                .collect::<Vec<_>>(),
            [(b_id, "unused"), (a_id, "unused")]
        );
        assert_eq!(list[1]["group"], "lane-1");
        let text = serde_json::to_string(&list).unwrap();
        assert!(!text.contains(a_token) && !text.contains(b_token));

        // Only admins revoke.
        let url = srv.url(&format!("/api/v1/enrollment-tokens/{a_id}"));
        for who in [&operator, &auditor] {
            let (s, v) = api(&c, "DELETE", &url, Some(who), None).await;
            assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")));
        }
        assert_eq!(revocations(&c, &srv, &admin, a_id).await, 0);
        let (s, v) = api(&c, "DELETE", &url, Some(&admin), None).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["state"], "revoked");
        let revoked_at = v["revoked_at"].as_i64().unwrap();
        // Again: same record, audited once.
        let (s, v) = api(&c, "DELETE", &url, Some(&admin), None).await;
        assert_eq!((s, v["revoked_at"].as_i64()), (200, Some(revoked_at)));
        assert_eq!(revocations(&c, &srv, &admin, a_id).await, 1);

        // Enrolling with the revoked token is refused, clearly, and records nothing.
        let key = SigningKey::generate();
        let (s, v) = post_enroll(&c, &srv, &enroll_body(a_token, &key, "pos-a")).await;
        assert_eq!(s, 401, "{v}");
        assert_eq!(v["error"]["code"], "enrollment_token_revoked");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("revoked") && msg.contains("new one"), "{msg}");
        assert!(!msg.contains(a_token));
        assert_eq!(device_count(&c, &srv, &admin).await, 0);

        // The other token still enrolls; once used it cannot be revoked.
        let (s, v) = post_enroll(&c, &srv, &enroll_body(b_token, &key, "pos-a")).await;
        assert_eq!(s, 201, "{v}");
        let device = v["device_id"].as_str().unwrap().to_owned();
        let (s, v) = api(
            &c,
            "DELETE",
            &srv.url(&format!("/api/v1/enrollment-tokens/{b_id}")),
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (409, Some("enrollment_token_used"))
        );
        assert!(v["error"]["message"].as_str().unwrap().contains(&device));
        for (path, status) in [("999999", 404), ("x1", 400)] {
            let (s, v) = api(
                &c,
                "DELETE",
                &srv.url(&format!("/api/v1/enrollment-tokens/{path}")),
                Some(&admin),
                None,
            )
            .await;
            assert_eq!(s, status, "{path}: {v}");
        }
        let list = listed(&c, &srv, &operator).await;
        assert_eq!(list[0]["state"], "used");
        assert_eq!(list[0]["used_by_device"], device.as_str());
        assert_eq!(list[1]["state"], "revoked");
        srv.stop().await;
    });
}

#[test]
fn enroll_token_list_and_revoke_work_on_the_host_and_over_the_api() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (srv, admin) = start(config(&data)).await;
        let admin = admin.unwrap();
        let c = client();
        let (_, operator) = make_token(&c, &srv, &admin, "operator").await;
        let (_, auditor) = make_token(&c, &srv, &admin, "auditor").await;
        let data_s = data.to_str().unwrap().to_owned();
        let server = srv.url("");

        // Host mode: create, list (JSON and table), revoke.
        let out = cli(
            args(&[
                "enroll-token",
                "create",
                "--group",
                "lane-9",
                "--data-dir",
                &data_s,
            ]),
            None,
        )
        .await;
        let host_token = ok(&out).trim().to_owned();
        let out = cli(
            args(&["enroll-token", "list", "--json", "--data-dir", &data_s]),
            None,
        )
        .await;
        let list: Vec<Value> = serde_json::from_str(&ok(&out)).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(
            (list[0]["state"].as_str(), list[0]["group"].as_str()),
            (Some("unused"), Some("lane-9"))
        );
        let host_id = list[0]["id"].as_i64().unwrap();
        assert!(!serde_json::to_string(&list).unwrap().contains(&host_token));
        let out = cli(
            args(&[
                "enroll-token",
                "revoke",
                &host_id.to_string(),
                "--data-dir",
                &data_s,
            ]),
            None,
        )
        .await;
        assert!(ok(&out).contains(&format!("enrollment token {host_id} is revoked")));
        assert_eq!(revocations(&c, &srv, &admin, host_id).await, 1);
        // The running server refuses it at once.
        let key = SigningKey::generate();
        let (s, v) = post_enroll(&c, &srv, &enroll_body(&host_token, &key, "pos-a")).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (401, Some("enrollment_token_revoked"))
        );
        let out = cli(args(&["enroll-token", "list", "--data-dir", &data_s]), None).await;
        let table = ok(&out);
        assert!(table.starts_with("   ID  STATE"), "{table}");
        assert!(
            table.contains("revoked") && table.contains("lane-9"),
            "{table}"
        );

        // API mode: an operator creates, an auditor lists, only an admin revokes.
        let out = cli(
            args(&[
                "enroll-token",
                "create",
                "--server",
                &server,
                "--expires-in",
                "1h",
            ]),
            Some(operator.clone()),
        )
        .await;
        let api_token = ok(&out).trim().to_owned();
        assert_eq!(api_token.len(), 64, "{api_token}");
        let out = cli(
            args(&["enroll-token", "list", "--json", "--server", &server]),
            Some(auditor.clone()),
        )
        .await;
        let list: Vec<Value> = serde_json::from_str(&ok(&out)).unwrap();
        assert_eq!(list.len(), 2);
        let api_id = list[0]["id"].as_i64().unwrap();
        assert_eq!(list[0]["state"], "unused");
        let revoke = args(&[
            "enroll-token",
            "revoke",
            &api_id.to_string(),
            "--server",
            &server,
        ]);
        let out = cli(revoke.clone(), Some(operator.clone())).await;
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("403") && err.contains("admin"), "{err}");
        assert!(!err.contains(&operator));
        let out = cli(revoke, Some(admin.clone())).await;
        assert!(ok(&out).contains("is revoked"));
        let (s, v) = post_enroll(&c, &srv, &enroll_body(&api_token, &key, "pos-a")).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (401, Some("enrollment_token_revoked"))
        );
        assert_eq!(device_count(&c, &srv, &admin).await, 0);

        // A used token: the host refuses to revoke it and names the device.
        let (s, v) = create_enrollment_token(&c, &srv, &admin, json!({})).await;
        assert_eq!(s, 201);
        let (s, e) = post_enroll(
            &c,
            &srv,
            &enroll_body(v["token"].as_str().unwrap(), &key, "pos-a"),
        )
        .await;
        assert_eq!(s, 201, "{e}");
        let out = cli(
            args(&[
                "enroll-token",
                "revoke",
                &v["id"].to_string(),
                "--data-dir",
                &data_s,
            ]),
            None,
        )
        .await;
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("used already") && err.contains(e["device_id"].as_str().unwrap()),
            "{err}"
        );
        srv.stop().await;
    });
}
