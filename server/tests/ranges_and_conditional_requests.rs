//! Files are served like static files: HEAD, one byte range (206, Content-Range), 416 for a
//! range past the end, strong ETags, If-None-Match -> 304, If-Range.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{client, config, run, start};
use otter_keys::hash::sha256_hex;
use reqwest::header::{
    ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_NONE_MATCH, IF_RANGE, RANGE,
};

const SIZE: usize = 100_000;

fn content() -> Vec<u8> {
    (0..SIZE).map(|i| (i * 7 % 251) as u8).collect()
}

/// Puts a target file straight into the local store, as publishing will.
fn put_target(data_dir: &std::path::Path, bytes: &[u8]) -> String {
    let name = format!("{}.blob.bin", sha256_hex(bytes));
    let dir = data_dir.join("store/repo/targets");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&name), bytes).unwrap();
    name
}

#[test]
fn head_ranges_and_entity_tags() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, _) = start(config(dir.path())).await;
        let body = content();
        let url = srv.url(&format!("/repo/targets/{}", put_target(dir.path(), &body)));
        let c = client();

        // Whole file.
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[ACCEPT_RANGES], "bytes");
        assert_eq!(r.headers()[CONTENT_LENGTH], SIZE.to_string().as_str());
        let etag = r.headers()[ETAG].to_str().unwrap().to_owned();
        assert!(
            etag.starts_with('"') && etag.ends_with('"'),
            "strong: {etag}"
        );
        assert_eq!(r.bytes().await.unwrap().to_vec(), body);

        // HEAD: same headers, no body; a Range is ignored.
        for range in [None, Some("bytes=0-9")] {
            let mut req = c.head(&url);
            if let Some(v) = range {
                req = req.header(RANGE, v);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()[CONTENT_LENGTH], SIZE.to_string().as_str());
            assert_eq!(r.headers()[ETAG], etag.as_str());
            assert!(r.bytes().await.unwrap().is_empty());
        }

        // Single ranges.
        let n = SIZE as u64;
        for (range, start, end) in [
            ("bytes=0-9", 0, 10),
            ("bytes=99990-", 99_990, n),
            ("bytes=-5", n - 5, n),
            ("bytes=99999-200000", 99_999, n),
            ("bytes=-200000", 0, n),
            ("bytes=1000-1000", 1000, 1001),
        ] {
            let r = c.get(&url).header(RANGE, range).send().await.unwrap();
            assert_eq!(r.status(), 206, "{range}");
            assert_eq!(
                r.headers()[CONTENT_RANGE],
                format!("bytes {start}-{}/{n}", end - 1).as_str(),
                "{range}"
            );
            assert_eq!(r.headers()[ETAG], etag.as_str());
            assert_eq!(
                r.bytes().await.unwrap().to_vec(),
                body[start as usize..end as usize].to_vec(),
                "{range}"
            );
        }

        // Unsatisfiable ranges.
        for range in ["bytes=100000-", "bytes=100000-100010", "bytes=-0"] {
            let r = c.get(&url).header(RANGE, range).send().await.unwrap();
            assert_eq!(r.status(), 416, "{range}");
            assert_eq!(r.headers()[CONTENT_RANGE], "bytes */100000");
            let e: serde_json::Value = r.json().await.unwrap();
            assert_eq!(e["error"]["code"], "range_not_satisfiable");
        }

        // Ranges the server ignores: the whole file.
        for range in ["bytes=0-1,5-6", "bytes=9-2", "lines=1-2"] {
            let r = c.get(&url).header(RANGE, range).send().await.unwrap();
            assert_eq!(r.status(), 200, "{range}");
            assert_eq!(r.bytes().await.unwrap().len(), SIZE);
        }

        // Conditional requests.
        for inm in [etag.clone(), format!("\"nope\", {etag}"), "*".into()] {
            let r = c
                .get(&url)
                .header(IF_NONE_MATCH, &inm)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 304, "{inm}");
            assert_eq!(r.headers()[ETAG], etag.as_str());
            assert!(r.bytes().await.unwrap().is_empty());
        }
        let r = c
            .get(&url)
            .header(IF_NONE_MATCH, "\"other\"")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = c
            .head(&url)
            .header(IF_NONE_MATCH, &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 304);

        // If-Range: the range only for the same file.
        let r = c
            .get(&url)
            .header(RANGE, "bytes=0-9")
            .header(IF_RANGE, &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206);
        let r = c
            .get(&url)
            .header(RANGE, "bytes=0-9")
            .header(IF_RANGE, "\"older\"")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().len(), SIZE);

        srv.stop().await;
    });
}

#[test]
fn metadata_answers_ranges_and_conditionals_too() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, _) = start(config(dir.path())).await;
        let c = client();
        let url = srv.url("/repo/metadata/timestamp.json");
        let full = c.get(&url).send().await.unwrap();
        let etag = full.headers()[ETAG].to_str().unwrap().to_owned();
        let full = full.bytes().await.unwrap().to_vec();
        let r = c.get(&url).header(RANGE, "bytes=-20").send().await.unwrap();
        assert_eq!(r.status(), 206);
        assert_eq!(
            r.bytes().await.unwrap().to_vec(),
            full[full.len() - 20..].to_vec()
        );
        let r = c
            .get(&url)
            .header(IF_NONE_MATCH, &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 304);
        srv.stop().await;
    });
}
