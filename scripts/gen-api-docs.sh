#!/usr/bin/env bash
# Regenerates docs/api.md, the API reference, from the server's OpenAPI document (itself
# generated from the route table the authorization test walks). Run it after adding or
# changing a route; server/tests/openapi.rs fails while docs/api.md is out of date.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --locked -p otter-server -- openapi --markdown > docs/api.md.tmp
mv docs/api.md.tmp docs/api.md
echo "wrote docs/api.md"
