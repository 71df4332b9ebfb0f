"""Row fingerprints (``core/fingerprints.py``): the column-wise encoding in Arrow gives, for every input,
the bytes of the reference encoding (one row at a time in Python), so the fingerprints the ledgers of
existing deployments hold stay valid.
"""

from __future__ import annotations

import random
from typing import Any

import pyarrow as pa
import pytest

from audience_sync.core.fingerprints import RowPrinter, row_texts
from audience_sync.core.keys import StateKeys

KEYS = StateKeys(bytes(range(32)), bytes(range(32, 64)))
IDENTIFIERS = {"email": "email", "phone": "phone", "madid": "madid"}

#: text the encoding must not confuse: lengths in code points (astral plane, combining marks), bytes
#: that look like the encoding itself, lone surrogates (passed through), lengths past the header table
TEXTS = [
    "",
    " ",
    "a",
    " Member.1@Example.org",
    "Zoë",
    "Zoe\u0301",
    "😀",
    "a😀b\U0010ffff",
    "東京",
    "\x00",
    "\x00-",
    "n;",
    "s3:abc",
    "i12;",
    "12",
    "-7",
    "\ud800",
    "x\udcff",
    "\ud83d\ude00",
    "é" * 1023,
    "é" * 1024,
    "😀" * 1500,
]
OTHERS = [0, 1, -1, 12, 2**63, -(2**63) - 1, 2**70, 1.5, -0.0, float("nan"), float("inf"), True, False, b"ab"]


def printer(platform: str = "meta") -> RowPrinter:
    return RowPrinter(KEYS, platform, "rules-v", "id", IDENTIFIERS, "GB")


def listed(columns: dict[str, Any]) -> dict[str, Any]:
    return {
        name: c.to_pylist() if isinstance(c, pa.Array | pa.ChunkedArray) else c for name, c in columns.items()
    }


def text_column(rng: random.Random, n: int, nulls: float) -> list[str | None]:
    return [None if rng.random() < nulls else rng.choice(TEXTS) for _ in range(n)]


def int_column(rng: random.Random, n: int, nulls: float) -> list[int | None]:
    return [None if rng.random() < nulls else rng.choice([0, -1, 7, 2**62, -(2**63)]) for _ in range(n)]


def mixed_column(rng: random.Random, n: int) -> list[Any]:
    return [rng.choice([None, *TEXTS[:6], *OTHERS]) for _ in range(n)]


def valid_utf8(values: list[str | None]) -> list[str | None]:
    """Arrow text holds valid UTF-8 only: no lone surrogates."""
    return [v if v is None or not any("\ud800" <= c <= "\udfff" for c in v) else "x" for v in values]


def test_known_fingerprints_are_unchanged() -> None:
    """Computed with the reference encoding before the Arrow path existed: the ledgers hold these."""
    columns = {
        "id": ["cust-1", 7, None, "", -12],
        "email": [" Zoë@Example.org", "😀e\u0301", "", None, 1.5],
        "phone": ["+44 20 7946 0001", None, "\ud800x", "s3:abc", True],
    }
    want = [
        "a9a4a589518279a9f34ab63bbb04f9f6",
        "08610a3398c688f8407b9119294ef2e7",
        "afb91f60c6596e97844896e570fae186",
        "501a036e965c51ddeafd734192c06090",
        "92197ff90fc6e9f2ed33628fe026fa84",
    ]
    p = printer()
    assert [f.hex() for f in p.reference(columns, range(5))] == want
    assert [f.hex() for f in p.prints(columns, range(5))] == want


@pytest.mark.parametrize("seed", range(6))
def test_lists_print_as_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.choice([1, 7, 300])
    nulls = rng.choice([0.0, 0.3, 1.0])
    columns: dict[str, Any] = {
        "id": int_column(rng, n, nulls) if seed % 2 else text_column(rng, n, nulls),
        "email": text_column(rng, n, nulls),
        "phone": mixed_column(rng, n) if seed % 3 else [None] * n,
    }
    if seed % 4:  # a missing column
        columns["madid"] = text_column(rng, n, 0.0)
    p = printer()
    everything = list(range(n))
    some = sorted(rng.sample(everything, n // 2))
    for rows in (everything, some, [], everything[::-1], [0, 0]):
        assert p.prints(columns, rows) == p.reference(columns, rows)


@pytest.mark.parametrize("seed", range(6))
def test_arrow_columns_print_as_the_reference(seed: int) -> None:
    rng = random.Random(100 + seed)
    n = 400
    nulls = rng.choice([0.0, 0.2])
    texts = valid_utf8(text_column(rng, n, nulls))
    columns: dict[str, Any] = {
        "id": pa.array(int_column(rng, n, nulls), pa.int64()),
        "email": pa.array(texts, pa.large_string() if seed % 2 else pa.string()),
        "phone": pa.chunked_array(
            [
                pa.array(valid_utf8(text_column(rng, 150, nulls))),
                pa.array(valid_utf8(text_column(rng, 250, 0))),
            ]
        ),
        "madid": pa.array(texts).dictionary_encode(),
    }
    if seed % 3 == 1:
        columns["phone"] = pa.array([rng.choice([1.5, None, -0.0, float("nan")]) for _ in range(n)])
        columns["madid"] = pa.array([rng.choice([True, False, None]) for _ in range(n)])
    elif seed % 3 == 2:
        columns["id"] = pa.array([rng.choice([0, -5, None]) for _ in range(n)], pa.int32())
        columns["madid"] = pa.nulls(n)
    p = printer()
    reference = listed(columns)
    some = sorted(rng.sample(range(n), 123))
    for rows in (list(range(n)), some, [], [n - 1, 0, 5, 5]):
        assert p.prints(columns, rows) == p.reference(reference, rows)
    # a slice of each column (an offset into its buffers) prints as its values
    sliced = {name: c.slice(17, 200) for name, c in columns.items()}
    assert p.prints(sliced, range(200)) == p.reference(listed(sliced), range(200))
    assert p.prints(sliced, some[:40]) == p.reference(listed(sliced), some[:40])


def test_no_column_present_prints_every_row_alike() -> None:
    p = printer()
    assert p.prints({}, range(3)) == p.reference({}, range(3))
    assert len(set(p.prints({}, range(3)))) == 1


def test_the_text_of_a_row_is_encoded_once_for_every_platform() -> None:
    columns = {"id": ["a", "b"], "email": ["x@y.org", None]}
    meta, other = printer("meta"), printer("other")
    texts = row_texts(columns, meta.columns, range(2))
    assert meta.hashed(texts) == meta.reference(columns, range(2))
    assert other.hashed(texts) == other.reference(columns, range(2))
    assert meta.hashed(texts) != other.hashed(texts)  # keyed with the platform
