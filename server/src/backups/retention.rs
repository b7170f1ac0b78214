//! Which backups retention keeps: the `[backups.retention]` policy (keep last N, daily,
//! weekly, monthly; per device group overrides) and the pure function [`select`] that
//! applies it to one device's chain. No I/O: [`super::gc`] reads the catalog, calls
//! [`select`] and acts on the answer.
//!
//! The rule, like restic's `forget --keep-*`: backups are taken newest first (by sequence,
//! which never runs backwards in time on a chain). `keep_last = N` keeps the N newest.
//! `keep_daily = N` walks them newest first and keeps a backup whenever its UTC day differs
//! from the day of the backup before it, until N days have been kept: the newest backup of
//! each of the last N days *that have a backup*. `keep_weekly` does the same with ISO weeks
//! (Monday to Sunday, UTC), `keep_monthly` with calendar months. A backup is kept when any
//! rule keeps it. The newest backup (the chain's head, which the next backup links to) is
//! always kept. A policy whose four numbers are all 0 keeps everything: that is the
//! default, so nothing is pruned until retention is configured.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Seconds in a day.
const DAY: i64 = 86_400;

/// How many backups of one device to keep. 0 turns a rule off; all four 0 keeps everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionPolicy {
    /// Keep the N newest backups.
    pub keep_last: u32,
    /// Keep the newest backup of each of the last N days that have one (UTC).
    pub keep_daily: u32,
    /// Keep the newest backup of each of the last N ISO weeks that have one (UTC).
    pub keep_weekly: u32,
    /// Keep the newest backup of each of the last N calendar months that have one (UTC).
    pub keep_monthly: u32,
}

impl RetentionPolicy {
    /// Whether no rule is set: every backup is kept.
    pub fn keeps_everything(&self) -> bool {
        self.keep_last == 0
            && self.keep_daily == 0
            && self.keep_weekly == 0
            && self.keep_monthly == 0
    }
}

/// A group's `[backups.retention.groups.NAME]` section: each value given replaces the
/// default's, the others are the default's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyOverride {
    /// Replaces `keep_last`.
    pub keep_last: Option<u32>,
    /// Replaces `keep_daily`.
    pub keep_daily: Option<u32>,
    /// Replaces `keep_weekly`.
    pub keep_weekly: Option<u32>,
    /// Replaces `keep_monthly`.
    pub keep_monthly: Option<u32>,
}

/// `[backups.retention]`: the default policy and per device group overrides.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Default `keep_last`.
    pub keep_last: u32,
    /// Default `keep_daily`.
    pub keep_daily: u32,
    /// Default `keep_weekly`.
    pub keep_weekly: u32,
    /// Default `keep_monthly`.
    pub keep_monthly: u32,
    /// Overrides by device group (the group given at enrollment).
    pub groups: BTreeMap<String, PolicyOverride>,
}

impl RetentionConfig {
    /// The default policy, for devices without a group or whose group has no section.
    pub fn default_policy(&self) -> RetentionPolicy {
        RetentionPolicy {
            keep_last: self.keep_last,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
        }
    }

    /// The policy of a device in `group`.
    pub fn policy_for(&self, group: Option<&str>) -> RetentionPolicy {
        let d = self.default_policy();
        let Some(o) = group.and_then(|g| self.groups.get(g)) else {
            return d;
        };
        RetentionPolicy {
            keep_last: o.keep_last.unwrap_or(d.keep_last),
            keep_daily: o.keep_daily.unwrap_or(d.keep_daily),
            keep_weekly: o.keep_weekly.unwrap_or(d.keep_weekly),
            keep_monthly: o.keep_monthly.unwrap_or(d.keep_monthly),
        }
    }

    /// Checks group names (non-empty, no control characters).
    pub fn validate(&self) -> Result<(), String> {
        for name in self.groups.keys() {
            if name.trim().is_empty() || name.chars().any(char::is_control) {
                return Err(format!(
                    "backups.retention.groups.{name:?}: a group name must be non-empty text"
                ));
            }
        }
        Ok(())
    }
}

/// One backup of a device's chain, as retention sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Its place in the chain.
    pub sequence: u64,
    /// When it was taken (the signed header's time), Unix seconds.
    pub created: i64,
}

/// Why a backup is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepReason {
    /// The newest backup: the chain's head.
    Newest,
    /// No rule is configured.
    NoPolicy,
    /// One of the `keep_last` newest.
    Last,
    /// The newest of its day (`keep_daily`).
    Daily,
    /// The newest of its ISO week (`keep_weekly`).
    Weekly,
    /// The newest of its month (`keep_monthly`).
    Monthly,
}

/// What retention decided for one backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The backup.
    pub sequence: u64,
    /// When it was taken, Unix seconds.
    pub created: i64,
    /// Why it is kept; empty: it is pruned.
    pub reasons: Vec<KeepReason>,
}

impl Decision {
    /// Whether the backup stays.
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// Days since 1970-01-01 to (year, month 1-12).
fn year_month(days: i64) -> (i64, i64) {
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month)
}

/// The UTC day of a time: days since 1970-01-01.
pub fn day_bucket(unix: i64) -> i64 {
    unix.div_euclid(DAY)
}

/// The ISO week of a time, named by its Monday (days since 1970-01-01).
pub fn week_bucket(unix: i64) -> i64 {
    let day = day_bucket(unix);
    // 1970-01-01 was a Thursday: Monday is weekday 0.
    let weekday = (day + 3).rem_euclid(7);
    day - weekday
}

/// The calendar month of a time: `year * 12 + month - 1` (UTC).
pub fn month_bucket(unix: i64) -> i64 {
    let (y, m) = year_month(day_bucket(unix));
    y * 12 + m - 1
}

/// A calendar bucket of a time: backups in the same bucket share a day, week or month.
type Bucket = fn(i64) -> i64;

/// Applies `policy` to one device's backups (any order). Returns one decision per backup,
/// newest first. See the module documentation for the rule.
pub fn select(policy: &RetentionPolicy, backups: &[Candidate]) -> Vec<Decision> {
    let mut order: Vec<Candidate> = backups.to_vec();
    order.sort_by_key(|c| std::cmp::Reverse(c.sequence));
    let mut out: Vec<Decision> = order
        .iter()
        .map(|c| Decision {
            sequence: c.sequence,
            created: c.created,
            reasons: Vec::new(),
        })
        .collect();
    if let Some(first) = out.first_mut() {
        first.reasons.push(KeepReason::Newest);
    }
    if policy.keeps_everything() {
        for d in &mut out {
            d.reasons.push(KeepReason::NoPolicy);
        }
        return out;
    }
    for d in out.iter_mut().take(policy.keep_last as usize) {
        d.reasons.push(KeepReason::Last);
    }
    let rules: [(u32, Bucket, KeepReason); 3] = [
        (policy.keep_daily, day_bucket, KeepReason::Daily),
        (policy.keep_weekly, week_bucket, KeepReason::Weekly),
        (policy.keep_monthly, month_bucket, KeepReason::Monthly),
    ];
    for (count, bucket, reason) in rules {
        let mut left = count;
        let mut last: Option<i64> = None;
        for d in &mut out {
            if left == 0 {
                break;
            }
            let b = bucket(d.created);
            if last != Some(b) {
                d.reasons.push(reason);
                left -= 1;
                last = Some(b);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 2026-01-01 00:00:00 UTC (a Thursday).
    const JAN_1_2026: i64 = 1_767_225_600;
    const H: i64 = 3600;

    fn chain(times: &[i64]) -> Vec<Candidate> {
        times
            .iter()
            .enumerate()
            .map(|(i, &t)| Candidate {
                sequence: i as u64 + 1,
                created: t,
            })
            .collect()
    }

    fn kept(policy: RetentionPolicy, times: &[i64]) -> Vec<u64> {
        let mut k: Vec<u64> = select(&policy, &chain(times))
            .into_iter()
            .filter(Decision::keep)
            .map(|d| d.sequence)
            .collect();
        k.sort_unstable();
        k
    }

    #[test]
    fn calendar_buckets_are_utc_days_iso_weeks_and_months() {
        assert_eq!(day_bucket(JAN_1_2026), day_bucket(JAN_1_2026 + 24 * H - 1));
        assert_ne!(day_bucket(JAN_1_2026), day_bucket(JAN_1_2026 - 1));
        // Thursday 2026-01-01 is in the ISO week of Monday 2025-12-29; Sunday 01-04 too,
        // Monday 01-05 starts the next.
        let monday = JAN_1_2026 - 3 * 24 * H;
        assert_eq!(week_bucket(JAN_1_2026), day_bucket(monday));
        assert_eq!(
            week_bucket(JAN_1_2026 + 3 * 24 * H + 23 * H),
            day_bucket(monday)
        );
        assert_eq!(week_bucket(JAN_1_2026 + 4 * 24 * H), day_bucket(monday) + 7);
        assert_eq!(month_bucket(JAN_1_2026), 2026 * 12);
        assert_eq!(month_bucket(JAN_1_2026 - 1), 2025 * 12 + 11);
        // 2024-02-29 is in February, 2024-03-01 in March.
        assert_eq!(month_bucket(1_709_164_800), 2024 * 12 + 1);
        assert_eq!(month_bucket(1_709_251_200), 2024 * 12 + 2);
        assert_eq!(month_bucket(0), 1970 * 12);
        assert_eq!(month_bucket(-1), 1969 * 12 + 11);
    }

    #[test]
    fn rules_keep_the_newest_of_each_bucket_like_restic() {
        let day = 24 * H;
        // Three backups a day for four days.
        let times: Vec<i64> = (0..4)
            .flat_map(|d| [1, 9, 17].map(|h| JAN_1_2026 + d * day + h * H))
            .collect();
        let table: [(RetentionPolicy, Vec<u64>); 6] = [
            (RetentionPolicy::default(), (1..=12).collect()),
            (
                RetentionPolicy {
                    keep_last: 2,
                    ..Default::default()
                },
                vec![11, 12],
            ),
            (
                RetentionPolicy {
                    keep_daily: 2,
                    ..Default::default()
                },
                vec![9, 12],
            ),
            (
                RetentionPolicy {
                    keep_daily: 10,
                    ..Default::default()
                },
                vec![3, 6, 9, 12],
            ),
            (
                // Jan 1-4 2026 are Thu-Sun of one ISO week: one weekly, the newest.
                RetentionPolicy {
                    keep_weekly: 3,
                    ..Default::default()
                },
                vec![12],
            ),
            (
                RetentionPolicy {
                    keep_last: 1,
                    keep_daily: 3,
                    keep_monthly: 1,
                    ..Default::default()
                },
                vec![6, 9, 12],
            ),
        ];
        for (policy, want) in table {
            assert_eq!(kept(policy, &times), want, "{policy:?}");
        }
        // Days without backups do not count: the last 2 days *with* a backup.
        let sparse = [JAN_1_2026, JAN_1_2026 + 10 * day, JAN_1_2026 + 40 * day];
        let p = RetentionPolicy {
            keep_daily: 2,
            ..Default::default()
        };
        assert_eq!(kept(p, &sparse), vec![2, 3]);
        let p = RetentionPolicy {
            keep_monthly: 2,
            ..Default::default()
        };
        assert_eq!(kept(p, &sparse), vec![2, 3]);
    }

    #[test]
    fn reasons_say_why_and_the_head_is_always_kept() {
        let p = RetentionPolicy {
            keep_daily: 1,
            ..Default::default()
        };
        let d = select(&p, &chain(&[JAN_1_2026, JAN_1_2026 + H]));
        assert_eq!(d[0].sequence, 2);
        assert_eq!(d[0].reasons, vec![KeepReason::Newest, KeepReason::Daily]);
        assert!(!d[1].keep());
        assert!(select(&p, &[]).is_empty());
    }

    #[test]
    fn group_overrides_replace_only_the_values_they_give() {
        let c: RetentionConfig = toml::from_str(
            "keep_last = 3\nkeep_daily = 7\n[groups.lab]\nkeep_daily = 1\nkeep_monthly = 12\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.policy_for(Some("lab")),
            RetentionPolicy {
                keep_last: 3,
                keep_daily: 1,
                keep_weekly: 0,
                keep_monthly: 12
            }
        );
        assert_eq!(c.policy_for(Some("other")), c.default_policy());
        assert_eq!(c.policy_for(None).keep_daily, 7);
        assert!(toml::from_str::<RetentionConfig>("keep_yearly = 1\n").is_err());
    }

    fn arb_chain() -> impl Strategy<Value = Vec<Candidate>> {
        // Gaps from seconds to weeks; times never run backwards on a chain.
        prop::collection::vec(0i64..(20 * 24 * H), 0..60).prop_map(|gaps| {
            let mut t = JAN_1_2026 - 400 * 24 * H;
            gaps.iter()
                .enumerate()
                .map(|(i, g)| {
                    t += g;
                    Candidate {
                        sequence: i as u64 + 1,
                        created: t,
                    }
                })
                .collect()
        })
    }

    fn arb_policy() -> impl Strategy<Value = RetentionPolicy> {
        (0u32..5, 0u32..8, 0u32..5, 0u32..4).prop_map(|(l, d, w, m)| RetentionPolicy {
            keep_last: l,
            keep_daily: d,
            keep_weekly: w,
            keep_monthly: m,
        })
    }

    proptest! {
        #[test]
        fn selection_properties(policy in arb_policy(), backups in arb_chain()) {
            let decisions = select(&policy, &backups);
            prop_assert_eq!(decisions.len(), backups.len());
            let kept: Vec<&Decision> = decisions.iter().filter(|d| d.keep()).collect();
            // The head always stays.
            if let Some(max) = backups.iter().map(|b| b.sequence).max() {
                prop_assert!(kept.iter().any(|d| d.sequence == max));
            }
            if policy.keeps_everything() {
                prop_assert_eq!(kept.len(), backups.len());
            } else {
                let bound = 1 + policy.keep_last + policy.keep_daily + policy.keep_weekly
                    + policy.keep_monthly;
                prop_assert!(kept.len() <= bound as usize);
                // keep_last keeps exactly the newest ones.
                for d in decisions.iter().take(policy.keep_last as usize) {
                    prop_assert!(d.keep());
                }
            }
            // A daily keep is the newest backup of its day.
            for d in &decisions {
                if d.reasons.contains(&KeepReason::Daily) {
                    let newer_same_day = backups.iter().any(|b| {
                        b.sequence > d.sequence && day_bucket(b.created) == day_bucket(d.created)
                    });
                    prop_assert!(!newer_same_day);
                }
            }
            // Idempotent: applying the policy to what it kept keeps all of it.
            let survivors: Vec<Candidate> = backups
                .iter()
                .filter(|b| kept.iter().any(|d| d.sequence == b.sequence))
                .copied()
                .collect();
            prop_assert!(select(&policy, &survivors).iter().all(Decision::keep));
        }
    }
}
