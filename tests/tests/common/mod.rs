//! Shared by the end-to-end tests: the workspace binaries and a real `otter-server serve`
//! on 127.0.0.1:0, stopped with SIGTERM when dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A binary of the workspace, from the target dir (`target/debug/deps/THIS` -> `target/debug`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// A command for a workspace binary, without the caller's OTTER_* (and AWS_*, which the
/// S3 store reads) environment.
pub fn command(name: &str) -> Command {
    let mut c = Command::new(bin(name));
    for (k, _) in std::env::vars() {
        if k.starts_with("OTTER_") || k.starts_with("AWS_") {
            c.env_remove(k);
        }
    }
    c
}

/// Exit status, stdout and stderr, for assertion messages.
pub fn show(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The server process; SIGTERM on drop, SIGKILL if it does not stop within 10 s.
pub struct ServerGuard {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl ServerGuard {
    /// Starts `otter-server serve` on 127.0.0.1:0 with `--data-dir DATA` and `extra`
    /// arguments, its log in `log`; waits until it says where it listens.
    pub fn start(data: &Path, extra: &[&std::ffi::OsStr], log: &Path) -> ServerGuard {
        ServerGuard::start_env(data, extra, &[], log)
    }

    /// [`ServerGuard::start`] with extra environment variables (e.g. S3 credentials).
    pub fn start_env(
        data: &Path,
        extra: &[&std::ffi::OsStr],
        env: &[(String, String)],
        log: &Path,
    ) -> ServerGuard {
        let mut child = command("otter-server")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut guard = ServerGuard {
            child: Some(child),
            url: String::new(),
        };
        let (tx, rx) = mpsc::channel();
        // Keep draining stdout so the server can never block on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        guard.url = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "the server did not say where it listens; its log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            });
        assert!(guard.url.starts_with("http://127.0.0.1:"), "{}", guard.url);
        guard
    }

    /// Sends SIGTERM and waits for the exit; SIGKILL after 10 s.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.stop();
    }
}
