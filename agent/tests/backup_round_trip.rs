//! Round trip: a backup restored into an empty place and over a live database gives the
//! same rows, passes `PRAGMA integrity_check`, and every selector finds its backup.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "backup_common.rs"]
mod common;

use common::{dump, integrity_ok, pos, Terminal};
use otter_agent::backup::Selector;
use otter_keys::time::UtcTime;

#[test]
fn restored_database_has_the_same_rows_and_is_whole() {
    let t = Terminal::fresh();
    let before = dump(&t.db);
    let first = t.backup();
    println!(
        "first backup: {} pages of {} B = {} B; shipped {} B in {} packs \
         (+{} B manifest); snapshot {:?}, total {:?}",
        first.pages,
        first.page_size,
        first.database_bytes,
        first.shipped_bytes(),
        first.new_packs,
        first.manifest_bytes,
        first.snapshot_time,
        first.total_time
    );
    assert_eq!(first.sequence, 1);
    assert_eq!(first.new_chunks, first.distinct_chunks);
    assert!(first.shipped_bytes() < first.database_bytes);

    // Into a place where no database is.
    let fresh = t.dir.path().join("restored.db");
    let r = t.restore(Selector::Latest, &fresh).unwrap();
    println!(
        "restore: {} pages, {} packs, {} B fetched, {:?}",
        r.pages, r.packs, r.pack_bytes, r.took
    );
    assert_eq!(r.sequence, 1);
    assert_eq!(std::fs::metadata(&fresh).unwrap().len(), r.database_bytes);
    assert!(integrity_ok(&fresh));
    assert_eq!(dump(&fresh), before);

    // Over the live database, after it changed: back to the backed-up rows.
    pos(&["mutate", t.db.to_str().unwrap(), "append", "5"]);
    assert_ne!(dump(&t.db), before);
    t.restore(Selector::Sequence(1), &t.db).unwrap();
    assert!(integrity_ok(&t.db));
    assert_eq!(dump(&t.db), before);
    // No temporary or stale files are left beside it.
    let names: Vec<String> = std::fs::read_dir(t.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("sales.db") || n.starts_with(".sales.db"))
        .collect();
    assert_eq!(names, vec!["sales.db".to_string()], "{names:?}");

    // A second backup of unchanged data ships only its manifest.
    let second = t.backup();
    assert_eq!((second.sequence, second.new_packs), (2, 0));
    let before_first = UtcTime::from_unix(1_000_000_000);
    assert!(t
        .restore(Selector::AtOrBefore(before_first), &fresh)
        .is_err());
    let r = t
        .restore(Selector::AtOrBefore(UtcTime::now().plus_secs(60)), &fresh)
        .unwrap();
    assert_eq!(r.sequence, 2);
    assert!(t.restore(Selector::Sequence(9), &fresh).is_err());
}
