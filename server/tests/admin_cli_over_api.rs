//! `otter-server devices list|revoke` and `token list|create|revoke` with `--server URL` and
//! a token go through the API: the real binary against a server on loopback, with the roles
//! enforced, the audit log written, and the host mode (`token create --data-dir`) unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cli::{args, cli, ok};
use common::fleet::{enrolled_device, report};
use common::{api, client, config, make_token, run, start};
use serde_json::{json, Value};

#[test]
fn devices_and_tokens_are_managed_over_the_api_with_a_token() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (srv, admin) = start(config(&data)).await;
        let admin = admin.unwrap();
        let c = client();
        let server = srv.url("");

        let lane = enrolled_device(&c, &srv, &admin, Some("lane-1")).await;
        let other = enrolled_device(&c, &srv, &admin, Some("lane-2")).await;
        let (s, v) = report(
            &c,
            &srv,
            &lane,
            &json!({"installed": {"firmware": "1.2.3"}}),
        )
        .await;
        assert_eq!(s, 200, "{v}");

        // devices list --json over the API, filtered by group, with an operator token.
        let (_, operator) = make_token(&c, &srv, &admin, "operator").await;
        let out = cli(
            args(&[
                "devices", "list", "--server", &server, "--group", "lane-1", "--json",
            ]),
            Some(operator.clone()),
        )
        .await;
        let listed: Vec<Value> = serde_json::from_str(&ok(&out)).unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0]["device_id"], lane.id.as_str());
        assert_eq!(listed[0]["installed"]["firmware"], "1.2.3");

        // The API also filters by installed version and by a search text.
        for (query, want) in [
            ("version=1.2.3", vec![lane.id.as_str()]),
            ("version=firmware%3D1.2.3", vec![lane.id.as_str()]),
            ("version=driver%3D1.2.3", vec![]),
            ("version=9.9.9", vec![]),
            ("search=LANE-2", vec![other.id.as_str()]),
            ("search=pos-a&group=lane-1", vec![lane.id.as_str()]),
        ] {
            let (s, v) = api(
                &c,
                "GET",
                &srv.url(&format!("/api/v1/devices?{query}")),
                Some(&operator),
                None,
            )
            .await;
            assert_eq!(s, 200, "{query}: {v}");
            let ids: Vec<&str> = v["devices"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["device_id"].as_str().unwrap())
                .collect();
            assert_eq!(ids, want, "{query}");
        }
        let (s, v) = api(
            &c,
            "GET",
            &srv.url("/api/v1/devices?colour=red"),
            Some(&operator),
            None,
        )
        .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("invalid_query"))
        );

        // The CLI passes the version and search filters, over the API and on the host.
        let d = data.to_str().unwrap().to_owned();
        for mode in [
            vec!["--server", server.as_str()],
            vec!["--data-dir", d.as_str()],
        ] {
            let mut a = vec!["devices", "list", "--json", "--installed", "firmware=1.2.3"];
            a.extend(&mode);
            let listed: Vec<Value> =
                serde_json::from_str(&ok(&cli(args(&a), Some(operator.clone())).await)).unwrap();
            assert_eq!(listed.len(), 1, "{mode:?}: {listed:?}");
            assert_eq!(listed[0]["device_id"], lane.id.as_str());
            let mut a = vec!["devices", "list", "--json", "--search", "LANE-2"];
            a.extend(&mode);
            let listed: Vec<Value> =
                serde_json::from_str(&ok(&cli(args(&a), Some(operator.clone())).await)).unwrap();
            assert_eq!(listed.len(), 1, "{mode:?}: {listed:?}");
            assert_eq!(listed[0]["device_id"], other.id.as_str());
        }

        // The table lists both devices, with the installed version.
        let out = cli(
            args(&["devices", "list", "--server", &server]),
            Some(operator.clone()),
        )
        .await;
        let table = ok(&out);
        assert!(
            table.contains(&lane.id) && table.contains(&other.id),
            "{table}"
        );
        assert!(table.contains("firmware=1.2.3"), "{table}");

        // An operator may not revoke a device; nothing changes.
        let out = cli(
            args(&["devices", "revoke", &other.id, "--server", &server]),
            Some(operator.clone()),
        )
        .await;
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("403"), "{err}");
        assert!(
            !err.contains(&operator),
            "the token never reaches errors: {err}"
        );

        // An admin token in a file revokes it; its signed requests are refused from then on.
        let token_file = dir.path().join("admin.token");
        std::fs::write(&token_file, format!("{admin}\n")).unwrap();
        let tf = token_file.to_str().unwrap().to_owned();
        let out = cli(
            args(&[
                "devices",
                "revoke",
                &other.id,
                "--server",
                &server,
                "--token-file",
                &tf,
            ]),
            None,
        )
        .await;
        let said = ok(&out);
        assert!(
            said.contains(&other.id) && said.contains("revoked since"),
            "{said}"
        );
        let (s, _) = report(&c, &srv, &other, &json!({"installed": {}})).await;
        assert_eq!(s, 401, "a revoked device is refused");
        // Revoking again succeeds and is audited once.
        let out = cli(
            args(&[
                "devices",
                "revoke",
                &other.id,
                "--server",
                &server,
                "--token-file",
                &tf,
            ]),
            None,
        )
        .await;
        ok(&out);
        let (s, audit) = api(&c, "GET", &srv.url("/api/v1/audit"), Some(&admin), None).await;
        assert_eq!(s, 200, "{audit}");
        let subject = format!("device:{}", other.id);
        let revokes = audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "device.revoke" && e["subject"] == subject.as_str())
            .count();
        assert_eq!(revokes, 1, "one audit record for the revocation: {audit}");
        // An unknown device: a clear 404, not a crash.
        let out = cli(
            args(&[
                "devices",
                "revoke",
                "no-such-device",
                "--server",
                &server,
                "--token-file",
                &tf,
            ]),
            None,
        )
        .await;
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("404"));

        // token create over the API prints only the token, which works with its role.
        let out = cli(
            args(&[
                "token", "create", "--server", &server, "--role", "auditor", "--label", "books",
            ]),
            Some(admin.clone()),
        )
        .await;
        let stdout = ok(&out);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "only the token on stdout: {stdout:?}");
        let auditor = lines[0].to_owned();
        assert!(otter_server::tokens::looks_like_token(&auditor));
        let (s, _) = api(&c, "GET", &srv.url("/api/v1/tokens"), Some(&auditor), None).await;
        assert_eq!(s, 200, "the new auditor token reads the token list");

        // token list over the API (auditor may) shows it; never a token.
        let out = cli(
            args(&["token", "list", "--server", &server, "--json"]),
            Some(auditor.clone()),
        )
        .await;
        let listed = ok(&out);
        let tokens: Vec<Value> = serde_json::from_str(&listed).unwrap();
        let mine = tokens.iter().find(|t| t["label"] == "books").unwrap();
        assert_eq!(mine["role"], "auditor");
        assert!(!listed.contains(&auditor) && !listed.contains(&admin));
        let id = mine["id"].as_i64().unwrap().to_string();

        // The auditor may not revoke; the admin does, and the token is refused at once.
        let out = cli(
            args(&["token", "revoke", &id, "--server", &server]),
            Some(auditor.clone()),
        )
        .await;
        assert!(!out.status.success());
        let out = cli(
            args(&[
                "token",
                "revoke",
                &id,
                "--server",
                &server,
                "--token-file",
                &tf,
            ]),
            None,
        )
        .await;
        assert!(ok(&out).contains("is revoked"));
        let (s, _) = api(&c, "GET", &srv.url("/api/v1/tokens"), Some(&auditor), None).await;
        assert_eq!(s, 401, "a revoked token is refused");

        // No token at all: a clear error, nothing sent.
        let out = cli(args(&["token", "list", "--server", &server]), None).await;
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("OTTER_TOKEN"));

        // Host mode is unchanged: no token needed, only the token printed.
        let out = cli(
            args(&["token", "create", "--data-dir", &d, "--role", "publisher"]),
            None,
        )
        .await;
        let stdout = ok(&out);
        assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
        assert!(otter_server::tokens::looks_like_token(stdout.trim()));

        srv.stop().await;
    });
}
