//! Restores from a chain that retention pruned (real backups in a local store, manifests
//! removed as the server's retention would): without the pruning options the broken chain is
//! refused; with them, the oldest kept backup, one after a gap and the newest all restore
//! exactly, and a manifest stored under another sequence is still refused. Given the pruned
//! manifests' headers (as the server lists them), the chain is checked link by link across
//! the gaps, and a forged pruned header is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "backup_common.rs"]
mod common;

use common::{dump, pos, Terminal};
use otter_agent::backup::{restore, RestoreError, RestoreOptions, Selector};
use otter_keys::envelope::SignedManifest;

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
    // Retention kept #2, #4 and #5; the server keeps the pruned ones' headers.
    let mut pruned_headers = std::collections::BTreeMap::new();
    for seq in [1u64, 3] {
        let path = store.manifest_path(&t.device_id, seq).unwrap();
        let m = SignedManifest::from_bytes(&std::fs::read(&path).unwrap(), 1 << 28).unwrap();
        pruned_headers.insert(seq, m.header);
        std::fs::remove_file(path).unwrap();
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

    // With the pruned headers, the whole chain is checked link by link, no gap allowed.
    let linked = |headers| RestoreOptions {
        pruned_headers: headers,
        ..RestoreOptions::default()
    };
    let r = run(Selector::Latest, &linked(pruned_headers.clone())).unwrap();
    assert_eq!(r.sequence, 5);
    assert_eq!(dump(&out), dumps[4]);
    let mut forged = pruned_headers.clone();
    forged.get_mut(&3).unwrap().created = forged[&3].created.plus_secs(-1);
    let err = run(Selector::Latest, &linked(forged))
        .unwrap_err()
        .to_string();
    // Refused by the hash link, or, when the backups were made within one second, first by
    // the time order the forged header breaks: either way the forgery is caught.
    assert!(
        err.contains("previous hash") || err.contains("is before the previous manifest"),
        "{err}"
    );
    let mut partial = pruned_headers;
    partial.remove(&1);
    assert!(
        run(Selector::Latest, &linked(partial)).is_err(),
        "a prefix the headers do not cover needs allow_pruned_prefix"
    );
}
