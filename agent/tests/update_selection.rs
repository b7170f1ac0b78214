//! Property tests of update selection (`otter_agent::select`): the rollout bucket is
//! uniform-ish and stable, rollouts are monotone in the percent, 0 % and 100 % mean nobody
//! and everybody, no downgrade without a signed rollback, the highest eligible version wins,
//! malformed `custom` members are never chosen, and the input order does not matter.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use otter_agent::select::{
    choose_update, rollout_bucket, DeviceFacts, Installed, NoteReason, ROLLOUT_BUCKETS,
};
use otter_keys::metadata::TargetFile;
use proptest::prelude::*;
use semver::Version;
use serde_json::{json, Value};

fn file(custom: Value) -> TargetFile {
    TargetFile {
        length: 1,
        hashes: BTreeMap::from([("sha256".to_string(), "cd".repeat(32))]),
        extra: BTreeMap::from([("custom".to_string(), custom)]),
    }
}

fn custom(version: &Version, percent: Value, groups: &[&str], rollback: bool) -> Value {
    let mut c = json!({
        "kind": "patch", "version": version.to_string(), "hardware": ["pos-a", "pos-b"],
        "channel": "stable", "rollout": {"percent": percent, "groups": groups},
    });
    if rollback {
        c["rollback"] = json!(true);
    }
    c
}

fn target(component: &str, c: Value) -> (String, TargetFile) {
    let version = c["version"].as_str().unwrap_or("bad").to_string();
    (format!("{component}-{version}.tar.zst"), file(c))
}

fn device(id: &str, groups: &[&str]) -> DeviceFacts {
    DeviceFacts {
        device_id: id.to_string(),
        hardware_model: "pos-a".into(),
        channel: "stable".into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

fn version() -> impl Strategy<Value = Version> {
    (0u64..4, 0u64..4, 0u64..4).prop_map(|(a, b, c)| Version::new(a, b, c))
}

fn device_id() -> impl Strategy<Value = String> {
    "[a-z0-9-]{1,24}"
}

/// Whether `dev` gets `target` at `percent` (with nothing installed).
fn selected(dev: &DeviceFacts, c: Value) -> bool {
    !choose_update(&[target("pos-app", c)], dev, &Installed::new())
        .updates
        .is_empty()
}

#[test]
fn buckets_are_uniform_enough() {
    // 20 000 device ids into 20 bins of 500 buckets: chi-square with 19 degrees of freedom
    // has mean 19 and is above 60 with probability far below 1e-6.
    const N: usize = 20_000;
    const BINS: usize = 20;
    let mut bins = [0usize; BINS];
    for i in 0..N {
        let b = rollout_bucket(&format!("device-{i:06}"), "pos-app-1.2.3.tar.zst");
        assert!(b < ROLLOUT_BUCKETS);
        bins[usize::from(b) * BINS / usize::from(ROLLOUT_BUCKETS)] += 1;
    }
    let expected = (N / BINS) as f64;
    let chi2: f64 = bins
        .iter()
        .map(|&o| (o as f64 - expected).powi(2) / expected)
        .sum();
    assert!(chi2 < 60.0, "chi-square {chi2} over {bins:?}");
}

#[test]
fn a_ten_percent_rollout_reaches_about_ten_percent() {
    let c = custom(&Version::new(1, 0, 0), json!(10), &[], false);
    let n = (0..10_000)
        .filter(|i| selected(&device(&format!("d{i}"), &[]), c.clone()))
        .count();
    assert!((800..=1200).contains(&n), "{n} of 10000");
}

proptest! {
    #[test]
    fn bucket_is_in_range_and_stable(id in device_id(), t in "[a-z]{1,8}-[0-9]\\.[0-9]\\.[0-9]\\.tar\\.zst") {
        let b = rollout_bucket(&id, &t);
        prop_assert!(b < ROLLOUT_BUCKETS);
        prop_assert_eq!(b, rollout_bucket(&id, &t));
    }

    #[test]
    fn raising_the_percent_never_removes_a_device(
        id in device_id(), v in version(), low in 0u32..=10_000, raise in 0u32..=10_000,
    ) {
        let high = (low + raise).min(10_000);
        let pct = |bp: u32| json!(f64::from(bp) / 100.0);
        let dev = device(&id, &[]);
        let at_low = selected(&dev, custom(&v, pct(low), &[], false));
        let at_high = selected(&dev, custom(&v, pct(high), &[], false));
        prop_assert!(!at_low || at_high);
        // And the rule is the documented one.
        let name = format!("pos-app-{v}.tar.zst");
        prop_assert_eq!(at_low, u32::from(rollout_bucket(&id, &name)) < low);
    }

    #[test]
    fn zero_percent_selects_only_the_groups(
        id in device_id(), v in version(), in_group in any::<bool>(),
    ) {
        let groups: &[&str] = if in_group { &["pilot", "other"] } else { &["other"] };
        let dev = device(&id, groups);
        prop_assert_eq!(selected(&dev, custom(&v, json!(0), &["pilot"], false)), in_group);
        prop_assert!(!selected(&dev, custom(&v, json!(0), &[], false)));
    }

    #[test]
    fn a_full_rollout_selects_everyone(id in device_id(), v in version()) {
        prop_assert!(selected(&device(&id, &[]), custom(&v, json!(100), &[], false)));
    }

    #[test]
    fn the_highest_eligible_version_wins_and_never_a_downgrade(
        id in device_id(),
        installed in proptest::option::of(version()),
        offered in proptest::collection::btree_map(version(), any::<bool>(), 0..8),
        shuffle in any::<u64>(),
    ) {
        let dev = device(&id, &[]);
        let mut targets: Vec<_> = offered
            .iter()
            .map(|(v, rollback)| target("pos-app", custom(v, json!(100), &[], *rollback)))
            .collect();
        let inst: Installed = installed
            .iter()
            .map(|v| ("pos-app".to_string(), v.clone()))
            .collect();
        let d = choose_update(&targets, &dev, &inst);
        // The expected answer, from the rules.
        let expected = offered
            .iter()
            .filter(|(v, rollback)| match &installed {
                None => true,
                Some(i) => *v > i || (**rollback && *v < i),
            })
            .map(|(v, _)| v.clone())
            .max();
        prop_assert_eq!(d.updates.first().map(|u| u.version().clone()), expected);
        prop_assert!(d.updates.len() <= 1);
        prop_assert!(d.notes.is_empty());
        for u in &d.updates {
            if let Some(i) = &installed {
                prop_assert!(u.version() != i);
                if u.version() < i {
                    prop_assert!(u.custom.rollback && u.downgrade);
                }
            }
        }
        // The input order does not matter.
        let n = targets.len().max(1);
        targets.rotate_left((shuffle as usize) % n);
        targets.reverse();
        prop_assert_eq!(choose_update(&targets, &dev, &inst), d);
    }

    #[test]
    fn a_malformed_custom_is_never_chosen(
        id in device_id(),
        v in version(),
        breakage in 0usize..8,
    ) {
        let mut c = custom(&v, json!(100), &[], false);
        match breakage {
            0 => c["kind"] = json!("bootloader"),
            1 => c["hardware"] = json!([]),
            2 => c["rollout"]["percent"] = json!(250),
            3 => c["rollout"] = json!({"percent": 100}),
            4 => c["min_installed_version"] = json!("one"),
            5 => c["rollback"] = json!(1),
            6 => c["unsigned_hint"] = json!("pick me"),
            _ => c = json!([c]),
        }
        let name = format!("pos-app-{v}.tar.zst");
        let good = target("other-app", custom(&Version::new(0, 0, 1), json!(100), &[], false));
        let t = vec![(name.clone(), file(c)), good];
        let d = choose_update(&t, &device(&id, &[]), &Installed::new());
        prop_assert!(d.updates.iter().all(|u| u.target != name));
        prop_assert_eq!(d.updates.len(), 1);
        prop_assert_eq!(d.notes.len(), 1);
        prop_assert_eq!(&d.notes[0].target, &name);
        prop_assert!(matches!(d.notes[0].reason, NoteReason::Malformed(_)));
    }

    #[test]
    fn other_hardware_or_channel_is_never_chosen(id in device_id(), v in version()) {
        let mut dev = device(&id, &[]);
        dev.hardware_model = "pos-c".into();
        prop_assert!(!selected(&dev, custom(&v, json!(100), &[], false)));
        let mut dev = device(&id, &[]);
        dev.channel = "beta".into();
        prop_assert!(!selected(&dev, custom(&v, json!(100), &[], false)));
    }
}

#[test]
fn groups_are_exact_names() {
    let c = custom(&Version::new(1, 0, 0), json!(0), &["pilot"], false);
    assert!(!selected(&device("d", &["Pilot", "pilot2"]), c.clone()));
    assert!(selected(&device("d", &["pilot"]), c));
}
