//! Fleet helpers: enrollment tokens, enrolled test devices, signed device requests.

use otter_keys::crypto::SigningKey;
use otter_keys::request::{sign_request, SignatureHeaders};
use serde_json::{json, Value};

use super::{api, Running};

/// Creates an enrollment token through the API with `admin`; returns status and body.
pub async fn create_enrollment_token(
    c: &reqwest::Client,
    srv: &Running,
    admin: &str,
    body: Value,
) -> (u16, Value) {
    api(
        c,
        "POST",
        &srv.url("/api/v1/enrollment-tokens"),
        Some(admin),
        Some(serde_json::to_vec(&body).unwrap()),
    )
    .await
}

/// A new enrollment token (group optional), which must be created.
pub async fn new_token(
    c: &reqwest::Client,
    srv: &Running,
    admin: &str,
    group: Option<&str>,
) -> String {
    let (s, v) = create_enrollment_token(c, srv, admin, json!({ "group": group })).await;
    assert_eq!(s, 201, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

/// The body of an enrollment with `key`.
pub fn enroll_body(token: &str, key: &SigningKey, model: &str) -> Value {
    json!({
        "token": token,
        "public_key": hex::encode(key.public_bytes()),
        "backup_recipient": otter_keys::age::x25519::Identity::generate().to_public().to_string(),
        "hardware_model": model,
    })
}

/// POSTs an enrollment body; returns status and body.
pub async fn post_enroll(c: &reqwest::Client, srv: &Running, body: &Value) -> (u16, Value) {
    api(
        c,
        "POST",
        &srv.url("/api/v1/enroll"),
        None,
        Some(serde_json::to_vec(body).unwrap()),
    )
    .await
}

/// An enrolled device and its key.
pub struct TestDevice {
    pub id: String,
    pub key: SigningKey,
}

/// Enrolls a new device with a fresh token.
pub async fn enrolled_device(
    c: &reqwest::Client,
    srv: &Running,
    admin: &str,
    group: Option<&str>,
) -> TestDevice {
    let token = new_token(c, srv, admin, group).await;
    let key = SigningKey::generate();
    let (s, v) = post_enroll(c, srv, &enroll_body(&token, &key, "pos-a")).await;
    assert_eq!(s, 201, "{v}");
    TestDevice {
        id: v["device_id"].as_str().unwrap().to_owned(),
        key,
    }
}

/// Unix seconds now.
pub fn now() -> i64 {
    otter_keys::time::UtcTime::now().unix()
}

/// Signs a POST of `body` to `path` as `device_id` with `key` at `timestamp`.
pub fn sign(
    device_id: &str,
    key: &SigningKey,
    path: &str,
    body: &[u8],
    timestamp: i64,
) -> SignatureHeaders {
    sign_request(key, device_id, "POST", path, body, timestamp).unwrap()
}

/// Sends a POST with the given signature headers; returns status and body.
pub async fn send_signed(
    c: &reqwest::Client,
    srv: &Running,
    path: &str,
    body: &[u8],
    headers: &SignatureHeaders,
) -> (u16, Value) {
    let mut req = c.post(srv.url(path)).body(body.to_vec());
    for (name, value) in headers.pairs() {
        req = req.header(name, value);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// A report of `device`, signed now and sent.
pub async fn report(
    c: &reqwest::Client,
    srv: &Running,
    device: &TestDevice,
    body: &Value,
) -> (u16, Value) {
    let bytes = serde_json::to_vec(body).unwrap();
    let h = sign(
        &device.id,
        &device.key,
        "/api/v1/device/report",
        &bytes,
        now(),
    );
    send_signed(c, srv, "/api/v1/device/report", &bytes, &h).await
}
