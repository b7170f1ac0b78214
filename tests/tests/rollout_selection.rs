//! End to end, with the real binaries on loopback: a release published with `otter-server
//! publish`, its rollout driven with `otter-server rollout`, and the signed targets the
//! server writes read back, verified against the root, and judged by the agent's own
//! selection code (`otter_agent::select`): about the rollout's percent of a population of
//! devices is in, raising the percent keeps everyone who was in, a group brings its
//! devices in whatever their bucket, and a paused rollout lets nobody in until it resumes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/fleet.rs"]
mod fleet;

use std::collections::BTreeSet;
use std::path::Path;

use common::{command, show};
use fleet::Fleet;
use otter_agent::select::{rollout_bucket, DeviceFacts, TargetCustom};
use otter_keys::metadata::{Metadata, Root, Snapshot, Targets, Timestamp};
use serde_json::{json, Value};

const TARGET: &str = "pinpad-1.0.0.tar.zst";
const MAX: usize = 1 << 20;

fn bundle() -> Vec<u8> {
    let payload = b"firmware image";
    let manifest = serde_json::to_vec(&json!({
        "name": "pinpad", "kind": "firmware", "version": "1.0.0",
        "hardware": ["pos-a"],
        "payload": [{"path": "image.bin", "size": payload.len(),
                     "sha256": otter_keys::hash::sha256_hex(payload)}],
    }))
    .unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("manifest.json", &manifest[..]),
        ("image.bin", &payload[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    }
    zstd::encode_all(&b.into_inner().unwrap()[..], 3).unwrap()
}

/// The custom member of TARGET in the current signed targets, read from the server's store
/// and verified from the root through timestamp and snapshot.
fn signed_custom(data: &Path) -> (u64, TargetCustom) {
    let dir = data.join("store/repo/metadata");
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let root = Metadata::<Root>::from_bytes(&read("1.root.json"), MAX).unwrap();
    root.verify_self().unwrap();
    let ts = Metadata::<Timestamp>::from_bytes(&read("timestamp.json"), MAX).unwrap();
    root.verify_by(&ts, "timestamp").unwrap();
    let sv = ts.signed().snapshot_meta().unwrap().version;
    let snap_bytes = read(&format!("{sv}.snapshot.json"));
    let snap = Metadata::<Snapshot>::from_bytes(&snap_bytes, MAX).unwrap();
    root.verify_by(&snap, "snapshot").unwrap();
    let tv = snap.signed().meta["targets.json"].version;
    let targets =
        Metadata::<Targets>::from_bytes(&read(&format!("{tv}.targets.json")), MAX).unwrap();
    root.verify_by(&targets, "targets").unwrap();
    let entry = &targets.signed().targets[TARGET];
    let custom = TargetCustom::parse(TARGET, entry.extra.get("custom")).unwrap();
    (tv, custom)
}

fn device(i: usize, groups: &[&str]) -> DeviceFacts {
    DeviceFacts {
        device_id: format!("{i:032x}"),
        hardware_model: "pos-a".into(),
        channel: "stable".into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

fn included(c: &TargetCustom, n: usize) -> BTreeSet<usize> {
    (0..n)
        .filter(|i| c.rollout.includes(&device(*i, &[]), TARGET))
        .collect()
}

#[test]
fn agents_follow_the_signed_rollout_as_operators_change_it() {
    let fleet = Fleet::start("");
    let (server, data) = (&fleet.server, &fleet.data);
    let publisher = &fleet.publisher_token;
    let operator = fleet.token("operator");
    let file = fleet.tmp.path().join("pinpad.tar.zst");
    std::fs::write(&file, bundle()).unwrap();
    let out = command("otter-server")
        .args(["publish", "--server", &server.url])
        .arg(&file)
        .env("OTTER_TOKEN", publisher)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let (v0, c) = signed_custom(data);
    assert_eq!(c.rollout.basis_points, 10_000);

    let rollout = |args: &[&str]| {
        let out = command("otter-server")
            .arg("rollout")
            .args(args)
            .args(["--server", &server.url])
            .env("OTTER_TOKEN", &operator)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", show(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    const N: usize = 2000;

    rollout(&["set", "pinpad", "1.0.0", "--percent", "30", "--force"]);
    let (v1, c30) = signed_custom(data);
    assert_eq!(v1, v0 + 1);
    let in30 = included(&c30, N);
    assert!(
        (500..=700).contains(&in30.len()),
        "{} of {N} at 30%",
        in30.len()
    );
    for i in 0..N {
        let bucket = rollout_bucket(&device(i, &[]).device_id, TARGET);
        assert_eq!(in30.contains(&i), bucket < 3000);
    }

    rollout(&[
        "set",
        "pinpad",
        "1.0.0",
        "--percent",
        "60",
        "--groups",
        "pilot",
    ]);
    let (_, c60) = signed_custom(data);
    let in60 = included(&c60, N);
    assert!(
        (1100..=1300).contains(&in60.len()),
        "{} of {N} at 60%",
        in60.len()
    );
    assert!(
        in30.is_subset(&in60),
        "raising keeps every device that was in"
    );
    let outside = (0..N).find(|i| !in60.contains(i)).unwrap();
    assert!(c60.rollout.includes(&device(outside, &["pilot"]), TARGET));
    assert!(!c60.rollout.includes(&device(outside, &["other"]), TARGET));

    let paused = rollout(&["pause", "pinpad", "1.0.0"]);
    assert_eq!(paused["rollout"]["percent"], 60);
    let (_, cp) = signed_custom(data);
    assert!(included(&cp, N).is_empty());
    assert!(!cp.rollout.includes(&device(outside, &["pilot"]), TARGET));

    rollout(&["resume", "pinpad", "1.0.0"]);
    let (_, cr) = signed_custom(data);
    assert_eq!(included(&cr, N), in60);
    assert!(cr.rollout.includes(&device(outside, &["pilot"]), TARGET));
    drop(fleet);
}
