//! A production site for end-to-end tests: an offline key ceremony (`otter-keys init`), an
//! online passphrase, an optional server config and one terminal's agent config; helpers to
//! `otter-server init` a data dir, serve it, publish, enroll and update the terminal; and the
//! copies an operator makes of a running server (directory trees, SQLite's online backup).
//!
//! Everything lives in one temporary dir, laid out as
//!
//! ```text
//! TMP/online-pass  root-pass  ceremony/  server.toml (if any)  agent.toml
//! TMP/admin.token  publisher.token                    (written by Site::init)
//! TMP/otter-data/                                     (the default data dir)
//! TMP/terminal/state/  terminal/opt-otter/            (the one terminal)
//! ```
//!
//! Typical use (`mod common; #[path = "common/fleet.rs"] mod fleet;
//! #[path = "common/site.rs"] mod site;` at the top of the test: bundles come from fleet.rs):
//!
//! ```text
//! let s = Site::new(None);                  // or Some(SERVER_TOML)
//! s.init(&s.data);                          // otter-server init, admin and publisher tokens
//! let server = s.server("server.log", &[]);
//! s.publish(&server, "1.0.0");
//! s.enroll(&server, &s.data);
//! assert!(s.update().contains("installed 1.0.0"));
//! ```
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{command, show, ServerGuard};
use crate::fleet::{COMPONENT, MODEL};

/// The passphrase of the offline root keys (`TMP/root-pass`).
pub const ROOT_PASS: &str = "production site root passphrase";
/// The passphrase of the online keys (`TMP/online-pass`).
pub const ONLINE_PASS: &str = "production site online passphrase";

/// The stdout of a command that must have succeeded.
pub fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", show(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// A `COMPONENT` bundle at `version` with one payload file (`pos application VERSION`) and a
/// health check that passes once it is installed.
pub fn bundle(version: &str) -> Vec<u8> {
    crate::fleet::bundle(
        version,
        format!("pos application {version}\n").as_bytes(),
        &["/bin/sh", "-c", "test -f app.bin"],
    )
}

/// Copies a directory tree (regular files and directories only).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else if t.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// SQLite's online backup API (python3's sqlite3 module; `sqlite3 DB ".backup FILE"` does
/// the same): a consistent copy of a database that a running server keeps writing.
pub fn online_backup(db: &Path, to: &Path) {
    ok(Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\n\
             src = sqlite3.connect(sys.argv[1])\n\
             dst = sqlite3.connect(sys.argv[2])\n\
             src.backup(dst)\n\
             dst.close()\n\
             src.close()",
        ])
        .arg(db)
        .arg(to)
        .output()
        .unwrap());
}

/// The site: its files (see the module docs). Nothing runs until a test starts a server.
pub struct Site {
    /// Everything lives here.
    pub tmp: tempfile::TempDir,
    /// The online keys' passphrase file.
    pub pass: PathBuf,
    /// The offline root keys' passphrase file.
    pub root_pass: PathBuf,
    /// The server's config file, when [`Site::new`] was given one.
    pub config: Option<PathBuf>,
    /// The default data dir (`TMP/otter-data`); tests that move the server to another host
    /// use the `*_on` helpers with their own.
    pub data: PathBuf,
    /// The admin token that [`Site::init`] printed, in a file.
    pub admin: PathBuf,
    /// A publisher token, in a file (written by [`Site::init`]).
    pub publisher: PathBuf,
    /// The terminal's state dir.
    pub state: PathBuf,
    /// The terminal's install root.
    pub install_root: PathBuf,
    /// The terminal's agent config: its state dir and install root, no update jitter.
    pub agent_config: PathBuf,
}

impl Site {
    /// Runs the key ceremony (`otter-keys init` into `TMP/ceremony`), writes the agent
    /// config and, with `server_toml`, the server's config file. No data dir exists yet.
    pub fn new(server_toml: Option<&str>) -> Site {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let pass = t.join("online-pass");
        std::fs::write(&pass, format!("{ONLINE_PASS}\n")).unwrap();
        let root_pass = t.join("root-pass");
        std::fs::write(&root_pass, format!("{ROOT_PASS}\n")).unwrap();
        let config = server_toml.map(|toml| {
            let file = t.join("server.toml");
            std::fs::write(&file, toml).unwrap();
            file
        });
        let state = t.join("terminal/state");
        let install_root = t.join("terminal/opt-otter");
        let agent_config = t.join("agent.toml");
        std::fs::write(
            &agent_config,
            format!(
                "state_dir = {:?}\ninstall_root = {:?}\n[update]\njitter_secs = 0\n",
                state.to_str().unwrap(),
                install_root.to_str().unwrap()
            ),
        )
        .unwrap();
        let s = Site {
            pass,
            root_pass,
            config,
            data: t.join("otter-data"),
            admin: t.join("admin.token"),
            publisher: t.join("publisher.token"),
            state,
            install_root,
            agent_config,
            tmp,
        };
        ok(s.keys(&["init", "--dir", s.ceremony().to_str().unwrap()]));
        s
    }

    /// The temporary dir.
    pub fn t(&self) -> &Path {
        self.tmp.path()
    }

    /// The ceremony dir: `1.root.json` (and later roots), `keys/`.
    pub fn ceremony(&self) -> PathBuf {
        self.t().join("ceremony")
    }

    /// The first root, which the terminal trusts at enrollment.
    pub fn root_json(&self) -> PathBuf {
        self.ceremony().join("1.root.json")
    }

    /// `--config FILE` (if any) and `--passphrase-file FILE`, for `init` and `serve`.
    fn server_args(&self) -> Vec<&OsStr> {
        let mut args: Vec<&OsStr> = Vec::new();
        if let Some(c) = &self.config {
            args.extend(["--config".as_ref(), c.as_os_str()]);
        }
        args.extend(["--passphrase-file".as_ref(), self.pass.as_os_str()]);
        args
    }

    /// `otter-server init` of `data` from the ceremony's root and keys; writes the admin
    /// token it prints to [`Site::admin`] and a new publisher token to [`Site::publisher`].
    pub fn init(&self, data: &Path) {
        let ceremony = self.ceremony();
        let out = command("otter-server")
            .arg("init")
            .arg("--data-dir")
            .arg(data)
            .arg("--root")
            .arg(self.root_json())
            .arg("--keys-dir")
            .arg(ceremony.join("keys"))
            .args(self.server_args())
            .output()
            .unwrap();
        std::fs::write(&self.admin, ok(out).trim()).unwrap();
        let publisher = ok(self.host_on(data, &["token", "create", "--role", "publisher"]));
        std::fs::write(&self.publisher, publisher.trim()).unwrap();
    }

    /// `otter-server serve` on the default data dir with `extra` arguments, its log in
    /// `TMP/LOG`.
    pub fn server(&self, log: &str, extra: &[&str]) -> ServerGuard {
        self.server_on(&self.data, log, extra)
    }

    /// `otter-server serve` on `data` with `extra` arguments, its log in `TMP/LOG`.
    pub fn server_on(&self, data: &Path, log: &str, extra: &[&str]) -> ServerGuard {
        let mut args = self.server_args();
        args.extend(extra.iter().map(OsStr::new));
        ServerGuard::start(data, &args, &self.t().join(log))
    }

    /// `otter-server serve` on `data` with `extra` arguments must exit by itself with an
    /// error within 30 s (else the test fails: "the server started WHY"); returns its stderr.
    pub fn serve_refuses(&self, data: &Path, extra: &[&str], why: &str) -> String {
        let mut child = command("otter-server")
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .args(self.server_args())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                child.kill().unwrap();
                let _ = child.wait();
                panic!("the server started {why}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success(), "{}", show(&out));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `otter-server ARGS --data-dir DATA` on the default data dir.
    pub fn host(&self, args: &[&str]) -> Output {
        self.host_on(&self.data, args)
    }

    /// `otter-server ARGS --data-dir DATA`.
    pub fn host_on(&self, data: &Path, args: &[&str]) -> Output {
        command("otter-server")
            .args(args)
            .arg("--data-dir")
            .arg(data)
            .output()
            .unwrap()
    }

    /// `otter-keys ARGS` with both passphrase files (and a fast scrypt).
    pub fn keys(&self, args: &[&str]) -> Output {
        command("otter-keys")
            .env("OTTER_KEYS_SCRYPT_LOG_N", "10")
            .args(args)
            .arg("--passphrase-file")
            .arg(&self.root_pass)
            .arg("--online-passphrase-file")
            .arg(&self.pass)
            .output()
            .unwrap()
    }

    /// `otter-server publish` of [`bundle`]`(version)` with the publisher token, which must
    /// succeed.
    pub fn publish(&self, server: &ServerGuard, version: &str) {
        let file = self.t().join(format!("{COMPONENT}-{version}.bundle"));
        std::fs::write(&file, bundle(version)).unwrap();
        ok(command("otter-server")
            .args(["publish", "--server", &server.url, "--token-file"])
            .arg(&self.publisher)
            .arg(&file)
            .output()
            .unwrap());
    }

    /// Enrolls the terminal with `server` (an enrollment token made on `data`, its host),
    /// trusting the first root; must succeed.
    pub fn enroll(&self, server: &ServerGuard, data: &Path) {
        let token = ok(self.host_on(data, &["enroll-token", "create", "--expires-in", "1h"]));
        ok(command("otter-agent")
            .args(["enroll", "--server", &server.url, "--model", MODEL])
            .env("OTTER_ENROLL_TOKEN", token.trim())
            .arg("--trusted-root")
            .arg(self.root_json())
            .arg("--state-dir")
            .arg(&self.state)
            .output()
            .unwrap());
    }

    /// Points the enrolled terminal at `new_url` (a new host under the old DNS name would
    /// need nothing of this: here a restarted server listens on another loopback port).
    pub fn repoint(&self, old_url: &str, new_url: &str) {
        let file = self.state.join("agent.json");
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains(old_url), "{text}");
        let text = text.replace(old_url, new_url);
        serde_json::from_str::<serde_json::Value>(&text).unwrap();
        std::fs::write(&file, text).unwrap();
    }

    /// `otter-agent ARGS`.
    pub fn agent(&self, args: &[&str]) -> Output {
        command("otter-agent").args(args).output().unwrap()
    }

    /// `otter-agent update` with the terminal's config, which must succeed; its stdout.
    pub fn update(&self) -> String {
        ok(self.agent(&["update", "--config", self.agent_config.to_str().unwrap()]))
    }

    /// The terminal's active version of `COMPONENT`.
    pub fn active(&self) -> String {
        let link = self
            .install_root
            .join("components")
            .join(COMPONENT)
            .join("current");
        std::fs::read_link(link)
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
}
