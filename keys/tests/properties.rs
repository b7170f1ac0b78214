//! Properties that hold for all inputs, checked on generated ones (proptest; failures found
//! are kept in `properties.proptest-regressions` beside this file and replayed first):
//!
//! - Any targets metadata Otter can build survives publication: serialise, parse, and the
//!   typed value, the canonical bytes, the published bytes and the signatures are unchanged
//!   (spec 4: members are preserved when re-serialising).
//! - The canonical form is stable: canonicalising the parse of a canonical form gives it back.
//! - The strict parser and the metadata readers never panic, whatever the bytes.
//! - Delegation path matching never panics and agrees with an exhaustive matcher.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use common::{key, Repo, MAX};
use otter_keys::canonical::{parse_strict, to_canonical_bytes};
use otter_keys::crypto::SigningKey;
use otter_keys::metadata::{
    count_valid_signatures, path_matches, DelegatedRole, Delegations, Metadata, Root, Snapshot,
    TargetFile, Targets, Timestamp, SPEC_VERSION,
};
use otter_keys::time::UtcTime;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::Value;

// ---- strategies --------------------------------------------------------------------------

/// JSON without floats (what signed metadata may hold), strings drawn by `string`.
fn json_with(string: BoxedStrategy<String>) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        string.clone().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 40, 5, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(string.clone(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Any JSON without floats, strings of any characters (control characters included).
fn any_json() -> impl Strategy<Value = Value> {
    json_with(any::<String>().boxed())
}

/// A JSON object, as `custom` must be.
fn json_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(any::<String>(), any_json(), 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// Expiry times that have a `YYYY-MM-DDTHH:MM:SSZ` form: years 0000 to 9999.
fn expires() -> impl Strategy<Value = UtcTime> {
    (-62_167_219_200i64..=253_402_300_799).prop_map(UtcTime::from_unix)
}

fn hashes() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        prop_oneof![Just("sha256"), Just("sha512"), Just("blake2b-256")].prop_map(String::from),
        "[0-9a-f]{64}",
        1..3,
    )
}

fn target_file() -> impl Strategy<Value = TargetFile> {
    (
        any::<u64>(),
        hashes(),
        prop::option::of(json_object()),
        prop::collection::btree_map("x-[a-z]{1,8}", any_json(), 0..2),
    )
        .prop_map(|(length, hashes, custom, mut extra)| {
            if let Some(c) = custom {
                extra.insert("custom".into(), c);
            }
            TargetFile {
                length,
                hashes,
                extra,
            }
        })
}

fn delegations() -> impl Strategy<Value = Delegations> {
    (
        prop::collection::btree_set(0u8..=255, 1..4),
        prop::collection::btree_set("d-[a-z0-9]{1,8}", 0..4),
        prop::collection::vec(
            (
                1u32..3,
                any::<bool>(),
                prop_oneof![
                    Just(None),
                    prop::collection::vec("[a-z*?/.]{0,12}", 0..3).prop_map(|p| Some((p, true))),
                    prop::collection::vec("[0-9a-f]{1,4}", 0..3).prop_map(|p| Some((p, false))),
                ],
            ),
            4,
        ),
    )
        .prop_map(|(seeds, names, shapes)| {
            let keys: Vec<SigningKey> = seeds.into_iter().map(key).collect();
            let roles = names
                .into_iter()
                .zip(shapes)
                .map(|(name, (threshold, terminating, shape))| {
                    let (paths, path_hash_prefixes) = match shape {
                        None => (None, None),
                        Some((p, true)) => (Some(p), None),
                        Some((p, false)) => (None, Some(p)),
                    };
                    DelegatedRole {
                        name,
                        keyids: keys.iter().map(|k| k.key_id()).collect(),
                        threshold,
                        terminating,
                        paths,
                        path_hash_prefixes,
                        extra: BTreeMap::new(),
                    }
                })
                .collect();
            Delegations {
                keys: keys.iter().map(|k| (k.key_id(), k.public_key())).collect(),
                roles: Some(roles),
                extra: BTreeMap::new(),
            }
        })
}

fn targets() -> impl Strategy<Value = Targets> {
    (
        1..=u64::MAX,
        expires(),
        prop::collection::btree_map(any::<String>(), target_file(), 0..5),
        prop::option::of(delegations()),
        prop::collection::btree_map("x-[a-z]{1,8}", any_json(), 0..2),
    )
        .prop_map(|(version, expires, targets, delegations, extra)| Targets {
            type_: "targets".into(),
            spec_version: SPEC_VERSION.into(),
            version,
            expires,
            targets,
            delegations,
            extra,
        })
}

/// Valid published documents of every role, to mutate.
fn samples() -> &'static [Vec<u8>; 4] {
    static SAMPLES: OnceLock<[Vec<u8>; 4]> = OnceLock::new();
    SAMPLES.get_or_init(|| {
        let repo = Repo::new();
        [
            repo.root.to_bytes(),
            repo.targets.to_bytes(),
            repo.snapshot.to_bytes(),
            repo.timestamp.to_bytes(),
        ]
    })
}

/// Shell-style matching of one path segment, by exhaustive search: `*` any run of
/// characters, `?` one character, anything else itself. (No `[` classes: those are covered
/// by the library's own tests.)
fn reference_glob(p: &[char], s: &[char]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some(('*', rest)) => (0..=s.len()).any(|i| reference_glob(rest, &s[i..])),
        Some(('?', rest)) => !s.is_empty() && reference_glob(rest, &s[1..]),
        Some((c, rest)) => s.first() == Some(c) && reference_glob(rest, &s[1..]),
    }
}

fn reference_path_matches(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').collect();
    let s: Vec<&str> = path.split('/').collect();
    p.len() == s.len()
        && p.iter().zip(&s).all(|(p, s)| {
            let p: Vec<char> = p.chars().collect();
            let s: Vec<char> = s.chars().collect();
            reference_glob(&p, &s)
        })
}

// ---- properties --------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn targets_metadata_survives_publication_unchanged(t in targets(), seed in any::<u8>()) {
        let signer = key(seed);
        let mut md = Metadata::new(t.clone()).unwrap();
        md.sign(&signer);
        let published = md.to_bytes();
        let parsed = Metadata::<Targets>::from_bytes(&published, MAX).unwrap();
        prop_assert_eq!(parsed.signed(), &t);
        prop_assert_eq!(parsed.canonical_signed(), md.canonical_signed());
        prop_assert_eq!(parsed.signatures(), md.signatures());
        prop_assert_eq!(&parsed.to_bytes(), &published);
        // The signature made before publication verifies after it.
        let keys = BTreeMap::from([(signer.key_id(), signer.public_key())]);
        let valid = count_valid_signatures(
            parsed.canonical_signed(),
            parsed.signatures(),
            &keys,
            &[signer.key_id()],
        );
        prop_assert_eq!(valid, 1);
        // A second round trip changes nothing either.
        let again = Metadata::<Targets>::from_bytes(&parsed.to_bytes(), MAX).unwrap();
        prop_assert_eq!(again.canonical_signed(), md.canonical_signed());
    }

    #[test]
    fn canonical_form_is_stable(v in json_with("[^\\x00-\\x1f]{0,10}".boxed())) {
        // Strings without control characters: OLPC canonical JSON writes those raw, which is
        // not JSON, so only such canonical forms can be parsed back.
        let once = to_canonical_bytes(&v).unwrap();
        let parsed = parse_strict(&once, MAX).unwrap();
        let twice = to_canonical_bytes(&parsed).unwrap();
        prop_assert_eq!(once, twice);
    }

    #[test]
    fn canonical_form_ignores_how_the_json_was_written(v in any_json()) {
        // Compact, pretty, or any other layout of the same value: one canonical form.
        let compact = serde_json::to_vec(&v).unwrap();
        let pretty = serde_json::to_vec_pretty(&v).unwrap();
        let a = to_canonical_bytes(&parse_strict(&compact, MAX).unwrap()).unwrap();
        let b = to_canonical_bytes(&parse_strict(&pretty, MAX).unwrap()).unwrap();
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(a, to_canonical_bytes(&v).unwrap());
    }

    #[test]
    fn parse_strict_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_strict(&bytes, MAX);
    }

    #[test]
    fn parse_strict_never_panics_on_json_like_text(text in "[\\[\\]{}\":,0-9a-z.eE+\\-\\\\u ]{0,256}") {
        if let Ok(v) = parse_strict(text.as_bytes(), MAX) {
            // Whatever it accepts, it accepts again after writing it out.
            let again = parse_strict(&serde_json::to_vec(&v).unwrap(), MAX).unwrap();
            prop_assert_eq!(v, again);
        }
    }

    #[test]
    fn metadata_readers_never_panic_on_mutated_documents(
        which in 0usize..4,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = samples()[which].clone();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let _ = Metadata::<Root>::from_bytes(&bytes, MAX);
        let _ = Metadata::<Targets>::from_bytes(&bytes, MAX);
        let _ = Metadata::<Snapshot>::from_bytes(&bytes, MAX);
        let _ = Metadata::<Timestamp>::from_bytes(&bytes, MAX);
    }

    #[test]
    fn metadata_readers_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Metadata::<Root>::from_bytes(&bytes, MAX);
        let _ = Metadata::<Targets>::from_bytes(&bytes, MAX);
    }

    #[test]
    fn path_matches_never_panics(pattern in "[ab*?\\[\\]!\\-/\\\\é]{0,16}", path in "[ab\\[\\]!\\-/é]{0,16}") {
        let _ = path_matches(&pattern, &path);
    }

    #[test]
    fn path_matches_agrees_with_an_exhaustive_matcher(pattern in "[ab*?/]{0,10}", path in "[ab/]{0,10}") {
        prop_assert_eq!(
            path_matches(&pattern, &path),
            reference_path_matches(&pattern, &path),
            "pattern {:?} path {:?}", pattern, path
        );
    }

    #[test]
    fn a_pattern_without_wildcards_matches_exactly_itself(path in "[a-z0-9._/-]{0,24}", other in "[a-z0-9._/-]{0,24}") {
        prop_assert!(path_matches(&path, &path));
        prop_assert_eq!(path_matches(&path, &other), path == other);
    }

    #[test]
    fn a_star_never_crosses_a_slash(dir in "[a-z]{1,6}", rest in "[a-z]{1,6}(/[a-z]{1,6}){1,3}") {
        let deep = format!("{dir}/{rest}");
        let one_level = format!("{dir}/*");
        prop_assert!(!path_matches(&one_level, &deep));
        let segments = deep.split('/').count();
        let stars = vec!["*"; segments].join("/");
        prop_assert!(path_matches(&stars, &deep));
    }
}

#[test]
fn generated_targets_are_valid_metadata() {
    // Keep the strategies honest: what they make must be buildable (Metadata::new validates),
    // or the round-trip property above would be vacuous.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut names = BTreeSet::new();
    for _ in 0..64 {
        let t = targets().new_tree(&mut runner).unwrap().current();
        for n in t.targets.keys() {
            names.insert(n.clone());
        }
        Metadata::new(t).unwrap();
    }
    assert!(names.len() > 10, "target names should vary: {names:?}");
}
