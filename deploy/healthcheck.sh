#!/bin/bash
# Container health check for otter-server, with nothing but bash (no curl in the image):
# GET /healthz over /dev/tcp, healthy when the status line says 200. otter-server answers
# 200 only when its database answers and the object store holds timestamp.json (else 503).
#   OTTER_HEALTHCHECK_ADDR  HOST:PORT to ask [default: 127.0.0.1:8080]
# Exit 0 healthy, 1 not (what Docker's and Podman's HEALTHCHECK expect).
# deploy/test-configs.sh runs this very script against a live server.
set -u
addr=${OTTER_HEALTHCHECK_ADDR:-127.0.0.1:8080}
host=${addr%:*}
port=${addr##*:}
{ exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null || { echo "otter-server unreachable at $addr" >&2; exit 1; }
printf 'GET /healthz HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "$addr" >&3
IFS= read -r -t 5 status <&3 || exit 1
exec 3<&-
case $status in
  "HTTP/1."[01]" 200 "*) exit 0 ;;
  *) echo "otter-server unhealthy: ${status%$'\r'}" >&2; exit 1 ;;
esac
