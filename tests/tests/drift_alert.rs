#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The drift test, end to end with the real binaries on loopback: a release is published
//! and installed by `otter-agent update`; a file of the installed component is then altered
//! on disk; `otter-agent check` finds it and sends the signed report; the server stores the
//! security event, raises an alert that the console's security page lists (plain HTTP with a
//! session) and `/metrics` counts, and POSTs the signed webhook to a loopback listener that
//! refuses the first attempt (so the retry is exercised) and checks the HMAC-SHA256
//! signature with `openssl` (an independent implementation).
//!
//! The binaries are taken from the target dir next to this test executable: build them
//! first (`cargo build --workspace`; `cargo test --workspace` does).

mod common;
#[path = "common/fleet.rs"]
mod fleet;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{command, show};
use fleet::{console_session, Fleet, COMPONENT, MODEL};
use serde_json::Value;

const SECRET: &str = "drift-test-webhook-secret-0123456789";

fn bundle(version: &str, payload: &[u8]) -> Vec<u8> {
    let manifest = serde_json::to_vec(&serde_json::json!({
        "name": COMPONENT, "kind": "firmware", "version": version,
        "hardware": [MODEL],
        "payload": [{"path": "app.bin", "size": payload.len(),
                     "sha256": otter_keys::hash::sha256_hex(payload)}],
        "health": ["/bin/sh", "-c", "test -f app.bin"],
    }))
    .unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in [("manifest.json", &manifest[..]), ("app.bin", payload)] {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    zstd::encode_all(&b.into_inner().unwrap()[..], 1).unwrap()
}

/// One HTTP request as the webhook listener received it.
struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A loopback webhook receiver: answers 500 to the first request and 200 to the others,
/// and hands every request over the channel.
fn webhook_listener() -> (String, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks/otter", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() || !line.starts_with("POST /hooks/otter ") {
                continue;
            }
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap();
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse().unwrap())
                .unwrap_or(0);
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let status = if n == 0 {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = stream.write_all(
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            );
            if tx.send(Received { headers, body }).is_err() {
                break;
            }
        }
    });
    (url, rx)
}

/// HMAC-SHA256 of `msg` by `openssl dgst`, hex.
fn openssl_hmac(dir: &Path, key: &str, msg: &[u8]) -> String {
    let f = dir.join("signed-message");
    std::fs::write(&f, msg).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", key, "-r"])
        .arg(&f)
        .output()
        .expect("openssl (Debian package openssl) checks the webhook signature");
    assert!(out.status.success(), "{}", show(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn a_file_altered_on_a_terminal_raises_an_alert_in_the_console_metrics_and_webhook() {
    let tmp = tempfile::tempdir().unwrap();
    let (hook_url, hooks) = webhook_listener();
    let secret_file = tmp.path().join("webhook.secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let fleet = Fleet::builder()
        .in_dir(tmp)
        .server_toml(&format!(
            "[alerts]\nwebhook_url = {hook_url:?}\nwebhook_secret_file = {:?}\nwebhook_attempts = 3\n",
            secret_file.to_str().unwrap()
        ))
        .start();
    let server = &fleet.server;
    let tmp = &fleet.tmp;
    let auditor = fleet.token("auditor");
    let operator = fleet.token("operator");

    // A terminal enrolled, and a release installed on it.
    let t = fleet.enroll("terminal");
    let device_id = t.device_id.clone();
    t.write_config(
        "agent.toml",
        "[update]\njitter_secs = 0\n[apply]\nhealth_timeout_secs = 20\n[integrity]\ninterval_secs = 1\n",
    );
    let agent = |args: &[&str]| t.agent(args);
    fleet.publish("1.0.0", &bundle("1.0.0", &[7u8; 5000]), &[]);
    let out = agent(&["update"]);
    assert!(out.status.success(), "{}", show(&out));

    // Intact: the check passes and reports nothing.
    let out = agent(&["check"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("pos-app 1.0.0: intact (1 files)"),
        "{}",
        show(&out)
    );

    // Tampering: one byte of the installed payload.
    let installed = t.root.join("components/pos-app/current/app.bin");
    let mut bytes = std::fs::read(&installed).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&installed, &bytes).unwrap();
    let out = agent(&["check", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["components"][0]["findings"][0]["kind"], "changed", "{r}");
    assert_eq!(r["components"][0]["findings"][0]["path"], "app.bin", "{r}");
    assert_eq!(r["reported"], true, "{r}");

    // The report reached the server.
    let list: Value = serde_json::from_str(&fleet.admin(&["devices", "list", "--json"])).unwrap();
    let events = &list[0]["last_report"]["security_events"];
    assert_eq!(events[0]["kind"], "integrity_drift", "{list}");
    assert!(
        events[0]["detail"]
            .as_str()
            .unwrap()
            .contains("pos-app 1.0.0: 1 finding(s): changed app.bin"),
        "{list}"
    );

    // The webhook: the first attempt is refused, the retry delivers; both signed.
    let first = hooks.recv_timeout(Duration::from_secs(30)).unwrap();
    let second = hooks.recv_timeout(Duration::from_secs(30)).unwrap();
    for got in [&first, &second] {
        let ts: i64 = got.header("x-otter-timestamp").unwrap().parse().unwrap();
        let now = otter_keys::time::UtcTime::now().unix();
        assert!((now - ts).abs() < 120, "timestamp {ts}, now {now}");
        let mut msg = format!("{ts}.").into_bytes();
        msg.extend_from_slice(&got.body);
        let want = format!("sha256={}", openssl_hmac(tmp.path(), SECRET, &msg));
        assert_eq!(got.header("x-otter-signature"), Some(want.as_str()));
        let wrong = format!(
            "sha256={}",
            openssl_hmac(tmp.path(), "another secret", &msg)
        );
        assert_ne!(got.header("x-otter-signature"), Some(wrong.as_str()));
        let p: Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(p["type"], "otter.alerts");
        assert_eq!(p["timestamp"], ts);
        assert_eq!(p["alerts"][0]["kind"], "integrity_drift", "{p}");
        assert_eq!(p["alerts"][0]["device_id"], device_id.as_str(), "{p}");
    }
    assert!(
        !String::from_utf8_lossy(&std::fs::read(&fleet.log).unwrap()).contains(SECRET),
        "the webhook secret is never logged"
    );

    // The console lists the alert, and says the webhook delivered it.
    let c = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let session = console_session(&c, &server.url, &auditor);
    let deadline = Instant::now() + Duration::from_secs(20);
    let page = loop {
        let r = c
            .get(format!("{}/console/security", server.url))
            .header("cookie", format!("otter_session={session}"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        let page = r.text().unwrap();
        if page.contains("<td>delivered</td>") || Instant::now() > deadline {
            break page;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let table = &page[page.find("<table id=\"alerts\"").expect("an alerts table")..];
    assert!(table.contains("integrity_drift"), "{page}");
    assert!(table.contains("changed app.bin"), "{page}");
    assert!(table.contains(&device_id), "{page}");
    assert!(table.contains("<td>delivered</td>"), "{page}");
    assert!(page.contains("1 open alerts."), "{page}");

    // /metrics counts it.
    let m = c
        .get(format!("{}/metrics", server.url))
        .bearer_auth(&auditor)
        .send()
        .unwrap();
    assert_eq!(m.status(), 200);
    let m = m.text().unwrap();
    assert!(
        m.contains("otter_security_events_total{kind=\"integrity_drift\"} 1\n"),
        "{m}"
    );
    assert!(m.contains("otter_alerts_open 1\n"), "{m}");

    // The same drift checked again raises no second alert.
    let out = agent(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let m = c
        .get(format!("{}/metrics", server.url))
        .bearer_auth(&auditor)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        m.contains("otter_security_events_total{kind=\"integrity_drift\"} 1\n"),
        "{m}"
    );
    assert!(hooks.recv_timeout(Duration::from_millis(500)).is_err());

    // New drift (world-writable) is found by the daemon's scheduled pass and goes out with
    // its report.
    std::fs::set_permissions(&installed, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let out = agent(&["run", "--once"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("security event integrity_drift"),
        "{}",
        show(&out)
    );
    let m = c
        .get(format!("{}/metrics", server.url))
        .bearer_auth(&auditor)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        m.contains("otter_security_events_total{kind=\"integrity_drift\"} 2\n"),
        "{m}"
    );
    let p: Value =
        serde_json::from_slice(&hooks.recv_timeout(Duration::from_secs(30)).unwrap().body).unwrap();
    assert!(
        p["alerts"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("mode_changed app.bin"),
        "{p}"
    );

    // An auditor sees no acknowledge button; an operator acknowledges the first alert.
    assert!(!page.contains("/ack\""), "{page}");
    let op = console_session(&c, &server.url, &operator);
    let page = c
        .get(format!("{}/console/security", server.url))
        .header("cookie", format!("otter_session={op}"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let form = &page[page
        .find("action=\"/console/alerts/1/ack\"")
        .expect("an acknowledge form")..];
    let csrf = form
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let ack = |session: &str, csrf: &str| {
        c.post(format!("{}/console/alerts/1/ack", server.url))
            .header("cookie", format!("otter_session={session}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={csrf}"))
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(ack(&session, &csrf), 403, "an auditor cannot acknowledge");
    assert_eq!(ack(&op, "wrong"), 403, "CSRF is checked");
    assert_eq!(ack(&op, &csrf), 303);
    assert_eq!(ack(&op, &csrf), 404, "already acknowledged");
    let m = c
        .get(format!("{}/metrics", server.url))
        .bearer_auth(&auditor)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(m.contains("otter_alerts_open 1\n"), "{m}");
    let out = command("otter-server")
        .args(["audit", "list", "--server", &server.url])
        .env("OTTER_TOKEN", &auditor)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let audit = String::from_utf8_lossy(&out.stdout);
    assert!(
        audit.contains("alert.acknowledge") && audit.contains("alert:1"),
        "{audit}"
    );
    drop(fleet);
}
