//! Delegated targets roles: who may sign for which target paths.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::roles::{Extra, TOP_LEVEL_ROLES};
use super::MetadataError;
use crate::crypto::{KeyId, PublicKey};

/// The `delegations` member of targets metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegations {
    /// Keys of the delegated roles.
    pub keys: BTreeMap<KeyId, PublicKey>,
    /// Delegated roles in priority order. (TAP 15 `succinct_roles`, if present, is kept in
    /// `extra` but not followed.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<DelegatedRole>>,
    /// Members this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Delegations {
    /// The delegated roles, in priority order.
    pub fn roles(&self) -> &[DelegatedRole] {
        self.roles.as_deref().unwrap_or(&[])
    }

    pub(crate) fn validate(&self) -> Result<(), MetadataError> {
        let mut names = std::collections::BTreeSet::new();
        for r in self.roles() {
            if TOP_LEVEL_ROLES.contains(&r.name.as_str()) {
                return Err(MetadataError::Invalid(format!(
                    "delegated role may not be named {:?}",
                    r.name
                )));
            }
            if !names.insert(r.name.as_str()) {
                return Err(MetadataError::Invalid(format!(
                    "delegated role {:?} is listed twice",
                    r.name
                )));
            }
            r.validate()?;
        }
        Ok(())
    }
}

/// One delegated role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegatedRole {
    /// The role's name (its metadata is `NAME.json`).
    pub name: String,
    /// The keys that may sign for it.
    pub keyids: Vec<KeyId>,
    /// How many of them must.
    pub threshold: u32,
    /// Whether the search stops here for paths this role matches.
    #[serde(default)]
    pub terminating: bool,
    /// Shell-style patterns of target paths this role is trusted for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// Hex prefixes of SHA-256(target path) this role is trusted for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hash_prefixes: Option<Vec<String>>,
    /// Members this version does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl DelegatedRole {
    fn validate(&self) -> Result<(), MetadataError> {
        if self.paths.is_some() && self.path_hash_prefixes.is_some() {
            return Err(MetadataError::Invalid(format!(
                "delegated role {:?} sets both paths and path_hash_prefixes",
                self.name
            )));
        }
        super::roles::RoleKeys {
            keyids: self.keyids.clone(),
            threshold: self.threshold,
            extra: Extra::new(),
        }
        .validate(&self.name)
    }

    /// Whether this role is trusted for `target_path`.
    pub fn is_delegated_path(&self, target_path: &str) -> bool {
        if let Some(patterns) = &self.paths {
            return patterns.iter().any(|p| path_matches(p, target_path));
        }
        if let Some(prefixes) = &self.path_hash_prefixes {
            let digest = hex::encode(Sha256::digest(target_path.as_bytes()));
            return prefixes.iter().any(|p| digest.starts_with(p.as_str()));
        }
        false
    }
}

/// Matches a target path against a delegation pattern: both are split on `/` and must have
/// as many parts; each part is matched with `*` (any run, not crossing `/`), `?` (one
/// character) and `[...]` classes, as the specification and python-tuf do.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    let pat: Vec<&str> = pattern.split('/').collect();
    let parts: Vec<&str> = path.split('/').collect();
    pat.len() == parts.len() && pat.iter().zip(&parts).all(|(p, s)| glob(p, s))
}

fn glob(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = s.chars().collect();
    // Iterative matcher with one backtrack point for the last `*`.
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, si));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = class(&p, pi, s[si]) {
                        if matched {
                            pi = next;
                            si += 1;
                            continue;
                        }
                    } else if s[si] == '[' {
                        pi += 1;
                        si += 1;
                        continue;
                    }
                }
                c if c == s[si] => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, ss)) => {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Matches `c` against the class starting at `p[start] == '['`. Returns whether it matched
/// and the index after the class, or `None` when the class is not closed (then `[` is literal).
fn class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('!'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            if p[i] <= c && c <= p[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_follow_the_specification() {
        assert!(path_matches("targets/*.tgz", "targets/foo.tgz"));
        assert!(!path_matches("targets/*.tgz", "targets/foo/bar.tgz"));
        assert!(!path_matches("*", "a/b"));
        assert!(path_matches("*/*", "a/b"));
        assert!(path_matches("file?.txt", "file1.txt"));
        assert!(!path_matches("file?.txt", "file10.txt"));
        assert!(path_matches("v[0-9].bin", "v7.bin"));
        assert!(!path_matches("v[!0-9].bin", "v7.bin"));
        assert!(path_matches("*", ""));
        assert!(path_matches("a*b*c", "aXXbYYc"));
        assert!(!path_matches("a*b*c", "aXXbYY"));
        assert!(path_matches("[abc", "[abc"));
    }

    #[test]
    fn hash_prefixes_use_sha256_of_the_path() {
        let digest = hex::encode(Sha256::digest(b"firmware.bin"));
        let role = DelegatedRole {
            name: "bins".into(),
            keyids: vec![],
            threshold: 1,
            terminating: false,
            paths: None,
            path_hash_prefixes: Some(vec![digest[..2].to_string()]),
            extra: Extra::new(),
        };
        assert!(role.is_delegated_path("firmware.bin"));
    }
}
