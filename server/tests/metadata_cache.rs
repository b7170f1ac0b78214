//! Metadata files are served from memory (`store::cache`) and targets straight from their
//! local file, and neither may ever be staler or different from what the store holds: a
//! publish is visible on the very next request (also for names that were missing before),
//! polls during a publish never see the timestamp go back, a restart serves what the store
//! holds, entity tags are the object store's, and large targets stream whole and in ranges.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{bundle, client, config, fetch_and_verify, get_ok, make_token, publish, run, start};
use otter_keys::metadata::{Metadata, Timestamp};
use otter_server::config::StoreConfig;
use otter_server::store::{entity_tag, Store};
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_NONE_MATCH, RANGE};

fn timestamp_version(bytes: &[u8]) -> u64 {
    Metadata::<Timestamp>::from_bytes(bytes, 1 << 20)
        .unwrap()
        .signed()
        .version
}

/// The entity tag the object store itself gives `key` (what the server sent before files
/// were cached or read directly).
async fn store_etag(data_dir: &std::path::Path, key: &str) -> String {
    let store = Store::open(&StoreConfig::default(), &data_dir.join("store")).unwrap();
    entity_tag(
        &store
            .head(key)
            .await
            .unwrap()
            .expect("the file is in the store"),
    )
}

#[test]
fn a_publish_is_visible_at_once_and_polls_never_go_back() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, admin) = start(config(dir.path())).await;
        let c = client();
        let (_, publisher) = make_token(&c, &srv, &admin.unwrap(), "publisher").await;
        let ts_url = srv.url("/repo/metadata/timestamp.json");
        let before = get_ok(&c, &ts_url).await;
        let v1 = timestamp_version(&before);
        let etag1 = c.get(&ts_url).send().await.unwrap().headers()[ETAG]
            .to_str()
            .unwrap()
            .to_owned();
        // The files the publish will create, asked for (and found missing) first.
        for name in ["2.targets.json", "2.snapshot.json"] {
            let r = c
                .get(srv.url(&format!("/repo/metadata/{name}")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 404, "{name} before the publish");
        }

        // Poll the timestamp as fast as possible while publishing.
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let (c, url, stop) = (c.clone(), ts_url.clone(), Arc::clone(&stop));
            actix_web::rt::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    seen.push(timestamp_version(&get_ok(&c, &url).await));
                }
                seen
            })
        };
        for v in ["1.0.0", "1.1.0"] {
            let payload = vec![b'x'; 1000];
            let (s, body) = publish(
                &c,
                &srv,
                &publisher,
                bundle("pinpad", v, &[("p", &payload[..])]),
            )
            .await;
            assert_eq!(s, 201, "{body}");
            // The very next request sees the new timestamp, and the files it names.
            let now = get_ok(&c, &ts_url).await;
            let expected = body["versions"]["timestamp"].as_u64().unwrap();
            assert_eq!(timestamp_version(&now), expected, "after publishing {v}");
            let on_disk =
                std::fs::read(dir.path().join("store/repo/metadata/timestamp.json")).unwrap();
            assert_eq!(now, on_disk, "served bytes are the store's");
            fetch_and_verify(&c, &srv).await;
        }
        stop.store(true, Ordering::SeqCst);
        let seen = poller.await.unwrap();
        assert!(!seen.is_empty());
        assert!(
            seen.windows(2).all(|w| w[0] <= w[1]),
            "the timestamp went back during a publish: {seen:?}"
        );
        assert!(seen[0] >= v1);

        // Names that were missing are served now.
        for name in ["2.targets.json", "2.snapshot.json"] {
            let bytes = get_ok(&c, &srv.url(&format!("/repo/metadata/{name}"))).await;
            let on_disk = std::fs::read(dir.path().join("store/repo/metadata").join(name)).unwrap();
            assert_eq!(bytes, on_disk, "{name}");
        }

        // Entity tags: the store's; the old one no longer matches, the new one does.
        let r = c
            .get(&ts_url)
            .header(IF_NONE_MATCH, &etag1)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let etag = r.headers()[ETAG].to_str().unwrap().to_owned();
        assert_ne!(etag, etag1);
        assert_eq!(
            etag,
            store_etag(dir.path(), "repo/metadata/timestamp.json").await
        );
        let r = c
            .get(&ts_url)
            .header(IF_NONE_MATCH, &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 304);
        // A range of a file served from memory.
        let whole = get_ok(&c, &ts_url).await;
        let r = c
            .get(&ts_url)
            .header(RANGE, "bytes=5-14")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206);
        assert_eq!(
            r.headers()[CONTENT_RANGE],
            format!("bytes 5-14/{}", whole.len()).as_str()
        );
        assert_eq!(r.bytes().await.unwrap().to_vec(), whole[5..15].to_vec());
        srv.stop().await;
    });
}

#[test]
fn a_restart_serves_what_the_store_holds() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let c = client();
        let ts_path = dir.path().join("store/repo/metadata/timestamp.json");
        let (srv, _) = start(config(dir.path())).await;
        let first = get_ok(&c, &srv.url("/repo/metadata/timestamp.json")).await;
        srv.stop().await;

        // Changed behind the server's back while it was down: the restarted server must
        // not serve what it held in memory before, and repairs the file from its database.
        std::fs::write(&ts_path, b"{\"not\": \"the timestamp\"}").unwrap();
        let (srv, _) = start(config(dir.path())).await;
        let served = get_ok(&c, &srv.url("/repo/metadata/timestamp.json")).await;
        assert_eq!(served, first, "the database's timestamp, republished");
        assert_eq!(served, std::fs::read(&ts_path).unwrap());
        let r = c
            .head(srv.url("/repo/metadata/timestamp.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()[CONTENT_LENGTH],
            served.len().to_string().as_str()
        );
        assert_eq!(
            r.headers()[ETAG].to_str().unwrap(),
            store_etag(dir.path(), "repo/metadata/timestamp.json").await
        );
        fetch_and_verify(&c, &srv).await;
        srv.stop().await;
    });
}

#[test]
fn large_targets_stream_whole_and_in_ranges() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, _) = start(config(dir.path())).await;
        let c = client();
        // Several read chunks and a ragged end.
        let body: Vec<u8> = (0..(3 * 256 * 1024 + 1234))
            .map(|i: usize| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let name = format!("{}.big.bin", otter_keys::hash::sha256_hex(&body));
        let targets = dir.path().join("store/repo/targets");
        std::fs::create_dir_all(&targets).unwrap();
        std::fs::write(targets.join(&name), &body).unwrap();
        let url = srv.url(&format!("/repo/targets/{name}"));

        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[CONTENT_LENGTH], body.len().to_string().as_str());
        assert_eq!(
            r.headers()[ETAG].to_str().unwrap(),
            store_etag(dir.path(), &format!("repo/targets/{name}")).await,
            "the same entity tag as the object store gives"
        );
        assert!(r.bytes().await.unwrap().to_vec() == body, "whole file");

        let n = body.len();
        for (start, end) in [
            (0, 1),
            (262_143, 262_145),
            (100_000, 700_000),
            (n - 1, n),
            (5, n),
        ] {
            let r = c
                .get(&url)
                .header(RANGE, format!("bytes={start}-{}", end - 1))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 206, "{start}-{end}");
            assert_eq!(
                r.headers()[CONTENT_RANGE],
                format!("bytes {start}-{}/{n}", end - 1).as_str()
            );
            assert!(
                r.bytes().await.unwrap().to_vec() == body[start..end],
                "bytes {start}..{end}"
            );
        }
        // Gone from the store: 404, not a stale copy.
        std::fs::remove_file(targets.join(&name)).unwrap();
        assert_eq!(c.get(&url).send().await.unwrap().status(), 404);
        srv.stop().await;
    });
}
