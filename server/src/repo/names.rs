//! The file names the repository serves, checked before anything reaches the store: a name
//! with a character outside `[A-Za-z0-9._+-]`, a leading dot or `..` is unsafe; a safe name
//! of a shape the repository never holds is unknown.
//!
//! Metadata: `root.json`, `timestamp.json` (unversioned, change in place) and
//! `VERSION.ROLE.json` (consistent snapshots, immutable). Targets: `SHA256.NAME`, flat: Otter
//! target paths have no directories, so a served name never holds a `/`.

use std::fmt;

/// Longest file name served.
pub const MAX_NAME_LEN: usize = 255;

/// Why a requested file name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// It could escape its directory or is otherwise unsafe (answered with 400).
    #[error("file name {name} is not allowed: {reason}")]
    Unsafe {
        /// The name, escaped and shortened.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// It is safe but not of a shape this repository holds (answered with 404).
    #[error("no file named {name} here: {reason}")]
    Unknown {
        /// The name, escaped and shortened.
        name: String,
        /// The shapes that exist.
        reason: &'static str,
    },
}

/// How long clients and caches may keep a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caching {
    /// Changes in place (`timestamp.json`, `root.json`): revalidate every time.
    Revalidate,
    /// Never changes under its name (versioned metadata, hash-prefixed targets).
    Immutable,
}

impl Caching {
    /// The `Cache-Control` value.
    pub fn header_value(self) -> &'static str {
        match self {
            Caching::Revalidate => "no-cache",
            Caching::Immutable => "public, max-age=31536000, immutable",
        }
    }
}

/// A metadata file name the repository can hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataName {
    name: String,
    version: Option<u64>,
}

/// A target file name the repository can hold: `SHA256.NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetName {
    name: String,
}

const METADATA_SHAPES: &str = "metadata files are root.json, timestamp.json and VERSION.ROLE.json";
const TARGET_SHAPES: &str =
    "target files are named SHA256.NAME (64 lowercase hex digits, a dot, the target name)";

fn shown(s: &str) -> String {
    let short: String = s.chars().take(64).collect();
    format!("{short:?}")
}

fn check_safe(s: &str) -> Result<(), NameError> {
    let unsafe_ = |reason| {
        Err(NameError::Unsafe {
            name: shown(s),
            reason,
        })
    };
    if s.is_empty() {
        return unsafe_("it is empty");
    }
    if s.len() > MAX_NAME_LEN {
        return unsafe_("it is longer than 255 bytes");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
    {
        return unsafe_("only letters, digits, '.', '_', '-' and '+' are allowed");
    }
    if s.starts_with('.') || s.contains("..") {
        return unsafe_("it must not start with '.' or contain '..'");
    }
    Ok(())
}

/// Whether `s` is a positive decimal number without a leading zero that fits a `u64`.
fn parse_version(s: &str) -> Option<u64> {
    if s.is_empty() || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Role names Otter gives metadata files: top-level roles and delegated roles alike.
fn is_role_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

impl MetadataName {
    /// Checks a requested metadata file name.
    pub fn parse(s: &str) -> Result<MetadataName, NameError> {
        check_safe(s)?;
        let unknown = || NameError::Unknown {
            name: shown(s),
            reason: METADATA_SHAPES,
        };
        if s == "root.json" || s == "timestamp.json" {
            return Ok(MetadataName {
                name: s.into(),
                version: None,
            });
        }
        let (version, role) = s
            .strip_suffix(".json")
            .and_then(|rest| rest.split_once('.'))
            .ok_or_else(unknown)?;
        let version = parse_version(version).ok_or_else(unknown)?;
        // With consistent snapshots the timestamp is only ever fetched unversioned.
        if !is_role_name(role) || role == "timestamp" {
            return Err(unknown());
        }
        Ok(MetadataName {
            name: s.into(),
            version: Some(version),
        })
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The version of a `VERSION.ROLE.json` name.
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// How long it may be cached.
    pub fn caching(&self) -> Caching {
        if self.version.is_some() {
            Caching::Immutable
        } else {
            Caching::Revalidate
        }
    }
}

impl TargetName {
    /// Checks a requested target file name.
    pub fn parse(s: &str) -> Result<TargetName, NameError> {
        check_safe(s)?;
        let unknown = || NameError::Unknown {
            name: shown(s),
            reason: TARGET_SHAPES,
        };
        let (hash, rest) = s.split_once('.').ok_or_else(unknown)?;
        let is_hex = hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if hash.len() != 64 || !is_hex || rest.is_empty() {
            return Err(unknown());
        }
        Ok(TargetName { name: s.into() })
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// Always immutable: the name holds the hash of the contents.
    pub fn caching(&self) -> Caching {
        Caching::Immutable
    }
}

impl fmt::Display for MetadataName {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Display for TargetName {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_unsafe(r: Result<impl fmt::Debug, NameError>) -> bool {
        matches!(r, Err(NameError::Unsafe { .. }))
    }
    fn is_unknown(r: Result<impl fmt::Debug, NameError>) -> bool {
        matches!(r, Err(NameError::Unknown { .. }))
    }

    #[test]
    fn metadata_names_the_repository_holds() {
        let n = MetadataName::parse("root.json").unwrap();
        assert_eq!(n.caching(), Caching::Revalidate);
        assert_eq!(
            MetadataName::parse("timestamp.json").unwrap().caching(),
            Caching::Revalidate
        );
        let n = MetadataName::parse("12.snapshot.json").unwrap();
        assert_eq!(n.version(), Some(12));
        assert_eq!(n.caching(), Caching::Immutable);
        assert!(MetadataName::parse("1.card-reader_vendor.json").is_ok());
    }

    #[test]
    fn unsafe_metadata_names_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "../otter.db",
            "..%2fotter.db",
            "a/b.json",
            "a\\b.json",
            "root.json\0",
            ".hidden.json",
            "1..root.json",
            "root .json",
            "röot.json",
            &"a".repeat(300),
        ] {
            assert!(is_unsafe(MetadataName::parse(bad)), "{bad:?}");
            assert!(is_unsafe(TargetName::parse(bad)), "{bad:?}");
        }
    }

    #[test]
    fn safe_names_of_other_shapes_are_unknown() {
        for bad in [
            "snapshot.json",
            "targets.json",
            "0.root.json",
            "01.root.json",
            "1.timestamp.json",
            "1.root.txt",
            "1.json",
            "99999999999999999999999.root.json",
            "x.root.json",
            "otter.db",
        ] {
            assert!(is_unknown(MetadataName::parse(bad)), "{bad:?}");
        }
    }

    #[test]
    fn target_names_are_hash_prefixed() {
        let h = "ab".repeat(32);
        assert!(TargetName::parse(&format!("{h}.firmware-1.2.0.tar.zst")).is_ok());
        assert!(is_unknown(TargetName::parse("firmware.tar.zst")));
        assert!(is_unknown(TargetName::parse(&format!(
            "{}.x",
            "AB".repeat(32)
        ))));
        assert!(is_unknown(TargetName::parse(&format!(
            "{}.x",
            "ab".repeat(31)
        ))));
        assert!(is_unknown(TargetName::parse(&format!("{h}."))));
    }
}
