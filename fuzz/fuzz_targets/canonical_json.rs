//! Untrusted bytes into the strict JSON parser, and what it accepts into the canonical
//! encoder: canonical bytes are deterministic, and when they are JSON (strings without control
//! characters) they parse back to the same value and re-encode to the same bytes. Whatever the
//! parser accepts, serde_json's own output of it is accepted again as the same value.
//!
//! Floats come back equal too: the workspace builds serde_json with `float_roundtrip`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otter_keys::canonical::{parse_strict, to_canonical_bytes};

const MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = parse_strict(data, MAX) else {
        return;
    };
    let compact = serde_json::to_vec(&value).expect("a parsed value serialises");
    let reparsed = parse_strict(&compact, usize::MAX).expect("serde_json's output re-parses");
    assert_eq!(reparsed, value, "compact re-parse changed the value");

    // Floats have no canonical form; everything else does.
    let Ok(canonical) = to_canonical_bytes(&value) else {
        return;
    };
    assert_eq!(
        to_canonical_bytes(&value).ok().as_deref(),
        Some(canonical.as_slice()),
        "canonical form is not deterministic"
    );
    if let Ok(back) = parse_strict(&canonical, usize::MAX) {
        assert_eq!(back, value, "canonical form parses to another value");
        assert_eq!(
            to_canonical_bytes(&back).ok().as_deref(),
            Some(canonical.as_slice()),
            "canonical form is not idempotent"
        );
    }
});
