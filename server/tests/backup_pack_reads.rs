//! Reading backups back for a restore, over real HTTP on loopback with signed device
//! requests: a device gets its own backed-up packs (whole, or one byte range), never another
//! device's and never a pack no manifest of its own references yet; the manifest list
//! carries the server's countersignature of each manifest and the receipt public key, and
//! they verify; the receipt of a new manifest names that key too. Unsigned reads are
//! refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::fleet::{enrolled_device, now, TestDevice};
use common::{client, config, run, start, Running};
use otter_keys::age::x25519::Identity;
use otter_keys::envelope::{
    ChunkKey, Countersignature, ManifestBody, ManifestFields, PackBuilder, SealedPack,
    SignedManifest,
};
use otter_keys::request::sign_request;
use otter_keys::time::UtcTime;
use serde_json::Value;

const MANIFESTS: &str = "/api/v1/device/backups/manifests";

fn pack_path(id: &impl std::fmt::Display) -> String {
    format!("/api/v1/device/backups/packs/{id}")
}

/// Signs `method path` with `body` as `dev`, sends it with `extra` headers; returns the
/// status, the raw body and the headers.
async fn signed(
    c: &reqwest::Client,
    srv: &Running,
    dev: &TestDevice,
    method: &str,
    path: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) -> (u16, Vec<u8>, reqwest::header::HeaderMap) {
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
    for (name, value) in extra {
        req = req.header(*name, *value);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.bytes().await.unwrap().to_vec(), headers)
}

fn json(raw: &[u8]) -> Value {
    serde_json::from_slice(raw).unwrap_or(Value::Null)
}

/// A pack of `count` pages of 512 bytes, seeded.
fn pack(key: &ChunkKey, to: &Identity, seed: u8, count: usize) -> (SealedPack, Vec<Vec<u8>>) {
    let pages: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            (0..512)
                .map(|j| seed ^ (i as u8).wrapping_mul(29) ^ (j as u8).wrapping_mul(3))
                .collect()
        })
        .collect();
    let mut b = PackBuilder::new();
    for p in &pages {
        b.add(key.chunk_id(p), p).unwrap();
    }
    (b.finish(&[to.to_public()]).unwrap(), pages)
}

/// Manifest #1 of `dev` whose pages are every chunk of `p`.
fn manifest(dev: &TestDevice, to: &Identity, p: &SealedPack) -> SignedManifest {
    let pages: Vec<_> = p.entries.iter().map(|e| e.chunk).collect();
    let body = ManifestBody {
        page_size: 512,
        page_count: pages.len() as u64,
        pages,
        chunks: p.locations().collect(),
        file_blake3: "11".repeat(32),
        file_sha256: "22".repeat(32),
        row_counts: [("sales".to_string(), 1u64)].into(),
        schema_version: 1,
        extra: BTreeMap::new(),
    };
    let fields = ManifestFields {
        device_id: dev.id.clone(),
        sequence: 1,
        created: UtcTime::now(),
        previous: None,
        packs: vec![p.pack_ref()],
    };
    SignedManifest::seal(fields, &body, &dev.key, &[to.to_public()]).unwrap()
}

async fn back_up(c: &reqwest::Client, srv: &Running, dev: &TestDevice, p: &SealedPack) {
    let (s, raw, _) = signed(c, srv, dev, "PUT", &pack_path(&p.id), &p.ciphertext, &[]).await;
    assert_eq!(s, 201, "{}", json(&raw));
}

#[test]
fn a_device_reads_back_only_its_own_backed_up_packs() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let (srv, admin) = start(cfg.clone()).await;
        let admin = admin.unwrap();
        let c = client();
        let a = enrolled_device(&c, &srv, &admin, None).await;
        let b = enrolled_device(&c, &srv, &admin, None).await;
        let (key, to) = (ChunkKey::generate(), Identity::generate());

        let (pa, _) = pack(&key, &to, 1, 6);
        back_up(&c, &srv, &a, &pa).await;
        // Uploaded, but no manifest names it yet: not readable, even by its device.
        let (s, raw, _) = signed(&c, &srv, &a, "GET", &pack_path(&pa.id), b"", &[]).await;
        assert_eq!(s, 404, "{}", json(&raw));
        assert_eq!(json(&raw)["error"]["code"], "backup_pack_not_found");

        let m = manifest(&a, &to, &pa);
        let bytes = m.to_bytes().unwrap();
        let (s, raw, _) = signed(&c, &srv, &a, "POST", MANIFESTS, &bytes, &[]).await;
        assert_eq!(s, 201, "{}", json(&raw));
        let receipt_key = otter_server::backups::receipt::load_receipt_public_key(&cfg).unwrap();
        // The receipt names the key that made it, for the agent to pin.
        assert_eq!(json(&raw)["receipt_public_key"], receipt_key.keyval.public);

        // Its device reads it, whole and one range.
        let (s, raw, h) = signed(&c, &srv, &a, "GET", &pack_path(&pa.id), b"", &[]).await;
        assert_eq!(s, 200);
        assert_eq!(raw, pa.ciphertext);
        assert_eq!(h["cache-control"], "no-store");
        let (s, raw, h) = signed(
            &c,
            &srv,
            &a,
            "GET",
            &pack_path(&pa.id),
            b"",
            &[("Range", "bytes=10-19")],
        )
        .await;
        assert_eq!(s, 206);
        assert_eq!(raw, &pa.ciphertext[10..20]);
        assert_eq!(
            h["content-range"].to_str().unwrap(),
            format!("bytes 10-19/{}", pa.ciphertext.len())
        );
        let past = format!("bytes={}-", pa.ciphertext.len() + 5);
        let (s, _, _) = signed(
            &c,
            &srv,
            &a,
            "GET",
            &pack_path(&pa.id),
            b"",
            &[("Range", past.as_str())],
        )
        .await;
        assert_eq!(s, 416);

        // Another device never reads it; nor does anyone without a signature.
        let (s, raw, _) = signed(&c, &srv, &b, "GET", &pack_path(&pa.id), b"", &[]).await;
        assert_eq!(s, 404, "{}", json(&raw));
        assert_eq!(json(&raw)["error"]["code"], "backup_pack_not_found");
        assert!(!raw
            .windows(16)
            .any(|w| pa.ciphertext.windows(16).any(|p| p == w)));
        let r = c.get(srv.url(&pack_path(&pa.id))).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "missing_signature");
        // A malformed id is refused as such.
        let (s, raw, _) = signed(&c, &srv, &a, "GET", &pack_path(&"zz"), b"", &[]).await;
        assert_eq!(
            (s, json(&raw)["error"]["code"].as_str()),
            (400, Some("invalid_pack_id"))
        );

        // The list carries the countersignatures and the receipt key, and they verify.
        let (s, raw, _) = signed(&c, &srv, &a, "GET", MANIFESTS, b"", &[]).await;
        assert_eq!(s, 200);
        let v = json(&raw);
        let stated = v["receipt_public_key"].as_str().unwrap();
        assert_eq!(stated, receipt_key.keyval.public);
        assert_eq!(v["sequences"], serde_json::json!([1]));
        assert_eq!(v["receipts"][0]["sequence"], 1);
        let cs: Countersignature =
            serde_json::from_value(v["receipts"][0]["countersignature"].clone()).unwrap();
        m.verify_countersignature(&receipt_key, &cs).unwrap();
        // Device b has no backups: an empty list, nothing of a's.
        let (s, raw, _) = signed(&c, &srv, &b, "GET", MANIFESTS, b"", &[]).await;
        assert_eq!(s, 200);
        assert_eq!(json(&raw)["receipts"], serde_json::json!([]));

        srv.stop().await;
    });
}
