//! The manifest body's stored form: a small JSON part for the scalar facts, then binary
//! tables for the pack list, the chunk locations and the page map. JSON with hex ids cost
//! about 250 bytes per page; this costs 48 bytes per distinct chunk and 4 per page.
//!
//! ```text
//! "OTTERMB1"                  8 bytes of magic
//! u32 facts length, facts     JSON: page_size, page_count, file hashes, row counts,
//!                             schema_version, extra
//! u32 pack count, packs       32-byte pack ids
//! u32 chunk count, chunks     32-byte chunk id, u32 pack index, u64 offset, u32 length
//! pages                       page_count × u32 chunk index
//! ```
//! All integers are big-endian. Every count is checked against the bytes that remain
//! before anything is allocated, and every index against its table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ChunkId, ChunkLocation, EnvelopeError, ManifestBody, PackId};
use crate::canonical::parse_strict;

/// The first bytes of a stored manifest body.
pub const BODY_MAGIC: &[u8; 8] = b"OTTERMB1";
const CHUNK_RECORD: usize = 32 + 4 + 8 + 4;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Facts {
    page_size: u32,
    page_count: u64,
    file_blake3: String,
    file_sha256: String,
    row_counts: BTreeMap<String, u64>,
    schema_version: i64,
    #[serde(default)]
    extra: BTreeMap<String, Value>,
}

fn malformed(reason: impl Into<String>) -> EnvelopeError {
    EnvelopeError::Malformed {
        what: "manifest body",
        reason: reason.into(),
    }
}

fn put_u32(out: &mut Vec<u8>, n: usize) -> Result<(), EnvelopeError> {
    let n = u32::try_from(n).map_err(|_| malformed("a table has more than 2^32 entries"))?;
    out.extend_from_slice(&n.to_be_bytes());
    Ok(())
}

/// Serialises a body (the plaintext that gets encrypted).
pub fn encode(body: &ManifestBody) -> Result<Vec<u8>, EnvelopeError> {
    let facts = Facts {
        page_size: body.page_size,
        page_count: body.page_count,
        file_blake3: body.file_blake3.clone(),
        file_sha256: body.file_sha256.clone(),
        row_counts: body.row_counts.clone(),
        schema_version: body.schema_version,
        extra: body.extra.clone(),
    };
    let facts = serde_json::to_vec(&facts).map_err(|e| malformed(e.to_string()))?;
    let mut packs: Vec<PackId> = body.chunks.values().map(|l| l.pack).collect();
    packs.sort_unstable();
    packs.dedup();
    let chunk_index: BTreeMap<&ChunkId, usize> = body
        .chunks
        .keys()
        .enumerate()
        .map(|(i, c)| (c, i))
        .collect();

    let mut out = Vec::with_capacity(
        64 + facts.len()
            + packs.len() * 32
            + body.chunks.len() * CHUNK_RECORD
            + body.pages.len() * 4,
    );
    out.extend_from_slice(BODY_MAGIC);
    put_u32(&mut out, facts.len())?;
    out.extend_from_slice(&facts);
    put_u32(&mut out, packs.len())?;
    for p in &packs {
        out.extend_from_slice(p.as_bytes());
    }
    put_u32(&mut out, body.chunks.len())?;
    for (id, loc) in &body.chunks {
        let pack = packs
            .binary_search(&loc.pack)
            .map_err(|_| malformed("chunk names a pack missing from the table"))?;
        out.extend_from_slice(id.as_bytes());
        put_u32(&mut out, pack)?;
        out.extend_from_slice(&loc.offset.to_be_bytes());
        out.extend_from_slice(&loc.length.to_be_bytes());
    }
    for page in &body.pages {
        let i = chunk_index
            .get(page)
            .ok_or_else(|| malformed("a page names a chunk with no location"))?;
        put_u32(&mut out, *i)?;
    }
    Ok(out)
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], EnvelopeError> {
        if self.rest.len() < n {
            return Err(malformed(format!("truncated in the {what}")));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    fn u32(&mut self, what: &str) -> Result<u32, EnvelopeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64, EnvelopeError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn id(&mut self, what: &str) -> Result<[u8; 32], EnvelopeError> {
        let b = self.take(32, what)?;
        let mut a = [0u8; 32];
        a.copy_from_slice(b);
        Ok(a)
    }
    /// A count of records of `size` bytes, refused when the remaining bytes cannot hold it.
    fn count(&mut self, size: usize, what: &str) -> Result<usize, EnvelopeError> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(size) > self.rest.len() {
            return Err(malformed(format!(
                "{what} count {n} exceeds the bytes present"
            )));
        }
        Ok(n)
    }
}

/// Parses a stored body; `max_facts` caps the JSON part.
pub fn decode(bytes: &[u8], max_facts: usize) -> Result<ManifestBody, EnvelopeError> {
    let mut r = Reader { rest: bytes };
    if r.take(BODY_MAGIC.len(), "magic")? != BODY_MAGIC {
        return Err(malformed("not a manifest body (bad magic bytes)"));
    }
    let facts_len = r.count(1, "facts")?;
    let facts_bytes = r.take(facts_len, "facts")?;
    let value = parse_strict(facts_bytes, max_facts).map_err(|e| malformed(e.to_string()))?;
    let facts: Facts = serde_json::from_value(value).map_err(|e| malformed(e.to_string()))?;

    let n_packs = r.count(32, "pack table")?;
    let mut packs = Vec::with_capacity(n_packs);
    for _ in 0..n_packs {
        packs.push(PackId::from_bytes(r.id("pack table")?));
    }
    let n_chunks = r.count(CHUNK_RECORD, "chunk table")?;
    let mut ids = Vec::with_capacity(n_chunks);
    let mut chunks = BTreeMap::new();
    for _ in 0..n_chunks {
        let id = ChunkId::from_bytes(r.id("chunk table")?);
        let pack_index = r.u32("chunk table")? as usize;
        let pack = *packs.get(pack_index).ok_or_else(|| {
            malformed(format!(
                "chunk names pack #{pack_index}, which is not in the table"
            ))
        })?;
        let offset = r.u64("chunk table")?;
        let length = r.u32("chunk table")?;
        if chunks
            .insert(
                id,
                ChunkLocation {
                    pack,
                    offset,
                    length,
                },
            )
            .is_some()
        {
            return Err(malformed("a chunk is listed twice"));
        }
        ids.push(id);
    }
    let page_count = usize::try_from(facts.page_count)
        .map_err(|_| malformed("page count does not fit this machine"))?;
    if page_count.saturating_mul(4) != r.rest.len() {
        return Err(malformed(format!(
            "{} bytes of page map for {} pages",
            r.rest.len(),
            facts.page_count
        )));
    }
    let mut pages = Vec::with_capacity(page_count);
    for _ in 0..page_count {
        let i = r.u32("page map")? as usize;
        pages.push(*ids.get(i).ok_or_else(|| {
            malformed(format!(
                "a page names chunk #{i}, which is not in the table"
            ))
        })?);
    }
    Ok(ManifestBody {
        page_size: facts.page_size,
        page_count: facts.page_count,
        pages,
        chunks,
        file_blake3: facts.file_blake3,
        file_sha256: facts.file_sha256,
        row_counts: facts.row_counts,
        schema_version: facts.schema_version,
        extra: facts.extra,
    })
}

impl ManifestBody {
    /// The stored form of the body (the plaintext that gets encrypted): see the module
    /// documentation of `body_codec`.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EnvelopeError> {
        encode(self)
    }

    /// Parses a decrypted body; `max_facts` caps its JSON part. Does not validate it
    /// against a header: see [`ManifestBody::validate`].
    pub fn from_bytes(bytes: &[u8], max_facts: usize) -> Result<Self, EnvelopeError> {
        decode(bytes, max_facts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(pages: usize, distinct: usize) -> ManifestBody {
        let packs = [PackId::from_bytes([1; 32]), PackId::from_bytes([2; 32])];
        let ids: Vec<ChunkId> = (0..distinct)
            .map(|i| {
                let mut b = [0u8; 32];
                b[..8].copy_from_slice(&(i as u64).to_be_bytes());
                ChunkId::from_bytes(b)
            })
            .collect();
        let chunks = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                (
                    *id,
                    ChunkLocation {
                        pack: packs[i % 2],
                        offset: i as u64 * 100,
                        length: 100,
                    },
                )
            })
            .collect();
        ManifestBody {
            page_size: 4096,
            page_count: pages as u64,
            pages: (0..pages).map(|p| ids[p % distinct]).collect(),
            chunks,
            file_blake3: "b".repeat(64),
            file_sha256: "s".repeat(64),
            row_counts: BTreeMap::from([("transactions".to_string(), 20_000)]),
            schema_version: 3,
            extra: BTreeMap::from([("note".to_string(), Value::from("x"))]),
        }
    }

    #[test]
    fn round_trips_and_is_compact() {
        let b = body(10_000, 9_000);
        let bytes = encode(&b).unwrap();
        assert_eq!(decode(&bytes, 1 << 20).unwrap(), b);
        assert!(
            bytes.len() < 10_000 * 4 + 9_000 * 48 + 1024,
            "{}",
            bytes.len()
        );
    }

    #[test]
    fn every_truncation_and_bad_index_is_refused() {
        let bytes = encode(&body(20, 7)).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], 1 << 20).is_err(), "cut at {cut}");
        }
        // The last page names a chunk past the table.
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 4..].copy_from_slice(&99u32.to_be_bytes());
        assert!(decode(&bad, 1 << 20)
            .unwrap_err()
            .to_string()
            .contains("chunk #99"));
        // A huge count with few bytes behind it is refused before allocating.
        let mut huge = BODY_MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(&huge, 1 << 20)
            .unwrap_err()
            .to_string()
            .contains("exceeds"));
    }
}
