//! The per-terminal chunk key, and the 32-byte ids of chunks (keyed BLAKE3 of a page) and
//! packs (SHA-256 of the ciphertext), written as 64 lower-case hex digits.

use std::fmt;
use std::str::FromStr;

use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use super::EnvelopeError;

/// Defines a 32-byte id with strict lower-case hex `Display`, `FromStr` and serde.
macro_rules! hex_id {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name([u8; 32]);

        impl $name {
            /// From the raw 32 bytes.
            pub fn from_bytes(bytes: [u8; 32]) -> Self {
                $name(bytes)
            }
            /// The raw 32 bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
            /// The first 12 hex digits, for humans.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..6])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        impl FromStr for $name {
            type Err = EnvelopeError;
            fn from_str(s: &str) -> Result<Self, EnvelopeError> {
                parse_hex32(s, $what).map($name)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&hex::encode(self.0))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_id!(
    /// A chunk id: keyed BLAKE3 of a plaintext page under the terminal's [`ChunkKey`].
    ChunkId,
    "chunk id"
);

hex_id!(
    /// A pack id: SHA-256 of the pack's ciphertext, so anyone can check a pack by hashing it.
    PackId,
    "pack id"
);

impl PackId {
    /// The id of a pack with this ciphertext.
    pub fn of(ciphertext: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        PackId(Sha256::digest(ciphertext).into())
    }
}

fn parse_hex32(s: &str, what: &'static str) -> Result<[u8; 32], EnvelopeError> {
    let mut out = [0u8; 32];
    if !super::is_hex32(s) || hex::decode_to_slice(s, &mut out).is_err() {
        return Err(EnvelopeError::Malformed {
            what,
            reason: format!("{:?} is not 64 lower-case hex digits", super::clip(s, 80)),
        });
    }
    Ok(out)
}

/// The per-terminal secret that keys chunk ids, so the ids of pages reveal nothing about
/// their contents to whoever lacks it. Zeroized on drop; `Debug` never prints it.
pub struct ChunkKey {
    // Boxed so that moving the key does not leave copies of it on the stack.
    key: Box<Zeroizing<[u8; 32]>>,
}

impl fmt::Debug for ChunkKey {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("ChunkKey(<redacted>)")
    }
}

impl ChunkKey {
    /// A new random key from the operating system's generator (which panics only if the
    /// system has no usable random source, as [`crate::crypto::SigningKey::generate`]).
    pub fn generate() -> Self {
        let mut key = Box::new(Zeroizing::new([0u8; 32]));
        OsRng.fill_bytes(&mut key[..]);
        ChunkKey { key }
    }

    /// From the 32 secret bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        let mut key = Box::new(Zeroizing::new([0u8; 32]));
        key.copy_from_slice(bytes);
        ChunkKey { key }
    }

    /// The 32 secret bytes. Dangerous: the caller must keep them private and zeroized.
    pub fn to_bytes_dangerous(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(**self.key)
    }

    /// The id of a plaintext page: keyed BLAKE3 of it under this key.
    pub fn chunk_id(&self, plaintext: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.key, plaintext).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_ids_are_stable_under_one_key_and_differ_between_keys() {
        let a = ChunkKey::generate();
        let b = ChunkKey::generate();
        let page = vec![7u8; 4096];
        assert_eq!(a.chunk_id(&page), a.chunk_id(&page));
        assert_ne!(a.chunk_id(&page), b.chunk_id(&page));
        assert_ne!(a.chunk_id(&page), a.chunk_id(&page[1..]));
        let again = ChunkKey::from_bytes(&a.to_bytes_dangerous());
        assert_eq!(again.chunk_id(&page), a.chunk_id(&page));
    }

    #[test]
    fn chunk_id_is_keyed_blake3() {
        let k = ChunkKey::from_bytes(&[3u8; 32]);
        let expected = blake3::keyed_hash(&[3u8; 32], b"page");
        assert_eq!(k.chunk_id(b"page").as_bytes(), expected.as_bytes());
        assert_ne!(
            k.chunk_id(b"page").as_bytes(),
            blake3::hash(b"page").as_bytes()
        );
    }

    #[test]
    fn debug_hides_the_key() {
        let k = ChunkKey::from_bytes(&[0xab; 32]);
        let dbg = format!("{k:?}");
        assert_eq!(dbg, "ChunkKey(<redacted>)");
        assert!(!dbg.contains("abab"));
    }

    #[test]
    fn ids_are_hex_in_text_and_json() {
        let id = ChunkId::from_bytes([0x1f; 32]);
        let hex = "1f".repeat(32);
        assert_eq!(id.to_string(), hex);
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{hex}\""));
        let back: ChunkId = serde_json::from_str(&format!("\"{hex}\"")).unwrap();
        assert_eq!(back, id);
        assert_eq!(id.short(), "1f".repeat(6));
        assert!(format!("{id:?}").starts_with("ChunkId(1f1f"));
    }

    #[test]
    fn non_canonical_hex_is_refused() {
        assert!("1F".repeat(32).parse::<PackId>().is_err());
        assert!("1f".repeat(31).parse::<PackId>().is_err());
        assert!(serde_json::from_str::<ChunkId>("\"xyz\"").is_err());
        assert!(serde_json::from_str::<ChunkId>("42").is_err());
    }

    #[test]
    fn pack_id_is_sha256_of_ciphertext() {
        assert_eq!(
            PackId::of(b"abc").to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
