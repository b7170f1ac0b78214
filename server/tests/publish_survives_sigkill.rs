//! kill -9 during a publish, at many points, always leaves the store holding a complete,
//! valid TUF state (timestamp -> snapshot -> targets, every listed target present with its
//! signed length and hashes), and the restarted server serves a valid state that agrees
//! with its release list.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use otter_keys::hash::verify;
use otter_keys::metadata::{check_expected_version, Metadata, Root, Snapshot, Targets, Timestamp};

const BIN: &str = env!("CARGO_BIN_EXE_otter-server");
const MAX: usize = 1 << 24;

struct Guard(Option<Child>);
impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `serve` on port 0; returns the guard, the base URL and the stdout lines before
/// "listening on".
fn serve(data: &Path) -> (Guard, String, Vec<String>) {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("OTTER_LOG", "warn")
        .env_remove("OTTER_CONFIG")
        .env_remove("OTTER_STORE_URL")
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
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut before = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("server starts");
        if let Some(url) = line.strip_prefix("listening on ") {
            return (guard, url.trim().to_owned(), before);
        }
        before.push(line);
    }
}

/// Verifies the repository as the store holds it on disk (what a mirror would serve).
fn verify_store(store: &Path) -> Metadata<Targets> {
    let meta = store.join("repo/metadata");
    let targets_dir = store.join("repo/targets");
    let read =
        |name: String| std::fs::read(meta.join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    // The newest root (the chain has one root here).
    let root = Metadata::<Root>::from_bytes(&read("1.root.json".into()), MAX).unwrap();
    root.verify_self().unwrap();
    let ts_bytes = read("timestamp.json".into());
    let ts = Metadata::<Timestamp>::from_bytes(&ts_bytes, MAX).unwrap();
    root.verify_by(&ts, "timestamp").unwrap();
    let sm = ts.signed().snapshot_meta().unwrap().clone();
    let snap_bytes = read(format!("{}.snapshot.json", sm.version));
    verify(&snap_bytes, sm.length, sm.hashes.as_ref().unwrap()).unwrap();
    let snap = Metadata::<Snapshot>::from_bytes(&snap_bytes, MAX).unwrap();
    root.verify_by(&snap, "snapshot").unwrap();
    check_expected_version("snapshot", sm.version, snap.signed().version).unwrap();
    let tm = snap.signed().meta["targets.json"].clone();
    let t_bytes = read(format!("{}.targets.json", tm.version));
    verify(&t_bytes, tm.length, tm.hashes.as_ref().unwrap()).unwrap();
    let targets = Metadata::<Targets>::from_bytes(&t_bytes, MAX).unwrap();
    root.verify_by(&targets, "targets").unwrap();
    for (name, entry) in &targets.signed().targets {
        let blob = std::fs::read(targets_dir.join(format!("{}.{name}", entry.hashes["sha256"])))
            .unwrap_or_else(|e| panic!("target {name} is listed but missing: {e}"));
        verify(&blob, Some(entry.length), &entry.hashes).unwrap();
    }
    targets
}

/// Bytes that zstd cannot shrink much, so uploads and stores take a little time.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn sigkill_during_publish_never_breaks_the_served_state() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (guard, _, lines) = serve(&data);
    drop(guard);
    let token = lines
        .iter()
        .find_map(|l| l.split(": ").nth(1).filter(|t| t.len() == 64))
        .expect("the first start prints the admin token")
        .to_owned();
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..16u64 {
        let (mut guard, base, _) = serve(&data);
        // After the previous kill, the restarted server serves a valid state.
        let t = verify_store(&data.join("store"));
        let served = client
            .get(format!("{base}/repo/metadata/timestamp.json"))
            .send()
            .unwrap();
        assert_eq!(served.status(), 200);
        let list: serde_json::Value = client
            .get(format!("{base}/api/v1/releases"))
            .bearer_auth(&token)
            .send()
            .unwrap()
            .json()
            .unwrap();
        for r in list["releases"].as_array().unwrap() {
            let name = r["target"].as_str().unwrap();
            assert!(
                t.signed().targets.contains_key(name),
                "round {round}: release {name} is recorded but not signed"
            );
        }
        let payload = noise(round + 1, 3 * 1024 * 1024);
        let bytes = common::bundle("crashy", &format!("1.0.{round}"), &[("fw.bin", &payload)]);
        let (url, tok, c) = (
            format!("{base}/api/v1/releases"),
            token.clone(),
            client.clone(),
        );
        let upload = std::thread::spawn(move || c.post(url).bearer_auth(tok).body(bytes).send());
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay = Duration::from_millis(rng % 45);
        let start = Instant::now();
        while start.elapsed() < delay {
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut child = guard.0.take().unwrap();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let _ = upload.join();
        // Dead server: whatever the store holds must verify.
        verify_store(&data.join("store"));
    }
    // A last clean start still serves a valid state, with every committed release.
    let (_guard, base, _) = serve(&data);
    let t = verify_store(&data.join("store"));
    let ok = client.get(format!("{base}/healthz")).send().unwrap();
    assert_eq!(ok.status(), 200);
    let spool: Vec<_> = std::fs::read_dir(data.join("uploads"))
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(
        spool.is_empty(),
        "a start removes uploads left by a kill: {spool:?}"
    );
    assert!(t
        .signed()
        .targets
        .keys()
        .all(|k| k.starts_with("crashy-1.0.")));
    // Timing decides where each kill lands; report how many publishes were committed.
    eprintln!(
        "{} of 16 publishes were committed before their kill",
        t.signed().targets.len()
    );
}
