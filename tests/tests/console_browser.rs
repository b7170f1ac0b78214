//! The web console in a real browser: headless Chromium driven over WebDriver (chromedriver)
//! against the real `otter-server serve` on loopback, with a terminal enrolled by the real
//! `otter-agent`. Sign-in with an API token, the fleet page shows the enrolled agent, the
//! device, releases and backups pages open, a CSRF-less post (plain HTTP with the browser's
//! own session cookie) is refused and changes nothing, sign-out works, and an auditor sees
//! no rollout controls. Screenshots of the main pages are taken on every run; with
//! `OTTER_SCREENSHOTS=1` they are written to `docs/screenshots/`.
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (`.ci/run` installs them).
//! Without them the test fails under `CI=true` and is skipped, saying so, elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/webdriver.rs"]
mod webdriver;

use std::path::{Path, PathBuf};

use common::{command, show, ServerGuard};
use webdriver::Browser;

fn token(data: &Path, role: &str) -> String {
    let out = command("otter-server")
        .args(["token", "create", "--role", role, "--label"])
        .arg(format!("console {role}"))
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A firmware bundle for pos-a: a manifest and one file, as a zstd tar.
fn bundle(name: &str, version: &str) -> Vec<u8> {
    let data = format!("{name} {version}\n").into_bytes();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "name": name, "kind": "firmware", "version": version, "hardware": ["pos-a"],
        "payload": [{"path": "bin/app", "size": data.len(), "sha256": otter_keys::hash::sha256_hex(&data)}],
        "health": ["/opt/selftest"],
    }))
    .unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for (path, bytes) in [("manifest.json", &manifest), ("bin/app", &data)] {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &bytes[..]).unwrap();
    }
    zstd::encode_all(&b.into_inner().unwrap()[..], 3).unwrap()
}

/// Enrolls a terminal (model pos-a, group lane-7) with the real agent and sends its report;
/// returns its device id.
fn enroll_agent(server: &ServerGuard, data: &Path, dir: &Path) -> String {
    let out = command("otter-server")
        .args(["enroll-token", "create", "--group", "lane-7", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let enroll_token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let root_file = dir.join("image-root.json");
    std::fs::copy(data.join("store/repo/metadata/1.root.json"), &root_file).unwrap();
    let state = dir.join("terminal");
    let out = command("otter-agent")
        .args(["enroll", "--server", &server.url, "--model", "pos-a"])
        .env("OTTER_ENROLL_TOKEN", &enroll_token)
        .arg("--trusted-root")
        .arg(&root_file)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let agent: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("agent.json")).unwrap()).unwrap();
    let out = command("otter-agent")
        .args(["report", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    agent["device_id"].as_str().unwrap().to_owned()
}

/// Where screenshots go: `docs/screenshots/` with `OTTER_SCREENSHOTS=1`, else `tmp`.
fn screenshot_dir(tmp: &Path) -> PathBuf {
    if std::env::var("OTTER_SCREENSHOTS").as_deref() == Ok("1") {
        let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
        std::fs::create_dir_all(&d).unwrap();
        d
    } else {
        tmp.to_path_buf()
    }
}

fn shoot(b: &Browser, dir: &Path, name: &str) {
    let png = b.screenshot();
    assert!(png.len() > 2000, "{name}: a real picture");
    std::fs::write(dir.join(name), png).unwrap();
}

fn sign_in(b: &Browser, url: &str, token: &str) {
    b.goto(&format!("{url}/console/login"));
    let field = b.find("#token");
    b.type_into(&field, token);
    b.click(&b.find("#sign-in"));
}

#[test]
fn the_console_works_in_headless_chromium() {
    let Some((driver, chromium)) = webdriver::installed() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "chromium and chromedriver are missing, and CI=true: install the Debian packages \
                 chromium and chromium-driver (.ci/run does)"
            );
        }
        eprintln!(
            "SKIPPED the_console_works_in_headless_chromium: install chromium and \
             chromium-driver (Debian packages) to run it"
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server-data");
    let log = tmp.path().join("server.log");
    let mut server = ServerGuard::start(&data, &[], &log);
    let admin = token(&data, "admin");
    let auditor = token(&data, "auditor");
    let publisher = token(&data, "publisher");
    let device_id = enroll_agent(&server, &data, tmp.path());

    // A release, so that the releases page has something to show.
    let token_file = tmp.path().join("publisher.token");
    std::fs::write(&token_file, format!("{publisher}\n")).unwrap();
    let bundle_file = tmp.path().join("pos-app.tar.zst");
    std::fs::write(&bundle_file, bundle("pos-app", "2.4.0")).unwrap();
    let out = command("otter-server")
        .args(["publish", "--server", &server.url, "--token-file"])
        .arg(&token_file)
        .arg(&bundle_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));

    let shots = screenshot_dir(tmp.path());
    let url = server.url.clone();
    let b = Browser::start(&driver, &chromium, &tmp.path().join("chromedriver.log"));

    // Not signed in: the console sends the browser to the sign-in form.
    b.goto(&format!("{url}/console/fleet"));
    assert_eq!(b.url(), format!("{url}/console/login"));
    shoot(&b, &shots, "console-sign-in.png");

    // Sign in with the admin token: the fleet page lists the enrolled agent.
    sign_in(&b, &url, &admin);
    assert_eq!(b.url(), format!("{url}/console/fleet"));
    let table = b.text(&b.find("#devices"));
    assert!(table.contains(&device_id), "{table}");
    assert!(
        table.contains("pos-a") && table.contains("lane-7"),
        "{table}"
    );
    assert!(!b.url().contains(&admin), "the token never reaches a URL");
    let cookies = b.cookies();
    let session = cookies
        .iter()
        .find(|c| c.0 == "otter_session")
        .expect("a session cookie")
        .clone();
    assert!(session.2, "HttpOnly");
    assert_eq!(session.3, "Strict");
    shoot(&b, &shots, "console-fleet.png");

    // The device's page, by following its link.
    b.click(&b.find(&format!("a[href=\"/console/devices/{device_id}\"]")));
    assert_eq!(b.url(), format!("{url}/console/devices/{device_id}"));
    assert_eq!(b.text(&b.find("#device-id")), device_id);
    shoot(&b, &shots, "console-device.png");

    b.goto(&format!("{url}/console/releases"));
    let releases = b.text(&b.find("#releases"));
    assert!(
        releases.contains("pos-app") && releases.contains("2.4.0"),
        "{releases}"
    );
    shoot(&b, &shots, "console-releases.png");

    b.goto(&format!("{url}/console/backups"));
    assert!(b.title().starts_with("Backups"));
    shoot(&b, &shots, "console-backups.png");

    // A post without the CSRF token, sent with the browser's own session cookie, is refused
    // and changes nothing: the browser is still signed in.
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http
        .post(format!("{url}/console/logout"))
        .header("cookie", format!("otter_session={}", session.1))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("")
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    b.goto(&format!("{url}/console/fleet"));
    assert_eq!(b.url(), format!("{url}/console/fleet"));
    assert!(b.text(&b.find("#devices")).contains(&device_id));

    // Sign-out: back to the form, and the console is closed again.
    b.click(&b.find("#sign-out"));
    assert_eq!(b.url(), format!("{url}/console/login"));
    assert!(!b.cookies().iter().any(|c| c.0 == "otter_session"));
    b.goto(&format!("{url}/console/fleet"));
    assert_eq!(b.url(), format!("{url}/console/login"));
    // The old session id is dead on the server too.
    let r = http
        .get(format!("{url}/console/fleet"))
        .header("cookie", format!("otter_session={}", session.1))
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);

    // An auditor reads the fleet and the releases but gets no rollout controls.
    sign_in(&b, &url, &auditor);
    assert_eq!(b.url(), format!("{url}/console/fleet"));
    assert!(b.text(&b.find("#devices")).contains(&device_id));
    b.goto(&format!("{url}/console/releases"));
    assert!(b.text(&b.find("#releases")).contains("pos-app"));
    assert!(b.find_all(".rollout-controls").is_empty());
    assert!(b.find_all("form[action*=\"/rollout\"]").is_empty());

    drop(b);
    let status = server.stop().expect("the server stops on SIGTERM");
    assert!(status.success(), "{status}");
    let server_log = std::fs::read_to_string(&log).unwrap();
    for secret in [&admin, &auditor] {
        assert!(!server_log.contains(&secret[..]), "a token reached the log");
    }
}
