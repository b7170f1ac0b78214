#!/usr/bin/env bash
# Checks the systemd units in deploy/systemd/ without needing systemd as PID 1 (CI containers
# have none):
#   1. `systemd-analyze verify` accepts each unit without a single warning (unknown keys and
#      misspelt settings only warn, so any output fails the test). ExecStart's binary must
#      exist for verify, so it runs on a copy whose program path points to a stub.
#   2. `systemd-analyze security --offline=yes` rates each unit's sandbox at an overall
#      exposure of at most THRESHOLD (0.0 = locked down, 10.0 = no sandbox at all; systemd
#      calls anything below 2.0 "OK"), AND flags (✗) nothing but the ALLOWED_OPEN items: what
#      a network server cannot close (Internet and local sockets, the host's network, no IP
#      allow list since terminals connect from anywhere), the host's root directory, and
#      read access to the real-time clock that ProtectClock= itself grants. The score alone
#      is too coarse a guard (settings overlap: removing ProtectSystem= only moves 1.1 to
#      1.2), so any new ✗ fails the test even under the threshold.
#      otter-agent.service may also leave UMask= flagged: 0027, so that the POS application
#      (in the otter-agent group) can reach what the agent installs under /opt/otter.
#   3. The sysusers.d files create the `otter` and `otter-agent` users, and the agent's
#      tmpfiles.d file its state dir (0700) and install root (0750), owned by otter-agent
#      (systemd-sysusers and systemd-tmpfiles on a scratch root).
#   4. Every hardening setting of each unit is still there, word for word, and so is what the
#      server depends on (user, state dir, credential, the flags of ExecStart, a stop timeout
#      longer than the server's own) and what the agent depends on (its user, state dir,
#      install root, ExecStart, the enrollment it needs).
# Prints "test-systemd: ok" and exits 0, or names what failed and exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."

THRESHOLD=1.5   # highest acceptable overall exposure level; otter-server.service: 1.1
ALLOWED_OPEN=(
  'RootDirectory=/RootImage='
  'RestrictAddressFamilies=~AF_UNIX'
  'RestrictAddressFamilies=~AF_(INET|INET6)'
  'PrivateNetwork='
  'IPAddressDeny='
  'DeviceAllow='
)

fail() { echo "test-systemd: FAILED: $*" >&2; exit 1; }
command -v systemd-analyze >/dev/null ||
  fail "systemd-analyze is missing (Debian package systemd; .ci/run installs it)"
version=$(systemd-analyze --version | awk 'NR==1 {print $2}')
# --offline and --threshold appeared in systemd 250.
((version >= 250)) || fail "systemd $version is too old for 'systemd-analyze security --offline' (need 250+)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for b in otter-server otter-agent; do
  printf '#!/bin/sh\nexit 0\n' >"$work/$b"
  chmod 0755 "$work/$b"
done

units=(deploy/systemd/*.service)
((${#units[@]})) || fail "no unit in deploy/systemd/"
threshold_tenths=$(awk -v t="$THRESHOLD" 'BEGIN {printf "%d", t * 10 + 0.5}')
for unit in "${units[@]}"; do
  name=$(basename "$unit")
  # 1. verify, on a copy whose ExecStart program is the stub.
  sed -E "s#^(ExecStart=[-@:+!]*)/usr/local/bin/(otter-server|otter-agent)#\1$work/\2#" "$unit" >"$work/$name"
  if ! out=$(cd "$work" && systemd-analyze verify "$work/$name" 2>&1) || [[ -n $out ]]; then
    fail "systemd-analyze verify $unit:"$'\n'"$out"
  fi
  echo "test-systemd: $unit: systemd-analyze verify: no warnings"

  # 2. security, offline, on the real file.
  report=$(systemd-analyze security --offline=yes --no-pager "$unit" 2>&1) || true
  score=$(grep -Eo 'Overall exposure level for [^:]+: [0-9]+\.[0-9]+' <<<"$report" | awk '{print $NF}')
  [[ -n $score ]] || fail "systemd-analyze security printed no exposure level for $unit:"$'\n'"$report"
  if ! systemd-analyze security --offline=yes --no-pager --threshold="$threshold_tenths" "$unit" >/dev/null 2>&1; then
    echo "$report" | grep '✗' >&2 || true
    fail "$unit: exposure $score is above the threshold $THRESHOLD (the ✗ lines above are what is open)"
  fi
  open_items=$(grep '✗' <<<"$report" | awk '{print $2}')
  for item in $open_items; do
    allowed=no
    for a in "${ALLOWED_OPEN[@]}"; do [[ $item == "$a" ]] && allowed=yes; done
    [[ $name == otter-agent.service && $item == UMask= ]] && allowed=yes
    [[ $allowed == yes ]] || fail "$unit: systemd-analyze security flags $item:"$'\n'"$(grep -F "$item" <<<"$report")"
  done
  echo "test-systemd: $unit: systemd-analyze security --offline=yes: exposure $score (threshold $THRESHOLD), open only: $(echo $open_items)"
done

# 3. The system user.
mkdir -p "$work/root/etc/sysusers.d"
cp deploy/systemd/otter-server.sysusers.conf "$work/root/etc/sysusers.d/otter.conf"
systemd-sysusers --root="$work/root" >/dev/null 2>&1 ||
  fail "systemd-sysusers refused deploy/systemd/otter-server.sysusers.conf"
grep -Eq '^otter:x:[0-9]+:[0-9]+:Otter update server:/var/lib/otter:' "$work/root/etc/passwd" ||
  fail "systemd-sysusers did not create the otter user: $(cat "$work/root/etc/passwd" 2>/dev/null)"
echo "test-systemd: otter-server.sysusers.conf creates the otter user"
cp deploy/systemd/otter-agent.sysusers.conf "$work/root/etc/sysusers.d/otter-agent.conf"
systemd-sysusers --root="$work/root" >/dev/null 2>&1 ||
  fail "systemd-sysusers refused deploy/systemd/otter-agent.sysusers.conf"
agent_uid=$(awk -F: '$1 == "otter-agent" && $5 == "Otter terminal agent" && $6 == "/var/lib/otter-agent" {print $3}' "$work/root/etc/passwd")
[[ -n $agent_uid ]] || fail "systemd-sysusers did not create the otter-agent user: $(cat "$work/root/etc/passwd")"
mkdir -p "$work/root/etc/tmpfiles.d"
cp deploy/systemd/otter-agent.tmpfiles.conf "$work/root/etc/tmpfiles.d/otter-agent.conf"
systemd-tmpfiles --root="$work/root" --create >/dev/null 2>&1 ||
  fail "systemd-tmpfiles refused deploy/systemd/otter-agent.tmpfiles.conf"
for d in /var/lib/otter-agent:700 /opt/otter:750; do
  got=$(stat -c '%a %u' "$work/root${d%%:*}" 2>/dev/null) || fail "systemd-tmpfiles did not create ${d%%:*}"
  [[ $got == "${d#*:} $agent_uid" ]] || fail "${d%%:*} is mode/owner $got, expected ${d#*:} $agent_uid (otter-agent)"
done
echo "test-systemd: otter-agent.sysusers.conf and .tmpfiles.conf create the otter-agent user, /var/lib/otter-agent (0700) and /opt/otter (0750)"

# 4. What the server relies on.
unit=deploy/systemd/otter-server.service
need() { grep -Eq "$1" "$unit" || fail "$unit lacks $2"; }
for setting in User=otter StateDirectory=otter UMask=0077 NoNewPrivileges=yes CapabilityBoundingSet= \
  AmbientCapabilities= ProtectSystem=strict ProtectHome=yes PrivateTmp=yes PrivateDevices=yes \
  DevicePolicy=closed PrivateUsers=yes PrivateIPC=yes PrivateMounts=yes ProtectProc=invisible \
  ProcSubset=pid ProtectKernelTunables=yes ProtectKernelModules=yes ProtectKernelLogs=yes \
  ProtectControlGroups=yes ProtectClock=yes ProtectHostname=yes \
  'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX' RestrictNamespaces=yes RestrictRealtime=yes \
  RestrictSUIDSGID=yes LockPersonality=yes MemoryDenyWriteExecute=yes RemoveIPC=yes \
  KeyringMode=private SystemCallArchitectures=native SystemCallFilter=@system-service \
  'SystemCallFilter=~@privileged @resources' Restart=on-failure; do
  grep -qxF "$setting" "$unit" || fail "$unit lacks the line $setting"
done
need '^LoadCredential=key-passphrase:' "the key-passphrase credential"
need '^ExecStart=/usr/local/bin/otter-server serve .*--data-dir /var/lib/otter( |$)' "ExecStart ... serve --data-dir /var/lib/otter"
need '^ExecStart=.* --passphrase-file %d/key-passphrase( |$)' "--passphrase-file %d/key-passphrase (the credentials directory)"
need '^AssertPathExists=/var/lib/otter/otter.db$' "AssertPathExists= (never create a development repository)"
stop=$(sed -nE 's/^TimeoutStopSec=([0-9]+)$/\1/p' "$unit")
server_stop=$(sed -nE 's/^shutdown_timeout_secs = ([0-9]+).*/\1/p' deploy/server.example.toml)
[[ -n $stop && -n $server_stop ]] && ((stop > server_stop)) ||
  fail "TimeoutStopSec (${stop:-unset}) must exceed shutdown_timeout_secs in deploy/server.example.toml (${server_stop:-unset})"
echo "test-systemd: $unit: ExecStart flags, credential, state dir, stop timeout ${stop}s > ${server_stop}s"

unit=deploy/systemd/otter-agent.service
for setting in User=otter-agent Group=otter-agent StateDirectory=otter-agent StateDirectoryMode=0700 \
  'ExecStart=/usr/local/bin/otter-agent run --config /etc/otter/agent.toml' ReadWritePaths=/opt/otter \
  AssertPathExists=/var/lib/otter-agent/agent.json UMask=0027 NoNewPrivileges=yes CapabilityBoundingSet= \
  AmbientCapabilities= ProtectSystem=strict ProtectHome=yes PrivateTmp=yes PrivateDevices=yes \
  DevicePolicy=closed PrivateUsers=yes PrivateIPC=yes PrivateMounts=yes ProtectProc=invisible \
  ProcSubset=pid ProtectKernelTunables=yes ProtectKernelModules=yes ProtectKernelLogs=yes \
  ProtectControlGroups=yes ProtectClock=yes ProtectHostname=yes \
  'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX' RestrictNamespaces=yes RestrictRealtime=yes \
  RestrictSUIDSGID=yes LockPersonality=yes MemoryDenyWriteExecute=yes RemoveIPC=yes \
  KeyringMode=private SystemCallArchitectures=native SystemCallFilter=@system-service \
  'SystemCallFilter=~@privileged @resources' Restart=on-failure; do
  grep -qxF "$setting" "$unit" || fail "$unit lacks the line $setting"
done
# The install root the unit may write is the one the example config installs into.
grep -qxF 'install_root = "/opt/otter"' deploy/agent.example.toml ||
  fail "deploy/agent.example.toml's install_root is not /opt/otter, the unit's ReadWritePaths="
grep -qxF 'state_dir = "/var/lib/otter-agent"' deploy/agent.example.toml ||
  fail "deploy/agent.example.toml's state_dir is not /var/lib/otter-agent, the unit's StateDirectory="
echo "test-systemd: $unit: user, state dir, install root, ExecStart, enrollment assertion, every hardening line"
echo "test-systemd: ok"
