//! End to end, with the real binaries on loopback: `otter-server serve` on 127.0.0.1:0, an
//! enrollment token from `otter-server enroll-token create`, `otter-agent enroll` with the
//! root pinned from a file, `otter-agent report` signed with the device key, and the report
//! seen by `otter-server devices list --json`. A second enrollment into the same state dir
//! is refused. The server is stopped with SIGTERM in all cases.
//!
//! The binaries are taken from the target dir next to this test executable: build them
//! first (`cargo build --workspace`; `cargo test --workspace` does).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{command, show, ServerGuard};

use serde_json::Value;

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_terminal_enrolls_and_its_signed_report_reaches_the_inventory() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server-data");
    let mut server = ServerGuard::start(&data, &[], &tmp.path().join("server.log"));

    // An operator makes an enrollment token on the server host.
    let out = command("otter-server")
        .args([
            "enroll-token",
            "create",
            "--group",
            "lane-7",
            "--expires-in",
            "1h",
        ])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(token.len(), 64, "only the token on stdout");
    let token_file = tmp.path().join("enroll-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();

    // The trusted root ships with the terminal image: here, a copy of the server's root.
    let root = std::fs::read(data.join("store/repo/metadata/1.root.json")).unwrap();
    let root_file = tmp.path().join("image-root.json");
    std::fs::write(&root_file, &root).unwrap();

    let state = tmp.path().join("terminal/state");
    let enroll = |token_arg: &[&str]| {
        command("otter-agent")
            .args(["enroll", "--server", &server.url, "--model", "pos-a"])
            .args(token_arg)
            .arg("--trusted-root")
            .arg(&root_file)
            .arg("--state-dir")
            .arg(&state)
            .output()
            .unwrap()
    };
    let out = enroll(&["--token-file", token_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!printed.contains(&token) && !String::from_utf8_lossy(&out.stderr).contains(&token));

    // The state dir: secrets 0600 in a 0700 dir, the pinned root byte-identical.
    let agent: Value =
        serde_json::from_slice(&std::fs::read(state.join("agent.json")).unwrap()).unwrap();
    let device_id = agent["device_id"].as_str().unwrap().to_owned();
    assert!(printed.contains(&device_id));
    assert_eq!(agent["server_url"], server.url.as_str());
    assert_eq!(
        agent["metadata_url"],
        format!("{}/repo/metadata/", server.url)
    );
    assert_eq!(agent["group"], "lane-7");
    assert_eq!(std::fs::read(state.join("tuf/root.json")).unwrap(), root);
    #[cfg(unix)]
    {
        assert_eq!(mode(&state), 0o700);
        for f in ["device.key", "backup.key", "chunk.key", "agent.json"] {
            assert_eq!(mode(&state.join(f)), 0o600, "{f}");
        }
    }
    let backup_key = std::fs::read_to_string(state.join("backup.key")).unwrap();
    assert!(backup_key.contains("AGE-SECRET-KEY-1"));

    // A signed report.
    let out = command("otter-agent")
        .args(["report", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));

    // The inventory shows the device, its group and model, its last report.
    let out = command("otter-server")
        .args(["devices", "list", "--json", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let devices = list.as_array().unwrap();
    assert_eq!(devices.len(), 1, "{list}");
    let d = &devices[0];
    assert_eq!(d["device_id"], device_id.as_str());
    assert_eq!(d["group"], "lane-7");
    assert_eq!(d["hardware_model"], "pos-a");
    assert!(d["last_seen"].as_i64().is_some(), "{d}");
    assert!(d["last_report_at"].as_i64().is_some(), "{d}");
    assert_eq!(d["last_report"]["agent_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(d["last_report"]["health"], "unknown");
    assert!(d["revoked_at"].is_null());

    // Enrolling twice into the same state dir is refused, and changes nothing there.
    let key_before = std::fs::read(state.join("device.key")).unwrap();
    let out = command("otter-agent")
        .args(["enroll", "--server", &server.url])
        .env("OTTER_ENROLL_TOKEN", &token)
        .arg("--trusted-root")
        .arg(&root_file)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already enrolled") && err.contains(&device_id),
        "{err}"
    );
    assert_eq!(std::fs::read(state.join("device.key")).unwrap(), key_before);

    // A used token is refused by the server, with its message, for a fresh state dir.
    let out = command("otter-agent")
        .args(["enroll", "--server", &server.url, "--token", &token])
        .arg("--trusted-root")
        .arg(&root_file)
        .arg("--state-dir")
        .arg(tmp.path().join("other-terminal"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("enrollment_token_used"),
        "{}",
        show(&out)
    );

    let status = server.stop().expect("the server stops on SIGTERM");
    assert!(
        status.success(),
        "the server exits cleanly on SIGTERM: {status}"
    );
}
