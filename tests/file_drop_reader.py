"""A file drop's consumer, as the README describes it, on plain files (no audience-sync code): read the
manifests, check every file's SHA-256, rebuild the segment's membership.

The contract harness reads the "platform's view" through it, and the file-drop tests compare it with the
ledger, so it is written independently of the destination it checks.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from pathlib import Path
from typing import Any

Member = frozenset[tuple[str, str]]


def read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def read_rows(path: Path) -> list[dict[str, str]]:
    data = path.read_bytes()
    text = (gzip.decompress(data) if path.name.endswith(".gz") else data).decode()
    return list(csv.DictReader(io.StringIO(text)))


def as_member(row: dict[str, str]) -> Member:
    return frozenset((k, v) for k, v in row.items() if v)


def manifests(segment: Path) -> list[dict[str, Any]]:
    """Every run's manifest of the segment, each file's checksum, size and row count verified."""
    found = []
    for path in sorted((segment / "runs").glob("*/manifest.json")):
        manifest = json.loads(path.read_text())
        for f in manifest["files"]:
            data = (path.parent / f["name"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == f["sha256"], (path.parent, f["name"])
            assert len(data) == f["bytes"], (path.parent, f["name"])
            assert len(read_rows(path.parent / f["name"])) == f["rows"], (path.parent, f["name"])
        found.append({**manifest, "folder": path.parent})
    return found


def membership(segment: Path) -> set[Member]:
    """The segment's membership: the newest members file (``files: membership``), or every committed
    upload's file applied in sequence order (``files: changes``)."""
    found = manifests(segment)
    current = read_json(segment / "current.json")
    if current is None:
        return set()
    if current.get("file"):
        return {as_member(r) for r in read_rows(segment / current["file"])}
    members: set[Member] = set()
    uploads = sorted((u["sequence"], m["folder"], u) for m in found for u in m["uploads"])
    for _, folder, upload in uploads:
        rows = {as_member(r) for r in read_rows(folder / upload["file"])}
        if upload["op"] == "replace":
            members = rows
        elif upload["op"] == "add":
            members |= rows
        else:
            members -= rows
    return members
