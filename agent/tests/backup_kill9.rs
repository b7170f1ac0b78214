//! A backup killed with SIGKILL at any point leaves no visible half-backup, and the next run
//! completes, reusing the packs the killed run stored.
//!
//! The backup runs in a real child process: this test binary re-executes itself with
//! `OTTER_BACKUP_CHILD` set, and the `child_backup` test then runs one backup, optionally
//! pausing at a chosen point so that the parent's SIGKILL lands exactly there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "backup_common.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{dump, files_under, integrity_ok, Terminal};
use otter_agent::backup::{
    run_backup, BackupConfig, BackupKeys, BackupRecipients, BackupStore, LocalDirStore, Selector,
    StoreError,
};
use otter_keys::crypto::SigningKey;
use otter_keys::envelope::{ChunkKey, PackId};

const PACK_TARGET: usize = 128 * 1024;

/// A store that stops dead (prints `PAUSED`, then sleeps) at a chosen point.
struct PausingStore {
    inner: LocalDirStore,
    before_pack: Option<usize>,
    after_manifest: bool,
    packs: AtomicUsize,
}

fn pause() {
    println!("PAUSED");
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(120));
}

impl BackupStore for PausingStore {
    fn put_pack(&self, id: &PackId, bytes: &[u8]) -> Result<(), StoreError> {
        if self.before_pack == Some(self.packs.load(Ordering::SeqCst)) {
            pause();
        }
        self.packs.fetch_add(1, Ordering::SeqCst);
        self.inner.put_pack(id, bytes)
    }
    fn has_pack(&self, id: &PackId) -> Result<bool, StoreError> {
        self.inner.has_pack(id)
    }
    fn get_pack(&self, id: &PackId, max: u64) -> Result<Vec<u8>, StoreError> {
        self.inner.get_pack(id, max)
    }
    fn put_manifest(&self, device: &str, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.inner.put_manifest(device, seq, bytes)?;
        if self.after_manifest {
            pause();
        }
        Ok(())
    }
    fn get_manifest(&self, device: &str, seq: u64, max: u64) -> Result<Vec<u8>, StoreError> {
        self.inner.get_manifest(device, seq, max)
    }
    fn list_manifests(&self, device: &str) -> Result<Vec<u64>, StoreError> {
        self.inner.list_manifests(device)
    }
}

/// The child side: runs only when re-executed by a parent test.
#[test]
fn child_backup() {
    let Ok(pause_at) = std::env::var("OTTER_BACKUP_CHILD") else {
        return;
    };
    let var = |k: &str| std::env::var(k).unwrap();
    let seed: [u8; 32] = hex::decode(var("OTTER_CHILD_SEED"))
        .unwrap()
        .try_into()
        .unwrap();
    let chunk: [u8; 32] = hex::decode(var("OTTER_CHILD_CHUNK"))
        .unwrap()
        .try_into()
        .unwrap();
    let signing = SigningKey::from_seed(&seed);
    let chunk_key = ChunkKey::from_bytes(&chunk);
    let keys = BackupKeys {
        signing: &signing,
        chunk_key: &chunk_key,
        recipients: BackupRecipients {
            recovery: var("OTTER_CHILD_RECOVERY").parse().unwrap(),
            terminal: Some(var("OTTER_CHILD_TERMINAL").parse().unwrap()),
        },
    };
    let mut config = BackupConfig::new(
        var("OTTER_CHILD_DB"),
        var("OTTER_CHILD_STATE"),
        var("OTTER_CHILD_DEVICE"),
    );
    config.pack_target_size = PACK_TARGET;
    let store = PausingStore {
        inner: LocalDirStore::new(var("OTTER_CHILD_STORE")),
        before_pack: pause_at.strip_prefix("pack:").map(|n| n.parse().unwrap()),
        after_manifest: pause_at == "manifest",
        packs: AtomicUsize::new(0),
    };
    run_backup(&config, &keys, &store).unwrap();
    println!("DONE");
}

/// Starts a child backup; kills it with SIGKILL when it pauses (or after `delay`).
/// Returns whether it had finished before the kill.
fn kill_child(t: &Terminal, pause_at: &str, delay: Option<Duration>) -> bool {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_backup", "--exact", "--nocapture", "--test-threads=1"])
        .env("OTTER_BACKUP_CHILD", pause_at)
        .env("OTTER_CHILD_SEED", hex::encode(*t.signing.seed_dangerous()))
        .env(
            "OTTER_CHILD_CHUNK",
            hex::encode(*t.chunk_key.to_bytes_dangerous()),
        )
        .env(
            "OTTER_CHILD_RECOVERY",
            t.recovery_id.to_public().to_string(),
        )
        .env(
            "OTTER_CHILD_TERMINAL",
            t.terminal_id.to_public().to_string(),
        )
        .env("OTTER_CHILD_DB", &t.db)
        .env("OTTER_CHILD_STATE", t.state_dir())
        .env("OTTER_CHILD_STORE", t.store_root())
        .env("OTTER_CHILD_DEVICE", &t.device_id)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    match delay {
        None => {
            let out = BufReader::new(child.stdout.take().unwrap());
            let paused = out.lines().any(|l| l.unwrap().contains("PAUSED"));
            assert!(paused, "the child never reached its pause point");
        }
        Some(d) => std::thread::sleep(d),
    }
    let finished = child.try_wait().unwrap().is_some_and(|s| s.success());
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    finished
}

fn small_pack_terminal() -> Terminal {
    let mut t = Terminal::fresh();
    t.pack_target = PACK_TARGET;
    t
}

#[test]
fn killed_between_packs_leaves_no_manifest_and_the_next_run_reuses_packs() {
    let t = small_pack_terminal();
    let rows = dump(&t.db);
    assert!(!kill_child(&t, "pack:4", None));
    let store = t.store();
    assert!(store.list_manifests(&t.device_id).unwrap().is_empty());
    let stored = files_under(&t.store_root().join("packs"));
    assert_eq!(stored.len(), 4);

    let r = t.backup();
    println!(
        "after SIGKILL at pack 5: resumed {} packs, shipped {} new packs ({} B) of {} chunks",
        r.resumed_packs, r.new_packs, r.pack_bytes, r.distinct_chunks
    );
    assert_eq!((r.sequence, r.resumed_packs), (1, 4));
    assert!(r.new_chunks < r.distinct_chunks);
    // The four packs of the killed run are part of the backup.
    let m = otter_keys::envelope::SignedManifest::from_bytes(
        &store.get_manifest(&t.device_id, 1, 1 << 30).unwrap(),
        1 << 30,
    )
    .unwrap();
    assert_eq!(m.header.packs.len() as u64, 4 + r.new_packs);
    let out = t.dir.path().join("r.db");
    t.restore(Selector::Latest, &out).unwrap();
    assert!(integrity_ok(&out));
    assert_eq!(dump(&out), rows);
}

#[test]
fn killed_after_the_manifest_the_next_run_continues_the_chain() {
    let t = small_pack_terminal();
    assert!(!kill_child(&t, "manifest", None));
    assert_eq!(t.store().list_manifests(&t.device_id).unwrap(), vec![1]);
    let r = t.backup();
    assert_eq!((r.sequence, r.new_packs), (2, 0));
    let out = t.dir.path().join("r.db");
    let rr = t.restore(Selector::Latest, &out).unwrap();
    assert_eq!(rr.manifests_checked, 2);
    assert_eq!(dump(&out), dump(&t.db));
}

#[test]
fn killed_at_arbitrary_moments_never_shows_a_half_backup() {
    let t = small_pack_terminal();
    let rows = dump(&t.db);
    let store = t.store();
    let mut expected_seq = 0;
    for ms in [150u64, 350, 600, 900] {
        let finished = kill_child(&t, "none", Some(Duration::from_millis(ms)));
        let seqs = store.list_manifests(&t.device_id).unwrap();
        println!(
            "SIGKILL after {ms} ms: finished={finished}, manifests {seqs:?}, packs {}",
            files_under(&t.store_root().join("packs")).len()
        );
        // Whatever is listed is complete and verifies.
        if let Some(&last) = seqs.last() {
            assert!(last == expected_seq || last == expected_seq + 1);
            expected_seq = last;
            let out = t.dir.path().join("r.db");
            t.restore(Selector::Latest, &out).unwrap();
            assert_eq!(dump(&out), rows);
        }
    }
    let r = t.backup();
    assert_eq!(r.sequence, expected_seq + 1);
    let out = t.dir.path().join("r.db");
    t.restore(Selector::Latest, &out).unwrap();
    assert_eq!(dump(&out), rows);
}
