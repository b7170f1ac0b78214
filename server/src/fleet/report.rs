//! The report a device sends with `POST /api/v1/device/report`: installed versions, the last
//! update's outcome, health and security events. Typed, closed to unknown fields, and
//! bounded, so a device cannot store arbitrary data on the server.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most installed components in one report.
pub const MAX_INSTALLED: usize = 256;
/// Most security events in one report.
pub const MAX_EVENTS: usize = 64;
/// Longest free-text field.
pub const MAX_TEXT: usize = 1024;
/// Longest component name, version, target or event kind.
pub const MAX_SHORT: usize = 128;

/// A device's report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceReport {
    /// Installed components: name to version.
    #[serde(default)]
    pub installed: BTreeMap<String, String>,
    /// The outcome of the last update attempt, if any.
    #[serde(default)]
    pub last_update: Option<UpdateOutcome>,
    /// How the terminal's business functions are.
    #[serde(default)]
    pub health: Health,
    /// Security events since the last report (signature failures, rollback attempts, ...).
    #[serde(default)]
    pub security_events: Vec<SecurityEvent>,
    /// The agent's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
}

/// The outcome of one update attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateOutcome {
    /// The target (release) tried.
    pub target: String,
    /// How it ended.
    pub result: UpdateResult,
    /// Details for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When it ended, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<i64>,
}

/// How an update attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateResult {
    /// Applied and healthy.
    Success,
    /// Failed before switching.
    Failed,
    /// Switched, failed the health check, rolled back.
    RolledBack,
}

/// The terminal's health.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Not known (no health check has run).
    #[default]
    Unknown,
    /// Working.
    Ok,
    /// Working with problems.
    Degraded,
    /// Not working.
    Failing,
}

/// One security event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityEvent {
    /// What happened, e.g. `signature_failure`, `rollback_attack`, `expired_metadata`.
    pub kind: String,
    /// Details for people.
    #[serde(default)]
    pub detail: String,
    /// When, Unix seconds.
    pub at: i64,
}

fn check(what: &str, value: &str, max: usize) -> Result<(), String> {
    if value.chars().count() > max {
        return Err(format!("{what} is longer than {max} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{what} holds control characters"));
    }
    Ok(())
}

impl DeviceReport {
    /// Checks the limits: counts, lengths, no control characters.
    pub fn validate(&self) -> Result<(), String> {
        if self.installed.len() > MAX_INSTALLED {
            return Err(format!("more than {MAX_INSTALLED} installed components"));
        }
        for (name, version) in &self.installed {
            if name.is_empty() {
                return Err("an installed component has an empty name".into());
            }
            check("an installed component's name", name, MAX_SHORT)?;
            check("an installed component's version", version, MAX_SHORT)?;
        }
        if let Some(u) = &self.last_update {
            check("last_update.target", &u.target, MAX_SHORT)?;
            if let Some(m) = &u.message {
                check("last_update.message", m, MAX_TEXT)?;
            }
        }
        if self.security_events.len() > MAX_EVENTS {
            return Err(format!("more than {MAX_EVENTS} security events"));
        }
        for e in &self.security_events {
            check("a security event's kind", &e.kind, MAX_SHORT)?;
            check("a security event's detail", &e.detail, MAX_TEXT)?;
        }
        if let Some(v) = &self.agent_version {
            check("agent_version", v, MAX_SHORT)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_report_is_valid_and_unknown_fields_are_refused() {
        let r: DeviceReport = serde_json::from_str("{}").unwrap();
        assert_eq!(r.health, Health::Unknown);
        r.validate().unwrap();
        assert!(serde_json::from_str::<DeviceReport>(r#"{"extra":1}"#).is_err());
        let r: DeviceReport = serde_json::from_str(
            r#"{"installed":{"pos-firmware":"1.2.3"},"health":"ok",
                "last_update":{"target":"pos-firmware-1.2.3","result":"rolled_back"},
                "security_events":[{"kind":"signature_failure","detail":"timestamp","at":5}]}"#,
        )
        .unwrap();
        r.validate().unwrap();
    }

    #[test]
    fn limits_are_enforced() {
        let mut r = DeviceReport::default();
        r.installed.insert("x".into(), "v\n".into());
        assert!(r.validate().is_err());
        let mut r = DeviceReport::default();
        for i in 0..=MAX_INSTALLED {
            r.installed.insert(format!("c{i}"), "1".into());
        }
        assert!(r.validate().is_err());
        let r = DeviceReport {
            agent_version: Some("v".repeat(MAX_SHORT + 1)),
            ..DeviceReport::default()
        };
        assert!(r.validate().is_err());
    }
}
