//! `serve` on an empty data dir publishes a valid TUF repository at once: 1.root.json signs
//! itself, and timestamp -> snapshot -> targets verify; the admin token is kept only hashed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{client, config, fetch_and_verify, get_ok, run, start};
use otter_keys::hash::sha256_hex;

#[test]
fn an_empty_data_dir_serves_a_verifiable_repository() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("otter-data");
        let (srv, token) = start(config(&data)).await;
        let token = token.expect("a first start creates a repository and a token");
        let c = client();

        let chain = fetch_and_verify(&c, &srv).await;
        let root = chain.root.signed();
        assert_eq!(root.version, 1);
        assert!(root.consistent_snapshot());
        let mut ids = std::collections::BTreeSet::new();
        for role in ["root", "targets", "snapshot", "timestamp"] {
            let r = root.role(role).unwrap();
            assert_eq!(r.threshold, 1, "{role}");
            assert_eq!(r.keyids.len(), 1, "{role}");
            ids.insert(r.keyids[0].clone());
        }
        assert_eq!(ids.len(), 4, "each role has its own key");
        assert_eq!(chain.timestamp.signed().version, 1);
        assert_eq!(chain.snapshot.signed().version, 1);
        assert_eq!(chain.targets.signed().version, 1);
        assert!(chain.targets.signed().targets.is_empty());

        // root.json is the latest root.
        let alias = get_ok(&c, &srv.url("/repo/metadata/root.json")).await;
        assert_eq!(alias, chain.root_bytes);

        let health: serde_json::Value = c
            .get(srv.url("/healthz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(health["status"], "ok");

        // The database holds the token's hash with role admin, never the token.
        let db = rusqlite::Connection::open(data.join("otter.db")).unwrap();
        let (hash, role): (String, String) = db
            .query_row("SELECT token_sha256, role FROM api_tokens", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(hash, sha256_hex(token.as_bytes()));
        assert_eq!(role, "admin");
        let versions: Vec<(String, i64)> = db
            .prepare("SELECT role, version FROM metadata_versions ORDER BY role")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(versions.len(), 4);
        let migrated: i64 = db
            .query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(migrated, otter_server::db::MIGRATIONS.len() as i64);
        drop(db);
        srv.stop().await;

        // No file in the data dir holds the token.
        let mut stack = vec![data.clone()];
        while let Some(p) = stack.pop() {
            let entries = match std::fs::read_dir(&p) {
                Ok(entries) => entries,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => panic!("listing {}: {err}", p.display()),
            };
            for e in entries {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    // SQLite's -shm/-wal files may be removed while we walk: a file that is
                    // gone holds nothing.
                    let bytes = match std::fs::read(e.path()) {
                        Ok(b) => b,
                        Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(err) => panic!("reading {}: {err}", e.path().display()),
                    };
                    assert!(
                        !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
                        "{} holds the token",
                        e.path().display()
                    );
                }
            }
        }
    });
}

#[test]
fn key_files_and_the_dev_passphrase_are_private() {
    use std::os::unix::fs::PermissionsExt;
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, _) = start(config(dir.path())).await;
        srv.stop().await;
        let keys = dir.path().join("keys");
        for f in [
            "dev-passphrase",
            "root.key",
            "targets.key",
            "snapshot.key",
            "timestamp.key",
        ] {
            let mode = std::fs::metadata(keys.join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let mode = std::fs::metadata(dir.path().join("otter.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    });
}
