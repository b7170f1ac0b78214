//! Helpers of the retention and garbage-collection tests: a test device's packs and signed
//! manifests made with `otter_keys::envelope`, sent as signed requests over loopback, and
//! the `otter-server` binary run on the same data dir.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use otter_keys::age::x25519::Identity;
use otter_keys::envelope::{
    ChunkKey, ManifestBody, ManifestFields, PackBuilder, SealedPack, SignedManifest,
};
use otter_keys::request::sign_request;
use otter_keys::time::UtcTime;
use serde_json::Value;

use crate::common::fleet::{now, TestDevice};
use crate::common::Running;

/// Where manifests are posted.
pub const MANIFESTS: &str = "/api/v1/device/backups/manifests";

/// Runs `otter-server ARGS` with `--config FILE` appended.
pub fn cli(config_file: &Path, args: &[&str]) -> std::process::Output {
    assert_cmd::Command::cargo_bin("otter-server")
        .unwrap()
        .args(args)
        .arg("--config")
        .arg(config_file)
        .env_remove("OTTER_DATA_DIR")
        .env_remove("OTTER_CONFIG")
        .output()
        .unwrap()
}

/// Writes `extra` TOML after `data_dir` to `DIR/server.toml`, and parses it as the
/// in-process server's configuration (one worker, quick shutdown).
pub fn config_file(dir: &Path, extra: &str) -> (PathBuf, otter_server::Config) {
    let text = format!(
        "data_dir = {:?}\n{extra}",
        dir.join("data").display().to_string()
    );
    let file = dir.join("server.toml");
    std::fs::write(&file, &text).unwrap();
    let mut cfg = otter_server::Config::from_toml(&text, &file).unwrap();
    cfg.validate().unwrap();
    cfg.workers = Some(1);
    cfg.shutdown_timeout_secs = 1;
    (file, cfg)
}

/// The directory of a device's backup objects in a local store.
pub fn device_store(cfg: &otter_server::Config, device: &str) -> PathBuf {
    cfg.default_store_dir().join("backups").join(device)
}

/// Signs `body` for `method path` as `dev` and sends it; status and JSON body.
pub async fn signed(
    c: &reqwest::Client,
    srv: &Running,
    dev: &TestDevice,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, Value) {
    let h = sign_request(&dev.key, &dev.id, method, path, body, now()).unwrap();
    let mut req = c
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            srv.url(path),
        )
        .body(body.to_vec());
    for (name, value) in h.pairs() {
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

/// The error code of a JSON error answer.
pub fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// The API path of a pack.
pub fn pack_path(p: &SealedPack) -> String {
    format!("/api/v1/device/backups/packs/{}", p.id)
}

/// A device's backup chain: its chunk key and backup identity, and the manifests sent.
pub struct Chain {
    key: ChunkKey,
    identity: Identity,
    /// Manifests accepted so far, oldest first.
    pub sent: Vec<SignedManifest>,
}

impl Chain {
    /// A new chain.
    pub fn new() -> Self {
        Chain {
            key: ChunkKey::generate(),
            identity: Identity::generate(),
            sent: Vec::new(),
        }
    }

    /// A sealed pack of `count` pages of 512 bytes, seeded by `seed`.
    pub fn pack(&self, seed: u8, count: usize) -> SealedPack {
        let mut b = PackBuilder::new();
        for i in 0..count {
            let page: Vec<u8> = (0..512)
                .map(|j| seed ^ (i as u8).wrapping_mul(31) ^ (j as u8).wrapping_mul(7))
                .collect();
            b.add(self.key.chunk_id(&page), &page).unwrap();
        }
        b.finish(&[self.identity.to_public()]).unwrap()
    }

    /// The next manifest of the chain, taken at `created`, whose pages lie in `packs`.
    pub fn next(&self, dev: &TestDevice, created: i64, packs: &[&SealedPack]) -> SignedManifest {
        let chunks: BTreeMap<_, _> = packs.iter().flat_map(|p| p.locations()).collect();
        let pages: Vec<_> = packs
            .iter()
            .flat_map(|p| p.entries.iter().map(|e| e.chunk))
            .collect();
        let body = ManifestBody {
            page_size: 512,
            page_count: pages.len() as u64,
            pages,
            chunks,
            file_blake3: "11".repeat(32),
            file_sha256: "22".repeat(32),
            row_counts: [("sales".to_string(), 5u64)].into(),
            schema_version: 1,
            extra: BTreeMap::new(),
        };
        let fields = ManifestFields {
            device_id: dev.id.clone(),
            sequence: self.sent.len() as u64 + 1,
            created: UtcTime::from_unix(created),
            previous: self.sent.last().map(|m| m.header_hash().unwrap()),
            packs: packs.iter().map(|p| p.pack_ref()).collect(),
        };
        SignedManifest::seal(fields, &body, &dev.key, &[self.identity.to_public()]).unwrap()
    }
}

/// Uploads a pack; asserts it was stored (201) or already was (200).
pub async fn upload(c: &reqwest::Client, srv: &Running, dev: &TestDevice, p: &SealedPack) {
    let (s, v) = signed(c, srv, dev, "PUT", &pack_path(p), &p.ciphertext).await;
    assert!(s == 200 || s == 201, "{s} {v}");
}

/// Posts a manifest; status and answer.
pub async fn post(
    c: &reqwest::Client,
    srv: &Running,
    dev: &TestDevice,
    m: &SignedManifest,
) -> (u16, Value) {
    signed(c, srv, dev, "POST", MANIFESTS, &m.to_bytes().unwrap()).await
}

/// Uploads `packs`, then posts the chain's next manifest over them; asserts it is accepted.
pub async fn backup(
    c: &reqwest::Client,
    srv: &Running,
    dev: &TestDevice,
    chain: &mut Chain,
    created: i64,
    packs: &[&SealedPack],
) -> u64 {
    for p in packs {
        upload(c, srv, dev, p).await;
    }
    let m = chain.next(dev, created, packs);
    let (s, v) = post(c, srv, dev, &m).await;
    assert_eq!(s, 201, "{v}");
    chain.sent.push(m);
    chain.sent.len() as u64
}

/// The sequences the catalog lists for a device.
pub async fn listed(c: &reqwest::Client, srv: &Running, token: &str, device: &str) -> Vec<u64> {
    let url = srv.url(&format!("/api/v1/backups?device={device}"));
    let (s, v) = crate::common::api(c, "GET", &url, Some(token), None).await;
    assert_eq!(s, 200, "{v}");
    v["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["sequence"].as_u64().unwrap())
        .collect()
}
