//! A restart on the same data dir serves the same repository: same root, same keys, no new
//! token, immutable files untouched (same ETag); and two servers never share a data dir.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{client, config, fetch_and_verify, run, start};
use otter_server::datadir::DataDirError;
use otter_server::{Server, ServerError};
use reqwest::header::ETAG;

#[test]
fn a_restart_reuses_the_repository() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let c = client();

        let (srv, token) = start(config(dir.path())).await;
        assert!(token.is_some());
        let first = fetch_and_verify(&c, &srv).await;
        let etag = c
            .head(srv.url("/repo/metadata/1.root.json"))
            .send()
            .await
            .unwrap()
            .headers()[ETAG]
            .clone();
        let root_key = std::fs::read(dir.path().join("keys/root.key")).unwrap();
        srv.stop().await;

        let (srv, token) = start(config(dir.path())).await;
        assert!(token.is_none(), "no new token on a restart");
        let second = fetch_and_verify(&c, &srv).await;
        assert_eq!(second.root_bytes, first.root_bytes, "same root");
        assert_eq!(
            second.timestamp.signed().version,
            first.timestamp.signed().version,
            "nothing was due, nothing re-signed"
        );
        let etag2 = c
            .head(srv.url("/repo/metadata/1.root.json"))
            .send()
            .await
            .unwrap()
            .headers()[ETAG]
            .clone();
        assert_eq!(etag2, etag, "immutable files are not rewritten");
        assert_eq!(
            std::fs::read(dir.path().join("keys/root.key")).unwrap(),
            root_key
        );
        let db = rusqlite::Connection::open(dir.path().join("otter.db")).unwrap();
        let tokens: i64 = db
            .query_row("SELECT COUNT(*) FROM api_tokens", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tokens, 1);
        drop(db);
        srv.stop().await;
    });
}

#[test]
fn a_store_that_lost_files_is_repaired_from_the_database() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let c = client();
        let (srv, _) = start(config(dir.path())).await;
        let first = fetch_and_verify(&c, &srv).await;
        srv.stop().await;
        std::fs::remove_dir_all(dir.path().join("store/repo")).unwrap();

        let (srv, _) = start(config(dir.path())).await;
        let second = fetch_and_verify(&c, &srv).await;
        assert_eq!(second.root_bytes, first.root_bytes);
        srv.stop().await;
    });
}

#[test]
fn a_second_server_cannot_take_a_data_dir_in_use() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, _) = start(config(dir.path())).await;
        let err = match Server::open(config(dir.path())).await {
            Ok(_) => panic!("a second server opened a data dir in use"),
            Err(e) => e,
        };
        assert!(
            matches!(err, ServerError::DataDir(DataDirError::Locked { .. })),
            "{err}"
        );
        srv.stop().await;
    });
}

#[test]
fn a_foreign_directory_is_refused() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("photo.jpg"), b"not otter").unwrap();
        let err = match Server::open(config(dir.path())).await {
            Ok(_) => panic!("a non-empty foreign directory was taken"),
            Err(e) => e,
        };
        assert!(
            matches!(err, ServerError::DataDir(DataDirError::Foreign { .. })),
            "{err}"
        );
    });
}
