//! Unit and property tests of the device request signature.

use proptest::prelude::*;

use super::*;

const NOW: i64 = 1_767_225_600;
const DEVICE: &str = "4c0ffee0d15ea5e0aa55aa55aa55aa55";
const NONCE: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
const PATH: &str = "/api/v1/device/report?x=1";

fn key() -> SigningKey {
    SigningKey::from_seed(&[42u8; 32])
}

fn signed(body: &[u8]) -> SignatureHeaders {
    sign_request_with_nonce(&key(), DEVICE, "POST", PATH, body, NOW, NONCE).unwrap()
}

fn verify(
    method: &str,
    path: &str,
    body: &[u8],
    h: &SignatureHeaders,
) -> Result<VerifiedRequest, RequestError> {
    verify_request(
        &key().public_key(),
        method,
        path,
        body,
        h,
        NOW,
        DEFAULT_MAX_SKEW_SECS,
    )
}

#[test]
fn base64_matches_rfc4648_vectors() {
    for (plain, enc) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64_encode(plain.as_bytes()), enc, "{plain:?}");
    }
    assert_eq!(base64_encode(&[0xfb, 0xff, 0xbf]), "+/+/");
}

#[test]
fn content_digest_matches_rfc9530() {
    // RFC 9530, section 2: the digest of {"hello": "world"}.
    assert_eq!(
        content_digest(br#"{"hello": "world"}"#),
        "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    );
    assert_eq!(
        content_digest(b""),
        "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
    );
}

#[test]
fn the_signing_string_is_exactly_as_documented() {
    let k = key();
    let text = signing_string(
        "POST",
        PATH,
        NOW,
        NONCE,
        &content_digest(b""),
        DEVICE,
        &k.public_key(),
    )
    .unwrap();
    let expected = format!(
        "otter-device-request-v1\nmethod:POST\npath:{PATH}\ntimestamp:{NOW}\nnonce:{NONCE}\n\
         content-digest:sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:\n\
         device:{DEVICE}\nkeyid:{}\n",
        k.key_id()
    );
    assert_eq!(text, expected);
}

#[test]
fn a_signed_request_verifies_and_yields_its_nonce() {
    let h = signed(b"{}");
    let v = verify("POST", PATH, b"{}", &h).unwrap();
    assert_eq!(v.device, DEVICE);
    assert_eq!(v.timestamp, NOW);
    assert_eq!(v.nonce, NONCE);
    let names: Vec<&str> = h.pairs().iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "Otter-Device",
            "Otter-Timestamp",
            "Otter-Nonce",
            "Content-Digest",
            "Otter-Signature"
        ]
    );
    assert!(!format!("{h:?}").contains(&h.signature));
}

#[test]
fn fresh_nonces_differ() {
    let a = sign_request(&key(), DEVICE, "GET", "/x", b"", NOW).unwrap();
    let b = sign_request(&key(), DEVICE, "GET", "/x", b"", NOW).unwrap();
    assert_ne!(a.nonce, b.nonce);
    assert_eq!(a.nonce.len(), 32);
}

#[test]
fn timestamps_outside_the_skew_are_refused_at_the_boundary() {
    for (offset, ok) in [
        (0, true),
        (-300, true),
        (300, true),
        (-301, false),
        (301, false),
    ] {
        let h = sign_request_with_nonce(&key(), DEVICE, "POST", PATH, b"", NOW + offset, NONCE)
            .unwrap();
        let r = verify("POST", PATH, b"", &h);
        assert_eq!(r.is_ok(), ok, "offset {offset}: {r:?}");
        if offset == -301 {
            assert!(matches!(r, Err(RequestError::Stale { .. })));
        }
        if offset == 301 {
            assert!(matches!(r, Err(RequestError::Future { .. })));
            assert_eq!(r.unwrap_err().code(), "stale_request");
        }
    }
}

#[test]
fn a_changed_body_is_a_digest_mismatch() {
    let h = signed(b"{\"a\":1}");
    assert_eq!(
        verify("POST", PATH, b"{\"a\":2}", &h),
        Err(RequestError::DigestMismatch)
    );
}

#[test]
fn another_key_does_not_verify() {
    let h = signed(b"");
    let other = SigningKey::from_seed(&[7u8; 32]).public_key();
    let r = verify_request(&other, "POST", PATH, b"", &h, NOW, DEFAULT_MAX_SKEW_SECS);
    assert_eq!(r, Err(RequestError::BadSignature));
}

#[test]
fn malformed_headers_are_refused_before_anything_else() {
    let good = signed(b"");
    type Edit = Box<dyn Fn(&mut SignatureHeaders)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("device", Box::new(|h| h.device = "Dev\nice".into())),
        ("device", Box::new(|h| h.device = String::new())),
        ("device", Box::new(|h| h.device = "a".repeat(65))),
        (
            "nonce",
            Box::new(|h| h.nonce = "ABCDEF".repeat(6)[..32].into()),
        ),
        ("nonce", Box::new(|h| h.nonce = "00".into())),
        (
            "timestamp",
            Box::new(|h| h.timestamp = "+1767225600".into()),
        ),
        (
            "timestamp",
            Box::new(|h| h.timestamp = "01767225600".into()),
        ),
        ("timestamp", Box::new(|h| h.timestamp = "1e9".into())),
        ("timestamp", Box::new(|h| h.timestamp = "9".repeat(13))),
        ("signature", Box::new(|h| h.signature = "zz".repeat(64))),
        ("signature", Box::new(|h| h.signature.push('0'))),
    ];
    for (what, edit) in cases {
        let mut h = good.clone();
        edit(&mut h);
        let r = verify("POST", PATH, b"", &h);
        assert!(
            matches!(r, Err(RequestError::Malformed { .. })),
            "{what}: {r:?}"
        );
        assert_eq!(r.unwrap_err().code(), "malformed_signature");
    }
    // Line breaks cannot be smuggled through the method or path either.
    assert!(verify("POST\nX", PATH, b"", &good).is_err());
    assert!(verify("POST", "/a\npath:/b", b"", &good).is_err());
    assert!(verify("POST", "relative", b"", &good).is_err());
    assert!(sign_request(&key(), DEVICE, "post", PATH, b"", NOW).is_err());
}

#[test]
fn headers_are_collected_by_name_and_a_missing_one_is_named() {
    let h = signed(b"");
    let pairs = h.pairs();
    let got =
        SignatureHeaders::from_lookup(|n| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| *v))
            .unwrap();
    assert_eq!(got, h);
    let err = SignatureHeaders::from_lookup(|n| {
        (n != HEADER_NONCE)
            .then(|| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| *v))
            .flatten()
    })
    .unwrap_err();
    assert_eq!(err, RequestError::Missing("Otter-Nonce"));
    assert_eq!(err.code(), "missing_signature");
}

#[test]
fn device_public_keys_are_checked() {
    let k = key();
    let hex_key = hex::encode(k.public_bytes());
    assert_eq!(parse_device_public_key(&hex_key).unwrap(), k.public_key());
    assert!(parse_device_public_key(&hex_key.to_uppercase()).is_err());
    assert!(parse_device_public_key(&hex_key[..62]).is_err());
    assert!(parse_device_public_key("zz").is_err());
    // The identity point is a weak key.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert!(parse_device_public_key(&hex::encode(identity)).is_err());
}

/// One signed part of a request, to change.
#[derive(Debug, Clone)]
enum Part {
    Method,
    Path,
    Query,
    Timestamp,
    Nonce,
    Body,
    Device,
    Signature,
    Digest,
}

fn part() -> impl Strategy<Value = Part> {
    prop_oneof![
        Just(Part::Method),
        Just(Part::Path),
        Just(Part::Query),
        Just(Part::Timestamp),
        Just(Part::Nonce),
        Just(Part::Body),
        Just(Part::Device),
        Just(Part::Signature),
        Just(Part::Digest),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn signed_requests_verify(
        body in proptest::collection::vec(any::<u8>(), 0..256),
        path in "/[a-z0-9/._-]{0,40}(\\?[a-z0-9=&]{0,20})?",
        offset in -300i64..=300,
    ) {
        let h = sign_request_with_nonce(&key(), DEVICE, "POST", &path, &body, NOW + offset, NONCE)
            .unwrap();
        prop_assert!(verify("POST", &path, &body, &h).is_ok());
    }

    /// Changing any one signed part, in any way, makes verification fail.
    #[test]
    fn any_change_to_any_signed_part_fails(
        body in proptest::collection::vec(any::<u8>(), 0..128),
        which in part(),
        pick in any::<usize>(),
        delta in 1i64..=300,
        flip in 1u8..=255,
    ) {
        let h = signed(&body);
        let mut method = "POST".to_owned();
        let mut path = PATH.to_owned();
        let mut b = body.clone();
        let mut h2 = h.clone();
        match which {
            Part::Method => method = ["GET", "PUT", "DELETE", "PATCH"][pick % 4].to_owned(),
            Part::Path => path = format!("/api/v1/device/repor{}?x=1", ['t', 'T', 's', 'x'][pick % 3 + 1]),
            Part::Query => path = format!("/api/v1/device/report?x={}", pick % 1000 + 2),
            Part::Timestamp => h2.timestamp = (NOW + if pick % 2 == 0 { delta } else { -delta }).to_string(),
            Part::Nonce => {
                let mut n = h.nonce.clone().into_bytes();
                let i = pick % n.len();
                n[i] = if n[i] == b'0' { b'1' } else { b'0' };
                h2.nonce = String::from_utf8(n).unwrap();
            }
            Part::Body => {
                if b.is_empty() || pick % 3 == 0 {
                    b.push(flip);
                } else {
                    let i = pick % b.len();
                    b[i] ^= flip;
                }
            }
            Part::Device => h2.device = format!("{}-{}", DEVICE, pick % 100),
            Part::Signature => {
                let mut s = h.signature.clone().into_bytes();
                let i = pick % s.len();
                s[i] = if s[i] == b'0' { b'1' } else { b'0' };
                h2.signature = String::from_utf8(s).unwrap();
            }
            Part::Digest => {
                h2.content_digest = content_digest(&[flip]);
                b = vec![flip];
            }
        }
        prop_assert!(verify(&method, &path, &b, &h2).is_err(), "{which:?} changed but still verifies");
    }
}
