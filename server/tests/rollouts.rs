//! Rollouts against the real server on loopback: each change that alters what devices may
//! install is a new signed targets version (snapshot and timestamp follow) that verifies,
//! carrying the rollout it should; pause and abort sign percent 0 and no groups while the
//! server keeps the operator's percent for resume; the percent only goes up unless forced;
//! only operators and admins change rollouts; failing device reports halt a rollout by
//! themselves; the `rollout` subcommand drives the same API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use assert_cmd::Command;
use common::fleet::{enrolled_device, report};
use common::{api, bundle, client, config, fetch_and_verify, make_token, run, start, Running};
use serde_json::{json, Value};

const TARGET: &str = "pinpad-1.0.0.tar.zst";

/// The verified chain's targets version and the signed rollout of `target`.
async fn signed(c: &reqwest::Client, srv: &Running, target: &str) -> (u64, Value) {
    let chain = fetch_and_verify(c, srv).await;
    let t = chain.targets.signed();
    assert_eq!(
        chain.snapshot.signed().meta["targets.json"].version,
        t.version
    );
    let rollout = t.targets[target].extra["custom"]["rollout"].clone();
    (t.version, rollout)
}

async fn post(
    c: &reqwest::Client,
    srv: &Running,
    token: &str,
    path: &str,
    body: Value,
) -> (u16, Value) {
    api(
        c,
        "POST",
        &srv.url(&format!("/api/v1/rollouts/pinpad/1.0.0/{path}")),
        Some(token),
        Some(serde_json::to_vec(&body).unwrap()),
    )
    .await
}

#[test]
fn each_rollout_change_is_a_new_signed_targets_version() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, admin) = start(config(dir.path())).await;
        let admin = admin.unwrap();
        let c = client();
        let (_, publisher) = make_token(&c, &srv, &admin, "publisher").await;
        let (_, operator) = make_token(&c, &srv, &admin, "operator").await;
        let (_, auditor) = make_token(&c, &srv, &admin, "auditor").await;

        // Published at 10% to the pilot group.
        let (s, v) = api(
            &c,
            "POST",
            &srv.url("/api/v1/releases?percent=10&groups=pilot"),
            Some(&publisher),
            Some(bundle("pinpad", "1.0.0", &[("p", b"one")])),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        let (v0, r) = signed(&c, &srv, TARGET).await;
        assert_eq!(r, json!({"percent": 10, "groups": ["pilot"]}));
        let (s, v) = api(
            &c,
            "POST",
            &srv.url("/api/v1/releases?percent=101"),
            Some(&publisher),
            Some(bundle("pinpad", "1.0.1", &[("p", b"x")])),
        )
        .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("invalid_rollout"))
        );

        // Roles: publisher and auditor cannot change it; auditor and publisher can read it.
        for t in [&publisher, &auditor] {
            let (s, v) = post(&c, &srv, t, "percent", json!({"percent": 50})).await;
            assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")));
            let (s, v) = post(&c, &srv, t, "pause", json!({})).await;
            assert_eq!(s, 403, "{v}");
            let (s, v) = api(
                &c,
                "GET",
                &srv.url("/api/v1/rollouts/pinpad/1.0.0"),
                Some(t),
                None,
            )
            .await;
            assert_eq!(s, 200, "{v}");
            assert_eq!(v["rollout"]["percent"], 10);
        }
        assert_eq!(
            signed(&c, &srv, TARGET).await.0,
            v0,
            "refusals sign nothing"
        );

        // Raise.
        let (s, v) = post(&c, &srv, &operator, "percent", json!({"percent": 50})).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["versions"]["targets"], v0 + 1);
        let (v1, r) = signed(&c, &srv, TARGET).await;
        assert_eq!(
            (v1, r),
            (v0 + 1, json!({"percent": 50, "groups": ["pilot"]}))
        );

        // Lowering needs force.
        let (s, v) = post(&c, &srv, &operator, "percent", json!({"percent": 20})).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (409, Some("conflict")),
            "{v}"
        );
        assert_eq!(signed(&c, &srv, TARGET).await.0, v1);
        let (s, v) = post(
            &c,
            &srv,
            &operator,
            "percent",
            json!({"percent": 20, "force": true}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let (v2, r) = signed(&c, &srv, TARGET).await;
        assert_eq!(
            (v2, r),
            (v1 + 1, json!({"percent": 20, "groups": ["pilot"]}))
        );

        // Pause: nobody is signed, the percent is kept.
        let (s, v) = post(
            &c,
            &srv,
            &operator,
            "pause",
            json!({"reason": "call volume"}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["rollout"]["status"], "paused");
        assert_eq!(v["rollout"]["percent"], 20);
        let (v3, r) = signed(&c, &srv, TARGET).await;
        assert_eq!((v3, r), (v2 + 1, json!({"percent": 0, "groups": []})));
        // Pausing again changes nothing.
        let (s, v) = post(&c, &srv, &operator, "pause", json!({})).await;
        assert_eq!((s, &v["changed"]), (200, &json!(false)));
        // Raising while paused changes what resume restores, not what is signed.
        let (s, v) = post(&c, &srv, &operator, "percent", json!({"percent": 30})).await;
        assert_eq!(s, 200, "{v}");
        assert!(v["versions"].is_null(), "{v}");
        assert_eq!(signed(&c, &srv, TARGET).await.0, v3);

        // Resume: the stored percent and groups are signed again.
        let (s, v) = post(&c, &srv, &admin, "resume", json!({})).await;
        assert_eq!(s, 200, "{v}");
        let (v4, r) = signed(&c, &srv, TARGET).await;
        assert_eq!(
            (v4, r),
            (v3 + 1, json!({"percent": 30, "groups": ["pilot"]}))
        );

        // Groups.
        let (s, v) = post(
            &c,
            &srv,
            &operator,
            "groups",
            json!({"groups": ["lane-2", "lane-1", "lane-2"]}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let (v5, r) = signed(&c, &srv, TARGET).await;
        assert_eq!(
            (v5, r),
            (
                v4 + 1,
                json!({"percent": 30, "groups": ["lane-1", "lane-2"]})
            )
        );
        let (s, _) = post(&c, &srv, &operator, "groups", json!({"groups": ["a b"]})).await;
        assert_eq!(s, 400);

        // Abort: final.
        let (s, v) = post(&c, &srv, &operator, "abort", json!({"reason": "bad"})).await;
        assert_eq!(s, 200, "{v}");
        let (v6, r) = signed(&c, &srv, TARGET).await;
        assert_eq!((v6, r), (v5 + 1, json!({"percent": 0, "groups": []})));
        for (path, body) in [
            ("resume", json!({})),
            ("percent", json!({"percent": 90, "force": true})),
        ] {
            let (s, v) = post(&c, &srv, &operator, path, body).await;
            assert_eq!(s, 409, "{path}: {v}");
        }
        assert_eq!(signed(&c, &srv, TARGET).await.0, v6);

        // Unknown releases and bad bodies.
        let (s, _) = api(
            &c,
            "POST",
            &srv.url("/api/v1/rollouts/pinpad/9.9.9/pause"),
            Some(&operator),
            None,
        )
        .await;
        assert_eq!(s, 404);
        let (s, _) = post(&c, &srv, &operator, "percent", json!({"percent": "all"})).await;
        assert_eq!(s, 400);

        // Every change is in the audit log, in order, and the chain verifies.
        let (s, v) = api(&c, "GET", &srv.url("/api/v1/audit"), Some(&auditor), None).await;
        assert_eq!(s, 200, "{v}");
        let actions: Vec<&str> = v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["subject"] == "release:pinpad/1.0.0")
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        assert_eq!(
            actions,
            [
                "release.publish",
                "rollout.set_percent",
                "rollout.set_percent",
                "rollout.pause",
                "rollout.set_percent",
                "rollout.resume",
                "rollout.set_groups",
                "rollout.abort",
            ]
        );
        let (s, v) = api(
            &c,
            "GET",
            &srv.url("/api/v1/audit/verify"),
            Some(&auditor),
            None,
        )
        .await;
        assert_eq!(s, 200);
        assert!(v["broken"].is_null(), "{v}");
        let (s, _) = api(&c, "GET", &srv.url("/api/v1/audit"), Some(&operator), None).await;
        assert_eq!(s, 403);
        srv.stop().await;
    });
}

#[test]
fn failing_reports_halt_the_rollout_by_themselves() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.rollouts.min_reports = 3;
        cfg.rollouts.max_failure_rate = 0.5;
        let (srv, admin) = start(cfg).await;
        let admin = admin.unwrap();
        let c = client();
        let (_, operator) = make_token(&c, &srv, &admin, "operator").await;
        let (s, v) = api(
            &c,
            "POST",
            &srv.url("/api/v1/releases?percent=25"),
            Some(&admin),
            Some(bundle("pinpad", "1.0.0", &[("p", b"one")])),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        let (v0, _) = signed(&c, &srv, TARGET).await;
        let mut devices = Vec::new();
        for _ in 0..4 {
            devices.push(enrolled_device(&c, &srv, &admin, None).await);
        }
        let outcome = |result: &str| {
            json!({"installed": {"pinpad": "1.0.0"}, "health": "ok",
                   "last_update": {"target": TARGET, "result": result}})
        };
        // One failure of two reports: below min_reports, no halt.
        for (d, result) in devices.iter().zip(["success", "failed"]) {
            let (s, v) = report(&c, &srv, d, &outcome(result)).await;
            assert_eq!(s, 200, "{v}");
        }
        // The same device reporting its failure again still counts once.
        let (s, _) = report(&c, &srv, &devices[1], &outcome("failed")).await;
        assert_eq!(s, 200);
        let (v, r) = signed(&c, &srv, TARGET).await;
        assert_eq!((v, r), (v0, json!({"percent": 25, "groups": []})));
        let (_, show) = api(
            &c,
            "GET",
            &srv.url("/api/v1/rollouts/pinpad/1.0.0"),
            Some(&operator),
            None,
        )
        .await;
        assert_eq!(show["rollout"]["outcomes"]["failed"], 1);
        assert_eq!(show["rollout"]["outcomes"]["success"], 1);

        // A rollback makes 2 of 3: above half, the rollout halts.
        let (s, v) = report(&c, &srv, &devices[2], &outcome("rolled_back")).await;
        assert_eq!(s, 200, "{v}");
        let (v1, r) = signed(&c, &srv, TARGET).await;
        assert_eq!((v1, r), (v0 + 1, json!({"percent": 0, "groups": []})));
        let (_, show) = api(
            &c,
            "GET",
            &srv.url("/api/v1/rollouts/pinpad/1.0.0"),
            Some(&operator),
            None,
        )
        .await;
        assert_eq!(show["rollout"]["status"], "halted");
        assert_eq!(show["rollout"]["percent"], 25);
        assert!(show["rollout"]["reason"]
            .as_str()
            .unwrap()
            .contains("2 of 3"));

        // Further failures do not sign anything more.
        let (s, _) = report(&c, &srv, &devices[3], &outcome("failed")).await;
        assert_eq!(s, 200);
        assert_eq!(signed(&c, &srv, TARGET).await.0, v1);

        // Each new failure is counted in the metrics (a repeated report is not).
        let r = c
            .get(srv.url("/metrics"))
            .bearer_auth(&operator)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(
            text.contains("otter_rollout_failures_total{release=\"pinpad/1.0.0\"} 3"),
            "{text}"
        );

        // The halt is audited as the server's own.
        let (_, log) = api(&c, "GET", &srv.url("/api/v1/audit"), Some(&admin), None).await;
        let halt = log["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["action"] == "rollout.halt")
            .expect("the halt is audited")
            .clone();
        assert_eq!(halt["actor"], "server");
        assert_eq!(halt["subject"], "release:pinpad/1.0.0");
        let details: Value = serde_json::from_str(halt["details"].as_str().unwrap()).unwrap();
        assert_eq!(details["outcomes"]["failed"], 1);
        assert_eq!(details["outcomes"]["rolled_back"], 1);
        assert_eq!(details["targets_version"], v1);

        // The operator resumes: the stored percent is signed again.
        let (s, v) = post(&c, &srv, &operator, "resume", json!({})).await;
        assert_eq!(s, 200, "{v}");
        let (v2, r) = signed(&c, &srv, TARGET).await;
        assert_eq!((v2, r), (v1 + 1, json!({"percent": 25, "groups": []})));

        // Reports about unknown targets are stored and change no rollout.
        let unknown = json!({"last_update": {"target": "other-1.0.0.tar.zst", "result": "failed"}});
        let (s, _) = report(&c, &srv, &devices[0], &unknown).await;
        assert_eq!(s, 200);
        assert_eq!(signed(&c, &srv, TARGET).await.0, v2);
        srv.stop().await;
    });
}

fn cli(args: &[&str], token: &str) -> std::process::Output {
    Command::cargo_bin("otter-server")
        .unwrap()
        .args(args)
        .env("OTTER_TOKEN", token)
        .env_remove("OTTER_SERVER")
        .output()
        .unwrap()
}

#[test]
fn the_rollout_subcommand_drives_the_api() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, admin) = start(config(dir.path())).await;
        let admin = admin.unwrap();
        let c = client();
        let (_, operator) = make_token(&c, &srv, &admin, "operator").await;
        let (_, publisher) = make_token(&c, &srv, &admin, "publisher").await;
        let (s, v) = api(
            &c,
            "POST",
            &srv.url("/api/v1/releases?percent=5"),
            Some(&admin),
            Some(bundle("pinpad", "1.0.0", &[("p", b"one")])),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        let base = srv.url("");
        let run_cli = |args: Vec<String>, token: String| {
            tokio::task::spawn_blocking(move || {
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                cli(&a, &token)
            })
        };
        let args = |v: &[&str]| -> Vec<String> {
            let mut a: Vec<String> = v.iter().map(|s| s.to_string()).collect();
            a.extend(["--server".to_string(), base.clone()]);
            a
        };

        let out = run_cli(
            args(&[
                "rollout",
                "set",
                "pinpad",
                "1.0.0",
                "--percent",
                "40",
                "--groups",
                "pilot,lab",
            ]),
            operator.clone(),
        )
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            v["rollout"]["signed"],
            json!({"percent": 40, "groups": ["lab", "pilot"]})
        );
        assert_eq!(
            signed(&c, &srv, TARGET).await.1,
            json!({"percent": 40, "groups": ["lab", "pilot"]})
        );

        let out = run_cli(
            args(&["rollout", "set", "pinpad", "1.0.0", "--percent", "10"]),
            operator.clone(),
        )
        .await
        .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("force"));

        let out = run_cli(
            args(&["rollout", "pause", "pinpad", "1.0.0"]),
            publisher.clone(),
        )
        .await
        .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"));

        let out = run_cli(
            args(&[
                "rollout",
                "pause",
                "pinpad",
                "1.0.0",
                "--reason",
                "tills down",
            ]),
            operator.clone(),
        )
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            signed(&c, &srv, TARGET).await.1,
            json!({"percent": 0, "groups": []})
        );
        let out = run_cli(
            args(&["rollout", "show", "pinpad", "1.0.0"]),
            publisher.clone(),
        )
        .await
        .unwrap();
        assert!(out.status.success());
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["rollout"]["status"], "paused");
        assert_eq!(v["rollout"]["reason"], "tills down");
        let out = run_cli(
            args(&["rollout", "resume", "pinpad", "1.0.0"]),
            operator.clone(),
        )
        .await
        .unwrap();
        assert!(out.status.success());
        assert_eq!(
            signed(&c, &srv, TARGET).await.1,
            json!({"percent": 40, "groups": ["lab", "pilot"]})
        );
        let out = run_cli(
            args(&["rollout", "abort", "pinpad", "1.0.0"]),
            operator.clone(),
        )
        .await
        .unwrap();
        assert!(out.status.success());
        let out = run_cli(args(&["rollout", "list"]), operator.clone())
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["rollouts"][0]["status"], "aborted");
        srv.stop().await;
    });
}

mod crash {
    //! kill -9 while rollout changes are under way, many times: the store always holds a
    //! valid TUF state, and after a restart what is signed is exactly what the database's
    //! rollout says and what its newest audit entry recorded (one transaction).

    use std::io::{BufRead, BufReader};
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use otter_keys::hash::verify;
    use otter_keys::metadata::{Metadata, Root, Snapshot, Targets, Timestamp};
    use serde_json::{json, Value};

    const BIN: &str = env!("CARGO_BIN_EXE_otter-server");
    const MAX: usize = 1 << 24;

    struct Guard(Option<Child>);
    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(mut c) = self.0.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    fn serve(data: &Path) -> (Guard, String, Vec<String>) {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .env("OTTER_LOG", "warn")
            .env_remove("OTTER_CONFIG")
            .env_remove("OTTER_STORE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let guard = Guard(Some(child));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut before = Vec::new();
        loop {
            let line = rx.recv_timeout(Duration::from_secs(60)).expect("starts");
            if let Some(url) = line.strip_prefix("listening on ") {
                return (guard, url.trim().to_owned(), before);
            }
            before.push(line);
        }
    }

    /// The signed rollout of the release, from the store as a mirror would serve it.
    fn stored_rollout(store: &Path, target: &str) -> Value {
        let meta = store.join("repo/metadata");
        let read = |n: String| std::fs::read(meta.join(&n)).unwrap_or_else(|e| panic!("{n}: {e}"));
        let root = Metadata::<Root>::from_bytes(&read("1.root.json".into()), MAX).unwrap();
        root.verify_self().unwrap();
        let ts = Metadata::<Timestamp>::from_bytes(&read("timestamp.json".into()), MAX).unwrap();
        root.verify_by(&ts, "timestamp").unwrap();
        let sm = ts.signed().snapshot_meta().unwrap().clone();
        let sb = read(format!("{}.snapshot.json", sm.version));
        verify(&sb, sm.length, sm.hashes.as_ref().unwrap()).unwrap();
        let snap = Metadata::<Snapshot>::from_bytes(&sb, MAX).unwrap();
        root.verify_by(&snap, "snapshot").unwrap();
        let tm = snap.signed().meta["targets.json"].clone();
        let tb = read(format!("{}.targets.json", tm.version));
        verify(&tb, tm.length, tm.hashes.as_ref().unwrap()).unwrap();
        let targets = Metadata::<Targets>::from_bytes(&tb, MAX).unwrap();
        root.verify_by(&targets, "targets").unwrap();
        targets.signed().targets[target].extra["custom"]["rollout"].clone()
    }

    #[test]
    fn sigkill_during_rollout_changes_keeps_signed_database_and_audit_in_step() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (guard, base, lines) = serve(&data);
        let token = lines
            .iter()
            .find_map(|l| l.split(": ").nth(1).filter(|t| t.len() == 64))
            .expect("the first start prints the admin token")
            .to_owned();
        let client = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let r = client
            .post(format!("{base}/api/v1/releases?percent=1"))
            .bearer_auth(&token)
            .body(crate::common::bundle("pinpad", "1.0.0", &[("p", b"x")]))
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
        drop(guard);
        let target = super::TARGET;
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut committed = 0;
        for round in 0..14u64 {
            let (mut guard, base, _) = serve(&data);
            let signed = stored_rollout(&data.join("store"), target);
            let show: Value = client
                .get(format!("{base}/api/v1/rollouts/pinpad/1.0.0"))
                .bearer_auth(&token)
                .send()
                .unwrap()
                .json()
                .unwrap();
            let r = &show["rollout"];
            assert_eq!(
                r["signed"], signed,
                "round {round}: database and signed agree"
            );
            let expect = if r["status"] == "active" {
                json!({"percent": r["percent"], "groups": r["groups"]})
            } else {
                json!({"percent": 0, "groups": []})
            };
            assert_eq!(signed, expect, "round {round}");
            let log: Value = client
                .get(format!("{base}/api/v1/audit"))
                .bearer_auth(&token)
                .send()
                .unwrap()
                .json()
                .unwrap();
            let last = log["entries"].as_array().unwrap().last().unwrap().clone();
            if last["action"].as_str().unwrap().starts_with("rollout.") {
                let d: Value = serde_json::from_str(last["details"].as_str().unwrap()).unwrap();
                assert_eq!(
                    d["signed"], signed,
                    "round {round}: the audit entry matches"
                );
            }
            committed = log["entries"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["action"].as_str().unwrap().starts_with("rollout."))
                .count();
            // The next change: raise, pause or resume, killed after a random delay.
            let (path, body) = match round % 3 {
                0 => ("percent", json!({"percent": round + 2})),
                1 => ("pause", json!({})),
                _ => ("resume", json!({})),
            };
            let url = format!("{base}/api/v1/rollouts/pinpad/1.0.0/{path}");
            let (c, t) = (client.clone(), token.clone());
            let change = std::thread::spawn(move || c.post(url).bearer_auth(t).json(&body).send());
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let delay = Duration::from_millis(rng % 25);
            let start = Instant::now();
            while start.elapsed() < delay {
                std::thread::sleep(Duration::from_millis(1));
            }
            let mut child = guard.0.take().unwrap();
            child.kill().unwrap();
            child.wait().unwrap();
            let _ = change.join();
            // Dead server: the store holds a valid state.
            stored_rollout(&data.join("store"), target);
            // And the audit chain verifies.
            let out = Command::new(BIN)
                .args(["audit", "verify", "--data-dir"])
                .arg(&data)
                .env_remove("OTTER_CONFIG")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        eprintln!("{committed} of the first 13 rollout changes were committed before their kill");
    }
}
