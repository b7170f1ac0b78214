//! Length and hash checks of downloaded files (`sha256`, `sha512`), whole or streamed.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256, Sha512};

/// Why a file's length or hashes do not match what signed metadata says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    /// More or fewer bytes than signed.
    #[error("length mismatch: expected {expected} bytes, got {found}")]
    Length {
        /// The signed length.
        expected: u64,
        /// The length found.
        found: u64,
    },
    /// A hash differs.
    #[error("{algorithm} hash mismatch")]
    Mismatch {
        /// The algorithm.
        algorithm: String,
    },
    /// A hash algorithm Otter does not implement (fails closed, as python-tuf does).
    #[error("unsupported hash algorithm {0:?}")]
    Unsupported(String),
    /// No hashes were given.
    #[error("no hashes to check against")]
    Empty,
}

/// Hashes data incrementally with every algorithm named in signed metadata.
pub struct MultiHasher {
    sha256: Option<Sha256>,
    sha512: Option<Sha512>,
    len: u64,
}

impl MultiHasher {
    /// A hasher for the algorithms in `hashes`; fails on an unknown one or none.
    pub fn for_hashes(hashes: &BTreeMap<String, String>) -> Result<Self, HashError> {
        if hashes.is_empty() {
            return Err(HashError::Empty);
        }
        let mut h = MultiHasher {
            sha256: None,
            sha512: None,
            len: 0,
        };
        for alg in hashes.keys() {
            match alg.as_str() {
                "sha256" => h.sha256 = Some(Sha256::new()),
                "sha512" => h.sha512 = Some(Sha512::new()),
                other => return Err(HashError::Unsupported(other.chars().take(32).collect())),
            }
        }
        Ok(h)
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.len = self.len.saturating_add(data.len() as u64);
        if let Some(h) = &mut self.sha256 {
            h.update(data);
        }
        if let Some(h) = &mut self.sha512 {
            h.update(data);
        }
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks the digests (and the length, when given) against `hashes`.
    pub fn finish(
        self,
        length: Option<u64>,
        hashes: &BTreeMap<String, String>,
    ) -> Result<(), HashError> {
        if let Some(expected) = length {
            if expected != self.len {
                return Err(HashError::Length {
                    expected,
                    found: self.len,
                });
            }
        }
        let check = |alg: &str, got: Vec<u8>| -> Result<(), HashError> {
            let want = hashes.get(alg).map(|s| s.to_ascii_lowercase());
            if want.as_deref() != Some(hex::encode(got).as_str()) {
                return Err(HashError::Mismatch {
                    algorithm: alg.into(),
                });
            }
            Ok(())
        };
        if let Some(h) = self.sha256 {
            check("sha256", h.finalize().to_vec())?;
        }
        if let Some(h) = self.sha512 {
            check("sha512", h.finalize().to_vec())?;
        }
        Ok(())
    }
}

/// Checks a whole file in memory.
pub fn verify(
    data: &[u8],
    length: Option<u64>,
    hashes: &BTreeMap<String, String>,
) -> Result<(), HashError> {
    let mut h = MultiHasher::for_hashes(hashes)?;
    h.update(data);
    h.finish(length, hashes)
}

/// The hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The `hashes` member Otter writes for a file: sha256 and sha512.
pub fn hashes_of(data: &[u8]) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("sha256".to_string(), sha256_hex(data)),
        ("sha512".to_string(), hex::encode(Sha512::digest(data))),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_data_passes_and_bad_data_fails() {
        let h = hashes_of(b"abc");
        assert!(verify(b"abc", Some(3), &h).is_ok());
        assert_eq!(
            verify(b"abd", Some(3), &h),
            Err(HashError::Mismatch {
                algorithm: "sha256".into()
            })
        );
        assert!(matches!(
            verify(b"abcd", Some(3), &h),
            Err(HashError::Length { .. })
        ));
        let only512 = BTreeMap::from([("sha512".to_string(), h["sha512"].clone())]);
        assert!(verify(b"abc", None, &only512).is_ok());
        assert!(verify(b"abx", None, &only512).is_err());
    }

    #[test]
    fn unknown_and_missing_algorithms_fail_closed() {
        let h = BTreeMap::from([("md5".to_string(), "00".to_string())]);
        assert!(matches!(
            verify(b"", None, &h),
            Err(HashError::Unsupported(_))
        ));
        assert_eq!(verify(b"", None, &BTreeMap::new()), Err(HashError::Empty));
    }
}
