//! Console sessions: an in-memory, bounded map from the SHA-256 of a random session id to the
//! signed-in token's id and role, a per-session CSRF token, and idle and absolute expiry.
//! Sessions do not survive a restart (people sign in again); the session id lives only in
//! an HttpOnly cookie and the API token only in the sign-in form's body.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::tokens::{random_bytes, RandomError, TokenRole};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "otter_session";
/// The sign-in form's double-submit cookie's name.
pub const LOGIN_COOKIE: &str = "otter_login";

/// 32 random bytes from the operating system, as 64 hex digits.
pub fn random_hex() -> Result<Zeroizing<String>, RandomError> {
    let mut raw = Zeroizing::new([0u8; 32]);
    random_bytes(&mut raw[..])?;
    Ok(Zeroizing::new(hex::encode(&raw[..])))
}

/// Constant-time comparison of a presented secret with the expected one.
pub fn secrets_match(presented: &str, expected: &str) -> bool {
    presented.len() == expected.len() && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

fn key_of(session_id: &str) -> [u8; 32] {
    Sha256::digest(session_id.as_bytes()).into()
}

/// What a session knows about who signed in.
#[derive(Clone)]
pub struct Session {
    /// The API token's id.
    pub token_id: i64,
    /// Its role at sign-in (checked again against the database on every request).
    pub role: TokenRole,
    /// Its label.
    pub label: String,
    /// The CSRF token every form of this session carries.
    pub csrf: Zeroizing<String>,
    created: Instant,
    last_used: Instant,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("token_id", &self.token_id)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Expiry and size limits of the store.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A session unused this long ends.
    pub idle: Duration,
    /// A session this old ends, used or not.
    pub absolute: Duration,
    /// Most sessions kept; the least recently used one is dropped to make room.
    pub max_sessions: usize,
}

/// The session store.
pub struct SessionStore {
    limits: Limits,
    sessions: Mutex<HashMap<[u8; 32], Session>>,
}

impl SessionStore {
    /// An empty store.
    pub fn new(limits: Limits) -> SessionStore {
        SessionStore {
            limits,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        // A panic while holding the lock cannot leave a session half-written: recover.
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn alive(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.last_used) < self.limits.idle
            && now.duration_since(s.created) < self.limits.absolute
    }

    /// Starts a session for a verified token; returns the new session id (for the cookie
    /// only) and the session.
    pub fn create(
        &self,
        token_id: i64,
        role: TokenRole,
        label: &str,
    ) -> Result<(Zeroizing<String>, Session), RandomError> {
        self.create_at(token_id, role, label, Instant::now())
    }

    fn create_at(
        &self,
        token_id: i64,
        role: TokenRole,
        label: &str,
        now: Instant,
    ) -> Result<(Zeroizing<String>, Session), RandomError> {
        let id = random_hex()?;
        let session = Session {
            token_id,
            role,
            label: label.to_owned(),
            csrf: random_hex()?,
            created: now,
            last_used: now,
        };
        let mut map = self.map();
        if map.len() >= self.limits.max_sessions {
            map.retain(|_, s| self.alive(s, now));
        }
        while map.len() >= self.limits.max_sessions.max(1) {
            let oldest = map.iter().min_by_key(|(_, s)| s.last_used).map(|(k, _)| *k);
            match oldest {
                Some(k) => {
                    map.remove(&k);
                }
                None => break,
            }
        }
        map.insert(key_of(&id), session.clone());
        Ok((id, session))
    }

    /// The live session with this id, its idle clock restarted; `None` (and the session
    /// dropped) when unknown or expired.
    pub fn touch(&self, session_id: &str) -> Option<Session> {
        self.touch_at(session_id, Instant::now())
    }

    fn touch_at(&self, session_id: &str, now: Instant) -> Option<Session> {
        let key = key_of(session_id);
        let mut map = self.map();
        let alive = map.get(&key).map(|s| self.alive(s, now))?;
        if !alive {
            map.remove(&key);
            return None;
        }
        let s = map.get_mut(&key)?;
        s.last_used = now;
        Some(s.clone())
    }

    /// Ends a session; true when it existed.
    pub fn remove(&self, session_id: &str) -> bool {
        self.map().remove(&key_of(session_id)).is_some()
    }

    /// Ends every session of a token (revoked or changed).
    pub fn remove_token(&self, token_id: i64) {
        self.map().retain(|_, s| s.token_id != token_id);
    }

    /// Sessions held, expired ones included until they are next looked at.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// True when no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The value of cookie `name` in a `Cookie` request header, if present.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k.trim() == name).then(|| v.trim())
    })
}

/// A `Set-Cookie` value for the console: HttpOnly, SameSite=Strict, Path=/console, Secure
/// when asked; `max_age` in seconds (0 deletes it; `None` makes a browser-session cookie).
pub fn set_cookie(name: &str, value: &str, secure: bool, max_age: Option<u64>) -> String {
    let mut c = format!("{name}={value}; Path=/console; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    if secure {
        c.push_str("; Secure");
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max: usize) -> SessionStore {
        SessionStore::new(Limits {
            idle: Duration::from_secs(30),
            absolute: Duration::from_secs(100),
            max_sessions: max,
        })
    }

    #[test]
    fn sessions_expire_when_idle_and_at_their_absolute_limit() {
        let s = store(10);
        let t0 = Instant::now();
        let (id, sess) = s.create_at(1, TokenRole::Auditor, "a", t0).unwrap();
        assert_eq!(id.len(), 64);
        assert_ne!(&*id, &*sess.csrf);
        // Used every 20 s: alive until the absolute limit.
        for k in 1..5 {
            let got = s.touch_at(&id, t0 + Duration::from_secs(20 * k)).unwrap();
            assert_eq!(got.token_id, 1);
        }
        assert!(s.touch_at(&id, t0 + Duration::from_secs(100)).is_none());
        assert!(s.is_empty(), "an expired session is dropped");

        let (id, _) = s.create_at(2, TokenRole::Admin, "b", t0).unwrap();
        assert!(s.touch_at(&id, t0 + Duration::from_secs(29)).is_some());
        assert!(s.touch_at(&id, t0 + Duration::from_secs(60)).is_none());
        assert!(s.touch_at("unknown", t0).is_none());
    }

    #[test]
    fn the_store_is_bounded_and_drops_the_least_recently_used() {
        let s = store(3);
        let t0 = Instant::now();
        let ids: Vec<_> = (0..3)
            .map(|i| {
                s.create_at(
                    i,
                    TokenRole::Operator,
                    "x",
                    t0 + Duration::from_secs(i as u64),
                )
                .unwrap()
                .0
            })
            .collect();
        // Session 0 is used again, so session 1 is the least recently used.
        s.touch_at(&ids[0], t0 + Duration::from_secs(5)).unwrap();
        let (new, _) = s
            .create_at(9, TokenRole::Operator, "y", t0 + Duration::from_secs(6))
            .unwrap();
        assert_eq!(s.len(), 3);
        let at = t0 + Duration::from_secs(7);
        assert!(s.touch_at(&ids[1], at).is_none());
        for id in [&ids[0], &ids[2], &new] {
            assert!(s.touch_at(id, at).is_some());
        }
        s.remove_token(9);
        assert!(s.touch_at(&new, at).is_none());
        assert!(s.remove(&ids[0]));
        assert!(!s.remove(&ids[0]));
    }

    #[test]
    fn cookies_are_parsed_and_built() {
        let h = "a=1; otter_session=abc ; otter_login=def";
        assert_eq!(cookie_value(h, "otter_session"), Some("abc"));
        assert_eq!(cookie_value(h, "otter_login"), Some("def"));
        assert_eq!(cookie_value(h, "otter"), None);
        let c = set_cookie(SESSION_COOKIE, "v", true, None);
        assert_eq!(
            c,
            "otter_session=v; Path=/console; HttpOnly; SameSite=Strict; Secure"
        );
        assert!(set_cookie(LOGIN_COOKIE, "", false, Some(0)).contains("Max-Age=0"));
        assert!(secrets_match("abc", "abc"));
        assert!(!secrets_match("abd", "abc"));
        assert!(!secrets_match("ab", "abc"));
    }
}
