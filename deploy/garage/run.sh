#!/usr/bin/env bash
# A single Garage node on loopback (Garage: a distributed, S3-compatible object store, the
# scale-out store of Otter; docs/storage.md), and Otter's S3 flows run against it.
#
#   deploy/garage/run.sh [test]   install Garage if missing, start a node in a temporary
#                                 directory, configure it, run the S3 end-to-end tests
#                                 (tests/tests/s3_*.rs: publish, serve, TUF download,
#                                 restart, backup and restore, static mirror) against it,
#                                 stop it. Prints "garage: ok" or names what failed.
#   deploy/garage/run.sh up DIR   start and configure a node with its files in DIR, in the
#                                 background; DIR/env holds the AWS_* and OTTER_TEST_S3_*
#                                 variables and DIR/otter-store.toml the [store] section for
#                                 otter-server
#   deploy/garage/run.sh down DIR stop that node
#   deploy/garage/run.sh install  only install Garage (cached: nothing to do when `garage`
#                                 is on PATH)
#
# Installing builds Garage from source (cargo install garage@2.5.0, about 11 minutes on two
# cores), so CI does not run this script: CI runs the same tests against s3s-fs.
# Configuration steps are those of Garage's manual (layout assign and apply, bucket create,
# key create, bucket allow); they work on every 2.x version. Garage ignores S3's
# create-if-absent (If-None-Match: * on PUT); Otter does not rely on it.
set -euo pipefail
cd "$(dirname "$0")/../.."

version=2.5.0
bucket=otter
export PATH="$HOME/.cargo/bin:$PATH"

fail() { echo "garage: FAILED: $*" >&2; exit 1; }

install() {
  command -v garage >/dev/null && return 0
  echo "== installing Garage $version (cargo install, about 11 minutes)"
  cargo install "garage@$version" --locked --no-default-features \
    --features bundled-libs,lmdb,sqlite --quiet
  command -v garage >/dev/null || fail "garage is not on PATH after cargo install"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }

up() {
  local dir=${1:?usage: deploy/garage/run.sh up DIR}
  install
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [[ -e $dir/garage.pid ]] && fail "$dir/garage.pid exists: a node may run there (deploy/garage/run.sh down $dir)"
  local s3_port rpc_port admin_port cfg=$dir/garage.toml
  s3_port=$(free_port)
  rpc_port=$(free_port)
  admin_port=$(free_port)
  (
    umask 077
    cat >"$cfg" <<EOF
# Single-node Garage for Otter's tests, written by deploy/garage/run.sh.
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1

rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(hex 32)"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
admin_token = "$(hex 32)"
EOF
  )
  export GARAGE_CONFIG_FILE=$cfg
  garage server >"$dir/garage.log" 2>&1 &
  echo $! >"$dir/garage.pid"

  local ok=
  for _ in $(seq 120); do
    if garage status >/dev/null 2>&1; then ok=1; break; fi
    kill -0 "$(cat "$dir/garage.pid")" 2>/dev/null || break
    sleep 0.5
  done
  [[ -n $ok ]] || fail "the node did not start:"$'\n'"$(tail -n 20 "$dir/garage.log")"

  local node
  node=$(garage node id -q 2>/dev/null | cut -d@ -f1)
  [[ -n $node ]] || fail "garage node id printed nothing"
  garage layout assign -z dc1 -c 1G "$node" >/dev/null
  garage layout apply --version 1 >/dev/null
  # The new layout takes a moment to be used: retry the first bucket operation.
  ok=
  for _ in $(seq 60); do
    if garage bucket create "$bucket" >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.5
  done
  [[ -n $ok ]] || fail "garage bucket create $bucket kept failing"
  local out key secret
  out=$(garage key create otter-server)
  key=$(awk -F'\t| +' '/^Key ID:/ {print $NF}' <<<"$out")
  secret=$(awk -F'\t| +' '/^Secret key:/ {print $NF}' <<<"$out")
  [[ $key == GK* && -n $secret ]] || fail "cannot read the new key from garage key create"
  garage bucket allow --read --write --owner "$bucket" --key otter-server >/dev/null

  (
    umask 077
    cat >"$dir/env" <<EOF
export AWS_ACCESS_KEY_ID=$key
export AWS_SECRET_ACCESS_KEY=$secret
export OTTER_TEST_S3_ENDPOINT=http://127.0.0.1:$s3_port
export OTTER_TEST_S3_REGION=garage
export OTTER_TEST_S3_BUCKET=$bucket
export OTTER_TEST_S3_ACCESS_KEY_ID=$key
export OTTER_TEST_S3_SECRET_ACCESS_KEY=$secret
export GARAGE_CONFIG_FILE=$cfg
EOF
    cat >"$dir/otter-store.toml" <<EOF
[store]
url = "s3://$bucket/otter"
endpoint = "http://127.0.0.1:$s3_port"
region = "garage"
allow_http = true
EOF
  )
  echo "garage: node up: S3 API http://127.0.0.1:$s3_port, bucket $bucket, key $key"
  echo "garage: credentials in $dir/env (source it), [store] section in $dir/otter-store.toml"
}

down() {
  local dir=${1:?usage: deploy/garage/run.sh down DIR}
  [[ -e $dir/garage.pid ]] || return 0
  local pid
  pid=$(cat "$dir/garage.pid")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$dir/garage.pid"
}

run_tests() {
  work=$(mktemp -d)
  trap 'down "$work"; rm -rf "$work"' EXIT
  up "$work"
  # shellcheck disable=SC1091
  source "$work/env"
  echo "== the S3 end-to-end tests against Garage"
  cargo build --workspace --locked --quiet
  cargo test --locked -p otter-tests --test s3_store --test s3_backup --test s3_mirror ||
    fail "the S3 tests failed against Garage (its log: $work/garage.log)"
  echo "garage: ok"
}

case ${1:-test} in
  test) run_tests ;;
  up) shift; up "$@" ;;
  down) shift; down "$@" ;;
  install) install ;;
  *) echo "usage: deploy/garage/run.sh [test | up DIR | down DIR | install]" >&2; exit 2 ;;
esac
