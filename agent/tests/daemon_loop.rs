//! `otter-agent run` as a real process: with its server unreachable every pass fails, the
//! failures are recorded in `status.json` with the backoff between them, `status` shows
//! them, `run --once` returns the pass's failure, and SIGTERM stops the loop promptly
//! with exit status 0. The terminal's state dir is made as enrollment makes it (identity
//! keys, pinned root from a hand-built repository, agent.json).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Repo;
use otter_agent::device::Identity;
use serde_json::Value;

fn agent() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_otter-agent"));
    for (k, _) in std::env::vars() {
        if k.starts_with("OTTER_") {
            c.env_remove(k);
        }
    }
    c
}

/// A URL on loopback where nothing listens.
fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

/// An enrolled-looking state dir whose server is `server`, and an agent config for it.
fn terminal(tmp: &Path, server: &str, update: &str) -> (PathBuf, PathBuf) {
    let state = tmp.join("state");
    std::fs::create_dir_all(&state).unwrap();
    Identity::generate().save(&state).unwrap();
    let repo = Repo::new();
    otter_agent::tuf::init_metadata_dir(&state.join("tuf"), &repo.root_bytes(1)).unwrap();
    let agent_json = serde_json::json!({
        "device_id": "dev-0123456789abcdef",
        "server_url": server,
        "metadata_url": format!("{server}/repo/metadata/"),
        "targets_url": format!("{server}/repo/targets/"),
        "hardware_model": "pos-a",
        "group": null,
        "enrolled_at": 1,
    });
    std::fs::write(state.join("agent.json"), agent_json.to_string()).unwrap();
    let config = tmp.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\ninstall_root = {:?}\n[server]\nconnect_timeout_secs = 1\nrequest_timeout_secs = 5\n[update]\n{update}",
            state.to_str().unwrap(),
            tmp.join("root").to_str().unwrap()
        ),
    )
    .unwrap();
    (state, config)
}

fn status_file(state: &Path) -> Value {
    std::fs::read(state.join("status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

#[test]
fn failed_polls_back_off_are_recorded_and_sigterm_stops_the_loop() {
    let tmp = tempfile::tempdir().unwrap();
    let server = dead_url();
    let (state, config) = terminal(
        tmp.path(),
        &server,
        "poll_interval_secs = 600\njitter_secs = 0\nretry_base_secs = 1\nmax_backoff_secs = 2\n",
    );
    let log = tmp.path().join("agent.log");
    let mut child = agent()
        .args(["run", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();

    // Passes fail at once (connection refused) and are retried after 1 s, then 2 s, 2 s...
    // rather than after the 600 s poll interval.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut failures = 0;
    while Instant::now() < deadline {
        failures = status_file(&state)["consecutive_failures"]
            .as_u64()
            .unwrap_or(0);
        if failures >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = status_file(&state);
    assert!(
        failures >= 3,
        "{st}\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert_eq!(st["last_poll"]["ok"], false, "{st}");
    let message = st["last_poll"]["message"].as_str().unwrap();
    assert!(message.contains("127.0.0.1"), "names the server: {message}");

    // SIGTERM: the loop ends within a second or two, exit status 0.
    let t = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("still running 10 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("poll failed (1 in a row), next try in 1s"),
        "{text}"
    );
    assert!(
        text.contains("poll failed (2 in a row), next try in 2s"),
        "{text}"
    );
    assert!(text.contains("stopped"), "{text}");

    // `status` shows the failure; `--json` carries the same.
    let out = agent()
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("device dev-0123456789abcdef"), "{text}");
    assert!(
        text.contains("FAILED") && text.contains("failures in a row"),
        "{text}"
    );
    let out = agent()
        .args(["status", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["device_id"], "dev-0123456789abcdef");
    assert!(j["consecutive_failures"].as_u64().unwrap() >= 3, "{j}");
}

#[test]
fn run_once_reports_the_failed_pass_and_another_pass_is_refused_while_one_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, config) = terminal(tmp.path(), &dead_url(), "jitter_secs = 0\n");
    let out = agent()
        .args(["run", "--once", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refreshing the trusted metadata"), "{err}");
    assert_eq!(status_file(&state)["consecutive_failures"], 1);

    // A pass holds STATE/update.lock; a second one is refused at once, naming it.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(state.join("update.lock"))
        .unwrap();
    lock.lock().unwrap();
    let out = agent()
        .args(["update", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another otter-agent update pass"), "{err}");
    drop(lock);
}
