//! Tests of the signed manifest: round trip, tampering, chain, countersignature, framing.

use std::collections::BTreeMap;

use super::*;
use crate::envelope::{open_pack, ChunkKey, PackBuilder, SealedPack, MAX_HEADER_BYTES};
use crate::time::UtcTime;

const MAX: usize = 1 << 20;

struct Fixture {
    device: SigningKey,
    identity: Identity,
    pack: SealedPack,
    body: ManifestBody,
}

fn fixture() -> Fixture {
    let key = ChunkKey::generate();
    let pages: Vec<Vec<u8>> = (0..4u8)
        .map(|i| vec![i; 512])
        .chain([vec![0; 512]])
        .collect();
    let mut builder = PackBuilder::new();
    for p in &pages {
        builder.add(key.chunk_id(p), p).unwrap();
    }
    let identity = Identity::generate();
    let pack = builder.finish(&[identity.to_public()]).unwrap();
    let body = ManifestBody {
        page_size: 512,
        page_count: pages.len() as u64,
        pages: pages.iter().map(|p| key.chunk_id(p)).collect(),
        chunks: pack.locations().collect(),
        file_blake3: "11".repeat(32),
        file_sha256: "22".repeat(32),
        row_counts: [("sales".to_string(), 5u64), ("items".to_string(), 9)].into(),
        schema_version: 3,
        extra: BTreeMap::new(),
    };
    Fixture {
        device: SigningKey::generate(),
        identity,
        pack,
        body,
    }
}

impl Fixture {
    fn first(&self) -> SignedManifest {
        let fields = ManifestFields::first("till-1", t(100), vec![self.pack.pack_ref()]);
        self.seal(fields)
    }
    fn seal(&self, fields: ManifestFields) -> SignedManifest {
        SignedManifest::seal(
            fields,
            &self.body,
            &self.device,
            &[self.identity.to_public()],
        )
        .unwrap()
    }
    fn next(&self, prev: &SignedManifest, at: i64) -> SignedManifest {
        let fields =
            ManifestFields::after(&prev.header, t(at), vec![self.pack.pack_ref()]).unwrap();
        self.seal(fields)
    }
}

fn t(secs: i64) -> UtcTime {
    UtcTime::from_unix(1_700_000_000 + secs)
}

#[test]
fn manifest_round_trip() {
    let f = fixture();
    let m = f.first();
    let bytes = m.to_bytes().unwrap();
    assert!(bytes.starts_with(b"OTTERMF1"));
    let back = SignedManifest::from_bytes(&bytes, bytes.len()).unwrap();
    assert_eq!(back, m);
    assert_eq!(back.to_bytes().unwrap(), bytes);
    back.verify_received(&f.device.public_key(), None).unwrap();
    assert_eq!(back.open_body(&f.identity, MAX).unwrap(), f.body);
    // The body's chunk locations lead to the pages.
    let open = open_pack(&f.identity, &f.pack.ciphertext, &f.pack.id, MAX).unwrap();
    for (i, chunk) in f.body.pages.iter().enumerate() {
        let loc = f.body.chunks[chunk];
        assert_eq!(
            open.at(&loc).unwrap(),
            &[if i == 4 { 0 } else { i as u8 }; 512]
        );
    }
}

#[test]
fn header_hash_is_sha256_of_the_framed_header_bytes() {
    let m = fixture().first();
    let bytes = m.to_bytes().unwrap();
    let len = u32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize;
    assert_eq!(m.header_hash().unwrap(), sha256_hex(&bytes[12..12 + len]));
}

#[test]
fn the_chain_is_checked() {
    let f = fixture();
    let public = f.device.public_key();
    let m1 = f.first();
    let m2 = f.next(&m1, 200);
    let m3 = f.next(&m2, 300);
    m2.verify_received(&public, Some(&m1.header)).unwrap();
    m3.verify_received(&public, Some(&m2.header)).unwrap();

    let chain_err = |m: &SignedManifest, prev: Option<&ManifestHeader>| match m
        .verify_received(&public, prev)
    {
        Err(e @ EnvelopeError::Chain { .. }) => e.to_string(),
        other => panic!("expected a chain error, got {other:?}"),
    };
    assert!(chain_err(&m3, Some(&m1.header)).contains("does not follow"));
    assert!(chain_err(&m2, None).contains("missing"));
    assert!(chain_err(&m2, Some(&m2.header)).contains("does not follow"));
    assert!(chain_err(&m1, Some(&m1.header)).contains("does not follow"));

    // Right sequence, wrong predecessor (a fork).
    let other_m1 = f.seal(ManifestFields::first(
        "till-1",
        t(150),
        vec![f.pack.pack_ref()],
    ));
    assert!(chain_err(&m2, Some(&other_m1.header)).contains("previous hash"));

    // Another device's manifest is not a predecessor.
    let mut foreign = m1.header.clone();
    foreign.device_id = "till-2".into();
    assert!(chain_err(&m2, Some(&foreign)).contains("device"));

    // Time must not run backwards.
    let early = f.next(&m1, 50);
    assert!(chain_err(&early, Some(&m1.header)).contains("before"));
    let same_time = f.next(&m1, 100);
    same_time
        .verify_received(&public, Some(&m1.header))
        .unwrap();
}

#[test]
fn tampered_header_is_refused() {
    let f = fixture();
    let public = f.device.public_key();
    let m1 = f.first();
    let edits: Vec<fn(&mut ManifestHeader)> = vec![
        |h| h.device_id.push('x'),
        |h| h.created = h.created.plus_secs(1),
        |h| h.packs.clear(),
        |h| h.packs[0].length += 1,
    ];
    for edit in edits {
        let mut m = m1.clone();
        edit(&mut m.header);
        assert!(
            matches!(
                m.verify_received(&public, None),
                Err(EnvelopeError::BadSignature { .. })
            ),
            "{:?}",
            m.header
        );
    }
}

#[test]
fn tampered_signature_or_wrong_device_key_is_refused() {
    let f = fixture();
    let m1 = f.first();
    let mut m = m1.clone();
    let mut sig = hex::decode(&m.signature.sig).unwrap();
    sig[0] ^= 1;
    m.signature.sig = hex::encode(sig);
    let err = m.verify_received(&f.device.public_key(), None).unwrap_err();
    assert!(matches!(err, EnvelopeError::BadSignature { .. }), "{err}");

    let stranger = SigningKey::generate().public_key();
    let err = m1.verify_received(&stranger, None).unwrap_err();
    assert!(err.to_string().contains("not the device key"), "{err}");

    // Signed by another key that claims the device's key id.
    let mut forged = m1.clone();
    forged.signature.sig = SigningKey::generate().sign(b"x").sig;
    assert!(matches!(
        forged.verify_received(&f.device.public_key(), None),
        Err(EnvelopeError::BadSignature { .. })
    ));
}

#[test]
fn tampered_body_is_refused_without_a_key() {
    let f = fixture();
    let public = f.device.public_key();
    let mut m = f.first();
    let last = m.body_ciphertext.len() - 1;
    m.body_ciphertext[last] ^= 1;
    assert!(matches!(
        m.verify_received(&public, None),
        Err(EnvelopeError::HashMismatch { .. })
    ));
    assert!(matches!(
        m.open_body(&f.identity, MAX),
        Err(EnvelopeError::HashMismatch { .. })
    ));
    m.body_ciphertext.push(0);
    assert!(matches!(
        m.verify_received(&public, None),
        Err(EnvelopeError::LengthMismatch { .. })
    ));
}

#[test]
fn every_flipped_byte_of_the_stored_form_is_refused() {
    let f = fixture();
    let public = f.device.public_key();
    let bytes = f.first().to_bytes().unwrap();
    // 0x20 turns lower-case hex into upper-case, which decodes to the same bytes.
    for mask in [0x01, 0x20, 0x80] {
        for pos in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[pos] ^= mask;
            let accepted = SignedManifest::from_bytes(&bad, bad.len())
                .and_then(|m| m.verify_received(&public, None));
            assert!(accepted.is_err(), "flip {mask:#x} at {pos} accepted");
        }
    }
}

#[test]
fn signature_objects_have_one_form() {
    let f = fixture();
    let public = f.device.public_key();
    let mut m = f.first();
    m.signature.extra.insert("note".into(), "hi".into());
    let err = m.verify_received(&public, None).unwrap_err();
    assert!(
        err.to_string().contains("other than keyid and sig"),
        "{err}"
    );
    let mut m = f.first();
    m.signature.sig = m.signature.sig.to_uppercase();
    let err = m.verify_received(&public, None).unwrap_err();
    assert!(err.to_string().contains("lower-case"), "{err}");
}

#[test]
fn body_needs_a_recipient_identity_and_respects_the_cap() {
    let f = fixture();
    let m = f.first();
    assert!(matches!(
        m.open_body(&Identity::generate(), MAX),
        Err(EnvelopeError::Decrypt {
            what: "manifest body"
        })
    ));
    assert!(matches!(
        m.open_body(&f.identity, 100),
        Err(EnvelopeError::PlaintextTooLarge { max: 100, .. })
    ));
}

#[test]
fn seal_refuses_bodies_that_do_not_match_the_packs() {
    let f = fixture();
    let fields = ManifestFields::first("till-1", t(0), vec![]);
    let err =
        SignedManifest::seal(fields, &f.body, &f.device, &[f.identity.to_public()]).unwrap_err();
    assert!(err.to_string().contains("does not list"), "{err}");
    let fields = ManifestFields::first("till-1", t(0), vec![f.pack.pack_ref()]);
    assert!(matches!(
        SignedManifest::seal(fields, &f.body, &f.device, &[]),
        Err(EnvelopeError::NoRecipients)
    ));
}

#[test]
fn every_recipient_can_open_the_body() {
    let f = fixture();
    let backup_key = Identity::generate();
    let fields = ManifestFields::first("till-1", t(0), vec![f.pack.pack_ref()]);
    let m = SignedManifest::seal(
        fields,
        &f.body,
        &f.device,
        &[f.identity.to_public(), backup_key.to_public()],
    )
    .unwrap();
    assert_eq!(m.open_body(&f.identity, MAX).unwrap(), f.body);
    assert_eq!(m.open_body(&backup_key, MAX).unwrap(), f.body);
}

#[test]
fn countersignature_binds_server_key_and_header() {
    let f = fixture();
    let server = SigningKey::generate();
    let m1 = f.first();
    let m2 = f.next(&m1, 1);
    let cs = m1.countersign(&server).unwrap();
    assert_eq!(cs.header_hash, m1.header_hash().unwrap());
    m1.verify_countersignature(&server.public_key(), &cs)
        .unwrap();
    assert!(m2
        .verify_countersignature(&server.public_key(), &cs)
        .is_err());
    assert!(m1
        .verify_countersignature(&SigningKey::generate().public_key(), &cs)
        .is_err());
    let mut moved = cs.clone();
    moved.header_hash = m2.header_hash().unwrap();
    assert!(m2
        .verify_countersignature(&server.public_key(), &moved)
        .is_err());
    // The device's own signature is no countersignature.
    let fake = Countersignature {
        header_hash: m1.header_hash().unwrap(),
        signature: m1.signature.clone(),
    };
    assert!(m1
        .verify_countersignature(&f.device.public_key(), &fake)
        .is_err());
    let json = serde_json::to_string(&cs).unwrap();
    assert_eq!(serde_json::from_str::<Countersignature>(&json).unwrap(), cs);
}

#[test]
fn framing_errors_are_clear() {
    let f = fixture();
    let bytes = f.first().to_bytes().unwrap();
    let err = |b: &[u8], max: usize| SignedManifest::from_bytes(b, max).unwrap_err().to_string();
    assert!(err(&bytes, bytes.len() - 1).contains("more than"));
    assert!(err(b"OTTERMF2", 100).contains("not an Otter backup manifest"));
    assert!(err(b"OTTERMF1\0\0", 100).contains("truncated"));
    assert!(err(&bytes[..40], 100).contains("truncated"));
    let mut huge = b"OTTERMF1".to_vec();
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(err(&huge, 100).contains(&MAX_HEADER_BYTES.to_string()));

    // Same header, not canonical (whitespace added): refused.
    let m = f.first();
    let header = m.header.canonical_bytes().unwrap();
    let mut spaced = header.clone();
    spaced.insert(1, b' ');
    let sig = to_canonical_bytes(&m.signature).unwrap();
    let mut b = b"OTTERMF1".to_vec();
    b.extend_from_slice(&(spaced.len() as u32).to_be_bytes());
    b.extend_from_slice(&spaced);
    b.extend_from_slice(&(sig.len() as u32).to_be_bytes());
    b.extend_from_slice(&sig);
    assert!(err(&b, MAX).contains("canonical"));

    // Unknown header members are refused, not dropped.
    let mut v: serde_json::Value = serde_json::from_slice(&header).unwrap();
    v["note"] = "hi".into();
    let extra = to_canonical_bytes(&v).unwrap();
    let mut b = b"OTTERMF1".to_vec();
    b.extend_from_slice(&(extra.len() as u32).to_be_bytes());
    b.extend_from_slice(&extra);
    b.extend_from_slice(&(sig.len() as u32).to_be_bytes());
    b.extend_from_slice(&sig);
    assert!(err(&b, MAX).contains("unknown field"));
}

#[test]
fn header_rules_are_checked_on_receipt() {
    let f = fixture();
    // A sequence-2 manifest that claims no previous: refused even with a valid signature.
    let mut m = f.first();
    m.header.sequence = 2;
    m.signature = f.device.sign(&manifest_signing_message(
        &m.header.canonical_bytes().unwrap(),
    ));
    let err = m.verify_received(&f.device.public_key(), None).unwrap_err();
    assert!(matches!(err, EnvelopeError::Invalid { .. }), "{err}");
}

#[test]
fn a_reencrypted_body_opens_for_the_new_identity_and_stays_authentic() {
    let f = fixture();
    let m = f.first();
    let replacement = Identity::generate();
    let ct = m
        .reencrypt_body(&f.identity, &[replacement.to_public()], MAX)
        .unwrap();
    // The signed header is untouched and still verifies; the new body opens for the
    // replacement terminal and equals the original.
    m.verify_signature(&f.device.public_key()).unwrap();
    assert_eq!(
        m.open_body_ciphertext(&replacement, &ct, MAX).unwrap(),
        f.body
    );
    // The old identity cannot open the re-encrypted copy.
    assert!(matches!(
        m.open_body_ciphertext(&f.identity, &ct, MAX),
        Err(EnvelopeError::Decrypt { .. })
    ));
    // Whoever re-encrypts cannot swap in another body: its plaintext hash is signed.
    let mut other = f.body.clone();
    other.row_counts.insert("sales".into(), 6);
    let forged =
        crate::envelope::encrypt(&[replacement.to_public()], &other.to_bytes().unwrap()).unwrap();
    assert!(matches!(
        m.open_body_ciphertext(&replacement, &forged, MAX),
        Err(EnvelopeError::HashMismatch { .. })
    ));
}
