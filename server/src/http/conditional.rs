//! Parsing of the request headers that select what a file response holds: `Range` (one
//! byte range), `If-None-Match` and `If-Range`, after RFC 9110. Pure functions.

/// One requested byte range, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=FIRST-LAST` (inclusive).
    FromTo(u64, u64),
    /// `bytes=FIRST-`.
    From(u64),
    /// `bytes=-N`: the last N bytes.
    Last(u64),
}

/// What to send for a file of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// The whole file (200).
    Full,
    /// Bytes `start..end` (206), `end` exclusive.
    Part {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// Nothing the file holds (416).
    Unsatisfiable,
}

fn digits(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Longer than any u64: a position past every file, not an error.
    Some(s.parse().unwrap_or(u64::MAX))
}

/// Parses a `Range` header. `None` means "ignore it and send the whole file": another unit,
/// several ranges, or a malformed value (RFC 9110 section 14.2 allows ignoring these).
pub fn parse_range(value: &str) -> Option<ByteRange> {
    let value = value.trim();
    let (unit, spec) = value.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, true) => None,
        (true, false) => Some(ByteRange::Last(digits(last)?)),
        (false, true) => Some(ByteRange::From(digits(first)?)),
        (false, false) => {
            let (a, b) = (digits(first)?, digits(last)?);
            (a <= b).then_some(ByteRange::FromTo(a, b))
        }
    }
}

/// Decides what a range selects in a file of `size` bytes.
pub fn select(range: Option<ByteRange>, size: u64) -> Selection {
    match range {
        None => Selection::Full,
        Some(ByteRange::FromTo(a, _) | ByteRange::From(a)) if a >= size => Selection::Unsatisfiable,
        Some(ByteRange::FromTo(a, b)) => Selection::Part {
            start: a,
            end: b.saturating_add(1).min(size),
        },
        Some(ByteRange::From(a)) => Selection::Part {
            start: a,
            end: size,
        },
        Some(ByteRange::Last(0)) => Selection::Unsatisfiable,
        Some(ByteRange::Last(_)) if size == 0 => Selection::Unsatisfiable,
        Some(ByteRange::Last(n)) => Selection::Part {
            start: size.saturating_sub(n),
            end: size,
        },
    }
}

fn opaque(tag: &str) -> &str {
    tag.trim().strip_prefix("W/").unwrap_or(tag.trim())
}

/// Whether `If-None-Match` matches the file's entity tag (weak comparison, `*` matches any).
pub fn none_match_hits(value: &str, etag: &str) -> bool {
    let value = value.trim();
    value == "*" || value.split(',').any(|t| opaque(t) == etag)
}

/// Whether `If-Range` allows a partial response: only an entity tag equal to the file's
/// (strong comparison). A date, a weak tag or another tag means "send the whole file".
pub fn if_range_allows(value: &str, etag: &str) -> bool {
    value.trim() == etag
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_ranges_parse() {
        assert_eq!(parse_range("bytes=0-9"), Some(ByteRange::FromTo(0, 9)));
        assert_eq!(parse_range("bytes=5-"), Some(ByteRange::From(5)));
        assert_eq!(parse_range("bytes=-3"), Some(ByteRange::Last(3)));
        assert_eq!(
            parse_range(" Bytes = 1 - 2 "),
            Some(ByteRange::FromTo(1, 2))
        );
        assert_eq!(
            parse_range("bytes=1-99999999999999999999999"),
            Some(ByteRange::FromTo(1, u64::MAX))
        );
    }

    #[test]
    fn other_ranges_are_ignored() {
        for v in [
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=",
            "bytes=-",
            "bytes=5-2",
            "bytes=a-b",
            "bytes=-1-2",
            "bytes 0-1",
            "bytes=+1-2",
        ] {
            assert_eq!(parse_range(v), None, "{v}");
        }
    }

    #[test]
    fn selections_follow_rfc_9110() {
        let s = |r| select(parse_range(r), 10);
        assert_eq!(s("bytes=0-0"), Selection::Part { start: 0, end: 1 });
        assert_eq!(s("bytes=2-100"), Selection::Part { start: 2, end: 10 });
        assert_eq!(s("bytes=9-"), Selection::Part { start: 9, end: 10 });
        assert_eq!(s("bytes=-4"), Selection::Part { start: 6, end: 10 });
        assert_eq!(s("bytes=-40"), Selection::Part { start: 0, end: 10 });
        assert_eq!(s("bytes=10-"), Selection::Unsatisfiable);
        assert_eq!(s("bytes=10-20"), Selection::Unsatisfiable);
        assert_eq!(s("bytes=-0"), Selection::Unsatisfiable);
        assert_eq!(s("bytes=5-2"), Selection::Full);
        assert_eq!(
            select(Some(ByteRange::Last(1)), 0),
            Selection::Unsatisfiable
        );
    }

    #[test]
    fn entity_tags_compare_as_specified() {
        let e = "\"abc\"";
        assert!(none_match_hits("\"abc\"", e));
        assert!(none_match_hits("\"x\", W/\"abc\"", e));
        assert!(none_match_hits("*", e));
        assert!(!none_match_hits("\"abcd\"", e));
        assert!(if_range_allows("\"abc\"", e));
        assert!(!if_range_allows("W/\"abc\"", e));
        assert!(!if_range_allows("Tue, 01 Jan 2030 00:00:00 GMT", e));
    }
}
