"""Extraction: read the audience group in chunks, normalise + hash per platform, stage hashes only.

The staged file of each platform is Parquet with the columns ``member_id`` (keyed HMAC of the member
key), ``row_hash`` (keyed HMAC of the row as sent), ``fingerprint`` (keyed fingerprint of the raw row,
``core/fingerprints.py``) and one column per platform schema key holding hashes; identifiers the platform takes unhashed (Meta MADID, EXTERN_ID) are staged as Fernet tokens
(see ``core/keys.py``). Raw identifiers never leave this module and its worker processes: they are
read, hashed or encrypted and dropped chunk by chunk.

Chunks are hashed column by column (``normalize/columns.py``) by a pool of worker processes when the
group has more than one chunk, and staged in their order by this process, which also drops repeated
member keys (the first row wins).

Given the fingerprints of the audience's unchanged ledger rows (``known``), a rerun normalises and hashes
only rows whose fingerprint is not among them; the others are staged with member id and fingerprint
only (null ``row_hash`` and values: the ledger's row stands for them, see ``core/delta.py``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import multiprocessing
import sys
import threading
import types
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from audience_sync.core.dedupe import SeenKeys
from audience_sync.core.fingerprints import (
    PRINT_BYTES,
    KnownPrints,
    RowPrinter,
    RowTexts,
    row_texts,
    rules_version,
)
from audience_sync.core.keys import ENCRYPTED_KEYS, StateKeys
from audience_sync.core.normalize import NO_IDENTIFIER, RULES, PlatformRules
from audience_sync.core.normalize.columns import ChunkHasher, PlatformColumns
from audience_sync.core.platforms import get_platform, is_builtin
from audience_sync.core.settings import settings

log = logging.getLogger(__name__)

CHUNK_ROWS = 50_000

#: staged columns that are not platform schema keys
META_COLUMNS = ("member_id", "row_hash", "fingerprint")

_FALSE = {"", "0", "false", "f", "no", "n", "off", "none", "null", "nan"}


def consent_given(value: Any) -> bool:
    """Consent is explicit: true/1/yes; anything false, empty or missing is no consent."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value == value and value != 0  # NaN != NaN
    return str(value).strip().lower() not in _FALSE


@dataclass
class ExtractCounts:
    """Counts of one extraction; safe for XCom and logs (no identifiers)."""

    rows: int = 0
    valid: int = 0
    invalid: int = 0
    duplicates: int = 0
    missing_key: int = 0
    excluded_no_consent: int = 0
    invalid_by_reason: Counter[str] = field(default_factory=Counter)
    field_errors: Counter[str] = field(default_factory=Counter)
    staged: dict[str, dict[str, Any]] = field(default_factory=dict)
    no_consent_path: str | None = None
    #: processes that hashed the group: 1 (this one) or the worker pool's size
    workers: int = 1
    #: rows normalised and hashed, and rows staged unchanged by their fingerprint (neither; their
    #: identifier problems are not counted again in ``field_errors``)
    hashed: int = 0
    reused: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "valid": self.valid,
            "invalid": self.invalid,
            "duplicates": self.duplicates,
            "missing_key": self.missing_key,
            "excluded_no_consent": self.excluded_no_consent,
            "invalid_by_reason": dict(sorted(self.invalid_by_reason.items())),
            "field_errors": dict(sorted(self.field_errors.items())),
            "staged": self.staged,
            "no_consent_path": self.no_consent_path,
            "workers": self.workers,
            "hashed": self.hashed,
            "reused": self.reused,
        }


def extract_and_stage(
    chunks: Iterable[Chunk],
    *,
    key: str,
    identifiers: Mapping[str, str],
    platforms: Sequence[str],
    staging_dir: str | Path,
    keys: StateKeys | Future[StateKeys],
    default_country: str | None = None,
    consent_column: str | None = None,
    workers: int | None = None,
    filesystem: pafs.FileSystem | None = None,
    known: Mapping[str, KnownPrints | None] | Future[Mapping[str, KnownPrints | None]] | None = None,
    rules_versions: Mapping[str, str] | None = None,
) -> ExtractCounts:
    """Hash every row for each platform and stage it in ``<staging_dir>/<platform>/<h>.parquet``
    (``h``: the member id's first hex digit), members without consent in ``no_consent.parquet``.

    ``keys`` (the state's, see ``hooks/state.py``) key the member ids and row hashes and encrypt the
    identifiers a platform takes unhashed. They may still be on their way (a future, e.g. while the
    command line imports Airflow to read them): rows are then read and normalised meanwhile, and
    every hashing process waits for the keys at its first member id; a future that fails fails the
    extraction with its own exception.

    A row counts as invalid (with one reason) when no platform can use it; invalid rows are counted,
    never staged, never fatal. A member key seen twice keeps its first row (``duplicates``).

    :param chunks: the group in order: Arrow record batches, column mappings (name -> values) or
        lists of row mappings.
    :param workers: processes hashing chunks in parallel (default: the ``AUDIENCE_SYNC_EXTRACT_WORKERS``
        setting, one per usable core). A group of one chunk is hashed in this process; so is a group
        for a platform registered at run time, which a fresh worker process would not know.
    :param filesystem: where ``staging_dir`` is (an object store through
        ``pyarrow.fs.PyFileSystem(FSSpecHandler(fs))``; default: the local filesystem). The staged paths
        in the counts are paths on it.
    :param known: per platform, the fingerprints of the audience's ledger rows that need nothing
        (``fingerprints.known_for``); a row is normalised and hashed only when some platform lacks its
        fingerprint (no skipping unless every platform has its set). It may be a future (read from the
        state database while the worker processes start): the chunks then wait for it, not the workers.
    :param rules_versions: per platform, the rules version fingerprints are keyed with (default:
        ``fingerprints.rules_version`` of its rules).
    """
    versions = {p: (rules_versions or {}).get(p) or rules_version(get_platform(p).rules) for p in platforms}
    spec = _Spec(key, dict(identifiers), tuple(platforms), default_country, consent_column, versions)

    def known_all() -> dict[str, KnownPrints | None]:
        every = dict((known.result() if isinstance(known, Future) else known) or {})
        return every if platforms and all(every.get(p) for p in platforms) else {}

    reused = known_all if isinstance(known, Future) else known_all()
    local = _Hasher(spec, keys.result if isinstance(keys, Future) else keys, reused)
    fs, out_dir = _location(staging_dir, filesystem)
    fs.create_dir(out_dir, recursive=True)
    stager = _Stager(out_dir, local.schemas, fs)
    try:
        for part in _hashed(chunks, spec, keys, local, workers, stager.counts, reused):
            stager.add(part)
    finally:
        stager.close()
    if stager.counts.reused:
        stager.record_reuse(local.known)
    return stager.counts


# ------------------------------------------------------------------------------------------ hashing
Chunk = Any  # pa.RecordBatch | pa.Table | Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]]

#: the short id of a row without a member key (never looked at: such rows are not keys)
_NO_ID_HEX = "0" * 16
#: member keys that count as no key (after trimming)
_NO_KEY = frozenset({"", "nan", "None"})

#: kinds of row, one byte per row in a hashed chunk
MISSING_KEY, NO_CONSENT, INVALID, VALID, DUPLICATE = 0, 1, 2, 3, 4

#: chunks handed to workers ahead of the one being staged, per worker (bounds memory)
AHEAD_PER_WORKER = 2


@dataclass(frozen=True)
class _Spec:
    """What a worker needs to hash a chunk, except the keys (picklable)."""

    key: str
    identifiers: dict[str, str]
    platforms: tuple[str, ...]
    default_country: str | None
    consent_column: str | None
    #: platform -> rules version the row fingerprints are keyed with
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        """The source columns extraction reads."""
        names = [self.key, *self.identifiers.values()]
        if self.consent_column:
            names.append(self.consent_column)
        return list(dict.fromkeys(names))


@dataclass
class _Hashed:
    """One chunk, hashed: per row its short member id and kind; per platform the rows to stage."""

    n: int
    ids: bytes  # first 8 bytes of each row's member id (duplicate detection); zeros for no key
    kinds: bytes
    no_consent: dict[int, str]  # row -> member id
    reasons: dict[int, str]  # invalid row -> reason
    field_errors: dict[int, tuple[str, ...]]  # hashed row -> field errors (first platform's)
    # platform -> staged rows sorted by member id (``_row``: the row's number in the chunk), built in
    # the worker so the staging process only slices and writes
    staged: dict[str, pa.Table]
    # platform -> rows staged unchanged by fingerprint, sorted by member id (staged apart, see _Parts)
    kept: dict[str, pa.Table] = field(default_factory=dict)
    hashed: int = 0
    reused: int = 0
    # platform -> (rows staged unchanged, the known fingerprint each matched: KnownPrints.positions)
    matched: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


class _Hasher:
    """Hashes chunks: member ids, consent, every platform's values, row hashes, sealed values.

    :param keys: the keys, or what returns them when first needed (after a chunk's values are
        normalised and hashed, which needs no key, unless ``known`` fingerprints decide what to hash).
    :param known: per platform, the fingerprints of rows that need no hashing (see ``extract_and_stage``),
        or what returns them when the first chunk is hashed (a worker receives them after it started).
    :param rules: each platform's rules table (default: the registered platform's).
    """

    def __init__(
        self,
        spec: _Spec,
        keys: StateKeys | Callable[[], StateKeys],
        known: Mapping[str, KnownPrints | None]
        | Callable[[], Mapping[str, KnownPrints | None]]
        | None = None,
        rules: Mapping[str, PlatformRules] | None = None,
    ) -> None:
        self.spec = spec
        self._keys = keys
        self._known = known or {}
        self._printers: dict[str, RowPrinter] | None = None
        rules = rules or {p: get_platform(p).rules for p in spec.platforms}
        self._versions = {p: spec.versions.get(p) or rules_version(rules[p]) for p in spec.platforms}
        self.columns = ChunkHasher(spec.identifiers, rules, spec.default_country)
        self.schemas = {p: h.schema for p, h in self.columns.hashers.items()}

    @property
    def keys(self) -> StateKeys:
        if not isinstance(self._keys, StateKeys):
            self._keys = self._keys()
        return self._keys

    @property
    def known(self) -> Mapping[str, KnownPrints | None]:
        if callable(self._known):
            self._known = self._known() or {}
        return self._known

    def _prints(self, columns: Mapping[str, Any], rows: list[int]) -> dict[str, list[bytes]]:
        """Each platform's fingerprints of ``rows`` (keyed: the keys are needed from here on)."""
        if self._printers is None:
            spec = self.spec
            self._printers = {
                p: RowPrinter(
                    self.keys, p, self._versions[p], spec.key, spec.identifiers, spec.default_country
                )
                for p in spec.platforms
            }
        # the platforms' printers read the same columns: each row's text is encoded once, hashed per key
        texts: dict[tuple[str, ...], RowTexts] = {}
        prints: dict[str, list[bytes]] = {}
        for p, printer in self._printers.items():
            names = tuple(printer.columns)
            if names not in texts:
                texts[names] = row_texts(columns, names, rows)
            prints[p] = printer.hashed(texts[names])
        return prints

    def hash(self, chunk: Chunk) -> _Hashed:
        spec = self.spec
        columns: dict[str, Any]
        if isinstance(chunk, pa.RecordBatch | pa.Table):
            # identifier columns stay Arrow (ChunkHasher reads text columns there); key and consent are listed
            columns, n = {c: chunk.column(c) for c in spec.columns if c in chunk.schema.names}, chunk.num_rows
        else:
            columns, n = as_columns(chunk, spec.columns)
        raw_keys = _listed(columns.get(spec.key)) or [None] * n
        keyed = [i for i, raw in enumerate(raw_keys) if raw is not None and str(raw).strip() not in _NO_KEY]
        kinds = bytearray(n)
        consent = _listed(columns.get(spec.consent_column)) if spec.consent_column else None
        rows: list[int] = []
        for i in keyed:
            if consent is not None and not consent_given(consent[i]):
                kinds[i] = NO_CONSENT
                continue
            kinds[i] = INVALID
            rows.append(i)
        raw = columns
        prints: dict[str, list[bytes]] = {}
        unchanged: list[int] = []
        kept: dict[str, tuple[list[int], list[tuple[int, bytes]]]] = {}
        matched: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if self.known:  # a rerun: rows every platform knows unchanged are not normalised again
            prints = self._prints(raw, rows)
            rows, prints, kept, matched = self._unchanged(rows, prints)
            unchanged = next(iter(kept.values()))[0] if kept else []
            for i in unchanged:
                kinds[i] = VALID
        if len(rows) < n:  # hash only rows with a key and consent (and a changed fingerprint)
            columns = {name: _taken(col, rows) for name, col in columns.items()}
        results = self.columns.hash_chunk(columns, len(rows))
        # the keys are needed from here on (they may arrive while the first chunks are normalised)
        mids: list[str | None] = [None] * n
        for i, mid in zip(keyed, self.keys.member_ids(raw_keys[i] for i in keyed), strict=True):
            mids[i] = mid
        no_consent = {i: mid for i in keyed if kinds[i] == NO_CONSENT and (mid := mids[i]) is not None}
        first = results[spec.platforms[0]]
        reasons: dict[int, str] = {}
        usable = [False] * len(rows)
        for result in results.values():
            usable = [u or v for u, v in zip(usable, result.valid, strict=True)]
        for j, i in enumerate(rows):
            if usable[j]:
                kinds[i] = VALID
            else:
                reasons[i] = first.reasons.get(j, NO_IDENTIFIER)
        if not self.known:
            prints = self._prints(raw, rows)
        ids = bytes.fromhex("".join(_NO_ID_HEX if m is None else m[:16] for m in mids))
        prefixes = np.frombuffer(ids, dtype=">u8")
        staged = {p: self._staged(p, results[p], rows, mids, prefixes, prints[p]) for p in spec.platforms}
        unchanged_rows = {
            p: _kept(same, mids, self.schemas[p]).sort_by("member_id") for p, (_, same) in kept.items()
        }
        return _Hashed(
            n=n,
            ids=ids,
            kinds=bytes(kinds),
            no_consent=no_consent,
            reasons=reasons,
            field_errors={rows[j]: errs for j, errs in first.field_errors.items()},
            staged=staged,
            kept=unchanged_rows,
            hashed=len(rows),
            reused=len(unchanged),
            matched=matched,
        )

    def _unchanged(
        self, rows: list[int], prints: dict[str, list[bytes]]
    ) -> tuple[
        list[int],
        dict[str, list[bytes]],
        dict[str, tuple[list[int], list[tuple[int, bytes]]]],
        dict[str, tuple[np.ndarray, np.ndarray]],
    ]:
        """Split rows into those to hash and those every platform knows unchanged (by fingerprint).

        :return: rows to hash, their fingerprints per platform, per platform the unchanged rows with
            theirs (``(rows, [(row, fingerprint)])``), and per platform the unchanged rows with the
            position of the known fingerprint each matched.
        """
        if not self.known or not rows:
            return rows, prints, {}, {}
        at = {p: known.positions(prints[p]) for p, known in self.known.items() if known is not None}
        same = np.ones(len(rows), dtype=bool)
        for p in self.known:
            same &= at[p] >= 0 if p in at else False
        if not same.any():
            return rows, prints, {}, {}
        keep = np.flatnonzero(same)
        todo = np.flatnonzero(~same).tolist()
        kept_rows = np.asarray(rows, dtype=np.int64)[keep]
        matched = {p: (kept_rows, positions[keep]) for p, positions in at.items()}
        keep_list = keep.tolist()
        kept = {
            p: ([rows[j] for j in keep_list], [(rows[j], fps[j]) for j in keep_list])
            for p, fps in prints.items()
        }
        return (
            [rows[j] for j in todo],
            {p: [fps[j] for j in todo] for p, fps in prints.items()},
            kept,
            matched,
        )

    def _staged(
        self,
        platform: str,
        result: PlatformColumns,
        rows: list[int],
        mids: list[str | None],
        prefixes: np.ndarray,
        prints: list[bytes],
    ) -> pa.Table:
        """The platform's valid rows, sorted by member id (``prefixes``: each row's first 8 bytes)."""
        keep = [rows[j] for j, ok in enumerate(result.valid) if ok]
        member_ids: list[str] = [mids[i] for i in keep]  # type: ignore[misc]
        order = _by_member_id(member_ids, prefixes[keep])
        slots = [j for j, ok in enumerate(result.valid) if ok]
        slots = [slots[k] for k in order]
        keep = [keep[k] for k in order]
        member_ids = [member_ids[k] for k in order]
        schema = self.schemas[platform]
        values = [_text_array(list(map(col.__getitem__, slots))) for col in result.values]
        rows_kept = np.asarray(keep, dtype=np.int32)
        data: dict[str, Any] = {
            "_row": pa.Array.from_buffers(pa.int32(), len(keep), [None, pa.py_buffer(rows_kept)]),
            "member_id": _text_array(member_ids),
            "fingerprint": _hex_array(list(map(prints.__getitem__, slots))),
        }
        if schema:
            # the row hash is the keyed hash of payload_json(schema, values), built in Arrow: hashed
            # values are hex, unhashed ones are JSON-quoted (identical to json.dumps, see the tests)
            pieces: list[Any] = []
            for i, (name, col) in enumerate(zip(schema, values, strict=True)):
                quoted = name in ENCRYPTED_KEYS
                pieces.append(
                    _text_scalar(("{" if i == 0 else ",") + json.dumps(name) + (":" if quoted else ':"'))
                )
                pieces.append(_text_array([json.dumps(v) for v in col.to_pylist()]) if quoted else col)
                if not quoted:
                    pieces.append(_text_scalar('"'))
            pieces.append(_text_scalar("}"))
            payloads = pc.binary_join_element_wise(*pieces, _text_scalar(""))
            data["row_hash"] = _text_array(self.keys.row_hashes_utf8(_utf8_values(payloads)))
        else:
            data["row_hash"] = _text_array([self.keys.row_hash("{}")] * len(keep))
        for name, col in zip(schema, values, strict=True):
            data[name] = (
                _text_array([self.keys.seal_value(v) for v in col.to_pylist()])
                if name in ENCRYPTED_KEYS
                else col
            )
        return pa.table(data, schema=_staged_schema(schema, with_row=True))


def _text_array(values: list[str]) -> pa.Array:
    """A string array of ``values`` built from its buffers: ``pa.array`` (and ``pa.scalar``) import
    pandas on first use, about 0.5 s of CPU in every worker process."""
    joined = "".join(values)
    if joined.isascii():  # hashes, member ids: one encoding, lengths in characters are in bytes
        data = joined.encode("ascii")
        lengths = np.fromiter(map(len, values), np.int32, len(values))
    else:
        encoded = [v.encode("utf-8") for v in values]
        data = b"".join(encoded)
        lengths = np.fromiter(map(len, encoded), np.int32, len(values))
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(values), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _hex_array(prints: list[bytes]) -> pa.Array:
    """Fingerprints (``PRINT_BYTES`` each) as a string array of their hex, in one conversion."""
    data = b"".join(prints).hex().encode("ascii")
    width = 2 * PRINT_BYTES
    if len(data) != width * len(prints):
        raise ValueError(f"fingerprints must be {PRINT_BYTES} bytes each")
    offsets = np.arange(0, len(data) + 1, width, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), len(prints), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _utf8_values(array: pa.Array) -> Iterator[memoryview]:
    """The UTF-8 bytes of each value of a string array without nulls, as views of its data buffer."""
    _validity, offsets, data = array.buffers()
    bounds = np.frombuffer(offsets, np.int32, len(array) + 1, array.offset * 4).tolist()
    view = memoryview(data) if data is not None else memoryview(b"")
    return (view[a:b] for a, b in itertools.pairwise(bounds))


def _text_scalar(text: str) -> pa.Scalar:
    """A string scalar, without ``pa.scalar`` (see :func:`_text_array`)."""
    return _text_array([text])[0]


def _by_member_id(member_ids: list[str], prefixes: np.ndarray) -> list[int]:
    """The positions of ``member_ids`` in sorted order, stable (as Arrow's ``sort_by``): by their first
    8 bytes, unless two different ids share them (then by the whole id)."""
    order = np.argsort(prefixes, kind="stable")
    ranked = prefixes[order]
    tied = np.flatnonzero(ranked[1:] == ranked[:-1]).tolist()
    if any(member_ids[order[t]] != member_ids[order[t + 1]] for t in tied):
        return sorted(range(len(member_ids)), key=member_ids.__getitem__)
    return order.tolist()


def _listed(column: Any) -> list[Any] | None:
    """A column as a list of Python values (None stays None)."""
    if isinstance(column, pa.Array | pa.ChunkedArray):
        return column.to_pylist()
    return column


def _taken(column: Any, rows: list[int]) -> Any:
    """The ``rows`` of a column (Arrow stays Arrow: indices from a buffer, no conversion per value)."""
    if isinstance(column, pa.Array | pa.ChunkedArray):
        indices = np.asarray(rows, dtype=np.int64)
        return column.take(pa.Array.from_buffers(pa.int64(), len(rows), [None, pa.py_buffer(indices)]))
    return [column[i] for i in rows]


def _kept(rows: list[tuple[int, bytes]], mids: list[str | None], schema: Sequence[str]) -> pa.Table:
    """Rows staged unchanged: member id and fingerprint (the ledger holds their hash and payload)."""
    n = len(rows)
    data: dict[str, Any] = {
        "_row": pa.Array.from_buffers(
            pa.int32(), n, [None, pa.py_buffer(np.array([i for i, _ in rows], np.int32))]
        ),
        "member_id": _text_array([mids[i] for i, _ in rows]),  # type: ignore[misc]
        "row_hash": pa.nulls(n, pa.string()),
        "fingerprint": _hex_array([fp for _, fp in rows]),
    }
    for name in schema:
        data[name] = pa.nulls(n, pa.string())
    return pa.table(data, schema=_staged_schema(schema, with_row=True))


def as_columns(chunk: Chunk, names: Sequence[str]) -> tuple[dict[str, list[Any]], int]:
    """The named columns of a chunk as lists (absent columns are left out), and its row count."""
    if isinstance(chunk, pa.RecordBatch | pa.Table):
        present = [c for c in names if c in chunk.schema.names]
        return {c: chunk.column(c).to_pylist() for c in present}, chunk.num_rows
    if isinstance(chunk, Mapping):
        cols = {c: list(chunk[c]) for c in names if c in chunk}
        return cols, len(next(iter(chunk.values()))) if chunk else 0
    rows = list(chunk)
    return {c: [r.get(c) for r in rows] for c in names}, len(rows)


def _staged_schema(schema: Sequence[str], *, with_row: bool = False) -> pa.Schema:
    fields = [(c, pa.string()) for c in (*META_COLUMNS, *schema)]
    return pa.schema(([("_row", pa.int32())] if with_row else []) + fields)


# -------------------------------------------------------------------------------------- parallelism
_worker: _Hasher | None = None


def _init_worker(
    spec: _Spec, source: dict[str, str] | Any, with_known: bool, packaged_rules: bool = False
) -> None:
    """``source``: the keys as text, or a queue the worker's message comes through (see :func:`_feed`):
    the keys' text, with the fingerprints of rows that need no hashing when ``with_known``.
    ``packaged_rules``: the platforms' rules are the normalisation package's own tables (``RULES``), so
    the worker need not import the platform registry (campaign models: ~0.2 s per process)."""
    global _worker
    rules = {p: RULES[p] for p in spec.platforms} if packaged_rules else None
    # the keys come through the pool's pipe or queue, never through a file or an environment variable
    if isinstance(source, dict):
        _worker = _Hasher(spec, StateKeys.from_text(source, "extraction worker"), None, rules)
        return
    received: list[Any] = []

    def message() -> Any:
        if not received:
            received.append(source.get())
        return received[0]

    def receive() -> StateKeys:
        text = message()[0] if with_known else message()
        if text is None:
            raise RuntimeError("extraction worker: the state keys could not be loaded")
        return StateKeys.from_text(text, "extraction worker")

    def known() -> Mapping[str, KnownPrints | None]:
        return message()[1] or {}

    _worker = _Hasher(spec, _once(receive), known if with_known else None, rules)


def _once(load: Callable[[], StateKeys]) -> Callable[[], StateKeys]:
    """``load`` called at most once: a failure is remembered (a worker takes one message off the queue)."""
    failed: list[BaseException] = []

    def keys() -> StateKeys:
        if failed:
            raise failed[0]
        try:
            return load()
        except BaseException as exc:
            failed.append(exc)
            raise

    return keys


def _feed(
    queue: Any,
    count: int,
    keys: StateKeys | Future[StateKeys],
    known: Mapping[str, KnownPrints | None] | Callable[[], Mapping[str, KnownPrints | None]],
) -> None:
    """Put one message per worker on ``queue`` from a thread of its own, once ``keys`` are known: their
    text (None if they failed), with the fingerprints when ``known`` is (or returns) any.

    The fingerprints (16 bytes a ledger row) travel here rather than in the pool's start arguments: a
    spawned worker reads those only after its imports, and a large write to it would hold up the start
    of the next worker and of extraction. Here each ``put`` waits for its worker alone."""

    def run() -> None:
        try:
            text: dict[str, str] | None = (keys.result() if isinstance(keys, Future) else keys).as_text()
            prints = dict(known() if callable(known) else known)
        except BaseException:  # the failure is raised by the extraction itself (see _hashed)
            text, prints = None, {}
        message = (text, prints) if (callable(known) or known) else text
        try:
            for _ in range(count):
                queue.put(message)
        except OSError:  # closed after the pool stopped: fewer workers started than messages were due
            pass

    threading.Thread(target=run, name="audience-sync-extract-feed", daemon=True).start()


def _hash_in_worker(chunk: Chunk) -> _Hashed:
    assert _worker is not None  # noqa: S101 - set by the pool initializer
    return _worker.hash(chunk)


def _hashed(
    chunks: Iterable[Chunk],
    spec: _Spec,
    keys: StateKeys | Future[StateKeys],
    local: _Hasher,
    workers: int | None,
    counts: ExtractCounts,
    known: Mapping[str, KnownPrints | None] | Callable[[], Mapping[str, KnownPrints | None]],
) -> Iterator[_Hashed]:
    """The chunks, hashed and in order: here for a one-chunk group, else by a pool of processes
    (``counts.workers`` says which)."""
    it = iter(chunks)
    first = next(it, None)
    if first is None:
        return
    second = next(it, None)
    rest = itertools.chain([first] if second is None else [first, second], it)
    count = workers if workers is not None else settings().workers
    if second is None or count <= 1 or not all(is_builtin(p) for p in spec.platforms):
        yield from map(local.hash, rest)
        return
    # spawn, not fork: the task's process may run threads (a fork would copy their held locks)
    context = multiprocessing.get_context("spawn")
    pending: deque[tuple[Future[_Hashed], Chunk]] = deque()
    log.info("hashing the group in %d worker processes", count)
    counts.workers = count
    with_known = callable(known) or bool(known)
    if isinstance(keys, Future) or with_known:
        source: Any = context.SimpleQueue()
        _feed(source, count, keys, known)
    else:
        source = keys.as_text()

    def result(future: Future[_Hashed]) -> _Hashed:
        try:
            return future.result()
        except Exception:
            if isinstance(keys, Future) and keys.done():
                keys.result()  # the keys' own failure, rather than the workers' report of it
            if callable(known):
                known()  # the same for the fingerprints
            raise

    try:
        packaged = all(get_platform(p).rules is RULES.get(p) for p in spec.platforms)
        with ProcessPoolExecutor(count, context, _init_worker, (spec, source, with_known, packaged)) as pool:
            for chunk in rest:
                slim = _slim(chunk, spec)
                with _main_left_behind():  # a submit may start a worker process
                    pending.append((pool.submit(_hash_in_worker, slim), slim))
                while len(pending) >= count * AHEAD_PER_WORKER:
                    yield result(pending[0][0])
                    pending.popleft()
            while pending:
                yield result(pending[0][0])
                pending.popleft()
    except BrokenProcessPool as exc:
        # e.g. a worker killed for memory
        log.warning("extraction workers stopped (%s); hashing the rest of the group in this process", exc)
        counts.workers = 1
        for _future, chunk in pending:
            yield local.hash(chunk)
        yield from map(local.hash, rest)
    finally:
        if not isinstance(source, dict):  # the workers are gone: a message nobody took fails its put
            source.close()


@contextlib.contextmanager
def _main_left_behind() -> Iterator[None]:
    """Worker processes started meanwhile do not run the main script.

    A spawned process first re-runs the parent's main script (as ``__mp_main__``) unless that was run with
    ``-m`` (``multiprocessing.spawn.get_preparation_data``): for a task, the ``airflow`` command, which
    imports all of Airflow, seconds of CPU per worker for nothing a worker uses (they import the core
    only, and hash only built-in platforms). Without a main module that has a file or a module name,
    spawn leaves it out. Only this thread starts workers; the swap lasts the ``submit``.
    """
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def _slim(chunk: Chunk, spec: _Spec) -> Chunk:
    """Only the columns extraction reads go to a worker (Arrow batches travel as Arrow buffers)."""
    if isinstance(chunk, pa.RecordBatch | pa.Table):
        return chunk.select([c for c in spec.columns if c in chunk.schema.names])
    return as_columns(chunk, spec.columns)[0] if not isinstance(chunk, Mapping) else chunk


# ------------------------------------------------------------------------------------------ staging
def _location(path: str | PurePath, filesystem: pafs.FileSystem | None) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path on it: a local path is made absolute (pyarrow's local filesystem
    wants one)."""
    if filesystem is None:
        return pafs.LocalFileSystem(), str(Path(path).absolute())
    return filesystem, str(path).rstrip("/")


class _Stager:
    """Drops later rows of a member key already seen, counts, and writes the staged files in order."""

    def __init__(self, out_dir: str, schemas: Mapping[str, tuple[str, ...]], fs: pafs.FileSystem) -> None:
        self.out_dir = out_dir
        self.schemas = schemas
        self.counts = ExtractCounts()
        self.seen = SeenKeys()
        self.per_platform = Counter[str]()
        self.parts = {
            p: _Parts(f"{out_dir}/{p}", _staged_schema(schema), fs) for p, schema in schemas.items()
        }
        self.kept = {
            p: _Parts(f"{out_dir}/{p}", _staged_schema(schema), fs, KEPT) for p, schema in schemas.items()
        }
        revoked = pa.schema([("member_id", pa.string())])
        self.revoked = pq.ParquetWriter(f"{out_dir}/no_consent.parquet", revoked, filesystem=fs)
        self.fs = fs
        self.matched: dict[str, list[np.ndarray]] = {p: [] for p in schemas}

    def add(self, h: _Hashed) -> None:
        c = self.counts
        present = np.frombuffer(h.kinds, dtype=np.uint8) != MISSING_KEY
        repeated = self.seen.repeated(np.frombuffer(h.ids, dtype=np.uint64), present)
        dropped = set(np.flatnonzero(repeated).tolist())
        kinds = h.kinds
        if dropped:
            kinds = bytes(DUPLICATE if i in dropped else k for i, k in enumerate(kinds))
        c.rows += h.n
        c.hashed += h.hashed
        c.reused += h.reused
        c.duplicates += len(dropped)
        missing = kinds.count(MISSING_KEY)
        if missing:
            c.missing_key += missing
            c.invalid_by_reason["missing_key"] += missing
        c.excluded_no_consent += kinds.count(NO_CONSENT)
        c.valid += kinds.count(VALID)
        invalid = [i for i in h.reasons if i not in dropped]
        c.invalid += missing + len(invalid)
        c.invalid_by_reason.update(h.reasons[i] for i in invalid)
        for i, errs in h.field_errors.items():
            if i not in dropped:
                c.field_errors.update(errs)
        revoked = [mid for i, mid in h.no_consent.items() if i not in dropped]
        if revoked:
            self.revoked.write_table(pa.table({"member_id": pa.array(revoked, pa.string())}))
        for p, (rows, positions) in h.matched.items():
            self.matched[p].append(positions[~np.isin(rows, list(dropped))] if dropped else positions)
        gone = pa.array(sorted(dropped), pa.int32())
        for parts, tables in ((self.parts, h.staged), (self.kept, h.kept)):
            for p, table in tables.items():
                if dropped:
                    table = table.filter(pc.invert(pc.is_in(table["_row"], gone)))
                parts[p].add(table.drop_columns(["_row"]))
                self.per_platform[p] += table.num_rows

    def close(self) -> None:
        self.revoked.close()
        for p, parts in self.parts.items():
            parts.close()
            self.kept[p].close()
            self.counts.staged[p] = {
                "path": parts.folder,
                "rows": self.per_platform[p],
                "schema": list(self.schemas[p]),
            }
        self.counts.no_consent_path = f"{self.out_dir}/no_consent.parquet"

    def record_reuse(self, known: Mapping[str, KnownPrints | None]) -> None:
        """Beside each platform's parts, what its sync needs to know of the rows staged unchanged
        (``fingerprints.Reuse``), when rows were reused against a ledger generation."""
        for p, parts in self.parts.items():
            prints = known.get(p)
            record = prints.record(np.concatenate(self.matched[p])) if prints is not None else None
            if record is not None:
                record.write(self.fs, parts.folder)


#: the staged rows of a platform are split by the first hex digit of the member id, so the group can
#: be compared with the ledger one slice at a time (``core/delta.py``)
PARTS = "0123456789abcdef"

#: staged rows held (over all parts of a platform) before they are written out, one row group per part
BUFFER_ROWS = 262_144

#: file name prefix of the parts holding rows staged unchanged by fingerprint
KEPT = "kept-"


class _Parts:
    """One platform's staged folder: ``<h>.parquet`` for each first hex digit ``h`` of the member id.

    Rows staged unchanged by fingerprint go to ``kept-<h>.parquet`` (``prefix``), written only when there
    are any: a sync that may trust them (``core/delta.py``) reads the hashed rows alone.
    """

    def __init__(self, folder: str, schema: pa.Schema, fs: pafs.FileSystem, prefix: str = "") -> None:
        self.folder = folder
        self.schema = schema
        self.fs = fs
        self.prefix = prefix
        fs.create_dir(folder, recursive=True)
        self.buffers: dict[str, list[pa.Table]] = {h: [] for h in PARTS}
        self.buffered = 0
        self.writers: dict[str, pq.ParquetWriter] = {}
        if not prefix:
            self._open()

    def _open(self) -> None:
        # member ids, row hashes and fingerprints are unique: a dictionary of them would be built and
        # dropped for each column chunk; hashed values may repeat (country, names), so they keep one. No
        # column compresses much (hex text; repeats are in dictionaries), so none is compressed (about
        # 4 % more bytes, a third of the staging process's CPU for writing and reading); and no min / max
        # statistics, which no reader uses (readers take whole columns)
        values = [name for name in self.schema.names if name not in META_COLUMNS]
        self.writers = {
            h: pq.ParquetWriter(
                f"{self.folder}/{self.prefix}{h}.parquet",
                self.schema,
                filesystem=self.fs,
                use_dictionary=values,
                compression="none",
                write_statistics=False,
            )
            for h in PARTS
        }

    def add(self, table: pa.Table) -> None:
        """Rows sorted by member id: each part's rows are one contiguous slice."""
        if not table.num_rows:
            return
        if not self.writers:
            self._open()
        first = pc.utf8_slice_codeunits(table["member_id"], 0, 1)
        start = 0
        for entry in pc.value_counts(first).to_pylist():  # in order of appearance: sorted
            self.buffers[entry["values"]].append(table.slice(start, entry["counts"]))
            start += entry["counts"]
        self.buffered += table.num_rows
        if self.buffered >= BUFFER_ROWS:
            self._flush()

    def _flush(self) -> None:
        for h, tables in self.buffers.items():
            if tables:
                self.writers[h].write_table(pa.concat_tables(tables))
                self.buffers[h] = []
        self.buffered = 0

    def close(self) -> None:
        if not self.writers:
            return
        self._flush()
        for writer in self.writers.values():  # every part exists, if empty: readers find the schema
            writer.close()


def staged_parts(path: str | PurePath, filesystem: pafs.FileSystem | None = None) -> list[PurePath]:
    """The files of a staged group: a platform's folder of parts, or a single file (older runs).

    Local paths without ``filesystem``; on a ``filesystem``, paths on it (``PurePosixPath``).
    """
    if filesystem is None:
        p = Path(path)
        return sorted(p.glob("*.parquet")) if p.is_dir() else [p]  # type: ignore[return-value]
    folder = str(path).rstrip("/")
    if filesystem.get_file_info(folder).type != pafs.FileType.Directory:
        return [PurePosixPath(folder)]
    found = filesystem.get_file_info(pafs.FileSelector(folder))
    return sorted(PurePosixPath(i.path) for i in found if i.path.endswith(".parquet"))


def read_staged(
    path: str | PurePath, batch_rows: int = CHUNK_ROWS, filesystem: pafs.FileSystem | None = None
) -> Iterator[tuple[str, list[str], list[str]]]:
    """Yield (member_id, schema, values) from a staged file, in bounded memory (values as staged: sealed)."""
    for mid, _row_hash, schema, values in _read(path, batch_rows, filesystem):
        yield mid, schema, values


def _read(
    path: str | PurePath, batch_rows: int, filesystem: pafs.FileSystem | None = None
) -> Iterator[tuple[str, str, list[str], list[str]]]:
    for part in staged_parts(path, filesystem):
        pf = pq.ParquetFile(str(part), filesystem=filesystem)
        schema = [n for n in pf.schema_arrow.names if n not in META_COLUMNS]
        for batch in pf.iter_batches(batch_size=batch_rows):
            data = batch.to_pydict()
            ids, hashes = data["member_id"], data["row_hash"]
            columns = [data[n] for n in schema]
            for i, mid in enumerate(ids):
                yield mid, hashes[i], schema, [c[i] or "" for c in columns]


def read_member_ids(path: str | PurePath | None, filesystem: pafs.FileSystem | None = None) -> list[str]:
    """Member ids from a staged id list (e.g. members without consent)."""
    if not path:
        return []
    if filesystem is None and not Path(path).exists():
        return []
    if filesystem is not None and filesystem.get_file_info(str(path)).type == pafs.FileType.NotFound:
        return []
    table = pq.read_table(str(path), columns=["member_id"], filesystem=filesystem)
    return [str(v) for v in table.column("member_id").to_pylist()]


def staged_schema(path: str | PurePath, filesystem: pafs.FileSystem | None = None) -> list[str]:
    first = staged_parts(path, filesystem)[0]
    return [
        n
        for n in pq.ParquetFile(str(first), filesystem=filesystem).schema_arrow.names
        if n not in META_COLUMNS
    ]
