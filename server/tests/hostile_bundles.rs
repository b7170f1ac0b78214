//! Hostile or broken uploads are refused with a 4xx JSON error naming the problem, and
//! nothing is published: no new metadata version, no release row.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{
    api, bundle, client, config, fetch_and_verify, manifest_for, publish, run, start, tar_zst,
    TarEntry,
};
use tar::EntryType;

fn with_manifest(m: serde_json::Value, mut rest: Vec<TarEntry>) -> Vec<u8> {
    let mut entries = vec![TarEntry::file(
        "manifest.json",
        &serde_json::to_vec(&m).unwrap(),
    )];
    entries.append(&mut rest);
    tar_zst(&entries)
}

fn special(path: &str, kind: EntryType, link: Option<&str>) -> TarEntry {
    TarEntry {
        path: path.as_bytes().to_vec(),
        kind,
        data: Vec::new(),
        link: link.map(|l| l.as_bytes().to_vec()),
    }
}

/// Sends headers (and optionally some body) on a raw connection and reads the answer,
/// ignoring write errors from a server that answers early.
fn raw_post(addr: std::net::SocketAddr, token: &str, headers: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST /api/v1/releases HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n{headers}Connection: close\r\n\r\n"
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
    // Read one response (headers and Content-Length bytes), not until the server gives up
    // waiting for this side to close.
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= len {
                break;
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[test]
fn hostile_bundles_are_refused_and_change_nothing() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.publishing.max_upload_bytes = 256 * 1024;
        cfg.publishing.max_unpacked_bytes = 1024 * 1024;
        let (srv, admin) = start(cfg).await;
        let admin = admin.unwrap();
        let c = client();
        let before = fetch_and_verify(&c, &srv).await;

        let ok_file: &[u8] = b"payload";
        let good_manifest = manifest_for("fw", "1.0.0", &[("a.bin", ok_file)]);
        let mut bad_version = good_manifest.clone();
        bad_version["version"] = "1.0".into();
        let mut bad_name = good_manifest.clone();
        bad_name["name"] = "../../etc".into();
        let mut lying = good_manifest.clone();
        lying["payload"][0]["size"] = 999.into();
        let bomb_data = vec![0u8; 4 * 1024 * 1024];
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "not zstd",
                b"plain bytes, not a bundle".to_vec(),
                "bundle_not_zstd",
            ),
            (
                "zstd, not tar",
                zstd::encode_all(&b"hello world, not a tar archive at all"[..], 3).unwrap(),
                "bundle_not_tar",
            ),
            (
                "no manifest",
                tar_zst(&[TarEntry::file("a.bin", ok_file)]),
                "manifest_missing",
            ),
            (
                "manifest not JSON",
                tar_zst(&[
                    TarEntry::file("manifest.json", b"{nope"),
                    TarEntry::file("a.bin", ok_file),
                ]),
                "manifest_invalid",
            ),
            (
                "bad version",
                with_manifest(bad_version, vec![TarEntry::file("a.bin", ok_file)]),
                "invalid_version",
            ),
            (
                "bad name",
                with_manifest(bad_name, vec![TarEntry::file("a.bin", ok_file)]),
                "invalid_name",
            ),
            (
                "lying size",
                with_manifest(lying, vec![TarEntry::file("a.bin", ok_file)]),
                "payload_mismatch",
            ),
            (
                "unlisted file",
                with_manifest(
                    good_manifest.clone(),
                    vec![
                        TarEntry::file("a.bin", ok_file),
                        TarEntry::file("extra", b"x"),
                    ],
                ),
                "payload_mismatch",
            ),
            (
                "missing file",
                with_manifest(good_manifest.clone(), vec![]),
                "payload_mismatch",
            ),
            (
                "path traversal",
                with_manifest(
                    good_manifest.clone(),
                    vec![
                        TarEntry::file("a.bin", ok_file),
                        TarEntry::file("../evil", b"x"),
                    ],
                ),
                "bundle_unsafe_path",
            ),
            (
                "absolute path",
                with_manifest(
                    good_manifest.clone(),
                    vec![
                        TarEntry::file("a.bin", ok_file),
                        TarEntry::file("/etc/passwd", b"x"),
                    ],
                ),
                "bundle_unsafe_path",
            ),
            (
                "symlink out",
                with_manifest(
                    good_manifest.clone(),
                    vec![
                        TarEntry::file("a.bin", ok_file),
                        special("link", EntryType::Symlink, Some("/etc/shadow")),
                    ],
                ),
                "bundle_forbidden_entry",
            ),
            (
                "hard link",
                with_manifest(
                    good_manifest.clone(),
                    vec![
                        TarEntry::file("a.bin", ok_file),
                        special("hl", EntryType::Link, Some("a.bin")),
                    ],
                ),
                "bundle_forbidden_entry",
            ),
            (
                "device file",
                with_manifest(
                    good_manifest.clone(),
                    vec![
                        TarEntry::file("a.bin", ok_file),
                        special("sda", EntryType::Block, None),
                    ],
                ),
                "bundle_forbidden_entry",
            ),
            (
                "char device",
                with_manifest(
                    good_manifest.clone(),
                    vec![
                        TarEntry::file("a.bin", ok_file),
                        special("null", EntryType::Char, None),
                    ],
                ),
                "bundle_forbidden_entry",
            ),
            (
                "duplicate entry",
                with_manifest(
                    good_manifest.clone(),
                    vec![
                        TarEntry::file("a.bin", ok_file),
                        TarEntry::file("a.bin", ok_file),
                    ],
                ),
                "bundle_duplicate_entry",
            ),
            (
                "zstd bomb",
                with_manifest(
                    manifest_for("fw", "1.0.0", &[("zeros", &bomb_data)]),
                    vec![TarEntry::file("zeros", &bomb_data)],
                ),
                "bundle_unpacked_too_large",
            ),
        ];
        for (what, bytes, code) in cases {
            assert!(bytes.len() < 256 * 1024, "{what} fits the upload cap");
            let (s, v) = publish(&c, &srv, &admin, bytes).await;
            assert!((400..500).contains(&s), "{what}: {s} {v}");
            assert_eq!(v["error"]["code"], code, "{what}: {v}");
            assert!(!v["error"]["message"].as_str().unwrap().is_empty());
        }

        // Oversized: refused from the declared length, and while streaming without one.
        let addr = srv.addr;
        let tok = admin.clone();
        let (s, text) = tokio::task::spawn_blocking(move || {
            raw_post(addr, &tok, "Content-Length: 10000000000\r\n", b"")
        })
        .await
        .unwrap();
        assert_eq!(s, 413, "{text}");
        assert!(text.contains("upload_too_large"), "{text}");
        let tok = admin.clone();
        let (s, text) = tokio::task::spawn_blocking(move || {
            let mut body = Vec::new();
            for _ in 0..40 {
                let chunk = vec![b'z'; 16 * 1024];
                body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                body.extend_from_slice(&chunk);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\n\r\n");
            raw_post(addr, &tok, "Transfer-Encoding: chunked\r\n", &body)
        })
        .await
        .unwrap();
        assert_eq!(s, 413, "{text}");
        assert!(text.contains("upload_too_large"), "{text}");

        // Nothing was published.
        let after = fetch_and_verify(&c, &srv).await;
        assert_eq!(
            after.targets.signed().version,
            before.targets.signed().version
        );
        assert_eq!(
            after.timestamp.signed().version,
            before.timestamp.signed().version
        );
        let (_, v) = api(&c, "GET", &srv.url("/api/v1/releases"), Some(&admin), None).await;
        assert_eq!(v["releases"], serde_json::json!([]));

        // A duplicate version is refused by the database, whatever the contents.
        let (s, _) = publish(
            &c,
            &srv,
            &admin,
            bundle("fw", "1.0.0", &[("a.bin", ok_file)]),
        )
        .await;
        assert_eq!(s, 201);
        let once = fetch_and_verify(&c, &srv).await.targets.signed().version;
        let (s, v) = publish(
            &c,
            &srv,
            &admin,
            bundle("fw", "1.0.0", &[("other.bin", b"other")]),
        )
        .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (409, Some("conflict")),
            "{v}"
        );
        assert_eq!(
            fetch_and_verify(&c, &srv).await.targets.signed().version,
            once
        );

        // No upload is left behind in the spool directory.
        let left: Vec<_> = std::fs::read_dir(dir.path().join("uploads"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
        srv.stop().await;
    });
}
