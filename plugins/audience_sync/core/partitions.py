"""Partitions of an audience group: which rows one mapped extraction task hashes and stages.

A row belongs to partition ``partition_of(key, count)``: a stable hash (BLAKE2b, 8 bytes) of its member
key written the way member ids are made from it (``str(key).strip()``, see ``core/keys.py``), modulo
the number of partitions. So every row of one member key, wherever it sits in the source, lands in the
same partition, and keys that make one member id make one partition. Rows without a member key all go
to partition 0, which counts them (they are never staged).

De-duplication stays what it is without partitions: each partition keeps its rows in the source's
order, so the first row of a key within its partition is the first row of that key in the source, and
"first row wins" picks the same row. Counts of the partitions add up to the counts of the whole group.

The hash is of the raw key, is never stored and is not keyed: it only chooses a partition. Every
partition reads the whole source and keeps its own rows; pushing the filter into a SQL query is a
later optimisation.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa

__all__ = ["choose_count", "partition_chunks", "partition_of"]

_PERSON = b"as-partition"  # BLAKE2b personalisation: this hash is for partitioning only


def _is_missing(key: Any) -> bool:
    """The member key is absent (the rule of ``core/extract.py``)."""
    return key is None or str(key).strip() in ("", "nan", "None")


def partition_of(key: Any, count: int) -> int:
    """The partition (``0 .. count - 1``) of a member key; rows without a key belong to partition 0."""
    if count <= 1 or _is_missing(key):
        return 0
    digest = hashlib.blake2b(str(key).strip().encode("utf-8"), digest_size=8, person=_PERSON).digest()
    return int.from_bytes(digest, "big") % count


def choose_count(rows: int, rows_per_partition: int, maximum: int) -> int:
    """Partitions for a group of ``rows`` rows (``partitions: auto``): one per ``rows_per_partition``
    rows begun, at least 1, at most ``maximum``."""
    return max(1, min(maximum, math.ceil(rows / rows_per_partition)))


def partition_chunks(chunks: Iterable[Any], key: str, index: int, count: int) -> Iterator[Any]:
    """The rows of partition ``index`` of ``count``, chunk by chunk, in the source's order.

    :param chunks: Arrow record batches or tables, column mappings (name -> values) or lists of row
        mappings, as ``core/extract.py`` takes them; each comes out as the same kind (chunks left
        without rows are skipped).
    """
    if not 0 <= index < count:
        raise ValueError(f"partition {index} is not one of 0 .. {count - 1}")
    for chunk in chunks:
        if count == 1:
            yield chunk
            continue
        if isinstance(chunk, pa.RecordBatch | pa.Table):
            keys = chunk.column(key).to_pylist() if key in chunk.schema.names else [None] * chunk.num_rows
            keep = _mine(keys, index, count)
            if any(keep):
                yield chunk.filter(pa.array(keep, pa.bool_()))
        elif isinstance(chunk, Mapping):
            n = len(next(iter(chunk.values()))) if chunk else 0
            keep = _mine(list(chunk.get(key) or [None] * n), index, count)
            if any(keep):
                yield {
                    name: [v for v, k in zip(vals, keep, strict=True) if k] for name, vals in chunk.items()
                }
        else:
            rows: Sequence[Mapping[str, Any]] = list(chunk)
            keep = _mine([r.get(key) for r in rows], index, count)
            if any(keep):
                yield [r for r, k in zip(rows, keep, strict=True) if k]


def _mine(keys: Sequence[Any], index: int, count: int) -> list[bool]:
    return [partition_of(k, count) == index for k in keys]
