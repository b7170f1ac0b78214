//! Parallel pack uploads: a backup with several uploads in flight stores the same backup as
//! one made one pack at a time (same pages, chunks, and restored rows), and every stored pack
//! is one the manifest names.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "backup_common.rs"]
mod common;

use common::{dump, files_under, integrity_ok, Terminal};
use otter_agent::backup::{run_backup, run_backup_parallel, BackupConfig, LocalDirStore, Selector};

#[test]
fn parallel_uploads_store_the_same_backup_as_serial_ones() {
    let mut t = Terminal::fresh();
    t.pack_target = 64 * 1024;
    let before = dump(&t.db);

    let parallel = run_backup_parallel(&t.config(), &t.keys(), &t.store(), 4).unwrap();
    assert!(parallel.new_packs >= 8, "{parallel:?}");
    assert_eq!(parallel.new_chunks, parallel.distinct_chunks);
    let packs = files_under(&t.store_root().join("packs"));
    assert_eq!(packs.len() as u64, parallel.new_packs, "{packs:?}");

    // The same database, backed up one pack at a time into another state dir and store.
    let mut serial_config =
        BackupConfig::new(&t.db, t.dir.path().join("state-serial"), &t.device_id);
    serial_config.pack_target_size = t.pack_target;
    let serial_store = LocalDirStore::new(t.dir.path().join("store-serial"));
    let serial = run_backup(&serial_config, &t.keys(), &serial_store).unwrap();
    assert_eq!(
        (
            serial.pages,
            serial.distinct_chunks,
            serial.new_chunks,
            serial.new_packs
        ),
        (
            parallel.pages,
            parallel.distinct_chunks,
            parallel.new_chunks,
            parallel.new_packs
        )
    );

    let restored = t.dir.path().join("restored.db");
    let r = t.restore(Selector::Latest, &restored).unwrap();
    assert_eq!(r.packs, parallel.new_packs);
    assert!(integrity_ok(&restored));
    assert_eq!(dump(&restored), before);

    // A second parallel backup of unchanged data uploads nothing new.
    let again = run_backup_parallel(&t.config(), &t.keys(), &t.store(), 4).unwrap();
    assert_eq!((again.sequence, again.new_packs), (2, 0));
}
