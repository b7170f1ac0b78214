//! python-tuf's `ngclient.Updater`, the reference TUF client, bootstrapped with
//! 1.root.json only, refreshes against the running server and downloads a published
//! target, checking it against the signed length and hashes; the bytes are the bundle's.
//!
//! Needs the venv made by `scripts/python-venv.sh` (`<repo>/.venv/bin/python`, or the
//! interpreter named by `OTTER_PYTHON`); fails without it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use common::{bundle, client, config, get_ok, publish, run, start};

const SCRIPT: &str = r#"
import sys, tempfile
from tuf.ngclient import Updater

base, name, out_dir, root_path = sys.argv[1:5]
with open(root_path, "rb") as f:
    root = f.read()
updater = Updater(
    metadata_dir=tempfile.mkdtemp(),
    metadata_base_url=base + "/repo/metadata/",
    target_dir=out_dir,
    target_base_url=base + "/repo/targets/",
    bootstrap=root,
)
updater.refresh()
info = updater.get_targetinfo(name)
if info is None:
    sys.exit("python-tuf found no target " + name)
print(updater.download_target(info))
"#;

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("OTTER_PYTHON") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        p.exists(),
        "no python-tuf environment at {}: run scripts/python-venv.sh first (or set OTTER_PYTHON)",
        p.display()
    );
    p
}

#[test]
fn python_tuf_downloads_a_published_target() {
    let python = python();
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, admin) = start(config(&dir.path().join("data"))).await;
        let admin = admin.unwrap();
        let c = client();
        let bytes = bundle(
            "pos-firmware",
            "3.0.0",
            &[("fw.bin", b"firmware for python-tuf")],
        );
        let (s, v) = publish(&c, &srv, &admin, bytes.clone()).await;
        assert_eq!(s, 201, "{v}");
        // A second targets version, so the client walks more than version 1.
        let (s, _) = publish(&c, &srv, &admin, bundle("other", "1.0.0", &[("o", b"o")])).await;
        assert_eq!(s, 201);

        let root = dir.path().join("1.root.json");
        std::fs::write(
            &root,
            get_ok(&c, &srv.url("/repo/metadata/1.root.json")).await,
        )
        .unwrap();
        let script = dir.path().join("client.py");
        std::fs::write(&script, SCRIPT).unwrap();
        let out_dir = dir.path().join("downloads");
        std::fs::create_dir(&out_dir).unwrap();
        let args: Vec<String> = vec![
            script.display().to_string(),
            srv.url(""),
            "pos-firmware-3.0.0.tar.zst".into(),
            out_dir.display().to_string(),
            root.display().to_string(),
        ];
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(&python)
                .args(&args)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "python-tuf failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let path = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        srv.stop().await;
    });
}
