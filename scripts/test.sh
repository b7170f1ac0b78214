#!/usr/bin/env bash
# Runs every test of the workspace. First installs what the tests need and is not a Rust crate:
# the standard `age` tool (backups must stay readable without Otter), systemd-analyze and curl
# (deployment checks), a Python venv with the TUF reference implementation, python-tuf
# (interoperability tests), and s3s-fs, an S3-compatible server (S3 store tests). Safe to run
# again: set-up steps skip what is already there. Ends with one summary line: "tests: N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use: the age tool, systemd-analyze (deploy/test-systemd.sh), curl,
# zstd (the demo), chromium and chromium-driver (the console's browser test).
need=()
command -v age >/dev/null || need+=(age)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v curl >/dev/null || need+=(curl)
# deploy/demo.sh (tests/tests/demo.rs) builds its sample bundles with tar and the zstd tool.
command -v zstd >/dev/null || need+=(zstd)
# The console's browser test (tests/tests/console_browser.rs): headless Chromium + chromedriver.
command -v chromedriver >/dev/null || need+=(chromium chromium-driver)
if ((${#need[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "== installing ${need[*]} (Debian packages)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  else
    echo "error: the tests need these commands: ${need[*]} (Debian/Ubuntu: sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
fi
bash scripts/python-venv.sh
# The S3 store's tests run against a real S3-compatible server, s3s-fs (cargo install, cached).
bash scripts/s3s-fs.sh install
export PATH="$HOME/.cargo/bin:$PATH"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .* ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
# Deployment checks (each script counts as one test): the systemd unit's sandbox
# (systemd-analyze verify and security) and every example config, started with the real server.
for check in deploy/test-systemd.sh deploy/test-configs.sh; do
  echo
  echo "== $check"
  if bash "$check"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    status=1
  fi
done
echo
echo "tests: ${passed} passed, ${failed} failed"
exit "$status"
