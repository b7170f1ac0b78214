//! Shared helpers: run the real server on 127.0.0.1:0 in-process, fetch over loopback, and
//! verify the repository chain with otter-keys, as a TUF client would.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

pub mod cli;
pub mod fleet;

use otter_keys::metadata::{check_expected_version, Metadata, Root, Snapshot, Targets, Timestamp};
use otter_keys::time::UtcTime;
use otter_server::{Config, Server, ServerError};

/// Runs a test body inside an actix system (the server needs one; reqwest runs on it too).
pub fn run<F: Future>(f: F) -> F::Output {
    actix_web::rt::System::new().block_on(f)
}

/// A quick configuration on `dir`: one worker, one second to shut down.
pub fn config(dir: &Path) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        workers: Some(1),
        shutdown_timeout_secs: 1,
        ..Config::default()
    }
}

/// A server running in this process.
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), ServerError>>>,
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends the shutdown signal and waits for a clean stop.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let res = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("server stops within 10 s")
                .expect("server task does not panic");
            res.expect("server stops without error");
        }
    }
}

/// Opens and runs the server; returns it with the admin token when this start created the
/// repository.
pub async fn start(config: Config) -> (Running, Option<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::open(config).await.expect("server opens");
    let token = server
        .dev_repository_created()
        .map(|c| c.admin_token.expose_dangerous().to_owned());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = actix_web::rt::spawn(server.run(listener, async move {
        let _ = rx.await;
    }));
    let running = Running {
        addr,
        stop: Some(tx),
        task: Some(task),
    };
    // Ready once it answers (the run task starts listening when first polled).
    let c = client();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !c
        .get(running.url("/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(std::time::Instant::now() < deadline, "server not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (running, token)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// GET that must answer 200; returns the body.
pub async fn get_ok(c: &reqwest::Client, url: &str) -> Vec<u8> {
    let r = c.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200, "GET {url}");
    r.bytes().await.unwrap().to_vec()
}

/// A raw HTTP/1.1 request with the path sent exactly as given (no client normalisation),
/// on the blocking pool. Returns the status and the body.
pub async fn raw_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let (method, path) = (method.to_owned(), path.to_owned());
    tokio::task::spawn_blocking(move || raw_request_blocking(addr, &method, &path))
        .await
        .unwrap()
}

fn raw_request_blocking(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The verified chain a client ends up trusting.
pub struct Chain {
    pub root: Metadata<Root>,
    pub timestamp: Metadata<Timestamp>,
    pub snapshot: Metadata<Snapshot>,
    pub targets: Metadata<Targets>,
    pub root_bytes: Vec<u8>,
}

fn check_file(bytes: &[u8], length: Option<u64>, hashes: Option<&BTreeMap<String, String>>) {
    let hashes = hashes.expect("hashes are given");
    assert_eq!(
        length,
        Some(bytes.len() as u64),
        "length is given and right"
    );
    otter_keys::hash::verify(bytes, length, hashes).expect("hashes match");
}

/// Fetches 1.root.json, checks it signs itself, then walks timestamp -> snapshot -> targets
/// checking signatures, versions, lengths, hashes and expiry (spec section 5).
pub async fn fetch_and_verify(c: &reqwest::Client, srv: &Running) -> Chain {
    let now = UtcTime::now();
    let max = 1 << 20;
    let root_bytes = get_ok(c, &srv.url("/repo/metadata/1.root.json")).await;
    let root = Metadata::<Root>::from_bytes(&root_bytes, max).unwrap();
    root.verify_self().expect("root verifies with its own keys");
    root.check_expiry(now).unwrap();

    let ts_bytes = get_ok(c, &srv.url("/repo/metadata/timestamp.json")).await;
    let timestamp = Metadata::<Timestamp>::from_bytes(&ts_bytes, max).unwrap();
    root.verify_by(&timestamp, "timestamp").unwrap();
    timestamp.check_expiry(now).unwrap();

    let sm = timestamp.signed().snapshot_meta().unwrap().clone();
    let snap_bytes = get_ok(
        c,
        &srv.url(&format!("/repo/metadata/{}.snapshot.json", sm.version)),
    )
    .await;
    check_file(&snap_bytes, sm.length, sm.hashes.as_ref());
    let snapshot = Metadata::<Snapshot>::from_bytes(&snap_bytes, max).unwrap();
    root.verify_by(&snapshot, "snapshot").unwrap();
    check_expected_version("snapshot", sm.version, snapshot.signed().version).unwrap();
    snapshot.check_expiry(now).unwrap();

    let tm = snapshot.signed().meta["targets.json"].clone();
    let targets_bytes = get_ok(
        c,
        &srv.url(&format!("/repo/metadata/{}.targets.json", tm.version)),
    )
    .await;
    check_file(&targets_bytes, tm.length, tm.hashes.as_ref());
    let targets = Metadata::<Targets>::from_bytes(&targets_bytes, max).unwrap();
    root.verify_by(&targets, "targets").unwrap();
    check_expected_version("targets", tm.version, targets.signed().version).unwrap();
    targets.check_expiry(now).unwrap();

    Chain {
        root,
        timestamp,
        snapshot,
        targets,
        root_bytes,
    }
}

/// Every audit entry (`GET /api/v1/audit` as `admin`).
pub async fn audit_entries(
    c: &reqwest::Client,
    srv: &Running,
    admin: &str,
) -> Vec<serde_json::Value> {
    let (s, v) = api(c, "GET", &srv.url("/api/v1/audit"), Some(admin), None).await;
    assert_eq!(s, 200, "{v}");
    v["entries"].as_array().unwrap().clone()
}

/// Asserts that the whole audit chain verifies (`GET verify_url`, the server's
/// `/api/v1/audit/verify`, as `admin`).
pub async fn assert_audit_verifies(c: &reqwest::Client, verify_url: &str, admin: &str) {
    let (s, v) = api(c, "GET", verify_url, Some(admin), None).await;
    assert_eq!((s, &v["broken"]), (200, &serde_json::Value::Null), "{v}");
    assert_eq!(
        v["verified"], v["head"]["seq"],
        "the whole chain verifies: {v}"
    );
}

/// Sends a request with an optional bearer token; returns the status and the JSON body
/// (`Null` when the body is not JSON).
pub async fn api(
    c: &reqwest::Client,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> (u16, serde_json::Value) {
    let mut req = c.request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// Creates a token with `role` through the admin API; returns (id, token).
pub async fn make_token(
    c: &reqwest::Client,
    srv: &Running,
    admin: &str,
    role: &str,
) -> (i64, String) {
    let body = serde_json::json!({"role": role, "label": format!("test {role}")});
    let r = c
        .post(srv.url("/api/v1/tokens"))
        .bearer_auth(admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.unwrap();
    (
        v["id"].as_i64().unwrap(),
        v["token"].as_str().unwrap().to_owned(),
    )
}

/// A tar entry for hand-made (possibly hostile) bundles.
pub struct TarEntry {
    pub path: Vec<u8>,
    pub kind: tar::EntryType,
    pub data: Vec<u8>,
    pub link: Option<Vec<u8>>,
}

impl TarEntry {
    pub fn file(path: &str, data: &[u8]) -> TarEntry {
        TarEntry {
            path: path.as_bytes().to_vec(),
            kind: tar::EntryType::Regular,
            data: data.to_vec(),
            link: None,
        }
    }
}

/// A tar with the entries exactly as given (names are written raw, unchecked), zstd'd.
pub fn tar_zst(entries: &[TarEntry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        {
            let name = &mut h.as_old_mut().name;
            name[..e.path.len()].copy_from_slice(&e.path);
        }
        h.set_entry_type(e.kind);
        h.set_size(e.data.len() as u64);
        h.set_mode(0o644);
        if let Some(l) = &e.link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
        }
        h.set_cksum();
        b.append(&h, &e.data[..]).unwrap();
    }
    let tar = b.into_inner().unwrap();
    zstd::encode_all(&tar[..], 3).unwrap()
}

/// The manifest of a bundle holding `files`.
pub fn manifest_for(name: &str, version: &str, files: &[(&str, &[u8])]) -> serde_json::Value {
    let payload: Vec<serde_json::Value> = files
        .iter()
        .map(|(p, d)| {
            serde_json::json!({"path": p, "size": d.len(), "sha256": otter_keys::hash::sha256_hex(d)})
        })
        .collect();
    serde_json::json!({
        "name": name, "kind": "firmware", "version": version,
        "hardware": ["pos-a", "pos-b"], "payload": payload,
        "health": ["/opt/selftest"]
    })
}

/// A valid bundle: manifest.json and `files`.
pub fn bundle(name: &str, version: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
    let m = serde_json::to_vec(&manifest_for(name, version, files)).unwrap();
    let mut entries = vec![TarEntry::file("manifest.json", &m)];
    entries.extend(files.iter().map(|(p, d)| TarEntry::file(p, d)));
    tar_zst(&entries)
}

/// Publishes a bundle with `token`; returns status and body.
pub async fn publish(
    c: &reqwest::Client,
    srv: &Running,
    token: &str,
    bytes: Vec<u8>,
) -> (u16, serde_json::Value) {
    api(
        c,
        "POST",
        &srv.url("/api/v1/releases"),
        Some(token),
        Some(bytes),
    )
    .await
}
