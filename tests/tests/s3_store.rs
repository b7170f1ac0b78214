//! The real `otter-server` with its store in an S3 bucket on a real S3-compatible server
//! (s3s-fs on loopback, or the one named by `OTTER_TEST_S3_ENDPOINT`, see `common/s3.rs`):
//!
//! - a fresh development repository is written to `s3://BUCKET/PREFIX`, a bundle published
//!   with `otter-server publish` lands there, and `/repo` serves it from the bucket with
//!   ETags, ranges and 304s;
//! - `otter-agent tuf download` (the agent's TUF client) and python-tuf's `ngclient`
//!   download the target, checked against the signed metadata;
//! - after a restart on the same data dir and bucket the server serves the same repository;
//! - a server with a new data dir refuses to overwrite the repository in the bucket;
//! - the S3 secret key never appears in the server's output.
//!
//! Needs s3s-fs (`scripts/s3s-fs.sh`), the built binaries (`cargo build --workspace`),
//! curl, and the python-tuf venv (`scripts/python-venv.sh`). Never skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/s3.rs"]
mod s3;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{command, show, ServerGuard};
use s3::S3Server;

/// `curl -sS -D - -o /dev/null` with `headers`: the status line and response headers,
/// lower-cased.
fn curl_head(url: &str, headers: &[&str]) -> String {
    let mut c = Command::new("curl");
    c.args(["-sS", "-D", "-", "-o", "/dev/null"]);
    for h in headers {
        c.args(["-H", h]);
    }
    let out = c.arg(url).output().expect("curl is installed");
    assert!(out.status.success(), "{}", show(&out));
    String::from_utf8(out.stdout).unwrap().to_ascii_lowercase()
}

fn curl_body(url: &str, headers: &[&str]) -> Vec<u8> {
    let mut c = Command::new("curl");
    c.args(["-sS", "--fail"]);
    for h in headers {
        c.args(["-H", h]);
    }
    let out = c.arg(url).output().expect("curl is installed");
    assert!(out.status.success(), "{}", show(&out));
    out.stdout
}

fn header<'a>(head: &'a str, name: &str) -> &'a str {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} header in:\n{head}"))
        .trim()
}

/// The venv's python with python-tuf (or `OTTER_PYTHON`).
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("OTTER_PYTHON") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        p.exists(),
        "no python-tuf environment at {}: run scripts/python-venv.sh first (or set OTTER_PYTHON)",
        p.display()
    );
    p
}

const PYTHON_TUF_CLIENT: &str = r#"
import sys, tempfile
from tuf.ngclient import Updater

base, name, out_dir, root_path = sys.argv[1:5]
with open(root_path, "rb") as f:
    root = f.read()
updater = Updater(
    metadata_dir=tempfile.mkdtemp(),
    metadata_base_url=base + "/repo/metadata/",
    target_dir=out_dir,
    target_base_url=base + "/repo/targets/",
    bootstrap=root,
)
updater.refresh()
info = updater.get_targetinfo(name)
if info is None:
    sys.exit("python-tuf found no target " + name)
print(updater.download_target(info))
"#;

/// Runs `otter-server serve` until it exits (a start that must fail); killed after 60 s.
fn serve_expecting_exit(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("the server kept running:\n{}", show(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn an_s3_backed_server_publishes_serves_and_restarts_on_the_same_bucket() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let prefix = s3::unique_prefix("store");
    let config = tmp.path().join("server.toml");
    std::fs::write(&config, s3.store_toml(&prefix)).unwrap();
    let data = tmp.path().join("server-data");
    let log = tmp.path().join("server.log");
    let extra = ["--config".as_ref(), config.as_os_str()];
    let env = s3.credentials_env();
    let mut server = ServerGuard::start_env(&data, &extra, &env, &log);

    // The fresh repository is in the bucket, under the prefix, and not on local disk.
    let key = |rest: &str| format!("{prefix}/{rest}");
    let root_bytes = s3
        .get(&key("repo/metadata/1.root.json"))
        .expect("1.root.json is in the bucket");
    assert!(s3.get(&key("repo/metadata/timestamp.json")).is_some());
    assert!(
        !data.join("store").exists(),
        "nothing goes to the local store"
    );
    let root = tmp.path().join("1.root.json");
    std::fs::write(&root, &root_bytes).unwrap();
    assert_eq!(
        curl_body(&format!("{}/repo/metadata/1.root.json", server.url), &[]),
        root_bytes
    );

    // Publish: the bundle becomes a target in the bucket.
    let token = s3::publisher_token_file(&data, tmp.path());
    let bytes = s3::bundle("pos-firmware", "3.0.0", &[("fw.bin", b"firmware in S3")]);
    let answer = s3::publish(&server.url, &token, &bytes, tmp.path());
    let target = "pos-firmware-3.0.0.tar.zst";
    assert!(answer.to_string().contains(target), "{answer}");
    let sha = otter_keys::hash::sha256_hex(&bytes);
    assert_eq!(
        s3.get(&key(&format!("repo/targets/{sha}.{target}")))
            .as_deref(),
        Some(&bytes[..]),
        "the target is stored content-addressed in the bucket"
    );

    // Served from the bucket: ETag, Last-Modified, one range, If-None-Match, If-Range.
    let url = format!("{}/repo/targets/{sha}.{target}", server.url);
    let head = curl_head(&url, &[]);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(header(&head, "content-length"), bytes.len().to_string());
    let etag = header(&head, "etag").to_owned();
    assert!(etag.starts_with('"') && etag.len() > 2, "{head}");
    assert!(head.contains("last-modified: "), "{head}");
    let part = curl_body(&url, &["Range: bytes=4-11"]);
    assert_eq!(part, bytes[4..12]);
    let head = curl_head(&url, &["Range: bytes=4-11"]);
    assert!(head.starts_with("http/1.1 206"), "{head}");
    assert_eq!(
        header(&head, "content-range"),
        format!("bytes 4-11/{}", bytes.len())
    );
    let head = curl_head(&url, &[&format!("If-None-Match: {etag}")]);
    assert!(head.starts_with("http/1.1 304"), "{head}");
    let head = curl_head(&url, &["Range: bytes=0-3", "If-Range: \"other\""]);
    assert!(
        head.starts_with("http/1.1 200"),
        "a stale If-Range gets the whole file: {head}"
    );
    let head = curl_head(
        &format!("{}/repo/targets/{sha}.nothing.tar.zst", server.url),
        &[],
    );
    assert!(head.starts_with("http/1.1 404"), "{head}");

    // The agent's TUF client downloads and verifies it.
    let agent_dir = tmp.path().join("agent");
    let (out, got) = s3::tuf_download(
        &root,
        &format!("{}/repo/metadata", server.url),
        &format!("{}/repo/targets", server.url),
        target,
        &agent_dir,
    );
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(std::fs::read(&got).unwrap(), bytes);

    // So does python-tuf, the reference client.
    let script = tmp.path().join("client.py");
    std::fs::write(&script, PYTHON_TUF_CLIENT).unwrap();
    let py_out = tmp.path().join("python-downloads");
    std::fs::create_dir(&py_out).unwrap();
    let out = Command::new(python())
        .arg(&script)
        .arg(&server.url)
        .arg(target)
        .arg(&py_out)
        .arg(&root)
        .output()
        .unwrap();
    assert!(out.status.success(), "python-tuf: {}", show(&out));
    let path = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);

    // Restart on the same data dir and bucket: the same repository, and it goes on.
    let timestamp = curl_body(&format!("{}/repo/metadata/timestamp.json", server.url), &[]);
    let status = server.stop().expect("the server stops on SIGTERM");
    assert!(status.success(), "{status}");
    let mut server = ServerGuard::start_env(&data, &extra, &env, &tmp.path().join("server2.log"));
    assert_eq!(
        curl_body(&format!("{}/repo/metadata/timestamp.json", server.url), &[]),
        timestamp,
        "the restarted server serves the same timestamp"
    );
    let more = s3::bundle("pos-firmware", "3.1.0", &[("fw.bin", b"firmware 3.1")]);
    s3::publish(&server.url, &token, &more, tmp.path());
    let (out, got) = s3::tuf_download(
        &root,
        &format!("{}/repo/metadata", server.url),
        &format!("{}/repo/targets", server.url),
        "pos-firmware-3.1.0.tar.zst",
        &agent_dir,
    );
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(std::fs::read(&got).unwrap(), more);
    let status = server.stop().expect("the server stops on SIGTERM");
    assert!(status.success(), "{status}");

    // A server with a new data dir on the same prefix must not replace that repository.
    let out = serve_expecting_exit(
        command("otter-server")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(tmp.path().join("other-data"))
            .args(extra),
    );
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already holds a TUF repository"),
        "{}",
        show(&out)
    );
    assert_eq!(
        s3.get(&key("repo/metadata/1.root.json")).unwrap(),
        root_bytes,
        "the bucket's root is untouched"
    );

    // Wrong credentials: a clear refusal, and the secret is in no output.
    let out = serve_expecting_exit(
        command("otter-server")
            .env("AWS_ACCESS_KEY_ID", &s3.access_key)
            .env("AWS_SECRET_ACCESS_KEY", "not-the-secret-key")
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(tmp.path().join("bad-creds-data"))
            .args(extra),
    );
    assert!(!out.status.success(), "{}", show(&out));
    let text = show(&out);
    assert!(!text.contains("not-the-secret-key"), "{text}");
    for log in ["server.log", "server2.log"] {
        let text = std::fs::read_to_string(tmp.path().join(log)).unwrap();
        assert!(
            text.contains(&format!("s3://{}/{prefix}", s3.bucket)),
            "{text}"
        );
        assert!(
            !text.contains(&s3.secret_key),
            "the secret key is logged: {text}"
        );
    }
}

#[test]
fn an_s3_store_without_credentials_is_refused_at_start() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("server.toml");
    std::fs::write(&config, s3.store_toml(&s3::unique_prefix("nocreds"))).unwrap();
    let out = serve_expecting_exit(
        command("otter-server")
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(tmp.path().join("data"))
            .arg("--config")
            .arg(&config),
    );
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("AWS_ACCESS_KEY_ID"),
        "{}",
        show(&out)
    );
}

/// The ` ```toml store ` blocks of docs/storage.md.
fn storage_doc_examples() -> Vec<String> {
    let doc = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/storage.md");
    let text = std::fs::read_to_string(&doc).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim_end() == "```toml store" => current = Some(String::new()),
            Some(_) if line.starts_with("```") => blocks.push(current.take().unwrap()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    blocks
}

/// An example config pointed at the test store: `url` at a fresh prefix of the test bucket
/// (or a temporary directory for `file://`), `endpoint` at the test server (then
/// `allow_http = true`); every other line as written.
fn pointed_at(example: &str, s3: &S3Server, dir: &std::path::Path) -> String {
    let mut out = String::new();
    let is_s3 = example.contains("url = \"s3://");
    for line in example.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        match key {
            "url" if is_s3 => out.push_str(&format!(
                "url = \"s3://{}/{}\"\n",
                s3.bucket,
                s3::unique_prefix("example")
            )),
            "url" => out.push_str(&format!("url = \"file://{}\"\n", dir.display())),
            "endpoint" => out.push_str(&format!("endpoint = \"{}\"\n", s3.endpoint)),
            "allow_http" => {}
            _ => out.push_str(&format!("{line}\n")),
        }
        if line.trim() == "[store]" && is_s3 {
            out.push_str("allow_http = true\n");
        }
    }
    out
}

#[test]
fn the_store_examples_of_the_docs_and_deploy_start_a_server() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut examples = storage_doc_examples();
    assert!(
        examples.len() >= 2,
        "docs/storage.md has its ```toml store examples"
    );
    examples.push(std::fs::read_to_string(root.join("deploy/garage/otter-server.toml")).unwrap());
    assert!(
        examples.iter().any(|e| e.contains("s3://"))
            && examples.iter().any(|e| e.contains("file://")),
        "{examples:?}"
    );
    for (i, example) in examples.iter().enumerate() {
        let config = tmp.path().join(format!("example-{i}.toml"));
        let text = pointed_at(example, &s3, &tmp.path().join(format!("store-{i}")));
        std::fs::write(&config, &text).unwrap();
        let data = tmp.path().join(format!("data-{i}"));
        let mut server = ServerGuard::start_env(
            &data,
            &["--config".as_ref(), config.as_os_str()],
            &s3.credentials_env(),
            &tmp.path().join(format!("example-{i}.log")),
        );
        let body = curl_body(&format!("{}/healthz", server.url), &[]);
        assert!(
            String::from_utf8_lossy(&body).contains("\"status\":\"ok\""),
            "example {i}:\n{text}\n{}",
            String::from_utf8_lossy(&body)
        );
        let status = server.stop().expect("the server stops on SIGTERM");
        assert!(status.success(), "example {i}: {status}");
    }
}

/// `len` bytes that zstd cannot shrink (xorshift), so a bundle is as large as its payload.
fn incompressible(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn a_bundle_larger_than_one_part_goes_up_in_parts_and_comes_back_whole() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let prefix = s3::unique_prefix("large");
    let config = tmp.path().join("server.toml");
    std::fs::write(&config, s3.store_toml(&prefix)).unwrap();
    let data = tmp.path().join("server-data");
    let mut server = ServerGuard::start_env(
        &data,
        &["--config".as_ref(), config.as_os_str()],
        &s3.credentials_env(),
        &tmp.path().join("server.log"),
    );
    // Over 8 MiB: the server stores it as an S3 multipart upload (two parts).
    let payload = incompressible(9 * 1024 * 1024 + 123, 0x5eed_1234_abcd_0001);
    let bytes = s3::bundle("pos-firmware", "9.0.0", &[("fw.bin", &payload)]);
    assert!(bytes.len() > 9 * 1024 * 1024);
    let token = s3::publisher_token_file(&data, tmp.path());
    s3::publish(&server.url, &token, &bytes, tmp.path());
    let target = "pos-firmware-9.0.0.tar.zst";
    let sha = otter_keys::hash::sha256_hex(&bytes);
    let stored = s3
        .get(&format!("{prefix}/repo/targets/{sha}.{target}"))
        .unwrap();
    assert!(stored == bytes, "the object in the bucket is the bundle");

    // A range across the 8 MiB part boundary, then the whole file through the TUF client.
    let url = format!("{}/repo/targets/{sha}.{target}", server.url);
    let boundary = 8 * 1024 * 1024;
    let part = curl_body(
        &url,
        &[&format!("Range: bytes={}-{}", boundary - 10, boundary + 9)],
    );
    assert!(part == bytes[boundary - 10..boundary + 10]);
    let root = tmp.path().join("1.root.json");
    std::fs::write(
        &root,
        s3.get(&format!("{prefix}/repo/metadata/1.root.json"))
            .unwrap(),
    )
    .unwrap();
    let (out, got) = s3::tuf_download(
        &root,
        &format!("{}/repo/metadata", server.url),
        &format!("{}/repo/targets", server.url),
        target,
        &tmp.path().join("agent"),
    );
    assert!(out.status.success(), "{}", show(&out));
    assert!(std::fs::read(&got).unwrap() == bytes);
    let status = server.stop().expect("the server stops on SIGTERM");
    assert!(status.success(), "{status}");
}
