//! Backups into an S3-backed `otter-server`, restored straight from the bucket.
//!
//! The real server keeps its store in an S3 bucket on a real S3-compatible server (s3s-fs on
//! loopback, or `OTTER_TEST_S3_ENDPOINT`, see `common/s3.rs`). A terminal enrolls with
//! `otter-agent enroll` and backs its SQLite database up twice with `otter-agent backup`;
//! the packs and signed manifests land in the bucket. `otter-agent restore --latest` brings
//! the damaged database back through the server. Then, as after losing the server, the agent
//! library's verified restore (`otter_agent::backup::restore`) rebuilds both backups from the
//! bucket alone with the fleet's recovery key: the rows are the ones backed up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/s3.rs"]
mod s3;

use std::path::Path;
use std::process::Command;

use common::{command, show, ServerGuard};
use otter_agent::backup::{restore, BackupStore, RestoreOptions, Selector, StoreError};
use otter_keys::envelope::PackId;
use s3::S3Server;
use serde_json::Value;

/// Runs python3's sqlite3 on `db` with `script`; returns the rows of a final query, if any,
/// as text.
fn sql(db: &Path, script: &str, query: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1])\n\
             c.executescript(sys.argv[2])\n\
             c.commit()\n\
             if sys.argv[3]:\n    print(c.execute(sys.argv[3]).fetchall())\n\
             c.close()",
        ])
        .arg(db)
        .arg(script)
        .arg(query)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

const SUMMARY: &str = "SELECT count(*), sum(cents), max(item) FROM sales";

/// The backups of one device read straight from the bucket (read-only): what a restore
/// needs when the server is gone. Untrusted, like every backup store: restore checks it.
struct BucketBackups<'a> {
    s3: &'a S3Server,
    prefix: String,
    device: String,
}

impl BucketBackups<'_> {
    fn key(&self, rest: &str) -> String {
        format!("{}/backups/{}/{rest}", self.prefix, self.device)
    }
    fn read(&self, key: &str, what: String, max: u64) -> Result<Vec<u8>, StoreError> {
        let bytes = self
            .s3
            .get(key)
            .ok_or(StoreError::NotFound { what: what.clone() })?;
        if bytes.len() as u64 > max {
            return Err(StoreError::TooLarge {
                what,
                len: bytes.len() as u64,
                max,
            });
        }
        Ok(bytes)
    }
}

impl BackupStore for BucketBackups<'_> {
    fn put_pack(&self, _: &PackId, _: &[u8]) -> Result<(), StoreError> {
        Err(StoreError::Remote("the bucket is read-only here".into()))
    }
    fn has_pack(&self, id: &PackId) -> Result<bool, StoreError> {
        Ok(self.s3.get(&self.key(&format!("packs/{id}"))).is_some())
    }
    fn get_pack(&self, id: &PackId, max_len: u64) -> Result<Vec<u8>, StoreError> {
        self.read(
            &self.key(&format!("packs/{id}")),
            format!("pack {id}"),
            max_len,
        )
    }
    fn put_manifest(&self, _: &str, _: u64, _: &[u8]) -> Result<(), StoreError> {
        Err(StoreError::Remote("the bucket is read-only here".into()))
    }
    fn get_manifest(&self, device: &str, seq: u64, max_len: u64) -> Result<Vec<u8>, StoreError> {
        assert_eq!(device, self.device);
        self.read(
            &self.key(&format!("manifests/{seq:020}")),
            format!("manifest #{seq}"),
            max_len,
        )
    }
    fn list_manifests(&self, device: &str) -> Result<Vec<u64>, StoreError> {
        assert_eq!(device, self.device);
        let dir = self.key("manifests");
        let mut seqs: Vec<u64> = self
            .s3
            .list(&dir)
            .iter()
            .map(|k| k.rsplit('/').next().unwrap().parse().unwrap())
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }
}

fn backup(state: &Path, db: &Path) -> String {
    let out = command("otter-agent")
        .args(["backup", "--pack-size", "65536", "--state-dir"])
        .arg(state)
        .arg("--database")
        .arg(db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn backups_land_in_the_bucket_and_restore_through_the_server_and_from_the_bucket() {
    use otter_keys::age::x25519::Identity;

    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let prefix = s3::unique_prefix("backups");
    let recovery = Identity::generate();
    let config = tmp.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "{}[backups]\nrecovery_recipient = \"{}\"\n",
            s3.store_toml(&prefix),
            recovery.to_public()
        ),
    )
    .unwrap();
    let data = tmp.path().join("server-data");
    let mut server = ServerGuard::start_env(
        &data,
        &["--config".as_ref(), config.as_os_str()],
        &s3.credentials_env(),
        &tmp.path().join("server.log"),
    );

    let out = command("otter-server")
        .args(["enroll-token", "create", "--expires-in", "1h", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let root_file = tmp.path().join("image-root.json");
    std::fs::write(
        &root_file,
        s3.get(&format!("{prefix}/repo/metadata/1.root.json"))
            .unwrap(),
    )
    .unwrap();
    let state = tmp.path().join("terminal/state");
    let out = command("otter-agent")
        .args(["enroll", "--server", &server.url, "--model", "pos-a"])
        .env("OTTER_ENROLL_TOKEN", &token)
        .arg("--trusted-root")
        .arg(&root_file)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let agent: Value =
        serde_json::from_slice(&std::fs::read(state.join("agent.json")).unwrap()).unwrap();
    let device_id = agent["device_id"].as_str().unwrap().to_owned();

    let db = tmp.path().join("terminal/pos.db");
    let first = sql(
        &db,
        "CREATE TABLE sales (id INTEGER PRIMARY KEY, item TEXT NOT NULL, cents INTEGER NOT NULL);\n\
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1500)\n\
         INSERT INTO sales (id, item, cents)\n\
         SELECT i, 'item-' || i || '-' || hex(randomblob(40)), i * 7 FROM n;",
        SUMMARY,
    );
    assert!(backup(&state, &db).contains("backup #1"));
    let second = sql(
        &db,
        "UPDATE sales SET cents = cents + 3 WHERE id % 100 = 0;",
        SUMMARY,
    );
    assert_ne!(first, second);
    assert!(backup(&state, &db).contains("backup #2"));

    // Everything the terminal sent is in the bucket, under the prefix.
    let objects = s3.list(&format!("{prefix}/backups/{device_id}"));
    let manifests: Vec<&String> = objects
        .iter()
        .filter(|k| k.contains("/manifests/"))
        .collect();
    assert_eq!(manifests.len(), 2, "{objects:?}");
    assert!(
        objects.iter().filter(|k| k.contains("/packs/")).count() >= 2,
        "{objects:?}"
    );
    // The terminal loses its database and restores it through the S3-backed server with
    // `otter-agent restore` (packs and manifests read back from the bucket).
    std::fs::write(&db, b"not a database any more").unwrap();
    let out = command("otter-agent")
        .args(["restore", "--latest", "--state-dir"])
        .arg(&state)
        .arg("--database")
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(sql(&db, "", SUMMARY), second);

    let status = server.stop().expect("the server stops on SIGTERM");
    assert!(status.success(), "{status}");

    // The server is gone: restore both backups from the bucket with the recovery key.
    let device_public = otter_agent::device::Identity::load(&state)
        .unwrap()
        .signing
        .public_key();
    let bucket = BucketBackups {
        s3: &s3,
        prefix: prefix.clone(),
        device: device_id.clone(),
    };
    for (selector, rows, seq) in [
        (Selector::Latest, &second, 2),
        (Selector::Sequence(1), &first, 1),
    ] {
        let target = tmp.path().join(format!("restored-{seq}.db"));
        let report = restore(
            &bucket,
            &device_id,
            &device_public,
            &recovery,
            selector,
            &target,
            &RestoreOptions::default(),
        )
        .unwrap();
        assert_eq!(report.sequence, seq);
        assert_eq!(report.manifests_checked, 2);
        assert_eq!(&sql(&target, "", SUMMARY), rows, "backup #{seq}");
    }

    // Damaged packs in the bucket are refused, and the target is not touched.
    let tampered = Tampered { inner: &bucket };
    let target = tmp.path().join("restored-1.db");
    let before = std::fs::read(&target).unwrap();
    let err = restore(
        &tampered,
        &device_id,
        &device_public,
        &recovery,
        Selector::Latest,
        &target,
        &RestoreOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("not touched"), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), before);
}

/// The bucket with every pack damaged (one byte flipped in the middle).
struct Tampered<'a> {
    inner: &'a BucketBackups<'a>,
}

impl BackupStore for Tampered<'_> {
    fn put_pack(&self, id: &PackId, b: &[u8]) -> Result<(), StoreError> {
        self.inner.put_pack(id, b)
    }
    fn has_pack(&self, id: &PackId) -> Result<bool, StoreError> {
        self.inner.has_pack(id)
    }
    fn get_pack(&self, id: &PackId, max_len: u64) -> Result<Vec<u8>, StoreError> {
        let mut bytes = self.inner.get_pack(id, max_len)?;
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        Ok(bytes)
    }
    fn put_manifest(&self, d: &str, s: u64, b: &[u8]) -> Result<(), StoreError> {
        self.inner.put_manifest(d, s, b)
    }
    fn get_manifest(&self, d: &str, s: u64, max_len: u64) -> Result<Vec<u8>, StoreError> {
        self.inner.get_manifest(d, s, max_len)
    }
    fn list_manifests(&self, d: &str) -> Result<Vec<u64>, StoreError> {
        self.inner.list_manifests(d)
    }
}
