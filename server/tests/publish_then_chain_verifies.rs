//! A published bundle appears in a new, fully verifiable TUF state: targets, snapshot and
//! timestamp each move up one version, the target entry carries the signed lengths, hashes
//! and Otter's `custom` fields, and `/repo/targets/{SHA256}.{NAME}` serves the exact bytes.
//! The `publish` command does the same from the command line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{api, bundle, client, config, fetch_and_verify, get_ok, publish, run, start};
use otter_keys::hash::verify;

#[test]
fn a_published_bundle_is_signed_served_and_listed() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, admin) = start(config(dir.path())).await;
        let admin = admin.unwrap();
        let c = client();
        let before = fetch_and_verify(&c, &srv).await;

        let bytes = bundle(
            "pos-firmware",
            "2.1.0",
            &[("fw.bin", b"firmware image"), ("lib/x.so", b"x")],
        );
        let (s, v) = publish(&c, &srv, &admin, bytes.clone()).await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["release"]["target"], "pos-firmware-2.1.0.tar.zst");

        let chain = fetch_and_verify(&c, &srv).await;
        assert_eq!(
            chain.targets.signed().version,
            before.targets.signed().version + 1
        );
        assert_eq!(
            chain.snapshot.signed().version,
            before.snapshot.signed().version + 1
        );
        assert_eq!(
            chain.timestamp.signed().version,
            before.timestamp.signed().version + 1
        );
        let entry = &chain.targets.signed().targets["pos-firmware-2.1.0.tar.zst"];
        assert_eq!(entry.length, bytes.len() as u64);
        assert!(entry.hashes.contains_key("sha256") && entry.hashes.contains_key("sha512"));
        verify(&bytes, Some(entry.length), &entry.hashes).unwrap();
        let custom = entry.custom().unwrap();
        assert_eq!(custom["kind"], "firmware");
        assert_eq!(custom["version"], "2.1.0");
        assert_eq!(custom["hardware"], serde_json::json!(["pos-a", "pos-b"]));
        assert_eq!(custom["channel"], "stable");
        assert_eq!(
            custom["rollout"],
            serde_json::json!({"percent": 100, "groups": []})
        );

        let url = srv.url(&format!(
            "/repo/targets/{}.pos-firmware-2.1.0.tar.zst",
            entry.hashes["sha256"]
        ));
        let served = get_ok(&c, &url).await;
        verify(&served, Some(entry.length), &entry.hashes).unwrap();
        assert_eq!(served, bytes);

        let (s, v) = api(&c, "GET", &srv.url("/api/v1/releases"), Some(&admin), None).await;
        assert_eq!(s, 200);
        let list = v["releases"].as_array().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["name"], "pos-firmware");
        assert!(list[0]["yanked_at"].is_null());

        // A channel can be chosen; a bad one is refused.
        let (s, v) = api(
            &c,
            "POST",
            &srv.url("/api/v1/releases?channel=beta"),
            Some(&admin),
            Some(bundle("pos-firmware", "2.2.0-rc.1", &[("fw.bin", b"rc")])),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        let chain = fetch_and_verify(&c, &srv).await;
        let e = &chain.targets.signed().targets["pos-firmware-2.2.0-rc.1.tar.zst"];
        assert_eq!(e.custom().unwrap()["channel"], "beta");
        assert!(chain
            .targets
            .signed()
            .targets
            .contains_key("pos-firmware-2.1.0.tar.zst"));
        let (s, v) = api(
            &c,
            "POST",
            &srv.url("/api/v1/releases?channel=../x"),
            Some(&admin),
            Some(bundle("pos-firmware", "2.3.0", &[("fw.bin", b"x")])),
        )
        .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("invalid_channel"))
        );

        // The command line, with the token from the environment.
        let file = dir.path().join("drv.tar.zst");
        std::fs::write(
            &file,
            bundle("card-reader", "1.0.0", &[("drv.so", b"driver")]),
        )
        .unwrap();
        let server = srv.url("");
        let f = file.clone();
        let tok = admin.clone();
        let out = tokio::task::spawn_blocking(move || {
            assert_cmd::Command::cargo_bin("otter-server")
                .unwrap()
                .args(["publish", f.to_str().unwrap(), "--server", &server])
                .env("OTTER_TOKEN", &tok)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("published card-reader 1.0.0"), "{stderr}");
        assert!(
            !stderr.contains("uploading"),
            "no progress bar without a terminal"
        );
        let chain = fetch_and_verify(&c, &srv).await;
        assert!(chain
            .targets
            .signed()
            .targets
            .contains_key("card-reader-1.0.0.tar.zst"));

        // Without a token the command says how to give one.
        let server = srv.url("");
        let out = tokio::task::spawn_blocking(move || {
            assert_cmd::Command::cargo_bin("otter-server")
                .unwrap()
                .args(["publish", file.to_str().unwrap(), "--server", &server])
                .env_remove("OTTER_TOKEN")
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("OTTER_TOKEN"));
        srv.stop().await;
    });
}

#[test]
fn published_releases_survive_a_restart() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, admin) = start(config(dir.path())).await;
        let admin = admin.unwrap();
        let c = client();
        let (s, _) = publish(&c, &srv, &admin, bundle("app", "1.0.0", &[("a", b"a")])).await;
        assert_eq!(s, 201);
        let v1 = fetch_and_verify(&c, &srv).await.targets.signed().version;
        srv.stop().await;
        let (srv, _) = start(config(dir.path())).await;
        let chain = fetch_and_verify(&c, &srv).await;
        assert_eq!(chain.targets.signed().version, v1);
        assert!(chain
            .targets
            .signed()
            .targets
            .contains_key("app-1.0.0.tar.zst"));
        let (s, v) = publish(&c, &srv, &admin, bundle("app", "1.0.0", &[("a", b"a")])).await;
        assert_eq!((s, v["error"]["code"].as_str()), (409, Some("conflict")));
        srv.stop().await;
    });
}
