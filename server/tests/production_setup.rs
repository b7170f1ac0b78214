//! `otter-server init` takes `otter-keys init` output: it refuses online keys that the root
//! does not authorise (naming the role), a wrong passphrase and a root that does not verify;
//! with the right material it creates a repository that serves the given root, holds no
//! root key, and starts only with the online keys' passphrase. A root near expiry is
//! reported in /healthz.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{bundle, client, config, fetch_and_verify, publish, run, start};
use otter_keys::age::secrecy::SecretString;
use otter_keys::crypto::SigningKey;
use otter_keys::keyfile::{save_public_key, save_signing_key, MIN_WORK_FACTOR};
use otter_keys::metadata::{Metadata, RoleKeys, Root, SPEC_VERSION};
use otter_keys::time::UtcTime;
use otter_server::{Server, ServerError};

const PASS: &str = "correct horse battery staple";

/// What `otter-keys init --dir DIR --root-keys 2 --threshold 2` writes.
fn ceremony(dir: &Path, expires_days: i64) -> (PathBuf, PathBuf) {
    let keys_dir = dir.join("keys");
    std::fs::create_dir_all(&keys_dir).unwrap();
    let pass = SecretString::from(PASS.to_string());
    let mut keys = BTreeMap::new();
    let mut roles = BTreeMap::new();
    let mut root_keys = Vec::new();
    for i in 1..=2 {
        let k = SigningKey::generate();
        save_signing_key(
            &keys_dir.join(format!("root-{i}.key")),
            &k,
            &format!("root-{i}"),
            &pass,
            MIN_WORK_FACTOR,
        )
        .unwrap();
        keys.insert(k.key_id(), k.public_key());
        root_keys.push(k);
    }
    roles.insert(
        "root".to_string(),
        RoleKeys {
            keyids: root_keys.iter().map(|k| k.key_id()).collect(),
            threshold: 2,
            extra: BTreeMap::new(),
        },
    );
    for role in ["targets", "snapshot", "timestamp"] {
        let k = SigningKey::generate();
        save_signing_key(
            &keys_dir.join(format!("{role}.key")),
            &k,
            role,
            &pass,
            MIN_WORK_FACTOR,
        )
        .unwrap();
        save_public_key(&keys_dir.join(format!("{role}.pub.json")), &k.public_key()).unwrap();
        keys.insert(k.key_id(), k.public_key());
        roles.insert(
            role.to_string(),
            RoleKeys {
                keyids: vec![k.key_id()],
                threshold: 1,
                extra: BTreeMap::new(),
            },
        );
    }
    let root = Root {
        type_: "root".into(),
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: Some(true),
        version: 1,
        expires: UtcTime::now().plus_days(expires_days),
        keys,
        roles,
        extra: BTreeMap::new(),
    };
    let mut md = Metadata::new(root).unwrap();
    for k in &root_keys {
        md.sign(k);
    }
    let root_path = dir.join("1.root.json");
    std::fs::write(&root_path, md.to_bytes()).unwrap();
    (root_path, keys_dir)
}

fn pass_file(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("passphrase");
    std::fs::write(&p, format!("{text}\n")).unwrap();
    p
}

async fn init_err(cfg: &otter_server::Config, root: &Path, keys: &Path) -> String {
    otter_server::setup::init_production(cfg, root, keys)
        .await
        .expect_err("init must refuse")
        .to_string()
}

#[test]
fn wrong_material_is_refused_naming_what_is_wrong() {
    run(async {
        let d = tempfile::tempdir().unwrap();
        let (root_a, keys_a) = ceremony(&d.path().join("a"), 365);
        let (_, keys_b) = ceremony(&d.path().join("b"), 365);
        let mut cfg = config(&d.path().join("data"));
        cfg.key_passphrase_file = Some(pass_file(d.path(), PASS));

        // B's timestamp key under A's root.
        let mixed = d.path().join("mixed");
        std::fs::create_dir(&mixed).unwrap();
        for (src, role) in [
            (&keys_a, "targets"),
            (&keys_a, "snapshot"),
            (&keys_b, "timestamp"),
        ] {
            std::fs::copy(
                src.join(format!("{role}.key")),
                mixed.join(format!("{role}.key")),
            )
            .unwrap();
        }
        let e = init_err(&cfg, &root_a, &mixed).await;
        assert!(
            e.contains("timestamp key") && e.contains("not the timestamp key"),
            "{e}"
        );

        // Wrong passphrase.
        let mut wrong = cfg.clone();
        wrong.key_passphrase_file = Some(pass_file(&d.path().join("b"), "not the passphrase"));
        let e = init_err(&wrong, &root_a, &keys_a).await;
        assert!(e.contains("targets") && e.contains("passphrase"), "{e}");

        // A root whose signatures do not verify.
        let tampered = d.path().join("tampered.json");
        let mut doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&root_a).unwrap()).unwrap();
        doc["signed"]["version"] = 2.into();
        std::fs::write(&tampered, serde_json::to_vec(&doc).unwrap()).unwrap();
        let e = init_err(&cfg, &tampered, &keys_a).await;
        assert!(e.contains("does not verify"), "{e}");

        // No passphrase at all.
        let mut none = cfg.clone();
        none.key_passphrase_file = None;
        let e = init_err(&none, &root_a, &keys_a).await;
        assert!(e.contains("OTTER_SERVER_KEY_PASSPHRASE"), "{e}");

        // Nothing was created.
        assert!(!d.path().join("data").join("otter.db").exists());
    });
}

#[test]
fn init_creates_a_production_repository_served_with_the_passphrase() {
    let d = tempfile::tempdir().unwrap();
    let (root, keys) = ceremony(&d.path().join("ceremony"), 365);
    let data = d.path().join("data");
    let out = assert_cmd::Command::cargo_bin("otter-server")
        .unwrap()
        .args([
            "init",
            "--data-dir",
            data.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
        ])
        .args(["--keys-dir", keys.to_str().unwrap()])
        .env("OTTER_SERVER_KEY_PASSPHRASE", PASS)
        .env_remove("OTTER_KEY_PASSPHRASE_FILE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("move them offline"),
        "warns about root keys nearby: {stderr}"
    );
    assert!(!stderr.contains(PASS), "the passphrase is never printed");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(otter_server::tokens::looks_like_token(&token), "{token:?}");

    // The server holds the three online keys, encrypted, and no root key.
    let mut held: Vec<String> = std::fs::read_dir(data.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    held.sort();
    assert_eq!(
        held,
        [
            "snapshot.key",
            "snapshot.pub.json",
            "targets.key",
            "targets.pub.json",
            "timestamp.key",
            "timestamp.pub.json"
        ]
    );

    run(async {
        // Without the passphrase, serve says how to give it.
        let mut cfg = config(&data);
        let err = match Server::open(cfg.clone()).await {
            Err(e) => e,
            Ok(_) => panic!("a production repository must not open without its passphrase"),
        };
        assert!(matches!(err, ServerError::Repo(_)));
        assert!(
            err.to_string().contains("OTTER_SERVER_KEY_PASSPHRASE"),
            "{err}"
        );

        cfg.key_passphrase_file = Some(pass_file(d.path(), PASS));
        let (srv, created) = start(cfg).await;
        assert!(created.is_none(), "no development repository is created");
        let c = client();
        let chain = fetch_and_verify(&c, &srv).await;
        assert_eq!(
            chain.root_bytes,
            std::fs::read(&root).unwrap(),
            "the offline root is served as made"
        );
        assert_eq!(chain.root.signed().role("root").unwrap().threshold, 2);
        let (s, v) = publish(&c, &srv, &token, bundle("fw", "1.0.0", &[("f", b"f")])).await;
        assert_eq!(s, 201, "{v}");
        let chain = fetch_and_verify(&c, &srv).await;
        assert!(chain
            .targets
            .signed()
            .targets
            .contains_key("fw-1.0.0.tar.zst"));
        let health: serde_json::Value = c
            .get(srv.url("/healthz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(health["warnings"], serde_json::json!([]));
        srv.stop().await;
    });

    // init refuses a data dir that holds a repository.
    let out = assert_cmd::Command::cargo_bin("otter-server")
        .unwrap()
        .args([
            "init",
            "--data-dir",
            data.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
        ])
        .args(["--keys-dir", keys.to_str().unwrap()])
        .env("OTTER_SERVER_KEY_PASSPHRASE", PASS)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn a_root_close_to_expiry_is_reported() {
    run(async {
        let d = tempfile::tempdir().unwrap();
        let (root, keys) = ceremony(&d.path().join("ceremony"), 10);
        let mut cfg = config(&d.path().join("data"));
        cfg.key_passphrase_file = Some(pass_file(d.path(), PASS));
        otter_server::setup::init_production(&cfg, &root, &keys)
            .await
            .unwrap();
        let (srv, _) = start(cfg).await;
        let health: serde_json::Value = client()
            .get(srv.url("/healthz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(health["status"], "ok");
        let w = health["warnings"][0].as_str().unwrap();
        assert!(
            w.contains("root")
                && (w.contains("expires in 9 days") || w.contains("expires in 10 days")),
            "{w}"
        );
        srv.stop().await;
    });
}
