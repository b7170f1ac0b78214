#!/usr/bin/env python3
"""Verifies a TUF repository with python-tuf, the reference implementation.

    verify_repo.py DIR [--no-client]

Direction (A) of the python-tuf interoperability test (tests/tests/python_tuf_interop.rs):
Otter writes a repository, python-tuf must accept it. Exit status 0 and a summary on
stdout when everything verifies; 1 and the reason on stderr otherwise.

DIR holds the metadata under plain names:

    DIR/1.root.json, DIR/2.root.json, ...   the root chain, from version 1 without gaps
    DIR/timestamp.json, DIR/snapshot.json, DIR/targets.json
    DIR/<ROLE>.json                          each delegated targets role

Part 1, metadata API (`tuf.api.metadata`): each file is loaded with `Metadata.from_bytes`
and verified with `Metadata.verify_delegate` by its delegator: root 1 by itself, root N by
root N-1 and by itself, timestamp/snapshot/targets by the newest root, each delegated role
by the targets metadata that delegates to it. Then:
  - versions: each root is its predecessor + 1; the timestamp names snapshot's version (and
    its length and hashes, if given); snapshot names the version of targets.json and of
    every delegated role (and lengths and hashes, if given), and nothing that is not there;
  - expiry: the newest root and all other metadata are unexpired;
  - delegated roles list only targets inside the paths they were delegated;
  - canonical form: python-tuf's signer serialisation (CanonicalJSONSerializer of the parsed
    `signed` object) must be byte-for-byte the canonical JSON of the `signed` object as
    found in the file, every signature by an authorised key must verify over those bytes,
    and the metadata must still verify after python-tuf re-serialises and re-parses it.
    A member python-tuf drops or rewrites would show here.

Part 2, client (`tuf.ngclient.Updater`), unless --no-client: DIR is served with
`python -m http.server` on 127.0.0.1 and an ephemeral port (stopped in every case), laid
out for consistent snapshots as python-tuf reads them:

    DIR/metadata/N.root.json, DIR/metadata/timestamp.json, DIR/metadata/V.ROLE.json
    DIR/targets/HASH.NAME            (for NAME = a/b/c: DIR/targets/a/b/HASH.c)

A fresh Updater, bootstrapped with 1.root.json only, refreshes (following the root chain
over HTTP), looks up every target of targets.json and of the delegated roles, downloads it
and checks it against the signed length and hashes.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from securesystemslib.formats import encode_canonical
from tuf.api.metadata import Metadata, MetaFile
from tuf.api.serialization.json import CanonicalJSONSerializer, JSONSerializer
from tuf.ngclient import Updater


class Refused(Exception):
    """The repository is not valid TUF as python-tuf sees it."""


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise Refused(msg)


def load(path: Path) -> tuple[Metadata, bytes]:
    """Parses a metadata file with python-tuf; returns it and the raw bytes."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise Refused(f"cannot read {path.name}: {e}") from e
    try:
        return Metadata.from_bytes(raw), raw
    except Exception as e:  # DeserializationError, ValueError, KeyError, ...
        raise Refused(f"python-tuf cannot parse {path.name}: {type(e).__name__}: {e}") from e


def verify(delegator: Metadata, role: str, md: Metadata, raw: bytes, name: str) -> int:
    """Verifies md (parsed from raw, file `name`) as `role` with `delegator`'s keys and
    threshold, then checks the canonical form as described in the module docstring.
    Returns the number of authorised keys whose signatures verified."""
    # Delegated roles are of type "targets"; top-level roles are of their own type.
    expected_type = role if role in ("root", "timestamp", "snapshot", "targets") else "targets"
    check(
        md.signed.type == expected_type,
        f"{name}: _type is {md.signed.type!r}, expected {expected_type!r}",
    )
    # 1. The standard check, as the python-tuf client does it.
    try:
        delegator.verify_delegate(role, md)
    except Exception as e:  # UnsignedMetadataError, ValueError
        raise Refused(f"{name}: signature threshold not met for role {role!r}: {e}") from e

    # 2. python-tuf's signer serialisation of what it parsed, against the canonical JSON of
    #    the `signed` object exactly as it is in the file.
    payload = CanonicalJSONSerializer().serialize(md.signed)
    from_file = encode_canonical(json.loads(raw)["signed"]).encode("utf-8")
    check(
        payload == from_file,
        f"{name}: python-tuf's canonical serialisation of the parsed metadata differs from "
        f"the canonical JSON of the file's signed object (a member was lost or rewritten)",
    )
    result = delegator.signed.get_verification_result(role, payload, md.signatures)
    check(
        result.verified,
        f"{name}: {len(result.signed)}/{result.threshold} signatures verify over the "
        f"canonical bytes",
    )
    authorised = set(delegator.signed.get_delegated_role(role).keyids)
    for keyid in md.signatures:
        check(
            keyid not in authorised or keyid in result.signed,
            f"{name}: the signature by authorised key {keyid[:8]} does not verify",
        )

    # 3. Round trip through python-tuf's own file format: still verifies.
    again = Metadata.from_bytes(md.to_bytes(JSONSerializer()))
    try:
        delegator.verify_delegate(role, again)
    except Exception as e:
        raise Refused(f"{name}: no longer verifies after python-tuf re-serialised it: {e}") from e
    return len(result.signed)


def check_meta(meta: MetaFile, md: Metadata, raw: bytes, what: str) -> None:
    """The version (and length and hashes, when given) that `meta` names for a file."""
    check(
        meta.version == md.signed.version,
        f"{what} names version {meta.version}, the file has version {md.signed.version}",
    )
    if meta.length is not None or meta.hashes is not None:
        try:
            meta.verify_length_and_hashes(raw)
        except Exception as e:  # LengthOrHashMismatchError
            raise Refused(f"{what}: length or hashes do not match the file: {e}") from e


def check_unexpired(md: Metadata, name: str) -> None:
    check(not md.signed.is_expired(), f"{name} expired at {md.signed.expires.isoformat()}")


def verify_metadata(d: Path) -> dict:
    """Part 1. Returns what the client part needs and a summary."""
    summary: list[str] = []

    # Root chain: 1.root.json, 2.root.json, ... without gaps.
    versions = sorted(
        int(m.group(1)) for p in d.iterdir() if (m := re.fullmatch(r"([0-9]+)\.root\.json", p.name))
    )
    check(bool(versions) and versions[0] == 1, f"no 1.root.json in {d}")
    check(versions == list(range(1, len(versions) + 1)), f"root versions {versions} have a gap")
    root, raw = load(d / "1.root.json")
    check(root.signed.type == "root", f"1.root.json has _type {root.signed.type!r}")
    check(root.signed.version == 1, f"1.root.json has version {root.signed.version}")
    n = verify(root, "root", root, raw, "1.root.json")
    summary.append(
        f"1.root.json: self-signed, {n} root keys (threshold {root.signed.roles['root'].threshold})"
    )
    for v in versions[1:]:
        name = f"{v}.root.json"
        new, raw = load(d / name)
        check(new.signed.type == "root", f"{name} has _type {new.signed.type!r}")
        check(
            new.signed.version == root.signed.version + 1,
            f"{name} has version {new.signed.version}, expected {root.signed.version + 1}",
        )
        old_n = verify(root, "root", new, raw, f"{name} (by root v{root.signed.version})")
        new_n = verify(new, "root", new, raw, f"{name} (by itself)")
        summary.append(
            f"{name}: {old_n} keys of root v{root.signed.version} "
            f"(threshold {root.signed.roles['root'].threshold}) and {new_n} of its "
            f"own (threshold {new.signed.roles['root'].threshold})"
        )
        root = new
    check_unexpired(root, f"{root.signed.version}.root.json")

    # Timestamp, snapshot, targets by the newest root.
    timestamp, raw = load(d / "timestamp.json")
    n = verify(root, "timestamp", timestamp, raw, "timestamp.json")
    check_unexpired(timestamp, "timestamp.json")
    summary.append(f"timestamp.json v{timestamp.signed.version}: {n} key(s)")

    snapshot, snapshot_raw = load(d / "snapshot.json")
    n = verify(root, "snapshot", snapshot, snapshot_raw, "snapshot.json")
    check_unexpired(snapshot, "snapshot.json")
    check_meta(
        timestamp.signed.snapshot_meta, snapshot, snapshot_raw, "timestamp's snapshot.json entry"
    )
    summary.append(f"snapshot.json v{snapshot.signed.version}: {n} key(s), matches timestamp")

    targets, raw = load(d / "targets.json")
    n = verify(root, "targets", targets, raw, "targets.json")
    check_unexpired(targets, "targets.json")
    check("targets.json" in snapshot.signed.meta, "snapshot has no targets.json entry")
    check_meta(snapshot.signed.meta["targets.json"], targets, raw, "snapshot's targets.json entry")
    summary.append(
        f"targets.json v{targets.signed.version}: {n} key(s), "
        f"{len(targets.signed.targets)} target(s)"
    )

    # Delegated roles, depth first from targets.json, each verified by its delegator.
    seen = {"targets.json"}
    all_targets = {path: "targets" for path in targets.signed.targets}
    stack = [targets]
    delegated_names: list[str] = []
    while stack:
        delegator = stack.pop()
        delegations = delegator.signed.delegations
        if delegations is None or delegations.roles is None:
            continue
        for role in delegations.roles.values():
            name = f"{role.name}.json"
            check(name not in seen, f"delegated role {role.name!r} is delegated twice")
            seen.add(name)
            md, raw = load(d / quote(name, ""))
            n = verify(delegator, role.name, md, raw, name)
            check_unexpired(md, name)
            check(name in snapshot.signed.meta, f"snapshot has no {name} entry")
            check_meta(snapshot.signed.meta[name], md, raw, f"snapshot's {name} entry")
            for path in md.signed.targets:
                check(
                    role.is_delegated_path(path),
                    f"{name} lists {path!r}, outside the paths delegated to it",
                )
                all_targets.setdefault(path, role.name)
            delegated_names.append(role.name)
            summary.append(
                f"{name} v{md.signed.version}: {n}/{role.threshold} key(s) of the "
                f"delegation, {len(md.signed.targets)} target(s) in "
                f"{role.paths or role.path_hash_prefixes}"
            )
            stack.append(md)
    extra = sorted(set(snapshot.signed.meta) - seen)
    check(not extra, f"snapshot lists metadata that is not in the repository: {extra}")

    return {
        "summary": summary,
        "root_versions": versions,
        "targets": all_targets,
        "delegated": delegated_names,
        "consistent_snapshot": bool(root.signed.consistent_snapshot),
    }


def start_server(directory: Path, log) -> tuple[subprocess.Popen, int]:
    """`python -m http.server` on 127.0.0.1 with an ephemeral port; returns it and the port."""
    server = subprocess.Popen(
        [
            sys.executable,
            "-u",
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            str(directory),
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    # It prints "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..." once
    # listening.
    deadline = time.monotonic() + 20
    assert server.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([server.stdout], [], [], 0.2)
        if ready:
            line = server.stdout.readline()
            if m := re.search(r" port ([0-9]+) ", line):
                return server, int(m.group(1))
            if not line:
                break
        if server.poll() is not None:
            break
    stop_server(server)
    raise Refused("python -m http.server did not start")


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    if server.stdout is not None:
        server.stdout.close()


def run_client(d: Path, found: dict) -> list[str]:
    """Part 2: a full ngclient refresh and download against DIR served over HTTP."""
    check(
        found["consistent_snapshot"],
        "root does not set consistent_snapshot: the client test expects that layout",
    )
    check(
        (d / "metadata").is_dir() and (d / "targets").is_dir(),
        f"no {d}/metadata or {d}/targets directory for the client test "
        f"(run with --no-client to skip it)",
    )
    # Loopback only: no proxy from the environment may take these requests.
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    summary: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "server.log", "w+") as log:
        server, port = start_server(d, log)
        try:
            base = f"http://127.0.0.1:{port}"
            cache = Path(tmp) / "cache"
            downloads = Path(tmp) / "downloads"
            cache.mkdir()
            downloads.mkdir()
            updater = Updater(
                metadata_dir=str(cache),
                metadata_base_url=f"{base}/metadata/",
                target_dir=str(downloads),
                target_base_url=f"{base}/targets/",
                bootstrap=(d / "1.root.json").read_bytes(),
            )
            updater.refresh()
            newest = found["root_versions"][-1]
            trusted_root = Metadata.from_bytes((cache / "root.json").read_bytes())
            check(
                trusted_root.signed.version == newest,
                f"ngclient trusts root v{trusted_root.signed.version} after refresh, "
                f"expected v{newest}",
            )
            summary.append(
                f"ngclient: refreshed over HTTP, root chain 1 -> {newest}, "
                f"timestamp, snapshot, targets"
            )
            for path, role in sorted(found["targets"].items()):
                info = updater.get_targetinfo(path)
                check(info is not None, f"ngclient finds no target {path!r}")
                local = updater.download_target(info)
                with open(local, "rb") as f:
                    info.verify_length_and_hashes(f)
                summary.append(
                    f"ngclient: downloaded {path} ({info.length} bytes, "
                    f"signed by {role}) and verified it"
                )
        except Refused:
            raise
        except Exception as e:
            log.flush()
            log.seek(0)
            raise Refused(
                f"ngclient: {type(e).__name__}: {e}\nhttp.server log:\n{log.read()}"
            ) from e
        finally:
            stop_server(server)
    return summary


def main(argv: list[str]) -> int:
    args = [a for a in argv if a != "--no-client"]
    if len(args) != 1:
        print("usage: verify_repo.py DIR [--no-client]", file=sys.stderr)
        return 2
    d = Path(args[0])
    try:
        found = verify_metadata(d)
        lines = found["summary"]
        if "--no-client" in argv:
            lines.append("ngclient: not run (--no-client)")
        else:
            lines += run_client(d, found)
    except Refused as e:
        print(f"verify_repo: REFUSED by python-tuf: {e}", file=sys.stderr)
        return 1
    print(f"verify_repo: python-tuf accepts {d}")
    for line in lines:
        print(f"verify_repo:   {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
