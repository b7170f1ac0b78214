//! Restores from a chain that retention pruned (real backups in a local store, manifests
//! removed as the server's retention would): without the pruning options the broken chain is
//! refused; with them, the oldest kept backup, one after a gap and the newest all restore
//! exactly, and a manifest stored under another sequence is still refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "backup_common.rs"]
mod common;

use common::{dump, pos, Terminal};
use otter_agent::backup::{restore, RestoreError, RestoreOptions, Selector};

fn pruned() -> RestoreOptions {
    RestoreOptions {
        allow_pruned_prefix: true,
        allow_pruned_gaps: true,
        ..RestoreOptions::default()
    }
}

#[test]
fn a_chain_pruned_by_retention_still_restores_and_still_refuses_a_replay() {
    let t = Terminal::fresh();
    let mut dumps = Vec::new();
    for _ in 0..5 {
        t.backup();
        dumps.push(dump(&t.db));
        pos(&["mutate", t.db.to_str().unwrap(), "append", "1"]);
    }
    let store = t.store();
    // Retention kept #2, #4 and #5.
    for seq in [1u64, 3] {
        std::fs::remove_file(store.manifest_path(&t.device_id, seq).unwrap()).unwrap();
    }
    let out = t.dir.path().join("restored.db");
    let run = |selector, options: &RestoreOptions| {
        restore(
            &store,
            &t.device_id,
            &t.signing.public_key(),
            &t.terminal_id,
            selector,
            &out,
            options,
        )
    };

    let err = run(Selector::Latest, &RestoreOptions::default()).unwrap_err();
    assert!(matches!(err, RestoreError::Chain { .. }), "{err}");
    let only_prefix = RestoreOptions {
        allow_pruned_prefix: true,
        ..RestoreOptions::default()
    };
    let err = run(Selector::Latest, &only_prefix).unwrap_err();
    assert!(err.to_string().contains("gap"), "{err}");
    assert!(!out.exists(), "nothing was written");

    for (seq, expect) in [(2u64, 1usize), (4, 3), (5, 4)] {
        let r = run(Selector::Sequence(seq), &pruned()).unwrap();
        assert_eq!(r.sequence, seq);
        assert_eq!(r.manifests_checked, 3);
        assert_eq!(dump(&out), dumps[expect], "backup #{seq}");
    }
    assert!(run(Selector::Sequence(3), &pruned()).is_err(), "#3 is gone");

    // An old manifest stored in a pruned slot is still a replay.
    let four = store.manifest_path(&t.device_id, 4).unwrap();
    let four_bytes = std::fs::read(&four).unwrap();
    std::fs::copy(store.manifest_path(&t.device_id, 2).unwrap(), &four).unwrap();
    let err = run(Selector::Latest, &pruned()).unwrap_err();
    assert!(err.to_string().contains("replayed"), "{err}");
    std::fs::write(&four, four_bytes).unwrap();
    assert!(run(Selector::Latest, &pruned()).is_ok());
}
