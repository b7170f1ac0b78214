# Sourced by the scripts in deploy/container/: finds out whether Podman can run containers
# here and, if it cannot with its defaults, whether it can with two known workarounds, which
# it then applies through a private containers.conf (CONTAINERS_CONF; nothing in /etc changes):
#   - crun refuses a cgroup "hybrid" host (v1 controllers plus a v2 hierarchy that still has
#     a controller, e.g. hugetlb): "cgroups in hybrid mode not supported". runc copes: use it.
#   - without CAP_SYS_RESOURCE Podman cannot raise RLIMIT_NOFILE/RLIMIT_NPROC to its
#     defaults for root (1048576): "setrlimit `RLIMIT_NOFILE`: Operation not permitted".
#     Ask for the hard limits this shell already has instead.
# Functions set podman_error (why not, for the SKIPPED message) and return 1 when Podman is
# not usable.
# shellcheck shell=bash

otter_cache=${OTTER_CONTAINER_CACHE:-/var/tmp/otter-container}

# podman_usable: podman is installed and answers `podman info`.
podman_usable() {
  podman_error=
  if ! command -v podman >/dev/null; then
    podman_error="podman is not installed (Debian: apt-get install podman runc debootstrap)"
    return 1
  fi
  local out
  if ! out=$(podman info --format '{{.Store.GraphDriverName}}' 2>&1); then
    podman_error="\`podman info\` fails: $out"
    return 1
  fi
}

# podman_can_run IMAGE: a container of IMAGE runs `true`, with Podman's defaults or with the
# workarounds above (then exported through CONTAINERS_CONF for every later podman call).
podman_can_run() {
  local image=$1 out conf
  if out=$(podman run --rm --network none "$image" true 2>&1); then
    return 0
  fi
  podman_error="podman run fails with its defaults: $out"
  conf=$otter_cache/containers.conf
  mkdir -p "$otter_cache"
  local nofile nproc runtime=
  nofile=$(ulimit -Hn)
  nproc=$(ulimit -Hu)
  [[ $nofile == unlimited ]] && nofile=1048576
  # conmon, which starts the runtime, runs with at most 32768 processes here.
  if [[ $nproc == unlimited ]] || ((nproc > 32768)); then nproc=32768; fi
  command -v runc >/dev/null && runtime='runtime = "runc"'
  cat >"$conf" <<CONF
# Written by deploy/container/podman-env.sh: Podman's defaults do not run here.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
$runtime
CONF
  if out=$(CONTAINERS_CONF=$conf podman run --rm --network none "$image" true 2>&1); then
    export CONTAINERS_CONF=$conf
    echo "podman: its defaults fail here; using $conf (${runtime:+runc, }ulimits nofile=$nofile nproc=$nproc)"
    podman_error=
    return 0
  fi
  podman_error="$podman_error; and with $conf (runc, this shell's ulimits): $out"
  [[ -n $runtime ]] || podman_error="$podman_error (install runc: apt-get install runc)"
  return 1
}
