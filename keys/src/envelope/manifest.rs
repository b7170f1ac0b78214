//! The two halves of a backup manifest: the plaintext header the device signs and the server
//! checks, and the encrypted body that maps the database's pages to chunks in packs.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    clip, is_hex32, sha256_hex, ChunkId, EnvelopeError, PackId, PackRef, MANIFEST_FORMAT,
    MAX_DEVICE_ID_CHARS, MAX_PAGE_SIZE,
};
use crate::canonical::to_canonical_bytes;
use crate::time::UtcTime;

/// The plaintext, signed half of a manifest. Signed and hashed in canonical JSON form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestHeader {
    /// Format version: [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The device that made the backup.
    pub device_id: String,
    /// 1 for the device's first backup, then one more for each.
    pub sequence: u64,
    /// When the backup was taken.
    pub created: UtcTime,
    /// Hex SHA-256 of the previous manifest's canonical header; `None` only for sequence 1.
    pub previous: Option<String>,
    /// Every pack this backup needs, including packs uploaded by earlier backups.
    pub packs: Vec<PackRef>,
    /// Hex SHA-256 of the encrypted body.
    pub body_sha256: String,
    /// Length of the encrypted body in bytes.
    pub body_length: u64,
    /// Hex SHA-256 of the body's plaintext: the body stays authentic when the fleet's
    /// recovery key re-encrypts it for a replacement terminal. (The body holds the secret
    /// chunk key, so this hash reveals nothing.)
    pub body_plaintext_sha256: String,
}

impl ManifestHeader {
    /// The canonical JSON bytes that are signed and hashed.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, EnvelopeError> {
        to_canonical_bytes(self).map_err(|source| EnvelopeError::Canonical {
            what: "manifest header",
            source,
        })
    }

    /// Hex SHA-256 of the canonical header: what the next manifest's `previous` holds.
    pub fn hash(&self) -> Result<String, EnvelopeError> {
        Ok(sha256_hex(&self.canonical_bytes()?))
    }

    /// `manifest "device" #sequence`, for messages.
    pub(crate) fn label(&self) -> String {
        format!(
            "manifest {:?} #{}",
            clip(&self.device_id, 64),
            self.sequence
        )
    }

    /// Checks the header on its own: format, device id, sequence and `previous` agree, hex
    /// fields are well-formed, packs are listed once each.
    pub fn check(&self) -> Result<(), EnvelopeError> {
        let invalid = |reason: String| EnvelopeError::Invalid {
            what: self.label(),
            reason,
        };
        if self.format != MANIFEST_FORMAT {
            return Err(invalid(format!(
                "format {} is not {MANIFEST_FORMAT}, the only one this version reads",
                self.format
            )));
        }
        if self.device_id.is_empty()
            || self.device_id.chars().count() > MAX_DEVICE_ID_CHARS
            || self.device_id.chars().any(char::is_control)
        {
            return Err(invalid(format!(
                "device id must be 1 to {MAX_DEVICE_ID_CHARS} characters, none a control character"
            )));
        }
        match (self.sequence, &self.previous) {
            (0, _) => return Err(invalid("sequence numbers start at 1".into())),
            (1, Some(_)) => {
                return Err(invalid(
                    "sequence 1 is a device's first backup and has no previous".into(),
                ))
            }
            (n, None) if n > 1 => {
                return Err(invalid(format!(
                    "sequence {n} does not name the previous manifest's hash"
                )))
            }
            (_, Some(p)) if !is_hex32(p) => {
                return Err(invalid("previous is not 64 lower-case hex digits".into()))
            }
            _ => {}
        }
        if !is_hex32(&self.body_sha256) {
            return Err(invalid(
                "body_sha256 is not 64 lower-case hex digits".into(),
            ));
        }
        if self.body_length == 0 {
            return Err(invalid("the body is empty".into()));
        }
        if !is_hex32(&self.body_plaintext_sha256) {
            return Err(invalid(
                "body_plaintext_sha256 is not 64 lower-case hex digits".into(),
            ));
        }
        let mut seen = HashSet::new();
        for p in &self.packs {
            if !seen.insert(p.id) {
                return Err(invalid(format!("pack {} is listed twice", p.id)));
            }
            if p.length == 0 {
                return Err(invalid(format!("pack {} has length 0", p.id)));
            }
        }
        Ok(())
    }
}

impl ManifestHeader {
    /// Checks that this header follows `previous` in its device's chain: same device, next
    /// sequence, `previous` holds that header's hash, and not created before it. With no
    /// previous header, this must be the device's first backup.
    pub fn check_follows(&self, previous: Option<&ManifestHeader>) -> Result<(), EnvelopeError> {
        let broken = |reason: String| EnvelopeError::Chain {
            what: self.label(),
            reason,
        };
        let Some(prev) = previous else {
            if self.sequence == 1 && self.previous.is_none() {
                return Ok(());
            }
            return Err(broken(format!(
                "the previous manifest (#{}) was not given; it is missing or was deleted",
                self.sequence.saturating_sub(1)
            )));
        };
        if prev.device_id != self.device_id {
            return Err(broken(format!(
                "the previous manifest belongs to device {:?}",
                clip(&prev.device_id, 64)
            )));
        }
        if prev.sequence.checked_add(1) != Some(self.sequence) {
            return Err(broken(format!(
                "sequence {} does not follow {} (a gap, a replay or a fork)",
                self.sequence, prev.sequence
            )));
        }
        let expected = prev.hash()?;
        if self.previous.as_deref() != Some(expected.as_str()) {
            return Err(broken(format!(
                "previous hash is not the hash of manifest #{} ({expected})",
                prev.sequence
            )));
        }
        if self.created < prev.created {
            return Err(broken(format!(
                "created {} is before the previous manifest's {}",
                self.created, prev.created
            )));
        }
        Ok(())
    }
}

/// The header fields a device chooses; [`super::SignedManifest::seal`] adds the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFields {
    /// The device making the backup.
    pub device_id: String,
    /// 1 for the first backup, the previous sequence plus one after.
    pub sequence: u64,
    /// When the backup was taken.
    pub created: UtcTime,
    /// Hex SHA-256 of the previous canonical header; `None` for the first backup.
    pub previous: Option<String>,
    /// Every pack the backup needs, old and new.
    pub packs: Vec<PackRef>,
}

impl ManifestFields {
    /// The fields of a device's first backup.
    pub fn first(device_id: impl Into<String>, created: UtcTime, packs: Vec<PackRef>) -> Self {
        ManifestFields {
            device_id: device_id.into(),
            sequence: 1,
            created,
            previous: None,
            packs,
        }
    }

    /// The fields of the backup that follows `previous` (same device, next sequence).
    pub fn after(
        previous: &ManifestHeader,
        created: UtcTime,
        packs: Vec<PackRef>,
    ) -> Result<Self, EnvelopeError> {
        let sequence = previous
            .sequence
            .checked_add(1)
            .ok_or_else(|| EnvelopeError::Invalid {
                what: previous.label(),
                reason: "no sequence number follows it".into(),
            })?;
        Ok(ManifestFields {
            device_id: previous.device_id.clone(),
            sequence,
            created,
            previous: Some(previous.hash()?),
            packs,
        })
    }
}

/// Where a chunk lies: in which pack, at which offset of its plaintext, how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkLocation {
    /// The pack.
    pub pack: PackId,
    /// Offset in the pack's plaintext.
    pub offset: u64,
    /// Length in bytes.
    pub length: u32,
}

/// The encrypted half of a manifest: everything needed to rebuild and check the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestBody {
    /// The database's page size in bytes.
    pub page_size: u32,
    /// Number of pages; equals `pages.len()`.
    pub page_count: u64,
    /// Page index to the chunk holding that page.
    pub pages: Vec<ChunkId>,
    /// Where each chunk lies.
    pub chunks: BTreeMap<ChunkId, ChunkLocation>,
    /// Hex BLAKE3 of the whole database file.
    pub file_blake3: String,
    /// Hex SHA-256 of the whole database file.
    pub file_sha256: String,
    /// Rows per table, checked after restore.
    pub row_counts: BTreeMap<String, u64>,
    /// The database's schema version.
    pub schema_version: i64,
    /// Members added by later versions.
    #[serde(default)]
    pub extra: BTreeMap<String, Value>,
}

impl ManifestBody {
    /// Checks the body against the packs its header lists: page count and size are sane,
    /// every page's chunk has a location, every location lies in a listed pack and within
    /// its length, and the file hashes are well-formed.
    pub fn validate(&self, packs: &[PackRef]) -> Result<(), EnvelopeError> {
        let invalid = |reason: String| EnvelopeError::Invalid {
            what: "manifest body".into(),
            reason,
        };
        if self.page_size == 0 || self.page_size > MAX_PAGE_SIZE {
            return Err(invalid(format!(
                "page size {} is not between 1 and {MAX_PAGE_SIZE}",
                self.page_size
            )));
        }
        if self.page_count != self.pages.len() as u64 {
            return Err(invalid(format!(
                "page_count is {} but {} pages are listed",
                self.page_count,
                self.pages.len()
            )));
        }
        if self
            .page_count
            .checked_mul(u64::from(self.page_size))
            .is_none()
        {
            return Err(invalid("page_count × page_size overflows".into()));
        }
        if !is_hex32(&self.file_blake3) || !is_hex32(&self.file_sha256) {
            return Err(invalid(
                "file_blake3 and file_sha256 must be 64 lower-case hex digits".into(),
            ));
        }
        for (index, chunk) in self.pages.iter().enumerate() {
            if !self.chunks.contains_key(chunk) {
                return Err(invalid(format!(
                    "page {index} is chunk {chunk}, which has no location"
                )));
            }
        }
        let lengths: BTreeMap<PackId, u64> = packs.iter().map(|p| (p.id, p.length)).collect();
        for (chunk, loc) in &self.chunks {
            let Some(&pack_length) = lengths.get(&loc.pack) else {
                return Err(invalid(format!(
                    "chunk {chunk} is in pack {}, which the header does not list",
                    loc.pack
                )));
            };
            // A pack's plaintext is shorter than its ciphertext.
            let end = loc.offset.checked_add(u64::from(loc.length));
            if end.is_none_or(|end| end > pack_length) {
                return Err(invalid(format!(
                    "chunk {chunk} at offset {} with length {} lies beyond the end of pack {} \
                     ({pack_length} bytes)",
                    loc.offset, loc.length, loc.pack
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Edit<T> = fn(&mut T);

    fn header() -> ManifestHeader {
        ManifestHeader {
            format: MANIFEST_FORMAT,
            device_id: "till-7".into(),
            sequence: 1,
            created: UtcTime::from_unix(1_700_000_000),
            previous: None,
            packs: vec![PackRef {
                id: PackId::from_bytes([1; 32]),
                length: 100,
            }],
            body_sha256: "00".repeat(32),
            body_length: 10,
            body_plaintext_sha256: "11".repeat(32),
        }
    }

    fn body() -> ManifestBody {
        let chunk = ChunkId::from_bytes([2; 32]);
        ManifestBody {
            page_size: 4096,
            page_count: 2,
            pages: vec![chunk, chunk],
            chunks: [(
                chunk,
                ChunkLocation {
                    pack: PackId::from_bytes([1; 32]),
                    offset: 10,
                    length: 50,
                },
            )]
            .into(),
            file_blake3: "ab".repeat(32),
            file_sha256: "cd".repeat(32),
            row_counts: [("sales".to_string(), 3u64)].into(),
            schema_version: 7,
            extra: BTreeMap::new(),
        }
    }

    #[test]
    fn canonical_header_has_sorted_members() {
        let bytes = header().canonical_bytes().unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with(r#"{"body_length":10,"body_plaintext_sha256":"1111"#),
            "{text}"
        );
        assert!(
            text.contains(r#""created":"2023-11-14T22:13:20Z""#),
            "{text}"
        );
        assert!(text.contains(r#""previous":null"#), "{text}");
        assert_eq!(header().hash().unwrap(), sha256_hex(text.as_bytes()));
    }

    #[test]
    fn header_rules() {
        header().check().unwrap();
        let cases: Vec<(&str, Edit<ManifestHeader>)> = vec![
            ("format", |h| h.format = 2),
            ("device id", |h| h.device_id.clear()),
            ("device id", |h| h.device_id = "a\nb".into()),
            ("start at 1", |h| h.sequence = 0),
            ("first backup", |h| h.previous = Some("00".repeat(32))),
            ("previous", |h| h.sequence = 2),
            ("hex", |h| {
                h.sequence = 2;
                h.previous = Some("XY".into())
            }),
            ("body_sha256", |h| h.body_sha256 = "0".into()),
            ("empty", |h| h.body_length = 0),
            ("body_plaintext_sha256", |h| {
                h.body_plaintext_sha256 = "1".into()
            }),
            ("twice", |h| h.packs.push(h.packs[0])),
            ("length 0", |h| h.packs[0].length = 0),
        ];
        for (needle, edit) in cases {
            let mut h = header();
            edit(&mut h);
            let err = h.check().unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn fields_after_chain_to_the_previous_header() {
        let prev = header();
        let f = ManifestFields::after(&prev, prev.created, vec![]).unwrap();
        assert_eq!(f.sequence, 2);
        assert_eq!(f.device_id, "till-7");
        assert_eq!(f.previous, Some(prev.hash().unwrap()));
        let mut last = header();
        last.sequence = u64::MAX;
        assert!(ManifestFields::after(&last, last.created, vec![]).is_err());
    }

    #[test]
    fn body_rules() {
        let packs = header().packs;
        body().validate(&packs).unwrap();
        let cases: Vec<(&str, Edit<ManifestBody>)> = vec![
            ("page size", |b| b.page_size = 0),
            ("page_count", |b| b.page_count = 3),
            ("no location", |b| {
                b.pages.push(ChunkId::from_bytes([3; 32]));
                b.page_count = 3
            }),
            ("does not list", |b| {
                for loc in b.chunks.values_mut() {
                    loc.pack = PackId::from_bytes([9; 32]);
                }
            }),
            ("beyond the end", |b| {
                for loc in b.chunks.values_mut() {
                    loc.offset = 51;
                }
            }),
            ("beyond the end", |b| {
                for loc in b.chunks.values_mut() {
                    loc.offset = u64::MAX;
                }
            }),
            ("hex", |b| b.file_sha256 = "nope".into()),
        ];
        for (needle, edit) in cases {
            let mut b = body();
            edit(&mut b);
            let err = b.validate(&packs).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
        assert!(body().validate(&[]).is_err());
    }

    #[test]
    fn body_json_round_trip_keeps_extra_and_refuses_unknown_members() {
        let mut b = body();
        b.extra.insert("wal_mode".into(), Value::Bool(true));
        let json = serde_json::to_vec(&b).unwrap();
        assert_eq!(serde_json::from_slice::<ManifestBody>(&json).unwrap(), b);
        let mut v: Value = serde_json::from_slice(&json).unwrap();
        v["surprise"] = Value::Null;
        assert!(serde_json::from_value::<ManifestBody>(v).is_err());
    }
}
