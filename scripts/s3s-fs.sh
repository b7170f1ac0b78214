#!/usr/bin/env bash
# s3s-fs: a small S3-compatible server on a local directory that checks SigV4 signatures.
# The S3 end-to-end tests (tests/tests/s3_*.rs) start their own on a free loopback port;
# this script installs it, and can run one by hand to try otter-server on S3.
#
#   scripts/s3s-fs.sh install        cargo install s3s-fs@0.14.1 (about 80 s on 2 cores);
#                                    does nothing when s3s-fs is already installed
#   scripts/s3s-fs.sh run DIR [PORT] runs s3s-fs on 127.0.0.1:PORT (default 8014) with a
#                                    bucket "otter" in DIR, random keys, in the foreground;
#                                    prints the [store] section and the AWS_* variables
#                                    for otter-server
#
# Newer s3s-fs versions need a newer rustc than the workspace's: keep 0.14.1.
set -euo pipefail

version=0.14.1
export PATH="$HOME/.cargo/bin:$PATH"

install() {
  if command -v s3s-fs >/dev/null; then
    return 0
  fi
  echo "== installing s3s-fs $version (cargo install, about 80 s)"
  cargo install "s3s-fs@$version" --locked --features binary --quiet
  command -v s3s-fs >/dev/null || {
    echo "error: s3s-fs is not on PATH after cargo install (is ~/.cargo/bin on PATH?)" >&2
    exit 1
  }
}

run() {
  local dir=${1:?usage: scripts/s3s-fs.sh run DIR [PORT]} port=${2:-8014}
  install
  mkdir -p "$dir/otter"
  local key secret
  key="GK$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  secret="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  cat <<EOF
s3s-fs on http://127.0.0.1:$port, bucket "otter" in $dir. For otter-server:

[store]
url = "s3://otter/dev"
endpoint = "http://127.0.0.1:$port"
allow_http = true

export AWS_ACCESS_KEY_ID=$key
export AWS_SECRET_ACCESS_KEY=$secret

Or run the S3 tests against it:
  OTTER_TEST_S3_ENDPOINT=http://127.0.0.1:$port OTTER_TEST_S3_BUCKET=otter \\
  OTTER_TEST_S3_REGION=us-east-1 OTTER_TEST_S3_ACCESS_KEY_ID=$key \\
  OTTER_TEST_S3_SECRET_ACCESS_KEY=$secret cargo test -p otter-tests --test 's3_*'
(Ctrl-C stops it.)
EOF
  exec s3s-fs --host 127.0.0.1 --port "$port" --access-key "$key" --secret-key "$secret" "$dir"
}

case ${1:-install} in
  install) install ;;
  run) shift; run "$@" ;;
  *) echo "usage: scripts/s3s-fs.sh install | run DIR [PORT]" >&2; exit 2 ;;
esac
