//! A real S3-compatible server for the end-to-end tests, and direct access to its bucket.
//!
//! By default: `s3s-fs` (a small S3 server on a local directory that checks SigV4
//! signatures) on a free loopback port with a temporary directory, killed when dropped.
//! `scripts/s3s-fs.sh` installs it (`cargo install s3s-fs@0.14.1 --locked --features binary`);
//! without it these tests fail, they are never skipped.
//!
//! With `OTTER_TEST_S3_ENDPOINT` set, an external server is used instead (Garage:
//! `deploy/garage/run.sh` sets these): `OTTER_TEST_S3_BUCKET` (existing bucket),
//! `OTTER_TEST_S3_REGION`, `OTTER_TEST_S3_ACCESS_KEY_ID`, `OTTER_TEST_S3_SECRET_ACCESS_KEY`.
//! Every test works under its own fresh key prefix, so runs never see each other's objects.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

/// The s3s-fs binary: `OTTER_S3S_FS`, else `s3s-fs` on PATH, else `~/.cargo/bin/s3s-fs`.
pub fn s3s_fs_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("OTTER_S3S_FS") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("s3s-fs"))
            .find(|p| p.is_file())
    });
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/s3s-fs"));
    match on_path.or(home.filter(|p| p.is_file())) {
        Some(p) => p,
        None => panic!(
            "s3s-fs (the S3-compatible server these tests run against) is missing: run \
             scripts/s3s-fs.sh, or `cargo install s3s-fs@0.14.1 --locked --features binary` \
             (about 80 s), or set OTTER_S3S_FS; the S3 tests are never skipped"
        ),
    }
}

/// A running S3-compatible server with one bucket, and the credentials for it.
pub struct S3Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Signing region.
    pub region: String,
    /// The bucket the tests use.
    pub bucket: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// s3s-fs's data directory (objects are plain files at `ROOT/BUCKET/KEY`); `None` for
    /// an external server.
    root: Option<tempfile::TempDir>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A key prefix no other test (or earlier run) uses: `NAME-N-HEX`. Short: s3s-fs keeps a
/// multipart upload's state in a file named after the base64 of bucket and key, and file
/// names stop at 255 bytes, so its keys must stay under about 130 bytes.
pub fn unique_prefix(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{name}-{}-{:x}",
        N.fetch_add(1, Ordering::Relaxed),
        nanos ^ (std::process::id() << 12)
    )
}

impl S3Server {
    /// Starts s3s-fs on a free loopback port (or connects to the external server named by
    /// `OTTER_TEST_S3_ENDPOINT`) and waits until it accepts connections.
    pub fn start() -> S3Server {
        if let Ok(endpoint) = std::env::var("OTTER_TEST_S3_ENDPOINT") {
            let var = |k: &str| {
                std::env::var(k).unwrap_or_else(|_| {
                    panic!("OTTER_TEST_S3_ENDPOINT is set, so {k} must be set too")
                })
            };
            return S3Server {
                child: None,
                endpoint: endpoint.trim_end_matches('/').to_owned(),
                region: var("OTTER_TEST_S3_REGION"),
                bucket: var("OTTER_TEST_S3_BUCKET"),
                access_key: var("OTTER_TEST_S3_ACCESS_KEY_ID"),
                secret_key: var("OTTER_TEST_S3_SECRET_ACCESS_KEY"),
                root: None,
            };
        }
        let bin = s3s_fs_binary();
        let root = tempfile::tempdir().unwrap();
        let bucket = "otter".to_owned();
        std::fs::create_dir(root.path().join(&bucket)).unwrap();
        let access_key = format!("AKOTTER{}", std::process::id());
        let secret_key = format!("s3-secret-{}", unique_prefix("key"));
        // A port picked by binding :0 may be taken between the probe and s3s-fs's bind: retry.
        for _ in 0..5 {
            let port = free_port();
            let log = root.path().join("s3s-fs.log");
            let mut child = Command::new(&bin)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", &access_key, "--secret-key", &secret_key])
                .arg(root.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut up = false;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    up = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if up {
                return S3Server {
                    child: Some(child),
                    endpoint: format!("http://127.0.0.1:{port}"),
                    region: "us-east-1".into(),
                    bucket,
                    access_key,
                    secret_key,
                    root: Some(root),
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "s3s-fs did not start; its log:\n{}",
            std::fs::read_to_string(root.path().join("s3s-fs.log")).unwrap_or_default()
        );
    }

    /// The `[store]` section of an otter-server config for `s3://BUCKET/PREFIX` on this
    /// server, without credentials (give them with [`S3Server::credentials_env`]).
    pub fn store_toml(&self, prefix: &str) -> String {
        format!(
            "[store]\nurl = \"s3://{}/{prefix}\"\nendpoint = \"{}\"\nregion = \"{}\"\nallow_http = true\n",
            self.bucket, self.endpoint, self.region
        )
    }

    /// The credentials as the usual AWS environment variables.
    pub fn credentials_env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
        ]
    }

    /// The directory holding the bucket's objects as plain files, for s3s-fs only.
    pub fn bucket_dir(&self) -> Option<PathBuf> {
        self.root.as_ref().map(|r| r.path().join(&self.bucket))
    }

    /// A client for the bucket, with this server's credentials.
    pub fn client(&self) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(&self.endpoint)
                .with_region(&self.region)
                .with_bucket_name(&self.bucket)
                .with_access_key_id(&self.access_key)
                .with_secret_access_key(&self.secret_key)
                .with_allow_http(true)
                .build()
                .unwrap(),
        )
    }

    /// An object of the bucket (`KEY` is the full key, prefix included); `None` if absent.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let client = self.client();
        let path = ObjectPath::parse(key).unwrap();
        block_on(async move {
            match client.get(&path).await {
                Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("S3 GET {key}: {e}"),
            }
        })
    }

    /// Every key under `prefix` (recursively), sorted.
    pub fn list(&self, prefix: &str) -> Vec<String> {
        let client = self.client();
        let prefix = ObjectPath::parse(prefix).unwrap();
        let mut keys = block_on(list_all(client, prefix));
        keys.sort();
        keys
    }

    /// Copies every object under `prefix` into `dir` (`dir/REST_OF_KEY`), as a sync to a
    /// CDN origin or a static mirror would.
    pub fn download_prefix(&self, prefix: &str, dir: &Path) {
        for key in self.list(prefix) {
            let rest = key.strip_prefix(prefix).unwrap().trim_start_matches('/');
            let to = dir.join(rest);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::write(&to, self.get(&key).unwrap()).unwrap();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a future on a fresh single-threaded runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Every key under `prefix`: `list_with_delimiter`, level by level.
async fn list_all(client: Arc<dyn ObjectStore>, prefix: ObjectPath) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![prefix];
    while let Some(dir) = todo.pop() {
        let listed = client.list_with_delimiter(Some(&dir)).await.unwrap();
        out.extend(listed.objects.into_iter().map(|o| o.location.to_string()));
        todo.extend(listed.common_prefixes);
    }
    out
}

/// A release bundle: `manifest.json` (firmware for pos-a) and `files`, as a zstd tar.
pub fn bundle(name: &str, version: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
    let payload: Vec<serde_json::Value> = files
        .iter()
        .map(|(p, d)| {
            serde_json::json!({"path": p, "size": d.len(), "sha256": otter_keys::hash::sha256_hex(d)})
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "name": name, "kind": "firmware", "version": version,
        "hardware": ["pos-a"], "payload": payload, "health": ["/opt/selftest"]
    }))
    .unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let entries = std::iter::once(("manifest.json", &manifest[..])).chain(files.iter().copied());
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    zstd::encode_all(&b.into_inner().unwrap()[..], 3).unwrap()
}

/// A publisher token for the server on `data` (`otter-server token create`), in a 0600 file.
pub fn publisher_token_file(data: &Path, dir: &Path) -> PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    let out = crate::common::command("otter-server")
        .args(["token", "create", "--role", "publisher", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", crate::common::show(&out));
    let file = dir.join("publisher.token");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
        .unwrap();
    std::io::Write::write_all(&mut f, &out.stdout).unwrap();
    file
}

/// `otter-server publish` of `bundle` to the server at `url`; asserts it succeeded and
/// returns its JSON answer.
pub fn publish(url: &str, token_file: &Path, bundle: &[u8], dir: &Path) -> serde_json::Value {
    let file = dir.join(format!("bundle-{}.tar.zst", unique_prefix("b")));
    std::fs::write(&file, bundle).unwrap();
    let out = crate::common::command("otter-server")
        .args(["publish", "--server", url, "--token-file"])
        .arg(token_file)
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", crate::common::show(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `otter-agent tuf ... download` of `target` into `dir/downloads` with `root` as the
/// trusted root, from `metadata_url` and `targets_url`; returns the command's output and
/// where the target lands.
pub fn tuf_download(
    root: &Path,
    metadata_url: &str,
    targets_url: &str,
    target: &str,
    dir: &Path,
) -> (std::process::Output, PathBuf) {
    let md = dir.join("tuf-metadata");
    let downloads = dir.join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    if !md.join("root.json").exists() {
        let out = crate::common::command("otter-agent")
            .args(["tuf", "--metadata-dir"])
            .arg(&md)
            .arg("init")
            .arg(root)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", crate::common::show(&out));
    }
    let out = crate::common::command("otter-agent")
        .args(["tuf", "--metadata-dir"])
        .arg(&md)
        .args(["--metadata-url", metadata_url, "--target-name", target])
        .args(["--target-base-url", targets_url, "--target-dir"])
        .arg(&downloads)
        .arg("download")
        .output()
        .unwrap();
    (out, downloads.join(target))
}
