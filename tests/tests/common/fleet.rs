//! A small fleet for end-to-end tests: a real `otter-server serve` with a config file,
//! API tokens, bundles of one component, and terminals enrolled with `otter-agent enroll`,
//! each with its own state dir, install root and agent config.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::common::{command, show, ServerGuard};

/// The hardware model of every terminal.
pub const MODEL: &str = "pos-a";
/// The component every bundle installs.
pub const COMPONENT: &str = "pos-app";

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
    /// Everything lives here.
    pub tmp: tempfile::TempDir,
    /// The running server.
    pub server: ServerGuard,
    /// Its data dir.
    pub data: PathBuf,
    /// A publisher token, in a file.
    pub publisher: PathBuf,
}

/// One enrolled terminal.
pub struct Terminal {
    /// Its state dir.
    pub state: PathBuf,
    /// Its install root.
    pub root: PathBuf,
    /// Its agent config file.
    pub config: PathBuf,
    /// Its device id.
    pub device_id: String,
}

impl Fleet {
    /// Starts the server with `server_toml` as its config file.
    pub fn start(server_toml: &str) -> Fleet {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("server-data");
        let cfg = tmp.path().join("server.toml");
        std::fs::write(&cfg, server_toml).unwrap();
        let server = ServerGuard::start(
            &data,
            &["--config".as_ref(), cfg.as_os_str()],
            &tmp.path().join("server.log"),
        );
        let f = Fleet {
            publisher: tmp.path().join("publisher.token"),
            tmp,
            server,
            data,
        };
        let t = f.token("publisher");
        std::fs::write(&f.publisher, format!("{t}\n")).unwrap();
        f
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

    /// Enrolls a terminal called `name`.
    pub fn enroll(&self, name: &str) -> Terminal {
        let enroll_token = self.admin(&["enroll-token", "create", "--expires-in", "1h"]);
        let root_file = self.tmp.path().join("image-root.json");
        std::fs::copy(
            self.data.join("store/repo/metadata/1.root.json"),
            &root_file,
        )
        .unwrap();
        let base = self.tmp.path().join(name);
        let state = base.join("state");
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
        let root = base.join("opt-otter");
        let config = base.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = {:?}\ninstall_root = {:?}\n[update]\njitter_secs = 0\ndownload_attempts = 2\n[apply]\nhealth_timeout_secs = 20\n",
                state.to_str().unwrap(),
                root.to_str().unwrap()
            ),
        )
        .unwrap();
        Terminal {
            state,
            root,
            config,
            device_id: agent["device_id"].as_str().unwrap().to_owned(),
        }
    }

    /// The inventory entry of `device_id`.
    pub fn device(&self, device_id: &str) -> Value {
        let list: Value =
            serde_json::from_str(&self.admin(&["devices", "list", "--json"])).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .find(|d| d["device_id"] == device_id)
            .cloned()
            .unwrap_or_else(|| panic!("{device_id} not in {list}"))
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
        command("otter-agent")
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap()
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
