//! Files that change in place (timestamp.json, root.json) must be revalidated; versioned
//! metadata and hash-prefixed targets are immutable; errors are never cached.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{client, config, run, start};
use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

#[test]
fn cache_control_follows_the_file_name() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, _) = start(config(dir.path())).await;
        let c = client();

        let body = b"target bytes".to_vec();
        let name = format!("{}.t.bin", otter_keys::hash::sha256_hex(&body));
        let tdir = dir.path().join("store/repo/targets");
        std::fs::create_dir_all(&tdir).unwrap();
        std::fs::write(tdir.join(&name), &body).unwrap();

        for (path, cache, ctype) in [
            (
                "/repo/metadata/timestamp.json",
                "no-cache",
                "application/json",
            ),
            ("/repo/metadata/root.json", "no-cache", "application/json"),
            ("/repo/metadata/1.root.json", IMMUTABLE, "application/json"),
            (
                "/repo/metadata/1.snapshot.json",
                IMMUTABLE,
                "application/json",
            ),
            (
                "/repo/metadata/1.targets.json",
                IMMUTABLE,
                "application/json",
            ),
            (
                &format!("/repo/targets/{name}"),
                IMMUTABLE,
                "application/octet-stream",
            ),
        ] {
            let r = c.get(srv.url(path)).send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            assert_eq!(r.headers()[CACHE_CONTROL], cache, "{path}");
            assert_eq!(r.headers()[CONTENT_TYPE], ctype, "{path}");
            let etag = r.headers()[ETAG].clone();
            // A 304 carries the same caching policy.
            let r = c
                .get(srv.url(path))
                .header(IF_NONE_MATCH, etag)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 304, "{path}");
            assert_eq!(r.headers()[CACHE_CONTROL], cache, "{path}");
        }

        for path in [
            "/repo/metadata/7.root.json",
            "/repo/metadata/..%2Fotter.db",
            "/nowhere",
        ] {
            let r = c.get(srv.url(path)).send().await.unwrap();
            assert!(r.status().is_client_error(), "{path}");
            assert_eq!(r.headers()[CACHE_CONTROL], "no-store", "{path}");
        }
        srv.stop().await;
    });
}
