//! Canonical JSON (OLPC, as securesystemslib writes it) for everything that is signed, and strict parsing of untrusted JSON.
//!
//! Signatures in TUF cover the canonical form of the `signed` object, never the bytes as
//! received. Untrusted input is parsed strictly: a size cap is checked before parsing, and
//! objects with duplicate member names are refused, because two parsers that pick different
//! duplicates could be shown different contents under one signature.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Serialize;
use serde_json::{Map, Value};

/// Largest metadata document accepted when the caller names no cap (spec: clients must cap).
pub const DEFAULT_MAX_METADATA_BYTES: usize = 16 * 1024 * 1024;

/// Deepest nesting of arrays and objects accepted in untrusted JSON.
pub const MAX_DEPTH: usize = 64;

/// What went wrong turning JSON into canonical bytes or parsing untrusted JSON.
#[derive(Debug, thiserror::Error)]
pub enum CanonicalError {
    /// The input is larger than the cap the caller allowed.
    #[error("input is {len} bytes, more than the {max} bytes allowed")]
    TooLarge {
        /// Size of the input.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The input is not valid JSON, or has duplicate members, or nests too deep.
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// The value cannot be put in canonical form (e.g. it holds a floating-point number).
    #[error("value has no canonical JSON form: {0}")]
    NotCanonicalizable(String),
}

/// Serialises `value` as canonical JSON exactly as the TUF reference implementation does
/// (securesystemslib `encode_canonical`): members sorted by their raw names (code point
/// order), no insignificant whitespace, integers only, strings written as their raw UTF-8
/// bytes with only `"` and `\\` escaped, and never Unicode-normalised.
pub fn to_canonical_bytes<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CanonicalError> {
    let value = serde_json::to_value(value)
        .map_err(|e| CanonicalError::NotCanonicalizable(e.to_string()))?;
    let mut out = Vec::new();
    write_canonical(&value, &mut out)?;
    Ok(out)
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) if n.is_i64() || n.is_u64() => {
            out.extend_from_slice(n.to_string().as_bytes())
        }
        Value::Number(n) => {
            return Err(CanonicalError::NotCanonicalizable(format!(
                "floating-point number {n}"
            )))
        }
        Value::String(s) => write_canonical_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(members) => {
            // Sorted by the raw member name: UTF-8 byte order is code point order, which is
            // how Python sorts str. Not by the quoted, escaped form.
            let mut members: Vec<(&String, &Value)> = members.iter().collect();
            members.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (name, member)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical_string(name, out);
                out.push(b':');
                write_canonical(member, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_canonical_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for b in s.bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// Parses untrusted JSON bytes into a value: at most `max_len` bytes, no duplicate object
/// members, no nesting deeper than [`MAX_DEPTH`].
pub fn parse_strict(bytes: &[u8], max_len: usize) -> Result<Value, CanonicalError> {
    if bytes.len() > max_len {
        return Err(CanonicalError::TooLarge {
            len: bytes.len(),
            max: max_len,
        });
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = de
        .deserialize_any(StrictVisitor { depth: 0 })
        .map_err(|e| CanonicalError::Malformed(e.to_string()))?;
    de.end()
        .map_err(|e| CanonicalError::Malformed(e.to_string()))?;
    Ok(value)
}

/// Builds a `serde_json::Value` while refusing duplicate keys and excessive depth.
struct StrictVisitor {
    depth: usize,
}

impl StrictVisitor {
    fn nested<E: de::Error>(&self) -> Result<StrictSeed, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        Ok(StrictSeed {
            depth: self.depth + 1,
        })
    }
}

struct StrictSeed {
    depth: usize,
}

impl<'de> de::DeserializeSeed<'de> for StrictSeed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor { depth: self.depth })
    }
}

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        // Kept so that unsigned parts of a document may hold floats; canonicalising a
        // signed part that holds one fails.
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number is not finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self.nested()?)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate member {key:?}")));
            }
            let v = map.next_value_seed(self.nested()?)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_sorts_keys_and_drops_whitespace() {
        let v = parse_strict(br#"{ "b": 1, "a": [true, null, "x\"y"] }"#, 1024).unwrap();
        let c = to_canonical_bytes(&v).unwrap();
        assert_eq!(c, br#"{"a":[true,null,"x\"y"],"b":1}"#);
    }

    #[test]
    fn duplicate_members_are_refused() {
        let err = parse_strict(br#"{"a":1,"a":2}"#, 1024).unwrap_err();
        assert!(err.to_string().contains("duplicate member"), "{err}");
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let err = parse_strict(b"{}   ", 4).unwrap_err();
        assert!(matches!(err, CanonicalError::TooLarge { len: 5, max: 4 }));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = "[".repeat(MAX_DEPTH + 2) + &"]".repeat(MAX_DEPTH + 2);
        assert!(parse_strict(deep.as_bytes(), 1 << 20).is_err());
    }

    #[test]
    fn floats_have_no_canonical_form() {
        let v = parse_strict(br#"{"a":1.5}"#, 1024).unwrap();
        assert!(matches!(
            to_canonical_bytes(&v),
            Err(CanonicalError::NotCanonicalizable(_))
        ));
    }

    #[test]
    fn strings_are_raw_and_members_sort_by_raw_name() {
        // As securesystemslib: no Unicode normalisation, only `"` and `\` escaped, members
        // in code point order of their names (not of their escaped form).
        let v = serde_json::json!({"readme": 1, "readme v2": 2, "readme!": 3, "Mu\u{308}ller": "a\"b\\c\n"});
        let c = to_canonical_bytes(&v).unwrap();
        assert_eq!(
            c,
            "{\"Mu\u{308}ller\":\"a\\\"b\\\\c\n\",\"readme\":1,\"readme v2\":2,\"readme!\":3}"
                .as_bytes()
        );
    }

    #[test]
    fn trailing_garbage_is_refused() {
        assert!(parse_strict(br#"{"a":1} x"#, 1024).is_err());
    }
}
