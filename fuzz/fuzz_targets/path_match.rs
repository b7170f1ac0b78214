//! Delegation path patterns and target paths, both attacker-controlled (a delegating role's
//! `paths`, a target name). Matching must never panic and never take more than linear-times-
//! linear time (libFuzzer's -timeout catches blow-ups); a pattern without wildcards matches
//! exactly itself; `path_hash_prefixes` matching never panics either.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use otter_keys::metadata::{path_matches, DelegatedRole};

fuzz_target!(|input: (&str, &str)| {
    let (pattern, path) = input;
    let matched = path_matches(pattern, path);
    if !pattern.contains(['*', '?', '[']) {
        assert_eq!(
            matched,
            pattern == path,
            "literal pattern {pattern:?} vs {path:?}"
        );
    }
    if pattern.split('/').count() != path.split('/').count() {
        assert!(
            !matched,
            "a match must have as many segments as the pattern"
        );
    }
    let role = DelegatedRole {
        name: "fuzz".into(),
        keyids: Vec::new(),
        threshold: 1,
        terminating: false,
        paths: None,
        path_hash_prefixes: Some(vec![pattern.to_string()]),
        extra: BTreeMap::new(),
    };
    let _ = role.is_delegated_path(path);
});
