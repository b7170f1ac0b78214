//! Every file in the hostile corpus (`tests/fixtures/hostile/`) is refused, each for the
//! reason it was made.
//!
//! Layout: one folder per case, holding
//! - `README`: one line saying what the case proves;
//! - `expect`: the error kind the case must be refused with (alternatives separated by `|`);
//! - `root.json`: the trusted root (well-formed and self-signed: a fixture whose root is bad
//!   would prove nothing);
//! - `trusted.ROLE.json` (optional): metadata the client already trusts, for rollback cases;
//! - `candidate.ROLE.json`: the file under test, read as ROLE.
//!
//! The client steps applied are the specification's (5.3 root, 5.4 timestamp, 5.5 snapshot,
//! 5.6 targets): parse strictly, check signatures against the trusted root, check versions
//! against what is trusted, check expiry against a fixed update start time
//! (2026-06-01T00:00:00Z).
//!
//! The fixtures are committed JSON made by the generator at the end of this file, with fixed
//! keys and deterministic signatures: `committed_fixtures_are_what_the_generator_makes`
//! checks they are, and `OTTER_WRITE_HOSTILE_FIXTURES=1 cargo test -p otter-keys --test
//! hostile_fixtures` rewrites them. The oversized case is made at test time instead.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::now;
use otter_keys::canonical::{CanonicalError, DEFAULT_MAX_METADATA_BYTES};
use otter_keys::metadata::{
    check_no_rollback, Metadata, MetadataError, Root, Snapshot, Targets, Timestamp,
};

/// One case: file name to contents.
type Case = BTreeMap<String, Vec<u8>>;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile")
}

/// The short name of an error, as written in `expect` files.
fn kind(e: &MetadataError) -> &'static str {
    match e {
        MetadataError::Json(CanonicalError::TooLarge { .. }) => "TooLarge",
        MetadataError::Json(CanonicalError::Malformed(_)) => "Malformed",
        MetadataError::Json(CanonicalError::NotCanonicalizable(_)) => "NotCanonicalizable",
        MetadataError::Schema(_) => "Schema",
        MetadataError::Invalid(_) => "Invalid",
        MetadataError::WrongType { .. } => "WrongType",
        MetadataError::SpecVersion(_) => "SpecVersion",
        MetadataError::ThresholdNotMet { .. } => "ThresholdNotMet",
        MetadataError::Expired { .. } => "Expired",
        MetadataError::Version { .. } => "Version",
    }
}

fn read<T: otter_keys::metadata::Role>(bytes: &[u8]) -> Result<Metadata<T>, MetadataError> {
    Metadata::<T>::from_bytes(bytes, DEFAULT_MAX_METADATA_BYTES)
}

/// Applies the client's checks to the case's candidate. `Ok` means a client would accept it.
fn judge(case: &Case) -> Result<(), MetadataError> {
    let root = read::<Root>(&case["root.json"]).expect("the trusted root.json must parse");
    root.verify_self()
        .expect("the trusted root.json must be signed by its own root keys");
    let candidates: Vec<&String> = case
        .keys()
        .filter(|n| n.starts_with("candidate."))
        .collect();
    assert_eq!(candidates.len(), 1, "exactly one candidate.ROLE.json");
    let name = candidates[0];
    let role = name
        .strip_prefix("candidate.")
        .and_then(|n| n.strip_suffix(".json"))
        .expect("candidate.ROLE.json");
    let bytes = &case[name];
    let trusted = case.get(&format!("trusted.{role}.json"));
    let now = now();
    match role {
        "root" => {
            // 5.3.4 signatures (old and new), 5.3.5 version; 5.3.10 expiry of the final root.
            let new = read::<Root>(bytes)?;
            root.verify_successor(&new)?;
            new.check_expiry(now)
        }
        "timestamp" => {
            // 5.4.2 signatures, 5.4.3 rollback of itself and of the snapshot it names, 5.4.4.
            let new = read::<Timestamp>(bytes)?;
            root.verify_by(&new, "timestamp")?;
            if let Some(t) = trusted {
                let old = read::<Timestamp>(t).expect("trusted timestamp must parse");
                check_no_rollback("timestamp", old.signed().version, new.signed().version)?;
                check_no_rollback(
                    "snapshot",
                    old.signed().snapshot_meta()?.version,
                    new.signed().snapshot_meta()?.version,
                )?;
            }
            new.check_expiry(now)
        }
        "snapshot" => {
            // 5.5.3 signatures, 5.5.5 rollback, 5.5.6 expiry.
            let new = read::<Snapshot>(bytes)?;
            root.verify_by(&new, "snapshot")?;
            if let Some(t) = trusted {
                let old = read::<Snapshot>(t).expect("trusted snapshot must parse");
                check_no_rollback("snapshot", old.signed().version, new.signed().version)?;
                for (file, meta) in &old.signed().meta {
                    let found = new.signed().meta.get(file).map_or(0, |m| m.version);
                    check_no_rollback(file, meta.version, found)?;
                }
            }
            new.check_expiry(now)
        }
        "targets" => {
            // 5.6.3 signatures, 5.6.5 expiry.
            let new = read::<Targets>(bytes)?;
            root.verify_by(&new, "targets")?;
            new.check_expiry(now)
        }
        other => panic!("unknown candidate role {other:?}"),
    }
}

fn load_case(dir: &Path) -> Case {
    let mut case = Case::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        case.insert(name, std::fs::read(&path).unwrap());
    }
    case
}

fn load_corpus() -> BTreeMap<String, Case> {
    let mut corpus = BTreeMap::new();
    for entry in std::fs::read_dir(corpus_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            corpus.insert(name, load_case(&path));
        }
    }
    corpus
}

/// Checks one case against its `expect`; `Err` says what went wrong.
fn check_case(name: &str, case: &Case) -> Result<(), String> {
    for file in case.keys() {
        let known = file == "README"
            || file == "expect"
            || file == "root.json"
            || (file.starts_with("trusted.") || file.starts_with("candidate."))
                && file.ends_with(".json");
        if !known {
            return Err(format!("{name}: unexpected file {file:?}"));
        }
    }
    let readme = String::from_utf8(case.get("README").cloned().unwrap_or_default()).unwrap();
    if readme.trim().is_empty() || readme.trim().lines().count() != 1 {
        return Err(format!("{name}: README must be one line"));
    }
    let expect = String::from_utf8(case["expect"].clone()).unwrap();
    let allowed: Vec<&str> = expect.trim().split('|').collect();
    match judge(case) {
        Ok(()) => Err(format!(
            "{name}: ACCEPTED, expected {expect:?} ({})",
            readme.trim()
        )),
        Err(e) if allowed.contains(&kind(&e)) => {
            eprintln!("{name}: refused ({}): {e}", kind(&e));
            Ok(())
        }
        Err(e) => Err(format!(
            "{name}: refused for the wrong reason: {e} ({}), expected {}",
            kind(&e),
            expect.trim()
        )),
    }
}

#[test]
fn every_hostile_fixture_is_refused_for_the_reason_it_was_made() {
    let corpus = load_corpus();
    assert!(
        corpus.len() >= 20,
        "the corpus has {} cases: is {} there?",
        corpus.len(),
        corpus_dir().display()
    );
    let failures: Vec<String> = corpus
        .iter()
        .filter_map(|(name, case)| check_case(name, case).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_harness_accepts_a_well_formed_repository() {
    // Without this control, a harness that refused everything would pass the test above.
    for (role, case) in generator::valid_cases() {
        judge(&case).unwrap_or_else(|e| panic!("valid {role} refused: {e}"));
    }
}

#[test]
fn an_oversized_candidate_is_refused_before_parsing() {
    // Spec 5.4.1: timestamp.json is downloaded up to X bytes. One byte over the cap, made
    // here rather than committed (16 MiB).
    let (_, mut case) = generator::valid_cases()
        .into_iter()
        .find(|(role, _)| *role == "timestamp")
        .unwrap();
    let file = case.get_mut("candidate.timestamp.json").unwrap();
    file.resize(DEFAULT_MAX_METADATA_BYTES + 1, b' ');
    match judge(&case) {
        Err(MetadataError::Json(CanonicalError::TooLarge { len, max })) => {
            assert_eq!(
                (len, max),
                (DEFAULT_MAX_METADATA_BYTES + 1, DEFAULT_MAX_METADATA_BYTES)
            )
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn committed_fixtures_are_what_the_generator_makes() {
    let generated = generator::hostile_cases();
    if std::env::var_os("OTTER_WRITE_HOSTILE_FIXTURES").is_some() {
        for (name, case) in &generated {
            let dir = corpus_dir().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            for (file, bytes) in case {
                std::fs::write(dir.join(file), bytes).unwrap();
            }
        }
    }
    let committed = load_corpus();
    let mut differences = Vec::new();
    for (name, case) in &generated {
        match committed.get(name) {
            None => differences.push(format!("{name}: missing")),
            Some(c) if c != case => differences.push(format!("{name}: differs")),
            Some(_) => {}
        }
    }
    for name in committed.keys() {
        if !generated.contains_key(name) {
            differences.push(format!("{name}: not made by the generator"));
        }
    }
    assert!(
        differences.is_empty(),
        "{}\nregenerate with: OTTER_WRITE_HOSTILE_FIXTURES=1 cargo test -p otter-keys --test hostile_fixtures",
        differences.join("\n")
    );
}

/// The generator of the corpus, a list of cases (hence its own file).
#[path = "hostile_fixtures/generator.rs"]
mod generator;
