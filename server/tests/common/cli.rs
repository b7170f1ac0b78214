//! The real `otter-server` binary, run from async tests: off the executor, without the
//! caller's `OTTER_*` settings, and with a token in `OTTER_TOKEN` when given.

use assert_cmd::Command;

/// Runs the binary off the async executor, with `token` in OTTER_TOKEN when given.
pub async fn cli(args: Vec<String>, token: Option<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::cargo_bin("otter-server").unwrap();
        cmd.args(&args)
            .env_remove("OTTER_DATA_DIR")
            .env_remove("OTTER_CONFIG")
            .env_remove("OTTER_SERVER")
            .env_remove("OTTER_TOKEN")
            .env("NO_PROXY", "*");
        if let Some(t) = token {
            cmd.env("OTTER_TOKEN", t);
        }
        cmd.output().unwrap()
    })
    .await
    .unwrap()
}

/// Owned arguments for [`cli`].
pub fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The stdout of a run that must have succeeded (its stderr otherwise).
pub fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}
