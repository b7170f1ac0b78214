//! Garbage collection, verification and quotas with the real server on loopback and the
//! real `otter-server` binary on the same data dir: a backup whose packs are uploaded when
//! a prune runs is still accepted afterwards and complete; an unreferenced pack older than
//! the grace period is collected; a pack being collected is not uploaded again until the
//! collection is done; `backups verify` reports a pack deleted from (or damaged in) the
//! store, exits 1 and records the result; a pack over the device's quota is refused with
//! 413 and nothing is stored.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backup_support;
mod common;

use backup_support::{
    backup, cli, code, config_file, device_store, listed, pack_path, post, signed, upload, Chain,
};
use common::fleet::{enrolled_device, now};
use common::{api, client, make_token, run, start};
use serde_json::Value;

fn json_out(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sql(cfg: &otter_server::Config) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(cfg.db_path()).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    c
}

#[test]
fn a_backup_uploading_while_a_prune_runs_is_accepted_and_complete() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (file, cfg) = config_file(dir.path(), "[backups.retention]\nkeep_last = 1\n");
        let (srv, admin) = start(cfg.clone()).await;
        let admin = admin.unwrap();
        let c = client();
        let dev = enrolled_device(&c, &srv, &admin, None).await;
        let store = device_store(&cfg, &dev.id).join("packs");
        let mut chain = Chain::new();
        let t = now() - 3600;
        let (p1, p2) = (chain.pack(1, 2), chain.pack(2, 2));
        backup(&c, &srv, &dev, &mut chain, t, &[&p1]).await;
        backup(&c, &srv, &dev, &mut chain, t + 60, &[&p1, &p2]).await;

        // Backup #3 is uploading: its new packs are stored, its manifest not sent yet.
        let (p3, p4) = (chain.pack(3, 2), chain.pack(4, 2));
        upload(&c, &srv, &dev, &p3).await;
        upload(&c, &srv, &dev, &p4).await;
        let report = json_out(&cli(&file, &["backups", "prune", "--json"]));
        assert_eq!(report["manifests_pruned"], 1, "{report}");
        assert_eq!(
            report["packs_collected"], 0,
            "p1 is still needed by #2: {report}"
        );
        assert_eq!(report["devices"][0]["packs_in_grace"], 2, "{report}");
        assert!(store.join(p3.id.to_string()).exists() && store.join(p4.id.to_string()).exists());

        // The manifest comes after the prune: accepted, and complete.
        let m3 = chain.next(&dev, t + 120, &[&p2, &p3, &p4]);
        let (s, v) = post(&c, &srv, &dev, &m3).await;
        assert_eq!(s, 201, "{v}");
        chain.sent.push(m3);
        assert_eq!(listed(&c, &srv, &admin, &dev.id).await, vec![2, 3]);
        let v = json_out(&cli(&file, &["backups", "verify", "--json"]));
        assert_eq!(v["ok"], true, "{v}");
        // The next prune drops #2 and collects p1 (needed by #1 and #2 only), nothing #3
        // needs.
        let report = json_out(&cli(&file, &["backups", "prune", "--json"]));
        assert_eq!(report["manifests_pruned"], 1, "{report}");
        assert_eq!(
            report["devices"][0]["collected_packs"],
            serde_json::json!([p1.id.to_string()])
        );
        assert!(!store.join(p1.id.to_string()).exists());
        for p in [&p2, &p3, &p4] {
            assert!(store.join(p.id.to_string()).exists());
        }

        // A pack uploaded and never referenced: left alone within the grace period,
        // collected once it is older.
        let stray = chain.pack(9, 1);
        upload(&c, &srv, &dev, &stray).await;
        let report = json_out(&cli(&file, &["backups", "prune", "--json"]));
        assert_eq!(report["packs_collected"], 0, "{report}");
        let grace = cfg.backups.unreferenced_pack_grace_secs as i64;
        sql(&cfg)
            .execute(
                "UPDATE backup_packs SET stored_at = stored_at - ?1 - 10 WHERE pack_id = ?2",
                rusqlite::params![grace, stray.id.to_string()],
            )
            .unwrap();
        let report = json_out(&cli(&file, &["backups", "prune", "--json"]));
        assert_eq!(report["packs_collected"], 1, "{report}");
        assert!(!store.join(stray.id.to_string()).exists());
        let (s, _) = signed(&c, &srv, &dev, "HEAD", &pack_path(&stray), b"").await;
        assert_eq!(s, 404, "a collected pack is not listed");

        // While a prune is collecting a pack (its tombstone is there, the object may still
        // be), the device cannot upload it again; once the prune is done it can.
        sql(&cfg)
            .execute(
                "INSERT INTO backup_pack_tombstones (device_id, pack_id, since) VALUES (?1, ?2, 0)",
                rusqlite::params![dev.id, stray.id.to_string()],
            )
            .unwrap();
        let (s, v) = signed(&c, &srv, &dev, "PUT", &pack_path(&stray), &stray.ciphertext).await;
        assert_eq!((s, code(&v)), (503, "backup_pack_being_collected"), "{v}");
        json_out(&cli(&file, &["backups", "prune", "--json"]));
        let (s, v) = signed(&c, &srv, &dev, "PUT", &pack_path(&stray), &stray.ciphertext).await;
        assert_eq!(s, 201, "{v}");
        srv.stop().await;
    });
}

#[test]
fn backups_and_prunes_running_at_once_leave_every_listed_backup_complete() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (file, cfg) = config_file(dir.path(), "[backups.retention]\nkeep_last = 1\n");
        let (srv, admin) = start(cfg.clone()).await;
        let admin = admin.unwrap();
        let c = client();
        let dev = enrolled_device(&c, &srv, &admin, None).await;
        let mut chain = Chain::new();
        let base = chain.pack(200, 3);
        let t = now() - 3600;

        // `backups prune` in a loop, in other processes, while the device backs up.
        let stop = Arc::new(AtomicBool::new(false));
        let pruner = {
            let (stop, file) = (Arc::clone(&stop), file.clone());
            std::thread::spawn(move || {
                let mut runs = 0u32;
                while !stop.load(Ordering::SeqCst) || runs == 0 {
                    let out = cli(&file, &["backups", "prune", "--json"]);
                    assert!(
                        out.status.success(),
                        "{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    runs += 1;
                }
                runs
            })
        };
        // Each backup needs the base pack, the previous backup's own pack and a new one.
        let mut previous = chain.pack(100, 2);
        for i in 1..=8u8 {
            let own = chain.pack(i, 2);
            backup(
                &c,
                &srv,
                &dev,
                &mut chain,
                t + i64::from(i),
                &[&base, &previous, &own],
            )
            .await;
            previous = own;
        }
        stop.store(true, Ordering::SeqCst);
        let runs = pruner.join().unwrap();
        assert!(runs >= 1);
        eprintln!("prune runs during the backups: {runs}");

        // Whatever the interleaving: every listed backup verifies (all its packs stored).
        let v = json_out(&cli(&file, &["backups", "verify", "--json"]));
        assert_eq!(v["ok"], true, "{v}");
        json_out(&cli(&file, &["backups", "prune", "--json"]));
        assert_eq!(listed(&c, &srv, &admin, &dev.id).await, vec![8]);
        let v = json_out(&cli(&file, &["backups", "verify", "--json"]));
        assert_eq!(
            (&v["ok"], &v["manifests"], &v["pruned_links"]),
            (&Value::Bool(true), &Value::from(1), &Value::from(7)),
            "{v}"
        );
        // Only the packs #8 needs are left.
        let packs = device_store(&cfg, &dev.id).join("packs");
        let mut left: Vec<String> = std::fs::read_dir(&packs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want: Vec<String> = chain.sent[7]
            .header
            .packs
            .iter()
            .map(|p| p.id.to_string())
            .collect();
        want.sort();
        assert_eq!(left, want);
        srv.stop().await;
    });
}

#[test]
fn verify_reports_a_deleted_or_damaged_pack_and_records_it() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (file, cfg) = config_file(dir.path(), "");
        let (srv, admin) = start(cfg.clone()).await;
        let admin = admin.unwrap();
        let c = client();
        let dev = enrolled_device(&c, &srv, &admin, None).await;
        let mut chain = Chain::new();
        let (p1, p2, p3) = (chain.pack(1, 2), chain.pack(2, 2), chain.pack(3, 2));
        let t = now() - 3600;
        backup(&c, &srv, &dev, &mut chain, t, &[&p1, &p2]).await;
        backup(&c, &srv, &dev, &mut chain, t + 60, &[&p1, &p3]).await;

        let out = cli(&file, &["backups", "verify"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("OK: every backup verifies"));

        // Someone deletes a pack file from the data dir's store, and damages another.
        let packs = device_store(&cfg, &dev.id).join("packs");
        std::fs::remove_file(packs.join(p1.id.to_string())).unwrap();
        let mut bytes = std::fs::read(packs.join(p3.id.to_string())).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(packs.join(p3.id.to_string()), bytes).unwrap();

        let out = cli(&file, &["backups", "verify"]);
        assert_eq!(out.status.code(), Some(1));
        let text = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("problem(s) found"), "{err}");
        let short1 = &p1.id.to_string()[..16];
        let short3 = &p3.id.to_string()[..16];
        // p1 is needed by both backups; p3 by #2 only.
        let missing: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(short1) && l.contains("missing from the object store"))
            .collect();
        assert_eq!(missing.len(), 2, "{text}");
        assert!(
            text.lines()
                .any(|l| l.contains("backup #2") && l.contains(short3) && l.contains("damaged")),
            "{text}"
        );
        assert!(
            !text.contains(&p2.id.to_string()[..16]),
            "p2 is fine: {text}"
        );

        // Through the API too (auditor), and the catalog records the result per backup.
        let (_, auditor) = make_token(&c, &srv, &admin, "auditor").await;
        let url = srv.url("/api/v1/backup-maintenance/verify");
        let (s, v) = api(&c, "POST", &url, Some(&auditor), None).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["ok"], false);
        assert_eq!(v["problems"].as_array().unwrap().len(), 3, "{v}");
        let rows: Vec<(i64, bool, String)> = {
            let db = sql(&cfg);
            let mut stmt = db
                .prepare(
                    "SELECT sequence, ok, problems FROM backup_verifications
                     WHERE device_id = ?1 ORDER BY sequence",
                )
                .unwrap();
            let rows = stmt
                .query_map([&dev.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap();
            rows.map(Result::unwrap).collect()
        };
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|(_, ok, _)| !ok));
        assert!(rows[1].2.contains(&p3.id.to_string()), "{:?}", rows[1]);
        srv.stop().await;
    });
}

#[test]
fn a_pack_over_the_device_quota_is_refused_and_nothing_is_stored() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let chain = Chain::new();
        let (p1, p2) = (chain.pack(1, 4), chain.pack(2, 4));
        // Room for p1, not for p1 and p2.
        let quota = (p1.ciphertext.len() + p2.ciphertext.len()) as u64 - 1;
        let (_file, cfg) = config_file(
            dir.path(),
            &format!("[backups]\nquota_bytes_per_device = {quota}\n"),
        );
        let (srv, admin) = start(cfg.clone()).await;
        let admin = admin.unwrap();
        let c = client();
        let dev = enrolled_device(&c, &srv, &admin, None).await;
        let other = enrolled_device(&c, &srv, &admin, None).await;
        upload(&c, &srv, &dev, &p1).await;
        let (s, v) = signed(&c, &srv, &dev, "PUT", &pack_path(&p2), &p2.ciphertext).await;
        assert_eq!((s, code(&v)), (413, "backup_quota_exceeded"), "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(&quota.to_string()) && msg.contains("prune"),
            "{msg}"
        );
        let (s, _) = signed(&c, &srv, &dev, "HEAD", &pack_path(&p2), b"").await;
        assert_eq!(s, 404);
        let packs = device_store(&cfg, &dev.id).join("packs");
        assert!(packs.join(p1.id.to_string()).exists());
        assert!(!packs.join(p2.id.to_string()).exists(), "nothing stored");
        // Sending a stored pack again costs nothing; another device has its own quota.
        let (s, v) = signed(&c, &srv, &dev, "PUT", &pack_path(&p1), &p1.ciphertext).await;
        assert_eq!(s, 200, "{v}");
        upload(&c, &srv, &other, &p2).await;
        srv.stop().await;
    });
}
