//! Deleting backup transfers, and imports that fail half-way, against the real server on
//! loopback with a local store: a deleted transfer is gone for the device (list and fetch)
//! and from the data dir, audited, refused to the wrong roles, 404 when unknown; a delete
//! the store breaks off part-way leaves the transfer hidden and is finished by repeating it
//! (also through `otter-server backups delete-transfer`); an import whose store fails after
//! some objects were written removes them and leaves no catalog row.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backup_support;
mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backup_support::{code, signed, Chain};
use common::cli::cli;
use common::fleet::{enrolled_device, now, TestDevice};
use common::{
    api, assert_audit_verifies, audit_entries, client, config, make_token, run, start, Running,
};
use serde_json::Value;

/// A transfer directory as `otter-keys backup reencrypt` writes it, as a tar: `dead`'s
/// backup (`manifests` signed manifests over `packs` packs each), with stand-in bodies (the
/// server checks their presence, not their contents: it holds no key).
fn transfer_tar(dead: &TestDevice, manifests: usize, packs: usize) -> Vec<u8> {
    let mut chain = Chain::new();
    let mut files: Vec<(String, Vec<u8>)> = vec![(
        "transfer.json".into(),
        serde_json::to_vec(&serde_json::json!({
            "format": 1,
            "device_id": dead.id,
            "device_public_key": hex::encode(dead.key.public_bytes()),
        }))
        .unwrap(),
    )];
    for m in 0..manifests {
        let sealed: Vec<_> = (0..packs)
            .map(|p| chain.pack((m * packs + p) as u8, 3))
            .collect();
        let refs: Vec<_> = sealed.iter().collect();
        let manifest = chain.next(dead, now() - 3600 + m as i64, &refs);
        let seq = manifest.header.sequence;
        files.push((
            format!("manifests/{}/{seq:020}.manifest", dead.id),
            manifest.to_bytes().unwrap(),
        ));
        files.push((
            format!("reencrypted/{}/{seq:020}.body", dead.id),
            format!("re-encrypted body {seq}").into_bytes(),
        ));
        for p in sealed {
            let id = p.id.to_string();
            files.push((format!("packs/{}/{id}", &id[..2]), p.ciphertext));
        }
        chain.sent.push(manifest);
    }
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in &files {
        let mut h = tar::Header::new_ustar();
        h.set_path(path).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// Imports `tar` for `device`; status and answer.
async fn import(
    c: &reqwest::Client,
    srv: &Running,
    token: &str,
    device: &str,
    tar: Vec<u8>,
) -> (u16, Value) {
    let url = srv.url(&format!("/api/v1/devices/{device}/transfers"));
    api(c, "POST", &url, Some(token), Some(tar)).await
}

/// DELETEs transfer `id` of `device` with `token`; status and answer.
async fn delete(
    c: &reqwest::Client,
    srv: &Running,
    token: Option<&str>,
    device: &str,
    id: &str,
) -> (u16, Value) {
    let url = srv.url(&format!("/api/v1/devices/{device}/transfers/{id}"));
    api(c, "DELETE", &url, token, None).await
}

/// The ids and states the admin list shows for `device`.
async fn admin_list(
    c: &reqwest::Client,
    srv: &Running,
    token: &str,
    device: &str,
) -> Vec<(String, String)> {
    let url = srv.url(&format!("/api/v1/devices/{device}/transfers"));
    let (s, v) = api(c, "GET", &url, Some(token), None).await;
    assert_eq!(s, 200, "{v}");
    v["transfers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap().to_owned(),
                t["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The ids the device itself sees.
async fn device_list(c: &reqwest::Client, srv: &Running, dev: &TestDevice) -> Vec<String> {
    let (s, v) = signed(c, srv, dev, "GET", "/api/v1/device/transfers", b"").await;
    assert_eq!(s, 200, "{v}");
    v["transfers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The device's fetch of transfer `which`: status, and the tar's entry names on 200.
async fn device_fetch(
    c: &reqwest::Client,
    srv: &Running,
    dev: &TestDevice,
    which: &str,
) -> (u16, Vec<String>) {
    let path = format!("/api/v1/device/transfers/{which}");
    let h = otter_keys::request::sign_request(&dev.key, &dev.id, "GET", &path, b"", now()).unwrap();
    let mut req = c.get(srv.url(&path));
    for (name, value) in h.pairs() {
        req = req.header(name, value);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap();
    if status != 200 {
        return (status, Vec::new());
    }
    let mut names = Vec::new();
    for e in tar::Archive::new(&body[..]).entries().unwrap() {
        names.push(String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap());
    }
    (status, names)
}

/// Everything under `dir`, directories too.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries {
            let e = e.unwrap();
            out.push(e.path());
            out.extend(tree(&e.path()));
        }
    }
    out
}

/// Every regular file under `dir` (none when it does not exist).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// A running server with an admin token, and two enrolled devices: the dead terminal whose
/// backups are transferred and its replacement.
struct Site {
    dir: tempfile::TempDir,
    /// The local store's `transfers/` directory.
    transfers_dir: PathBuf,
    srv: Running,
    admin: String,
    c: reqwest::Client,
    dead: TestDevice,
    new: TestDevice,
}

async fn site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let transfers_dir = cfg.default_store_dir().join("transfers");
    let (srv, admin) = start(cfg).await;
    let admin = admin.unwrap();
    let c = client();
    let dead = enrolled_device(&c, &srv, &admin, None).await;
    let new = enrolled_device(&c, &srv, &admin, None).await;
    Site {
        dir,
        transfers_dir,
        srv,
        admin,
        c,
        dead,
        new,
    }
}

/// The audit entries with `action`, their details parsed.
async fn audited(c: &reqwest::Client, srv: &Running, admin: &str, action: &str) -> Vec<Value> {
    audit_entries(c, srv, admin)
        .await
        .into_iter()
        .filter(|e| e["action"] == action)
        .map(|mut e| {
            e["details"] = serde_json::from_str(e["details"].as_str().unwrap()).unwrap();
            e
        })
        .collect()
}

/// Rows of the transfer catalog, read from the server's SQLite file.
fn catalog_rows(db: &Path) -> i64 {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.query_row("SELECT COUNT(*) FROM backup_transfers", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_deleted_transfer_is_gone_for_the_device_and_from_the_store_and_audited() {
    run(async {
        let Site {
            dir: _dir,
            transfers_dir,
            srv,
            admin,
            c,
            dead,
            new,
        } = site().await;
        let (restorer_id, restorer) = make_token(&c, &srv, &admin, "restorer").await;

        let (s, v) = import(&c, &srv, &restorer, &new.id, transfer_tar(&dead, 2, 2)).await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["transfer"]["state"], "ready");
        let first = v["transfer"]["id"].as_str().unwrap().to_owned();
        let (s, v) = import(&c, &srv, &restorer, &new.id, transfer_tar(&dead, 1, 1)).await;
        assert_eq!(s, 201, "{v}");
        let second = v["transfer"]["id"].as_str().unwrap().to_owned();
        let first_dir = transfers_dir.join(&new.id).join(&first);
        let second_dir = transfers_dir.join(&new.id).join(&second);
        // transfer.json, 2 manifests, 2 bodies, 4 packs.
        assert_eq!(files_under(&first_dir).len(), 9);
        assert_eq!(files_under(&second_dir).len(), 4);
        let mut seen = device_list(&c, &srv, &new).await;
        seen.sort();
        let mut both = vec![first.clone(), second.clone()];
        both.sort();
        assert_eq!(seen, both);
        assert_eq!(device_fetch(&c, &srv, &new, &first).await.0, 200);

        // Roles: none but admin and restorer may delete; nothing changes.
        let (s, v) = delete(&c, &srv, None, &new.id, &first).await;
        assert_eq!((s, code(&v)), (401, "missing_token"), "{v}");
        for role in ["auditor", "operator", "publisher"] {
            let (_, token) = make_token(&c, &srv, &admin, role).await;
            let (s, v) = delete(&c, &srv, Some(&token), &new.id, &first).await;
            assert_eq!((s, code(&v)), (403, "forbidden"), "{role}: {v}");
        }
        assert_eq!(files_under(&first_dir).len(), 9);
        assert_eq!(device_list(&c, &srv, &new).await.len(), 2);

        // Unknown: another id, the right id under another device, a malformed id.
        let unknown = "0123456789abcdef".repeat(2);
        let (s, v) = delete(&c, &srv, Some(&restorer), &new.id, &unknown).await;
        assert_eq!((s, code(&v)), (404, "transfer_not_found"), "{v}");
        let (s, v) = delete(&c, &srv, Some(&restorer), &dead.id, &first).await;
        assert_eq!((s, code(&v)), (404, "transfer_not_found"), "{v}");
        let (s, v) = delete(&c, &srv, Some(&restorer), &new.id, "not-an-id").await;
        assert_eq!((s, code(&v)), (400, "invalid_transfer_id"), "{v}");
        assert!(audited(&c, &srv, &admin, "backup.transfer_delete")
            .await
            .is_empty());

        // The restorer deletes the first one.
        let (s, v) = delete(&c, &srv, Some(&restorer), &new.id, &first).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["deleted"]["id"], first.as_str());
        assert_eq!(v["deleted"]["source_device_id"], dead.id.as_str());
        assert_eq!(v["deleted"]["packs"], 4);
        assert!(!first_dir.exists(), "{:?}", files_under(&first_dir));
        assert_eq!(files_under(&second_dir).len(), 4, "the other one is kept");
        assert_eq!(
            admin_list(&c, &srv, &admin, &new.id).await,
            [(second.clone(), "ready".to_owned())]
        );
        assert_eq!(device_list(&c, &srv, &new).await, [second.as_str()]);
        assert_eq!(device_fetch(&c, &srv, &new, &first).await.0, 404);
        let (s, names) = device_fetch(&c, &srv, &new, "latest").await;
        assert_eq!(s, 200);
        assert_eq!(names.len(), 4, "{names:?}");
        let deletes = audited(&c, &srv, &admin, "backup.transfer_delete").await;
        assert_eq!(deletes.len(), 1, "{deletes:?}");
        assert_eq!(deletes[0]["actor"], format!("token:{restorer_id}"));
        assert_eq!(deletes[0]["subject"], format!("device:{}", new.id));
        assert_eq!(deletes[0]["details"]["transfer"], first.as_str());
        assert_eq!(deletes[0]["details"]["source_device"], dead.id.as_str());
        assert_eq!(deletes[0]["details"]["state"], "ready");
        // Once gone, it is unknown.
        let (s, v) = delete(&c, &srv, Some(&restorer), &new.id, &first).await;
        assert_eq!((s, code(&v)), (404, "transfer_not_found"), "{v}");

        // The CLI deletes the second one; it refuses an unknown id with the server's word.
        let server = srv.url("");
        let args = |id: &str| -> Vec<String> {
            [
                "backups",
                "delete-transfer",
                "--server",
                &server,
                "--device",
                &new.id,
                "--transfer",
                id,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        };
        let out = cli(args(&second), Some(restorer.clone())).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("deleted transfer {second}")),
            "{stdout}"
        );
        assert!(!second_dir.exists());
        assert!(device_list(&c, &srv, &new).await.is_empty());
        assert_eq!(device_fetch(&c, &srv, &new, "latest").await.0, 404);
        let out = cli(args(&second), Some(restorer.clone())).await;
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("transfer_not_found"), "{stderr}");
        assert_eq!(
            audited(&c, &srv, &admin, "backup.transfer_delete")
                .await
                .len(),
            2
        );
        assert_audit_verifies(&c, &srv.url("/api/v1/audit/verify"), &admin).await;
        srv.stop().await;
    });
}

#[test]
fn a_delete_the_store_breaks_off_is_hidden_and_finished_by_repeating_it() {
    run(async {
        let Site {
            dir,
            transfers_dir,
            srv,
            admin,
            c,
            dead,
            new,
        } = site().await;
        let (s, v) = import(&c, &srv, &admin, &new.id, transfer_tar(&dead, 1, 3)).await;
        assert_eq!(s, 201, "{v}");
        let id = v["transfer"]["id"].as_str().unwrap().to_owned();
        let stored = transfers_dir.join(&new.id).join(&id);

        // One pack can no longer be deleted: a directory stands where the file was (the
        // local store cannot unlink it, as root neither).
        let pack = files_under(&stored.join("packs"))[0].clone();
        std::fs::remove_file(&pack).unwrap();
        std::fs::create_dir(&pack).unwrap();
        std::fs::write(pack.join("in-the-way"), b"x").unwrap();
        let (s, v) = delete(&c, &srv, Some(&admin), &new.id, &id).await;
        assert_eq!((s, code(&v)), (503, "unavailable"), "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("repeat the DELETE"),
            "{v}"
        );
        // Half-deleted: the device no longer sees it, admins see it deleting.
        assert!(device_list(&c, &srv, &new).await.is_empty());
        assert_eq!(device_fetch(&c, &srv, &new, &id).await.0, 404);
        assert_eq!(device_fetch(&c, &srv, &new, "latest").await.0, 404);
        assert_eq!(
            admin_list(&c, &srv, &admin, &new.id).await,
            [(id.clone(), "deleting".to_owned())]
        );
        assert!(pack.is_dir());

        // The store works again: the same request finishes it.
        std::fs::remove_dir_all(&pack).unwrap();
        let (s, v) = delete(&c, &srv, Some(&admin), &new.id, &id).await;
        assert_eq!(s, 200, "{v}");
        assert!(!stored.exists(), "{:?}", files_under(&stored));
        assert!(admin_list(&c, &srv, &admin, &new.id).await.is_empty());
        let deletes = audited(&c, &srv, &admin, "backup.transfer_delete").await;
        let states: Vec<&str> = deletes
            .iter()
            .map(|e| e["details"]["state"].as_str().unwrap())
            .collect();
        assert_eq!(states, ["ready", "deleting"]);
        let (s, v) = delete(&c, &srv, Some(&admin), &new.id, &id).await;
        assert_eq!((s, code(&v)), (404, "transfer_not_found"), "{v}");
        srv.stop().await;
        assert_eq!(catalog_rows(&dir.path().join("otter.db")), 0);
    });
}

/// Watches `device_dir` for the first transfer directory an import creates and, before the
/// import gets to its re-encrypted bodies (written after the manifests and every pack), puts
/// a file where their directory must go: the local store then fails on them, with objects
/// already written. The transfer id, or `None` when stopped first or too late.
fn block_bodies(device_dir: PathBuf, stop: Arc<AtomicBool>) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let Ok(mut entries) = std::fs::read_dir(&device_dir) else {
            std::thread::yield_now();
            continue;
        };
        if let Some(Ok(e)) = entries.next() {
            let id = e.file_name().to_string_lossy().into_owned();
            let placed = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(e.path().join("reencrypted"));
            return placed.is_ok().then_some(id);
        }
        std::thread::yield_now();
    }
    None
}

#[test]
fn an_import_the_store_fails_half_way_leaves_no_objects_and_no_row() {
    run(async {
        let Site {
            dir,
            transfers_dir,
            srv,
            admin,
            c,
            dead,
            new,
        } = site().await;
        let device_dir = transfers_dir.join(&new.id);

        // Each try races a watcher thread against the import's pack writes (60 files, each
        // fsynced); should the watcher be late, the import succeeds, is deleted, and the
        // next try has more packs.
        let mut failed = None;
        for packs in [60, 120, 250] {
            let tar = transfer_tar(&dead, 1, packs);
            let stop = Arc::new(AtomicBool::new(false));
            let watcher = {
                let (d, stop) = (device_dir.clone(), Arc::clone(&stop));
                std::thread::spawn(move || block_bodies(d, stop))
            };
            let (s, v) = import(&c, &srv, &admin, &new.id, tar).await;
            stop.store(true, Ordering::SeqCst);
            let blocked = watcher.join().unwrap();
            if s == 201 {
                assert_eq!(blocked, None, "a blocked import cannot succeed");
                let id = v["transfer"]["id"].as_str().unwrap();
                let (s, v) = delete(&c, &srv, Some(&admin), &new.id, id).await;
                assert_eq!(s, 200, "{v}");
                let _ = std::fs::remove_dir_all(&device_dir);
                continue;
            }
            let id = blocked.expect("the import failed because of the blocked bodies");
            assert_eq!((s, code(&v)), (503, "unavailable"), "{v}");
            failed = Some(id);
            break;
        }
        let id = failed.expect("the store failure was provoked within three tries");

        // Nothing of it remains: no object (the manifests and packs written before the
        // failure are removed, and the blocking file under its prefix too), no row.
        let stored = device_dir.join(&id);
        assert!(!stored.exists(), "{:?}", tree(&stored));
        assert!(files_under(&device_dir).is_empty());
        assert!(admin_list(&c, &srv, &admin, &new.id).await.is_empty());
        assert!(device_list(&c, &srv, &new).await.is_empty());
        assert_eq!(device_fetch(&c, &srv, &new, "latest").await.0, 404);
        assert!(audited(&c, &srv, &admin, "backup.transfer_import")
            .await
            .iter()
            .all(|e| e["details"]["transfer"] != id.as_str()));
        assert_eq!(catalog_rows(&dir.path().join("otter.db")), 0);

        // The store works again: the same transfer imports and reaches the device.
        let (s, v) = import(&c, &srv, &admin, &new.id, transfer_tar(&dead, 1, 2)).await;
        assert_eq!(s, 201, "{v}");
        let id = v["transfer"]["id"].as_str().unwrap().to_owned();
        assert_eq!(device_list(&c, &srv, &new).await, [id.as_str()]);
        assert_eq!(files_under(&device_dir.join(&id)).len(), 5);
        srv.stop().await;
    });
}

#[test]
fn transfers_a_stopped_server_left_importing_or_deleting_are_removed_at_the_next_start() {
    run(async {
        let Site {
            dir,
            transfers_dir,
            srv,
            admin,
            c,
            dead,
            new,
        } = site().await;
        let mut ids = Vec::new();
        for packs in [1, 2, 3] {
            let (s, v) = import(&c, &srv, &admin, &new.id, transfer_tar(&dead, 1, packs)).await;
            assert_eq!(s, 201, "{v}");
            ids.push(v["transfer"]["id"].as_str().unwrap().to_owned());
        }
        srv.stop().await;
        // What a server killed in the middle leaves: a row still `importing` (with some of
        // its objects) and one `deleting`; the third transfer is whole and `ready`.
        let db = dir.path().join("otter.db");
        {
            let conn = rusqlite::Connection::open(&db).unwrap();
            for (id, state) in [(&ids[0], "importing"), (&ids[1], "deleting")] {
                conn.execute(
                    "UPDATE backup_transfers SET state = ?2 WHERE transfer_id = ?1",
                    [id.as_str(), state],
                )
                .unwrap();
            }
        }
        let device_dir = transfers_dir.join(&new.id);
        std::fs::remove_file(files_under(&device_dir.join(&ids[0]))[0].clone()).unwrap();

        let (srv, _) = start(config(dir.path())).await;
        // Hidden from the device at once, gone from the store and the catalog soon after.
        assert_eq!(device_list(&c, &srv, &new).await, [ids[2].as_str()]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while catalog_rows(&db) != 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            catalog_rows(&db),
            1,
            "{:?}",
            admin_list(&c, &srv, &admin, &new.id).await
        );
        assert!(
            !device_dir.join(&ids[0]).exists(),
            "{:?}",
            tree(&device_dir)
        );
        assert!(
            !device_dir.join(&ids[1]).exists(),
            "{:?}",
            tree(&device_dir)
        );
        assert_eq!(files_under(&device_dir.join(&ids[2])).len(), 6);
        let (s, _) = device_fetch(&c, &srv, &new, &ids[2]).await;
        assert_eq!(s, 200);
        srv.stop().await;
    });
}
