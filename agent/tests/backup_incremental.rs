//! Incremental size: after `pos_db.py mutate DB update 1` (1% of rows refunded at random),
//! the next backup ships far fewer bytes than the first, and both backups restore.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "backup_common.rs"]
mod common;

use common::{dump, integrity_ok, pos, Terminal};
use otter_agent::backup::Selector;

#[test]
fn second_backup_ships_only_changed_pages() {
    let t = Terminal::fresh();
    let rows_1 = dump(&t.db);
    let first = t.backup();
    pos(&["mutate", t.db.to_str().unwrap(), "update", "1"]);
    let rows_2 = dump(&t.db);
    let second = t.backup();
    let ratio = second.shipped_bytes() as f64 / first.shipped_bytes() as f64;
    println!(
        "database {} B ({} pages); first backup shipped {} B ({} packs, manifest {} B) in {:?}; \
         after 1% updates: {} new pages of {} ({:.1}%), shipped {} B ({} packs, manifest {} B) \
         in {:?} = {:.1}% of the first",
        first.database_bytes,
        first.pages,
        first.shipped_bytes(),
        first.new_packs,
        first.manifest_bytes,
        first.total_time,
        second.new_chunks,
        second.pages,
        100.0 * second.new_chunks as f64 / second.pages as f64,
        second.shipped_bytes(),
        second.new_packs,
        second.manifest_bytes,
        second.total_time,
        100.0 * ratio
    );
    assert_eq!(second.sequence, 2);
    assert!(second.new_chunks > 0 && second.pack_bytes > 0);
    assert!(ratio < 0.40, "second backup shipped {:.1}%", 100.0 * ratio);

    let out = t.dir.path().join("r.db");
    t.restore(Selector::Sequence(1), &out).unwrap();
    assert!(integrity_ok(&out));
    assert_eq!(dump(&out), rows_1);
    t.restore(Selector::Latest, &out).unwrap();
    assert!(integrity_ok(&out));
    assert_eq!(dump(&out), rows_2);
}
