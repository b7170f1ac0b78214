//! The full-loop demo (`deploy/demo.sh`) as an end-to-end test: run with the workspace's
//! binaries (`OTTER_BIN_DIR`), it must report every one of its steps done, in order, show the
//! rollback of the release whose health check fails, restore a database whose content hash is
//! the one it backed up (and differs from the damaged one), and leave nothing behind: the
//! server it started no longer answers and its scratch directory is gone. Without the shared
//! sales database tool (a fresh clone) it makes its own database. A step that fails stops
//! the demo with a message naming the step, and the same clean-up.
//!
//! The binaries are taken from the target dir next to this test executable: build them
//! first (`cargo build --workspace`; `cargo test --workspace` does).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{bin, show};

const STEPS: usize = 12;

/// Runs `deploy/demo.sh` with the test build's binaries and `TMPDIR=tmp` (its scratch
/// directory goes there), `extra` environment variables added.
fn demo(tmp: &Path, extra: &[(&str, &Path)]) -> Output {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let bin_dir: PathBuf = bin("otter-server").parent().unwrap().to_owned();
    for b in ["otter-keys", "otter-agent"] {
        bin(b);
    }
    let mut c = Command::new("bash");
    c.arg(repo.join("deploy/demo.sh"));
    for (k, _) in std::env::vars() {
        if k.starts_with("OTTER_") || k.starts_with("AWS_") {
            c.env_remove(k);
        }
    }
    c.env("OTTER_BIN_DIR", &bin_dir)
        .env("OTTER_KEYS_SCRYPT_LOG_N", "10")
        .env("TMPDIR", tmp)
        .env("CI", "true")
        .stdin(std::process::Stdio::null());
    for (k, v) in extra {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// The value after `prefix` on the first stdout line holding it (trimmed).
fn after<'a>(stdout: &'a str, prefix: &str) -> Option<&'a str> {
    stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(prefix))
        .map(str::trim)
}

/// The server the demo started (its "server process PID" line) is gone, and the demo's
/// scratch directory under `tmp` is too.
fn assert_nothing_left(stdout: &str, tmp: &Path, out: &Output) {
    let pid: u32 = after(stdout, "server process ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no 'server process PID' line: {}", show(out)));
    // The pid may have been reused since, but not by a process of this demo.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains("otter-demo."),
        "the demo's server (pid {pid}) still runs after the demo ended"
    );
    let left: Vec<_> = std::fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with("otter-demo."))
        .collect();
    assert!(left.is_empty(), "scratch directories left: {left:?}");
}

#[test]
fn the_demo_runs_every_step_rolls_back_restores_the_backed_up_database_and_cleans_up() {
    let stdout = full_run(None);
    // The reference sales database tool, when the shared tools are beside the repository.
    let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/pos_db.py");
    if tool.exists() {
        assert!(stdout.contains("made with pos_db.py"), "{stdout}");
    }
}

/// A fresh clone without `../shared`: the demo makes its sales database with python3's sqlite3.
#[test]
fn the_demo_makes_its_own_sales_database_when_the_shared_tool_is_absent() {
    let stdout = full_run(Some(Path::new("/nonexistent/pos_db.py")));
    assert!(stdout.contains("made with python3's sqlite3"), "{stdout}");
}

/// Runs the whole demo (with `pos_db` as `OTTER_POS_DB` if given) and checks every claim of
/// `the_demo_runs_every_step_...`; returns its stdout.
fn full_run(pos_db: Option<&Path>) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let extra: Vec<(&str, &Path)> = pos_db.map(|p| ("OTTER_POS_DB", p)).into_iter().collect();
    let out = demo(tmp.path(), &extra);
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();

    // Every step begins and is reported done, in order, and the demo says it finished.
    let mut at = 0;
    for n in 1..=STEPS {
        for marker in [format!("[{n}/{STEPS}] "), format!("[{n}/{STEPS}] done: ")] {
            let found = stdout[at..]
                .find(&marker)
                .unwrap_or_else(|| panic!("{marker:?} missing or out of order: {}", show(&out)));
            at += found + marker.len();
        }
    }
    assert!(
        stdout
            .lines()
            .last()
            .is_some_and(|l| l == format!("demo: all {STEPS} steps done")),
        "{}",
        show(&out)
    );

    // All three kinds were installed by the first update.
    for installed in [
        "pos-firmware: installed 1.0.0",
        "pos-printer-driver: installed 2.1.0",
        "pos-hotfix: installed 1.0.1",
    ] {
        assert!(stdout.contains(installed), "{installed}: {}", show(&out));
    }
    // The release whose health check exits 1 was rolled back by the agent.
    assert!(
        stdout.contains("pos-firmware: 1.1.0 rolled back to 1.0.0: health check failed"),
        "{}",
        show(&out)
    );
    assert!(
        stdout.contains("done: rolled back: pos-firmware 1.1.0"),
        "{}",
        show(&out)
    );

    // The restored database has the content it had when backed up, not the damaged one.
    let hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let backed_up = after(&stdout, "content hash of the database when backed up:").unwrap();
    let damaged = after(&stdout, "content hash now:").unwrap();
    let before = after(&stdout, "content hash when backed up:").unwrap();
    let restored = after(&stdout, "content hash after restore:").unwrap();
    assert!(hex(backed_up), "{backed_up}");
    assert_eq!(before, backed_up);
    assert_eq!(restored, backed_up, "{}", show(&out));
    assert_ne!(
        damaged,
        backed_up,
        "the damage changed nothing: {}",
        show(&out)
    );
    assert!(
        stdout.contains("restored backup #1 into "),
        "the agent restored: {}",
        show(&out)
    );

    assert_nothing_left(&stdout, tmp.path(), &out);
    stdout
}

#[test]
fn a_failing_step_stops_the_demo_with_a_clear_message_and_stops_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    // A sales-database tool that fails: step 5, after the server has started.
    let tool = tmp.path().join("broken_pos_db.py");
    std::fs::write(
        &tool,
        "import sys\nsys.stderr.write('disk quota exceeded\\n')\nsys.exit(3)\n",
    )
    .unwrap();
    let out = demo(tmp.path(), &[("OTTER_POS_DB", &tool)]);
    assert!(!out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("[4/12] done: "), "{}", show(&out));
    assert!(!stdout.contains("[5/12] done: "), "{}", show(&out));
    assert!(
        stderr.contains("demo: FAILED at step 5 (Creating the terminal's sample sales database)"),
        "{}",
        show(&out)
    );
    assert!(
        stderr.contains("disk quota exceeded"),
        "the failing command's output is shown: {}",
        show(&out)
    );
    assert!(!stdout.contains("steps done"), "{}", show(&out));
    std::fs::remove_file(&tool).unwrap();
    assert_nothing_left(&stdout, tmp.path(), &out);
}

#[test]
fn the_demo_refuses_a_missing_binary_directory_before_starting_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-dir");
    let out = demo(tmp.path(), &[("OTTER_BIN_DIR", &missing)]);
    assert!(!out.status.success(), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("demo: FAILED at step 1") && stderr.contains("is not a directory"),
        "{}",
        show(&out)
    );
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}
