//! The UTC timestamps of TUF metadata (`expires`): `YYYY-MM-DDTHH:MM:SSZ`, strictly.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time, whole seconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UtcTime(i64);

/// A time string that is not `YYYY-MM-DDTHH:MM:SSZ`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("time {0:?} is not of the form YYYY-MM-DDTHH:MM:SSZ (UTC)")]
pub struct TimeError(String);

impl UtcTime {
    /// From seconds since the Unix epoch.
    pub fn from_unix(secs: i64) -> Self {
        UtcTime(secs)
    }
    /// Seconds since the Unix epoch.
    pub fn unix(self) -> i64 {
        self.0
    }
    /// The current time from the system clock.
    pub fn now() -> Self {
        let secs = match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        };
        UtcTime(secs)
    }
    /// This time plus a number of seconds (saturating).
    pub fn plus_secs(self, secs: i64) -> Self {
        UtcTime(self.0.saturating_add(secs))
    }
    /// This time plus whole days (saturating).
    pub fn plus_days(self, days: i64) -> Self {
        self.plus_secs(days.saturating_mul(86_400))
    }
}

// Days from 1970-01-01 to the civil date y-m-d (proleptic Gregorian), after H. Hinnant's
// published algorithm.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

impl FromStr for UtcTime {
    type Err = TimeError;
    fn from_str(s: &str) -> Result<Self, TimeError> {
        let err = || TimeError(s.chars().take(64).collect());
        let b = s.as_bytes();
        if b.len() != 20
            || b[4] != b'-'
            || b[7] != b'-'
            || b[10] != b'T'
            || b[13] != b':'
            || b[16] != b':'
            || b[19] != b'Z'
        {
            return Err(err());
        }
        let num = |r: std::ops::Range<usize>| -> Result<u32, TimeError> {
            let part = &b[r];
            if !part.iter().all(u8::is_ascii_digit) {
                return Err(err());
            }
            part.iter()
                .try_fold(0u32, |acc, c| Some(acc * 10 + u32::from(c - b'0')))
                .ok_or_else(err)
        };
        let (y, mo, d) = (i64::from(num(0..4)?), num(5..7)?, num(8..10)?);
        let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
        let month_days = [
            31,
            if is_leap(y) { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        if !(1..=12).contains(&mo)
            || d == 0
            || d > month_days[(mo - 1) as usize]
            || h > 23
            || mi > 59
            || se > 59
        {
            return Err(err());
        }
        let days = days_from_civil(y, mo, d);
        Ok(UtcTime(
            days * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(se),
        ))
    }
}

impl fmt::Display for UtcTime {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let days = self.0.div_euclid(86_400);
        let rem = self.0.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            (rem % 3600) / 60,
            rem % 60
        )
    }
}

/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the range the written form can hold.
const MIN_WRITABLE: i64 = -62_167_219_200;
const MAX_WRITABLE: i64 = 253_402_300_799;

impl Serialize for UtcTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !(MIN_WRITABLE..=MAX_WRITABLE).contains(&self.0) {
            return Err(serde::ser::Error::custom(
                "time outside the years 0000-9999 cannot be written",
            ));
        }
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UtcTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let t: UtcTime = "1970-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(t.unix(), 0);
        let t: UtcTime = "2030-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(t.unix(), 1_893_456_000);
        let t: UtcTime = "2024-02-29T23:59:59Z".parse().unwrap();
        assert_eq!(t.to_string(), "2024-02-29T23:59:59Z");
    }

    #[test]
    fn refuses_other_forms() {
        for bad in [
            "2030-01-01T00:00:00",
            "2030-01-01T00:00:00.5Z",
            "2030-01-01 00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2030-13-01T00:00:00Z",
            "2030-01-01T24:00:00Z",
            "+030-01-01T00:00:00Z",
        ] {
            assert!(bad.parse::<UtcTime>().is_err(), "{bad}");
        }
    }

    #[test]
    fn round_trips_over_a_wide_range() {
        let mut s = -86_400 * 365 * 50;
        while s < 86_400 * 365 * 400 {
            let t = UtcTime::from_unix(s);
            assert_eq!(t.to_string().parse::<UtcTime>().unwrap(), t);
            s += 86_400 * 37 + 3_661;
        }
    }
}
