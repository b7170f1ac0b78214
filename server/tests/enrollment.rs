//! Enrollment: a token enrolls exactly one device, into the token's group, before it
//! expires; reused, expired, unknown tokens and malformed keys or models are refused with
//! JSON errors and change nothing; the operator CLI makes tokens that work at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use assert_cmd::Command;
use common::fleet::{create_enrollment_token, enroll_body, new_token, post_enroll};
use common::{api, client, config, make_token, run, start};
use otter_keys::crypto::SigningKey;
use serde_json::json;

async fn device_count(c: &reqwest::Client, srv: &common::Running, admin: &str) -> usize {
    let (s, v) = api(c, "GET", &srv.url("/api/v1/devices"), Some(admin), None).await;
    assert_eq!(s, 200, "{v}");
    v["devices"].as_array().unwrap().len()
}

#[test]
fn a_token_enrolls_one_device_into_its_group_once() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, admin) = start(config(dir.path())).await;
        let admin = admin.unwrap();
        let c = client();
        let token = new_token(&c, &srv, &admin, Some("store-12")).await;
        let key = SigningKey::generate();
        let (s, v) = post_enroll(&c, &srv, &enroll_body(&token, &key, "pos-a")).await;
        assert_eq!(s, 201, "{v}");
        let id = v["device_id"].as_str().unwrap();
        assert_eq!(v["group"], "store-12");
        assert_eq!(v["hardware_model"], "pos-a");
        assert_eq!(
            v["metadata_url"].as_str().unwrap(),
            srv.url("/repo/metadata/")
        );
        assert_eq!(
            v["targets_url"].as_str().unwrap(),
            srv.url("/repo/targets/")
        );
        // No `[backups] recovery_recipient` in this server's configuration.
        assert!(v["recovery_recipient"].is_null(), "{v}");

        // The same token again, with another key: refused, nothing changes.
        let (s, v) = post_enroll(
            &c,
            &srv,
            &enroll_body(&token, &SigningKey::generate(), "pos-a"),
        )
        .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (401, Some("enrollment_token_used")),
            "{v}"
        );
        assert_eq!(device_count(&c, &srv, &admin).await, 1);

        // The device is listed with its group, model and key.
        let (_, v) = api(
            &c,
            "GET",
            &srv.url("/api/v1/devices?group=store-12"),
            Some(&admin),
            None,
        )
        .await;
        let d = &v["devices"][0];
        assert_eq!(d["device_id"], id);
        assert_eq!(d["group"], "store-12");
        assert_eq!(d["public_key"], hex::encode(key.public_bytes()));
        assert!(d["last_seen"].is_null());
        let (_, v) = api(
            &c,
            "GET",
            &srv.url("/api/v1/devices?group=other"),
            Some(&admin),
            None,
        )
        .await;
        assert!(v["devices"].as_array().unwrap().is_empty());
        let (s, v) = api(
            &c,
            "GET",
            &srv.url("/api/v1/devices?colour=red"),
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("invalid_query"))
        );

        // A second enrollment of the same identity key with a fresh token: 409.
        let token2 = new_token(&c, &srv, &admin, None).await;
        let (s, v) = post_enroll(&c, &srv, &enroll_body(&token2, &key, "pos-a")).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (409, Some("device_exists")),
            "{v}"
        );
        // ...and the token survives that refusal.
        let (s, _) = post_enroll(
            &c,
            &srv,
            &enroll_body(&token2, &SigningKey::generate(), "pos-b"),
        )
        .await;
        assert_eq!(s, 201);
        srv.stop().await;
    });
}

#[test]
fn bad_keys_models_and_tokens_are_refused_and_change_nothing() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, admin) = start(config(dir.path())).await;
        let admin = admin.unwrap();
        let c = client();
        let token = new_token(&c, &srv, &admin, None).await;
        let key = SigningKey::generate();
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1;
        let cases = [
            ("public_key", json!("00"), "invalid_public_key"),
            (
                "public_key",
                json!(hex::encode(identity_point)),
                "invalid_public_key",
            ),
            (
                "public_key",
                json!(hex::encode(key.public_bytes()).to_uppercase()),
                "invalid_public_key",
            ),
            (
                "backup_recipient",
                json!("age1qqqq"),
                "invalid_backup_recipient",
            ),
            (
                "backup_recipient",
                json!(hex::encode(key.public_bytes())),
                "invalid_backup_recipient",
            ),
            ("hardware_model", json!("../etc"), "invalid_hardware_model"),
            ("hardware_model", json!(""), "invalid_hardware_model"),
            ("token", json!("not-a-token"), "invalid_enrollment_token"),
            ("token", json!("0".repeat(64)), "invalid_enrollment_token"),
        ];
        for (field, value, code) in cases {
            let mut body = enroll_body(&token, &key, "pos-a");
            body[field] = value.clone();
            let (s, v) = post_enroll(&c, &srv, &body).await;
            assert_eq!(v["error"]["code"], code, "{field}={value}: {v}");
            assert!(s == 400 || s == 401, "{field}: {s}");
        }
        for raw in [&b"not json"[..], b"{}", br#"{"token":"x","extra":1}"#] {
            let (s, v) = api(
                &c,
                "POST",
                &srv.url("/api/v1/enroll"),
                None,
                Some(raw.to_vec()),
            )
            .await;
            assert_eq!(
                (s, v["error"]["code"].as_str()),
                (400, Some("invalid_request"))
            );
        }
        assert_eq!(device_count(&c, &srv, &admin).await, 0);
        // The token was never consumed by any of those.
        let (s, v) = post_enroll(&c, &srv, &enroll_body(&token, &key, "pos-a")).await;
        assert_eq!(s, 201, "{v}");

        // Token creation checks its input too.
        for (body, code) in [
            (json!({"group": "a b"}), "invalid_group"),
            (json!({"expires_in_secs": 1}), "invalid_expiry"),
            (json!({"expires_in_secs": 40 * 86400}), "invalid_expiry"),
            (json!({"colour": "red"}), "invalid_request"),
        ] {
            let (s, v) = create_enrollment_token(&c, &srv, &admin, body.clone()).await;
            assert_eq!(
                (s, v["error"]["code"].as_str()),
                (400, Some(code)),
                "{body}"
            );
        }
        // Operators may create enrollment tokens; publishers may not.
        let (_, operator) = make_token(&c, &srv, &admin, "operator").await;
        let (s, _) = create_enrollment_token(&c, &srv, &operator, json!({})).await;
        assert_eq!(s, 201);
        let (_, publisher) = make_token(&c, &srv, &admin, "publisher").await;
        let (s, _) = create_enrollment_token(&c, &srv, &publisher, json!({})).await;
        assert_eq!(s, 403);
        srv.stop().await;
    });
}

#[test]
fn an_expired_token_is_refused() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, admin) = start(config(dir.path())).await;
        let admin = admin.unwrap();
        let c = client();
        let (s, v) =
            create_enrollment_token(&c, &srv, &admin, json!({"expires_in_secs": 60})).await;
        assert_eq!(s, 201);
        let token = v["token"].as_str().unwrap().to_owned();
        // Age the token by moving its expiry into the past in the database (the server
        // reads it on every enrollment).
        let db = otter_server::db::Db::open_blocking(&dir.path().join("otter.db")).unwrap();
        db.with_conn_blocking(|conn| -> Result<(), otter_server::db::DbError> {
            conn.execute(
                "UPDATE enrollment_tokens SET expires_at = expires_at - 120",
                [],
            )?;
            Ok(())
        })
        .unwrap();
        let (s, v) = post_enroll(
            &c,
            &srv,
            &enroll_body(&token, &SigningKey::generate(), "pos-a"),
        )
        .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (401, Some("enrollment_token_expired")),
            "{v}"
        );
        assert!(v["error"]["message"].as_str().unwrap().contains("expired"));
        assert_eq!(device_count(&c, &srv, &admin).await, 0);
        srv.stop().await;
    });
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::cargo_bin("otter-server")
        .unwrap()
        .args(args)
        .env_remove("OTTER_DATA_DIR")
        .env_remove("OTTER_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn the_cli_makes_group_bound_tokens_and_lists_devices() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap().to_owned();
        let (srv, admin) = start(config(dir.path())).await;
        let admin = admin.unwrap();
        let c = client();
        let out = tokio::task::spawn_blocking({
            let d = d.clone();
            move || {
                cli(&[
                    "enroll-token",
                    "create",
                    "--group",
                    "lane-3",
                    "--expires-in",
                    "2h",
                    "--data-dir",
                    &d,
                ])
            }
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "only the token on stdout: {stdout:?}");
        let token = lines[0];
        assert!(otter_server::tokens::looks_like_token(token));
        let (s, v) = post_enroll(
            &c,
            &srv,
            &enroll_body(token, &SigningKey::generate(), "pos-z"),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["group"], "lane-3");
        let id = v["device_id"].as_str().unwrap().to_owned();

        let out = tokio::task::spawn_blocking({
            let d = d.clone();
            move || {
                cli(&[
                    "devices",
                    "list",
                    "--json",
                    "--model",
                    "pos-z",
                    "--data-dir",
                    &d,
                ])
            }
        })
        .await
        .unwrap();
        assert!(out.status.success());
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(list[0]["device_id"], id.as_str());
        assert_eq!(list[0]["group"], "lane-3");
        assert!(!String::from_utf8_lossy(&out.stdout).contains(token));
        let _ = admin;
        srv.stop().await;

        for bad in [
            vec!["--expires-in", "1w"],
            vec!["--expires-in", "10s"],
            vec!["--group", "a/b"],
        ] {
            let mut args = vec!["enroll-token", "create", "--data-dir", &d];
            args.extend(bad.iter().copied());
            let out = cli(&args);
            assert!(!out.status.success(), "{bad:?}");
            assert!(out.stdout.is_empty());
        }
    });
}
