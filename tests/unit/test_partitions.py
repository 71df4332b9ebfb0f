"""Partitioned extraction: a stable partition per member key, and partitions that add up to the group."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from audience_sync.core.delta import StagedGroup
from audience_sync.core.extract import extract_and_stage, read_member_ids
from audience_sync.core.keys import StateKeys
from audience_sync.core.partitions import choose_count, partition_chunks, partition_of

KEYS = StateKeys.generate()
IDENTIFIERS = {"email": "email", "phone": "phone", "country": "country"}


def test_partition_of_is_stable_and_follows_the_member_key_text() -> None:
    assert [partition_of(k, 7) for k in range(50)] == [partition_of(k, 7) for k in range(50)]
    # the key as member ids see it: str(key).strip(); an int from SQL and its text from a CSV agree
    assert partition_of(12345, 5) == partition_of("12345", 5) == partition_of(" 12345 ", 5)
    assert partition_of("anything", 1) == 0
    # no key: partition 0, which counts such rows
    assert {partition_of(k, 9) for k in (None, "", "  ", "nan", "None")} == {0}
    # the hash is fixed: a value change here would move every member to another partition
    assert [partition_of(f"c{i}", 4) for i in range(8)] == [2, 0, 1, 0, 0, 0, 2, 0]
    assert [partition_of(i, 64) for i in range(8)] == [18, 39, 16, 0, 36, 24, 1, 48]
    spread = Counter(partition_of(f"customer-{i}", 4) for i in range(4000))
    assert set(spread) == {0, 1, 2, 3} and min(spread.values()) > 850


def test_choose_count() -> None:
    assert choose_count(0, 1000, 16) == 1
    assert choose_count(1000, 1000, 16) == 1
    assert choose_count(1001, 1000, 16) == 2
    assert choose_count(10**9, 1000, 16) == 16


def _rows(n: int, seed: int = 3) -> list[dict[str, object]]:
    rnd = random.Random(seed)
    rows: list[dict[str, object]] = []
    for i in range(n):
        key = rnd.choice([f"c{rnd.randrange(n // 2)}", None, ""]) if i % 17 == 0 else f"c{rnd.randrange(n)}"
        rows.append(
            {
                "customer_id": key,
                "email": f"User{i}@Example.com" if i % 11 else "not-an-email",
                "phone": f"+1 202 555 {i % 10000:04d}",
                "country": "US",
            }
        )
    return rows


@pytest.mark.parametrize("kind", ["rows", "columns", "arrow"])
def test_partition_chunks_keep_source_order_and_cover_every_row_once(kind: str) -> None:
    rows = _rows(600)
    chunks = [rows[i : i + 100] for i in range(0, 600, 100)]
    if kind == "columns":
        chunks = [{c: [r[c] for r in ch] for c in rows[0]} for ch in chunks]
    elif kind == "arrow":
        chunks = [pa.RecordBatch.from_pylist(ch) for ch in chunks]
    seen: list[tuple[int, object]] = []
    for index in range(3):
        for chunk in partition_chunks(chunks, "customer_id", index, 3):
            if kind == "rows":
                got = list(chunk)
            elif kind == "columns":
                got = [dict(zip(chunk, values, strict=True)) for values in zip(*chunk.values(), strict=True)]
            else:
                got = chunk.to_pylist()
            assert all(partition_of(r["customer_id"], 3) == index for r in got)
            seen += [(index, r["email"]) for r in got]
    assert sorted(e for _, e in seen) == sorted(r["email"] for r in rows)  # every row, once
    for index in range(3):  # each partition in the source's order
        mine = [e for i, e in seen if i == index]
        order = [r["email"] for r in rows if partition_of(r["customer_id"], 3) == index]
        assert mine == order
    with pytest.raises(ValueError, match="not one of 0 .. 2"):
        list(partition_chunks(chunks, "customer_id", 3, 3))


def test_partitions_stage_the_same_group_and_counts_as_one_extraction(tmp_path: Path) -> None:
    """Duplicates of a key fall in one partition, so "first row wins" picks the same rows."""
    rows = _rows(900)
    chunks = [rows[i : i + 150] for i in range(0, 900, 150)]
    args = {
        "key": "customer_id",
        "identifiers": IDENTIFIERS,
        "platforms": ["meta"],
        "keys": KEYS,
        "workers": 1,
    }
    whole = extract_and_stage(chunks, staging_dir=tmp_path / "whole", **args)
    parts = [
        extract_and_stage(
            partition_chunks(chunks, "customer_id", i, 3), staging_dir=tmp_path / f"part-{i}", **args
        )
        for i in range(3)
    ]
    assert whole.duplicates > 10 and whole.missing_key > 0  # the case this test is about
    for name in ("rows", "valid", "invalid", "duplicates", "missing_key", "excluded_no_consent"):
        assert sum(getattr(p, name) for p in parts) == getattr(whole, name), name
    assert sum((p.invalid_by_reason for p in parts), Counter()) == whole.invalid_by_reason
    # the same members with the same row hashes (sealed values differ at every encryption: compared
    # through the group's row hashes)
    group = StagedGroup([p.staged["meta"]["path"] for p in parts])
    assert group.size == whole.staged["meta"]["rows"]
    mine = group.slice("").sort_by("member_id").to_pylist()
    assert mine == StagedGroup(whole.staged["meta"]["path"]).slice("").sort_by("member_id").to_pylist()
    partition_ids = [set(read_member_ids(p.staged["meta"]["path"] + "/0.parquet")) for p in parts]
    assert not (partition_ids[0] & partition_ids[1])  # partitions hold disjoint members
