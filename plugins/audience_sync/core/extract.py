"""Extraction: read the audience group in chunks, normalise + hash per platform, stage hashes only.

The staged file of each platform is Parquet with the columns ``member_id`` (keyed HMAC of the member
key), ``row_hash`` (keyed HMAC of the row as sent) and one column per platform schema key holding
hashes; identifiers the platform takes unhashed (Meta MADID, EXTERN_ID) are staged as Fernet tokens
(see ``core/keys.py``). Raw identifiers never leave this module: they are read, hashed or encrypted and
dropped chunk by chunk.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from audience_sync.core.keys import StateKeys, payload_json
from audience_sync.core.normalize import RowHasher
from audience_sync.core.platforms import get_platform

log = logging.getLogger(__name__)

CHUNK_ROWS = 50_000

#: staged columns that are not platform schema keys
META_COLUMNS = ("member_id", "row_hash")

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
        }


def extract_and_stage(
    chunks: Iterable[Sequence[Mapping[str, Any]]],
    *,
    key: str,
    identifiers: Mapping[str, str],
    platforms: Sequence[str],
    staging_dir: str | Path,
    keys: StateKeys,
    default_country: str | None = None,
    consent_column: str | None = None,
) -> ExtractCounts:
    """Hash every row for each platform and write ``<staging_dir>/<platform>.parquet``.

    ``keys`` (the state's, see ``hooks/state.py``) key the member ids and row hashes and encrypt the
    identifiers a platform takes unhashed.

    A row counts as invalid (with one reason) when no platform can use it; invalid rows are counted,
    never staged, never fatal. A member key seen twice keeps its first row (``duplicates``).
    """
    out_dir = Path(staging_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hashers = {p: RowHasher(p, identifiers, default_country, rules=get_platform(p).rules) for p in platforms}
    writers: dict[str, pq.ParquetWriter] = {}
    schemas = {
        p: pa.schema([(c, pa.string()) for c in META_COLUMNS] + [(k, pa.string()) for k in h.schema])
        for p, h in hashers.items()
    }
    per_platform = Counter[str]()
    seen: set[bytes] = set()
    counts = ExtractCounts()
    no_consent: list[str] = []
    try:
        for chunk in chunks:
            cols: dict[str, dict[str, list[str]]] = {
                p: {name: [] for name in schemas[p].names} for p in platforms
            }
            for row in chunk:
                counts.rows += 1
                raw_key = row.get(key)
                if raw_key is None or str(raw_key).strip() in ("", "nan", "None"):
                    counts.missing_key += 1
                    counts.invalid += 1
                    counts.invalid_by_reason["missing_key"] += 1
                    continue
                mid = keys.member_id(raw_key)
                short = bytes.fromhex(mid[:16])
                if short in seen:
                    counts.duplicates += 1
                    continue
                seen.add(short)
                if consent_column and not consent_given(row.get(consent_column)):
                    counts.excluded_no_consent += 1
                    no_consent.append(mid)  # only the hashed key: to remove them if they were sent before
                    continue
                results = {p: hashers[p].hash_row(row) for p in platforms}
                usable = [p for p, r in results.items() if r.valid]
                first = results[platforms[0]]  # field errors are reported once per row, from one platform
                counts.field_errors.update(first.field_errors)
                if not usable:
                    counts.invalid += 1
                    counts.invalid_by_reason[first.reason or "invalid"] += 1
                    continue
                counts.valid += 1
                for p in usable:
                    c = cols[p]
                    schema, plain = hashers[p].schema, results[p].values
                    c["member_id"].append(mid)
                    c["row_hash"].append(keys.row_hash(payload_json(schema, plain)))
                    for name, value in zip(schema, keys.seal(schema, plain), strict=True):
                        c[name].append(value)
                    per_platform[p] += 1
            for p in platforms:
                if not cols[p]["member_id"]:
                    continue
                table = pa.table(cols[p], schema=schemas[p])
                if p not in writers:
                    writers[p] = pq.ParquetWriter(out_dir / f"{p}.parquet", schemas[p])
                writers[p].write_table(table)
    finally:
        for w in writers.values():
            w.close()
    for p in platforms:
        path = out_dir / f"{p}.parquet"
        if p not in writers:  # nothing valid: stage an empty file so the sync still reconciles
            pq.write_table(schemas[p].empty_table(), path)
        counts.staged[p] = {"path": str(path), "rows": per_platform[p], "schema": list(hashers[p].schema)}
    revoked = out_dir / "no_consent.parquet"
    pq.write_table(pa.table({"member_id": pa.array(no_consent, pa.string())}), revoked)
    counts.no_consent_path = str(revoked)
    return counts


def read_staged(path: str | Path, batch_rows: int = CHUNK_ROWS) -> Iterator[tuple[str, list[str], list[str]]]:
    """Yield (member_id, schema, values) from a staged file, in bounded memory (values as staged: sealed)."""
    for mid, _row_hash, schema, values in _read(path, batch_rows):
        yield mid, schema, values


def staged_rows(path: str | Path, batch_rows: int = CHUNK_ROWS) -> Iterator[tuple[str, str, str]]:
    """Yield (member_id, row_hash, payload_json) from a staged file: the rows the ledger stage takes."""
    for mid, row_hash, schema, values in _read(path, batch_rows):
        yield mid, row_hash, payload_json(schema, values)


def _read(path: str | Path, batch_rows: int) -> Iterator[tuple[str, str, list[str], list[str]]]:
    pf = pq.ParquetFile(path)
    schema = [n for n in pf.schema_arrow.names if n not in META_COLUMNS]
    for batch in pf.iter_batches(batch_size=batch_rows):
        data = batch.to_pydict()
        ids, hashes = data["member_id"], data["row_hash"]
        columns = [data[n] for n in schema]
        for i, mid in enumerate(ids):
            yield mid, hashes[i], schema, [c[i] or "" for c in columns]


def read_member_ids(path: str | Path | None) -> list[str]:
    """Member ids from a staged id list (e.g. members without consent)."""
    if not path or not Path(path).exists():
        return []
    return [str(v) for v in pq.read_table(path, columns=["member_id"]).column("member_id").to_pylist()]


def staged_schema(path: str | Path) -> list[str]:
    return [n for n in pq.ParquetFile(path).schema_arrow.names if n not in META_COLUMNS]
