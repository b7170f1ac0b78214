//! The web console in a real browser: headless Chromium driven over WebDriver (chromedriver)
//! against the real `otter-server serve` on loopback, with a terminal enrolled, updated and
//! backed up by the real `otter-agent`. Sign-in with an API token; the fleet page shows the
//! enrolled agent; a rollout paused from the console keeps `otter-agent update` from
//! installing the release, and resuming it lets the update through; a restore request is
//! refused for an auditor (403) and accepted for a restorer, who then orders a repair
//! through its confirmation page; a CSRF-less post (plain HTTP
//! with the browser's own session cookie) is refused and changes nothing; sign-out works; an
//! auditor sees no rollout controls. Screenshots of the main pages are taken on every run;
//! with `OTTER_SCREENSHOTS=1` they are written to `docs/screenshots/`.
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (`.ci/run` installs them).
//! Without them the test fails under `CI=true` and is skipped, saying so, elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/webdriver.rs"]
mod webdriver;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{command, show, ServerGuard};
use webdriver::Browser;

const MODEL: &str = "pos-a";

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

/// A firmware bundle for pos-a with one file and a health command that passes.
fn bundle(name: &str, version: &str) -> Vec<u8> {
    let data = format!("{name} {version}\n").into_bytes();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "name": name, "kind": "firmware", "version": version, "hardware": [MODEL],
        "payload": [{"path": "app.bin", "size": data.len(), "sha256": otter_keys::hash::sha256_hex(&data)}],
        "health": ["/bin/sh", "-c", "test -f app.bin"],
    }))
    .unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for (path, bytes) in [("manifest.json", &manifest), ("app.bin", &data)] {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &bytes[..]).unwrap();
    }
    zstd::encode_all(&b.into_inner().unwrap()[..], 3).unwrap()
}

/// A terminal: its state dir and agent config.
struct Terminal {
    id: String,
    state: PathBuf,
    config: PathBuf,
    install_root: PathBuf,
}

impl Terminal {
    fn agent(&self, args: &[&str]) -> Output {
        command("otter-agent")
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap()
    }

    fn active(&self, component: &str) -> Option<String> {
        let link = self
            .install_root
            .join("components")
            .join(component)
            .join("current");
        std::fs::read_link(link)
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }
}

/// Enrolls a terminal (model pos-a, group lane-7) with the real agent and sends its report.
fn enroll_agent(server: &ServerGuard, data: &Path, dir: &Path) -> Terminal {
    let out = command("otter-server")
        .args(["enroll-token", "create", "--group", "lane-7", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let enroll_token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let root_file = dir.join("image-root.json");
    std::fs::copy(data.join("store/repo/metadata/1.root.json"), &root_file).unwrap();
    let state = dir.join("terminal/state");
    let out = command("otter-agent")
        .args(["enroll", "--server", &server.url, "--model", MODEL])
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
    let install_root = dir.join("terminal/opt-otter");
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\ninstall_root = {:?}\n[update]\njitter_secs = 0\n[apply]\nhealth_timeout_secs = 20\n",
            state.to_str().unwrap(),
            install_root.to_str().unwrap()
        ),
    )
    .unwrap();
    let t = Terminal {
        id: agent["device_id"].as_str().unwrap().to_owned(),
        state,
        config,
        install_root,
    };
    let out = command("otter-agent")
        .args(["report", "--state-dir"])
        .arg(&t.state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    t
}

/// A small till database, backed up once by the agent.
fn back_up(t: &Terminal, dir: &Path) {
    let db = dir.join("terminal/pos.db");
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1])\n\
             c.execute('CREATE TABLE sales (id INTEGER PRIMARY KEY, cents INTEGER NOT NULL)')\n\
             c.executemany('INSERT INTO sales (cents) VALUES (?)', [(i,) for i in range(500)])\n\
             c.commit()",
        ])
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let out = command("otter-agent")
        .args(["backup", "--state-dir"])
        .arg(&t.state)
        .arg("--database")
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
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

/// The value of the first hidden `csrf` field of the current page.
fn csrf_of(b: &Browser) -> String {
    let page = b.source();
    let at = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    page[at..at + 64].to_owned()
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
    use otter_keys::age::x25519::Identity;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server-data");
    let log = tmp.path().join("server.log");
    let recovery = Identity::generate();
    let server_config = tmp.path().join("server.toml");
    std::fs::write(
        &server_config,
        format!(
            "[backups]\nrecovery_recipient = \"{}\"\n",
            recovery.to_public()
        ),
    )
    .unwrap();
    let mut server = ServerGuard::start(
        &data,
        &["--config".as_ref(), server_config.as_os_str()],
        &log,
    );
    let admin = token(&data, "admin");
    let auditor = token(&data, "auditor");
    let restorer = token(&data, "restorer");
    let publisher = token(&data, "publisher");
    let terminal = enroll_agent(&server, &data, tmp.path());
    let device_id = terminal.id.clone();
    back_up(&terminal, tmp.path());

    // A release, published (its rollout starts active).
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
    b.wait_url("/console/login");
    shoot(&b, &shots, "console-sign-in.png");

    // Sign in with the admin token: the fleet page lists the enrolled agent.
    sign_in(&b, &url, &admin);
    b.wait_url("/console/fleet");
    let table = b.wait_text("#devices");
    assert!(table.contains(&device_id), "{table}");
    assert!(table.contains(MODEL) && table.contains("lane-7"), "{table}");
    assert!(!b.url().contains(&admin), "the token never reaches a URL");
    let session = b
        .cookies()
        .into_iter()
        .find(|c| c.0 == "otter_session")
        .expect("a session cookie");
    assert!(session.2, "HttpOnly");
    assert_eq!(session.3, "Strict");
    shoot(&b, &shots, "console-fleet.png");

    // The device's page, by following its link.
    b.click(&b.find(&format!("a[href=\"/console/devices/{device_id}\"]")));
    b.wait_url(&format!("/console/devices/{device_id}"));
    assert_eq!(b.wait_text("#device-id"), device_id);
    shoot(&b, &shots, "console-device.png");

    // The rollout is paused from the console: the agent then does not update.
    b.goto(&format!("{url}/console/releases"));
    let releases = b.wait_text("#releases");
    assert!(
        releases.contains("pos-app") && releases.contains("2.4.0"),
        "{releases}"
    );
    shoot(&b, &shots, "console-releases.png");
    b.click(&b.find("a[href=\"/console/releases/pos-app/2.4.0\"]"));
    b.wait_url("/console/releases/pos-app/2.4.0");
    assert!(b.wait_text(".rollout-status").contains("active"));
    b.type_into(&b.find("#pause-reason"), "holiday trading: freeze");
    b.click(&b.find("#pause"));
    b.wait_url("/console/releases/pos-app/2.4.0?done=pause");
    assert!(b.wait_text(".rollout-status").contains("paused"));
    assert!(b.wait_text("#rollout-signed").contains("\"percent\":0"));
    let out = terminal.agent(&["update"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        terminal.active("pos-app"),
        None,
        "paused: nothing installed; {}",
        show(&out)
    );

    // Resumed from the console: the same agent now installs it.
    b.click(&b.find("#resume"));
    b.wait_url("?done=resume");
    assert!(b.wait_text(".rollout-status").contains("active"));
    let out = terminal.agent(&["update"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        terminal.active("pos-app").as_deref(),
        Some("2.4.0"),
        "{}",
        show(&out)
    );
    b.goto(&format!("{url}/console/releases/pos-app/2.4.0"));
    assert!(!b.find_all("#rollout-chart").is_empty());
    shoot(&b, &shots, "console-release.png");

    b.goto(&format!("{url}/console/audit"));
    assert!(b.wait_text("#chain-status").contains("chain intact"));
    assert!(b.wait_text("#audit").contains("rollout.pause"));
    shoot(&b, &shots, "console-audit.png");

    // A post without the CSRF token, sent with the browser's own session cookie, is refused
    // and changes nothing: the browser is still signed in.
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form_post = |path: &str, cookie: &str, body: String| {
        http.post(format!("{url}{path}"))
            .header("cookie", format!("otter_session={cookie}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .unwrap()
    };
    let r = form_post("/console/logout", &session.1, String::new());
    assert_eq!(r.status(), 403);
    let r = form_post(
        "/console/releases/pos-app/2.4.0/rollout",
        &session.1,
        "action=pause".into(),
    );
    assert_eq!(r.status(), 403);
    b.goto(&format!("{url}/console/releases/pos-app/2.4.0"));
    assert!(
        b.wait_text(".rollout-status").contains("active"),
        "unchanged"
    );

    // Sign-out: back to the form, and the console is closed again.
    b.click(&b.find("#sign-out"));
    b.wait_url("/console/login");
    assert!(!b.cookies().iter().any(|c| c.0 == "otter_session"));
    b.goto(&format!("{url}/console/fleet"));
    b.wait_url("/console/login");
    // The old session id is dead on the server too.
    let r = http
        .get(format!("{url}/console/fleet"))
        .header("cookie", format!("otter_session={}", session.1))
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);

    // An auditor reads the fleet and the release but gets no rollout controls, no restore
    // form, and a restore request it sends anyway (with its session's CSRF token) is
    // refused with 403.
    sign_in(&b, &url, &auditor);
    b.wait_url("/console/fleet");
    assert!(b.wait_text("#devices").contains(&device_id));
    b.goto(&format!("{url}/console/releases/pos-app/2.4.0"));
    assert!(b.find_all(".rollout-controls").is_empty());
    assert!(b.find_all("form[action*=\"/rollout\"]").is_empty());
    b.goto(&format!("{url}/console/backups?device={device_id}"));
    assert!(b.wait_text("#backup-devices").contains(&device_id));
    assert!(b.find_all("#restore-form").is_empty());
    let auditor_session = b
        .cookies()
        .into_iter()
        .find(|c| c.0 == "otter_session")
        .unwrap();
    let r = form_post(
        &format!("/console/backups/{device_id}/restore"),
        &auditor_session.1,
        format!(
            "csrf={}&sequence=1&reason=test&confirm={device_id}",
            csrf_of(&b)
        ),
    );
    assert_eq!(r.status(), 403);
    b.click(&b.find("#sign-out"));
    b.wait_url("/console/login");

    // A restorer requests a restore with the typed confirmation: accepted and recorded.
    sign_in(&b, &url, &restorer);
    b.wait_url("/console/backups");
    b.goto(&format!("{url}/console/backups?device={device_id}"));
    b.type_into(
        &b.find("#restore-reason"),
        "replacement terminal for lane 7",
    );
    b.type_into(&b.find("#restore-confirm"), &device_id);
    shoot(&b, &shots, "console-backups.png");
    b.click(&b.find("#request-restore"));
    b.wait_url("&requested=1");
    let requests = b.wait_text("#restore-requests");
    assert!(
        requests.contains("replacement terminal for lane 7"),
        "{requests}"
    );
    assert!(requests.contains("pending"), "{requests}");

    // The restorer orders a repair: the confirmation page says what it will lose, the typed
    // confirmation orders it, and the request is listed as a repair.
    b.click(&b.find("#repair"));
    let loss = b.wait_text("#repair-loss");
    assert!(loss.contains("What the repair will lose"), "{loss}");
    b.type_into(&b.find("#repair-reason"), "quick_check failed on lane 7");
    b.type_into(&b.find("#repair-confirm"), &device_id);
    b.click(&b.find("#order-repair"));
    let ordered = b.wait_text("#repair-ordered");
    assert!(ordered.contains("was ordered"), "{ordered}");
    let requests = b.wait_text("#restore-requests");
    assert!(
        requests.contains("repair: newest backup that verifies")
            && requests.contains("quick_check failed on lane 7"),
        "{requests}"
    );

    drop(b);
    let status = server.stop().expect("the server stops on SIGTERM");
    assert!(status.success(), "{status}");
    let server_log = std::fs::read_to_string(&log).unwrap();
    for secret in [&admin, &auditor, &restorer] {
        assert!(!server_log.contains(&secret[..]), "a token reached the log");
    }
}
