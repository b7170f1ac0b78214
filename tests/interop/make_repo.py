#!/usr/bin/env python3
"""Writes a TUF repository with python-tuf, the reference implementation, for Otter to verify.

    make_repo.py DIR

Direction (B) of the python-tuf interoperability test (tests/tests/python_tuf_interop.rs):
python-tuf writes the metadata, `otter-keys verify` must accept every good file and refuse
every broken one. Everything is built with python-tuf's own metadata API
(`tuf.api.metadata`) and signed with securesystemslib's `CryptoSigner`, so the files are
exactly what a python-tuf repository publishes. Keys of all three signature schemes Otter
verifies are used: ed25519, ecdsa-sha2-nistp256 and rsassa-pss-sha256.

Written (the top-level files are what a TUF repository without consistent snapshots
publishes; private keys are never written):

    DIR/1.root.json          root v1: root keys ed25519 + ecdsa + rsa, threshold 2
    DIR/2.root.json          root v2: two root keys rotated out, two new ones in, threshold 2,
                             new timestamp key; signed by two old root keys and two new ones
                             only, so that neither threshold is met by the other's keys
    DIR/targets.json         two targets with Otter fields under `custom`, an unrecognised
                             member, and a delegation to `vendor-drivers` (paths drivers/*)
    DIR/vendor-drivers.json  the delegated role, threshold 2 of an ecdsa and an rsa key
    DIR/snapshot.json        versions of targets.json and vendor-drivers.json
    DIR/timestamp.json       version, length and sha256 of snapshot.json (v2 timestamp key)
    DIR/bad/targets.json     targets.json with one byte of a signature changed
    DIR/bad/snapshot.json    snapshot signed by the timestamp key instead of the snapshot key
    DIR/bad/2.root.json      root v2 signed by its new root keys only (old threshold not met)
    DIR/bad/vendor-drivers.json  the delegated role signed by 1 of its 2 required keys
    DIR/edge/...             valid metadata with strings that canonical JSON encoders are
                             known to disagree on (see write_edge_cases)
    DIR/expected.json        what the test should find: versions, key types, targets

Every good file is checked with python-tuf before the script exits, so a failure in Otter
means Otter disagrees with the reference implementation, not that this script is wrong.
"""

from __future__ import annotations

import copy
import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

# Metadata must not expire while the test runs; a year is far enough.
EXPIRES = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=365)

DELEGATED = "vendor-drivers"

# Pretty-printed like most repositories publish; signatures cover the canonical form anyway.
SERIALIZER = JSONSerializer(compact=False)


def new_signer(kind: str) -> CryptoSigner:
    """A fresh key pair of one of the three schemes Otter verifies."""
    if kind == "ed25519":
        return CryptoSigner.generate_ed25519()
    if kind == "ecdsa":
        return CryptoSigner.generate_ecdsa()  # ecdsa-sha2-nistp256
    if kind == "rsa":
        return CryptoSigner.generate_rsa()  # rsassa-pss-sha256, 3072 bits
    raise ValueError(kind)


def sign(md: Metadata, *signers: Signer) -> Metadata:
    """Replaces md's signatures with one by each signer (canonical JSON of `signed`)."""
    md.signatures.clear()
    for s in signers:
        md.sign(s, append=True)
    return md


def write(md: Metadata, path: Path) -> bytes:
    """Writes md with python-tuf's serializer and returns the bytes written."""
    data = md.to_bytes(SERIALIZER)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def describe(signer: CryptoSigner) -> dict:
    key = signer.public_key
    return {"keyid": key.keyid, "keytype": key.keytype, "scheme": key.scheme}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)

    # --- keys -------------------------------------------------------------------------------
    root_ed, root_ec, root_rsa = new_signer("ed25519"), new_signer("ecdsa"), new_signer("rsa")
    # Root v2 keeps root_ec, drops root_ed and root_rsa, adds these two.
    root2_rsa, root2_ed = new_signer("rsa"), new_signer("ed25519")
    # targets: threshold 2 of an rsa and an ed25519 key.
    targets_rsa, targets_ed = new_signer("rsa"), new_signer("ed25519")
    snapshot_ec = new_signer("ecdsa")
    timestamp_ed = new_signer("ed25519")  # root v1's timestamp key
    timestamp2_ec = new_signer("ecdsa")  # root v2 rotates the timestamp key to this one
    drivers_ec, drivers_rsa = new_signer("ecdsa"), new_signer("rsa")

    # --- root v1 ----------------------------------------------------------------------------
    root = Root(expires=EXPIRES, consistent_snapshot=True)
    for s in (root_ed, root_ec, root_rsa):
        root.add_key(s.public_key, Root.type)
    root.roles[Root.type].threshold = 2
    for s in (targets_rsa, targets_ed):
        root.add_key(s.public_key, Targets.type)
    root.roles[Targets.type].threshold = 2
    root.add_key(snapshot_ec.public_key, Snapshot.type)
    root.add_key(timestamp_ed.public_key, Timestamp.type)
    root1 = sign(Metadata(root), root_ed, root_ec, root_rsa)
    root1_bytes = write(root1, out / "1.root.json")

    # --- root v2: rotate two of three root keys and the timestamp key ------------------------
    root2 = Metadata(copy.deepcopy(root1.signed))
    r2 = root2.signed
    r2.version = 2
    r2.revoke_key(root_ed.public_key.keyid, Root.type)
    r2.revoke_key(root_rsa.public_key.keyid, Root.type)
    r2.add_key(root2_rsa.public_key, Root.type)
    r2.add_key(root2_ed.public_key, Root.type)
    r2.revoke_key(timestamp_ed.public_key.keyid, Timestamp.type)
    r2.add_key(timestamp2_ec.public_key, Timestamp.type)
    assert set(r2.roles[Root.type].keyids) == {
        root_ec.public_key.keyid,
        root2_rsa.public_key.keyid,
        root2_ed.public_key.keyid,
    }
    # Two old keys that v2 no longer lists satisfy v1's threshold; two new keys that v1 never
    # listed satisfy v2's. A verifier must check both sets to accept this, and must take
    # each set's keys from the right root.
    sign(root2, root_ed, root_rsa, root2_rsa, root2_ed)
    write(root2, out / "2.root.json")

    # --- targets with a delegation ------------------------------------------------------------
    firmware = b"pos-a firmware 1.2.3\n" * 64
    driver = b"receipt printer driver 2.0.0\n" * 16
    targets = Targets(expires=EXPIRES)
    fw = TargetFile.from_data("pos-a-firmware-1.2.3.bin", firmware, ["sha256", "sha512"])
    fw.unrecognized_fields["custom"] = {
        "kind": "firmware",
        "version": "1.2.3",
        "hardware": ["pos-a"],
        "channel": "stable",
        "rollout": {"percent": 25, "groups": ["pilot"]},
    }
    patch = TargetFile.from_data("pos-a-patch-1.2.4.bin", b"patch 1.2.4\n")
    patch.unrecognized_fields["custom"] = {
        "kind": "patch",
        "version": "1.2.4",
        "hardware": ["pos-a", "pos-b"],
        "min_installed": "1.2.3",
    }
    targets.targets = {fw.path: fw, patch.path: patch}
    targets.delegations = Delegations(
        keys={s.public_key.keyid: s.public_key for s in (drivers_ec, drivers_rsa)},
        roles={
            DELEGATED: DelegatedRole(
                name=DELEGATED,
                keyids=[drivers_ec.public_key.keyid, drivers_rsa.public_key.keyid],
                threshold=2,
                terminating=True,
                paths=["drivers/*"],
            )
        },
    )
    # A member this version of the specification does not define: verifiers must keep it in
    # the signed bytes (spec: unrecognised fields are signed too).
    targets.unrecognized_fields["x-otter-interop"] = {"written-by": "python-tuf"}
    targets_md = sign(Metadata(targets), targets_rsa, targets_ed)
    targets_bytes = write(targets_md, out / "targets.json")

    drivers = Targets(expires=EXPIRES)
    drv = TargetFile.from_data("drivers/printer-2.0.0.bin", driver)
    drv.unrecognized_fields["custom"] = {
        "kind": "driver",
        "version": "2.0.0",
        "hardware": ["pos-a"],
    }
    drivers.targets = {drv.path: drv}
    drivers_md = sign(Metadata(drivers), drivers_ec, drivers_rsa)
    write(drivers_md, out / f"{DELEGATED}.json")

    # --- snapshot and timestamp ----------------------------------------------------------------
    snapshot = Snapshot(expires=EXPIRES)
    snapshot.meta = {"targets.json": MetaFile(version=1), f"{DELEGATED}.json": MetaFile(version=1)}
    snapshot_md = sign(Metadata(snapshot), snapshot_ec)
    snapshot_bytes = write(snapshot_md, out / "snapshot.json")

    timestamp = Timestamp(expires=EXPIRES)
    timestamp.snapshot_meta = MetaFile.from_data(1, snapshot_bytes, ["sha256"])
    timestamp_md = sign(Metadata(timestamp), timestamp2_ec)
    write(timestamp_md, out / "timestamp.json")

    # --- broken copies --------------------------------------------------------------------------
    bad = out / "bad"
    # One byte (one hex digit) of the first signature changed. targets needs 2 of 2, so the
    # remaining good signature is not enough.
    broken = Metadata.from_bytes(targets_bytes)
    sig = next(iter(broken.signatures.values()))
    i = len(sig.signature) // 2
    sig.signature = (
        sig.signature[:i] + ("1" if sig.signature[i] != "1" else "2") + sig.signature[i + 1 :]
    )
    write(broken, bad / "targets.json")
    # Signed by a key root knows, but for timestamp, not snapshot.
    write(sign(Metadata(copy.deepcopy(snapshot)), timestamp_ed), bad / "snapshot.json")
    # Rotation signed by the new root keys only: v2's own threshold is met, v1's is not.
    write(sign(Metadata(copy.deepcopy(r2)), root2_rsa, root2_ed), bad / "2.root.json")
    # Delegated role below its threshold: 1 of the 2 keys targets requires.
    write(sign(Metadata(copy.deepcopy(drivers)), drivers_ec), bad / f"{DELEGATED}.json")

    edge = write_edge_cases(out / "edge", targets_rsa, targets_ed)

    # --- self-check with python-tuf: every good file verifies, every bad one does not ------------
    trusted = Metadata[Root].from_bytes(root1_bytes)
    trusted.verify_delegate(Root.type, trusted)
    new_root = Metadata[Root].from_file(str(out / "2.root.json"))
    trusted.verify_delegate(Root.type, new_root)
    new_root.verify_delegate(Root.type, new_root)
    for role in (Targets.type, Snapshot.type, Timestamp.type):
        new_root.verify_delegate(role, Metadata.from_file(str(out / f"{role}.json")))
    top_targets = Metadata[Targets].from_file(str(out / "targets.json"))
    top_targets.verify_delegate(DELEGATED, Metadata.from_file(str(out / f"{DELEGATED}.json")))
    for name in edge:
        new_root.verify_delegate(Targets.type, Metadata.from_file(str(out / "edge" / name)))
    refused = {
        "targets.json": lambda md: new_root.verify_delegate(Targets.type, md),
        "snapshot.json": lambda md: new_root.verify_delegate(Snapshot.type, md),
        "2.root.json": lambda md: trusted.verify_delegate(Root.type, md),
        f"{DELEGATED}.json": lambda md: top_targets.verify_delegate(DELEGATED, md),
    }
    for name, check in refused.items():
        try:
            check(Metadata.from_file(str(bad / name)))
        except Exception:  # noqa: BLE001 - any refusal is what we want
            continue
        raise SystemExit(f"make_repo: python-tuf accepts bad/{name}; the broken copy is not broken")

    expected = {
        "root_versions": [1, 2],
        "root_threshold": 2,
        "key_schemes": sorted(
            {
                describe(s)["scheme"]
                for s in (root_ed, root_ec, root_rsa, root2_rsa, root2_ed, targets_rsa, snapshot_ec)
            }
        ),
        "targets": sorted(targets.targets),
        "delegated_role": DELEGATED,
        "delegated_targets": sorted(drivers.targets),
        "bad": sorted(refused),
        "edge": sorted(edge),
        "keys": {
            "root_v1": [describe(s) for s in (root_ed, root_ec, root_rsa)],
            "root_v2": [describe(s) for s in (root_ec, root2_rsa, root2_ed)],
            "targets": [describe(s) for s in (targets_rsa, targets_ed)],
            "snapshot": [describe(snapshot_ec)],
            "timestamp_v1": [describe(timestamp_ed)],
            "timestamp_v2": [describe(timestamp2_ec)],
            DELEGATED: [describe(s) for s in (drivers_ec, drivers_rsa)],
        },
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=2) + "\n", encoding="utf-8")
    print(f"make_repo: wrote a python-tuf repository to {out}")
    print("make_repo:   root 1 -> 2 (threshold 2; ed25519, ecdsa-sha2-nistp256, rsassa-pss-sha256)")
    print(f"make_repo:   targets {sorted(targets.targets)}, delegation {DELEGATED} -> drivers/*")
    print(f"make_repo:   bad/ {sorted(refused)}; edge/ {sorted(edge)}")
    print("make_repo: python-tuf verifies every good file and refuses every bad one")


def write_edge_cases(edge: Path, *targets_signers: Signer) -> list[str]:
    """Valid targets metadata (signed by the targets keys) whose strings canonical JSON
    encoders are known to treat differently. The TUF reference implementation
    (securesystemslib.formats.encode_canonical) sorts object members by their raw names and
    escapes only `"` and `\\`, nothing else: a verifier that sorts by escaped bytes or
    Unicode-normalises strings computes other bytes than the signer and refuses the file.
    """
    cases = {
        # A combining character (NFD "ü" = "u" + U+0308), as macOS file names and pasted
        # text often have: must be signed and verified as is, not normalised to NFC.
        "targets-nfd.json": {
            "Mu\u0308ller-receipt-logo.png": {"vendor": "Kassen-Mu\u0308ller GmbH"},
        },
        # Member names where one is a prefix of the other followed by a character below `"`
        # (space, `!`): raw order puts "readme" first, an order over the quoted, escaped
        # names ('"readme"' vs '"readme ') puts it last.
        "targets-prefix-names.json": {
            "readme": {"note": "plain"},
            "readme v2.txt": {"note": "space after a prefix"},
            "readme!": {"note": "bang after a prefix"},
        },
        # Quote and backslash in a member name: escaped as \" and \\ in canonical JSON, but
        # ordered by the raw character ('"' 0x22 sorts before '#' 0x23).
        "targets-escapes.json": {
            'say "hi".txt': {"q": 'a "quoted" \\ value'},
            "say #hi.txt": {"q": "hash"},
        },
    }
    for name, files in cases.items():
        t = Targets(expires=EXPIRES)
        for path, custom in files.items():
            tf = TargetFile.from_data(path, path.encode("utf-8"))
            tf.unrecognized_fields["custom"] = custom
            t.targets[path] = tf
        write(sign(Metadata(t), *targets_signers), edge / name)
    return sorted(cases)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: make_repo.py DIR")
    main(Path(sys.argv[1]))
