//! The bundle manifest (`manifest.json` inside the bundle): what a release is, for which
//! hardware, and which payload files it carries. Parsed strictly (unknown members refused)
//! and checked: safe names, a semantic version, sane commands.

use serde::{Deserialize, Serialize};

/// Largest `manifest.json` accepted.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

pub use otter_keys::release::Kind;

/// One payload file as the manifest declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadFile {
    /// Relative path inside the bundle, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the contents.
    pub sha256: String,
}

/// `manifest.json`, as parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Component name: `[a-z0-9][a-z0-9._-]*`, at most 64 characters.
    pub name: String,
    /// Firmware, driver or patch.
    pub kind: Kind,
    /// Semantic version (semver.org 2.0).
    pub version: String,
    /// Hardware models it runs on (at least one).
    pub hardware: Vec<String>,
    /// Payload files (at least one).
    pub payload: Vec<PayloadFile>,
    /// Install command, as argv.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<Vec<String>>,
    /// Health check command, as argv.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Vec<String>>,
    /// Lowest installed version this release may be applied over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_installed_version: Option<String>,
    /// The install command migrates the terminal's database: the agent backs it up before
    /// applying and restores it with any rollback of this release.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub migrates_database: bool,
}

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON of the manifest's shape.
    #[error("manifest.json is malformed: {0}")]
    Malformed(String),
    /// A name is unsafe.
    #[error("manifest.json: {0}")]
    Name(String),
    /// A version is not semantic.
    #[error(
        "manifest.json: {field} {value:?} is not a semantic version (MAJOR.MINOR.PATCH): {reason}"
    )]
    Version {
        /// Which field.
        field: &'static str,
        /// The value (shortened).
        value: String,
        /// What semver said.
        reason: String,
    },
    /// Any other rule.
    #[error("manifest.json: {0}")]
    Invalid(String),
}

fn shown(s: &str) -> String {
    s.chars().take(80).collect()
}

pub use otter_keys::release::{is_component_name, is_label};

/// Whether `p` is a safe relative path: `/`-separated components of `[A-Za-z0-9._+-]`, none
/// empty, `.` or `..`, none starting with `-`; at most 255 bytes.
pub fn is_safe_relative_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 255
        && p.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && !c.starts_with('-')
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
        })
}

fn parse_version(field: &'static str, v: &str) -> Result<semver::Version, ManifestError> {
    semver::Version::parse(v).map_err(|e| ManifestError::Version {
        field,
        value: shown(v),
        reason: e.to_string(),
    })
}

fn check_command(field: &str, argv: &[String]) -> Result<(), ManifestError> {
    if argv.is_empty() || argv.len() > 64 {
        return Err(ManifestError::Invalid(format!(
            "{field} must be an argv list of 1 to 64 strings"
        )));
    }
    if argv[0].is_empty() || argv.iter().any(|a| a.len() > 4096 || a.contains('\0')) {
        return Err(ManifestError::Invalid(format!(
            "{field}: arguments must be at most 4096 bytes without NUL, the program non-empty"
        )));
    }
    Ok(())
}

impl Manifest {
    /// Parses and checks `manifest.json`.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        m.check()?;
        Ok(m)
    }

    /// The version, parsed.
    pub fn semver(&self) -> Result<semver::Version, ManifestError> {
        parse_version("version", &self.version)
    }

    /// The target name it is published under: `NAME-VERSION.tar.zst` (flat, no `/`).
    pub fn target_name(&self) -> String {
        format!("{}-{}.tar.zst", self.name, self.version)
    }

    fn check(&self) -> Result<(), ManifestError> {
        if !is_component_name(&self.name) {
            return Err(ManifestError::Name(format!(
                "name {:?} is not a component name: use 1 to 64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit",
                shown(&self.name)
            )));
        }
        let v = self.semver()?;
        // The canonical form only, so that "1.0.0" and "01.0.0" cannot both exist.
        if v.to_string() != self.version {
            return Err(ManifestError::Version {
                field: "version",
                value: shown(&self.version),
                reason: format!("write it as {v}"),
            });
        }
        if let Some(min) = &self.min_installed_version {
            parse_version("min_installed_version", min)?;
        }
        if self.hardware.is_empty() || self.hardware.len() > 256 {
            return Err(ManifestError::Invalid(
                "hardware must list 1 to 256 hardware models".into(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for h in &self.hardware {
            if !is_label(h) {
                return Err(ManifestError::Name(format!(
                    "hardware model {:?} is not a safe name (A-Z, a-z, 0-9, '.', '_', '-')",
                    shown(h)
                )));
            }
            if !seen.insert(h) {
                return Err(ManifestError::Invalid(format!(
                    "hardware model {h:?} is listed twice"
                )));
            }
        }
        if self.payload.is_empty() {
            return Err(ManifestError::Invalid(
                "payload lists no file: a bundle carries at least one".into(),
            ));
        }
        let mut paths = std::collections::BTreeSet::new();
        for f in &self.payload {
            if !is_safe_relative_path(&f.path) || f.path == "manifest.json" {
                return Err(ManifestError::Name(format!(
                    "payload path {:?} is not a safe relative path",
                    shown(&f.path)
                )));
            }
            if !paths.insert(f.path.as_str()) {
                return Err(ManifestError::Invalid(format!(
                    "payload path {:?} is listed twice",
                    f.path
                )));
            }
            if f.sha256.len() != 64
                || !f
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(ManifestError::Invalid(format!(
                    "payload {:?}: sha256 must be 64 lowercase hex digits",
                    f.path
                )));
            }
        }
        if let Some(c) = &self.install {
            check_command("install", c)?;
        }
        if let Some(c) = &self.health {
            check_command("health", c)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> serde_json::Value {
        serde_json::json!({
            "name": "card-reader", "kind": "driver", "version": "1.2.3",
            "hardware": ["pos-a"],
            "payload": [{"path": "bin/drv.so", "size": 3, "sha256": "a".repeat(64)}],
            "health": ["/bin/selftest", "--quick"]
        })
    }

    fn parse(v: &serde_json::Value) -> Result<Manifest, ManifestError> {
        Manifest::parse(&serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn a_good_manifest_parses() {
        let m = parse(&good()).unwrap();
        assert_eq!(m.target_name(), "card-reader-1.2.3.tar.zst");
        assert_eq!(m.kind, Kind::Driver);
    }

    #[test]
    fn bad_manifests_are_refused() {
        let cases: Vec<(&str, serde_json::Value)> = vec![
            ("name", serde_json::json!("../x")),
            ("name", serde_json::json!("A")),
            ("version", serde_json::json!("1.2")),
            ("version", serde_json::json!("01.2.3")),
            ("kind", serde_json::json!("kernel")),
            ("hardware", serde_json::json!([])),
            ("hardware", serde_json::json!(["a/b"])),
            ("payload", serde_json::json!([])),
            (
                "payload",
                serde_json::json!([{"path": "../x", "size": 1, "sha256": "a".repeat(64)}]),
            ),
            (
                "payload",
                serde_json::json!([{"path": "/etc/x", "size": 1, "sha256": "a".repeat(64)}]),
            ),
            ("install", serde_json::json!([])),
            ("surprise", serde_json::json!(1)),
        ];
        for (field, value) in cases {
            let mut v = good();
            v[field] = value.clone();
            assert!(parse(&v).is_err(), "{field} = {value}");
        }
        assert!(Manifest::parse(b"not json").is_err());
    }

    #[test]
    fn migrates_database_is_an_optional_bool() {
        assert!(!parse(&good()).unwrap().migrates_database);
        let mut v = good();
        v["migrates_database"] = serde_json::json!(true);
        let m = parse(&v).unwrap();
        assert!(m.migrates_database);
        // Written back only when set, so older manifests keep their bytes.
        assert!(serde_json::to_string(&m)
            .unwrap()
            .contains("\"migrates_database\":true"));
        let plain = parse(&good()).unwrap();
        assert!(!serde_json::to_string(&plain).unwrap().contains("migrates"));
        for bad in [
            serde_json::json!("yes"),
            serde_json::json!(1),
            serde_json::json!({}),
        ] {
            v["migrates_database"] = bad.clone();
            assert!(parse(&v).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_are_checked() {
        for ok in ["a", "a/b.c", "lib/x+y-1.so"] {
            assert!(is_safe_relative_path(ok), "{ok}");
        }
        for bad in [
            "", "/a", "a/../b", "./a", "a//b", "a/", "-rf", "a\\b", "a b",
        ] {
            assert!(!is_safe_relative_path(bad), "{bad}");
        }
    }
}
