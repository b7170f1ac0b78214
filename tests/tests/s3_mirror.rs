//! Terminals can fetch the repository from the bucket, or a CDN or any static mirror in
//! front of it, instead of `otter-server`: TUF makes mirrors untrusted.
//!
//! The real server publishes into an S3 bucket (s3s-fs on loopback, or
//! `OTTER_TEST_S3_ENDPOINT`, see `common/s3.rs`) and is stopped. A plain static HTTP server
//! (python3's `http.server`) then serves the bucket's `PREFIX/repo/` files: with s3s-fs its
//! data directory itself, otherwise a copy synced from the bucket. `otter-agent tuf
//! download` with the image's 1.root.json gets and verifies the target from that mirror.
//! Copies of the mirror with a changed target or a forged timestamp are refused, and
//! nothing is written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/s3.rs"]
mod s3;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{show, ServerGuard};
use s3::S3Server;

/// `python3 -m http.server`-style static server on 127.0.0.1 for `dir`; killed on drop.
struct StaticMirror {
    child: Child,
    url: String,
}

impl StaticMirror {
    fn start(dir: &Path) -> StaticMirror {
        let mut child = Command::new("python3")
            .args([
                "-u",
                "-c",
                "import functools, http.server, sys\n\
                 h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])\n\
                 s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), h)\n\
                 print(s.server_address[1], flush=True)\n\
                 s.serve_forever()",
            ])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the static server said {line:?}"));
        StaticMirror {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for StaticMirror {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_agent_downloads_from_a_static_mirror_of_the_bucket_and_refuses_a_tampered_one() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let prefix = s3::unique_prefix("mirror");
    let config = tmp.path().join("server.toml");
    std::fs::write(&config, s3.store_toml(&prefix)).unwrap();
    let data = tmp.path().join("server-data");
    let mut server = ServerGuard::start_env(
        &data,
        &["--config".as_ref(), config.as_os_str()],
        &s3.credentials_env(),
        &tmp.path().join("server.log"),
    );
    let token = s3::publisher_token_file(&data, tmp.path());
    let old = s3::bundle("pos-firmware", "1.0.0", &[("fw.bin", b"old firmware")]);
    let new = s3::bundle("pos-firmware", "2.0.0", &[("fw.bin", b"new firmware")]);
    s3::publish(&server.url, &token, &old, tmp.path());
    s3::publish(&server.url, &token, &new, tmp.path());
    let status = server.stop().expect("the server stops on SIGTERM");
    assert!(status.success(), "{status}");

    // The terminal's image ships the first root; the server is not needed from here on.
    let root = tmp.path().join("1.root.json");
    std::fs::write(
        &root,
        s3.get(&format!("{prefix}/repo/metadata/1.root.json"))
            .unwrap(),
    )
    .unwrap();
    let target = "pos-firmware-2.0.0.tar.zst";

    // The bucket's own files, served by a static HTTP server.
    let served = match s3.bucket_dir() {
        Some(dir) => dir.join(&prefix).join("repo"),
        None => {
            let copy = tmp.path().join("synced");
            s3.download_prefix(&format!("{prefix}/repo"), &copy);
            copy
        }
    };
    let mirror = StaticMirror::start(&served);
    let (out, got) = s3::tuf_download(
        &root,
        &format!("{}/metadata", mirror.url),
        &format!("{}/targets", mirror.url),
        target,
        &tmp.path().join("terminal"),
    );
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(std::fs::read(&got).unwrap(), new);
    drop(mirror);

    // A mirror that changed the target (same length) is refused; nothing is kept.
    let bad = tmp.path().join("bad-target");
    s3.download_prefix(&format!("{prefix}/repo"), &bad);
    let sha = otter_keys::hash::sha256_hex(&new);
    let file = bad.join(format!("targets/{sha}.{target}"));
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    let mirror = StaticMirror::start(&bad);
    let terminal = tmp.path().join("terminal-2");
    let (out, got) = s3::tuf_download(
        &root,
        &format!("{}/metadata", mirror.url),
        &format!("{}/targets", mirror.url),
        target,
        &terminal,
    );
    assert!(!out.status.success(), "{}", show(&out));
    assert!(show(&out).contains("hash mismatch"), "{}", show(&out));
    assert!(!got.exists(), "a refused target is not kept");
    assert_eq!(
        std::fs::read_dir(terminal.join("downloads"))
            .unwrap()
            .count(),
        0,
        "no partial file is left"
    );
    drop(mirror);

    // A mirror that forges the timestamp (its signature no longer matches) is refused.
    let forged = tmp.path().join("forged-timestamp");
    s3.download_prefix(&format!("{prefix}/repo"), &forged);
    let ts = forged.join("metadata/timestamp.json");
    let text = std::fs::read_to_string(&ts).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let v = json["signed"]["version"].as_u64().unwrap();
    json["signed"]["version"] = (v + 1).into();
    std::fs::write(&ts, serde_json::to_vec(&json).unwrap()).unwrap();
    let mirror = StaticMirror::start(&forged);
    let (out, got) = s3::tuf_download(
        &root,
        &format!("{}/metadata", mirror.url),
        &format!("{}/targets", mirror.url),
        target,
        &tmp.path().join("terminal-3"),
    );
    assert!(!out.status.success(), "{}", show(&out));
    assert!(show(&out).contains("valid signature"), "{}", show(&out));
    assert!(!got.exists());
}
