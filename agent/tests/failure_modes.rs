//! Failure modes of issue 4 ("What must hold") for the whole update pass and the apply
//! engine: the server down, a server answering garbage, an unusable state dir, metadata
//! expired against the local clock, and a full disk. Each ends in exit status 1 (or an
//! error) whose message names what failed, and leaves no partial state: the trusted
//! metadata keeps exactly what it held, no target or component appears, and the active
//! version stays whole. (The TUF client alone is covered by unreachable_or_garbage_server.rs
//! and freeze.rs.)
//!
//! Running as root (CI), `chmod 000` does not stop reads: the unreadable-state-dir case then
//! uses a state dir that is a regular file and one whose agent.json is unreadable garbage,
//! and checks the chmod case only when it takes effect. The clock is "far off" by signing
//! metadata that expired before the local clock's now (no faketime needed). A full disk is
//! a 4 MiB tmpfs under the install root when `mount -t tmpfs` works (root), and always a
//! file size limit (`ulimit -f`, SIGXFSZ ignored so writes fail with EFBIG) for downloads,
//! and for the apply when no tmpfs can be mounted (or `OTTER_TEST_NO_TMPFS` is set).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod apply_common;
mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use common::{dead_url, past, Repo, Server};
use otter_agent::apply::{Applier, ApplyError};
use otter_agent::device::Identity;

fn agent() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_otter-agent"));
    for (k, _) in std::env::vars() {
        if k.starts_with("OTTER_") || k.ends_with("_proxy") || k.ends_with("_PROXY") {
            c.env_remove(k);
        }
    }
    c
}

/// Every file under `dir`, with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
                out.insert(rel, fs::read(&p).unwrap_or_default());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// An enrolled-looking terminal whose repository is at `metadata_url`/`targets_url`,
/// pinned to `root`; returns (state dir, config file, install root).
fn terminal(
    tmp: &Path,
    server: &str,
    metadata_url: &str,
    targets_url: &str,
    root: &[u8],
) -> (PathBuf, PathBuf, PathBuf) {
    let state = tmp.join("state");
    fs::create_dir_all(&state).unwrap();
    Identity::generate().save(&state).unwrap();
    otter_agent::tuf::init_metadata_dir(&state.join("tuf"), root).unwrap();
    let agent_json = serde_json::json!({
        "device_id": "dev-0123456789abcdef",
        "server_url": server,
        "metadata_url": metadata_url,
        "targets_url": targets_url,
        "hardware_model": "pos-a",
        "group": null,
        "enrolled_at": 1,
    });
    fs::write(state.join("agent.json"), agent_json.to_string()).unwrap();
    let install = tmp.join("root");
    let config = tmp.join("agent.toml");
    fs::write(
        &config,
        format!(
            "state_dir = {:?}\ninstall_root = {:?}\n[server]\nconnect_timeout_secs = 2\nrequest_timeout_secs = 5\n",
            state, install
        ),
    )
    .unwrap();
    (state, config, install)
}

fn update(config: &Path) -> Output {
    agent()
        .args(["update", "--config"])
        .arg(config)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the pass failed with exit status 1 and a message containing every one of `words`.
fn assert_failed(o: &Output, words: &[&str]) {
    let e = stderr(o);
    eprintln!("refused as expected: {}", e.trim_end());
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout: {}\nstderr: {e}",
        String::from_utf8_lossy(&o.stdout)
    );
    for w in words {
        assert!(e.contains(w), "{w:?} missing from: {e}");
    }
}

/// No component was installed and no target downloaded.
fn assert_nothing_installed(state: &Path, install: &Path) {
    let comps = files(&install.join("components"));
    assert!(comps.is_empty(), "{comps:?}");
    let dl = files(&state.join("downloads"));
    assert!(dl.is_empty(), "{dl:?}");
}

#[test]
fn an_update_with_the_server_down_fails_clearly_and_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new();
    let url = dead_url();
    let (state, config, install) = terminal(
        tmp.path(),
        &url,
        &format!("{url}/metadata"),
        &format!("{url}/targets"),
        &repo.root_bytes(1),
    );
    let tuf_before = files(&state.join("tuf"));
    let o = update(&config);
    let port = url.rsplit(':').next().unwrap();
    assert_failed(&o, &["refreshing the trusted metadata", port]);
    assert_eq!(files(&state.join("tuf")), tuf_before);
    assert_nothing_installed(&state, &install);
    // The failed poll is recorded for `status`, with the same cause.
    let status: serde_json::Value =
        serde_json::from_slice(&fs::read(state.join("status.json")).unwrap()).unwrap();
    assert_eq!(status["last_poll"]["ok"], false);
    assert!(status["last_poll"]["message"]
        .as_str()
        .unwrap()
        .contains(port));
}

/// A loopback server answering every connection with `reply`, whatever was asked.
struct Junk {
    url: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Junk {
    fn start(reply: Vec<u8>) -> Junk {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for conn in l.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(&reply);
            }
        });
        Junk {
            url,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Junk {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(self.url.trim_start_matches("http://"));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn an_update_against_a_server_sending_garbage_fails_clearly_and_stores_nothing() {
    let repo = Repo::new();
    let body = b"\x00\xffthis is not metadata {{{";
    let mut ok_garbage = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    ok_garbage.extend_from_slice(body);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("200 with a garbage body", ok_garbage),
        (
            "not HTTP at all",
            b"SSH-2.0-OpenSSH_9.6\r\n\x00\x01\x02".to_vec(),
        ),
        (
            "a cut response",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n{\"signed\":".to_vec(),
        ),
    ];
    for (what, reply) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let junk = Junk::start(reply);
        let (state, config, install) = terminal(
            tmp.path(),
            &junk.url,
            &format!("{}/metadata", junk.url),
            &format!("{}/targets", junk.url),
            &repo.root_bytes(1),
        );
        let tuf_before = files(&state.join("tuf"));
        let o = update(&config);
        assert_failed(&o, &["refreshing the trusted metadata"]);
        assert!(stderr(&o).len() > 40, "{what}: {}", stderr(&o));
        assert_eq!(files(&state.join("tuf")), tuf_before, "{what}");
        assert_nothing_installed(&state, &install);
        drop(junk);
    }
}

#[test]
fn an_unusable_state_dir_is_refused_clearly_and_left_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::new();
    let server = Server::serve(&repo);
    let (state, config, install) = terminal(
        tmp.path(),
        &server.url(),
        &server.metadata_url(),
        &server.targets_url(),
        &repo.root_bytes(1),
    );

    // agent.json unreadable as JSON.
    fs::write(state.join("agent.json"), b"\x00garbage").unwrap();
    let before = files(&state);
    let o = update(&config);
    assert_failed(&o, &["agent.json"]);
    assert_eq!(files(&state), before, "nothing written into the state dir");
    assert!(!install.join("components").exists());

    // The state dir is a regular file.
    let file_state = tmp.path().join("state-file");
    fs::write(&file_state, b"not a directory").unwrap();
    let cfg2 = tmp.path().join("agent2.toml");
    fs::write(
        &cfg2,
        format!("state_dir = {file_state:?}\ninstall_root = {install:?}\n"),
    )
    .unwrap();
    let o = update(&cfg2);
    assert_failed(&o, &[file_state.to_str().unwrap()]);
    assert_eq!(fs::read(&file_state).unwrap(), b"not a directory");
    assert!(!install.join("components").exists());

    // chmod 000: refused where it takes effect (not for root, who reads anyway).
    let (state3, config3, _) = terminal(
        &tmp.path().join("t3"),
        &server.url(),
        &server.metadata_url(),
        &server.targets_url(),
        &repo.root_bytes(1),
    );
    fs::set_permissions(&state3, fs::Permissions::from_mode(0o000)).unwrap();
    let effective = fs::read_dir(&state3).is_err();
    let o = update(&config3);
    fs::set_permissions(&state3, fs::Permissions::from_mode(0o700)).unwrap();
    if effective {
        assert_failed(&o, &[state3.to_str().unwrap()]);
    } else {
        // Root: permissions do not apply; the pass works, which is what root asked for.
        eprintln!("note: running as root, chmod 000 does not make the state dir unreadable");
    }
}

#[test]
fn metadata_expired_against_the_local_clock_is_refused_with_a_clock_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let mut repo = Repo::new();
    // Signed valid until a time the local clock has passed: as if the terminal's clock ran
    // far ahead (or a mirror froze the repository).
    repo.timestamp.expires = past();
    repo.update_timestamp();
    let server = Server::serve(&repo);
    let (state, config, install) = terminal(
        tmp.path(),
        &server.url(),
        &server.metadata_url(),
        &server.targets_url(),
        &repo.root_bytes(1),
    );
    let tuf_before = files(&state.join("tuf"));
    let o = update(&config);
    assert_failed(&o, &["timestamp metadata expired at", "clock"]);
    assert_eq!(files(&state.join("tuf")), tuf_before);
    assert_nothing_installed(&state, &install);
}

/// A tmpfs mounted at a path, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        fs::create_dir_all(path).unwrap();
        if std::env::var_os("OTTER_TEST_NO_TMPFS").is_some() {
            return Err("OTTER_TEST_NO_TMPFS is set".into());
        }
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| e.to_string())?;
        if o.status.success() {
            Ok(Tmpfs(path.to_path_buf()))
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Set in the child that installs under a file size limit (when no tmpfs can be mounted).
const CHILD_ENV: &str = "OTTER_FAILURE_MODES_APPLY_CHILD";

#[test]
fn a_full_disk_during_apply_keeps_the_old_version_whole() {
    if let Ok(args) = std::env::var(CHILD_ENV) {
        // The child: install the big bundle into the prepared root, print the error.
        let parts: Vec<&str> = args.split('\n').collect();
        let s2 = big_spec();
        let (mut a, _) = Applier::open(Path::new(parts[0]), apply_common::quick_config()).unwrap();
        match a.install(Path::new(parts[1]), &s2.expected()) {
            Ok(o) => println!("CHILD-OK {o:?}"),
            Err(e) => println!("CHILD-ERR {}", e),
        }
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let mounted = Tmpfs::mount(&root, "4m");
    if let Err(why) = &mounted {
        eprintln!("note: cannot mount a tmpfs ({why}); the full disk is a file size limit instead");
    }
    let s1 = apply_common::Spec::new("pos-app", "1.0.0");
    let b1 = s1.build(tmp.path());
    let (mut a, _) = Applier::open(&root, apply_common::quick_config()).unwrap();
    a.install(&b1, &s1.expected()).unwrap();

    // 8 MiB of payload on a 4 MiB file system, or past a 1 MiB file size limit.
    let s2 = big_spec();
    let b2 = s2.build(tmp.path());
    let msg = if mounted.is_ok() {
        let err = a.install(&b2, &s2.expected()).unwrap_err();
        assert!(matches!(err, ApplyError::Io { .. }), "{err}");
        err.to_string()
    } else {
        drop(a);
        let o = Command::new("/bin/sh")
            .args(["-c", "trap '' XFSZ; ulimit -f 2048; exec \"$0\" \"$@\""])
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_full_disk_during_apply_keeps_the_old_version_whole",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{}\n{}", root.display(), b2.display()))
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let line = out
            .lines()
            .find_map(|l| l.find("CHILD-").map(|i| &l[i..]))
            .unwrap_or_else(|| panic!("child said: {out}{}", stderr(&o)))
            .to_string();
        assert!(line.starts_with("CHILD-ERR"), "{line}");
        a = Applier::open(&root, apply_common::quick_config())
            .unwrap()
            .0;
        line
    };
    assert!(
        msg.contains("No space left on device") || msg.contains("File too large"),
        "{msg}"
    );
    assert!(msg.contains("big.bin"), "{msg}");

    assert_eq!(
        apply_common::link(&root, "pos-app").as_deref(),
        Some("1.0.0")
    );
    assert_eq!(
        apply_common::read_tree(&apply_common::current(&root, "pos-app")),
        s1.tree()
    );
    assert!(!root.join("components/pos-app/2.0.0").exists());
    assert!(files(&root.join("staging")).is_empty());
    let newest = &a.history(1).unwrap()[0];
    assert_eq!(newest.state, "aborted");
    drop(a);

    // The space is back: re-opening finds nothing to recover and a small update installs.
    let (mut a, rec) = Applier::open(&root, apply_common::quick_config()).unwrap();
    assert!(rec.is_empty(), "{rec:?}");
    let s3 = apply_common::Spec::new("pos-app", "3.0.0");
    let b3 = s3.build(tmp.path());
    a.install(&b3, &s3.expected()).unwrap();
    assert_eq!(
        apply_common::link(&root, "pos-app").as_deref(),
        Some("3.0.0")
    );
    drop(a);
    drop(mounted);
}

/// Version 2.0.0 with 8 MiB of payload.
fn big_spec() -> apply_common::Spec {
    let mut s2 = apply_common::Spec::new("pos-app", "2.0.0");
    let big: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    s2.files.push(("data/big.bin".into(), big, false));
    s2
}

#[test]
fn a_full_disk_during_a_download_stores_no_target() {
    let mut repo = Repo::new();
    let content: Vec<u8> = (0..2 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    repo.add_target("targets", "pos.bin", &content);
    repo.release(&["targets"]);
    let server = Server::serve(&repo);
    let tmp = tempfile::tempdir().unwrap();
    let md = tmp.path().join("metadata");
    let td = tmp.path().join("targets");
    otter_agent::tuf::init_metadata_dir(&md, &repo.root_bytes(1)).unwrap();
    fs::create_dir_all(&td).unwrap();
    let args = |limited: bool| {
        let mut c = if limited {
            // 512 KiB at most per file (dash and bash count in 512- or 1024-byte blocks:
            // either way far below the 2 MiB target); SIGXFSZ ignored, so the write fails
            // with EFBIG like a full disk fails with ENOSPC.
            let mut c = Command::new("/bin/sh");
            c.args(["-c", "trap '' XFSZ; ulimit -f 512; exec \"$0\" \"$@\""])
                .arg(env!("CARGO_BIN_EXE_otter-agent"));
            c
        } else {
            agent()
        };
        c.args(["tuf", "--metadata-dir"])
            .arg(&md)
            .args(["--metadata-url", &server.metadata_url()])
            .args(["--target-base-url", &server.targets_url()])
            .args(["--target-name", "pos.bin", "--target-dir"])
            .arg(&td)
            .arg("download");
        for (k, _) in std::env::vars() {
            if k.ends_with("_proxy") || k.ends_with("_PROXY") {
                c.env_remove(k);
            }
        }
        c.output().unwrap()
    };
    let o = args(true);
    assert_failed(&o, &["File too large"]);
    assert!(!td.join("pos.bin").exists(), "no (partial) target stored");
    let leftovers = files(&td);
    assert!(
        leftovers.values().all(|v| v.len() < content.len()),
        "{:?}",
        leftovers.keys()
    );
    // With room again the same command completes and the target is whole.
    let o = args(false);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(fs::read(td.join("pos.bin")).unwrap(), content);
}
