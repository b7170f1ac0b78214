#!/usr/bin/env bash
# Builds the otter-server container image (deploy/Containerfile) with Podman, runs it and
# checks it; then brings up deploy/compose.yaml (the server and a Garage S3 store) and
# publishes and fetches a bundle through it.
#
#   deploy/container/test-image.sh [all|image|compose]      (default: all)
#
# image: builds the image (cached: Podman's layer cache, and cache mounts for the crates and
#   the target dir), runs it the way compose.yaml does (--read-only, --cap-drop ALL,
#   no-new-privileges, a data volume) and checks: GET /healthz and
#   /repo/metadata/1.root.json answer; the process runs as UID 10001 with no capability;
#   the root filesystem refuses writes while the volume takes them; the image's HEALTHCHECK
#   passes; a bundle published through the API (`otter-server publish` run from the image)
#   is served back byte for byte; SIGTERM (`podman stop`) ends it with status 0 well before
#   the grace period; it starts again on the same volume with the same root; and a
#   production repository (an otter-keys ceremony, `init` into a volume, `serve` with the
#   passphrase file) serves the ceremony's root.
# compose: `podman-compose up` of deploy/compose.yaml with the image above and a Garage
#   image, then the same publish -> fetch, `down -v` at the end.
#
# Without a registry (this project's machines), the base images are local stand-ins made by
# deploy/container/local-bases.sh (debootstrap, and the host's rustup toolchain) and the
# crates come from a `cargo vendor` copy of Cargo.lock's, so the build is offline. With
# registry access set OTTER_RUST_IMAGE and OTTER_RUNTIME_IMAGE (e.g. the Containerfile's
# defaults) to build on those instead. The Garage image: GARAGE_IMAGE, or one made from the
# host's `garage` binary (deploy/garage/run.sh install); without either, s3s-fs stands in
# for it (S3S_FS_IMAGE, or the host's s3s-fs; OTTER_COMPOSE_STORE=s3s-fs prefers it).
#
# Exits 0 and prints "container test: SKIPPED: <why>" when Podman cannot be used here (not
# installed, cannot run containers, no debootstrap or rustc for the local bases), so CI on a
# machine without it does not fail; the compose part alone is skipped the same way (no
# podman-compose and no pip to install it, no Garage). Prints "container test: ok" at the end.
# Needs root (rootful Podman), curl, python3, zstd.
# Environment: OTTER_CONTAINER_CACHE (default /var/tmp/otter-container: debootstrap, the
# vendored crates, podman-compose's venv), OTTER_TEST_IMAGE (default
# localhost/otter-server:test), OTTER_CONTAINER_NO_BUILD=1 tests that image as it is (no
# build), OTTER_CONTAINER_KEEP=1 keeps the scratch dir.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/container/podman-env.sh

what=${1:-all}
case $what in all | image | compose) ;; *)
  echo "usage: deploy/container/test-image.sh [all|image|compose]" >&2
  exit 2
  ;;
esac
image=${OTTER_TEST_IMAGE:-localhost/otter-server:test}
compose_version=1.6.0 # podman-compose from PyPI when it is not installed

skip() {
  echo "container test: SKIPPED: $*"
  exit 0
}
fail() {
  echo "container test: FAILED: $*" >&2
  exit 1
}
step() { echo "== $*"; }
say() { echo "   $*"; }

# --- can Podman run here? -------------------------------------------------------------------
[[ $(id -u) == 0 ]] || skip "needs root (rootful Podman); run it as root"
podman_usable || skip "$podman_error"
for tool in curl python3 zstd; do
  command -v "$tool" >/dev/null || fail "$tool is not installed"
done

rust_image=${OTTER_RUST_IMAGE:-}
runtime_image=${OTTER_RUNTIME_IMAGE:-}
if [[ -z $rust_image || -z $runtime_image ]]; then
  command -v debootstrap >/dev/null \
    || skip "debootstrap is not installed (apt-get install debootstrap), needed for the local base images; or set OTTER_RUST_IMAGE and OTTER_RUNTIME_IMAGE to images you can pull"
  command -v rustc >/dev/null || skip "no rustc on PATH to put into the local builder image"
  step "local base images (deploy/container/local-bases.sh; cached)"
  runtime_image=$(deploy/container/local-bases.sh debian | sed -n 's/^RUNTIME_IMAGE=//p')
  [[ -n $runtime_image ]] || fail "local-bases.sh debian printed no image name"
  podman_can_run "$runtime_image" || skip "podman cannot run a container here. $podman_error"
  rust_image=$(deploy/container/local-bases.sh rust | sed -n 's/^RUST_IMAGE=//p')
  [[ -n $rust_image ]] || fail "local-bases.sh rust printed no image name"
  vendor=$otter_cache/vendor
  lock_sum=$(sha256sum Cargo.lock | cut -d' ' -f1)
  if [[ $(cat "$vendor/.otter-cargo-lock.sha256" 2>/dev/null) != "$lock_sum" ]]; then
    step "cargo vendor (Cargo.lock changed or first run) into $vendor"
    rm -rf "$vendor"
    cargo vendor --locked --offline --quiet "$vendor" >/dev/null 2>&1 \
      || cargo vendor --locked --quiet "$vendor" >/dev/null \
      || fail "cargo vendor --locked $vendor"
    echo "$lock_sum" >"$vendor/.otter-cargo-lock.sha256"
  fi
  vendor_args=(-v "$vendor:/vendor:ro" --build-arg CARGO_VENDOR_DIR=/vendor)
else
  podman_can_run "$runtime_image" || skip "podman cannot run a container here. $podman_error"
  vendor_args=()
fi
say "builder $rust_image, runtime $runtime_image${CONTAINERS_CONF:+, $CONTAINERS_CONF}"

work=$(mktemp -d "${TMPDIR:-/tmp}/otter-container-test.XXXXXX")
chmod 0700 "$work"
suffix=$$
containers=() volumes=() compose_up=
cleanup() {
  local rc=$?
  set +e
  if [[ -n $compose_up ]]; then
    "${compose[@]}" down -v -t 5 >"$work/compose-down.log" 2>&1
  fi
  for c in "${containers[@]}"; do podman rm -f -t 5 "$c" >/dev/null 2>&1; done
  for v in "${volumes[@]}"; do podman volume rm -f "$v" >/dev/null 2>&1; done
  if [[ ${OTTER_CONTAINER_KEEP:-0} == 1 ]]; then echo "scratch dir kept: $work"; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_healthy URL CONTAINER: until GET URL/healthz says ok (90 s), or the container died.
wait_healthy() {
  local url=$1 name=$2 body
  for _ in $(seq 180); do
    if body=$(curl -fsS --max-time 2 "$url/healthz" 2>/dev/null) && [[ $body == *'"status":"ok"'* ]]; then
      return 0
    fi
    if [[ $(podman inspect --format '{{.State.Status}}' "$name" 2>/dev/null) == exited ]] && [[ -z ${compose_up:-} ]]; then
      podman logs "$name" 2>&1 | tail -n 20 | sed 's/^/      | /' >&2
      fail "container $name exited before /healthz answered (its log is above)"
    fi
    sleep 0.5
  done
  podman logs "$name" 2>&1 | tail -n 20 | sed 's/^/      | /' >&2
  fail "GET $url/healthz did not say ok within 90 s (last: ${body:-no answer}; log above)"
}

# make_bundle NAME VERSION: a bundle in $work/bundles (readable by the image's user).
make_bundle() {
  local name=$1 version=$2 dir="$work/src-$1-$2"
  mkdir -p "$dir" "$work/bundles"
  chmod 0755 "$work/bundles"
  head -c 200000 /dev/urandom >"$dir/payload.bin"
  local sha size
  sha=$(sha256sum "$dir/payload.bin" | cut -d' ' -f1)
  size=$(stat -c %s "$dir/payload.bin")
  cat >"$dir/manifest.json" <<JSON
{"name": "$name", "kind": "firmware", "version": "$version", "hardware": ["pos-a"],
 "payload": [{"path": "payload.bin", "size": $size, "sha256": "$sha"}],
 "health": ["/bin/sh", "-c", "test -s payload.bin"]}
JSON
  tar -C "$dir" -cf - manifest.json payload.bin | zstd -q -c >"$work/bundles/$name-$version.tar.zst"
  chmod 0644 "$work/bundles/$name-$version.tar.zst"
}

# publish_and_fetch URL CONTAINER NETWORK LABEL: a publisher token made inside CONTAINER, a
# bundle published by `otter-server publish` from the image (in a throwaway container on
# NETWORK), then targets.json must list it and /repo/targets/ must serve it byte for byte.
publish_and_fetch() {
  local url=$1 name=$2 network=$3 label=$4 inner_url=$5
  local bundle=fw-$label version=1.0.$RANDOM out token sha file
  make_bundle "$bundle" "$version"
  # The token is the only line on stdout (the rest goes to stderr).
  token=$(podman exec "$name" otter-server token create --role publisher --label "container-test-$label" 2>"$work/token.err") \
    || fail "otter-server token create in $name: $(cat "$work/token.err")"
  [[ $token =~ ^[A-Za-z0-9_.-]{20,}$ ]] || fail "token create printed no token: $(cat "$work/token.err")"
  out=$(OTTER_TOKEN=$token podman run --rm --no-healthcheck --network "$network" -e OTTER_TOKEN \
    -v "$work/bundles:/bundles:ro" "$image" \
    publish --server "$inner_url" "/bundles/$bundle-$version.tar.zst" 2>&1) \
    || fail "otter-server publish (from the image) to $inner_url: $out"
  printf '%s\n' "$out" | grep -q "^published " || fail "publish printed no 'published' line: $out"
  say "published $bundle-$version.tar.zst (otter-server publish, run from the image)"
  sha=$(sha256sum "$work/bundles/$bundle-$version.tar.zst" | cut -d' ' -f1)
  # As a TUF client walks it: timestamp -> N.snapshot.json -> M.targets.json -> the target.
  file=$(python3 - "$url" "$bundle-$version" "$sha" <<'PY'
import json, sys, urllib.request
base, want, sha = sys.argv[1] + "/repo/metadata/", sys.argv[2], sys.argv[3]
get = lambda name: json.load(urllib.request.urlopen(base + name, timeout=10))["signed"]
snapshot = get("%d.snapshot.json" % get("timestamp.json")["meta"]["snapshot.json"]["version"])
targets = get("%d.targets.json" % snapshot["meta"]["targets.json"]["version"])["targets"]
for path, t in targets.items():
    if want in path and t.get("hashes", {}).get("sha256") == sha:
        print(path)
PY
) || fail "walking timestamp.json -> snapshot -> targets at $url/repo/metadata/ failed"
  [[ -n $file ]] || fail "targets.json lists no target $bundle-$version with sha256 $sha"
  curl -fsS "$url/repo/targets/$sha.$file" -o "$work/fetched.tar.zst" \
    || fail "GET $url/repo/targets/$sha.$file"
  cmp -s "$work/fetched.tar.zst" "$work/bundles/$bundle-$version.tar.zst" \
    || fail "the bundle served at /repo/targets/$sha.$file differs from the one published"
  say "fetched /repo/targets/$sha.$file: the same $(stat -c %s "$work/fetched.tar.zst") bytes, listed in targets.json"
}

# --- build ----------------------------------------------------------------------------------
if [[ ${OTTER_CONTAINER_NO_BUILD:-0} == 1 ]] && podman image exists "$image"; then
  step "using $image as it is (OTTER_CONTAINER_NO_BUILD=1)"
else
  step "podman build $image (deploy/Containerfile; cached after the first build)"
  old_id=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
  start=$SECONDS
  podman build --format docker -f deploy/Containerfile --ignorefile deploy/Containerfile.dockerignore \
    --build-arg "RUST_IMAGE=$rust_image" --build-arg "RUNTIME_IMAGE=$runtime_image" \
    "${vendor_args[@]}" -t "$image" . >"$otter_cache/build.log" 2>&1 \
    || { tail -n 30 "$otter_cache/build.log" | sed 's/^/      | /' >&2; fail "podman build (log: $otter_cache/build.log, its end is above)"; }
  new_id=$(podman image inspect --format '{{.Id}}' "$image")
  if [[ -n $old_id && $old_id != "$new_id" ]]; then
    podman rmi "$old_id" >/dev/null 2>&1 || true # the previous build's image, now untagged
  fi
  # The build stage's intermediate images (about 35 MB each, one set per source change);
  # the compiled crates stay in the cache mount.
  podman image prune -f --filter label=org.otter.stage=build >/dev/null 2>&1 || true
  say "built in $((SECONDS - start)) s ($(grep -c '^ *Compiling ' "$otter_cache/build.log") crates compiled): $(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')"
fi
[[ $(podman image inspect --format '{{.Config.User}}' "$image") == 10001:10001 ]] \
  || fail "the image's USER is not 10001:10001 (otter)"

# --- the image ------------------------------------------------------------------------------
if [[ $what != compose ]]; then
  name=otter-test-$suffix
  vol=otter-test-data-$suffix
  port=$(free_port)
  url=http://127.0.0.1:$port
  step "podman run $name: read-only, no capabilities, volume $vol, $url"
  podman volume create "$vol" >/dev/null
  volumes+=("$vol")
  containers+=("$name")
  podman run -d --name "$name" --read-only --cap-drop ALL --security-opt no-new-privileges \
    --tmpfs /tmp -p "127.0.0.1:$port:8080" -v "$vol:/var/lib/otter" "$image" >/dev/null 2>"$work/run.err" \
    || fail "podman run $image: $(cat "$work/run.err")"
  # Podman schedules HEALTHCHECKs with systemd timers; without systemd it says so on stderr
  # (kept in run.err) and the check still runs by hand (podman healthcheck run, below).
  wait_healthy "$url" "$name"
  say "GET /healthz: ok"
  curl -fsS "$url/repo/metadata/1.root.json" -o "$work/1.root.json" || fail "GET $url/repo/metadata/1.root.json"
  python3 -c 'import json,sys; d = json.load(open(sys.argv[1])); assert d["signed"]["_type"] == "root" and d["signatures"], d' \
    "$work/1.root.json" || fail "/repo/metadata/1.root.json is not a signed TUF root"
  say "GET /repo/metadata/1.root.json: a signed root"

  pid=$(podman inspect --format '{{.State.Pid}}' "$name")
  status=$(cat "/proc/$pid/status")
  uids=$(awk '/^Uid:/ {print $2, $3, $4, $5}' <<<"$status")
  [[ $uids == "10001 10001 10001 10001" ]] || fail "otter-server runs with UIDs $uids, not 10001 (otter)"
  [[ $(awk '/^CapEff:/ {print $2}' <<<"$status") == 0000000000000000 ]] || fail "otter-server has capabilities: $(grep Cap <<<"$status")"
  [[ $(awk '/^NoNewPrivs:/ {print $2}' <<<"$status") == 1 ]] || fail "otter-server may gain privileges (NoNewPrivs is not 1)"
  [[ $(cat "/proc/$pid/comm") == otter-server ]] || fail "PID 1 of the container is $(cat "/proc/$pid/comm"), not otter-server"
  say "PID 1 is otter-server, UID 10001, no capabilities, no new privileges"

  out=$(podman exec "$name" touch /usr/local/bin/otter-write-test 2>&1) \
    && fail "the root filesystem took a write (--read-only ignored?)"
  [[ $out == *"Read-only file system"* ]] || fail "writing to the root filesystem failed, but not as read-only: $out"
  out=$(podman exec "$name" bash -c 'ls -ln /var/lib/otter | awk "NR>1 {print \$3}" | sort -u') \
    || fail "listing /var/lib/otter: $out"
  [[ $out == 10001 ]] || fail "/var/lib/otter in the volume holds files not owned by 10001: $out"
  say "root filesystem read-only; the server's files are in the volume, owned by 10001"

  podman healthcheck run "$name" >/dev/null 2>&1 || fail "the image's HEALTHCHECK (otter-healthcheck) says unhealthy"
  say "HEALTHCHECK (deploy/healthcheck.sh in the image): healthy"

  publish_and_fetch "$url" "$name" host image "$url"

  step "SIGTERM: podman stop $name"
  start=$(date +%s%N)
  podman stop -t 45 "$name" >/dev/null 2>>"$work/run.err" || fail "podman stop $name: $(cat "$work/run.err")"
  ms=$((($(date +%s%N) - start) / 1000000))
  code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
  [[ $code == 0 ]] || { podman logs "$name" 2>&1 | tail -n 10 | sed 's/^/      | /' >&2; fail "otter-server exited with status $code on SIGTERM"; }
  ((ms < 30000)) || fail "otter-server took $ms ms to stop on SIGTERM (drains for at most 30 s)"
  say "exited with status 0 after $ms ms"

  step "podman start $name again on the same volume"
  root_sum=$(sha256sum "$work/1.root.json" | cut -d' ' -f1)
  podman start "$name" >/dev/null 2>>"$work/run.err" || fail "podman start $name: $(cat "$work/run.err")"
  wait_healthy "$url" "$name"
  curl -fsS "$url/repo/metadata/1.root.json" | sha256sum | grep -q "^$root_sum " \
    || fail "after a restart /repo/metadata/1.root.json differs: the repository did not persist in the volume"
  say "healthy again, same 1.root.json: the repository lives in the volume"
  podman rm -f -t 45 "$name" >/dev/null 2>>"$work/run.err"

  # A production repository: keys from an otter-keys ceremony on the host, `init` into a
  # fresh volume, `serve` with the passphrase file (as docs/quickstart.md shows it).
  keys_bin=
  for b in target/release/otter-keys target/debug/otter-keys "$(command -v otter-keys || true)"; do
    [[ -n $b && -x $b ]] && { keys_bin=$b; break; }
  done
  if [[ -z $keys_bin ]]; then
    step "cargo build -p otter-keys (for the ceremony)"
    cargo build --locked --quiet -p otter-keys --bin otter-keys || fail "cargo build -p otter-keys"
    keys_bin=target/debug/otter-keys
  fi
  if [[ -x $keys_bin ]]; then
    step "production repository: otter-keys ceremony ($keys_bin), init into a volume, serve"
    ceremony=$work/ceremony
    printf 'container test root passphrase\n' >"$work/root-pass"
    mkdir -p "$work/online-keys"
    printf 'container test online passphrase\n' >"$work/online-keys/passphrase"
    OTTER_KEYS_SCRYPT_LOG_N=${OTTER_KEYS_SCRYPT_LOG_N:-10} "$keys_bin" init --dir "$ceremony" \
      --passphrase-file "$work/root-pass" --online-passphrase-file "$work/online-keys/passphrase" \
      >"$work/keys.log" 2>&1 || fail "otter-keys init: $(tail -n 3 "$work/keys.log")"
    cp "$ceremony"/keys/{targets,snapshot,timestamp}.{key,pub.json} "$ceremony/1.root.json" "$work/online-keys/"
    chown -R 10001:10001 "$work/online-keys"
    pvol=otter-test-prod-$suffix
    pname=otter-test-prod-$suffix
    volumes+=("$pvol")
    containers+=("$pname")
    podman run --rm --no-healthcheck -v "$pvol:/var/lib/otter" -v "$work/online-keys:/ceremony:ro" "$image" \
      init --root /ceremony/1.root.json --keys-dir /ceremony --passphrase-file /ceremony/passphrase \
      >"$work/admin-token" 2>"$work/init.log" || fail "otter-server init in the image: $(tail -n 3 "$work/init.log")"
    [[ $(wc -l <"$work/admin-token") -ge 1 ]] || fail "init printed no admin token"
    port=$(free_port)
    purl=http://127.0.0.1:$port
    podman run -d --name "$pname" --read-only --cap-drop ALL --security-opt no-new-privileges \
      --tmpfs /tmp -p "127.0.0.1:$port:8080" -v "$pvol:/var/lib/otter" \
      -v "$work/online-keys:/ceremony:ro" -e OTTER_KEY_PASSPHRASE_FILE=/ceremony/passphrase \
      "$image" >/dev/null 2>>"$work/run.err" || fail "podman run (production repository): $(cat "$work/run.err")"
    wait_healthy "$purl" "$pname"
    curl -fsS "$purl/repo/metadata/1.root.json" | cmp -s - "$ceremony/1.root.json" \
      || fail "the production server does not serve the ceremony's 1.root.json"
    podman logs "$pname" 2>&1 | grep -qi 'development' \
      && fail "the server on an initialised volume still speaks of a development repository"
    say "init + serve: healthy, serves the ceremony's own 1.root.json, no development repository"
    podman rm -f -t 45 "$pname" >/dev/null 2>>"$work/run.err"
  fi
fi

# --- compose --------------------------------------------------------------------------------
compose_skip() {
  echo "container test: compose part SKIPPED: $*"
  echo "container test: ok (image; compose skipped)"
  exit 0
}
if [[ $what != image ]]; then
  if command -v podman-compose >/dev/null; then
    compose_bin=(podman-compose)
  else
    venv=$otter_cache/compose-venv
    if [[ ! -x $venv/bin/podman-compose ]]; then
      step "podman-compose $compose_version from PyPI into $venv"
      rm -rf "$venv"
      if ! { python3 -m venv "$venv" && "$venv/bin/pip" install -q "podman-compose==$compose_version"; } >/dev/null 2>&1; then
        rm -rf "$venv"
        compose_skip "podman-compose is not installed and pip could not install it (apt-get install podman-compose)"
      fi
    fi
    compose_bin=("$venv/bin/podman-compose")
  fi
  # The store: Garage (GARAGE_IMAGE, or an image of the host's garage), else s3s-fs under
  # the same service name (container/compose.s3s-fs.yaml; CI installs s3s-fs).
  garage_image=${GARAGE_IMAGE:-} s3s_fs_image=${S3S_FS_IMAGE:-}
  if [[ -z $garage_image && -z $s3s_fs_image ]]; then
    if [[ ${OTTER_COMPOSE_STORE:-} != s3s-fs ]] && command -v garage >/dev/null; then
      garage_image=$(deploy/container/local-bases.sh garage | sed -n 's/^GARAGE_IMAGE=//p')
      [[ -n $garage_image ]] || fail "local-bases.sh garage printed no image name"
    elif command -v s3s-fs >/dev/null; then
      s3s_fs_image=$(deploy/container/local-bases.sh s3s-fs | sed -n 's/^S3S_FS_IMAGE=//p')
      [[ -n $s3s_fs_image ]] || fail "local-bases.sh s3s-fs printed no image name"
    else
      compose_skip "no S3 store image: set GARAGE_IMAGE, or install garage (deploy/garage/run.sh install) or s3s-fs (scripts/s3s-fs.sh install)"
    fi
  fi
  port=$(free_port)
  url=http://127.0.0.1:$port
  project=otter-test-$suffix
  hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
  (
    umask 077
    printf 'GARAGE_RPC_SECRET=%s\nOTTER_S3_ACCESS_KEY_ID=GK%s\nOTTER_S3_SECRET_ACCESS_KEY=%s\n' \
      "$(hex 32)" "$(hex 12)" "$(hex 32)" >"$work/compose.env"
    printf 'OTTER_IMAGE=%s\nOTTER_PORT=%s\n' "$image" "$port" >>"$work/compose.env"
    if [[ -n $garage_image ]]; then printf 'GARAGE_IMAGE=%s\n' "$garage_image" >>"$work/compose.env"; fi
    if [[ -n $s3s_fs_image ]]; then printf 'S3S_FS_IMAGE=%s\n' "$s3s_fs_image" >>"$work/compose.env"; fi
  )
  compose=("${compose_bin[@]}" -p "$project" --env-file "$work/compose.env" -f deploy/compose.yaml)
  if [[ -n $garage_image ]]; then
    store="Garage $garage_image"
  else
    store="s3s-fs $s3s_fs_image (deploy/container/compose.s3s-fs.yaml)"
    compose+=(-f deploy/container/compose.s3s-fs.yaml)
  fi
  step "compose up ($project: otter-server + $store, $url)"
  compose_up=1
  "${compose[@]}" up -d >"$work/compose-up.log" 2>&1 \
    || { tail -n 20 "$work/compose-up.log" | sed 's/^/      | /' >&2; fail "podman-compose up (log above)"; }
  server=$(podman ps -a --filter "label=com.docker.compose.project=$project" \
    --filter "label=com.docker.compose.service=otter-server" --format '{{.Names}}' | head -n1)
  [[ -n $server ]] || fail "compose started no otter-server container (podman ps: $(podman ps -a --format '{{.Names}}' | tr '\n' ' '))"
  wait_healthy "$url" "$server"
  say "GET /healthz: ok ($server)"
  garage=$(podman ps --filter "label=com.docker.compose.project=$project" \
    --filter "label=com.docker.compose.service=garage" --format '{{.Names}}' | head -n1)
  [[ -n $garage ]] || fail "compose started no S3 store (service garage)"
  # objects_in_bucket: the object count of the bucket "otter": from Garage's own CLI, or the
  # files in s3s-fs's bucket directory.
  objects_in_bucket() {
    if [[ -n $garage_image ]]; then
      podman exec "$garage" /garage bucket info otter 2>/dev/null | awk '/^Objects:/ {print $2}'
    else
      podman exec "$garage" find /var/lib/garage/data/otter -type f 2>/dev/null | grep -vc '\.s3s-fs' || true
    fi
  }
  before=$(objects_in_bucket)
  [[ $before =~ ^[0-9]+$ && $before -gt 0 ]] \
    || fail "the bucket otter holds no objects after the server started (${before:-no answer}): is the server's store really S3?"
  network=$(podman inspect --format '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}' "$server")
  publish_and_fetch "$url" "$server" "$network" compose http://otter-server:8080
  after=$(objects_in_bucket)
  [[ $after =~ ^[0-9]+$ && $after -gt $before ]] \
    || fail "the bucket otter did not grow with the publish ($before -> ${after:-no answer} objects)"
  say "the bucket otter: $before -> $after objects (the repository and the bundle are in S3)"
  step "compose: SIGTERM the server (podman stop), then down -v"
  podman stop -t 45 "$server" >/dev/null 2>>"$work/run.err"
  code=$(podman inspect --format '{{.State.ExitCode}}' "$server")
  [[ $code == 0 ]] || fail "otter-server under compose exited with status $code on SIGTERM"
  say "the server exited with status 0"
fi
echo "container test: ok"
