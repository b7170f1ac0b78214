//! Updates through deltas, end to end with the real binaries on loopback: `otter-server
//! serve` signs a delta from 1.0.0 when 2.0.0 is published; a terminal that installed
//! 1.0.0 (full download) updates to 2.0.0 by fetching only the delta (the server's request
//! log shows the delta requested and the full 2.0.0 bundle never), rebuilds and verifies
//! it and installs the exact payload. A delta tampered in the server's store is refused by
//! its signed hash: the agent reports a security event and falls back to the full
//! download. On a metered link (`[update] metered = true`) it waits instead, reported, and
//! downloads no full bundle.
//!
//! The binaries are taken from the target dir next to this test executable: build them
//! first (`cargo build --workspace`; `cargo test --workspace` does).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/fleet.rs"]
mod fleet;

use std::path::PathBuf;

use common::{command, show};
use fleet::{Fleet, Terminal, COMPONENT, MODEL};
use serde_json::Value;

/// A bundle of `COMPONENT` at `version` with one payload file.
fn bundle(version: &str, payload: &[u8]) -> Vec<u8> {
    let manifest = serde_json::to_vec(&serde_json::json!({
        "name": COMPONENT, "kind": "firmware", "version": version,
        "hardware": [MODEL],
        "payload": [{"path": "app.img", "size": payload.len(),
                     "sha256": otter_keys::hash::sha256_hex(payload)}],
        "health": ["/bin/sh", "-c", "test -f app.img"],
    }))
    .unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in [("manifest.json", &manifest[..]), ("app.img", payload)] {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    zstd::encode_all(&b.into_inner().unwrap()[..], 3).unwrap()
}

/// Incompressible bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A 2 MB firmware image; version `v` rewrites a few 4 KiB blocks of the previous one.
fn image(v: u64) -> Vec<u8> {
    let mut img = noise(1, 2_000_000);
    for k in 1..=v {
        for j in 0..4 {
            let at = ((k * 7 + j * 13) as usize * 4096 * 9) % (img.len() - 4096);
            img[at..at + 4096].copy_from_slice(&noise(100 + k * 10 + j, 4096));
        }
    }
    img
}

/// A fleet and its one terminal, whose agent configs the test writes.
struct Env {
    fleet: Fleet,
    t: Terminal,
}

impl Env {
    /// An agent config: one download attempt, `[update] metered` as given.
    fn config(&self, metered: bool) -> PathBuf {
        self.t.write_config(
            &format!("agent-{metered}.toml"),
            &format!(
                "[update]\njitter_secs = 0\ndownload_attempts = 1\nmetered = {metered}\n\
                 [apply]\nhealth_timeout_secs = 20\n"
            ),
        )
    }

    fn publish(&self, version: &str, bytes: &[u8]) {
        self.fleet.publish(version, bytes, &[]);
    }

    fn installed_image(&self) -> Vec<u8> {
        std::fs::read(
            self.t
                .root
                .join("components")
                .join(COMPONENT)
                .join("current/app.img"),
        )
        .unwrap()
    }

    /// How many requests the server logged for target files whose name ends with `suffix`.
    fn requests_for(&self, suffix: &str) -> usize {
        std::fs::read_to_string(&self.fleet.log)
            .unwrap()
            .lines()
            .filter(|l| l.contains("request") && l.contains("/repo/targets/"))
            .filter(|l| {
                l.split_whitespace()
                    .any(|w| w.starts_with("path=") && w.trim_matches('"').ends_with(suffix))
            })
            .count()
    }

    /// The stored file of the target whose name ends with `suffix`.
    fn stored(&self, suffix: &str) -> PathBuf {
        let dir = self.fleet.data.join("store/repo/targets");
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with(suffix))
            .unwrap_or_else(|| panic!("no stored target ends with {suffix}"))
    }

    fn device(&self) -> Value {
        self.fleet.devices()[0].clone()
    }
}

fn setup() -> Env {
    // Repository files served with success are logged at debug level: `requests_for`
    // counts them.
    let fleet = Fleet::builder()
        .server_env("OTTER_LOG", "otter_server::http=debug,info")
        .start();
    let t = fleet.enroll("terminal");
    Env { fleet, t }
}

#[test]
fn an_installed_terminal_updates_through_the_delta_and_falls_back_when_it_is_tampered() {
    let env = setup();
    let cfg = env.config(false);

    // 1.0.0: nothing installed, so the full bundle.
    env.publish("1.0.0", &bundle("1.0.0", &image(0)));
    let out = env.t.agent_with(&cfg, &["update"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(env.installed_image(), image(0));
    assert_eq!(
        env.requests_for(".pos-app-1.0.0.tar.zst"),
        1,
        "{}",
        std::fs::read_to_string(&env.fleet.log).unwrap()
    );
    assert!(
        env.t.state.join("bundles/pos-app-1.0.0.tar.zst").is_file(),
        "the installed bundle is kept as the next base"
    );

    // 2.0.0: the delta from 1.0.0 only.
    let b2 = bundle("2.0.0", &image(2));
    env.publish("2.0.0", &b2);
    let out = env.t.agent_with(&cfg, &["update"]);
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("via delta pos-app-2.0.0.from-1.0.0.delta"),
        "{}",
        show(&out)
    );
    assert!(
        stdout.contains("installed 2.0.0 over 1.0.0"),
        "{}",
        show(&out)
    );
    assert_eq!(env.installed_image(), image(2));
    assert_eq!(
        env.requests_for(".pos-app-2.0.0.tar.zst"),
        0,
        "the full 2.0.0 bundle was never requested"
    );
    assert_eq!(env.requests_for(".pos-app-2.0.0.from-1.0.0.delta"), 1);
    let delta_len = std::fs::metadata(env.stored(".pos-app-2.0.0.from-1.0.0.delta"))
        .unwrap()
        .len();
    assert!(
        delta_len * 10 < b2.len() as u64,
        "delta {delta_len} bytes, bundle {}",
        b2.len()
    );
    // The kept bases follow what the apply engine keeps (1.0.0 as previous, 2.0.0 active).
    assert!(env.t.state.join("bundles/pos-app-2.0.0.tar.zst").is_file());

    // 3.0.0 with its delta tampered in the server's store: refused by its signed hash,
    // reported, and the full bundle is downloaded instead.
    env.publish("3.0.0", &bundle("3.0.0", &image(3)));
    let stored = env.stored(".pos-app-3.0.0.from-2.0.0.delta");
    let mut bytes = std::fs::read(&stored).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();
    let out = env.t.agent_with(&cfg, &["update"]);
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("delta not used") && stdout.contains("falling back to the full download"),
        "{}",
        show(&out)
    );
    assert!(
        stdout.contains("installed 3.0.0 over 2.0.0"),
        "{}",
        show(&out)
    );
    assert_eq!(env.installed_image(), image(3));
    assert_eq!(env.requests_for(".pos-app-3.0.0.tar.zst"), 1);
    let d = env.device();
    let events = d["last_report"]["security_events"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["kind"] == "delta_refused"),
        "the refused delta reached the server as a security event: {d}"
    );

    // 4.0.0 on a metered link, its delta tampered too: no full download, the update waits.
    env.publish("4.0.0", &bundle("4.0.0", &image(4)));
    let stored = env.stored(".pos-app-4.0.0.from-3.0.0.delta");
    let mut bytes = std::fs::read(&stored).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();
    let metered = env.config(true);
    let out = env.t.agent_with(&metered, &["update"]);
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("waiting: metered link"), "{}", show(&out));
    assert_eq!(env.installed_image(), image(3));
    assert_eq!(env.requests_for(".pos-app-4.0.0.tar.zst"), 0);
    let st = command("otter-agent")
        .args(["status", "--json", "--config"])
        .arg(&metered)
        .output()
        .unwrap();
    let st: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(
        st["waiting"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["target"] == "pos-app-4.0.0.tar.zst"),
        "{st}"
    );
}
