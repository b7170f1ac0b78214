//! Runs hooks, install commands and health checks: argv only (no shell), in a given
//! directory, output to a log file, killed with its process group when the deadline passes.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `argv` in `cwd` with `envs` added; `Ok` on exit status 0 within `timeout`, else why
/// (with the tail of its output, kept in `log`).
pub(crate) fn run(
    argv: &[String],
    cwd: &Path,
    envs: &[(&str, String)],
    timeout: Duration,
    log: &Path,
) -> Result<(), String> {
    let Some(program) = argv.first() else {
        return Err("empty command".into());
    };
    // A relative program with a slash is relative to `cwd`, whatever the platform does.
    let program = if program.contains('/') && !program.starts_with('/') {
        cwd.join(program).into_os_string()
    } else {
        program.into()
    };
    if let Some(parent) = log.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    let out = fs::File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("opening {}: {e}", log.display()))?;
    let mut cmd = Command::new(&program);
    cmd.args(&argv[1..])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("could not start {:?}: {e}", argv[0]))?;
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for {:?}: {e}", argv[0])),
        }
        if Instant::now() >= deadline {
            // The whole process group: a shell's children must not outlive the deadline.
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{}", child.id())])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "did not finish within {} s and was killed{}",
                timeout.as_secs_f64(),
                tail(log)
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(25));
    };
    if status.success() {
        Ok(())
    } else {
        Err(format!("{status}{}", tail(log)))
    }
}

/// The last few hundred bytes of the log, for error messages.
fn tail(log: &Path) -> String {
    let Ok(mut f) = fs::File::open(log) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(400);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() || buf.is_empty() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&buf);
    format!("; output: {}", text.trim())
}
