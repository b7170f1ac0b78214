//! Receiving backups over real HTTP on loopback, with signed device requests and real packs
//! and manifests made with `otter_keys::envelope`: packs then manifests are accepted and
//! countersigned with the receipt key, the catalog shows their sizes; a pack that does not
//! hash to its id, an oversized pack, a manifest naming a missing pack, a forged or
//! tampered manifest, a chain gap, a manifest for another device and a second manifest with
//! a taken sequence number are each refused with a stable code, and store nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::fleet::{enrolled_device, now, TestDevice};
use common::{api, client, config, make_token, run, start, Running};
use otter_keys::age::x25519::Identity;
use otter_keys::crypto::SigningKey;
use otter_keys::envelope::{
    ChunkKey, Countersignature, ManifestBody, ManifestFields, PackBuilder, SealedPack,
    SignedManifest,
};
use otter_keys::request::{content_digest, sign_request, SignatureHeaders};
use otter_keys::time::UtcTime;
use serde_json::Value;

fn cli(args: &[&str]) -> std::process::Output {
    assert_cmd::Command::cargo_bin("otter-server")
        .unwrap()
        .args(args)
        .env_remove("OTTER_DATA_DIR")
        .env_remove("OTTER_CONFIG")
        .output()
        .unwrap()
}

const MANIFESTS: &str = "/api/v1/device/backups/manifests";
const CAP: u64 = 64 * 1024;

fn pack_path(pack: &SealedPack) -> String {
    format!("/api/v1/device/backups/packs/{}", pack.id)
}

/// Sends a request with signature headers; returns the status, the JSON body and headers.
async fn send(
    c: &reqwest::Client,
    srv: &Running,
    method: &str,
    path: &str,
    body: &[u8],
    h: &SignatureHeaders,
) -> (u16, Value, reqwest::header::HeaderMap) {
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
    let headers = r.headers().clone();
    let bytes = r.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        headers,
    )
}

/// Signs `body` for `method path` as `dev` and sends it.
async fn signed(
    c: &reqwest::Client,
    srv: &Running,
    dev: &TestDevice,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, Value, reqwest::header::HeaderMap) {
    let h = sign_request(&dev.key, &dev.id, method, path, body, now()).unwrap();
    send(c, srv, method, path, body, &h).await
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// A sealed pack of `pages` pages of `size` bytes, seeded by `seed`, and their body.
struct Backup {
    key: ChunkKey,
    identity: Identity,
}

impl Backup {
    fn new() -> Self {
        Backup {
            key: ChunkKey::generate(),
            identity: Identity::generate(),
        }
    }

    fn pages(seed: u8, count: usize, size: usize) -> Vec<Vec<u8>> {
        (0..count)
            .map(|i| {
                (0..size)
                    .map(|j| seed ^ (i as u8).wrapping_mul(31) ^ (j as u8).wrapping_mul(7))
                    .collect()
            })
            .collect()
    }

    fn pack(&self, pages: &[Vec<u8>]) -> SealedPack {
        let mut b = PackBuilder::new();
        for p in pages {
            b.add(self.key.chunk_id(p), p).unwrap();
        }
        b.finish(&[self.identity.to_public()]).unwrap()
    }

    /// A manifest whose pages lie in `packs` (every chunk of every pack is a page).
    fn manifest(
        &self,
        device: &str,
        signer: &SigningKey,
        sequence: u64,
        previous: Option<String>,
        packs: &[&SealedPack],
    ) -> SignedManifest {
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
            device_id: device.to_owned(),
            sequence,
            created: UtcTime::now(),
            previous,
            packs: packs.iter().map(|p| p.pack_ref()).collect(),
        };
        SignedManifest::seal(fields, &body, signer, &[self.identity.to_public()]).unwrap()
    }
}

async fn upload(c: &reqwest::Client, srv: &Running, dev: &TestDevice, p: &SealedPack) -> u16 {
    let (s, v, _) = signed(c, srv, dev, "PUT", &pack_path(p), &p.ciphertext).await;
    assert!(s == 200 || s == 201, "{s} {v}");
    s
}

async fn post_manifest(
    c: &reqwest::Client,
    srv: &Running,
    dev: &TestDevice,
    m: &SignedManifest,
) -> (u16, Value) {
    let bytes = m.to_bytes().unwrap();
    let (s, v, _) = signed(c, srv, dev, "POST", MANIFESTS, &bytes).await;
    (s, v)
}

/// Files under `dir` (recursively), as paths relative to it.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

fn small_config(dir: &Path) -> otter_server::Config {
    let mut cfg = config(dir);
    cfg.backups.max_pack_bytes = CAP;
    cfg
}

#[test]
fn packs_then_manifests_are_accepted_countersigned_and_catalogued() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_config(dir.path());
        let (srv, admin) = start(cfg.clone()).await;
        let admin = admin.unwrap();
        let c = client();
        let dev = enrolled_device(&c, &srv, &admin, Some("lane-1")).await;
        let b = Backup::new();
        let p1 = b.pack(&Backup::pages(1, 4, 512));
        let p2 = b.pack(&Backup::pages(2, 3, 512));

        // Not there yet; uploaded; uploaded again (an agent resuming) is fine.
        let (s, _, _) = signed(&c, &srv, &dev, "HEAD", &pack_path(&p1), b"").await;
        assert_eq!(s, 404);
        assert_eq!(upload(&c, &srv, &dev, &p1).await, 201);
        assert_eq!(upload(&c, &srv, &dev, &p1).await, 200);
        let (s, _, h) = signed(&c, &srv, &dev, "HEAD", &pack_path(&p1), b"").await;
        assert_eq!(s, 200);
        assert_eq!(
            h["otter-pack-length"].to_str().unwrap(),
            p1.ciphertext.len().to_string()
        );

        let receipt_key = otter_server::backups::receipt::load_receipt_public_key(&cfg).unwrap();
        let m1 = b.manifest(&dev.id, &dev.key, 1, None, &[&p1]);
        let (s, v) = post_manifest(&c, &srv, &dev, &m1).await;
        assert_eq!(s, 201, "{v}");
        let cs1: Countersignature = serde_json::from_value(v["countersignature"].clone()).unwrap();
        m1.verify_countersignature(&receipt_key, &cs1).unwrap();
        assert_eq!(v["header_hash"], m1.header_hash().unwrap());

        assert_eq!(upload(&c, &srv, &dev, &p2).await, 201);
        let m2 = b.manifest(
            &dev.id,
            &dev.key,
            2,
            Some(m1.header_hash().unwrap()),
            &[&p1, &p2],
        );
        let (s, v) = post_manifest(&c, &srv, &dev, &m2).await;
        assert_eq!(s, 201, "{v}");
        let cs2: Countersignature = serde_json::from_value(v["countersignature"].clone()).unwrap();
        m2.verify_countersignature(&receipt_key, &cs2).unwrap();
        // The same manifest again: the same receipt, nothing new.
        let (s, v) = post_manifest(&c, &srv, &dev, &m2).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["countersignature"], serde_json::to_value(&cs2).unwrap());

        // The catalog, for every reading role.
        let (_, auditor) = make_token(&c, &srv, &admin, "auditor").await;
        let (_, restorer) = make_token(&c, &srv, &admin, "restorer").await;
        for token in [&admin, &auditor, &restorer] {
            let url = srv.url(&format!("/api/v1/backups?device={}", dev.id));
            let (s, v) = api(&c, "GET", &url, Some(token), None).await;
            assert_eq!(s, 200, "{v}");
            let list = v["backups"].as_array().unwrap();
            assert_eq!(list.len(), 2);
            let (l1, l2) = (p1.ciphertext.len() as u64, p2.ciphertext.len() as u64);
            assert_eq!(list[0]["sequence"], 1);
            assert_eq!(list[0]["total_pack_bytes"], l1);
            assert_eq!(list[0]["new_pack_bytes"], l1);
            assert_eq!(list[1]["sequence"], 2);
            assert_eq!(list[1]["pack_count"], 2);
            assert_eq!(list[1]["total_pack_bytes"], l1 + l2);
            assert_eq!(list[1]["new_pack_bytes"], l2);
            assert_eq!(list[1]["body_length"], m2.header.body_length);
            assert_eq!(
                list[1]["manifest_length"],
                m2.to_bytes().unwrap().len() as u64
            );
        }
        let url = srv.url(&format!("/api/v1/backups/{}/2", dev.id));
        let (s, v) = api(&c, "GET", &url, Some(&auditor), None).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["header"]["previous"], m1.header_hash().unwrap());
        assert_eq!(
            v["backup"]["countersignature"],
            serde_json::to_value(&cs2).unwrap()
        );
        let url = srv.url(&format!("/api/v1/backups/{}/3", dev.id));
        assert_eq!(api(&c, "GET", &url, Some(&auditor), None).await.0, 404);

        // The store holds the ciphertext as sent: packs and manifests.
        let store = dir.path().join("store").join("backups").join(&dev.id);
        let stored = std::fs::read(store.join("packs").join(p2.id.to_string())).unwrap();
        assert_eq!(stored, p2.ciphertext);
        let stored = std::fs::read(store.join("manifests").join(format!("{:020}", 2))).unwrap();
        assert_eq!(stored, m2.to_bytes().unwrap());
        let back = SignedManifest::from_bytes(&stored, 1 << 20).unwrap();
        assert_eq!(back.open_body(&b.identity, 1 << 20).unwrap().page_count, 7);

        // A manifest of many pages, larger than the 64 KiB other API bodies may have.
        let tiny: Vec<Vec<u8>> = (0u32..3000).map(|i| i.to_le_bytes().to_vec()).collect();
        let p3 = b.pack(&tiny);
        assert_eq!(upload(&c, &srv, &dev, &p3).await, 201);
        let m3 = b.manifest(
            &dev.id,
            &dev.key,
            3,
            Some(m2.header_hash().unwrap()),
            &[&p3],
        );
        assert!(m3.to_bytes().unwrap().len() > 64 * 1024);
        let (s, v) = post_manifest(&c, &srv, &dev, &m3).await;
        assert_eq!(s, 201, "{v}");

        // The same catalog from the command line.
        let d = dir.path().to_str().unwrap();
        let out = cli(&["backups", "list", "--data-dir", d, "--json"]);
        assert!(out.status.success(), "{out:?}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 3);
        assert_eq!(v[2]["pack_count"], 1);
        let out = cli(&["backups", "list", "--data-dir", d, "--device", "nobody"]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
        let out = cli(&["backups", "show", &dev.id, "2", "--data-dir", d]);
        assert!(out.status.success(), "{out:?}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["header"]["sequence"], 2);
        assert_eq!(v["backup"]["new_pack_bytes"], p2.ciphertext.len() as u64);
        let out = cli(&["backups", "show", &dev.id, "9", "--data-dir", d]);
        assert!(!out.status.success());
        srv.stop().await;
    });
}

#[test]
fn bad_packs_and_manifests_are_refused_and_store_nothing() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_config(dir.path());
        let (srv, admin) = start(cfg).await;
        let admin = admin.unwrap();
        let c = client();
        let dev = enrolled_device(&c, &srv, &admin, None).await;
        let other = enrolled_device(&c, &srv, &admin, None).await;
        let b = Backup::new();
        let p1 = b.pack(&Backup::pages(1, 4, 512));
        let p2 = b.pack(&Backup::pages(2, 2, 512));
        let store = dir.path().join("store").join("backups");

        // A body signed honestly, sent under another pack's id: the signed digest is not
        // the id's, refused before the body is read.
        let (s, v, _) = signed(&c, &srv, &dev, "PUT", &pack_path(&p2), &p1.ciphertext).await;
        assert_eq!((s, code(&v)), (401, "digest_mismatch"), "{v}");
        // The right signed digest, but a body damaged in transit: refused after streaming.
        let h = sign_request(
            &dev.key,
            &dev.id,
            "PUT",
            &pack_path(&p1),
            &p1.ciphertext,
            now(),
        )
        .unwrap();
        assert_eq!(h.content_digest, content_digest(&p1.ciphertext));
        let mut damaged = p1.ciphertext.clone();
        damaged[100] ^= 1;
        let (s, v, _) = send(&c, &srv, "PUT", &pack_path(&p1), &damaged, &h).await;
        assert_eq!((s, code(&v)), (400, "backup_pack_hash_mismatch"), "{v}");
        // The same signed request again, now with the right body: a replay.
        let (s, v, _) = send(&c, &srv, "PUT", &pack_path(&p1), &p1.ciphertext, &h).await;
        assert_eq!((s, code(&v)), (401, "replayed_request"), "{v}");
        // Signed long ago.
        let old = sign_request(
            &dev.key,
            &dev.id,
            "PUT",
            &pack_path(&p1),
            &p1.ciphertext,
            now() - 3600,
        )
        .unwrap();
        let (s, v, _) = send(&c, &srv, "PUT", &pack_path(&p1), &p1.ciphertext, &old).await;
        assert_eq!((s, code(&v)), (401, "stale_request"), "{v}");
        // Signed by another device's key under this device's id.
        let forged = sign_request(
            &other.key,
            &dev.id,
            "PUT",
            &pack_path(&p1),
            &p1.ciphertext,
            now(),
        )
        .unwrap();
        let (s, v, _) = send(&c, &srv, "PUT", &pack_path(&p1), &p1.ciphertext, &forged).await;
        assert_eq!((s, code(&v)), (401, "invalid_signature"), "{v}");
        // Not a pack id.
        let (s, v, _) = signed(
            &c,
            &srv,
            &dev,
            "PUT",
            "/api/v1/device/backups/packs/xyz",
            b"x",
        )
        .await;
        assert_eq!((s, code(&v)), (400, "invalid_pack_id"), "{v}");
        // Over the cap.
        let big = b.pack(&Backup::pages(3, 200, 512));
        assert!(big.ciphertext.len() as u64 > CAP);
        let (s, v, _) = signed(&c, &srv, &dev, "PUT", &pack_path(&big), &big.ciphertext).await;
        assert_eq!((s, code(&v)), (413, "backup_pack_too_large"), "{v}");
        // Unsigned.
        let r = c
            .put(srv.url(&pack_path(&p1)))
            .body(p1.ciphertext.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(files(&store).is_empty(), "{:?}", files(&store));

        // A manifest naming a pack that was never uploaded.
        let m = b.manifest(&dev.id, &dev.key, 1, None, &[&p1]);
        let (s, v) = post_manifest(&c, &srv, &dev, &m).await;
        assert_eq!((s, code(&v)), (422, "backup_pack_missing"), "{v}");

        assert_eq!(upload(&c, &srv, &dev, &p1).await, 201);
        // Forged: signed by another key (the other device's).
        let forged = b.manifest(&dev.id, &other.key, 1, None, &[&p1]);
        let (s, v) = post_manifest(&c, &srv, &dev, &forged).await;
        assert_eq!((s, code(&v)), (400, "backup_signature_invalid"), "{v}");
        // Tampered after signing: the header no longer matches the signature.
        let mut tampered = b.manifest(&dev.id, &dev.key, 1, None, &[&p1]);
        tampered.header.created = UtcTime::from_unix(tampered.header.created.unix() + 1);
        let (s, v) = post_manifest(&c, &srv, &dev, &tampered).await;
        assert_eq!((s, code(&v)), (400, "backup_signature_invalid"), "{v}");
        // Not a manifest at all.
        let (s, v, _) = signed(&c, &srv, &dev, "POST", MANIFESTS, b"OTTERMF1garbage").await;
        assert_eq!((s, code(&v)), (400, "backup_manifest_malformed"), "{v}");
        // For another device (signed by that device's key, sent by this one).
        let theirs = b.manifest(&other.id, &other.key, 1, None, &[&p1]);
        let (s, v) = post_manifest(&c, &srv, &dev, &theirs).await;
        assert_eq!((s, code(&v)), (403, "backup_wrong_device"), "{v}");
        // Packs are per device: the other device cannot name this device's pack.
        let (s, v) = post_manifest(&c, &srv, &other, &theirs).await;
        assert_eq!((s, code(&v)), (422, "backup_pack_missing"), "{v}");
        let manifests = |id: &str| files(&store.join(id).join("manifests"));
        assert!(manifests(&dev.id).is_empty());

        // The first manifest; then a gap (3 after 1) and a second #1.
        let m1 = b.manifest(&dev.id, &dev.key, 1, None, &[&p1]);
        let (s, v) = post_manifest(&c, &srv, &dev, &m1).await;
        assert_eq!(s, 201, "{v}");
        let gap = b.manifest(
            &dev.id,
            &dev.key,
            3,
            Some(m1.header_hash().unwrap()),
            &[&p1],
        );
        let (s, v) = post_manifest(&c, &srv, &dev, &gap).await;
        assert_eq!((s, code(&v)), (409, "backup_chain_broken"), "{v}");
        let wrong_link = b.manifest(&dev.id, &dev.key, 2, Some("ab".repeat(32)), &[&p1]);
        let (s, v) = post_manifest(&c, &srv, &dev, &wrong_link).await;
        assert_eq!((s, code(&v)), (409, "backup_chain_broken"), "{v}");
        let fork = b.manifest(&dev.id, &dev.key, 1, None, &[&p1]);
        assert_ne!(fork.header_hash().unwrap(), m1.header_hash().unwrap());
        let (s, v) = post_manifest(&c, &srv, &dev, &fork).await;
        assert_eq!((s, code(&v)), (409, "backup_sequence_conflict"), "{v}");

        // Only what was accepted is stored and catalogued.
        assert_eq!(manifests(&dev.id), vec![format!("{:020}", 1)]);
        assert!(manifests(&other.id).is_empty());
        assert_eq!(
            files(&store.join(&dev.id).join("packs")),
            vec![p1.id.to_string()]
        );
        let (s, v) = api(&c, "GET", &srv.url("/api/v1/backups"), Some(&admin), None).await;
        assert_eq!(s, 200);
        let list = v["backups"].as_array().unwrap();
        assert_eq!(list.len(), 1, "{v}");
        assert_eq!(list[0]["header_hash"], m1.header_hash().unwrap());
        assert!(files(&dir.path().join("uploads")).is_empty());
        srv.stop().await;
    });
}
