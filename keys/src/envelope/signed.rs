//! The signed manifest as stored and sent: its binary framing, the device's signature, the
//! server's keyless checks on receipt, and the server's countersignature.
//!
//! Framing (all lengths big-endian, every part capped):
//!
//! ```text
//! "OTTERMF1"                 8 bytes of magic
//! u32 header length          at most MAX_HEADER_BYTES
//! header                     canonical JSON of the ManifestHeader
//! u32 signature length       at most MAX_SIGNATURE_BYTES
//! signature                  canonical JSON of the device's Signature over the header bytes
//! body                       the rest: the age-encrypted body (JSON of the ManifestBody)
//! ```
//!
//! Header and signature must be in canonical form, so one manifest has one serialization
//! and the header hash is the hash of the header bytes as received.

use std::fmt;

use age::x25519::{Identity, Recipient};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::crypt::{decrypt_as, encrypt_as};
use super::{
    clip, sha256_hex, EnvelopeError, ManifestBody, ManifestFields, ManifestHeader, MANIFEST_FORMAT,
    MANIFEST_MAGIC, MAX_HEADER_BYTES, MAX_SIGNATURE_BYTES,
};
use crate::canonical::{parse_strict, to_canonical_bytes};
use crate::crypto::{PublicKey, Signature, SigningKey};

/// What a countersignature signs, before the header hash: keeps the server's signature
/// from meaning anything else.
const COUNTERSIGNATURE_CONTEXT: &[u8] = b"otter backup manifest countersignature v1\n";

/// What the device's signature signs, before the canonical header: the device key also
/// signs HTTP requests, and this prefix keeps the two kinds of message apart.
const MANIFEST_SIGNATURE_CONTEXT: &[u8] = b"otter backup manifest v1\n";

/// The bytes the device signs for a header: the context string, then the canonical header.
pub fn manifest_signing_message(canonical_header: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(MANIFEST_SIGNATURE_CONTEXT.len() + canonical_header.len());
    m.extend_from_slice(MANIFEST_SIGNATURE_CONTEXT);
    m.extend_from_slice(canonical_header);
    m
}

/// A backup manifest: signed plaintext header, the device's signature, encrypted body.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedManifest {
    /// The header the signature covers (in canonical form).
    pub header: ManifestHeader,
    /// The device key's signature over the canonical header.
    pub signature: Signature,
    /// The age-encrypted [`ManifestBody`].
    pub body_ciphertext: Vec<u8>,
}

impl fmt::Debug for SignedManifest {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("SignedManifest")
            .field("header", &self.header)
            .field("signature", &self.signature)
            .field("body_bytes", &self.body_ciphertext.len())
            .finish()
    }
}

/// The server's receipt: it checked the manifest with this header hash and holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Countersignature {
    /// Hex SHA-256 of the canonical header countersigned.
    pub header_hash: String,
    /// The server key's signature over the context string and the header hash.
    pub signature: Signature,
}

impl SignedManifest {
    /// Builds a manifest: checks `body` against `fields.packs`, encrypts it to `recipients`,
    /// completes the header with the body's hash and length, and signs it with the device key.
    pub fn seal(
        fields: ManifestFields,
        body: &ManifestBody,
        device_key: &SigningKey,
        recipients: &[Recipient],
    ) -> Result<Self, EnvelopeError> {
        body.validate(&fields.packs)?;
        let plaintext = zeroize::Zeroizing::new(super::body_codec::encode(body)?);
        let body_ciphertext = encrypt_as("manifest body", recipients, &plaintext)?;
        let header = ManifestHeader {
            format: MANIFEST_FORMAT,
            device_id: fields.device_id,
            sequence: fields.sequence,
            created: fields.created,
            previous: fields.previous,
            packs: fields.packs,
            body_sha256: sha256_hex(&body_ciphertext),
            body_length: body_ciphertext.len() as u64,
            body_plaintext_sha256: sha256_hex(&plaintext),
        };
        header.check()?;
        let signature = device_key.sign(&manifest_signing_message(&header.canonical_bytes()?));
        Ok(SignedManifest {
            header,
            signature,
            body_ciphertext,
        })
    }

    /// The stored form (see the module documentation).
    pub fn to_bytes(&self) -> Result<Vec<u8>, EnvelopeError> {
        let header = self.header.canonical_bytes()?;
        let signature =
            to_canonical_bytes(&self.signature).map_err(|source| EnvelopeError::Canonical {
                what: "manifest signature",
                source,
            })?;
        let mut out = Vec::with_capacity(
            MANIFEST_MAGIC.len() + 8 + header.len() + signature.len() + self.body_ciphertext.len(),
        );
        out.extend_from_slice(MANIFEST_MAGIC);
        put_framed(&mut out, &header, MAX_HEADER_BYTES, "manifest header")?;
        put_framed(
            &mut out,
            &signature,
            MAX_SIGNATURE_BYTES,
            "manifest signature",
        )?;
        out.extend_from_slice(&self.body_ciphertext);
        Ok(out)
    }

    /// Parses the stored form, refusing more than `max_len` bytes in all. Checks the framing
    /// and that header and signature are canonical JSON; [`Self::verify_received`] checks
    /// the rest.
    pub fn from_bytes(bytes: &[u8], max_len: usize) -> Result<Self, EnvelopeError> {
        if bytes.len() > max_len {
            return Err(EnvelopeError::TooLarge {
                what: "manifest",
                len: bytes.len() as u64,
                max: max_len as u64,
            });
        }
        let rest = bytes
            .strip_prefix(MANIFEST_MAGIC.as_slice())
            .ok_or_else(|| EnvelopeError::Malformed {
                what: "manifest",
                reason: "it does not start with \"OTTERMF1\" (not an Otter backup manifest)".into(),
            })?;
        let (header, rest) = take_framed(rest, MAX_HEADER_BYTES, "manifest header")?;
        let (signature, body) = take_framed(rest, MAX_SIGNATURE_BYTES, "manifest signature")?;
        Ok(SignedManifest {
            header: parse_canonical(header, MAX_HEADER_BYTES, "manifest header")?,
            signature: parse_canonical(signature, MAX_SIGNATURE_BYTES, "manifest signature")?,
            body_ciphertext: body.to_vec(),
        })
    }

    /// Hex SHA-256 of the canonical header: the manifest's name in the chain.
    pub fn header_hash(&self) -> Result<String, EnvelopeError> {
        self.header.hash()
    }

    /// The checks that need only the device's public key: the header is well-formed, the
    /// device key signed it, and the body has the signed length and hash.
    pub fn verify_signature(&self, device_public: &PublicKey) -> Result<(), EnvelopeError> {
        self.header.check()?;
        let message = manifest_signing_message(&self.header.canonical_bytes()?);
        verify_by(
            device_public,
            &message,
            &self.signature,
            &self.header.label(),
            "device",
        )?;
        self.check_body_ciphertext()
    }

    /// The server's checks on receipt, with no decryption key: [`Self::verify_signature`],
    /// then that the manifest follows `previous` in the device's chain (same device, next
    /// sequence, matching previous hash, not created earlier). `previous` is `None` only
    /// for the device's first backup.
    pub fn verify_received(
        &self,
        device_public: &PublicKey,
        previous: Option<&ManifestHeader>,
    ) -> Result<(), EnvelopeError> {
        self.verify_signature(device_public)?;
        self.header.check_follows(previous)
    }

    /// Checks the body against the header, decrypts it (at most `max_plaintext` bytes),
    /// parses it strictly and validates it against the header's packs. Does not check the
    /// signature: call [`Self::verify_signature`] or [`Self::verify_received`] first.
    pub fn open_body(
        &self,
        identity: &Identity,
        max_plaintext: usize,
    ) -> Result<ManifestBody, EnvelopeError> {
        self.check_body_ciphertext()?;
        self.open_body_ciphertext(identity, &self.body_ciphertext, max_plaintext)
    }

    /// Opens a body that was re-encrypted for another identity (a replacement terminal):
    /// its ciphertext differs from the signed one, so it is trusted through the signed
    /// hash of its plaintext instead. Check the signature first, as for [`Self::open_body`].
    pub fn open_body_ciphertext(
        &self,
        identity: &Identity,
        body_ciphertext: &[u8],
        max_plaintext: usize,
    ) -> Result<ManifestBody, EnvelopeError> {
        let plain = self.decrypt_body_plaintext(identity, body_ciphertext, max_plaintext)?;
        let body = super::body_codec::decode(&plain, max_plaintext)?;
        body.validate(&self.header.packs)?;
        Ok(body)
    }

    /// Decrypts a body and checks its plaintext against the signed hash.
    fn decrypt_body_plaintext(
        &self,
        identity: &Identity,
        body_ciphertext: &[u8],
        max_plaintext: usize,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, EnvelopeError> {
        let plain = decrypt_as("manifest body", identity, body_ciphertext, max_plaintext)?;
        let found = sha256_hex(&plain);
        if found != self.header.body_plaintext_sha256 {
            return Err(EnvelopeError::HashMismatch {
                what: format!("{} body plaintext", self.header.label()),
                expected: self.header.body_plaintext_sha256.clone(),
                found,
            });
        }
        Ok(plain)
    }

    /// Re-encrypts the body for `recipients` (the replacement-terminal flow, run with the
    /// fleet recovery identity): decrypts, checks the plaintext against the signed hash,
    /// encrypts again. The header and its signature stay as they are.
    pub fn reencrypt_body(
        &self,
        identity: &Identity,
        recipients: &[Recipient],
        max_plaintext: usize,
    ) -> Result<Vec<u8>, EnvelopeError> {
        self.check_body_ciphertext()?;
        let plain = self.decrypt_body_plaintext(identity, &self.body_ciphertext, max_plaintext)?;
        // Only a body that parses and fits the header is passed on.
        super::body_codec::decode(&plain, max_plaintext)?.validate(&self.header.packs)?;
        encrypt_as("manifest body", recipients, &plain)
    }

    /// The server's countersignature: it checked this manifest and holds it.
    pub fn countersign(&self, server_key: &SigningKey) -> Result<Countersignature, EnvelopeError> {
        let header_hash = self.header_hash()?;
        let signature = server_key.sign(&countersignature_message(&header_hash));
        Ok(Countersignature {
            header_hash,
            signature,
        })
    }

    /// Checks that `countersignature` is the server key's, over this manifest's header.
    pub fn verify_countersignature(
        &self,
        server_public: &PublicKey,
        countersignature: &Countersignature,
    ) -> Result<(), EnvelopeError> {
        let what = format!("countersignature of {}", self.header.label());
        let header_hash = self.header_hash()?;
        if countersignature.header_hash != header_hash {
            return Err(EnvelopeError::BadSignature {
                what,
                reason: format!(
                    "it is for header {}, not this manifest's {header_hash}",
                    clip(&countersignature.header_hash, 64)
                ),
            });
        }
        verify_by(
            server_public,
            &countersignature_message(&header_hash),
            &countersignature.signature,
            &what,
            "server",
        )
    }

    fn check_body_ciphertext(&self) -> Result<(), EnvelopeError> {
        let what = || format!("body of {}", self.header.label());
        let found = self.body_ciphertext.len() as u64;
        if found != self.header.body_length {
            return Err(EnvelopeError::LengthMismatch {
                what: what(),
                expected: self.header.body_length,
                found,
            });
        }
        let found = sha256_hex(&self.body_ciphertext);
        if found != self.header.body_sha256 {
            return Err(EnvelopeError::HashMismatch {
                what: what(),
                expected: self.header.body_sha256.clone(),
                found,
            });
        }
        Ok(())
    }
}

fn countersignature_message(header_hash: &str) -> Vec<u8> {
    [COUNTERSIGNATURE_CONTEXT, header_hash.as_bytes()].concat()
}

/// Verifies `signature` over `msg` by `key`, which must also be the key it names.
fn verify_by(
    key: &PublicKey,
    msg: &[u8],
    signature: &Signature,
    what: &str,
    whose: &str,
) -> Result<(), EnvelopeError> {
    let bad = |reason: String| EnvelopeError::BadSignature {
        what: what.to_owned(),
        reason,
    };
    let expected = key.key_id().map_err(|source| EnvelopeError::Canonical {
        what: "public key",
        source,
    })?;
    if signature.keyid != expected {
        return Err(bad(format!(
            "made by key {}, not the {whose} key {}",
            clip(&signature.keyid.0, 16),
            expected.short()
        )));
    }
    // One signature, one form: no extra members, no upper-case hex (which would verify
    // the same and so make the stored manifest malleable).
    if !signature.extra.is_empty() {
        return Err(bad(
            "the signature object has members other than keyid and sig".into(),
        ));
    }
    if !signature
        .sig
        .bytes()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(bad("the signature is not lower-case hex".into()));
    }
    key.verify(msg, &signature.sig)
        .map_err(|e| bad(format!("{e} with the {whose} key {}", expected.short())))
}

fn put_framed(
    out: &mut Vec<u8>,
    part: &[u8],
    max: usize,
    what: &'static str,
) -> Result<(), EnvelopeError> {
    let len = u32::try_from(part.len())
        .ok()
        .filter(|_| part.len() <= max)
        .ok_or(EnvelopeError::TooLarge {
            what,
            len: part.len() as u64,
            max: max as u64,
        })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(part);
    Ok(())
}

fn take_framed<'a>(
    bytes: &'a [u8],
    max: usize,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), EnvelopeError> {
    let truncated = || EnvelopeError::Malformed {
        what,
        reason: "the manifest ends inside it (truncated)".into(),
    };
    let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(truncated)?;
    let len = u32::from_be_bytes(*len) as usize;
    if len > max {
        return Err(EnvelopeError::TooLarge {
            what,
            len: len as u64,
            max: max as u64,
        });
    }
    if len > rest.len() {
        return Err(truncated());
    }
    Ok(rest.split_at(len))
}

/// Parses strictly and insists the bytes are the canonical form of what they parse to.
fn parse_canonical<T: DeserializeOwned + Serialize>(
    bytes: &[u8],
    max: usize,
    what: &'static str,
) -> Result<T, EnvelopeError> {
    let malformed = |reason: String| EnvelopeError::Malformed {
        what,
        reason: clip(&reason, 200),
    };
    let value = parse_strict(bytes, max).map_err(|e| malformed(e.to_string()))?;
    let parsed: T = serde_json::from_value(value).map_err(|e| malformed(e.to_string()))?;
    let canonical = to_canonical_bytes(&parsed).map_err(|e| malformed(e.to_string()))?;
    if canonical != bytes {
        return Err(malformed("it is not in canonical JSON form".into()));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests;
