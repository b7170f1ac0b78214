#!/usr/bin/env bash
# Creates the Python virtual environment that the python-tuf interoperability tests use
# (tests/tests/python_tuf_interop.rs runs tests/interop/*.py with it).
#
#   scripts/python-venv.sh        # creates <repo>/.venv, or checks that it is up to date
#
# Idempotent: when <repo>/.venv already has every version pinned in
# tests/interop/requirements.txt it changes nothing and returns in well under a second.
# Otherwise it creates the venv with `python3 -m venv` (set PYTHON to use another
# interpreter) and pip-installs the pinned packages from the package registry.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="$repo/.venv"
requirements="$repo/tests/interop/requirements.txt"
python="${PYTHON:-python3}"

say() { echo "python-venv: $*"; }

# Exits 0 when the venv's python imports and has exactly the pinned versions installed;
# otherwise prints what is missing or different and exits 1.
check_pins() {
    "$venv/bin/python" - "$requirements" <<'EOF'
import re
import sys
from importlib import metadata

ok = True
with open(sys.argv[1], encoding="utf-8") as f:
    for line in f:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==(\S+)", line)
        if not m:
            print(f"python-venv: requirement {line!r} is not pinned as NAME==VERSION")
            sys.exit(2)
        name, want = m.group(1), m.group(3)
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            print(f"python-venv:   {name} is not installed (want {want})")
            ok = False
            continue
        if have != want:
            print(f"python-venv:   {name} {have} is installed, want {want}")
            ok = False
# The modules the interop scripts import, with the crypto backend they need.
try:
    import cryptography.hazmat.primitives.asymmetric.ed25519  # noqa: F401
    import securesystemslib.signer  # noqa: F401
    import tuf.api.metadata  # noqa: F401
    import tuf.ngclient  # noqa: F401
except ImportError as e:
    print(f"python-venv:   import failed: {e}")
    ok = False
sys.exit(0 if ok else 1)
EOF
}

if [ ! -f "$requirements" ]; then
    say "missing $requirements" >&2
    exit 1
fi

# A venv whose interpreter no longer runs (python upgraded or removed) is rebuilt.
if [ -e "$venv" ] && ! "$venv/bin/python" -c 'pass' 2>/dev/null; then
    say "$venv exists but its python does not run: recreating it"
    "$python" -m venv --clear "$venv"
elif [ ! -e "$venv" ]; then
    say "creating $venv with $("$python" --version 2>&1) ($(command -v "$python"))"
    "$python" -m venv "$venv"
fi

if check_pins >/dev/null 2>&1; then
    say "$venv is up to date with $requirements; nothing to do"
    exit 0
fi

say "differences from $requirements:"
check_pins || true
say "installing the pinned packages into $venv"
"$venv/bin/python" -m pip install --disable-pip-version-check --no-input --quiet \
    -r "$requirements"
"$venv/bin/python" -m pip check --disable-pip-version-check

if ! check_pins; then
    say "the installed versions still differ from $requirements" >&2
    exit 1
fi
say "ready: $("$venv/bin/python" --version 2>&1), $("$venv/bin/python" -m pip freeze \
    --disable-pip-version-check | tr '\n' ' ')"
say "the interop tests find it as $venv/bin/python (or set OTTER_PYTHON)"
