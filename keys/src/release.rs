//! The names in a release's signed `custom` fields, shared by the server that writes them
//! and the agent that reads them, so both apply exactly the same rules.

use serde::{Deserialize, Serialize};

/// What a bundle updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The terminal's firmware.
    Firmware,
    /// A device driver (e.g. a card reader's).
    Driver,
    /// An application patch.
    Patch,
}

impl Kind {
    /// The name stored and signed: `firmware`, `driver` or `patch`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Firmware => "firmware",
            Kind::Driver => "driver",
            Kind::Patch => "patch",
        }
    }

    /// The kind a signed name stands for; `None` for any other name.
    pub fn from_name(s: &str) -> Option<Kind> {
        match s {
            "firmware" => Some(Kind::Firmware),
            "driver" => Some(Kind::Driver),
            "patch" => Some(Kind::Patch),
            _ => None,
        }
    }
}

/// Whether `s` is a component name: `[a-z0-9][a-z0-9._-]*`, at most 64 bytes.
pub fn is_component_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

/// Whether `s` is a hardware model or channel name: `[A-Za-z0-9][A-Za-z0-9._-]*`, at most
/// 64 bytes.
pub fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for k in [Kind::Firmware, Kind::Driver, Kind::Patch] {
            assert_eq!(Kind::from_name(k.as_str()), Some(k));
        }
        assert_eq!(Kind::from_name("Firmware"), None);
        assert!(is_component_name("card-reader.v2_x"));
        assert!(!is_component_name("Card"));
        assert!(!is_component_name("-x"));
        assert!(!is_component_name(&"a".repeat(65)));
        assert!(is_label("POS-A1.x_y"));
        assert!(!is_label(".x"));
        assert!(!is_label("a/b"));
        assert!(!is_label(""));
    }
}
