"""Keyed fingerprints of raw rows, so a rerun normalises and hashes only the rows that changed.

A row's fingerprint (per platform) is keyed BLAKE2b-128 over the raw values extraction reads for it: the
member key and every identifier column, each with its type and length. The key is derived from the
state's member-id key (:meth:`StateKeys.derive_key`) and from everything else that shapes the staged
row: the platform, its normalisation rules (:func:`rules_version`), the identifier -> column mapping
and the default country. Change any of them and every fingerprint changes, so every row is hashed again.

The ledger keeps, per member, the fingerprint of the raw row its ``row_hash`` and ``payload`` were built
from (written together, always). On a rerun, extraction looks each row's fingerprint up among the
fingerprints of ledger rows that need nothing (:func:`known_prints`); a row found there is staged
with its member id and fingerprint only (``row_hash`` null): it is the ledger's row, unchanged.

Why it reveals nothing: without the state's key nobody can compute the fingerprint of a guessed value,
so fingerprints cannot be matched against a list of e-mails or phone numbers the way plain hashes can.
The key never leaves :class:`StateKeys`; BLAKE2b in keyed mode is a PRF, and 128 bits make an accidental
match of a changed row with an unchanged one (which would skip its hashing) negligible. The member key is
part of each fingerprint, so equal identifiers of two members give different fingerprints.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import sqlalchemy as sa

from audience_sync.core.keys import StateKeys
from audience_sync.core.ledger import StateStore, fetch_text, ledger
from audience_sync.core.normalize.platforms import PlatformRules

#: bump when a normaliser's output changes without its name, its options (see :func:`_name`), keys or
#: match rules changing. 2: Google e-mail, name and postal-code rules follow Google's Formatter.
RULES_VERSION = 2

#: bytes of a fingerprint (stored as hex: twice as many characters)
PRINT_BYTES = 16

_U64 = np.dtype("<u8")


def rules_version(rules: PlatformRules) -> str:
    """A description of what a platform's rules do to a row: any change to it re-hashes every row."""
    fields = [
        [identifier, list(rule.keys), _name(rule.normalize), rule.hashed]
        for identifier, rule in rules.fields.items()
    ]
    described = {
        "version": RULES_VERSION,
        "platform": rules.name,
        "fields": fields,
        "standalone": sorted(rules.standalone),
        "combos": [sorted(c) for c in rules.combos],
        "all_or_nothing": [sorted(c) for c in rules.all_or_nothing],
        # which numbers are valid, and their E.164 form, change with libphonenumber's metadata
        "phone_metadata": phonenumbers.__version__,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def _name(fn: object) -> str:
    """The normaliser's qualified name and its options, so that re-configuring one (``make_email(...)``,
    ``make_phone(plus=...)``, ``make_country(upper=...)``) changes the version as renaming it does: the
    options of a normaliser object (its ``__slots__``) and the plain values a normaliser closure captured."""
    name = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
    options = {slot: getattr(fn, slot, None) for slot in getattr(type(fn), "__slots__", ())}
    for i, cell in enumerate(getattr(fn, "__closure__", None) or ()):
        options[f"closure{i}"] = cell.cell_contents
    plain = {k: v for k, v in options.items() if v is None or isinstance(v, (bool, int, float, str))}
    return f"{name}{json.dumps(plain, sort_keys=True)}" if plain else name


class RowPrinter:
    """Fingerprints of raw rows for one platform.

    :param version: the platform's :func:`rules_version`.
    :param key: the member key column; ``identifiers``: identifier type -> column.
    """

    def __init__(
        self,
        keys: StateKeys,
        platform: str,
        version: str,
        key: str,
        identifiers: Mapping[str, str],
        default_country: str | None,
    ) -> None:
        self.columns = [key, *(identifiers[t] for t in sorted(identifiers))]
        label = json.dumps(
            ["row fingerprint v1", platform, version, key, sorted(identifiers.items()), default_country]
        )
        self._hash = functools.partial(
            hashlib.blake2b, key=keys.derive_key(label.encode()), digest_size=PRINT_BYTES
        )
        self._keyed = self._hash()  # copied for each row (cheaper than keying a new one): never updated

    def prints(self, columns: Mapping[str, Any], rows: Sequence[int]) -> list[bytes]:
        """The fingerprint of each of ``rows`` (indexes into the chunk's ``columns``: Arrow arrays or
        sequences of Python values)."""
        return self.hashed(row_texts(columns, self.columns, rows))

    def hashed(self, texts: RowTexts) -> list[bytes]:
        """The keyed hash of each row's encoded text (:func:`row_texts` of :attr:`columns`)."""
        keyed = self._keyed.copy
        prints: list[bytes] = []
        add = prints.append
        for text in texts:
            h = keyed()
            h.update(text)
            add(h.digest())
        return prints

    def reference(self, columns: Mapping[str, Sequence[Any]], rows: Sequence[int]) -> list[bytes]:
        """:meth:`prints` one row at a time in Python: what defines a fingerprint (Python values only)."""
        encoded = [_encoded(columns.get(c), rows) for c in self.columns]
        new = self._hash
        return [new(text.encode("utf-8", "surrogatepass")).digest() for text in map("".join, zip(*encoded))]


# ------------------------------------------------------------------------------- encoding, reference
def _encoded(column: Sequence[Any] | None, rows: Sequence[int]) -> list[str]:
    """One column's raw values at ``rows``, each unambiguous among a row's parts: type, length, text."""
    if column is None:
        return ["\x00-"] * len(rows)
    return [f"s{len(v)}:{v}" if type(v) is str else _part(v) for v in map(column.__getitem__, rows)]


def _part(value: Any) -> str:
    if value is None:
        return "n;"
    if type(value) is int:
        return f"i{value};"  # digits and a sign only: the ';' ends it
    text = repr(value)
    return f"{type(value).__name__}{len(text)}:{text}"


# ------------------------------------------------------------------------------- encoding, in Arrow
# The same encoding as :func:`_encoded`, built column by column in Arrow: text and integer columns (Arrow,
# or Python lists of str / int and None) without a Python step per value; anything else (floats, dates,
# mixed lists...) through the reference, one value at a time. Arrays and scalars are built from their
# buffers: ``pa.array`` and ``pa.scalar`` import pandas on first use (~0.5 s in every worker process).


@dataclass(frozen=True)
class RowTexts:
    """The encoded text of each row, as UTF-8 (``surrogatepass``): one buffer and each row's bounds."""

    data: bytes
    bounds: list[int]

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __iter__(self) -> Iterator[bytes]:
        """Each row's bytes (slices of bytes: quicker to take and to hash than views of the buffer)."""
        bounds = self.bounds
        return map(self.data.__getitem__, map(slice, bounds[:-1], bounds[1:]))


def row_texts(columns: Mapping[str, Any], names: Sequence[str], rows: Sequence[int]) -> RowTexts:
    """The encoded text of each of ``rows`` over the columns ``names`` (a missing column encodes as such)."""
    n = len(rows)
    if not n:
        return RowTexts(b"", [0])
    index = np.asarray(rows, dtype=np.int64)
    pieces = [piece for name in names for piece in _encoded_column(columns.get(name), index)]
    if not any(isinstance(p, pa.Array) for p in pieces):  # no column at all: every row is the same
        text = b"".join(p.as_py() for p in pieces)
        return RowTexts(text * n, list(range(0, len(text) * n + 1, len(text))))
    joined = pc.binary_join_element_wise(*pieces, _EMPTY)  # one pass over all columns' pieces
    _validity, offsets, data = joined.buffers()
    bounds = np.frombuffer(offsets, np.int64, n + 1, joined.offset * 8).tolist()
    return RowTexts(data.to_pybytes() if data is not None else b"", bounds)


def _binary(values: Sequence[bytes]) -> pa.Array:
    data = b"".join(values)
    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, values), np.int64, len(values)), out=offsets[1:])
    return pa.Array.from_buffers(_BIN, len(values), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


_BIN = pa.large_binary()
_EMPTY, _MISSING, _NULL, _S, _COLON, _I, _SEMI, _TRUE, _FALSE = _binary(
    [b"", b"\x00-", b"n;", b"s", b":", b"i", b";", b"bool4:True", b"bool5:False"]
)
#: ``s{length}:`` for the usual lengths of a text, taken by length (longer ones are cast and joined)
_HEADS = _binary([b"s%d:" % length for length in range(1024)])

#: a column's encoding: pieces (arrays, or scalars for every row) whose concatenation is each row's part
Pieces = list[pa.Array | pa.Scalar]


def _encoded_column(column: Any, index: np.ndarray) -> Pieces:
    """One column's encoded values at ``index`` (large binary, no nulls)."""
    if column is None:
        return [_MISSING]
    if isinstance(column, pa.Array | pa.ChunkedArray):
        return _encoded_arrow(_at(column, index))
    whole = len(index) == len(column) and np.array_equal(index, np.arange(len(index)))
    values = list(column) if whole else list(map(column.__getitem__, index.tolist()))
    nones = values.count(None)
    types = set(map(type, values))
    types.discard(type(None))
    if types == {str}:
        return _encoded_text(values, nones)
    if types == {int}:
        ints = _int64s(values, nones)
        if ints is not None:
            return _encoded_arrow(ints)
    elif not types:
        return [_NULL]
    return [_encoded_python(values)]


def _at(column: pa.Array | pa.ChunkedArray, index: np.ndarray) -> pa.Array:
    """The values of ``column`` at ``index``, as one array (not copied when ``index`` is all of it)."""
    n = len(index)
    if n != len(column) or not np.array_equal(index, np.arange(n)):
        column = column.take(pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(index)]))
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _encoded_arrow(values: pa.Array) -> Pieces:
    kind = values.type
    if pa.types.is_dictionary(kind):
        return _encoded_arrow(values.dictionary_decode())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        # the length in code points, as Python's len (Arrow's text is valid UTF-8)
        return _text_pieces(pc.utf8_length(values), values.cast(_BIN))
    if pa.types.is_integer(kind):  # Python ints: f"i{v};" (decimal digits and a sign, as Arrow's cast)
        return _joined([_I, _text(values), _SEMI], values.null_count)
    if pa.types.is_boolean(kind):
        return [pc.coalesce(pc.if_else(values, _TRUE, _FALSE), _NULL)]
    if pa.types.is_null(kind):
        return [_NULL]
    return [_encoded_python(values.to_pylist())]


def _text_pieces(lengths: pa.Array, text: pa.Array) -> Pieces:
    """``s{length}:{text}`` of each value, ``n;`` where it is null (``lengths``: in code points)."""
    longest = pc.max(lengths).as_py()
    if longest is not None and longest >= len(_HEADS):
        return _joined([_S, _text(lengths), _COLON, text], text.null_count)
    if not text.null_count:
        return [_HEADS.take(lengths), text]
    # a Python scalar would make pyarrow import pandas: fill with the scalars built from buffers
    return [pc.coalesce(_HEADS.take(lengths), _NULL), pc.coalesce(text, _EMPTY)]


def _joined(pieces: Pieces, nulls: int) -> Pieces:
    """A value's pieces, or with null values one piece where they are encoded as None is: ``n;``."""
    if not nulls:
        return pieces
    return [pc.coalesce(pc.binary_join_element_wise(*pieces, _EMPTY), _NULL)]


def _text(values: pa.Array) -> pa.Array:
    return values.cast(pa.string()).cast(_BIN)


def _encoded_python(values: list[Any]) -> pa.Array:
    """The reference encoding, one value at a time (types the Arrow path does not encode)."""
    return _binary([t.encode("utf-8", "surrogatepass") for t in _encoded(values, range(len(values)))])


def _int64s(values: list[int | None], nones: int) -> pa.Array | None:
    """Python ints (and ``nones`` None) as an int64 array; None when one does not fit."""
    present = _present(values, nones)
    try:
        data = np.array([0 if v is None else v for v in values] if nones else values, dtype=np.int64)
    except OverflowError:
        return None
    return pa.Array.from_buffers(pa.int64(), len(values), [_validity(present), pa.py_buffer(data)])


def _present(values: list[Any], nones: int) -> np.ndarray | None:
    """Which values are not None (None when all are)."""
    return np.fromiter((v is not None for v in values), bool, len(values)) if nones else None


def _validity(present: np.ndarray | None) -> pa.Buffer | None:
    return None if present is None else pa.py_buffer(np.packbits(present, bitorder="little"))


def _encoded_text(values: list[str | None], nones: int) -> Pieces:
    """Python strings (and ``nones`` None): ``s{len}:{text}``, len in code points, text as UTF-8 with
    lone surrogates passed through (3 bytes each, as ``str.encode(..., "surrogatepass")``)."""
    n = len(values)
    present = _present(values, nones)
    texts: list[str] = [v for v in values if v is not None] if nones else values  # type: ignore[assignment]
    lengths = np.zeros(n, dtype=np.int64)
    lengths[slice(None) if present is None else present] = np.fromiter(map(len, texts), np.int64, len(texts))
    chars = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=chars[1:])
    joined = "".join(texts)
    if joined.isascii():
        data, offsets = joined.encode("ascii"), chars
    else:  # where each code point starts in the UTF-8 bytes (not at a continuation byte 0b10xxxxxx)
        data = joined.encode("utf-8", "surrogatepass")
        starts = np.flatnonzero((np.frombuffer(data, np.uint8) & 0xC0) != 0x80)
        offsets = np.append(starts, len(data))[chars]
    validity = _validity(present)
    text = pa.Array.from_buffers(_BIN, n, [validity, pa.py_buffer(offsets), pa.py_buffer(data)])
    counts = pa.Array.from_buffers(pa.int64(), n, [validity, pa.py_buffer(lengths)])
    return _text_pieces(counts, text)


@dataclass(frozen=True)
class KnownPrints:
    """Fingerprints of ledger rows a rerun may reuse: first halves sorted, second halves aligned.

    ``sent``: per fingerprint, whether its ledger row is ``sent`` (else ``in_progress``). ``registry_id``
    and ``generation`` say which audience's ledger they were read from and its ledger generation then
    (``ledger.ledger_moved``; None when the ledger moved while they were read).
    """

    high: np.ndarray
    low: np.ndarray
    sent: np.ndarray
    registry_id: int | None = None
    generation: int | None = None

    @classmethod
    def of(
        cls,
        prints: bytes,
        sent: int | None = None,
        registry_id: int | None = None,
        generation: int | None = None,
    ) -> KnownPrints:
        """From concatenated fingerprints (``PRINT_BYTES`` each), the first ``sent`` of them (default:
        all) of ``sent`` ledger rows."""
        pairs = np.frombuffer(prints, dtype=_U64).reshape(-1, 2)
        is_sent = np.zeros(len(pairs), dtype=bool)
        is_sent[: len(pairs) if sent is None else sent] = True
        order = np.argsort(pairs[:, 0], kind="stable")
        return cls(
            np.ascontiguousarray(pairs[order, 0]),
            np.ascontiguousarray(pairs[order, 1]),
            is_sent[order],
            registry_id,
            generation,
        )

    def __len__(self) -> int:
        return len(self.high)

    def positions(self, prints: Sequence[bytes]) -> np.ndarray:
        """Per fingerprint, where it is among the known ones, or -1 (a rare repeated first half may miss:
        then the row is simply hashed again)."""
        if not prints or not len(self.high):
            return np.full(len(prints), -1, dtype=np.int64)
        pairs = np.frombuffer(b"".join(prints), dtype=_U64).reshape(-1, 2)
        at = np.searchsorted(self.high, pairs[:, 0])
        at = np.where(at < len(self.high), at, 0)
        found = (self.high[at] == pairs[:, 0]) & (self.low[at] == pairs[:, 1])
        return np.where(found, at, -1)

    def contains(self, prints: Sequence[bytes]) -> np.ndarray:
        """Per fingerprint, whether it is known."""
        return self.positions(prints) >= 0

    def record(self, matched: np.ndarray) -> Reuse | None:
        """What a sync needs to know of the rows staged unchanged, given the positions they matched
        (None without a generation: the sync then compares every row)."""
        if self.registry_id is None or self.generation is None:
            return None
        seen = np.zeros(len(self), dtype=bool)
        seen[matched] = True
        missed = np.flatnonzero(~seen)
        pairs = np.stack([self.high[missed], self.low[missed]], axis=1).astype(_U64)
        return Reuse(
            self.registry_id,
            self.generation,
            reused=int(seen.sum()),
            reused_sent=int((seen & self.sent).sum()),
            unmatched=pairs.tobytes(),
        )


@dataclass(frozen=True)
class Reuse:
    """Beside a platform's staged rows: how many extraction staged unchanged by fingerprint (``sent`` of
    them on the platform, the others on their way), against which ledger generation of which audience,
    and the known fingerprints no row matched (concatenated): the ledger rows a sync must look at.
    """

    registry_id: int
    generation: int
    reused: int
    reused_sent: int
    unmatched: bytes

    FILE = "reuse.json"

    def unmatched_hex(self) -> list[str]:
        data = self.unmatched.hex()
        width = 2 * PRINT_BYTES
        return [data[i : i + width] for i in range(0, len(data), width)]

    @classmethod
    def merge(cls, records: Sequence[Reuse | None]) -> Reuse | None:
        """One record for a group extracted in disjoint partitions, or None unless every partition wrote
        one against the same audience and ledger generation.

        Every partition read the same known fingerprints (the generation says the ledger did not move),
        and a ledger row is matched by at most one partition, the one its member's key hashes to: so the
        fingerprints no row matched are those every partition left unmatched.
        """
        found = [r for r in records if r is not None]
        if not found or len(found) != len(records):
            return None
        first = found[0]
        if any((r.registry_id, r.generation) != (first.registry_id, first.generation) for r in found):
            return None
        if len(found) == 1:
            return first
        common: set[bytes] | None = None
        for r in found:
            prints = {r.unmatched[i : i + PRINT_BYTES] for i in range(0, len(r.unmatched), PRINT_BYTES)}
            common = prints if common is None else common & prints
        return cls(
            first.registry_id,
            first.generation,
            sum(r.reused for r in found),
            sum(r.reused_sent for r in found),
            b"".join(sorted(common or ())),
        )

    def write(self, fs: pafs.FileSystem, folder: str) -> None:
        text = json.dumps(
            {
                "registry_id": self.registry_id,
                "generation": self.generation,
                "reused": self.reused,
                "reused_sent": self.reused_sent,
                "unmatched": self.unmatched.hex(),
            }
        )
        with fs.open_output_stream(f"{folder}/{self.FILE}") as out:
            out.write(text.encode())

    @classmethod
    def read(cls, folder: str | PurePath, filesystem: pafs.FileSystem | None = None) -> Reuse | None:
        """The record beside a staged folder's parts, if extraction wrote one."""
        fs = filesystem or pafs.LocalFileSystem()
        path = f"{folder if filesystem is not None else Path(folder).absolute()}/{cls.FILE}"
        if fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with fs.open_input_stream(path) as f:
            data = json.loads(f.read())
        return cls(
            int(data["registry_id"]),
            int(data["generation"]),
            int(data["reused"]),
            int(data["reused_sent"]),
            bytes.fromhex(data["unmatched"]),
        )


def reusable(status: str | None = None) -> list[sa.ColumnElement[bool]]:
    """Ledger rows a rerun with the same raw row leaves alone (see ``delta.stage_changes``): on the
    platform or on their way there (or ``status``), not waiting for removal, with a fingerprint."""
    on_platform = (
        sa.or_(ledger.c.status == "sent", ledger.c.status == "in_progress")  # no IN: a plain cursor runs it
        if status is None
        else ledger.c.status == status
    )
    return [
        on_platform,
        sa.or_(ledger.c.op.is_(None), ledger.c.op != "remove"),
        ledger.c.fingerprint.is_not(None),
    ]


def known_prints(store: StateStore, registry_id: int) -> KnownPrints:
    """The fingerprints of one audience's reusable ledger rows, with its ledger generation."""
    before = store.ledger_generation(registry_id)
    hexes = [
        fetch_text(store.engine, ledger.c.fingerprint, ledger.c.registry_id == registry_id, *reusable(status))
        for status in ("sent", "in_progress")
    ]
    after = store.ledger_generation(registry_id)
    return KnownPrints.of(
        bytes.fromhex("".join(hexes)),
        sent=len(hexes[0]) // (2 * PRINT_BYTES),
        registry_id=registry_id,
        generation=before if before == after else None,  # moved meanwhile: no record for the sync
    )


def known_for(store: StateStore, platform: str, account: str, segment_name: str) -> KnownPrints | None:
    """The reusable fingerprints of the audience registered for (platform, account, segment), found
    without a platform call; None before its first sync."""
    entry = store.get_registry(platform, account, segment_name)
    return known_prints(store, entry.id) if entry is not None else None


def known_for_targets(
    store: StateStore, targets: Iterable[tuple[str, str, str]]
) -> dict[str, KnownPrints | None]:
    """Per platform, the reusable fingerprints of its one destination ``(platform, account, segment)``.

    A platform synced to several audiences gets none: its staged rows serve every one of them, so a row
    may be staged unchanged only if it is unchanged in each; one set keeps that simple and safe.
    """
    by_platform: dict[str, list[tuple[str, str]]] = {}
    for platform, account, segment in targets:
        by_platform.setdefault(platform, []).append((account, segment))
    return {
        p: known_for(store, p, *dests[0]) if len(dests) == 1 and "{{" not in dests[0][1] else None
        for p, dests in by_platform.items()
    }


def known_in_background(
    store: StateStore, targets: Iterable[tuple[str, str, str]]
) -> Future[dict[str, KnownPrints | None]]:
    """:func:`known_for_targets`, read in a thread of its own: extraction starts its worker processes and
    reads the first chunks meanwhile (at a million ledger rows the read takes seconds)."""
    done: Future[dict[str, KnownPrints | None]] = Future()
    targets = list(targets)

    def read() -> None:
        try:
            done.set_result(known_for_targets(store, targets))
        except BaseException as exc:
            done.set_exception(exc)

    threading.Thread(target=read, name="audience-sync-known-prints", daemon=True).start()
    return done
