#!/usr/bin/env bash
# Otter benchmarks against their anchors (issue 7), in one run on this machine:
#   1 serving (wrk: otter-server vs nginx)   2 fleet load (10,000 terminals)
#   3 hash verification (vs sha256sum) + agent peak RSS applying a 1 GiB bundle
#   4 deltas (vs bsdiff, xdelta3)            5 backups (vs restic)
#   6 SIGKILL power-loss trials of apply and restore
# Writes raw results to bench/results/<stamp>-<mode>/ (raw.jsonl, machine.json, logs) and
# regenerates BENCHMARKS.md and bench/results/backup-bytes.svg with bench/report.py. Ends by
# printing one line per target, met or MISSED, for this run alone (its report.md).
#
# Usage: bench/run.sh [--quick] [--only N[,N...]] [--no-report]
#   --quick     smaller sizes, fewer runs, power-loss trials on the dev build (a few minutes
#               once the release build is up to date; the full run takes under 30)
#   --only 1,5  run only these items (for development; the report marks the rest missing)
#   --no-report keep BENCHMARKS.md as it is (development runs; raw results are still kept)
# Environment: BENCH_DIR (scratch space, default /var/tmp/otter-bench, or /dev/shm when the
# disk has less than 12 GiB free), BENCH_KEEP=1 keeps the scratch dir, BENCH_RESULTS (where
# raw results go, default bench/results), BENCH_NO_BUILD=1 uses the existing release build.
set -euo pipefail

# Run from a copy, so that editing this file during a 30-minute run cannot break the run.
if [ -z "${BENCH_ROOT:-}" ]; then
    BENCH_ROOT=$(cd "$(dirname "$0")/.." && pwd)
    copy=$(mktemp /tmp/otter-bench-run.XXXXXX.sh)
    cp "$0" "$copy"
    BENCH_ROOT="$BENCH_ROOT" BENCH_SCRIPT_COPY="$copy" exec bash "$copy" "$@"
fi
[ -n "${BENCH_SCRIPT_COPY:-}" ] && rm -f "$BENCH_SCRIPT_COPY"

QUICK=0
REPORT=1
ONLY="1,2,3,4,5,6"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --only) ONLY="$2"; shift ;;
        --no-report) REPORT=0 ;;
        -h|--help) sed -n '2,18p' "$BENCH_ROOT/bench/run.sh"; exit 0 ;;
        *) echo "run.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
want() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

ROOT="$BENCH_ROOT"
cd "$ROOT"
MODE=$([ "$QUICK" = 1 ] && echo quick || echo full)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS="${BENCH_RESULTS:-$ROOT/bench/results}"
OUT="$RESULTS/$STAMP-$MODE"
mkdir -p "$OUT"
RAW="$OUT/raw.jsonl"
: > "$RAW"
T_START=$(date +%s)
log() { echo "[bench $(date +%H:%M:%S)] $*" | tee -a "$OUT/run.log" >&2; }

# ---------------------------------------------------------------- anchors
APT_UPDATED=0
need() { # need COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$APT_UPDATED" = 0 ]; then
        log "installing anchors: apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
    log "installing $2 (for $1)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
need wrk wrk
need nginx nginx-light
need restic restic
need bsdiff bsdiff
need xdelta3 xdelta3
[ -x /usr/bin/time ] || need /usr/bin/time time
need zstd zstd
need python3 python3
need sha256sum coreutils
need curl curl
need sqlite3 sqlite3 || true

# ---------------------------------------------------------------- scratch space
if [ -z "${BENCH_DIR:-}" ]; then
    avail_kb=$(df --output=avail -k /var/tmp | tail -1)
    if [ "$avail_kb" -ge $((12 * 1024 * 1024)) ]; then
        BENCH_DIR=/var/tmp/otter-bench
    else
        BENCH_DIR=/dev/shm/otter-bench
        log "less than 12 GiB free on /var/tmp: scratch space is $BENCH_DIR (tmpfs: fsync is free for Otter and anchors alike)"
    fi
fi
W="$BENCH_DIR/$STAMP"
mkdir -p "$W"
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] && kill "$p" 2>/dev/null || true
    done
    if [ "${BENCH_KEEP:-0}" != 1 ]; then rm -rf "$W"; fi
}
trap cleanup EXIT

# record ITEM KEY=VALUE... : one JSON line in raw.jsonl (numbers stay numbers).
record() {
    python3 - "$RAW" "$@" <<'PY'
import json, sys
out, item, *kv = sys.argv[1:]
d = {"item": item}
for pair in kv:
    k, v = pair.split("=", 1)
    try:
        d[k] = int(v)
    except ValueError:
        try:
            d[k] = float(v)
        except ValueError:
            d[k] = v
with open(out, "a") as f:
    f.write(json.dumps(d) + "\n")
PY
}
# record_json ITEM JSON KEY=VALUE... : a JSON object from a tool, with extra keys.
record_json() {
    python3 - "$RAW" "$@" <<'PY'
import json, sys
out, item, js, *kv = sys.argv[1:]
d = {"item": item}
d.update(json.loads(js))
for pair in kv:
    k, v = pair.split("=", 1)
    d[k] = v
with open(out, "a") as f:
    f.write(json.dumps(d) + "\n")
PY
}
# timed FILE CMD... : runs CMD under /usr/bin/time; FILE gets "SECONDS MAXRSS_KIB".
timed() {
    local f="$1"; shift
    /usr/bin/time -f "%e %M" -o "$f" "$@"
}
secs() { cut -d' ' -f1 "$1"; }
rss() { cut -d' ' -f2 "$1"; }
fsize() { stat -c %s "$1"; }
dsize() { du -sb "$1" | cut -f1; }

# ---------------------------------------------------------------- machine
python3 - "$OUT/machine.json" "$MODE" "$BENCH_DIR" <<'PY'
import json, os, platform, subprocess, sys
out, mode, bench_dir = sys.argv[1:]
cpu = "unknown"
for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip(); break
mem = 0
for line in open("/proc/meminfo"):
    if line.startswith("MemTotal"):
        mem = int(line.split()[1]); break
def cmd(c):
    try:
        return subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception:
        return ""
flags = open("/proc/cpuinfo").read()
d = {
    "mode": mode, "nproc": os.cpu_count(), "cpu": cpu, "ram_gib": round(mem / 1024 / 1024, 1),
    "kernel": platform.release(), "os": cmd(". /etc/os-release && echo $PRETTY_NAME"),
    "sha_ni": " sha_ni" in flags, "load_at_start": os.getloadavg(),
    "bench_dir": bench_dir, "bench_fs": cmd(f"df --output=fstype {bench_dir} | tail -1"),
    # The run's own output (bench/results/, BENCHMARKS.md) does not make the tree dirty.
    "git": cmd("git rev-parse --short HEAD") + (" + uncommitted changes" if cmd(
        "git status --porcelain -- . ':(exclude)bench/results' ':(exclude)BENCHMARKS.md'") else ""),
    "rustc": cmd("rustc --version"),
    "anchors": {
        "nginx": cmd("nginx -v 2>&1"), "wrk": cmd("wrk -v 2>&1 | head -1"),
        "restic": cmd("restic version"), "xdelta3": cmd("xdelta3 -V 2>&1 | head -1"),
        "bsdiff": cmd("dpkg-query -W -f '${Version}' bsdiff 2>/dev/null"),
        "sha256sum": cmd("sha256sum --version | head -1"),
    },
}
json.dump(d, open(out, "w"), indent=1)
PY

# ---------------------------------------------------------------- build
log "building release binaries (cargo build --release --locked)"
PREV_CACHE="${BENCH_CACHE:-$HOME/.cache/otter-bench}/prev"
mkdir -p "$PREV_CACHE"
# The otter-server binary from before this build, for the real-binary delta of item 4.
if [ -x target/release/otter-server ] && [ ! -e "$PREV_CACHE/otter-server" ]; then
    cp -p target/release/otter-server "$PREV_CACHE/otter-server"
fi
build_failed() {
    # A tree being edited by others may not build for a moment: with BENCH_ALLOW_STALE=1
    # the binaries of the last good build are used, and the report says so.
    tail -30 "$OUT/build.log" >&2
    if [ "${BENCH_ALLOW_STALE:-0}" = 1 ] && [ -x target/release/otter-agent ] \
        && [ -x target/release/examples/fleet_load ]; then
        log "the build failed: using the existing release binaries (BENCH_ALLOW_STALE=1)"
        echo "build failed; binaries of the previous build used" >"$OUT/stale-build"
    else
        exit 1
    fi
}
if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
    if cargo build --release --locked --bin otter-server --bin otter-agent --bin otter-keys \
        >"$OUT/build.log" 2>&1; then
        cargo build --release --locked -p otter-tests --example fleet_load --example hash_throughput \
            >>"$OUT/build.log" 2>&1 || build_failed
    else
        build_failed
    fi
fi
BIN="$ROOT/target/release"
SERVER="$BIN/otter-server"
AGENT="$BIN/otter-agent"
KEYS="$BIN/otter-keys"
POS="$ROOT/../shared/tools/pos_db.py"
[ -f "$POS" ] || POS=/work/shared/tools/pos_db.py
unset $(env | grep -o '^OTTER_[A-Z_]*' || true)

# start_server DATA CONFIG : starts otter-server serve on 127.0.0.1:0; sets SURL, SPID.
start_server() {
    local data="$1" config="$2" fifo="$W/server-$RANDOM.out"
    "$SERVER" serve --listen 127.0.0.1:0 --data-dir "$data" --config "$config" \
        >"$fifo" 2>"$data.log" &
    SPID=$!
    PIDS+=("$SPID")
    for _ in $(seq 1 300); do
        SURL=$(sed -n 's/^listening on //p' "$fifo" | head -1)
        [ -n "$SURL" ] && return 0
        sleep 0.1
    done
    echo "otter-server did not start; its log:" >&2
    cat "$data.log" >&2
    exit 1
}
stop_server() {
    kill -TERM "$SPID" 2>/dev/null || true
    wait "$SPID" 2>/dev/null || true
}
# make_bundle OUT VERSION PAYLOAD : a release bundle of component pos-app.
make_bundle() {
    local out="$1" version="$2" payload="$3" d
    d=$(mktemp -d "$W/bundle.XXXX")
    ln "$payload" "$d/app.bin" 2>/dev/null || cp "$payload" "$d/app.bin"
    python3 - "$d" "$version" <<'PY'
import hashlib, json, os, sys
d, version = sys.argv[1:]
h = hashlib.sha256()
with open(os.path.join(d, "app.bin"), "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
json.dump({"name": "pos-app", "kind": "firmware", "version": version, "hardware": ["pos-a"],
           "payload": [{"path": "app.bin", "size": os.path.getsize(os.path.join(d, "app.bin")),
                        "sha256": h.hexdigest()}],
           "health": ["/bin/sh", "-c", "test -f app.bin"]},
          open(os.path.join(d, "manifest.json"), "w"))
PY
    tar -C "$d" --owner=0 --group=0 --numeric-owner -cf - manifest.json app.bin \
        | zstd -q -1 -T0 -o "$out"
    rm -rf "$d"
}
median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

# A server with a publisher + admin token and a 2 GiB upload limit, used by items 1-3.
setup_repo_server() {
    SDATA="$W/server-data"
    cat >"$W/server.toml" <<EOF
[publishing]
max_upload_bytes = 2147483648
EOF
    start_server "$SDATA" "$W/server.toml"
    "$SERVER" token create --role publisher --data-dir "$SDATA" >"$W/publisher.token" 2>/dev/null
    "$SERVER" token create --role admin --data-dir "$SDATA" >"$W/admin.token" 2>/dev/null
}

if want 1 || want 2 || want 3; then
    setup_repo_server
    log "server at $SURL (pid $SPID), data $SDATA"
fi

# ---------------------------------------------------------------- 1. serving
if want 1; then
    log "item 1: wrk against otter-server and nginx (same repository files)"
    head -c $((64 * 1024 * 1024)) /dev/urandom >"$W/payload64"
    make_bundle "$W/b64.tar.zst" 1.0.0 "$W/payload64"
    "$SERVER" publish --server "$SURL" --token-file "$W/publisher.token" "$W/b64.tar.zst" \
        >"$OUT/publish64.json"
    TFILE=$(cd "$SDATA/store/repo/targets" && ls -S | head -1)
    REPO="$SDATA/store/repo"
    NPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    mkdir -p "$W/nginx"
    # The data dir is private (0700): nginx workers run as the same user as the server.
    NGUSER=""
    [ "$(id -u)" = 0 ] && NGUSER="user root;"
    cat >"$W/nginx/nginx.conf" <<EOF
$NGUSER
worker_processes auto;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log;
daemon off;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    types { application/json json; }
    default_type application/octet-stream;
    client_body_temp_path $W/nginx;
    proxy_temp_path $W/nginx;
    fastcgi_temp_path $W/nginx;
    uwsgi_temp_path $W/nginx;
    scgi_temp_path $W/nginx;
    server {
        listen 127.0.0.1:$NPORT;
        location /repo/ { alias $REPO/; }
    }
}
EOF
    nginx -c "$W/nginx/nginx.conf" -p "$W/nginx" &
    NGPID=$!
    PIDS+=("$NGPID")
    sleep 1
    curl -fsS -o /dev/null "http://127.0.0.1:$NPORT/repo/metadata/timestamp.json" \
        || { echo "nginx does not serve the repository" >&2; cat "$W/nginx/error.log" >&2; exit 1; }
    curl -fsS -o /dev/null "$SURL/repo/targets/$TFILE"
    if [ "$QUICK" = 1 ]; then RUNS=2; DUR=2s; else RUNS=5; DUR=8s; fi
    for run in $(seq 1 "$RUNS"); do
        for sys in otter nginx; do
            base=$([ $sys = otter ] && echo "$SURL" || echo "http://127.0.0.1:$NPORT")
            for what in timestamp target64; do
                if [ $what = timestamp ]; then
                    path=/repo/metadata/timestamp.json; conns=64
                else
                    path="/repo/targets/$TFILE"; conns=8
                fi
                wrk -t2 -c$conns -d$DUR --latency -s bench/wrk-summary.lua "$base$path" \
                    >"$OUT/wrk-$sys-$what-$run.txt" 2>&1
                js=$(sed -n 's/^WRKJSON //p' "$OUT/wrk-$sys-$what-$run.txt")
                record_json serve "$js" system=$sys what=$what run=$run connections=$conns \
                    duration="$DUR"
            done
        done
    done
    kill "$NGPID" 2>/dev/null || true
    wait "$NGPID" 2>/dev/null || true
    rm -f "$W/payload64" "$W/b64.tar.zst"
fi

# ---------------------------------------------------------------- 2. fleet load
if want 2; then
    if [ "$QUICK" = 1 ]; then N=500; SECS=5; else N=10000; SECS=60; fi
    log "item 2: fleet load, $N terminals for $SECS s"
    "$BIN/examples/fleet_load" --server "$SURL" --admin-token-file "$W/admin.token" \
        --terminals $N --seconds $SECS --connections 64 --server-pid "$SPID" \
        >"$OUT/fleet.json" 2>"$OUT/fleet.log" || { cat "$OUT/fleet.log" >&2; exit 1; }
    record_json fleet "$(cat "$OUT/fleet.json")" load_avg="$(cut -d' ' -f1-3 /proc/loadavg)"
fi

# ---------------------------------------------------------------- 3. hashing and apply
if want 3; then
    log "item 3: hash verification throughput and agent peak RSS applying a bundle"
    HASH_MIB=$([ "$QUICK" = 1 ] && echo 256 || echo 1024)
    head -c $((HASH_MIB * 1024 * 1024)) /dev/urandom >"$W/gib"
    SUM=$(sha256sum "$W/gib" | cut -d' ' -f1)
    RUNS=$([ "$QUICK" = 1 ] && echo 2 || echo 5)
    for run in $(seq 1 "$RUNS"); do
        # Page cache warm for both: each reads the file right after the other.
        t0=$(date +%s.%N)
        got=$(sha256sum "$W/gib" | cut -d' ' -f1)
        t1=$(date +%s.%N)
        [ "$got" = "$SUM" ]
        record hash system=sha256sum run=$run bytes=$(fsize "$W/gib") \
            seconds="$(python3 -c "print($t1-$t0)")"
        for algs in sha256 sha256,sha512; do
            js=$("$BIN/examples/hash_throughput" "$W/gib" --algorithms $algs --expect-sha256 "$SUM")
            record_json hash "$js" system=otter run=$run
        done
    done
    # Apply: publish a bundle with an incompressible payload, enroll a terminal, time
    # `otter-agent update` (download, verify, unpack, switch, health) under /usr/bin/time.
    if [ "$QUICK" = 1 ]; then APPLY_MIB=128; else APPLY_MIB=1024; fi
    head -c $((APPLY_MIB * 1024 * 1024)) "$W/gib" >"$W/apply-payload"
    rm -f "$W/gib"
    make_bundle "$W/big.tar.zst" 2.0.0 "$W/apply-payload"
    rm -f "$W/apply-payload"
    "$SERVER" publish --server "$SURL" --token-file "$W/publisher.token" "$W/big.tar.zst" \
        >"$OUT/publish-big.json"
    BUNDLE_BYTES=$(fsize "$W/big.tar.zst")
    rm -f "$W/big.tar.zst"
    "$SERVER" enroll-token create --expires-in 1h --data-dir "$SDATA" >"$W/enroll.token" 2>/dev/null
    cp "$SDATA/store/repo/metadata/1.root.json" "$W/root.json"
    OTTER_ENROLL_TOKEN=$(cat "$W/enroll.token") "$AGENT" enroll --server "$SURL" --model pos-a \
        --trusted-root "$W/root.json" --state-dir "$W/term/state" >/dev/null
    cat >"$W/agent.toml" <<EOF
state_dir = "$W/term/state"
install_root = "$W/term/root"
[update]
jitter_secs = 0
[apply]
health_timeout_secs = 60
EOF
    timed "$W/apply.time" "$AGENT" update --config "$W/agent.toml" >"$OUT/apply.log" 2>&1 \
        || { cat "$OUT/apply.log" >&2; exit 1; }
    grep -q "installed 2.0.0" "$OUT/apply.log" || { cat "$OUT/apply.log" >&2; exit 1; }
    record apply system=otter bundle_bytes="$BUNDLE_BYTES" payload_mib=$APPLY_MIB \
        seconds="$(secs "$W/apply.time")" max_rss_kib="$(rss "$W/apply.time")"
    rm -rf "$W/term"
fi
if want 1 || want 2 || want 3; then
    stop_server
    rm -rf "$SDATA"
fi

# ---------------------------------------------------------------- 4. deltas
if want 4; then
    log "item 4: deltas (Otter vs bsdiff vs xdelta3 -9 -S djw)"
    if "$AGENT" delta apply --help >/dev/null 2>&1 && "$SERVER" delta create --help >/dev/null 2>&1; then
        HAVE_DELTA=1
    else
        HAVE_DELTA=0
        log "otter-server delta create / otter-agent delta apply are not in this build: Otter column skipped"
    fi
    if [ "$QUICK" = 1 ]; then IMG_MIB=16; else IMG_MIB=256; fi
    python3 - "$W/fw-old" "$W/fw-new" "$IMG_MIB" <<'PY'
import os, random, sys
old, new, mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
# A firmware-like image: incompressible sections mixed with repetitive tables and zero
# padding, so both compressors and diffs have something to find. 1% of the 4 KiB blocks
# of the new image are changed.
rng = random.Random(7)
blocks = mib * 256
data = bytearray()
for i in range(blocks):
    kind = rng.random()
    if kind < 0.6:
        data += rng.randbytes(4096)
    elif kind < 0.85:
        word = rng.randbytes(16)
        data += word * 256
    else:
        data += bytes(4096)
open(old, "wb").write(data)
for b in rng.sample(range(blocks), blocks // 100):
    off = b * 4096
    data[off:off + 4096] = rng.randbytes(4096)
open(new, "wb").write(data)
PY
    # (b) a real binary at two states of the tree: the otter-server built before this
    # run's build (cached in $PREV_CACHE) and the one just built.
    PAIRS="fw"
    if [ "$QUICK" = 1 ]; then
        # bsdiff alone takes a minute or more on the 26 MiB binary on a busy machine.
        log "quick mode: the real-binary pair is left to the full run"
    elif [ -e "$PREV_CACHE/otter-server" ] && ! cmp -s "$PREV_CACHE/otter-server" "$SERVER"; then
        cp -p "$PREV_CACHE/otter-server" "$W/bin-old"
        cp -p "$SERVER" "$W/bin-new"
        PAIRS="fw bin"
    else
        log "no earlier otter-server build to diff against: the real-binary pair is skipped"
    fi
    for pair in $PAIRS; do
        old="$W/$pair-old"; new="$W/$pair-new"
        new_sum=$(sha256sum "$new" | cut -d' ' -f1)
        for tool in otter xdelta3 bsdiff; do
            [ $tool = otter ] && [ "$HAVE_DELTA" = 0 ] && continue
            runs=3
            # bsdiff takes minutes (256 MiB image) or most of one (27 MiB binary): one run;
            # the quick mode makes one run of everything.
            [ $tool = bsdiff ] && runs=1
            [ "$QUICK" = 1 ] && runs=1
            for run in $(seq 1 $runs); do
                d="$W/$pair.$tool.delta"; r="$W/$pair.$tool.rebuilt"
                rm -f "$d" "$r"
                case $tool in
                    otter)
                        timed "$W/c.time" "$SERVER" delta create --base "$old" --new "$new" --out "$d" >/dev/null 2>"$OUT/delta-$pair.log"
                        timed "$W/a.time" "$AGENT" delta apply --base "$old" --delta "$d" --out "$r" \
                            --expect-sha256 "$new_sum" --expect-length "$(fsize "$new")" >/dev/null 2>>"$OUT/delta-$pair.log" ;;
                    xdelta3)
                        timed "$W/c.time" xdelta3 -9 -S djw -f -e -s "$old" "$new" "$d"
                        timed "$W/a.time" xdelta3 -f -d -s "$old" "$d" "$r" ;;
                    bsdiff)
                        timed "$W/c.time" bsdiff "$old" "$new" "$d"
                        timed "$W/a.time" bspatch "$old" "$r" "$d" ;;
                esac
                cmp -s "$new" "$r" || { echo "$tool did not rebuild $pair exactly" >&2; exit 1; }
                record delta pair=$pair system=$tool run=$run old_bytes=$(fsize "$old") \
                    new_bytes=$(fsize "$new") delta_bytes=$(fsize "$d") \
                    old_built="$(date -u -r "$old" +%FT%TZ)" new_built="$(date -u -r "$new" +%FT%TZ)" \
                    create_seconds="$(secs "$W/c.time")" create_rss_kib="$(rss "$W/c.time")" \
                    apply_seconds="$(secs "$W/a.time")" apply_rss_kib="$(rss "$W/a.time")"
                rm -f "$d" "$r"
            done
        done
    done
    rm -f "$W"/fw-* "$W"/bin-*
fi

# ---------------------------------------------------------------- 5. backups
if want 5; then
    log "item 5: backups of the reference sales database (Otter vs restic)"
    python3 "$POS" make "$W/pristine.db" >/dev/null
    python3 - "$W/pristine.db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1]); c.execute("PRAGMA wal_checkpoint(TRUNCATE)"); c.close()
PY
    SALES=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from transactions').fetchone()[0])" "$W/pristine.db")
    # The quick mode keeps the reference database's full size (the target is defined on
    # it; making it takes ~15 s) and makes one repetition with one incremental backup.
    if [ "$QUICK" = 1 ]; then REPS=1; INCR=1; else REPS=3; INCR=3; fi
    RECOVERY=$(age-keygen 2>/dev/null | sed -n 's/^# public key: //p' || true)
    if [ -z "$RECOVERY" ]; then
        OTTER_KEYS_PASSPHRASE=bench "$KEYS" recovery-key new --out "$W/recovery.age" >/dev/null 2>&1
        RECOVERY=$(cat "$W/recovery.age.pub")
    fi
    export RESTIC_PASSWORD=otter-bench
    for rep in $(seq 1 "$REPS"); do
        BD="$W/backup-$rep"
        mkdir -p "$BD"
        printf '[backups]\nrecovery_recipient = "%s"\n' "$RECOVERY" >"$BD/server.toml"
        start_server "$BD/data" "$BD/server.toml"
        "$SERVER" enroll-token create --expires-in 1h --data-dir "$BD/data" >"$BD/enroll.token" 2>/dev/null
        cp "$BD/data/store/repo/metadata/1.root.json" "$BD/root.json"
        OTTER_ENROLL_TOKEN=$(cat "$BD/enroll.token") "$AGENT" enroll --server "$SURL" --model pos-a \
            --trusted-root "$BD/root.json" --state-dir "$BD/state" >/dev/null
        restic init --repo "$BD/restic" -q >/dev/null
        mkdir -p "$BD/live"
        cp "$W/pristine.db" "$BD/live/pos.db"
        DB="$BD/live/pos.db"
        for n in $(seq 0 "$INCR"); do
            if [ "$n" -gt 0 ]; then
                python3 "$POS" mutate "$DB" update 1 >/dev/null
                python3 -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('PRAGMA wal_checkpoint(TRUNCATE)'); c.close()" "$DB"
            fi
            ob=$(dsize "$BD/data/store")
            timed "$W/o.time" "$AGENT" backup --state-dir "$BD/state" --database "$DB" >>"$OUT/otter-backup.log" 2>&1 \
                || { tail -20 "$OUT/otter-backup.log" >&2; exit 1; }
            oa=$(dsize "$BD/data/store")
            rb=$(dsize "$BD/restic")
            timed "$W/r.time" restic backup --repo "$BD/restic" -q "$DB" >>"$OUT/restic-backup.log" 2>&1
            ra=$(dsize "$BD/restic")
            record backup rep=$rep backup=$n system=otter seconds="$(secs "$W/o.time")" \
                added_bytes=$((oa - ob)) max_rss_kib="$(rss "$W/o.time")" db_bytes=$(fsize "$DB") \
                sales="$SALES"
            record backup rep=$rep backup=$n system=restic seconds="$(secs "$W/r.time")" \
                added_bytes=$((ra - rb)) max_rss_kib="$(rss "$W/r.time")" db_bytes=$(fsize "$DB")
        done
        # Restore the latest backup: Otter over the real device API onto the live path
        # (after verifying everything), restic into a directory.
        want_sum=$(sha256sum "$DB" | cut -d' ' -f1)
        python3 "$POS" mutate "$DB" append 1 >/dev/null
        timed "$W/o.time" "$AGENT" restore --state-dir "$BD/state" --database "$DB" --latest \
            >>"$OUT/otter-restore.log" 2>&1 || { tail -20 "$OUT/otter-restore.log" >&2; exit 1; }
        timed "$W/r.time" restic restore latest --repo "$BD/restic" --target "$BD/restic-out" -q \
            >>"$OUT/restic-restore.log" 2>&1
        r_sum=$(sha256sum "$BD/restic-out$DB" | cut -d' ' -f1)
        o_rows=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from transactions').fetchone()[0])" "$DB" 2>/dev/null || echo 0)
        record restore rep=$rep system=otter seconds="$(secs "$W/o.time")" max_rss_kib="$(rss "$W/o.time")" rows="$o_rows"
        record restore rep=$rep system=restic seconds="$(secs "$W/r.time")" max_rss_kib="$(rss "$W/r.time")" \
            identical=$([ "$r_sum" = "$want_sum" ] && echo 1 || echo 0)
        stop_server
        rm -rf "$BD"
    done
    unset RESTIC_PASSWORD
    rm -f "$W/pristine.db"
fi

# ---------------------------------------------------------------- 6. power-loss trials
if want 6; then
    # The quick mode runs fewer trials on the dev build, which development keeps up to date:
    # a release build of the test targets (other features, so other artifacts than the
    # release binaries) can take minutes after a change to the tree.
    if [ "$QUICK" = 1 ]; then AT=60; RT=15; PROFILE=(); else AT=1000; RT=1000; PROFILE=(--release); fi
    PROFILE_NAME=$([ "$QUICK" = 1 ] && echo dev || echo release)
    log "item 6: SIGKILL trials ($PROFILE_NAME build): $AT of apply, $RT of restore"
    cargo build "${PROFILE[@]}" --locked -p otter-agent --test apply_power_loss >>"$OUT/build.log" 2>&1
    cargo build "${PROFILE[@]}" --locked -p otter-tests --test restore_end_to_end >>"$OUT/build.log" 2>&1
    t0=$(date +%s.%N)
    if OTTER_APPLY_TRIALS=$AT cargo test "${PROFILE[@]}" --locked -p otter-agent --test apply_power_loss \
        >"$OUT/apply-trials.log" 2>&1; then ok=1; else ok=0; fi
    t1=$(date +%s.%N)
    mixed=$([ $ok = 1 ] && echo 0 || echo 1)
    record trials what=apply trials=$AT passed=$ok mixed_states_at_least=$mixed profile=$PROFILE_NAME \
        seconds="$(python3 -c "print($t1-$t0)")" \
        outcomes="$(grep -o 'outcomes {[^}]*}' "$OUT/apply-trials.log" | head -1)"
    t0=$(date +%s.%N)
    if OTTER_RESTORE_TRIALS=$RT cargo test "${PROFILE[@]}" --locked -p otter-tests --test restore_end_to_end \
        sigkill_during_restore -- --nocapture >"$OUT/restore-trials.log" 2>&1; then ok=1; else ok=0; fi
    t1=$(date +%s.%N)
    mixed=$([ $ok = 1 ] && echo 0 || echo 1)
    record trials what=restore trials=$RT passed=$ok mixed_states_at_least=$mixed profile=$PROFILE_NAME \
        seconds="$(python3 -c "print($t1-$t0)")" \
        outcomes="$(grep -o '[0-9]* kills: .*' "$OUT/restore-trials.log" | head -1)"
fi

T_END=$(date +%s)
python3 - "$OUT/machine.json" "$((T_END - T_START))" <<'PY'
import json, os, sys
p, secs = sys.argv[1], int(sys.argv[2])
d = json.load(open(p))
d["load_at_end"] = os.getloadavg()
d["total_seconds"] = secs
json.dump(d, open(p, "w"), indent=1)
PY
if [ "$REPORT" = 1 ]; then
    log "done in $((T_END - T_START)) s; writing BENCHMARKS.md"
    python3 bench/report.py "$RESULTS" "$ROOT/BENCHMARKS.md"
else
    log "done in $((T_END - T_START)) s; raw results in $OUT (BENCHMARKS.md left as it is)"
fi
# This run's verdicts, one line per target (from a report of this run alone, $OUT/report.md).
one=$(mktemp -d /tmp/otter-bench-report.XXXXXX)
ln -s "$OUT" "$one/$(basename "$OUT")"
if python3 bench/report.py "$one" "$OUT/report.md" >/dev/null 2>&1; then
    python3 - "$OUT/report.md" <<'PY'
import sys
section = ""
for line in open(sys.argv[1]):
    if line.startswith("## "):
        section = line[3:].split(":")[0].strip()
    if line.startswith("|") and ("**yes**" in line or "**no**" in line):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        verdict = "met" if "**yes**" in line else "MISSED"
        shown = [c for c in cells if c and "**" not in c][:5]
        print(f"[bench] {verdict:6} {section}: " + " | ".join(shown))
PY
fi
rm -rf "$one"
