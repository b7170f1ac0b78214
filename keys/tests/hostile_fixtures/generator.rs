//! Makes the corpus. Keys come from fixed seeds and ed25519 signatures are deterministic, so
//! the output is the same on every run.

use std::collections::BTreeMap;

use otter_keys::crypto::SigningKey;
use otter_keys::hash::hashes_of;
use otter_keys::metadata::{DelegatedRole, Delegations, Metadata, Role, Root, TargetFile, Targets};
use serde_json::{json, Value};

use super::common::{
    flip_bit, key, reference_canonical, root_body, snapshot_body, targets_body, time,
    timestamp_body, RootPlan,
};
use super::Case;

const SPEC: &str = "1.0.31";

struct Keys {
    root: SigningKey,
    root2: SigningKey,
    targets: SigningKey,
    targets2: SigningKey,
    snapshot: SigningKey,
    timestamp: SigningKey,
    timestamp2: SigningKey,
    stranger: SigningKey,
}

fn keys() -> Keys {
    Keys {
        root: key(101),
        root2: key(102),
        targets: key(110),
        targets2: key(111),
        snapshot: key(120),
        timestamp: key(130),
        timestamp2: key(131),
        stranger: key(199),
    }
}

fn valid_until() -> otter_keys::time::UtcTime {
    time("2030-01-01T00:00:00Z")
}

fn with_spec<T: Role>(mut md_body: T, set: impl FnOnce(&mut T)) -> T {
    set(&mut md_body);
    md_body
}

fn signed<T: Role>(body: T, signers: &[&SigningKey]) -> Metadata<T> {
    let mut md = Metadata::new(body).unwrap();
    for k in signers {
        md.sign(k);
    }
    md
}

/// A document that `Metadata::new` would refuse to build, signed over the reference
/// canonical form (or, for a signed object with no canonical form, over its compact
/// JSON, as a careless signer might).
fn raw_signed(signed: Value, signers: &[&SigningKey]) -> Vec<u8> {
    let msg = reference_canonical(&signed).unwrap_or_else(|| serde_json::to_vec(&signed).unwrap());
    let sigs: Vec<Value> = signers
        .iter()
        .map(|k| serde_json::to_value(k.sign(&msg)).unwrap())
        .collect();
    let mut out =
        serde_json::to_vec_pretty(&json!({"signatures": sigs, "signed": signed})).unwrap();
    out.push(b'\n');
    out
}

fn pretty(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).unwrap();
    out.push(b'\n');
    out
}

fn edit<T: Role>(md: &Metadata<T>, f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&md.to_bytes()).unwrap();
    f(&mut v);
    pretty(&v)
}

/// The standard trusted root: one key per role.
fn standard_root(k: &Keys) -> Metadata<Root> {
    root_with(k, 1, &[&k.root], 1, |_| {})
}

fn root_with(
    k: &Keys,
    version: u64,
    root_keys: &[&SigningKey],
    root_threshold: u32,
    adjust: impl FnOnce(&mut Root),
) -> Metadata<Root> {
    let mut body = root_body(
        version,
        valid_until(),
        &RootPlan {
            root: (root_keys, root_threshold),
            targets: (&[&k.targets], 1),
            snapshot: (&[&k.snapshot], 1),
            timestamp: (&[&k.timestamp], 1),
        },
    );
    body.spec_version = SPEC.into();
    adjust(&mut body);
    Metadata::new(body).unwrap()
}

fn sign_root(mut md: Metadata<Root>, signers: &[&SigningKey]) -> Metadata<Root> {
    for s in signers {
        md.sign(s);
    }
    md
}

fn timestamp(
    k: &Keys,
    version: u64,
    snapshot_version: u64,
) -> Metadata<otter_keys::metadata::Timestamp> {
    signed(
        with_spec(
            timestamp_body(version, valid_until(), snapshot_version),
            |b| b.spec_version = SPEC.into(),
        ),
        &[&k.timestamp],
    )
}

fn snapshot(k: &Keys, version: u64) -> Metadata<otter_keys::metadata::Snapshot> {
    signed(
        with_spec(snapshot_body(version, valid_until(), 1), |b| {
            b.spec_version = SPEC.into()
        }),
        &[&k.snapshot],
    )
}

fn targets(k: &Keys) -> Metadata<Targets> {
    signed(targets_plain(), &[&k.targets])
}

fn targets_plain() -> Targets {
    with_spec(targets_body(1, valid_until()), |b| {
        b.spec_version = SPEC.into()
    })
}

fn case(readme: &str, expect: &str, root: &Metadata<Root>, files: Vec<(&str, Vec<u8>)>) -> Case {
    let mut c = Case::new();
    c.insert("README".into(), format!("{readme}\n").into_bytes());
    c.insert("expect".into(), format!("{expect}\n").into_bytes());
    c.insert("root.json".into(), root.to_bytes());
    for (name, bytes) in files {
        c.insert(name.into(), bytes);
    }
    c
}

/// One well-formed candidate of each role, with the standard root: the harness must
/// accept every one.
pub fn valid_cases() -> Vec<(&'static str, Case)> {
    let k = keys();
    let root = sign_root(standard_root(&k), &[&k.root]);
    let v2 = sign_root(
        root_with(&k, 2, &[&k.root2], 1, |_| {}),
        &[&k.root, &k.root2],
    );
    vec![
        (
            "root",
            case(
                "valid",
                "-",
                &root,
                vec![("candidate.root.json", v2.to_bytes())],
            ),
        ),
        (
            "timestamp",
            case(
                "valid",
                "-",
                &root,
                vec![
                    ("trusted.timestamp.json", timestamp(&k, 4, 4).to_bytes()),
                    ("candidate.timestamp.json", timestamp(&k, 5, 5).to_bytes()),
                ],
            ),
        ),
        (
            "snapshot",
            case(
                "valid",
                "-",
                &root,
                vec![
                    ("trusted.snapshot.json", snapshot(&k, 4).to_bytes()),
                    ("candidate.snapshot.json", snapshot(&k, 5).to_bytes()),
                ],
            ),
        ),
        (
            "targets",
            case(
                "valid",
                "-",
                &root,
                vec![("candidate.targets.json", targets(&k).to_bytes())],
            ),
        ),
    ]
}

/// The hostile corpus, by case name.
pub fn hostile_cases() -> BTreeMap<String, Case> {
    let k = keys();
    let root = sign_root(standard_root(&k), &[&k.root]);
    let mut out = BTreeMap::new();
    let mut add = |name: &str, c: Case| {
        out.insert(name.to_string(), c);
    };

    // -- signatures ---------------------------------------------------------------
    let two_timestamp_keys = sign_root(
        root_with(&k, 1, &[&k.root], 1, |r| {
            r.keys
                .insert(k.timestamp2.key_id(), k.timestamp2.public_key());
            let ts = r.roles.get_mut("timestamp").unwrap();
            ts.keyids.push(k.timestamp2.key_id());
            ts.threshold = 2;
        }),
        &[&k.root],
    );
    let ts = timestamp(&k, 1, 1);
    let s = serde_json::to_value(&ts.signatures()[0]).unwrap();
    add(
        "duplicate-sigs",
        case(
            "A timestamp needing 2 of 2 keys carries one key's signature three times: it counts once (spec 5.4.2, 4.2).",
            "ThresholdNotMet",
            &two_timestamp_keys,
            vec![(
                "candidate.timestamp.json",
                edit(&ts, |v| v["signatures"] = json!([s, s, s])),
            )],
        ),
    );

    let root_v2 = root_with(&k, 2, &[&k.root], 1, |_| {});
    let mut sig = k.root.sign(root_v2.canonical_signed());
    sig.sig = flip_bit(&sig.sig, 40, 0);
    add(
        "invalid-root-json-signature",
        case(
            "Root version 2 whose only root signature has one bit flipped is not a trusted successor (spec 5.3.4).",
            "ThresholdNotMet",
            &root,
            vec![(
                "candidate.root.json",
                edit(&root_v2, |v| {
                    v["signatures"] = json!([serde_json::to_value(&sig).unwrap()])
                }),
            )],
        ),
    );

    let two_targets_keys = sign_root(
        root_with(&k, 1, &[&k.root], 1, |r| {
            r.keys.insert(k.targets2.key_id(), k.targets2.public_key());
            let t = r.roles.get_mut("targets").unwrap();
            t.keyids.push(k.targets2.key_id());
            t.threshold = 2;
        }),
        &[&k.root],
    );
    add(
        "threshold-short",
        case(
            "Targets signed by 1 of the 2 keys its threshold requires (spec 5.6.3).",
            "ThresholdNotMet",
            &two_targets_keys,
            vec![("candidate.targets.json", targets(&k).to_bytes())],
        ),
    );

    let snap = snapshot(&k, 1);
    let pretty_signed = serde_json::to_vec_pretty(
        &serde_json::from_slice::<Value>(&snap.to_bytes()).unwrap()["signed"],
    )
    .unwrap();
    let over_pretty = k.snapshot.sign(&pretty_signed);
    add(
        "non-canonical-signature",
        case(
            "A snapshot signed over its pretty-printed signed object instead of the canonical form (spec 4.2).",
            "ThresholdNotMet",
            &root,
            vec![(
                "candidate.snapshot.json",
                edit(&snap, |v| {
                    v["signatures"] = json!([serde_json::to_value(&over_pretty).unwrap()])
                }),
            )],
        ),
    );

    add(
        "unknown-key",
        case(
            "A snapshot signed by a key the trusted root does not list (spec 5.5.3).",
            "ThresholdNotMet",
            &root,
            vec![(
                "candidate.snapshot.json",
                signed(
                    with_spec(snapshot_body(1, valid_until(), 1), |b| {
                        b.spec_version = SPEC.into()
                    }),
                    &[&k.stranger],
                )
                .to_bytes(),
            )],
        ),
    );

    add(
        "unauthorised-key",
        case(
            "A snapshot signed by the timestamp key, which the root lists but does not authorise for snapshot (spec 4.3, 5.5.3).",
            "ThresholdNotMet",
            &root,
            vec![(
                "candidate.snapshot.json",
                signed(
                    with_spec(snapshot_body(1, valid_until(), 1), |b| b.spec_version = SPEC.into()),
                    &[&k.timestamp],
                )
                .to_bytes(),
            )],
        ),
    );

    let tg = targets(&k);
    add(
        "altered-after-signing",
        case(
            "Targets whose target sha256 was replaced after signing (spec 4.2, 5.6.3).",
            "ThresholdNotMet",
            &root,
            vec![(
                "candidate.targets.json",
                edit(&tg, |v| {
                    let t = v["signed"]["targets"].as_object_mut().unwrap();
                    let entry = t.values_mut().next().unwrap();
                    entry["hashes"]["sha256"] = json!("66".repeat(32));
                }),
            )],
        ),
    );

    let mut nfc_body = targets_plain();
    nfc_body.targets.insert(
        "drivers/caf\u{e9}-printer.bin".into(),
        TargetFile {
            length: 11,
            hashes: hashes_of(b"real driver"),
            extra: BTreeMap::new(),
        },
    );
    let nfc = signed(nfc_body, &[&k.targets]);
    add(
        "unicode-equivalent-target",
        case(
            "Targets signed with a name holding a precomposed e-acute; an entry under the same name in decomposed form, with other hashes, was added after signing (spec 4.2).",
            "ThresholdNotMet|Malformed",
            &root,
            vec![(
                "candidate.targets.json",
                edit(&nfc, |v| {
                    v["signed"]["targets"]["drivers/cafe\u{301}-printer.bin"] = json!({
                        "length": 4,
                        "hashes": {"sha256": hashes_of(b"evil")["sha256"]}
                    })
                }),
            )],
        ),
    );

    let alias_root = sign_root(
        root_with(&k, 1, &[&k.root], 1, |r| {
            let mut upper = k.targets.public_key();
            upper.keyval.public = upper.keyval.public.to_uppercase();
            r.keys
                .insert(otter_keys::crypto::KeyId("targets-key-again".into()), upper);
            let t = r.roles.get_mut("targets").unwrap();
            t.keyids
                .push(otter_keys::crypto::KeyId("targets-key-again".into()));
            t.threshold = 2;
        }),
        &[&k.root],
    );
    let alias_sig = {
        let mut s = k.targets.sign(tg.canonical_signed());
        s.keyid = otter_keys::crypto::KeyId("targets-key-again".into());
        serde_json::to_value(s).unwrap()
    };
    add(
        "same-key-two-ids-hex-case",
        case(
            "Threshold 2 for targets, met by one key listed twice (hex in lower and upper case) and signing under both ids (spec 4.3 THRESHOLD).",
            "ThresholdNotMet",
            &alias_root,
            vec![(
                "candidate.targets.json",
                edit(&tg, |v| {
                    v["signatures"].as_array_mut().unwrap().push(alias_sig.clone())
                }),
            )],
        ),
    );

    // -- root rotation --------------------------------------------------------------
    let new_root = |version| root_with(&k, version, &[&k.root2], 1, |_| {});
    add(
        "root-signed-by-new-keys-only",
        case(
            "Root version 2 rotating to a new key, signed only by the new key (spec 5.3.4 (1)).",
            "ThresholdNotMet",
            &root,
            vec![(
                "candidate.root.json",
                sign_root(new_root(2), &[&k.root2]).to_bytes(),
            )],
        ),
    );
    add(
        "root-signed-by-old-keys-only",
        case(
            "Root version 2 rotating to a new key, signed only by the old key (spec 5.3.4 (2)).",
            "ThresholdNotMet",
            &root,
            vec![(
                "candidate.root.json",
                sign_root(new_root(2), &[&k.root]).to_bytes(),
            )],
        ),
    );
    add(
        "root-version-skip",
        case(
            "Root version 3 offered to a client trusting version 1, signed by old and new keys (spec 5.3.5).",
            "Version",
            &root,
            vec![(
                "candidate.root.json",
                sign_root(new_root(3), &[&k.root, &k.root2]).to_bytes(),
            )],
        ),
    );
    add(
        "root-version-replay",
        case(
            "The trusted root version 1 offered again as its own successor (spec 5.3.5).",
            "Version",
            &root,
            vec![("candidate.root.json", root.to_bytes())],
        ),
    );
    let zero_threshold = root_with(&k, 2, &[&k.root], 1, |_| {});
    add(
        "root-threshold-zero",
        case(
            "Root version 2, signed, giving the timestamp role threshold 0 (spec 4.3 THRESHOLD).",
            "Invalid",
            &root,
            vec![("candidate.root.json", {
                let mut v: Value = serde_json::from_slice(&zero_threshold.to_bytes()).unwrap();
                v["signed"]["roles"]["timestamp"]["threshold"] = json!(0);
                raw_signed(v["signed"].clone(), &[&k.root])
            })],
        ),
    );

    // -- freshness and rollback ---------------------------------------------------------
    add(
        "expired-repository",
        case(
            "A validly signed timestamp that expired on 2020-01-01 (spec 5.4.4, freeze attack).",
            "Expired",
            &root,
            vec![(
                "candidate.timestamp.json",
                signed(
                    with_spec(timestamp_body(1, time("2020-01-01T00:00:00Z"), 1), |b| {
                        b.spec_version = SPEC.into()
                    }),
                    &[&k.timestamp],
                )
                .to_bytes(),
            )],
        ),
    );
    add(
        "timestamp-rollback",
        case(
            "Timestamp version 4 offered to a client trusting version 5 (spec 5.4.3.1).",
            "Version",
            &root,
            vec![
                ("trusted.timestamp.json", timestamp(&k, 5, 5).to_bytes()),
                ("candidate.timestamp.json", timestamp(&k, 4, 5).to_bytes()),
            ],
        ),
    );
    add(
        "snapshot-rollback-in-timestamp",
        case(
            "A newer timestamp naming snapshot version 4 when the trusted one named 5 (spec 5.4.3.2).",
            "Version",
            &root,
            vec![
                ("trusted.timestamp.json", timestamp(&k, 5, 5).to_bytes()),
                ("candidate.timestamp.json", timestamp(&k, 6, 4).to_bytes()),
            ],
        ),
    );
    add(
        "snapshot-rollback",
        case(
            "Snapshot version 3 offered to a client trusting version 4 (spec 5.5.5).",
            "Version",
            &root,
            vec![
                ("trusted.snapshot.json", snapshot(&k, 4).to_bytes()),
                ("candidate.snapshot.json", snapshot(&k, 3).to_bytes()),
            ],
        ),
    );

    // -- types and versions of the format ------------------------------------------------
    let shared_root = sign_root(
        root_with(&k, 1, &[&k.root], 1, |r| {
            r.roles.get_mut("timestamp").unwrap().keyids = vec![k.targets.key_id()];
        }),
        &[&k.root],
    );
    add(
        "wrong-type",
        case(
            "A targets file, validly signed by a key trusted for both targets and timestamp, served as timestamp.json (spec 4.2 _type).",
            "WrongType",
            &shared_root,
            vec![("candidate.timestamp.json", targets(&k).to_bytes())],
        ),
    );
    let mut v2_ts: Value = serde_json::from_slice(&timestamp(&k, 1, 1).to_bytes()).unwrap();
    v2_ts["signed"]["spec_version"] = json!("2.0.0");
    add(
        "spec-version-2",
        case(
            "A validly signed timestamp declaring spec_version 2.0.0 (spec 4.3 SPEC_VERSION).",
            "SpecVersion",
            &root,
            vec![(
                "candidate.timestamp.json",
                raw_signed(v2_ts["signed"].clone(), &[&k.timestamp]),
            )],
        ),
    );

    // -- malformed ---------------------------------------------------------------------
    let ts_text = String::from_utf8(timestamp(&k, 1, 1).to_bytes()).unwrap();
    let dup = ts_text.replacen(
        "\"signed\": {",
        "\"signed\": {\n    \"meta\": {\"snapshot.json\": {\"version\": 99}},",
        1,
    );
    add(
        "duplicate-members",
        case(
            "A signed timestamp with a second \"meta\" member naming another snapshot: parsers keeping the first or the last disagree (spec 4.1).",
            "Malformed",
            &root,
            vec![("candidate.timestamp.json", dup.into_bytes())],
        ),
    );
    let mut float_tg: Value = serde_json::from_slice(&targets(&k).to_bytes()).unwrap();
    {
        let t = float_tg["signed"]["targets"].as_object_mut().unwrap();
        let entry = t.values_mut().next().unwrap();
        entry["custom"]["rollout"]["percent"] = json!(12.5);
    }
    add(
        "float-in-signed",
        case(
            "Targets whose custom rollout percent is 12.5: canonical JSON has no floats (spec 4.1).",
            "NotCanonicalizable",
            &root,
            vec![(
                "candidate.targets.json",
                raw_signed(float_tg["signed"].clone(), &[&k.targets]),
            )],
        ),
    );
    let mut deep = json!("bottom");
    for _ in 0..100 {
        deep = json!([deep]);
    }
    let mut deep_tg: Value = serde_json::from_slice(&targets(&k).to_bytes()).unwrap();
    deep_tg["signed"]["x-deep"] = deep;
    add(
        "deep-nesting",
        case(
            "Targets nesting arrays 100 levels deep in an unknown member (parser stack exhaustion).",
            "Malformed",
            &root,
            vec![(
                "candidate.targets.json",
                raw_signed(deep_tg["signed"].clone(), &[&k.targets]),
            )],
        ),
    );
    let mut two_meta: Value = serde_json::from_slice(&timestamp(&k, 1, 1).to_bytes()).unwrap();
    two_meta["signed"]["meta"]["targets.json"] = json!({"version": 1});
    add(
        "timestamp-two-meta",
        case(
            "A signed timestamp listing targets.json beside snapshot.json (spec 4.6: only snapshot.json).",
            "Invalid",
            &root,
            vec![(
                "candidate.timestamp.json",
                raw_signed(two_meta["signed"].clone(), &[&k.timestamp]),
            )],
        ),
    );
    let mut v0: Value = serde_json::from_slice(&snapshot(&k, 1).to_bytes()).unwrap();
    v0["signed"]["version"] = json!(0);
    add(
        "version-zero",
        case(
            "A signed snapshot with version 0 (spec 4.3 VERSION: an integer greater than 0).",
            "Invalid",
            &root,
            vec![(
                "candidate.snapshot.json",
                raw_signed(v0["signed"].clone(), &[&k.snapshot]),
            )],
        ),
    );
    let vendor = key(140);
    let mut deleg = targets_plain();
    deleg.delegations = Some(Delegations {
        keys: BTreeMap::from([(vendor.key_id(), vendor.public_key())]),
        roles: Some(vec![DelegatedRole {
            name: "vendor-ingenico".into(),
            keyids: vec![vendor.key_id()],
            threshold: 1,
            terminating: true,
            paths: Some(vec!["drivers/ingenico/*".into()]),
            path_hash_prefixes: None,
            extra: BTreeMap::new(),
        }]),
        extra: BTreeMap::new(),
    });
    let mut both: Value = serde_json::from_slice(&signed(deleg, &[&k.targets]).to_bytes()).unwrap();
    both["signed"]["delegations"]["roles"][0]["path_hash_prefixes"] = json!(["8f"]);
    add(
        "delegation-paths-and-prefixes",
        case(
            "Signed targets delegating to a role with both paths and path_hash_prefixes (spec 4.5: exactly one).",
            "Invalid",
            &root,
            vec![(
                "candidate.targets.json",
                raw_signed(both["signed"].clone(), &[&k.targets]),
            )],
        ),
    );
    let mut no_hashes: Value = serde_json::from_slice(&targets(&k).to_bytes()).unwrap();
    {
        let t = no_hashes["signed"]["targets"].as_object_mut().unwrap();
        let entry = t.values_mut().next().unwrap();
        entry.as_object_mut().unwrap().remove("hashes");
    }
    add(
        "target-without-hashes",
        case(
            "Signed targets listing a target with no hashes, which could not be verified when downloaded (spec 4.5 HASHES).",
            "Schema",
            &root,
            vec![(
                "candidate.targets.json",
                raw_signed(no_hashes["signed"].clone(), &[&k.targets]),
            )],
        ),
    );
    add(
        "not-an-object",
        case(
            "A timestamp.json that is a JSON array holding a valid timestamp document (spec 4.2).",
            "Schema",
            &root,
            vec![("candidate.timestamp.json", {
                let inner: Value = serde_json::from_slice(&timestamp(&k, 1, 1).to_bytes()).unwrap();
                pretty(&json!([inner]))
            })],
        ),
    );
    out
}
