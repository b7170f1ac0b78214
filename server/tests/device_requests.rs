//! Signed device requests: a valid signed report is accepted and stored; a replayed
//! request, stale and future timestamps, a body changed after signing, an unknown or
//! revoked device, another key, a changed path and missing headers are each refused with
//! 401 and a stable code, and store nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::fleet::{enrolled_device, now, report, send_signed, sign, TestDevice};
use common::{api, client, config, run, start, Running};
use otter_keys::crypto::SigningKey;
use serde_json::{json, Value};

const REPORT: &str = "/api/v1/device/report";

async fn device(c: &reqwest::Client, srv: &Running, admin: &str, id: &str) -> Value {
    let (s, v) = api(c, "GET", &srv.url("/api/v1/devices"), Some(admin), None).await;
    assert_eq!(s, 200);
    v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == id)
        .unwrap()
        .clone()
}

fn body() -> Value {
    json!({
        "installed": {"pos-firmware": "1.4.0", "card-reader-driver": "2.0.1"},
        "last_update": {"target": "pos-firmware-1.4.0", "result": "success", "at": 1},
        "health": "ok",
        "security_events": [{"kind": "signature_failure", "detail": "timestamp.json", "at": 2}],
        "agent_version": "0.1.0"
    })
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[test]
fn a_signed_report_is_stored_and_a_replay_refused() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, admin) = start(config(dir.path())).await;
        let admin = admin.unwrap();
        let c = client();
        let dev = enrolled_device(&c, &srv, &admin, Some("lane-1")).await;
        let bytes = serde_json::to_vec(&body()).unwrap();
        let h = sign(&dev.id, &dev.key, REPORT, &bytes, now());
        let (s, v) = send_signed(&c, &srv, REPORT, &bytes, &h).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["device_id"], dev.id.as_str());
        let d = device(&c, &srv, &admin, &dev.id).await;
        assert_eq!(d["installed"]["pos-firmware"], "1.4.0");
        assert_eq!(d["last_report"]["health"], "ok");
        assert_eq!(
            d["last_report"]["security_events"][0]["kind"],
            "signature_failure"
        );
        assert!(d["last_seen"].as_i64().unwrap() >= now() - 60);

        // The very same request again: a replay.
        let (s, v) = send_signed(&c, &srv, REPORT, &bytes, &h).await;
        assert_eq!((s, code(&v)), (401, "replayed_request"), "{v}");
        // The same nonce with a new signature over another body is a replay as well.
        let other = serde_json::to_vec(&json!({"health": "failing"})).unwrap();
        let h2 = otter_keys::request::sign_request_with_nonce(
            &dev.key,
            &dev.id,
            "POST",
            REPORT,
            &other,
            now(),
            &h.nonce,
        )
        .unwrap();
        let (s, v) = send_signed(&c, &srv, REPORT, &other, &h2).await;
        assert_eq!((s, code(&v)), (401, "replayed_request"), "{v}");
        assert_eq!(
            device(&c, &srv, &admin, &dev.id).await["last_report"]["health"],
            "ok"
        );

        // A fresh request is fine; a malformed report is a 400 after authentication.
        let (s, _) = report(&c, &srv, &dev, &json!({"health": "degraded"})).await;
        assert_eq!(s, 200);
        let (s, v) = report(&c, &srv, &dev, &json!({"health": "splendid"})).await;
        assert_eq!((s, code(&v)), (400, "invalid_report"));
        assert_eq!(
            device(&c, &srv, &admin, &dev.id).await["last_report"]["health"],
            "degraded"
        );
        srv.stop().await;
    });
}

#[test]
fn stale_future_altered_and_misdirected_requests_are_refused() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, admin) = start(config(dir.path())).await;
        let admin = admin.unwrap();
        let c = client();
        let dev = enrolled_device(&c, &srv, &admin, None).await;
        let bytes = serde_json::to_vec(&body()).unwrap();

        for (offset, what) in [
            (-301 - 60, "stale"),
            (301 + 60, "future"),
            (-86_400, "a day old"),
        ] {
            let h = sign(&dev.id, &dev.key, REPORT, &bytes, now() + offset);
            let (s, v) = send_signed(&c, &srv, REPORT, &bytes, &h).await;
            assert_eq!((s, code(&v)), (401, "stale_request"), "{what}: {v}");
        }
        // Within the skew either way: accepted.
        for offset in [-240, 240] {
            let h = sign(&dev.id, &dev.key, REPORT, &bytes, now() + offset);
            let (s, v) = send_signed(&c, &srv, REPORT, &bytes, &h).await;
            assert_eq!(s, 200, "{offset}: {v}");
        }

        // The body changed after signing (with or without the digest following it).
        let h = sign(&dev.id, &dev.key, REPORT, &bytes, now());
        let mut changed = bytes.clone();
        changed[10] ^= 1;
        let (s, v) = send_signed(&c, &srv, REPORT, &changed, &h).await;
        assert_eq!((s, code(&v)), (401, "digest_mismatch"), "{v}");
        let mut h2 = sign(&dev.id, &dev.key, REPORT, &bytes, now());
        h2.content_digest = otter_keys::request::content_digest(&changed);
        let (s, v) = send_signed(&c, &srv, REPORT, &changed, &h2).await;
        assert_eq!((s, code(&v)), (401, "invalid_signature"), "{v}");

        // Signed by another key, or for another path.
        let h = sign(&dev.id, &SigningKey::generate(), REPORT, &bytes, now());
        let (s, v) = send_signed(&c, &srv, REPORT, &bytes, &h).await;
        assert_eq!((s, code(&v)), (401, "invalid_signature"), "{v}");
        let h = sign(&dev.id, &dev.key, "/api/v1/device/other", &bytes, now());
        let (s, v) = send_signed(&c, &srv, REPORT, &bytes, &h).await;
        assert_eq!((s, code(&v)), (401, "invalid_signature"), "{v}");
        let h = sign(&dev.id, &dev.key, REPORT, &bytes, now());
        let (s, v) = send_signed(&c, &srv, &format!("{REPORT}?x=1"), &bytes, &h).await;
        assert_eq!((s, code(&v)), (401, "invalid_signature"), "{v}");

        // Unknown device; missing and malformed headers.
        let h = sign(
            "0123456789abcdef0123456789abcdef",
            &dev.key,
            REPORT,
            &bytes,
            now(),
        );
        let (s, v) = send_signed(&c, &srv, REPORT, &bytes, &h).await;
        assert_eq!((s, code(&v)), (401, "unknown_device"), "{v}");
        let (s, v) = api(&c, "POST", &srv.url(REPORT), None, Some(bytes.clone())).await;
        assert_eq!((s, code(&v)), (401, "missing_signature"), "{v}");
        let mut h = sign(&dev.id, &dev.key, REPORT, &bytes, now());
        h.timestamp = "yesterday".into();
        let (s, v) = send_signed(&c, &srv, REPORT, &bytes, &h).await;
        assert_eq!((s, code(&v)), (401, "malformed_signature"), "{v}");

        // None of the refused requests stored anything: the last report is from the two
        // accepted ones, identical bodies.
        let d = device(&c, &srv, &admin, &dev.id).await;
        assert_eq!(d["last_report"], body());
        srv.stop().await;
    });
}

#[test]
fn a_revoked_device_is_refused_at_once() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, admin) = start(config(dir.path())).await;
        let admin = admin.unwrap();
        let c = client();
        let dev: TestDevice = enrolled_device(&c, &srv, &admin, None).await;
        let (s, _) = report(&c, &srv, &dev, &json!({})).await;
        assert_eq!(s, 200);
        let db = otter_server::db::Db::open_blocking(&dir.path().join("otter.db")).unwrap();
        db.with_conn_blocking(|conn| -> Result<(), otter_server::db::DbError> {
            otter_server::fleet::revoke_device(conn, &dev.id, now()).unwrap();
            Ok(())
        })
        .unwrap();
        let (s, v) = report(&c, &srv, &dev, &json!({})).await;
        assert_eq!((s, code(&v)), (401, "device_revoked"), "{v}");
        srv.stop().await;
    });
}
