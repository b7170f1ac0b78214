#!/usr/bin/env bash
# Runs every test of the workspace. First installs what the tests need and is not a Rust crate:
# the standard `age` tool (backups must stay readable without Otter) and a Python venv with the
# TUF reference implementation, python-tuf (interoperability tests). Safe to run again: set-up
# steps skip what is already there. Ends with one summary line: "tests: N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v age >/dev/null; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "== installing the age tool (Debian package age)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq age
  else
    echo "error: the tests need the 'age' command (Debian/Ubuntu: sudo apt-get install age)" >&2
    exit 1
  fi
fi
bash scripts/python-venv.sh

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$log" || status=$?
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .* ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
echo
echo "tests: ${passed} passed, ${failed} failed"
exit "$status"
