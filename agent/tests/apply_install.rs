#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Install, upgrade, health failures and timeouts, hooks, pruning and manual rollback
//! (library and `otter-agent rollback`) on real install roots.

mod apply_common;

use std::collections::BTreeMap;
use std::process::Command;

use apply_common::{current, link, quick_config, read_tree, Spec};
use otter_agent::apply::{Applier, ApplyConfig, ApplyError, Hooks, JournalView, Outcome};

fn v(s: &str) -> semver::Version {
    semver::Version::parse(s).unwrap()
}

#[test]
fn install_then_upgrade_switches_atomically_and_keeps_the_previous() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let (mut a, rec) = Applier::open(&root, quick_config()).unwrap();
    assert!(rec.is_empty());
    assert!(a.installed().unwrap().is_empty());

    let s1 = Spec::new("pos-app", "1.0.0")
        .script("bin/health", "test -f etc/app.conf")
        .health(&["bin/health"]);
    let o = a.install(&s1.build(work.path()), &s1.expected()).unwrap();
    assert_eq!(
        o,
        Outcome::Installed {
            name: "pos-app".into(),
            from: None,
            to: v("1.0.0")
        }
    );
    assert_eq!(link(&root, "pos-app").as_deref(), Some("1.0.0"));
    assert_eq!(read_tree(&current(&root, "pos-app")), s1.tree());

    let s2 = Spec::new("pos-app", "1.1.0")
        .script("bin/health", "exit 0")
        .health(&["./bin/health"]);
    let o = a.install(&s2.build(work.path()), &s2.expected()).unwrap();
    assert_eq!(
        o,
        Outcome::Installed {
            name: "pos-app".into(),
            from: Some(v("1.0.0")),
            to: v("1.1.0")
        }
    );
    assert_eq!(read_tree(&current(&root, "pos-app")), s2.tree());
    assert_eq!(
        a.installed().unwrap(),
        BTreeMap::from([("pos-app".to_string(), v("1.1.0"))])
    );
    // The previous version is kept whole for rollback.
    assert_eq!(read_tree(&root.join("components/pos-app/1.0.0")), s1.tree());

    // The same version again changes nothing.
    let o = a.install(&s2.build(work.path()), &s2.expected()).unwrap();
    assert_eq!(
        o,
        Outcome::Installed {
            name: "pos-app".into(),
            from: Some(v("1.1.0")),
            to: v("1.1.0")
        }
    );

    // A third version: keep_versions = 2 keeps 1.2.0 (active) and 1.1.0 (previous) only.
    let s3 = Spec::new("pos-app", "1.2.0");
    a.install(&s3.build(work.path()), &s3.expected()).unwrap();
    let mut dirs: Vec<String> = std::fs::read_dir(root.join("components/pos-app"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(dirs, ["1.1.0", "1.2.0", "current"]);

    let h = a.history(10).unwrap();
    assert_eq!(h.len(), 3, "{h:?}");
    assert!(
        h.iter()
            .all(|e| e.state == "committed" && e.op == "install"),
        "{h:?}"
    );
    assert_eq!(h[0].to.as_deref(), Some("1.2.0"));
    assert_eq!(h[0].target.as_deref(), Some("pos-app-1.2.0.tar.zst"));
    // Health ran once for 1.0.0 (the start counter was raised before it).
    assert_eq!(h[2].starts, 1);

    // A read-only view works while the Applier holds the root (for `otter-agent status`).
    let view = JournalView::open(&root).unwrap();
    assert_eq!(view.installed().unwrap(), a.installed().unwrap());
    assert_eq!(view.history(10).unwrap(), h);
    assert!(JournalView::open(&work.path().join("never-used"))
        .unwrap()
        .installed()
        .unwrap()
        .is_empty());

    // Re-opening finds nothing to recover and the same state.
    drop(a);
    let (a, rec) = Applier::open(&root, quick_config()).unwrap();
    assert!(rec.is_empty(), "{rec:?}");
    assert_eq!(a.installed().unwrap()["pos-app"], v("1.2.0"));
}

#[test]
fn a_second_applier_on_the_same_root_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let (_a, _) = Applier::open(work.path(), quick_config()).unwrap();
    let err = Applier::open(work.path(), quick_config()).unwrap_err();
    assert!(matches!(err, ApplyError::Busy(_)), "{err}");
}

#[test]
fn a_failing_health_check_rolls_back_to_the_previous_version() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let (mut a, _) = Applier::open(&root, quick_config()).unwrap();
    let s1 = Spec::new("reader", "2.0.0");
    a.install(&s1.build(work.path()), &s1.expected()).unwrap();

    let bad = Spec::new("reader", "2.1.0")
        .script(
            "bin/health",
            "echo card reader self-test failed >&2; exit 3",
        )
        .health(&["bin/health"]);
    let o = a.install(&bad.build(work.path()), &bad.expected()).unwrap();
    let Outcome::RolledBack {
        name,
        from,
        to,
        reason,
    } = o
    else {
        panic!("{o:?}")
    };
    assert_eq!(
        (name.as_str(), from, to),
        ("reader", v("2.1.0"), Some(v("2.0.0")))
    );
    assert!(
        reason.contains("health check failed") && reason.contains("self-test failed"),
        "{reason}"
    );
    assert_eq!(link(&root, "reader").as_deref(), Some("2.0.0"));
    assert_eq!(read_tree(&current(&root, "reader")), s1.tree());
    assert!(
        !root.join("components/reader/2.1.0").exists(),
        "the failed version is removed"
    );
    assert_eq!(a.installed().unwrap()["reader"], v("2.0.0"));
    let h = a.history(1).unwrap();
    assert_eq!(h[0].state, "rolled_back");
}

#[test]
fn a_health_check_past_its_deadline_is_killed_and_rolled_back() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let config = ApplyConfig {
        health_timeout_secs: 1,
        ..quick_config()
    };
    let (mut a, _) = Applier::open(&root, config).unwrap();
    let s1 = Spec::new("reader", "1.0.0");
    a.install(&s1.build(work.path()), &s1.expected()).unwrap();
    let slow = Spec::new("reader", "1.0.1")
        .script(
            "bin/health",
            "sleep 30 & echo $! > \"$OTTER_INSTALL_ROOT/../sleeper.pid\"; wait",
        )
        .health(&["bin/health"]);
    let started = std::time::Instant::now();
    let o = a
        .install(&slow.build(work.path()), &slow.expected())
        .unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let Outcome::RolledBack { reason, to, .. } = o else {
        panic!("{o:?}")
    };
    assert!(reason.contains("did not finish within"), "{reason}");
    assert_eq!(to, Some(v("1.0.0")));
    assert_eq!(read_tree(&current(&root, "reader")), s1.tree());
    // The whole process group was killed, the shell's own child too.
    let pid = std::fs::read_to_string(work.path().join("sleeper.pid")).unwrap();
    let stat = format!("/proc/{}/stat", pid.trim());
    let gone = (0..100).any(|_| {
        let alive = std::fs::read_to_string(&stat)
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false);
        if alive {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        !alive
    });
    assert!(
        gone,
        "the health check's child {} outlived its deadline",
        pid.trim()
    );
}

#[test]
fn a_failed_first_install_leaves_nothing_active() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let (mut a, _) = Applier::open(&root, quick_config()).unwrap();
    let bad = Spec::new("fresh", "0.1.0").health(&["/bin/false"]);
    let o = a.install(&bad.build(work.path()), &bad.expected()).unwrap();
    assert!(matches!(o, Outcome::RolledBack { to: None, .. }), "{o:?}");
    assert_eq!(link(&root, "fresh"), None);
    assert!(a.installed().unwrap().is_empty());
    assert!(!root.join("components/fresh/0.1.0").exists());
}

#[test]
fn hooks_run_per_kind_and_their_failures_abort_or_roll_back() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let marker = work.path().join("hooks.log");
    let sh = |cmd: String| Some(vec!["/bin/sh".to_string(), "-c".to_string(), cmd]);
    let mut config = quick_config();
    config.hooks.insert(
        "patch".into(),
        Hooks {
            pre_install: sh(format!(
                "echo pre $OTTER_COMPONENT $OTTER_VERSION from=$OTTER_FROM_VERSION >> {}",
                marker.display()
            )),
            post_install: sh(format!(
                "echo post $OTTER_VERSION >> {}; test \"$OTTER_VERSION\" != 3.0.0",
                marker.display()
            )),
        },
    );
    config.hooks.insert(
        "driver".into(),
        Hooks {
            pre_install: sh("exit 7".into()),
            post_install: None,
        },
    );
    let (mut a, _) = Applier::open(&root, config).unwrap();
    let s1 = Spec::new("app", "1.0.0");
    a.install(&s1.build(work.path()), &s1.expected()).unwrap();
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "pre app 1.0.0 from=\npost 1.0.0\n"
    );

    // The post-install hook fails for 3.0.0: rolled back to 1.0.0.
    let s3 = Spec::new("app", "3.0.0");
    let o = a.install(&s3.build(work.path()), &s3.expected()).unwrap();
    assert!(
        matches!(&o, Outcome::RolledBack { reason, .. } if reason.contains("post-install hook")),
        "{o:?}"
    );
    assert_eq!(read_tree(&current(&root, "app")), s1.tree());

    // A driver's pre-install hook fails: an error, nothing switched, nothing left behind.
    let mut d = Spec::new("drv", "1.0.0");
    d.kind = "driver".into();
    let err = a.install(&d.build(work.path()), &d.expected()).unwrap_err();
    assert!(
        matches!(&err, ApplyError::Hook { step, .. } if step == "pre-install hook"),
        "{err}"
    );
    assert!(err.to_string().contains("exit status: 7"), "{err}");
    assert_eq!(link(&root, "drv"), None);
    assert!(!root.join("components/drv/1.0.0").exists());
    assert_eq!(a.history(1).unwrap()[0].state, "aborted");

    // The bundle's own install command runs in the new version's directory before the switch.
    let mut s4 = Spec::new("app", "4.0.0").script("bin/setup", "echo set up > installed.flag");
    s4.install = Some(vec!["bin/setup".into()]);
    a.install(&s4.build(work.path()), &s4.expected()).unwrap();
    assert!(current(&root, "app").join("installed.flag").is_file());
}

#[test]
fn rollback_switches_back_and_forth_and_the_cli_does_it_too() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    let (mut a, _) = Applier::open(&root, quick_config()).unwrap();
    let err = a.rollback("pos-app").unwrap_err();
    assert!(matches!(err, ApplyError::NotInstalled(_)), "{err}");
    let s1 = Spec::new("pos-app", "1.0.0");
    let s2 = Spec::new("pos-app", "2.0.0");
    a.install(&s1.build(work.path()), &s1.expected()).unwrap();
    let err = a.rollback("pos-app").unwrap_err();
    assert!(matches!(err, ApplyError::NoPrevious(_)), "{err}");
    a.install(&s2.build(work.path()), &s2.expected()).unwrap();

    let o = a.rollback("pos-app").unwrap();
    assert!(
        matches!(&o, Outcome::RolledBack { from, to: Some(to), .. } if *from == v("2.0.0") && *to == v("1.0.0")),
        "{o:?}"
    );
    assert_eq!(read_tree(&current(&root, "pos-app")), s1.tree());
    assert_eq!(a.installed().unwrap()["pos-app"], v("1.0.0"));
    drop(a);

    // The CLI, on the same root: back to 2.0.0.
    let out = Command::new(env!("CARGO_BIN_EXE_otter-agent"))
        .args(["rollback", "pos-app", "--install-root"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "pos-app: rolled back from 1.0.0 to 2.0.0"
    );
    assert_eq!(read_tree(&current(&root, "pos-app")), s2.tree());

    // An unknown component: exit 1 with a clear message.
    let out = Command::new(env!("CARGO_BIN_EXE_otter-agent"))
        .args(["rollback", "nope", "--install-root"])
        .arg(&root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\"nope\" is not installed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (a, _) = Applier::open(&root, quick_config()).unwrap();
    assert_eq!(a.installed().unwrap()["pos-app"], v("2.0.0"));
    let h = a.history(2).unwrap();
    assert!(
        h.iter()
            .all(|e| e.op == "rollback" && e.state == "committed"),
        "{h:?}"
    );
}
