"""The file drop's formats, bytes in and bytes out: folder names, CSV of hashes (optionally gzip), members.

No storage access here (:mod:`audience_sync.destinations.file_drop` reads and writes); what a consumer
reads is described in the README ("File drop").
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import re
from collections.abc import Iterable, Sequence

#: the manifest's ``format``; a consumer refuses a format it does not know
FORMAT = "audience-sync file_drop 1"
AUDIENCE_FILE = "audience.json"
CURRENT_FILE = "current.json"
MANIFEST_FILE = "manifest.json"
#: the folder of a segment that holds the batches of uploads not finished yet (never a consumer's)
STAGING_DIR = ".staging"
#: what a data file holds: the whole membership, or one upload's adds or removes
CONTENT_OF_OP = {"add": "adds", "remove": "removes", "replace": "members"}

_HASH = re.compile(r"[0-9a-f]{64}")
_KEEP = re.compile(r"[a-z0-9_-]")

#: one member: its values aligned to the file's columns, ``""`` where it has none
Member = tuple[str, ...]


def folder_name(text: str) -> str:
    """``text`` as one path segment: lowercase letters, digits, ``_`` and ``-`` kept, every other byte
    of its UTF-8 as ``~xx``. Reversible (:func:`text_of_folder`), so two names never share a folder, and
    alike on case-insensitive stores and in URLs (``Vip list`` -> ``~56ip~20list``)."""
    return "".join(c if _KEEP.fullmatch(c) else "".join(f"~{b:02x}" for b in c.encode()) for c in text)


def text_of_folder(folder: str) -> str:
    """The text :func:`folder_name` made ``folder`` of."""
    out, i = bytearray(), 0
    while i < len(folder):
        if folder[i] == "~":
            out.append(int(folder[i + 1 : i + 3], 16))
            i += 3
        else:
            out += folder[i].encode()
            i += 1
    return out.decode()


def extension(compression: str) -> str:
    return ".csv.gz" if compression == "gzip" else ".csv"


def invalid_rows(schema: Sequence[str], rows: Sequence[Sequence[str]]) -> list[int]:
    """Indexes of the rows that are not all SHA-256 hex (lowercase) or empty, or are wholly empty: the
    files hold hashes only, so anything else is refused, never written."""
    bad = []
    for i, row in enumerate(rows):
        if len(row) != len(schema):
            raise ValueError(f"row {i} has {len(row)} values for a schema of {len(schema)} columns")
        if not any(row) or not all(not v or _HASH.fullmatch(v) for v in row):
            bad.append(i)
    return bad


def align(schema: Sequence[str], rows: Iterable[Sequence[str]], columns: Sequence[str]) -> list[Member]:
    """Rows of ``schema`` as members over ``columns``."""
    where = [columns.index(k) for k in schema]
    out = []
    for row in rows:
        member = [""] * len(columns)
        for i, value in zip(where, row, strict=True):
            member[i] = value
        out.append(tuple(member))
    return out


def apply(members: set[Member], op: str, rows: Iterable[Member]) -> set[Member]:
    """The membership after an upload of ``op`` carrying ``rows``."""
    if op == "replace":
        return set(rows)
    if op == "add":
        return members | set(rows)
    return members - set(rows)


def encode_csv(columns: Sequence[str], rows: Iterable[Sequence[str]], *, compressed: bool) -> bytes:
    """A CSV (header, then rows in the given order); gzip with no timestamp, so the same rows always
    make the same bytes and the same checksum."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    data = text.getvalue().encode()
    return gzip.compress(data, mtime=0) if compressed else data


def decode_csv(data: bytes, *, compressed: bool) -> tuple[list[str], list[list[str]]]:
    """The header and rows of a CSV made by :func:`encode_csv`."""
    text = (gzip.decompress(data) if compressed else data).decode()
    header, *rows = list(csv.reader(io.StringIO(text)))
    return header, rows


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
