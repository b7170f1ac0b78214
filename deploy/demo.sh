#!/usr/bin/env bash
# Otter's full loop on one machine, in a scratch directory, printing each step in plain words:
#
#   1. the binaries (OTTER_BIN_DIR if set, else `cargo build --release --locked`)
#   2. an offline key ceremony with otter-keys: 3 root keys (2 must sign), the online keys,
#      the fleet's backup recovery key (passphrases from files, no prompt)
#   3. a server: `otter-server init` from that ceremony, then `serve` on its embedded defaults
#      (loopback, a free port, SQLite + files in the scratch dir); the only setting given is
#      the fleet's backup recovery key
#   4. three bundles built here (tar + zstd, with manifest.json): a firmware, a printer driver
#      and a patch, published with a publisher token
#   5. a sample sales database (../shared/tools/pos_db.py, or python3's sqlite3)
#   6. a terminal enrolled with a single-use token: its own state dir and install root
#   7. an update pass that verifies (TUF) and installs the three bundles
#   8. a firmware release whose health check fails: switched, rolled back, reported
#   9. an encrypted, signed backup of the sales database
#  10. the database damaged on purpose
#  11. a verified restore of the backup, compared with the database as it was backed up
#  12. everything stopped and removed (also on failure or Ctrl-C)
#
# Usage: deploy/demo.sh            (from a fresh clone; needs cargo, python3, tar, zstd, curl)
#   OTTER_BIN_DIR=DIR   use the otter-keys, otter-server and otter-agent binaries in DIR
#   OTTER_DEMO_KEEP=1   keep the scratch directory for a look around (its path is printed)
#   OTTER_POS_DB=FILE   the sales database tool (default ../shared/tools/pos_db.py)
# Exits 0 after "demo: all 12 steps done", or non-zero with "demo: FAILED at step N (...)".
set -euo pipefail

STEPS=12
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
step=0
title=""

# --- printing -------------------------------------------------------------------------------
begin() {
  step=$((step + 1))
  title=$1
  echo
  echo "[$step/$STEPS] $title"
}
say() { echo "      $*"; }
done_() { echo "[$step/$STEPS] done: $*"; }
fail() {
  echo "demo: FAILED at step $step ($title): $*" >&2
  exit 1
}
# Runs a command; its stdout goes to $out, its stderr to $err. On failure shows both and
# fails the step.
run() {
  local rc=0
  out=$("$@" 2>"$work/.stderr") || rc=$?
  err=$(cat "$work/.stderr")
  if ((rc != 0)); then
    printf '%s\n%s\n' "$out" "$err" | sed 's/^/      | /' >&2
    fail "'$(basename "$1") ${*:2:2} ...' exited with status $rc (its output is above)"
  fi
}

# --- cleanup --------------------------------------------------------------------------------
work=""
server_pid=""
cleanup() {
  local rc=$?
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [[ -n $work && -d $work ]]; then
    if [[ ${OTTER_DEMO_KEEP:-} == 1 ]]; then
      echo "demo: kept $work"
    else
      rm -rf "$work"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for tool in python3 tar zstd curl sha256sum; do
  command -v "$tool" >/dev/null || fail "the demo needs '$tool' (Debian: apt-get install $tool)"
done

echo "Otter demo: keys, server, updates with a rollback, backup and restore of a terminal,"
echo "all on this machine, in a scratch directory that is removed at the end."

# --- 1. binaries ----------------------------------------------------------------------------
begin "Getting the three programs: otter-keys, otter-server, otter-agent"
if [[ -n ${OTTER_BIN_DIR:-} ]]; then
  bin=$(cd "$OTTER_BIN_DIR" 2>/dev/null && pwd) || fail "OTTER_BIN_DIR=$OTTER_BIN_DIR is not a directory"
  say "using the binaries in $bin (OTTER_BIN_DIR)"
else
  command -v cargo >/dev/null || fail "cargo is missing: install Rust (rustup.rs), or set OTTER_BIN_DIR"
  say "building them: cargo build --release --locked (a few minutes the first time)"
  (cd "$repo" && cargo build --release --locked --bin otter-keys --bin otter-server --bin otter-agent) ||
    fail "cargo build failed (see above)"
  bin="$repo/target/release"
fi
for b in otter-keys otter-server otter-agent; do
  [[ -x $bin/$b ]] || fail "$bin/$b is missing or not executable"
done
keys="$bin/otter-keys" server="$bin/otter-server" agent="$bin/otter-agent"
done_ "$("$server" --version), $("$agent" --version), $("$keys" --version)"

work=$(mktemp -d "${TMPDIR:-/tmp}/otter-demo.XXXXXX")
chmod 0700 "$work"
say "scratch directory: $work"
# The demo's own commands must not pick up an operator's settings.
for name in $(compgen -e); do
  case $name in
  OTTER_KEYS_SCRYPT_LOG_N | OTTER_BIN_DIR | OTTER_DEMO_KEEP | OTTER_POS_DB) ;;
  OTTER_* | AWS_*) unset "$name" ;;
  esac
done

# --- 2. keys --------------------------------------------------------------------------------
begin "Key ceremony (offline in real life): root keys, online keys, backup recovery key"
umask 077
printf 'demo root passphrase, long enough\n' >"$work/root-pass"
printf 'demo online keys passphrase\n' >"$work/online-pass"
printf 'demo recovery passphrase\n' >"$work/recovery-pass"
run "$keys" init --dir "$work/ceremony" --root-keys 3 --threshold 2 \
  --passphrase-file "$work/root-pass" --online-passphrase-file "$work/online-pass"
[[ -f $work/ceremony/1.root.json ]] || fail "otter-keys init wrote no 1.root.json"
say "3 root keys (any 2 must sign a new root), targets/snapshot/timestamp keys, all encrypted (0600)"
run "$keys" verify --root "$work/ceremony/1.root.json" "$work/ceremony/1.root.json"
say "1.root.json verifies against itself: 2 of 3 root signatures"
run "$keys" recovery-key new --out "$work/recovery.age" --passphrase-file "$work/recovery-pass"
recipient=$(head -n1 "$work/recovery.age.pub")
[[ $recipient == age1* ]] || fail "the recovery key's public part is not an age recipient: $recipient"
mkdir "$work/online-keys"
cp "$work"/ceremony/keys/{targets,snapshot,timestamp}.{key,pub.json} "$work/online-keys/"
done_ "trusted root ceremony/1.root.json; backups will be encrypted to ${recipient:0:16}..."

# --- 3. server ------------------------------------------------------------------------------
begin "Starting otter-server on its embedded defaults (loopback, SQLite and files)"
data="$work/server-data"
printf '# Everything else: the embedded defaults.\n[backups]\nrecovery_recipient = "%s"\n' \
  "$recipient" >"$work/server.toml"
run "$server" init --config "$work/server.toml" --data-dir "$data" --root "$work/ceremony/1.root.json" \
  --keys-dir "$work/online-keys" --passphrase-file "$work/online-pass"
admin_token=$(printf '%s\n' "$out" | grep -Eo '^[A-Za-z0-9_.-]{20,}$' | tail -n1 || true)
say "production repository made from the ceremony's root (the server holds only the online keys)"
"$server" serve --config "$work/server.toml" --data-dir "$data" --listen 127.0.0.1:0 \
  --passphrase-file "$work/online-pass" >"$work/server.out" 2>"$work/server.log" &
server_pid=$!
url=""
for _ in $(seq 300); do
  url=$(sed -n 's/^listening on //p' "$work/server.out" | head -n1)
  [[ -n $url ]] && break
  kill -0 "$server_pid" 2>/dev/null || { sed 's/^/      | /' "$work/server.log" >&2; fail "the server exited (its log is above)"; }
  sleep 0.1
done
[[ -n $url ]] || fail "the server did not say where it listens within 30 s"
health=$(curl -fsS "$url/healthz") || fail "GET $url/healthz failed"
[[ $health == *'"status":"ok"'* ]] || fail "the server is not healthy: $health"
[[ -n $admin_token ]] && say "an admin token was printed once by init (kept in the scratch dir only)"
say "server process $server_pid (its log: server.log in the scratch directory)"
done_ "server listening on $url, /healthz ok"

# --- 4. bundles -----------------------------------------------------------------------------
begin "Building and publishing a firmware, a driver and a patch bundle"
run "$server" token create --role publisher --label demo --data-dir "$data"
printf '%s\n' "$out" | tail -n1 >"$work/publisher.token"
# bundle NAME KIND VERSION HEALTH-SCRIPT: a zstd tar with manifest.json and one payload file.
bundle() {
  local name=$1 kind=$2 version=$3 health=$4 dir="$work/bundles/$1-$3"
  mkdir -p "$dir"
  printf '%s %s %s for the demo terminal model pos-a\n' "$name" "$kind" "$version" >"$dir/payload.bin"
  local sha size
  sha=$(sha256sum "$dir/payload.bin" | cut -d' ' -f1)
  size=$(stat -c %s "$dir/payload.bin")
  cat >"$dir/manifest.json" <<JSON
{"name": "$name", "kind": "$kind", "version": "$version", "hardware": ["pos-a"],
 "payload": [{"path": "payload.bin", "size": $size, "sha256": "$sha"}],
 "health": ["/bin/sh", "-c", "$health"]}
JSON
  tar -C "$dir" -cf - manifest.json payload.bin | zstd -q -c >"$work/bundles/$name-$version.tar.zst"
}
# publish FILE: published through the API with the publisher token.
publish() {
  run "$server" publish --server "$url" --token-file "$work/publisher.token" "$1"
  local line
  line=$(printf '%s\n' "$err" "$out" | grep -m1 '^published ' || true)
  [[ -n $line ]] || fail "publish printed no 'published' line: $out"
  say "$line"
}
bundle pos-firmware firmware 1.0.0 'test -s payload.bin'
bundle pos-printer-driver driver 2.1.0 'test -s payload.bin'
bundle pos-hotfix patch 1.0.1 'test -s payload.bin'
for f in pos-firmware-1.0.0 pos-printer-driver-2.1.0 pos-hotfix-1.0.1; do
  publish "$work/bundles/$f.tar.zst"
done
done_ "3 releases signed by the server's online keys (TUF targets, snapshot, timestamp)"

# --- 5. sales database ----------------------------------------------------------------------
begin "Creating the terminal's sample sales database"
mkdir -p "$work/terminal/pos"
db="$work/terminal/pos/sales.db"
pos_db=${OTTER_POS_DB:-$repo/../shared/tools/pos_db.py}
if [[ -f $pos_db ]]; then
  run python3 "$pos_db" make "$db" 3000
  say "made with $(basename "$pos_db") (the reference sales database, 3000 sales)"
else
  run python3 - "$db" <<'PY'
import random, sqlite3, sys
rng = random.Random(7)
con = sqlite3.connect(sys.argv[1])
con.execute("PRAGMA journal_mode=WAL")
con.execute("CREATE TABLE transactions(id INTEGER PRIMARY KEY, terminal_id TEXT, ts INTEGER, "
            "amount_cents INTEGER, currency TEXT, card_brand TEXT, status TEXT)")
con.executemany("INSERT INTO transactions VALUES (?,?,?,?,?,?,?)",
                [(i, "T-%05d" % rng.randint(1, 50), 1700000000 + 7 * i, rng.randint(100, 9000),
                  "EUR", rng.choice(["VISA", "MC", "AMEX"]), "APPROVED") for i in range(1, 3001)])
con.commit()
con.close()
PY
  say "made with python3's sqlite3 ($pos_db is absent): 3000 sales"
fi
# count_rows DB: rows of the transactions table ("error" if it cannot be read).
count_rows() {
  python3 -c 'import sqlite3,sys
try: print(sqlite3.connect(sys.argv[1]).execute("SELECT count(*) FROM transactions").fetchone()[0])
except Exception as e: print("error")' "$1"
}
# integrity DB: "ok" or the start of what SQLite reports, on one line.
integrity() {
  python3 -c 'import sqlite3,sys
try: r = "; ".join(r[0] for r in sqlite3.connect(sys.argv[1]).execute("PRAGMA integrity_check"))
except Exception as e: r = "unreadable: %s" % e
print(" ".join(r.split())[:100])' "$1"
}
# content_hash DB: SHA-256 of the database's SQL dump (schema and every row), or "unreadable".
# The file's own bytes are not compared: SQLite's backup API, which takes the snapshot,
# rewrites header counters (change counter, library version), so a faithful copy can differ
# from the live file in those few bytes.
content_hash() {
  python3 -c 'import hashlib,sqlite3,sys
h = hashlib.sha256()
try:
    for line in sqlite3.connect(sys.argv[1]).iterdump(): h.update(line.encode() + b"\n")
    print(h.hexdigest())
except Exception as e: print("unreadable")' "$1"
}
rows=$(count_rows "$db")
[[ $rows =~ ^[0-9]+$ && $rows -gt 0 ]] || fail "the sales database has no readable rows ($rows)"
done_ "$db: $rows sales, $(stat -c %s "$db") bytes"

# --- 6. enrollment --------------------------------------------------------------------------
begin "Enrolling a sandboxed terminal (own state dir and install root)"
run "$server" enroll-token create --expires-in 1h --data-dir "$data"
printf '%s\n' "$out" | tail -n1 >"$work/enroll.token"
state="$work/terminal/state"
install_root="$work/terminal/opt-otter"
cp "$work/ceremony/1.root.json" "$work/terminal/image-root.json"
run "$agent" enroll --server "$url" --token-file "$work/enroll.token" --model pos-a \
  --trusted-root "$work/terminal/image-root.json" --state-dir "$state"
say "the terminal trusts only the root from its image (ceremony/1.root.json), never the network"
cat >"$work/agent.toml" <<TOML
state_dir = "$state"
install_root = "$install_root"
[update]
jitter_secs = 0
[apply]
health_timeout_secs = 30
[backup]
database = "$db"
TOML
run "$agent" config check "$work/agent.toml"
run "$server" devices list --data-dir "$data"
say "the server knows it: $(printf '%s\n' "$out" | sed -n 2p | tr -s ' ' | cut -c1-90)"
done_ "terminal enrolled (model pos-a), its keys in $state (0600)"

# --- 7. first update ------------------------------------------------------------------------
active() { readlink "$install_root/components/$1/current" 2>/dev/null || echo none; }
begin "First update: the terminal verifies and installs all three releases"
run "$agent" update --config "$work/agent.toml"
printf '%s\n' "$out" | grep -E 'installed|download' | sed 's/^/      agent: /' || true
for c in pos-firmware=1.0.0 pos-printer-driver=2.1.0 pos-hotfix=1.0.1; do
  [[ $(active "${c%%=*}") == "${c#*=}" ]] || fail "${c%%=*} is at $(active "${c%%=*}"), expected ${c#*=}"
done
done_ "installed pos-firmware 1.0.0, pos-printer-driver 2.1.0, pos-hotfix 1.0.1 (each health check passed)"

# --- 8. failing release ---------------------------------------------------------------------
begin "A firmware release whose health check fails is rolled back automatically"
bundle pos-firmware firmware 1.1.0 'echo payment self-test failed >&2; exit 1'
publish "$work/bundles/pos-firmware-1.1.0.tar.zst"
rc=0
out=$("$agent" update --config "$work/agent.toml" 2>&1) || rc=$?
printf '%s\n' "$out" | grep -Ei 'roll|health|install' | sed 's/^/      agent: /' | head -n 6 || true
((rc != 0)) || fail "the update with a failing health check reported success"
grep -qi 'rolled back' <<<"$out" || fail "the agent did not say it rolled back: $out"
[[ $(active pos-firmware) == 1.0.0 ]] || fail "pos-firmware is at $(active pos-firmware) after the failed update, expected 1.0.0"
run "$agent" status --json --config "$work/agent.toml"
python3 -c 'import json,sys
s = json.loads(sys.argv[1]); r = s["results"][0]
assert r["result"] == "rolled_back" and r["version"] == "1.1.0", r
assert s["installed"]["pos-firmware"] == "1.0.0", s["installed"]' "$out" ||
  fail "otter-agent status does not show the rollback: $out"
run "$server" devices list --json --data-dir "$data"
python3 -c 'import json,sys
r = json.loads(sys.argv[1])[0]["last_report"]["last_update"]
assert r["result"] == "rolled_back" and r["target"] == "pos-firmware-1.1.0.tar.zst", r' "$out" ||
  fail "the server was not told of the rollback: $out"
say "the server's device list shows the rollback of pos-firmware-1.1.0.tar.zst"
done_ "rolled back: pos-firmware 1.1.0 failed its health check, 1.0.0 is active again and the server was told"

# --- 9. backup ------------------------------------------------------------------------------
begin "Backing up the sales database (encrypted on the terminal, signed, incremental)"
backed_up=$(content_hash "$db")
[[ $backed_up =~ ^[0-9a-f]{64}$ ]] || fail "cannot read the sales database to hash it"
run "$agent" backup --state-dir "$state" --database "$db" --pack-size 65536
printf '%s\n' "$out" | tail -n 2 | sed 's/^/      agent: /'
run "$server" backups list --json --data-dir "$data"
python3 -c 'import json,sys; assert len(json.loads(sys.argv[1])) == 1' "$out" ||
  fail "the server does not list exactly one backup: $out"
say "the server holds ciphertext only; it checked the signature and chain and countersigned"
say "content hash of the database when backed up: $backed_up"
done_ "backup #1 stored on the server ($rows sales)"

# --- 10. damage -----------------------------------------------------------------------------
begin "Damaging the sales database (as a failing disk would)"
size=$(stat -c %s "$db")
dd if=/dev/urandom of="$db" bs=4096 seek=1 count=$(((size / 4096) / 2)) conv=notrunc status=none ||
  fail "could not overwrite part of $db"
damaged=$(content_hash "$db")
[[ $damaged != "$backed_up" ]] || fail "the database is unchanged after the damage"
check=$(integrity "$db")
say "content hash now: $damaged"
say "SQLite's integrity check now says: $check"
[[ $check != ok ]] || fail "SQLite still finds the damaged database intact"
done_ "half of the database's pages overwritten with random bytes"

# --- 11. restore ----------------------------------------------------------------------------
begin "Restoring the latest backup (everything verified before the file is replaced)"
run "$agent" restore --latest --state-dir "$state" --database "$db"
printf '%s\n' "$out" | tail -n 3 | sed 's/^/      agent: /'
restored=$(content_hash "$db")
say "content hash when backed up: $backed_up"
say "content hash after restore:  $restored"
[[ $restored == "$backed_up" ]] || fail "the restored database differs from the one backed up"
[[ $(integrity "$db") == ok ]] || fail "the restored database fails PRAGMA integrity_check"
[[ $(count_rows "$db") == "$rows" ]] || fail "the restored database has $(count_rows "$db") sales, expected $rows"
done_ "restored: the same content hash as when backed up, integrity ok, $rows sales"

# --- 12. stop -------------------------------------------------------------------------------
begin "Stopping the server and removing the scratch directory"
kill -TERM "$server_pid"
rc=0
wait "$server_pid" || rc=$?
server_pid=""
((rc == 0)) || fail "the server exited with status $rc on SIGTERM"
done_ "server stopped cleanly"
echo
echo "demo: all $STEPS steps done"
