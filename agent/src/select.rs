//! Choosing an update from signed data only (agent issue, item 4).
//!
//! [`choose_update`] is a pure function: it reads the verified target entries of the trusted
//! targets metadata, the device's enrollment facts ([`DeviceFacts`]) and what is installed
//! ([`Installed`]), and returns a [`Decision`]: at most one update per component, plus notes
//! on targets that were refused for a reason an operator should see. Nothing unsigned (no
//! server hint, no clock, no randomness) enters the decision, so the same signed metadata and
//! the same device always give the same answer.
//!
//! # The signed `custom` member
//!
//! The server writes, into each target entry's `custom` (see `server/src/repo/release.rs`):
//!
//! ```json
//! {"kind": "driver", "version": "1.2.3", "hardware": ["pos-a"], "channel": "stable",
//!  "rollout": {"percent": 100, "groups": []}, "min_installed_version": "1.0.0",
//!  "rollback": true}
//! ```
//!
//! It is parsed strictly ([`TargetCustom::parse`]): unknown members, a missing member, a
//! wrong type, a `kind` other than `firmware`, `driver` or `patch`, a version that is not a
//! canonical semantic version, an empty or unsafe hardware list, a percent outside `0..=100`
//! or finer than 0.01, or a target name other than `COMPONENT-VERSION.tar.zst` (with
//! `VERSION` equal to `custom.version`) make the target *malformed*: it is never chosen and a
//! [`NoteReason::Malformed`] note says why. `min_installed_version` and `rollback` are
//! optional; `rollback` must be a JSON boolean when present, and only `true` counts.
//!
//! # Rollout bucket
//!
//! ```text
//! bucket(device_id, target) = u64::from_be_bytes(SHA-256(device_id || 0x00 || target)[0..8]) mod 10000
//! ```
//!
//! where `device_id` and `target` (the full TUF target name, e.g.
//! `card-reader-1.2.3.tar.zst`) are their UTF-8 bytes, `0x00` is one zero byte and the first
//! eight digest bytes are read big-endian. The encoding is unambiguous: device ids are
//! `[a-z0-9-]` (`otter_keys::request::check_device_id`) and a well-formed target name holds
//! no NUL either. This is DESIGN.md's
//! "bucket = hash(device id, target) mod 10000"; see [`rollout_bucket`]. A rollout of
//! `percent` covers the buckets `0 .. percent × 100`, so raising the percent of a signed
//! target only ever adds devices.
//!
//! # Rules
//!
//! A well-formed target is *eligible* for a device when all of these hold:
//!
//! 1. its `hardware` list contains the device's hardware model (exact, case-sensitive);
//! 2. its `channel` equals the device's channel;
//! 3. the device is in one of `rollout.groups`, or its bucket is below `percent × 100`;
//! 4. if `min_installed_version` is set, the component is installed at a version at least
//!    that (semver precedence); otherwise, or when the component is not installed, the target
//!    is not eligible and a [`NoteReason::BelowMinInstalled`] note is given;
//! 5. its version is strictly above the installed one (semver precedence, build metadata
//!    ignored), or it is below the installed one and `custom.rollback` is `true`. The same
//!    version is never chosen. A component that is not installed may get any version.
//!
//! Among eligible targets of one component, the highest version wins (ties in precedence
//! are broken by the full semver order, then the target name). A target name listed more
//! than once in the input is refused altogether ([`NoteReason::Duplicate`]). The output is
//! sorted: updates by component name, notes by target name; the input order does not
//! matter.

use otter_keys::release::{is_component_name, is_label};
use std::collections::{BTreeMap, BTreeSet};

use otter_keys::metadata::TargetFile;
use semver::Version;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Number of rollout buckets: a bucket is in `0..ROLLOUT_BUCKETS`.
pub const ROLLOUT_BUCKETS: u16 = 10_000;

/// The suffix of every bundle target name.
pub const TARGET_SUFFIX: &str = ".tar.zst";

/// What the device knows about itself from enrollment (and its signed device API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFacts {
    /// The id the server gave the device.
    pub device_id: String,
    /// The terminal's hardware model.
    pub hardware_model: String,
    /// The release channel the device follows.
    pub channel: String,
    /// The groups the device was enrolled into.
    pub groups: BTreeSet<String>,
}

/// Installed components: name to installed version.
pub type Installed = BTreeMap<String, Version>;

pub use otter_keys::release::Kind;

/// A rollout: the share of devices (in basis points) and the groups that get a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    /// `percent × 100`, in `0..=10000`: devices whose bucket is below it are in.
    pub basis_points: u16,
    /// Groups whose devices are in whatever their bucket.
    pub groups: BTreeSet<String>,
}

impl Rollout {
    /// Whether `device` is in this rollout of `target`.
    pub fn includes(&self, device: &DeviceFacts, target: &str) -> bool {
        self.groups.iter().any(|g| device.groups.contains(g))
            || rollout_bucket(&device.device_id, target) < self.basis_points
    }
}

/// A target's `custom` member, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetCustom {
    /// The component, from the target name `COMPONENT-VERSION.tar.zst`.
    pub component: String,
    /// Firmware, driver or patch.
    pub kind: Kind,
    /// The release's version.
    pub version: Version,
    /// Hardware models it runs on.
    pub hardware: BTreeSet<String>,
    /// The channel it was published to.
    pub channel: String,
    /// Who gets it.
    pub rollout: Rollout,
    /// Lowest installed version it may be applied over.
    pub min_installed_version: Option<Version>,
    /// Whether it is explicitly signed as a rollback target (may replace a higher version).
    pub rollback: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCustom {
    kind: String,
    version: String,
    hardware: Vec<String>,
    channel: String,
    rollout: RawRollout,
    #[serde(default)]
    min_installed_version: Option<String>,
    #[serde(default)]
    rollback: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollout {
    percent: serde_json::Number,
    groups: Vec<String>,
}

fn canonical_version(field: &str, s: &str) -> Result<Version, String> {
    let v =
        Version::parse(s).map_err(|e| format!("{field} {s:?} is not a semantic version: {e}"))?;
    if v.to_string() != s {
        return Err(format!("{field} {s:?} is not in canonical form ({v})"));
    }
    Ok(v)
}

/// `percent` (a JSON number in `0..=100`, at most two decimals) as basis points.
fn basis_points(n: &serde_json::Number) -> Result<u16, String> {
    if let Some(i) = n.as_u64() {
        return match u16::try_from(i) {
            Ok(p) if p <= 100 => Ok(p * 100),
            _ => Err(format!("rollout percent {n} is above 100")),
        };
    }
    if n.is_i64() {
        return Err(format!("rollout percent {n} is negative"));
    }
    let f = n
        .as_f64()
        .ok_or_else(|| format!("rollout percent {n} is not a number"))?;
    if !(0.0..=100.0).contains(&f) {
        return Err(format!("rollout percent {n} is outside 0..=100"));
    }
    let scaled = f * 100.0;
    let rounded = scaled.round();
    if (scaled - rounded).abs() > 1e-6 {
        return Err(format!("rollout percent {n} is finer than 0.01"));
    }
    // In 0.0..=10000.0 by the range check above, so the cast is exact.
    Ok(rounded as u16)
}

impl TargetCustom {
    /// Parses and checks the `custom` member of the target entry named `target`
    /// (see the module documentation for the rules). The error says why it is malformed.
    pub fn parse(target: &str, custom: Option<&Value>) -> Result<TargetCustom, String> {
        let custom = custom.ok_or_else(|| "the target has no custom member".to_string())?;
        let raw = RawCustom::deserialize(custom).map_err(|e| format!("custom: {e}"))?;
        let kind = Kind::from_name(&raw.kind).ok_or_else(|| {
            format!(
                "kind {:?} is none of firmware, driver, patch",
                shortened(&raw.kind)
            )
        })?;
        let version = canonical_version("version", &raw.version)?;
        let component = target
            .strip_suffix(TARGET_SUFFIX)
            .and_then(|s| s.strip_suffix(raw.version.as_str()))
            .and_then(|s| s.strip_suffix('-'))
            .filter(|c| is_component_name(c))
            .ok_or_else(|| {
                format!(
                    "target name {:?} is not COMPONENT-{}{TARGET_SUFFIX}",
                    shortened(target),
                    raw.version
                )
            })?
            .to_string();
        if raw.hardware.is_empty() || raw.hardware.len() > 256 {
            return Err("hardware must list 1 to 256 models".into());
        }
        let mut hardware = BTreeSet::new();
        for h in raw.hardware {
            if !is_label(&h) {
                return Err(format!(
                    "hardware model {:?} is not a safe name",
                    shortened(&h)
                ));
            }
            if !hardware.insert(h.clone()) {
                return Err(format!("hardware model {h:?} is listed twice"));
            }
        }
        if !is_label(&raw.channel) {
            return Err(format!(
                "channel {:?} is not a safe name",
                shortened(&raw.channel)
            ));
        }
        let bp = basis_points(&raw.rollout.percent)?;
        let mut groups = BTreeSet::new();
        for g in raw.rollout.groups {
            if g.is_empty() || g.len() > 256 || g.contains('\0') {
                return Err(format!(
                    "rollout group {:?} is not a group name",
                    shortened(&g)
                ));
            }
            if !groups.insert(g.clone()) {
                return Err(format!("rollout group {g:?} is listed twice"));
            }
        }
        let min_installed_version = raw
            .min_installed_version
            .as_deref()
            .map(|m| canonical_version("min_installed_version", m))
            .transpose()?;
        Ok(TargetCustom {
            component,
            kind,
            version,
            hardware,
            channel: raw.channel,
            rollout: Rollout {
                basis_points: bp,
                groups,
            },
            min_installed_version,
            rollback: raw.rollback == Some(true),
        })
    }
}

fn shortened(s: &str) -> String {
    s.chars().take(80).collect()
}

/// The device's rollout bucket for `target`, in `0..10000`:
/// `u64::from_be_bytes(SHA-256(device_id || 0x00 || target)[0..8]) mod 10000`.
pub fn rollout_bucket(device_id: &str, target: &str) -> u16 {
    let mut h = Sha256::new();
    h.update(device_id.as_bytes());
    h.update([0u8]);
    h.update(target.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let bucket = u64::from_be_bytes(first) % u64::from(ROLLOUT_BUCKETS);
    // Below 10000, so it fits.
    u16::try_from(bucket).unwrap_or(0)
}

/// One chosen update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The component it updates.
    pub component: String,
    /// The TUF target name to download.
    pub target: String,
    /// Its signed entry (length and hashes for the download).
    pub file: TargetFile,
    /// Its parsed `custom` member.
    pub custom: TargetCustom,
    /// The installed version it replaces, if any.
    pub from: Option<Version>,
    /// Whether it goes below the installed version (a signed rollback).
    pub downgrade: bool,
}

impl Update {
    /// The version it installs.
    pub fn version(&self) -> &Version {
        &self.custom.version
    }
}

/// Why a target was refused, when an operator should hear of it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum NoteReason {
    /// Its `custom` member is malformed (the reason).
    Malformed(String),
    /// The target name is listed more than once in the input.
    Duplicate,
    /// It requires an installed version this device does not have.
    BelowMinInstalled {
        /// The signed `min_installed_version`.
        required: Version,
        /// What is installed (`None`: the component is not installed).
        installed: Option<Version>,
    },
}

/// A target refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Note {
    /// The target name.
    pub target: String,
    /// Why.
    pub reason: NoteReason,
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reason {
            NoteReason::Malformed(why) => {
                write!(
                    f,
                    "target {:?} ignored: malformed custom: {why}",
                    self.target
                )
            }
            NoteReason::Duplicate => write!(
                f,
                "target {:?} ignored: it is listed more than once",
                self.target
            ),
            NoteReason::BelowMinInstalled {
                required,
                installed: Some(v),
            } => write!(
                f,
                "target {:?} not eligible: it needs at least {required} installed, {v} is",
                self.target
            ),
            NoteReason::BelowMinInstalled {
                required,
                installed: None,
            } => write!(
                f,
                "target {:?} not eligible: it needs at least {required} installed, none is",
                self.target
            ),
        }
    }
}

/// What [`choose_update`] decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// At most one update per component, sorted by component name.
    pub updates: Vec<Update>,
    /// Targets refused for a reason worth reporting, sorted.
    pub notes: Vec<Note>,
}

/// Whether a well-formed target is eligible for the device, before comparing with other
/// targets of its component. `Err` carries a note worth reporting.
fn eligible(
    target: &str,
    c: &TargetCustom,
    device: &DeviceFacts,
    installed: Option<&Version>,
) -> Result<bool, NoteReason> {
    if !c.hardware.contains(&device.hardware_model)
        || c.channel != device.channel
        || !c.rollout.includes(device, target)
    {
        return Ok(false);
    }
    if let Some(required) = &c.min_installed_version {
        let ok = installed.is_some_and(|v| v.cmp_precedence(required).is_ge());
        if !ok {
            return Err(NoteReason::BelowMinInstalled {
                required: required.clone(),
                installed: installed.cloned(),
            });
        }
    }
    Ok(match installed {
        None => true,
        Some(v) => match c.version.cmp_precedence(v) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Equal => false,
            std::cmp::Ordering::Less => c.rollback,
        },
    })
}

/// Chooses, per component, the update this device should install (see the module
/// documentation for the rules). Pure and deterministic; the order of `targets` does not
/// matter.
pub fn choose_update(
    targets: &[(String, TargetFile)],
    device: &DeviceFacts,
    installed: &Installed,
) -> Decision {
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for (name, _) in targets {
        *count.entry(name.as_str()).or_default() += 1;
    }
    let mut notes = BTreeSet::new();
    let mut best: BTreeMap<String, (String, &TargetFile, TargetCustom)> = BTreeMap::new();
    for (name, file) in targets {
        // Delta targets are never installed as such (crate::delta uses them).
        if otter_delta::is_delta_target_name(name) {
            continue;
        }
        if count.get(name.as_str()).copied().unwrap_or(0) > 1 {
            notes.insert(Note {
                target: name.clone(),
                reason: NoteReason::Duplicate,
            });
            continue;
        }
        let custom = match TargetCustom::parse(name, file.custom()) {
            Ok(c) => c,
            Err(why) => {
                notes.insert(Note {
                    target: name.clone(),
                    reason: NoteReason::Malformed(why),
                });
                continue;
            }
        };
        match eligible(name, &custom, device, installed.get(&custom.component)) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(reason) => {
                notes.insert(Note {
                    target: name.clone(),
                    reason,
                });
                continue;
            }
        }
        let better = match best.get(&custom.component) {
            None => true,
            Some((other_name, _, other)) => custom
                .version
                .cmp_precedence(&other.version)
                .then_with(|| custom.version.cmp(&other.version))
                .then_with(|| name.cmp(other_name))
                .is_gt(),
        };
        if better {
            best.insert(custom.component.clone(), (name.clone(), file, custom));
        }
    }
    let updates = best
        .into_iter()
        .map(|(component, (target, file, custom))| {
            let from = installed.get(&component).cloned();
            let downgrade = from
                .as_ref()
                .is_some_and(|v| custom.version.cmp_precedence(v).is_lt());
            Update {
                component,
                target,
                file: file.clone(),
                custom,
                from,
                downgrade,
            }
        })
        .collect();
    Decision {
        updates,
        notes: notes.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use serde_json::json;

    fn file(custom: Value) -> TargetFile {
        TargetFile {
            length: 10,
            hashes: BTreeMap::from([("sha256".to_string(), "ab".repeat(32))]),
            extra: BTreeMap::from([("custom".to_string(), custom)]),
        }
    }

    fn custom(version: &str) -> Value {
        json!({
            "kind": "driver", "version": version, "hardware": ["pos-a"], "channel": "stable",
            "rollout": {"percent": 100, "groups": []},
        })
    }

    fn target(name: &str, version: &str, c: Value) -> (String, TargetFile) {
        (format!("{name}-{version}.tar.zst"), file(c))
    }

    fn device() -> DeviceFacts {
        DeviceFacts {
            device_id: "dev-1".into(),
            hardware_model: "pos-a".into(),
            channel: "stable".into(),
            groups: BTreeSet::from(["pilot".to_string()]),
        }
    }

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn bucket_formula_is_the_documented_one() {
        let digest = Sha256::digest(b"dev-1\0card-reader-1.2.3.tar.zst");
        let first = u64::from_be_bytes(digest[..8].try_into().unwrap());
        assert_eq!(
            u64::from(rollout_bucket("dev-1", "card-reader-1.2.3.tar.zst")),
            first % 10_000
        );
        // The separator matters: ("ab", "c") and ("a", "bc") differ.
        assert_ne!(
            Sha256::digest(b"ab\0c").as_slice(),
            Sha256::digest(b"a\0bc").as_slice()
        );
    }

    #[test]
    fn the_servers_custom_parses() {
        let c = TargetCustom::parse(
            "card-reader-1.2.3.tar.zst",
            Some(&json!({
                "kind": "driver", "version": "1.2.3", "hardware": ["pos-a", "pos-b"],
                "channel": "stable", "rollout": {"percent": 100, "groups": []},
                "min_installed_version": "1.0.0",
            })),
        )
        .unwrap();
        assert_eq!(c.component, "card-reader");
        assert_eq!(c.kind, Kind::Driver);
        assert_eq!(c.rollout.basis_points, 10_000);
        assert_eq!(c.min_installed_version, Some(v("1.0.0")));
        assert!(!c.rollback);
    }

    #[test]
    fn percent_is_read_in_basis_points() {
        let bp = |p: Value| {
            let mut c = custom("1.0.0");
            c["rollout"]["percent"] = p;
            TargetCustom::parse("x-1.0.0.tar.zst", Some(&c)).map(|c| c.rollout.basis_points)
        };
        assert_eq!(bp(json!(0)), Ok(0));
        assert_eq!(bp(json!(25)), Ok(2500));
        assert_eq!(bp(json!(0.29)), Ok(29));
        assert_eq!(bp(json!(12.5)), Ok(1250));
        assert_eq!(bp(json!(100.0)), Ok(10_000));
        for bad in [
            json!(-1),
            json!(101),
            json!(100.01),
            json!(0.001),
            json!("5"),
        ] {
            assert!(bp(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn malformed_customs_are_refused() {
        let mut cases: Vec<(&str, Value)> = Vec::new();
        let with = |k: &str, val: Value| {
            let mut c = custom("1.0.0");
            c[k] = val;
            c
        };
        let without = |k: &str| {
            let mut c = custom("1.0.0");
            c.as_object_mut().unwrap().remove(k);
            c
        };
        cases.push(("x-1.0.0.tar.zst", with("kind", json!("kernel"))));
        cases.push(("x-1.0.0.tar.zst", with("kind", json!("Driver"))));
        cases.push(("x-1.0.0.tar.zst", with("hardware", json!([]))));
        cases.push(("x-1.0.0.tar.zst", with("hardware", json!("pos-a"))));
        cases.push((
            "x-1.0.0.tar.zst",
            with("hardware", json!(["pos-a", "pos-a"])),
        ));
        cases.push(("x-1.0.0.tar.zst", with("hardware", json!(["a/b"]))));
        cases.push(("x-1.0.0.tar.zst", with("channel", json!(""))));
        cases.push(("x-1.0.0.tar.zst", with("rollout", json!({"percent": 5}))));
        cases.push((
            "x-1.0.0.tar.zst",
            with("rollout", json!({"percent": 5, "groups": [], "extra": 1})),
        ));
        cases.push(("x-1.0.0.tar.zst", with("rollback", json!("true"))));
        cases.push((
            "x-1.0.0.tar.zst",
            with("min_installed_version", json!("1.0")),
        ));
        cases.push(("x-1.0.0.tar.zst", with("surprise", json!(1))));
        cases.push(("x-1.0.0.tar.zst", without("kind")));
        cases.push(("x-1.0.0.tar.zst", without("rollout")));
        cases.push(("x-01.0.0.tar.zst", with("version", json!("01.0.0"))));
        cases.push(("x-1.0.0.tar.zst", with("version", json!("1.0.1"))));
        cases.push(("X-1.0.0.tar.zst", custom("1.0.0")));
        cases.push(("x-1.0.0.tar.gz", custom("1.0.0")));
        cases.push(("1.0.0.tar.zst", custom("1.0.0")));
        cases.push(("x-1.0.0.tar.zst", json!(null)));
        for (name, c) in cases {
            assert!(TargetCustom::parse(name, Some(&c)).is_err(), "{name} {c}");
            let d = choose_update(&[(name.to_string(), file(c))], &device(), &Installed::new());
            assert!(d.updates.is_empty());
            assert!(matches!(d.notes[0].reason, NoteReason::Malformed(_)));
        }
        assert!(TargetCustom::parse("x-1.0.0.tar.zst", None).is_err());
    }

    #[test]
    fn hardware_channel_and_rollout_filter() {
        let mut other_hw = custom("2.0.0");
        other_hw["hardware"] = json!(["pos-b"]);
        let mut other_channel = custom("2.0.0");
        other_channel["channel"] = json!("beta");
        let mut nobody = custom("2.0.0");
        nobody["rollout"]["percent"] = json!(0);
        let mut our_group = custom("2.0.0");
        our_group["rollout"] = json!({"percent": 0, "groups": ["pilot"]});
        let installed = Installed::from([("x".to_string(), v("1.0.0"))]);
        for (c, chosen) in [
            (other_hw, false),
            (other_channel, false),
            (nobody, false),
            (our_group, true),
            (custom("2.0.0"), true),
        ] {
            let d = choose_update(&[target("x", "2.0.0", c.clone())], &device(), &installed);
            assert_eq!(d.updates.len(), usize::from(chosen), "{c}");
            assert!(d.notes.is_empty());
        }
    }

    #[test]
    fn min_installed_version_is_enforced_with_a_note() {
        let mut c = custom("3.0.0");
        c["min_installed_version"] = json!("2.0.0");
        let t = [target("x", "3.0.0", c)];
        let at = |s: &str| Installed::from([("x".to_string(), v(s))]);
        let d = choose_update(&t, &device(), &at("1.9.9"));
        assert!(d.updates.is_empty());
        assert_eq!(
            d.notes,
            vec![Note {
                target: "x-3.0.0.tar.zst".into(),
                reason: NoteReason::BelowMinInstalled {
                    required: v("2.0.0"),
                    installed: Some(v("1.9.9")),
                },
            }]
        );
        assert!(d.notes[0].to_string().contains("needs at least 2.0.0"));
        let d = choose_update(&t, &device(), &Installed::new());
        assert!(d.updates.is_empty());
        assert_eq!(d.notes.len(), 1);
        let d = choose_update(&t, &device(), &at("2.0.0"));
        assert_eq!(d.updates.len(), 1);
        assert!(d.notes.is_empty());
    }

    #[test]
    fn no_downgrade_or_reinstall_without_a_signed_rollback() {
        let installed = Installed::from([("x".to_string(), v("2.0.0"))]);
        let t = [
            target("x", "1.0.0", custom("1.0.0")),
            target("x", "2.0.0", custom("2.0.0")),
        ];
        assert_eq!(
            choose_update(&t, &device(), &installed),
            Decision::default()
        );
        let mut rb = custom("1.0.0");
        rb["rollback"] = json!(true);
        let mut rb_false = custom("1.5.0");
        rb_false["rollback"] = json!(false);
        let mut rb_same = custom("2.0.0");
        rb_same["rollback"] = json!(true);
        let t = [
            target("x", "1.0.0", rb),
            target("x", "1.5.0", rb_false),
            target("x", "2.0.0", rb_same),
        ];
        let d = choose_update(&t, &device(), &installed);
        assert_eq!(d.updates.len(), 1);
        let u = &d.updates[0];
        assert_eq!(u.target, "x-1.0.0.tar.zst");
        assert!(u.downgrade && u.custom.rollback);
        assert_eq!(u.from, Some(v("2.0.0")));
    }

    #[test]
    fn highest_eligible_wins_per_component_in_order() {
        let installed =
            Installed::from([("b".to_string(), v("1.0.0")), ("a".to_string(), v("1.0.0"))]);
        let mut not_ours = custom("9.0.0");
        not_ours["hardware"] = json!(["pos-z"]);
        let t = [
            target("b", "1.1.0", custom("1.1.0")),
            target("a", "1.2.0", custom("1.2.0")),
            target("b", "9.0.0", not_ours),
            target("b", "1.3.0-rc.1", custom("1.3.0-rc.1")),
            target("a", "1.10.0", custom("1.10.0")),
            target("c", "0.1.0", custom("0.1.0")),
        ];
        let d = choose_update(&t, &device(), &installed);
        let got: Vec<_> = d.updates.iter().map(|u| u.target.as_str()).collect();
        assert_eq!(
            got,
            [
                "a-1.10.0.tar.zst",
                "b-1.3.0-rc.1.tar.zst",
                "c-0.1.0.tar.zst"
            ]
        );
        assert_eq!(d.updates[2].from, None);
        let mut rev = t.to_vec();
        rev.reverse();
        assert_eq!(choose_update(&rev, &device(), &installed), d);
    }

    #[test]
    fn a_target_listed_twice_is_refused() {
        let t = [
            target("x", "2.0.0", custom("2.0.0")),
            target("x", "2.0.0", custom("2.0.0")),
        ];
        let d = choose_update(&t, &device(), &Installed::new());
        assert!(d.updates.is_empty());
        assert_eq!(d.notes.len(), 1);
        assert_eq!(d.notes[0].reason, NoteReason::Duplicate);
    }
}
