#!/usr/bin/env bash
# Every example configuration is started with the real otter-server, so that the examples
# cannot rot:
#   - server/otter-server.example.toml (what `otter-server default-config` prints),
#     deploy/*.toml, and every ```toml block of docs/*.md;
#   each with `otter-server serve --config FILE --data-dir TMP --listen 127.0.0.1:0`: it must
#   print "listening on http://ADDR", answer GET /healthz with 200 "ok" (checked with curl and
#   with deploy/healthcheck.sh, the container's health check), and exit 0 on SIGTERM.
#   - The systemd unit's own ExecStart command line (deploy/systemd/otter-server.service),
#     run outside systemd on a PRODUCTION repository made by `otter-keys init` and
#     `otter-server init`: its flags exist, the passphrase credential and
#     deploy/server.example.toml work together.
#   - A config with a misspelt key is refused (the check above is not vacuous).
#   - deploy/agent*.toml and the ```toml blocks of docs/agent.md and docs/apply.md pass
#     `otter-agent config check` (the agent's own parser); an agent config with a misspelt
#     key is refused.
#   - deploy/server.example.toml lists every key the default config lists, and
#     docs/configuration.md names every one of them.
# Builds the workspace first (cargo build --workspace --locked). Prints "test-configs: ok"
# and exits 0, or names what failed and exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

fail() { echo "test-configs: FAILED: $*" >&2; exit 1; }
command -v curl >/dev/null || fail "curl is missing (Debian package curl)"

cargo build --workspace --locked --quiet
bin="${CARGO_TARGET_DIR:-$repo/target}/debug"
server="$bin/otter-server"
keys="$bin/otter-keys"
[[ -x $server && -x $keys ]] || fail "no $server or $keys after cargo build"

work=$(mktemp -d)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# start NAME CMD...: runs CMD in the background (stdout to $work/NAME.out, stderr to
# $work/NAME.err), waits up to 60 s for "listening on http://ADDR"; sets $pid and $addr.
start() {
  local name=$1
  shift
  "$@" >"$work/$name.out" 2>"$work/$name.err" &
  pid=$!
  pids+=("$pid")
  addr=
  for _ in $(seq 600); do
    addr=$(sed -nE 's#^listening on http://([^ ]+)$#\1#p' "$work/$name.out")
    [[ -n $addr ]] && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  fail "$name: the server did not start:"$'\n'"$(tail -n 20 "$work/$name.err")"
}

# check NAME: /healthz answers 200 "ok" (curl and deploy/healthcheck.sh), then SIGTERM stops
# the server with status 0 within 30 s.
check_and_stop() {
  local name=$1 body status=0
  body=$(curl -fsS --max-time 10 "http://$addr/healthz") ||
    fail "$name: GET /healthz failed:"$'\n'"$(tail -n 20 "$work/$name.err")"
  grep -q '"status":"ok"' <<<"$body" || fail "$name: /healthz said $body"
  OTTER_HEALTHCHECK_ADDR=$addr deploy/healthcheck.sh || fail "$name: deploy/healthcheck.sh said unhealthy"
  kill -TERM "$pid"
  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && fail "$name: still running 30 s after SIGTERM"
  wait "$pid" || status=$?
  ((status == 0)) || fail "$name: exited with status $status after SIGTERM:"$'\n'"$(tail -n 20 "$work/$name.err")"
}

# The example files, and the ```toml blocks of the docs.
# (The agent's config files, deploy/agent*.toml, docs/agent.md and docs/apply.md, are
# checked further down with the agent.)
agent_docs=(docs/agent.md docs/apply.md)
configs=(server/otter-server.example.toml)
for f in deploy/*.toml; do [[ $f == deploy/agent*.toml ]] || configs+=("$f"); done
mkdir -p "$work/docs"
for md in docs/*.md; do
  [[ -e $md ]] || continue
  [[ " ${agent_docs[*]} " == *" $md "* ]] && continue
  awk -v out="$work/docs/$(basename "$md" .md)" '
    /^```toml[[:space:]]*$/ { n++; f = out "-" n ".toml"; inside = 1; next }
    /^```/ && inside { inside = 0; close(f); next }
    inside { print > f }
  ' "$md"
done
for f in "$work"/docs/*.toml; do [[ -e $f ]] && configs+=("$f"); done

i=0
for config in "${configs[@]}"; do
  i=$((i + 1))
  name="config-$i"
  start "$name" "$server" serve --config "$config" --data-dir "$work/data-$i" --listen 127.0.0.1:0
  check_and_stop "$name"
  echo "test-configs: ${config#"$work/docs/"}: serves, /healthz ok, stops on SIGTERM"
done

# The systemd unit's ExecStart, on a production repository.
unit=deploy/systemd/otter-server.service
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
[[ -n $exec_start ]] || fail "$unit has no ExecStart="
(
  umask 077
  printf 'ceremony root passphrase\n' >"$work/root-pass"
  printf 'online keys passphrase\n' >"$work/key-passphrase"
)
OTTER_KEYS_SCRYPT_LOG_N=10 "$keys" init --dir "$work/ceremony" \
  --passphrase-file "$work/root-pass" --online-passphrase-file "$work/key-passphrase" \
  >/dev/null 2>"$work/keys.err" || fail "otter-keys init: $(cat "$work/keys.err")"
mkdir "$work/online-keys"
cp "$work"/ceremony/keys/{targets,snapshot,timestamp}.{key,pub.json} "$work/online-keys/"
"$server" init --data-dir "$work/var-lib-otter" --root "$work/ceremony/1.root.json" \
  --keys-dir "$work/online-keys" --passphrase-file "$work/key-passphrase" \
  >/dev/null 2>"$work/init.err" || fail "otter-server init: $(cat "$work/init.err")"
mkdir -m 0700 "$work/credentials"
cp "$work/key-passphrase" "$work/credentials/key-passphrase"
# systemd's %d is $CREDENTIALS_DIRECTORY; the unit's paths move into the scratch dir.
cmd=${exec_start//%d/$work/credentials}
cmd=${cmd//\/usr\/local\/bin\/otter-server/$server}
cmd=${cmd//\/etc\/otter\/server.toml/$repo/deploy/server.example.toml}
cmd=${cmd//\/var\/lib\/otter/$work/var-lib-otter}
[[ $cmd != *%* && $cmd != *'$'* ]] || fail "$unit: ExecStart uses a specifier or variable this test does not know: $exec_start"
read -r -a argv <<<"$cmd"
# The config listens on 127.0.0.1:8080; the environment overrides a config file.
OTTER_LISTEN=127.0.0.1:0 start unit "${argv[@]}"
grep -q 'DEVELOPMENT' "$work/unit.err" && fail "the unit's command started a development repository"
check_and_stop unit
echo "test-configs: $unit: ExecStart serves a production repository with the credential and deploy/server.example.toml"

# A misspelt key is refused, naming it.
printf 'listne = "127.0.0.1:0"\n' >"$work/bad.toml"
if "$server" serve --config "$work/bad.toml" --data-dir "$work/bad-data" >"$work/bad.out" 2>&1; then
  fail "a config with the unknown key 'listne' was accepted"
fi
grep -q listne "$work/bad.out" || fail "the refusal does not name the unknown key: $(cat "$work/bad.out")"
echo "test-configs: a config with an unknown key is refused"

# The agent's example config and the ```toml blocks of the agent's docs parse and validate with
# the agent's own parser (`otter-agent config check`); a misspelt agent key is refused.
agent="$bin/otter-agent"
[[ -x $agent ]] || fail "no $agent after cargo build"
agent_configs=(deploy/agent*.toml)
mkdir -p "$work/agent-docs"
for md in "${agent_docs[@]}"; do
  [[ -e $md ]] || continue
  awk -v out="$work/agent-docs/$(basename "$md" .md)" '
    /^```toml[[:space:]]*$/ { n++; f = out "-" n ".toml"; inside = 1; next }
    /^```/ && inside { inside = 0; close(f); next }
    inside { print > f }
  ' "$md"
done
for f in "$work"/agent-docs/*.toml; do [[ -e $f ]] && agent_configs+=("$f"); done
for config in "${agent_configs[@]}"; do
  [[ -e $config ]] || continue
  "$agent" config check "$config" >/dev/null 2>"$work/agent-check.err" ||
    fail "otter-agent config check ${config#"$work/agent-docs/"}: $(cat "$work/agent-check.err")"
  echo "test-configs: ${config#"$work/agent-docs/"}: otter-agent config check ok"
done
printf '[update]\npoll_intervall_secs = 5\n' >"$work/bad-agent.toml"
if "$agent" config check "$work/bad-agent.toml" >"$work/bad-agent.out" 2>&1; then
  fail "an agent config with the unknown key 'poll_intervall_secs' was accepted"
fi
grep -q poll_intervall_secs "$work/bad-agent.out" || fail "the agent's refusal does not name the unknown key: $(cat "$work/bad-agent.out")"
echo "test-configs: an agent config with an unknown key is refused"

# Every key of the default config is in deploy/server.example.toml and docs/configuration.md.
keys_of() { sed -nE 's/^(# ?)?([a-z_]+) = .*/\2/p; s/^\[([a-z_]+)\]$/[\1]/p' "$1" | sort -u; }
"$server" default-config >"$work/default.toml"
missing=$(comm -23 <(keys_of "$work/default.toml") <(keys_of deploy/server.example.toml))
[[ -z $missing ]] || fail "deploy/server.example.toml lacks: $(echo $missing)"
if [[ -e docs/configuration.md ]]; then
  for k in $(keys_of "$work/default.toml"); do
    grep -qF -- "${k//[\[\]]/}" docs/configuration.md || fail "docs/configuration.md does not name $k"
  done
  echo "test-configs: deploy/server.example.toml and docs/configuration.md name every config key"
fi
echo "test-configs: ok"
