//! The backup envelope: keyed chunk ids, age encryption of packs and manifests, and the
//! signed, hash-chained backup manifest that a server can check without any decryption key.
//!
//! Pure functions on bytes and values: no files, no network, no async.
//!
//! - [`ChunkKey`], [`ChunkId`]: the per-terminal secret and the keyed BLAKE3 id of a page.
//! - [`encrypt`], [`decrypt`], [`reencrypt`]: standard binary age files to X25519
//!   recipients; decryption streams and refuses plaintext over a caller-given cap.
//! - [`PackBuilder`], [`SealedPack`], [`open_pack`]: many chunks in one age file, named by
//!   the SHA-256 of its ciphertext ([`PackId`]).
//! - [`ManifestHeader`], [`ManifestBody`], [`SignedManifest`]: the plaintext signed header
//!   (chain, packs, body hash) and the encrypted body (page map, file hashes, row counts),
//!   stored compactly (see `body_codec`).
//! - [`Countersignature`]: the server's receipt for a manifest it checked.

mod body_codec;
mod crypt;
mod ids;
mod manifest;
mod pack;
mod signed;

pub use body_codec::BODY_MAGIC;
pub use crypt::{decrypt, encrypt, reencrypt};
pub use ids::{ChunkId, ChunkKey, PackId};
pub use manifest::{ChunkLocation, ManifestBody, ManifestFields, ManifestHeader};
pub use pack::{open_pack, OpenPack, PackBuilder, PackEntry, PackRef, SealedPack};
pub use signed::{Countersignature, SignedManifest};

use crate::canonical::CanonicalError;

/// The only manifest header format this version writes and accepts.
pub const MANIFEST_FORMAT: u32 = 1;
/// The first bytes of a serialized [`SignedManifest`].
pub const MANIFEST_MAGIC: &[u8; 8] = b"OTTERMF1";
/// Largest canonical header accepted in a serialized manifest.
pub const MAX_HEADER_BYTES: usize = 16 * 1024 * 1024;
/// Largest signature object accepted in a serialized manifest.
pub const MAX_SIGNATURE_BYTES: usize = 64 * 1024;
/// Largest page size a manifest body may declare.
pub const MAX_PAGE_SIZE: u32 = 16 * 1024 * 1024;
/// Longest device id accepted in a manifest header.
pub const MAX_DEVICE_ID_CHARS: usize = 256;

/// What went wrong building, sealing, opening or checking a backup envelope.
///
/// Messages name the input and the check that failed; they never carry key material or
/// plaintext, and decryption failures say nothing beyond "wrong key or damaged file".
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Encryption was asked for with no recipient.
    #[error(
        "no age recipients given: a backup must be encrypted to at least one recipient \
         (the fleet recovery key)"
    )]
    NoRecipients,
    /// age failed to encrypt (never carries key material).
    #[error("encrypting {what} failed: {reason}")]
    Encrypt {
        /// What was being encrypted.
        what: &'static str,
        /// The cause.
        reason: String,
    },
    /// The identity does not open the file, or the file is damaged.
    #[error("cannot decrypt {what} (wrong key or damaged file)")]
    Decrypt {
        /// What was being decrypted.
        what: &'static str,
    },
    /// The plaintext is larger than the caller allowed (size-bomb defence).
    #[error(
        "{what} decrypts to more than the {max} bytes allowed; refused \
         (raise the limit only if a file that large is expected)"
    )]
    PlaintextTooLarge {
        /// What was being decrypted.
        what: &'static str,
        /// The cap.
        max: usize,
    },
    /// An input, or a part of one, is larger than allowed.
    #[error("{what} is {len} bytes, more than the {max} bytes allowed")]
    TooLarge {
        /// The input.
        what: &'static str,
        /// Its size.
        len: u64,
        /// The cap.
        max: u64,
    },
    /// A SHA-256 differs from the one expected.
    #[error("{what}: SHA-256 is {found}, expected {expected}")]
    HashMismatch {
        /// The input.
        what: String,
        /// The hash expected (hex).
        expected: String,
        /// The hash found (hex).
        found: String,
    },
    /// A length differs from the one expected.
    #[error("{what} is {found} bytes long, expected {expected}")]
    LengthMismatch {
        /// The input.
        what: String,
        /// The length expected.
        expected: u64,
        /// The length found.
        found: u64,
    },
    /// A chunk's offset and length lie outside its pack.
    #[error(
        "chunk at offset {offset} with length {length} lies outside pack {pack} \
         ({size} bytes of plaintext)"
    )]
    ChunkOutOfBounds {
        /// The pack.
        pack: PackId,
        /// Offset of the chunk.
        offset: u64,
        /// Length of the chunk.
        length: u32,
        /// Plaintext size of the pack.
        size: u64,
    },
    /// Bytes that do not parse as what they should be.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// The input.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Well-formed, but breaks a rule of the format.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The input.
        what: String,
        /// The rule broken.
        reason: String,
    },
    /// A signature or countersignature does not verify.
    #[error("{what}: signature does not verify: {reason}")]
    BadSignature {
        /// The input.
        what: String,
        /// Why (key mismatch, malformed or wrong signature).
        reason: String,
    },
    /// The manifest does not follow the previous one of its device.
    #[error("{what}: chain broken: {reason}")]
    Chain {
        /// The manifest.
        what: String,
        /// Which link is wrong.
        reason: String,
    },
    /// A value has no canonical JSON form.
    #[error("{what}: {source}")]
    Canonical {
        /// The value.
        what: &'static str,
        /// The cause.
        source: CanonicalError,
    },
}

/// Lower-case hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// Whether `s` is exactly 64 lower-case hex digits (one form per digest, so that values
/// compared as strings and canonical bytes stay unambiguous).
pub(crate) fn is_hex32(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// At most `max` characters of an untrusted string, for error messages.
pub(crate) fn clip(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).collect();
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex32_is_strict() {
        assert!(is_hex32(&"ab".repeat(32)));
        assert!(!is_hex32(&"AB".repeat(32)));
        assert!(!is_hex32(&"ab".repeat(31)));
        assert!(!is_hex32(&"zz".repeat(32)));
    }

    #[test]
    fn decrypt_errors_say_nothing_more() {
        let e = EnvelopeError::Decrypt { what: "pack" };
        assert_eq!(
            e.to_string(),
            "cannot decrypt pack (wrong key or damaged file)"
        );
    }

    #[test]
    fn clip_marks_truncation() {
        assert_eq!(clip("abc", 5), "abc");
        assert_eq!(clip("abcdef", 3), "abc…");
    }
}
