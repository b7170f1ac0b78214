//! A small fleet for end-to-end tests: a real `otter-server serve` with a config file,
//! API tokens, bundles of one component, and terminals enrolled with `otter-agent enroll`,
//! each with its own state dir, install root and agent config.
//!
//! Everything lives in one temporary dir, laid out as
//!
//! ```text
//! TMP/server.toml  server.log  server-data/  publisher.token  image-root.json
//! TMP/NAME/state/  NAME/opt-otter/  NAME/agent.toml        (one per enrolled terminal)
//! ```
//!
//! Typical use (`mod common; #[path = "common/fleet.rs"] mod fleet;` at the top of the test):
//!
//! ```text
//! let fleet = Fleet::builder()
//!     .recovery_key()                                   // [backups] recovery_recipient
//!     .server_toml("[backups.retention]\nkeep_last = 2\n")
//!     .start();                                         // or Fleet::start(TOML)
//! let t = fleet.enroll("terminal");
//! t.append_config("[backup]\ndatabase = \"...\"\n");
//! fleet.publish("1.0.0", &bundle("1.0.0", b"app", &["/bin/true"]), &[]);
//! assert!(t.agent(&["update"]).status.success());
//! ```
//!
//! The server is stopped (SIGTERM, then SIGKILL) when the [`Fleet`] is dropped, before its
//! temporary dir is removed.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use otter_keys::age::x25519::Identity;
use serde_json::Value;

use crate::common::{command, show, ServerGuard};

/// The hardware model of every terminal.
pub const MODEL: &str = "pos-a";
/// The component every bundle installs.
pub const COMPONENT: &str = "pos-app";
/// The agent config sections [`Fleet::enroll`] writes after `state_dir` and `install_root`:
/// no jitter, two download attempts, a 20 s health check deadline.
pub const AGENT_SECTIONS: &str =
    "[update]\njitter_secs = 0\ndownload_attempts = 2\n[apply]\nhealth_timeout_secs = 20\n";

/// A bundle of `COMPONENT` at `version`: one payload file and a health command.
pub fn bundle(version: &str, payload: &[u8], health: &[&str]) -> Vec<u8> {
    let manifest = serde_json::to_vec(&serde_json::json!({
        "name": COMPONENT, "kind": "firmware", "version": version,
        "hardware": [MODEL],
        "payload": [{"path": "app.bin", "size": payload.len(),
                     "sha256": otter_keys::hash::sha256_hex(payload)}],
        "health": health,
    }))
    .unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in [("manifest.json", &manifest[..]), ("app.bin", payload)] {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    zstd::encode_all(&b.into_inner().unwrap()[..], 1).unwrap()
}

/// The server, its data dir and a publisher token file.
pub struct Fleet {
    /// The running server. Declared first so that it is stopped before `tmp` is removed.
    pub server: ServerGuard,
    /// Everything lives here.
    pub tmp: tempfile::TempDir,
    /// Its data dir (`TMP/server-data`).
    pub data: PathBuf,
    /// A publisher token, in a file (`TMP/publisher.token`).
    pub publisher: PathBuf,
    /// The same publisher token, for `OTTER_TOKEN`.
    pub publisher_token: String,
    /// The server's config file (`TMP/server.toml`).
    pub config: PathBuf,
    /// The server's log (its stderr): `TMP/server.log`, or the one [`Fleet::restart`] named.
    pub log: PathBuf,
    /// The fleet recovery identity, with [`FleetBuilder::recovery_key`].
    pub recovery: Option<Identity>,
    /// Extra environment of the server process ([`FleetBuilder::server_env`]).
    env: Vec<(String, String)>,
}

/// How to start a [`Fleet`]: [`Fleet::builder`], a few choices, then [`FleetBuilder::start`].
#[derive(Default)]
pub struct FleetBuilder {
    tmp: Option<tempfile::TempDir>,
    server_toml: String,
    recovery: bool,
    backups_toml: String,
    env: Vec<(String, String)>,
}

impl FleetBuilder {
    /// Adds `toml` to the server's config file. It comes after the `[backups]` table that
    /// [`FleetBuilder::recovery_key`] and [`FleetBuilder::backups_toml`] write, so it must
    /// not open `[backups]` again
    /// (sub-tables such as `[backups.retention]` are fine).
    pub fn server_toml(mut self, toml: &str) -> Self {
        self.server_toml.push_str(toml);
        self
    }

    /// Gives the fleet a recovery key: a new age identity (in [`Fleet::recovery`]) whose
    /// public half is the server's `[backups] recovery_recipient`.
    pub fn recovery_key(mut self) -> Self {
        self.recovery = true;
        self
    }

    /// Adds `toml` (keys, e.g. `write_only_groups = ["lab"]`) to the server's `[backups]`
    /// table, after the `recovery_recipient` of [`FleetBuilder::recovery_key`].
    pub fn backups_toml(mut self, toml: &str) -> Self {
        self.backups_toml.push_str(toml);
        self
    }

    /// Sets `key=value` in the server's environment (also after [`Fleet::restart`]), e.g.
    /// `OTTER_LOG` for a log level. The caller's own `OTTER_*` variables never reach it.
    pub fn server_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Uses `tmp` instead of a new temporary dir, for files that the server's config names
    /// and that must exist before it starts (e.g. a webhook secret).
    pub fn in_dir(mut self, tmp: tempfile::TempDir) -> Self {
        self.tmp = Some(tmp);
        self
    }

    /// Writes the config, starts the server and creates the publisher token.
    pub fn start(self) -> Fleet {
        let tmp = match self.tmp {
            Some(t) => t,
            None => tempfile::tempdir().unwrap(),
        };
        let recovery = self.recovery.then(Identity::generate);
        let mut toml = String::new();
        if recovery.is_some() || !self.backups_toml.is_empty() {
            toml.push_str("[backups]\n");
        }
        if let Some(r) = &recovery {
            toml.push_str(&format!("recovery_recipient = \"{}\"\n", r.to_public()));
        }
        toml.push_str(&self.backups_toml);
        toml.push_str(&self.server_toml);
        let data = tmp.path().join("server-data");
        let config = tmp.path().join("server.toml");
        std::fs::write(&config, toml).unwrap();
        let log = tmp.path().join("server.log");
        let server = ServerGuard::start_env(
            &data,
            &["--config".as_ref(), config.as_os_str()],
            &self.env,
            &log,
        );
        let mut f = Fleet {
            server,
            publisher: tmp.path().join("publisher.token"),
            publisher_token: String::new(),
            tmp,
            data,
            config,
            log,
            recovery,
            env: self.env,
        };
        f.publisher_token = f.token("publisher");
        std::fs::write(&f.publisher, format!("{}\n", f.publisher_token)).unwrap();
        f
    }
}

/// One enrolled terminal.
pub struct Terminal {
    /// Its own dir, `TMP/NAME`: a place for its database and extra config files.
    pub dir: PathBuf,
    /// Its state dir (`TMP/NAME/state`).
    pub state: PathBuf,
    /// Its install root (`TMP/NAME/opt-otter`).
    pub root: PathBuf,
    /// Its agent config file (`TMP/NAME/agent.toml`).
    pub config: PathBuf,
    /// Its device id.
    pub device_id: String,
}

impl Fleet {
    /// A builder for a fleet with more than a config file (see [`FleetBuilder`]).
    pub fn builder() -> FleetBuilder {
        FleetBuilder::default()
    }

    /// Starts the server with `server_toml` as its config file.
    pub fn start(server_toml: &str) -> Fleet {
        Fleet::builder().server_toml(server_toml).start()
    }

    /// The server's URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.server.url
    }

    /// The recovery identity; panics if the fleet was started without one.
    pub fn recovery(&self) -> &Identity {
        self.recovery
            .as_ref()
            .expect("the fleet has no recovery key: start it with .recovery_key()")
    }

    /// Stops the server if it still runs and starts it again on the same data dir and
    /// config, on a new port (`self.server.url` changes), its log in `TMP/LOG_NAME`.
    pub fn restart(&mut self, log_name: &str) {
        self.server.stop();
        self.log = self.tmp.path().join(log_name);
        self.server = ServerGuard::start_env(
            &self.data,
            &["--config".as_ref(), self.config.as_os_str()],
            &self.env,
            &self.log,
        );
    }

    /// `otter-server ARGS --data-dir DATA`, which must succeed; its trimmed stdout.
    pub fn admin(&self, args: &[&str]) -> String {
        let out = command("otter-server")
            .args(args)
            .arg("--data-dir")
            .arg(&self.data)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", show(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// A new API token with `role`.
    pub fn token(&self, role: &str) -> String {
        self.admin(&["token", "create", "--role", role])
    }

    /// `otter-server publish` of `bytes` with extra flags; its output.
    pub fn publish_raw(&self, version: &str, bytes: &[u8], flags: &[&str]) -> Output {
        let file = self
            .tmp
            .path()
            .join(format!("{COMPONENT}-{version}.bundle"));
        std::fs::write(&file, bytes).unwrap();
        command("otter-server")
            .args(["publish", "--server", &self.server.url, "--token-file"])
            .arg(&self.publisher)
            .args(flags)
            .arg(&file)
            .output()
            .unwrap()
    }

    /// `otter-server publish`, which must succeed; the server's answer.
    pub fn publish(&self, version: &str, bytes: &[u8], flags: &[&str]) -> Value {
        let out = self.publish_raw(version, bytes, flags);
        assert!(out.status.success(), "{}", show(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Enrolls a terminal called `name` (model [`MODEL`], a one-hour enrollment token, the
    /// server's first root pinned) with `otter-agent enroll`, which must succeed, and writes
    /// its agent config with [`AGENT_SECTIONS`].
    pub fn enroll(&self, name: &str) -> Terminal {
        self.enroll_in(name, None)
    }

    /// [`Fleet::enroll`] with an enrollment token of `group` (none: no group).
    pub fn enroll_in(&self, name: &str, group: Option<&str>) -> Terminal {
        let mut token_args = vec!["enroll-token", "create", "--expires-in", "1h"];
        if let Some(g) = group {
            token_args.extend(["--group", g]);
        }
        let enroll_token = self.admin(&token_args);
        let root_file = self.tmp.path().join("image-root.json");
        std::fs::copy(
            self.data.join("store/repo/metadata/1.root.json"),
            &root_file,
        )
        .unwrap();
        let dir = self.tmp.path().join(name);
        let state = dir.join("state");
        let out = command("otter-agent")
            .args(["enroll", "--server", &self.server.url, "--model", MODEL])
            .env("OTTER_ENROLL_TOKEN", &enroll_token)
            .arg("--trusted-root")
            .arg(&root_file)
            .arg("--state-dir")
            .arg(&state)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", show(&out));
        let agent: Value =
            serde_json::from_slice(&std::fs::read(state.join("agent.json")).unwrap()).unwrap();
        let t = Terminal {
            root: dir.join("opt-otter"),
            config: dir.join("agent.toml"),
            device_id: agent["device_id"].as_str().unwrap().to_owned(),
            state,
            dir,
        };
        t.write_config("agent.toml", AGENT_SECTIONS);
        t
    }

    /// The device inventory (`otter-server devices list --json`).
    pub fn devices(&self) -> Vec<Value> {
        let list: Value =
            serde_json::from_str(&self.admin(&["devices", "list", "--json"])).unwrap();
        list.as_array().unwrap().clone()
    }

    /// The inventory entry of `device_id`.
    pub fn device(&self, device_id: &str) -> Value {
        let list = self.devices();
        list.iter()
            .find(|d| d["device_id"] == device_id)
            .cloned()
            .unwrap_or_else(|| panic!("{device_id} not in {list:?}"))
    }

    /// The backup catalog (`otter-server backups list --json`), of one device or all.
    pub fn backups(&self, device: Option<&str>) -> Vec<Value> {
        let mut args = vec!["backups", "list", "--json"];
        if let Some(d) = device {
            args.extend(["--device", d]);
        }
        let list: Value = serde_json::from_str(&self.admin(&args)).unwrap();
        list.as_array().unwrap().clone()
    }

    /// A GET of the API with `token`: status and JSON body.
    pub fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let res = reqwest::blocking::Client::new()
            .get(format!("{}{path}", self.server.url))
            .bearer_auth(token)
            .send()
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().unwrap_or(Value::Null))
    }

    /// The newest signed targets metadata the server serves.
    pub fn latest_targets(&self) -> Value {
        let dir = self.data.join("store/repo/metadata");
        let newest = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                let v = name.strip_suffix(".targets.json")?.parse::<u64>().ok()?;
                Some(v)
            })
            .max()
            .unwrap();
        serde_json::from_slice(&std::fs::read(dir.join(format!("{newest}.targets.json"))).unwrap())
            .unwrap()
    }
}

impl Terminal {
    /// `otter-agent ARGS --config CONFIG`.
    pub fn agent(&self, args: &[&str]) -> Output {
        self.agent_with(&self.config, args)
    }

    /// `otter-agent ARGS --config CONFIG` with another config file (see
    /// [`Terminal::write_config`]).
    pub fn agent_with(&self, config: &Path, args: &[&str]) -> Output {
        command("otter-agent")
            .args(args)
            .arg("--config")
            .arg(config)
            .output()
            .unwrap()
    }

    /// Writes an agent config `DIR/FILE_NAME` for this terminal: its `state_dir` and
    /// `install_root`, then `sections` (TOML). `"agent.toml"` replaces its config.
    pub fn write_config(&self, file_name: &str, sections: &str) -> PathBuf {
        let path = self.dir.join(file_name);
        std::fs::create_dir_all(&self.dir).unwrap();
        std::fs::write(
            &path,
            format!(
                "state_dir = {:?}\ninstall_root = {:?}\n{sections}",
                self.state.to_str().unwrap(),
                self.root.to_str().unwrap()
            ),
        )
        .unwrap();
        path
    }

    /// Appends `toml` (whole sections) to its config file.
    pub fn append_config(&self, toml: &str) {
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        text.push_str(toml);
        std::fs::write(&self.config, text).unwrap();
    }

    /// The active version of `COMPONENT`, if any.
    pub fn active(&self) -> Option<String> {
        let link = self.root.join("components").join(COMPONENT).join("current");
        std::fs::read_link(link)
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }

    /// `otter-agent status --json`, which must succeed.
    pub fn status(&self) -> Value {
        let out = self.agent(&["status", "--json"]);
        assert!(out.status.success(), "{}", show(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The install root's path.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// The value of the `name` cookie a response sets.
pub fn cookie(r: &reqwest::blocking::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap_or("").to_string())
}

/// Signs in to the console with `token`; returns the session cookie.
pub fn console_session(c: &reqwest::blocking::Client, url: &str, token: &str) -> String {
    let r = c.get(format!("{url}/console/login")).send().unwrap();
    assert_eq!(r.status(), 200);
    let nonce = cookie(&r, "otter_login").expect("a sign-in nonce cookie");
    let r = c
        .post(format!("{url}/console/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", format!("otter_login={nonce}"))
        .body(format!("token={token}&login_csrf={nonce}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 303, "sign-in redirects");
    cookie(&r, "otter_session").expect("a session cookie")
}
