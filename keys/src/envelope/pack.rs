//! Packs: many chunks concatenated, then encrypted as one age file and named by the SHA-256
//! of the ciphertext. Chunk bytes are opaque here (the agent compresses pages before).

use std::collections::HashMap;
use std::fmt;

use age::x25519::{Identity, Recipient};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::crypt::{decrypt_as, encrypt_as};
use super::{ChunkId, ChunkLocation, EnvelopeError, PackId};

/// Where one chunk lies in its pack's plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackEntry {
    /// The chunk.
    pub chunk: ChunkId,
    /// Offset of its first byte in the pack's plaintext.
    pub offset: u64,
    /// Its length in bytes.
    pub length: u32,
}

/// A pack as a manifest header lists it: what anyone can check without a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackRef {
    /// SHA-256 of the ciphertext.
    pub id: PackId,
    /// Length of the ciphertext in bytes.
    pub length: u64,
}

impl PackRef {
    /// Checks, without any key, that `ciphertext` is this pack: its length, then its hash.
    pub fn check(&self, ciphertext: &[u8]) -> Result<(), EnvelopeError> {
        let found = ciphertext.len() as u64;
        if found != self.length {
            return Err(EnvelopeError::LengthMismatch {
                what: format!("pack {}", self.id),
                expected: self.length,
                found,
            });
        }
        check_pack_id(&self.id, ciphertext)
    }
}

fn check_pack_id(expected: &PackId, ciphertext: &[u8]) -> Result<(), EnvelopeError> {
    let found = PackId::of(ciphertext);
    if &found != expected {
        return Err(EnvelopeError::HashMismatch {
            what: format!("pack {expected}"),
            expected: expected.to_string(),
            found: found.to_string(),
        });
    }
    Ok(())
}

/// Collects chunks for one pack. The collected bytes are zeroized when dropped.
#[derive(Default)]
pub struct PackBuilder {
    plaintext: Zeroizing<Vec<u8>>,
    entries: Vec<PackEntry>,
    index: HashMap<ChunkId, usize>,
}

impl fmt::Debug for PackBuilder {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("PackBuilder")
            .field("chunks", &self.entries.len())
            .field("bytes", &self.plaintext.len())
            .finish()
    }
}

impl PackBuilder {
    /// An empty pack.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty pack with room for `bytes` bytes of chunks (no reallocation, so no stray
    /// copies of chunk bytes, until it holds more).
    pub fn with_capacity(bytes: usize) -> Self {
        PackBuilder {
            plaintext: Zeroizing::new(Vec::with_capacity(bytes)),
            ..Self::default()
        }
    }

    /// Appends a chunk and returns where it lies. A chunk already in the pack is not added
    /// again: the entry of its first copy is returned.
    pub fn add(&mut self, chunk: ChunkId, bytes: &[u8]) -> Result<PackEntry, EnvelopeError> {
        if let Some(&i) = self.index.get(&chunk) {
            if let Some(entry) = self.entries.get(i) {
                return Ok(*entry);
            }
        }
        let length = u32::try_from(bytes.len()).map_err(|_| EnvelopeError::TooLarge {
            what: "chunk",
            len: bytes.len() as u64,
            max: u64::from(u32::MAX),
        })?;
        let entry = PackEntry {
            chunk,
            offset: self.plaintext.len() as u64,
            length,
        };
        self.plaintext.extend_from_slice(bytes);
        self.index.insert(chunk, self.entries.len());
        self.entries.push(entry);
        Ok(entry)
    }

    /// Whether the pack already holds `chunk`.
    pub fn contains(&self, chunk: &ChunkId) -> bool {
        self.index.contains_key(chunk)
    }

    /// Bytes of chunks collected so far (to decide when a pack is big enough).
    pub fn len(&self) -> usize {
        self.plaintext.len()
    }

    /// Whether no chunk was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of chunks collected.
    pub fn chunk_count(&self) -> usize {
        self.entries.len()
    }

    /// Encrypts the pack to `recipients` and names it. An empty pack is refused.
    pub fn finish(self, recipients: &[Recipient]) -> Result<SealedPack, EnvelopeError> {
        if self.entries.is_empty() {
            return Err(EnvelopeError::Invalid {
                what: "pack".into(),
                reason: "it holds no chunks; an empty pack is never written".into(),
            });
        }
        let ciphertext = encrypt_as("pack", recipients, &self.plaintext)?;
        Ok(SealedPack {
            id: PackId::of(&ciphertext),
            ciphertext,
            entries: self.entries,
        })
    }
}

/// An encrypted pack, ready to upload, with where each of its chunks lies.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedPack {
    /// SHA-256 of `ciphertext`.
    pub id: PackId,
    /// The age file.
    pub ciphertext: Vec<u8>,
    /// The chunks, in the order they were added.
    pub entries: Vec<PackEntry>,
}

impl fmt::Debug for SealedPack {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("SealedPack")
            .field("id", &self.id)
            .field("ciphertext_bytes", &self.ciphertext.len())
            .field("chunks", &self.entries.len())
            .finish()
    }
}

impl SealedPack {
    /// The pack as a manifest header lists it.
    pub fn pack_ref(&self) -> PackRef {
        PackRef {
            id: self.id,
            length: self.ciphertext.len() as u64,
        }
    }

    /// Each chunk's location, for a manifest body's chunk map.
    pub fn locations(&self) -> impl Iterator<Item = (ChunkId, ChunkLocation)> + '_ {
        self.entries.iter().map(|e| {
            (
                e.chunk,
                ChunkLocation {
                    pack: self.id,
                    offset: e.offset,
                    length: e.length,
                },
            )
        })
    }
}

/// Checks that SHA-256(`ciphertext`) is `expected_id`, then decrypts the pack, refusing more
/// than `max_plaintext` bytes of plaintext.
pub fn open_pack(
    identity: &Identity,
    ciphertext: &[u8],
    expected_id: &PackId,
    max_plaintext: usize,
) -> Result<OpenPack, EnvelopeError> {
    check_pack_id(expected_id, ciphertext)?;
    let plaintext = decrypt_as("pack", identity, ciphertext, max_plaintext)?;
    Ok(OpenPack {
        id: *expected_id,
        plaintext,
    })
}

/// A decrypted pack. Its plaintext is zeroized when dropped.
pub struct OpenPack {
    id: PackId,
    plaintext: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for OpenPack {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("OpenPack")
            .field("id", &self.id)
            .field("bytes", &self.plaintext.len())
            .finish()
    }
}

impl OpenPack {
    /// The pack's id.
    pub fn id(&self) -> &PackId {
        &self.id
    }

    /// Plaintext size.
    pub fn len(&self) -> usize {
        self.plaintext.len()
    }

    /// Whether the plaintext is empty.
    pub fn is_empty(&self) -> bool {
        self.plaintext.is_empty()
    }

    /// The bytes of the chunk `entry` describes.
    pub fn chunk(&self, entry: &PackEntry) -> Result<&[u8], EnvelopeError> {
        self.range(entry.offset, entry.length)
    }

    /// The bytes at a manifest body's chunk location, which must name this pack.
    pub fn at(&self, location: &ChunkLocation) -> Result<&[u8], EnvelopeError> {
        if location.pack != self.id {
            return Err(EnvelopeError::Invalid {
                what: format!("chunk location in pack {}", location.pack),
                reason: format!("looked up in pack {}", self.id),
            });
        }
        self.range(location.offset, location.length)
    }

    /// The bytes at `offset..offset + length`, bounds-checked.
    pub fn range(&self, offset: u64, length: u32) -> Result<&[u8], EnvelopeError> {
        let out_of_bounds = || EnvelopeError::ChunkOutOfBounds {
            pack: self.id,
            offset,
            length,
            size: self.plaintext.len() as u64,
        };
        let start = usize::try_from(offset).map_err(|_| out_of_bounds())?;
        let end = start
            .checked_add(length as usize)
            .ok_or_else(out_of_bounds)?;
        self.plaintext.get(start..end).ok_or_else(out_of_bounds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::ChunkKey;

    fn build(pages: &[&[u8]], key: &ChunkKey, to: &[Recipient]) -> SealedPack {
        let mut b = PackBuilder::new();
        for p in pages {
            b.add(key.chunk_id(p), p).unwrap();
        }
        b.finish(to).unwrap()
    }

    #[test]
    fn pack_round_trip() {
        let id = Identity::generate();
        let key = ChunkKey::generate();
        let pages: [&[u8]; 3] = [b"first page", b"", b"third page, longer"];
        let sealed = build(&pages, &key, &[id.to_public()]);
        assert_eq!(sealed.id, PackId::of(&sealed.ciphertext));
        assert_eq!(sealed.entries.len(), 3);
        sealed.pack_ref().check(&sealed.ciphertext).unwrap();
        let open = open_pack(&id, &sealed.ciphertext, &sealed.id, 1024).unwrap();
        assert_eq!(open.id(), &sealed.id);
        for (entry, page) in sealed.entries.iter().zip(pages) {
            assert_eq!(entry.chunk, key.chunk_id(page));
            assert_eq!(open.chunk(entry).unwrap(), page);
        }
        for (_, loc) in sealed.locations() {
            open.at(&loc).unwrap();
        }
    }

    #[test]
    fn duplicate_chunks_are_stored_once() {
        let key = ChunkKey::generate();
        let mut b = PackBuilder::new();
        let first = b.add(key.chunk_id(b"a"), b"a").unwrap();
        b.add(key.chunk_id(b"b"), b"bb").unwrap();
        assert_eq!(b.add(key.chunk_id(b"a"), b"a").unwrap(), first);
        assert_eq!((b.chunk_count(), b.len()), (2, 3));
        assert!(b.contains(&key.chunk_id(b"b")));
    }

    #[test]
    fn empty_pack_and_no_recipients_are_refused() {
        assert!(matches!(
            PackBuilder::new().finish(&[Identity::generate().to_public()]),
            Err(EnvelopeError::Invalid { .. })
        ));
        let mut b = PackBuilder::with_capacity(16);
        b.add(ChunkId::from_bytes([1; 32]), b"x").unwrap();
        assert!(matches!(b.finish(&[]), Err(EnvelopeError::NoRecipients)));
    }

    #[test]
    fn tampered_pack_or_wrong_id_is_refused_before_decryption() {
        let id = Identity::generate();
        let sealed = build(&[b"page"], &ChunkKey::generate(), &[id.to_public()]);
        let mut bad = sealed.ciphertext.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(
            open_pack(&id, &bad, &sealed.id, 1024),
            Err(EnvelopeError::HashMismatch { .. })
        ));
        assert!(matches!(
            sealed.pack_ref().check(&bad),
            Err(EnvelopeError::HashMismatch { .. })
        ));
        assert!(matches!(
            sealed.pack_ref().check(&bad[1..]),
            Err(EnvelopeError::LengthMismatch { .. })
        ));
        let other = PackId::from_bytes([9; 32]);
        assert!(matches!(
            open_pack(&id, &sealed.ciphertext, &other, 1024),
            Err(EnvelopeError::HashMismatch { .. })
        ));
        // A damaged file whose id is recomputed still fails authentication.
        assert!(matches!(
            open_pack(&id, &bad, &PackId::of(&bad), 1024),
            Err(EnvelopeError::Decrypt { what: "pack" })
        ));
    }

    #[test]
    fn wrong_identity_and_oversized_pack_are_refused() {
        let id = Identity::generate();
        let sealed = build(&[&[0u8; 5000]], &ChunkKey::generate(), &[id.to_public()]);
        assert!(matches!(
            open_pack(
                &Identity::generate(),
                &sealed.ciphertext,
                &sealed.id,
                1 << 20
            ),
            Err(EnvelopeError::Decrypt { .. })
        ));
        assert!(matches!(
            open_pack(&id, &sealed.ciphertext, &sealed.id, 4999),
            Err(EnvelopeError::PlaintextTooLarge { max: 4999, .. })
        ));
    }

    #[test]
    fn out_of_bounds_entries_are_refused() {
        let id = Identity::generate();
        let sealed = build(&[b"0123456789"], &ChunkKey::generate(), &[id.to_public()]);
        let open = open_pack(&id, &sealed.ciphertext, &sealed.id, 64).unwrap();
        let chunk = ChunkId::from_bytes([0; 32]);
        for (offset, length) in [(0, 11), (10, 1), (11, 0), (u64::MAX, 1), (5, u32::MAX)] {
            let e = PackEntry {
                chunk,
                offset,
                length,
            };
            assert!(
                matches!(open.chunk(&e), Err(EnvelopeError::ChunkOutOfBounds { .. })),
                "{offset}+{length}"
            );
        }
        assert_eq!(open.range(10, 0).unwrap(), b"");
        assert_eq!(open.range(2, 3).unwrap(), b"234");
        let elsewhere = ChunkLocation {
            pack: PackId::from_bytes([1; 32]),
            offset: 0,
            length: 1,
        };
        assert!(matches!(
            open.at(&elsewhere),
            Err(EnvelopeError::Invalid { .. })
        ));
    }
}
