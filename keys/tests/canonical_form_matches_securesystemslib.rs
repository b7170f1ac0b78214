//! Otter's canonical JSON is byte for byte the one the TUF reference implementation signs:
//! securesystemslib's `encode_canonical` (python-tuf) and go-securesystemslib's `cjson`
//! (go-tuf). Otherwise a signature made by one does not verify in the other, and "any TUF
//! client can verify an Otter repository" (DESIGN.md) is false for some documents.
//!
//! Spec 4.1 ("Metaformat"): digests and signatures are computed over the "canonical JSON"
//! subdialect (OLPC). The rules the reference implementation applies, and which
//! `common::reference_canonical` re-implements: members sorted by name in code point order,
//! no whitespace, integers only, only `"` and `\` escaped, strings otherwise written as they
//! are.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::reference_canonical;
use otter_keys::canonical::to_canonical_bytes;
use proptest::prelude::*;
use serde_json::{json, Value};

fn assert_same(v: &Value, expected: &[u8]) {
    assert_eq!(
        String::from_utf8_lossy(&reference_canonical(v).unwrap()),
        String::from_utf8_lossy(expected),
        "the reference encoder itself"
    );
    assert_eq!(
        String::from_utf8_lossy(&to_canonical_bytes(v).unwrap()),
        String::from_utf8_lossy(expected),
        "otter-keys' canonical form of {v}"
    );
}

#[test]
fn securesystemslib_test_vectors() {
    // securesystemslib's own test cases for encode_canonical.
    assert_same(&json!([1, 2, 3]), b"[1,2,3]");
    assert_same(&json!([]), b"[]");
    assert_same(&json!({}), b"{}");
    assert_same(&json!({"A": [99]}), br#"{"A":[99]}"#);
    assert_same(&json!({"A": true}), br#"{"A":true}"#);
    assert_same(&json!({"B": false}), br#"{"B":false}"#);
    assert_same(&json!({"x": 3, "y": 2}), br#"{"x":3,"y":2}"#);
    assert_same(&json!({"x": 3, "y": null}), br#"{"x":3,"y":null}"#);
}

#[test]
fn only_quote_and_backslash_are_escaped() {
    assert_same(&json!("a\"b\\c"), br#""a\"b\\c""#);
    // Control characters are written raw (so canonical JSON is not always JSON).
    assert_same(
        &json!("tab\there\nnewline\u{1}"),
        b"\"tab\there\nnewline\x01\"",
    );
    assert_same(&json!("ünïcödé / €"), "\"ünïcödé / €\"".as_bytes());
    assert_same(&json!(-42), b"-42");
    assert_same(&json!(u64::MAX), b"18446744073709551615");
}

#[test]
fn member_names_sort_in_code_point_order_even_when_one_is_a_prefix_of_another() {
    // Python's sorted() and Go's sort.Strings put "a" before "a b": a prefix sorts first.
    assert_same(&json!({"a b": 2, "a": 1}), br#"{"a":1,"a b":2}"#);
    assert_same(
        &json!({"firmware": 1, "firmware!": 2, "firmware-2": 3}),
        br#"{"firmware":1,"firmware!":2,"firmware-2":3}"#,
    );
    // '"' (U+0022) sorts before '#' (U+0023), whatever its escaped spelling.
    assert_same(&json!({"a#": 2, "a\"": 1}), br#"{"a\"":1,"a#":2}"#);
    // '\' (U+005C) sorts before ']' (U+005D).
    assert_same(&json!({"a]": 2, "a\\": 1}), br#"{"a\\":1,"a]":2}"#);
}

#[test]
fn strings_are_not_unicode_normalised() {
    // "e" + COMBINING ACUTE ACCENT stays two code points; python-tuf and go-tuf sign it so.
    assert_same(&json!("cafe\u{301}"), "\"cafe\u{301}\"".as_bytes());
    // KELVIN SIGN is not the letter K.
    assert_same(&json!({"\u{212a}": 1}), "{\"\u{212a}\":1}".as_bytes());
}

/// Arbitrary JSON without floats: what a signed object may hold.
fn json_value() -> impl Strategy<Value = Value> {
    let name = prop_oneof![
        "[a-c !\"#\\\\\\]]{0,4}",
        "\\PC{0,6}",
        Just("e\u{301}".to_string()),
        Just("\u{e9}".to_string()),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        "\\PC{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(name.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn canonical_bytes_equal_the_reference_encoders(v in json_value()) {
        let ours = to_canonical_bytes(&v).unwrap();
        let reference = reference_canonical(&v).unwrap();
        prop_assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&reference)
        );
    }
}
