#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Power loss during apply and rollback. This test binary (no harness) re-runs itself as
//! the trial program: each trial copies a prepared install root, starts an install (or a
//! rollback) in a child process, kills it with SIGKILL after a seeded random delay spread
//! over the whole operation, re-opens the root with `Applier::open` and checks that every
//! component's `current` tree is byte-for-byte the old or the new version (files, modes,
//! nothing more, nothing less) and that the journal agrees with the link.
//!
//! `OTTER_APPLY_TRIALS` sets the number of trials (default 200, half installs, half
//! rollbacks), `OTTER_APPLY_SEED` the seed. A second scenario checks that a health check
//! that crashes the agent every time is rolled back after `max_failed_starts` starts.

mod apply_common;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use apply_common::{copy_tree, current, link, read_tree, Spec};
use otter_agent::apply::{Applier, ApplyConfig, Expected, Kind};

const ROLE: &str = "OTTER_APPLY_TRIAL_ROLE";
const APP: &str = "pos-app";
const READER: &str = "reader";

fn config() -> ApplyConfig {
    ApplyConfig {
        health_timeout_secs: 10,
        hook_timeout_secs: 10,
        max_failed_starts: 3,
        ..ApplyConfig::default()
    }
}

/// The trial program: one operation on an install root, then exit 0 (or 3 on error).
fn child(role: &str) -> ! {
    let var = |k: &str| std::env::var(k).unwrap();
    let root = PathBuf::from(var("OTTER_APPLY_TRIAL_ROOT"));
    let (mut a, _) = match Applier::open(&root, config()) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("trial: open: {e}");
            std::process::exit(3)
        }
    };
    let result = match role {
        "install" => {
            let expected = Expected {
                name: var("OTTER_APPLY_TRIAL_NAME"),
                version: semver::Version::parse(&var("OTTER_APPLY_TRIAL_VERSION")).unwrap(),
                kind: Kind::Patch,
                target: String::new(),
            };
            a.install(Path::new(&var("OTTER_APPLY_TRIAL_BUNDLE")), &expected)
                .map(|_| ())
        }
        "rollback" => a.rollback(&var("OTTER_APPLY_TRIAL_NAME")).map(|_| ()),
        _ => Ok(()),
    };
    if let Err(e) = result {
        eprintln!("trial: {role}: {e}");
        std::process::exit(3)
    }
    std::process::exit(0)
}

/// splitmix64: a small seeded generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn spec(version: &str) -> Spec {
    let mut s = Spec::new(APP, version)
        .script("bin/health", "test -x bin/app && test -f etc/app.conf")
        .health(&["bin/health"]);
    for i in 0..12 {
        let body = format!("{version} file {i}\n").repeat(200 + i * 50);
        s.files.push((
            format!("lib/part{i}-{version}.dat"),
            body.into_bytes(),
            i % 3 == 0,
        ));
    }
    s
}

struct Setup {
    work: tempfile::TempDir,
    old: Spec,
    new: Spec,
    reader: Spec,
    new_bundle: PathBuf,
    /// Root with reader 1.0.0 and pos-app 1.0.0 (install trials go to 2.0.0).
    before_install: PathBuf,
    /// Root with reader 1.0.0 and pos-app 1.0.0 then 2.0.0 (rollback trials go to 1.0.0).
    before_rollback: PathBuf,
}

fn setup() -> Setup {
    let work = tempfile::tempdir().unwrap();
    let (old, new, reader) = (spec("1.0.0"), spec("2.0.0"), Spec::new(READER, "1.0.0"));
    let before_install = work.path().join("before-install");
    {
        let (mut a, _) = Applier::open(&before_install, config()).unwrap();
        a.install(&reader.build(work.path()), &reader.expected())
            .unwrap();
        a.install(&old.build(work.path()), &old.expected()).unwrap();
    }
    let new_bundle = new.build(work.path());
    let before_rollback = work.path().join("before-rollback");
    copy_tree(&before_install, &before_rollback);
    {
        let (mut a, _) = Applier::open(&before_rollback, config()).unwrap();
        a.install(&new_bundle, &new.expected()).unwrap();
    }
    Setup {
        work,
        old,
        new,
        reader,
        new_bundle,
        before_install,
        before_rollback,
    }
}

fn spawn(role: &str, root: &Path, s: &Setup) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .env(ROLE, role)
        .env("OTTER_APPLY_TRIAL_ROOT", root)
        .env("OTTER_APPLY_TRIAL_NAME", APP)
        .env("OTTER_APPLY_TRIAL_VERSION", &s.new.version)
        .env("OTTER_APPLY_TRIAL_BUNDLE", &s.new_bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// How long one uncut operation takes (the slowest of 4: the machine may be busy).
/// Two run at once, as in the trials.
fn measure(role: &str, template: &Path, s: &Setup) -> Duration {
    let mut times = Vec::new();
    for i in 0..4 {
        let root = s.work.path().join(format!("measure-{role}-{i}"));
        copy_tree(template, &root);
        let t = Instant::now();
        let out = spawn(role, &root, s).wait_with_output().unwrap();
        times.push(t.elapsed());
        assert!(
            out.status.success(),
            "{role}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
    times.into_iter().max().unwrap_or_default()
}

/// Re-opens a killed root and checks it; returns (is the new version active, recovered states).
fn check(root: &Path, s: &Setup, old: &Spec, new: &Spec, what: &str) -> (bool, Vec<String>) {
    let (a, rec) =
        Applier::open(root, config()).unwrap_or_else(|e| panic!("{what}: re-open failed: {e}"));
    let installed = a.installed().unwrap();
    for (name, want_old, want_new) in [(APP, old, new), (READER, &s.reader, &s.reader)] {
        let version = installed
            .get(name)
            .unwrap_or_else(|| panic!("{what}: {name} not installed after recovery"));
        assert_eq!(
            link(root, name),
            Some(version.to_string()),
            "{what}: the journal and the current link of {name} disagree"
        );
        let tree = read_tree(&current(root, name));
        let want = if version.to_string() == want_new.version {
            want_new
        } else {
            want_old
        };
        assert_eq!(
            version.to_string(),
            want.version,
            "{what}: {name} is at {version}"
        );
        assert!(
            tree == want.tree(),
            "{what}: {name} {version} is not byte-for-byte that version"
        );
    }
    for e in a.history(1000).unwrap() {
        assert!(
            ["committed", "rolled_back", "aborted"].contains(&e.state.as_str()),
            "{what}: journal entry {} left in {}",
            e.id,
            e.state
        );
    }
    for sub in ["staging", "trash"] {
        assert!(
            std::fs::read_dir(root.join(sub)).unwrap().next().is_none(),
            "{what}: {sub} not emptied"
        );
    }
    let on_new = installed[APP].to_string() == new.version;
    (on_new, rec.into_iter().map(|r| r.found_state).collect())
}

fn power_loss_trials() {
    let trials: usize = std::env::var("OTTER_APPLY_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let seed: u64 = std::env::var("OTTER_APPLY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x07de_a5ed);
    let s = setup();
    let install_time = measure("install", &s.before_install, &s);
    let rollback_time = measure("rollback", &s.before_rollback, &s);
    println!(
        "apply power loss: {trials} trials, seed {seed}; one install takes {install_time:?}, one rollback {rollback_time:?}"
    );
    // Kill delays are drawn over 1.2 times the measured span; the span adapts when ten
    // trials in a row all end on one side (the machine's load changes as other builds run).
    let spans = std::sync::Mutex::new([(install_time, 0usize, 0usize), (rollback_time, 0, 0)]);
    let started = Instant::now();
    let results: Vec<(bool, bool, Vec<String>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let s = &s;
                let spans = &spans;
                scope.spawn(move || {
                    let mut out = Vec::new();
                    for i in (w..trials).step_by(2) {
                        let mut rng = Rng(seed ^ (i as u64).wrapping_mul(0x1000_0001));
                        let is_install = i % 2 == 0;
                        let (role, template) = if is_install {
                            ("install", &s.before_install)
                        } else {
                            ("rollback", &s.before_rollback)
                        };
                        let k = usize::from(!is_install);
                        let span = spans.lock().unwrap()[k].0;
                        let root = s.work.path().join(format!("trial-{i}"));
                        copy_tree(template, &root);
                        let delay = span.mul_f64(rng.unit() * 1.2);
                        let mut c = spawn(role, &root, s);
                        std::thread::sleep(delay);
                        let _ = c.kill(); // SIGKILL
                        let status = c.wait().unwrap();
                        let mut what =
                            format!("trial {i} ({role}, killed after {delay:?}, {status})");
                        // One trial in three also cuts the recovery that follows.
                        if rng.unit() < 1.0 / 3.0 {
                            let again = span.mul_f64(rng.unit());
                            let mut c = spawn("open", &root, s);
                            std::thread::sleep(again);
                            let _ = c.kill();
                            let status = c.wait().unwrap();
                            what.push_str(&format!(
                                ", then recovery killed after {again:?}, {status}"
                            ));
                        }
                        let (old, new) = if is_install {
                            (&s.old, &s.new)
                        } else {
                            (&s.new, &s.old)
                        };
                        let (on_new, states) = check(&root, s, old, new, &what);
                        let completed = if is_install { on_new } else { !on_new };
                        {
                            let mut sp = spans.lock().unwrap();
                            let (span, n, done) = &mut sp[k];
                            *n += 1;
                            *done += usize::from(completed);
                            if *n == 10 {
                                if *done == 0 {
                                    *span *= 2;
                                } else if *done == 10 {
                                    *span /= 2;
                                }
                                (*n, *done) = (0, 0);
                            }
                        }
                        out.push((is_install, completed, states));
                        std::fs::remove_dir_all(&root).unwrap();
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let mut tally: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut recovered: BTreeMap<String, usize> = BTreeMap::new();
    for (is_install, completed, states) in &results {
        let op = if *is_install { "install" } else { "rollback" };
        *tally
            .entry((op, if *completed { "new" } else { "old" }))
            .or_default() += 1;
        for st in states {
            *recovered.entry(format!("{op}:{st}")).or_default() += 1;
        }
    }
    println!(
        "apply power loss: outcomes {tally:?}; recovered from {recovered:?}; {:?}; kill spans at the end {:?}",
        started.elapsed(),
        spans.lock().unwrap().map(|(d, _, _)| d)
    );
    assert_eq!(results.len(), trials);
    if trials >= 50 {
        // The kills are spread over the operation: both outcomes occur.
        for op in ["install", "rollback"] {
            for end in ["old", "new"] {
                assert!(
                    tally.get(&(op, end)).copied().unwrap_or(0) > 0,
                    "no {op} trial ended {end}: {tally:?}"
                );
            }
        }
        assert!(
            recovered.len() >= 2,
            "kills never cut an operation: {recovered:?}"
        );
    }
}

/// A health check that kills the agent every time: each re-open counts a failed start, and
/// after `max_failed_starts` the engine rolls back by itself.
fn crash_loop_rolls_back() {
    let s = setup();
    let crashing = spec("3.0.0").script("bin/crash", "kill -9 $PPID; sleep 5");
    let mut crashing = crashing;
    crashing.health = Some(vec!["bin/crash".into()]);
    let bundle = crashing.build(s.work.path());
    let root = s.work.path().join("crash-loop");
    copy_tree(&s.before_install, &root);
    let run = |role: &str| {
        Command::new(std::env::current_exe().unwrap())
            .env(ROLE, role)
            .env("OTTER_APPLY_TRIAL_ROOT", &root)
            .env("OTTER_APPLY_TRIAL_NAME", APP)
            .env("OTTER_APPLY_TRIAL_VERSION", &crashing.version)
            .env("OTTER_APPLY_TRIAL_BUNDLE", &bundle)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // Install, then two restarts: each health trial kills the agent.
    for role in ["install", "open", "open"] {
        let out = run(role);
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{role}: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            link(&root, APP).as_deref(),
            Some("3.0.0"),
            "the trial runs on the new version"
        );
    }
    // The third restart finds 3 cut trials and rolls back without starting a fourth.
    let out = run("open");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (a, rec) = Applier::open(&root, config()).unwrap();
    assert!(rec.is_empty(), "{rec:?}");
    assert_eq!(a.installed().unwrap()[APP].to_string(), "1.0.0");
    assert_eq!(read_tree(&current(&root, APP)), s.old.tree());
    let h = &a.history(1).unwrap()[0];
    assert_eq!((h.state.as_str(), h.starts), ("rolled_back", 3), "{h:?}");
    assert!(
        h.reason.as_deref().unwrap_or("").contains("cut 3 times"),
        "{h:?}"
    );
    assert!(!root.join("components/pos-app/3.0.0").exists());
    println!("apply crash loop: rolled back after 3 cut health trials");
}

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        child(&role);
    }
    if std::env::args().any(|a| a == "--list") {
        println!("apply_power_loss: test");
        return;
    }
    crash_loop_rolls_back();
    power_loss_trials();
    println!("test result: ok. apply_power_loss passed");
}
