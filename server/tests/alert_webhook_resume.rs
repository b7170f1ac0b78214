//! Alert webhook deliveries pending when the server stops are sent at the next start: the
//! real `otter-server serve` binary raises an alert while its webhook receiver is down
//! (the delivery keeps retrying), is stopped with SIGTERM with the delivery still pending,
//! and the next start sends it, signed, to the receiver now listening, and records it
//! delivered; a start after that sends nothing again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backup_support;
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use backup_support::config_file;
use common::fleet::{enrolled_device, now, TestDevice};
use common::{run, start};
use otter_keys::request::sign_request;

const BIN: &str = env!("CARGO_BIN_EXE_otter-server");
const SECRET: &str = "a-webhook-secret-of-some-length";

/// Kills the child if the test fails half-way.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `otter-server serve --config FILE --listen 127.0.0.1:0`; returns it and its base URL.
fn serve(config: &std::path::Path) -> (Guard, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .env_remove("OTTER_CONFIG")
        .env_remove("OTTER_DATA_DIR")
        .env("OTTER_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = Guard(Some(child));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = line.strip_prefix("listening on ") {
                let _ = tx.send(url.trim().to_owned());
            }
        }
    });
    let base = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server prints `listening on http://...`");
    (guard, base)
}

fn sigterm(mut g: Guard) {
    let mut child = g.0.take().unwrap();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            return;
        }
        assert!(Instant::now() < deadline, "the server exits on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The webhook states of every alert, by id.
fn webhook_states(db: &std::path::Path) -> Vec<(i64, String)> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let mut stmt = c
        .prepare("SELECT id, webhook FROM alerts ORDER BY id")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    rows
}

/// A webhook receiver on `listener`: answers 200 to each request and passes on its
/// timestamp, signature and body.
fn receiver(listener: TcpListener) -> mpsc::Receiver<(String, String, Vec<u8>)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { break };
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let (mut ts, mut sig, mut len) = (String::new(), String::new(), 0usize);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let (k, v) = line.split_once(':').unwrap_or(("", ""));
                match k.to_ascii_lowercase().as_str() {
                    "x-otter-timestamp" => ts = v.trim().to_owned(),
                    "x-otter-signature" => sig = v.trim().to_owned(),
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    _ => {}
                }
            }
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body).unwrap();
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            if tx.send((ts, sig, body)).is_err() {
                break;
            }
        }
    });
    rx
}

async fn send_report(base: &str, dev: &TestDevice, body: &serde_json::Value) -> u16 {
    let bytes = serde_json::to_vec(body).unwrap();
    let path = "/api/v1/device/report";
    let h = sign_request(&dev.key, &dev.id, "POST", path, &bytes, now()).unwrap();
    let mut req = common::client().post(format!("{base}{path}")).body(bytes);
    for (name, value) in h.pairs() {
        req = req.header(name, value);
    }
    req.send().await.unwrap().status().as_u16()
}

/// A repository whose alert webhook points at a port where nothing listens yet, and the
/// real binary serving it after it raised one alert.
struct Raised {
    dir: tempfile::TempDir,
    /// The webhook receiver's port (nothing listens there yet).
    port: u16,
    cfg: otter_server::Config,
    /// The server's database.
    db: PathBuf,
    /// The real binary, still trying to deliver the alert.
    server: Guard,
}

/// Sets the repository up with an enrolled terminal (a server in this process, started and
/// stopped), starts the real binary on it and makes the terminal report a `file_changed`
/// security event about `detail`: one alert, whose webhook delivery keeps retrying.
async fn alert_with_the_receiver_down(detail: &str) -> Raised {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let secret_file = dir.path().join("webhook.secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let (file, cfg) = config_file(
        dir.path(),
        &format!(
            "[alerts]\nwebhook_url = \"http://127.0.0.1:{port}/hook\"\n\
             webhook_secret_file = {:?}\nwebhook_attempts = 20\n",
            secret_file.display().to_string()
        ),
    );
    let db = cfg.db_path();
    let (srv, admin) = start(cfg.clone()).await;
    let admin = admin.unwrap();
    let dev = enrolled_device(&common::client(), &srv, &admin, None).await;
    srv.stop().await;
    let (server, base) = serve(&file);
    let status = send_report(
        &base,
        &dev,
        &serde_json::json!({"security_events": [{"kind": "file_changed", "detail": detail, "at": now()}]}),
    )
    .await;
    assert_eq!(status, 200);
    Raised {
        dir,
        port,
        cfg,
        db,
        server,
    }
}

/// [`sigterm`] off the async executor.
async fn stop_serving(server: Guard) {
    tokio::task::spawn_blocking(move || sigterm(server))
        .await
        .unwrap();
}

#[test]
fn a_delivery_pending_at_shutdown_is_sent_at_the_next_start() {
    run(async {
        // The real binary raises an alert; its webhook cannot be reached (the receiver is
        // down), so the delivery stays pending (retrying) until the server is stopped.
        let raised = alert_with_the_receiver_down("/opt/pos/bin/app").await;
        let (db, cfg) = (&raised.db, &raised.cfg);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let states = webhook_states(db);
        assert_eq!(states.len(), 1);
        assert_eq!(states[0].1, "pending");
        let alert_id = states[0].0;
        stop_serving(raised.server).await;
        assert_eq!(webhook_states(db), [(alert_id, "pending".to_string())]);

        // The receiver is up now; the next start sends the pending delivery.
        let hook = receiver(TcpListener::bind(("127.0.0.1", raised.port)).unwrap());
        let (srv, _) = start(cfg.clone()).await;
        let (got, hook) =
            tokio::task::spawn_blocking(move || (hook.recv_timeout(Duration::from_secs(20)), hook))
                .await
                .unwrap();
        let (ts, sig, body) = got.expect("the pending delivery arrives after the restart");
        let ts: i64 = ts.parse().unwrap();
        assert!(otter_server::alerts::verify_signature(
            SECRET.as_bytes(),
            &sig,
            ts,
            &body,
            now(),
            otter_server::alerts::SIGNATURE_TOLERANCE_SECS
        ));
        let payload: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(payload["type"], "otter.alerts");
        assert_eq!(payload["alerts"][0]["id"].as_i64(), Some(alert_id));
        assert_eq!(payload["alerts"][0]["detail"], "/opt/pos/bin/app");
        let deadline = Instant::now() + Duration::from_secs(10);
        while webhook_states(db)[0].1 != "delivered" {
            assert!(Instant::now() < deadline, "{:?}", webhook_states(db));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        srv.stop().await;

        // Delivered: the next start sends nothing again.
        let (srv, _) = start(cfg.clone()).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(hook.try_recv().is_err(), "nothing is sent twice");
        srv.stop().await;
    });
}

#[test]
fn without_a_webhook_at_the_next_start_nothing_stays_pending() {
    run(async {
        let raised = alert_with_the_receiver_down("x").await;
        stop_serving(raised.server).await;
        let db = &raised.db;
        assert_eq!(webhook_states(db)[0].1, "pending");

        // The webhook is removed from the configuration: the delivery is given up, saying why.
        let (_, plain) = config_file(raised.dir.path(), "");
        let (srv, _) = start(plain).await;
        let states = webhook_states(db);
        assert!(
            states[0].1.starts_with("failed: ") && states[0].1.contains("no webhook"),
            "{states:?}"
        );
        srv.stop().await;
    });
}
