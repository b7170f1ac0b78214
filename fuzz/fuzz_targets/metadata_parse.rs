//! Untrusted bytes into every metadata reader. Whatever parses must survive publication:
//! `to_bytes` then `from_bytes` gives the same typed value, the same canonical bytes (so the
//! same signatures verify) and the same published bytes. A root that parses also has its
//! signatures checked against its own (attacker-chosen) keys, which exercises the ed25519,
//! P-256 and RSA key decoders on hostile input.
//!
//! Floats may appear outside `signed` (never inside: they have no canonical form); the
//! workspace builds serde_json with `float_roundtrip`, so they too come back exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otter_keys::metadata::{AnyMetadata, Metadata, Role, Root, Snapshot, Targets, Timestamp};

/// A cap well above any real metadata, below what would make the fuzzer slow.
const MAX: usize = 1 << 20;

fn round_trip<T: Role + PartialEq + std::fmt::Debug>(data: &[u8]) -> Option<Metadata<T>> {
    let md = Metadata::<T>::from_bytes(data, MAX).ok()?;
    let published = md.to_bytes();
    // Pretty-printing may make it longer than the input: no cap on the second read.
    let again = match Metadata::<T>::from_bytes(&published, usize::MAX) {
        Ok(m) => m,
        Err(e) => panic!("{} metadata does not re-parse after to_bytes: {e}", T::TYPE),
    };
    assert_eq!(md.signed(), again.signed(), "typed value changed");
    assert_eq!(
        md.canonical_signed(),
        again.canonical_signed(),
        "canonical bytes changed"
    );
    let ids = |m: &Metadata<T>| -> Vec<(String, String)> {
        m.signatures()
            .iter()
            .map(|s| (s.keyid.0.clone(), s.sig.clone()))
            .collect()
    };
    assert_eq!(ids(&md), ids(&again), "signatures changed");
    assert_eq!(
        md.signatures(),
        again.signatures(),
        "signature members changed"
    );
    assert_eq!(
        published,
        again.to_bytes(),
        "published bytes are not stable"
    );
    Some(md)
}

fuzz_target!(|data: &[u8]| {
    if let Some(root) = round_trip::<Root>(data) {
        let _ = root.verify_self();
        let _ = root.verify_successor(&root);
    }
    round_trip::<Targets>(data);
    round_trip::<Snapshot>(data);
    round_trip::<Timestamp>(data);
    if let Ok(any) = AnyMetadata::from_bytes(data, MAX) {
        let again = AnyMetadata::from_bytes(&any.to_bytes(), usize::MAX)
            .expect("AnyMetadata re-parses its own output");
        assert_eq!(any.role_type(), again.role_type());
        assert_eq!(any.canonical_signed(), again.canonical_signed());
    }
});
