//! `otter-server token create|list|revoke` work on the data dir directly, while the server
//! runs: a created token is accepted at once with its role, only the token is printed on
//! stdout, and a revoked token is refused at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use assert_cmd::Command;
use common::{api, client, config, run, start};

fn cli(args: &[&str]) -> std::process::Output {
    Command::cargo_bin("otter-server")
        .unwrap()
        .args(args)
        .env_remove("OTTER_DATA_DIR")
        .env_remove("OTTER_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn tokens_made_on_the_host_work_at_once_and_revoke_at_once() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let d = data.to_str().unwrap().to_owned();
        let (srv, _) = start(config(&data)).await;
        let c = client();

        let out = tokio::task::spawn_blocking({
            let d = d.clone();
            move || {
                cli(&[
                    "token",
                    "create",
                    "--data-dir",
                    &d,
                    "--role",
                    "publisher",
                    "--label",
                    "release CI",
                ])
            }
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "only the token on stdout: {stdout:?}");
        let token = lines[0].to_owned();
        assert!(otter_server::tokens::looks_like_token(&token));

        let releases = srv.url("/api/v1/releases");
        let (s, _) = api(&c, "GET", &releases, Some(&token), None).await;
        assert_eq!(s, 200, "a publisher lists releases");
        let (s, v) = api(&c, "GET", &srv.url("/api/v1/tokens"), Some(&token), None).await;
        assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")));

        let out = tokio::task::spawn_blocking({
            let d = d.clone();
            move || cli(&["token", "list", "--json", "--data-dir", &d])
        })
        .await
        .unwrap();
        assert!(out.status.success());
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mine = list
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["label"] == "release CI")
            .unwrap()
            .clone();
        assert_eq!(mine["role"], "publisher");
        assert!(mine["revoked_at"].is_null());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(!text.contains(&token), "list never shows a token");
        let id = mine["id"].as_i64().unwrap().to_string();

        let out = tokio::task::spawn_blocking({
            let d = d.clone();
            move || cli(&["token", "revoke", &id, "--data-dir", &d])
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (s, v) = api(&c, "GET", &releases, Some(&token), None).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (401, Some("invalid_token"))
        );
        srv.stop().await;

        // Mistakes get clear errors and a failure status.
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let out = cli(&[
            "token",
            "create",
            "--data-dir",
            empty.to_str().unwrap(),
            "--role",
            "admin",
        ]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("no Otter database"));
        let out = cli(&["token", "create", "--data-dir", &d, "--role", "root"]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("unknown role"));
        let out = cli(&["token", "revoke", "4242", "--data-dir", &d]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("no token with id 4242"));
    });
}
