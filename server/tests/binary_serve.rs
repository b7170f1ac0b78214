//! The real `otter-server` binary: `serve` on port 0 prints the address it bound, serves the
//! repository, prints the admin token once (and never logs it), and exits 0 on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{client, run};

const BIN: &str = env!("CARGO_BIN_EXE_otter-server");

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

struct Started {
    guard: Guard,
    base: String,
    stdout_before_listening: Vec<String>,
    stderr: thread::JoinHandle<String>,
}

fn spawn(cmd: &mut Command) -> Started {
    let mut child = cmd
        .env("OTTER_LOG", "info")
        .env_remove("OTTER_CONFIG")
        .env_remove("OTTER_STORE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let guard = Guard(Some(child));
    let stderr = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut before = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let base = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("the server prints `listening on http://...` in time");
        if let Some(url) = line.strip_prefix("listening on ") {
            break url.trim().to_owned();
        }
        before.push(line);
    };
    Started {
        guard,
        base,
        stdout_before_listening: before,
        stderr,
    }
}

fn sigterm_and_wait(mut s: Started) -> (std::process::ExitStatus, String) {
    let mut child = s.guard.0.take().unwrap();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server did not exit within 10 s of SIGTERM");
        }
        thread::sleep(Duration::from_millis(50));
    };
    (status, s.stderr.join().unwrap())
}

async fn fetch(base: &str) {
    let c = client();
    let r = c.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let root = c
        .get(format!("{base}/repo/metadata/1.root.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(root.status(), 200);
    let root = otter_keys::metadata::Metadata::<otter_keys::metadata::Root>::from_bytes(
        &root.bytes().await.unwrap(),
        1 << 20,
    )
    .unwrap();
    root.verify_self().unwrap();
}

#[test]
fn serve_prints_its_address_serves_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("otter-data");

    // First start, with flags: creates the repository and prints the token once.
    let s = spawn(Command::new(BIN).args([
        "serve",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]));
    assert!(s.base.starts_with("http://127.0.0.1:"), "{}", s.base);
    let token_line = s
        .stdout_before_listening
        .iter()
        .find(|l| l.starts_with("admin API token"))
        .expect("the token is printed on the first start")
        .clone();
    let token = token_line.rsplit(' ').next().unwrap().to_owned();
    assert_eq!(token.len(), 64);
    run(fetch(&s.base));
    let (status, stderr) = sigterm_and_wait(s);
    assert!(
        status.success(),
        "exit status {status:?}; stderr:\n{stderr}"
    );
    assert!(stderr.contains("ROOT KEY IS ONLINE"), "{stderr}");
    assert!(!stderr.contains(&token), "the token never reaches the log");

    // Second start, from the environment: same repository, no token.
    let s = spawn(
        Command::new(BIN)
            .arg("serve")
            .env("OTTER_DATA_DIR", &data)
            .env("OTTER_LISTEN", "127.0.0.1:0")
            .env("OTTER_LOG_FORMAT", "json"),
    );
    assert!(
        s.stdout_before_listening
            .iter()
            .all(|l| !l.contains("token")),
        "{:?}",
        s.stdout_before_listening
    );
    run(fetch(&s.base));
    let (status, stderr) = sigterm_and_wait(s);
    assert!(
        status.success(),
        "exit status {status:?}; stderr:\n{stderr}"
    );
    let first_log = stderr.lines().next().unwrap_or("");
    assert!(
        serde_json::from_str::<serde_json::Value>(first_log).is_ok(),
        "JSON logs: {first_log}"
    );
}

#[test]
fn first_start_under_json_logs_warns_in_json_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("otter-data");
    let s = spawn(Command::new(BIN).args([
        "serve",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
    ]));
    assert!(s
        .stdout_before_listening
        .iter()
        .any(|l| l.starts_with("admin API token")));
    // SIGTERM at once: the handler is in place before the address is printed.
    let (status, stderr) = sigterm_and_wait(s);
    assert!(status.success(), "stderr:\n{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let warning = lines
        .iter()
        .find(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("DEVELOPMENT repository"))
        })
        .expect("the online-root warning is logged as a JSON line");
    assert_eq!(warning["level"], "WARN", "{warning}");
}

#[test]
fn default_config_prints_the_example_configuration() {
    let out = Command::new(BIN).arg("default-config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, otter_server::config::EXAMPLE_CONFIG);
    let parsed = otter_server::Config::from_toml(&text, std::path::Path::new("stdout")).unwrap();
    assert_eq!(parsed, otter_server::Config::default());
}

#[test]
fn unknown_config_keys_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("otter.toml");
    std::fs::write(&cfg, "listen = \"127.0.0.1:0\"\ndata_dri = \"/tmp/x\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("data_dri"), "{err}");
}
