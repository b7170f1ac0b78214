#!/usr/bin/env bash
# Runs every test of the workspace: sets up what the tests need (a Python venv with the TUF
# reference implementation, python-tuf, for the interoperability tests), then the test suite.
# Safe to run again: set-up steps skip what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/python-venv.sh
cargo test --workspace --locked "$@"
