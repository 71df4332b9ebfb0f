"""Extraction: the same staged group and counts whether chunks are hashed here or by worker processes."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from audience_sync.core.delta import StagedGroup
from audience_sync.core.extract import META_COLUMNS, PARTS, extract_and_stage, read_member_ids, staged_parts
from audience_sync.core.keys import StateKeys, payload_json
from audience_sync.core.normalize import RowHasher, get_rules
from tests.fixtures.metaclone import registered

KEYS = StateKeys.generate()
IDENTIFIERS = {"email": "email", "phone": "phone", "madid": "maid", "external_id": "ext", "country": "cc"}


def crm(n: int) -> list[dict[str, object]]:
    """Rows with every case extraction counts: valid, invalid, missing key, repeated key, no consent."""
    rows = []
    for i in range(n):
        rows.append(
            {
                "id": None if i % 97 == 5 else f"c{i % 450}",  # keys repeat after 450 rows
                "email": f"Person{i}@Example.com " if i % 13 else "not an email",
                "phone": f"+1 650 253 {i % 10000:04d}" if i % 3 else None,
                "maid": "6D92078A-8246-4BA4-AE5B-76104861E7DC" if i % 7 == 0 else None,
                "ext": f"crm-{i}" if i % 5 == 0 else "",
                "cc": "US" if i % 2 else "United States",
                "ok": "no" if i % 11 == 0 else "yes",
            }
        )
    return rows


def extract(rows: list[dict[str, object]], tmp: Path, workers: int, platforms=("meta",), chunk=64):
    chunks = [rows[i : i + chunk] for i in range(0, len(rows), chunk)]
    return extract_and_stage(
        chunks,
        key="id",
        identifiers=IDENTIFIERS,
        platforms=list(platforms),
        staging_dir=tmp,
        keys=KEYS,
        consent_column="ok",
        workers=workers,
    )


def staged(path: str) -> list[dict[str, str]]:
    """The staged rows, sealed values opened (a Fernet token differs at every encryption)."""
    table = pa.concat_tables(pq.read_table(p) for p in staged_parts(path))
    rows = [
        {**r, **KEYS.open_payload({k: v for k, v in r.items() if k not in META_COLUMNS})}
        for r in table.to_pylist()
    ]
    return sorted(rows, key=lambda r: r["member_id"])


def test_worker_processes_stage_exactly_what_one_process_stages(tmp_path: Path) -> None:
    rows = crm(1000)
    here = extract(rows, tmp_path / "one", workers=1)
    pool = extract(rows, tmp_path / "pool", workers=2)
    a, b = here.as_dict(), pool.as_dict()
    assert (a["workers"], b["workers"]) == (1, 2)
    for counts in (a, b):
        counts.pop("staged")
        counts.pop("no_consent_path")
        counts.pop("workers")
    assert a == b
    keyed = [r["id"] for r in rows if r["id"] is not None]
    assert a["duplicates"] == len(keyed) - len(set(keyed)) > 0
    assert a["missing_key"] == sum(r["id"] is None for r in rows) > 0
    assert a["excluded_no_consent"] > 0 and a["invalid"] > a["missing_key"]
    assert staged(here.staged["meta"]["path"]) == staged(pool.staged["meta"]["path"])
    assert sorted(read_member_ids(here.no_consent_path)) == sorted(read_member_ids(pool.no_consent_path))
    assert sorted(p.name for p in staged_parts(pool.staged["meta"]["path"])) == [
        f"{h}.parquet" for h in PARTS
    ]


def test_staged_rows_are_the_row_hasher_values_keyed_and_sealed(tmp_path: Path) -> None:
    rows = crm(300)
    counts = extract(rows, tmp_path, workers=2)
    hasher = RowHasher("meta", IDENTIFIERS, rules=get_rules("meta"))
    want: dict[str, tuple[str, ...]] = {}
    seen: set[object] = set()
    for row in rows:  # the first row of each key wins; staged if it has consent and is valid
        if row["id"] is None or row["id"] in seen:
            continue
        seen.add(row["id"])
        result = hasher.hash_row(row)
        if row["ok"] != "no" and result.valid:
            want[KEYS.member_id(row["id"])] = result.values
    sealed = pa.concat_tables(pq.read_table(p) for p in staged_parts(counts.staged["meta"]["path"]))
    assert all(v.startswith("gAAAA") for v in sealed["EXTERN_ID"].to_pylist() if v)  # Fernet tokens
    got = staged(counts.staged["meta"]["path"])
    assert {r["member_id"] for r in got} == set(want)
    schema = list(hasher.schema)
    for r in got:
        plain = want[r["member_id"]]
        assert r["row_hash"] == KEYS.row_hash(payload_json(schema, list(plain)))
        assert [r[k] for k in schema] == list(plain)


def test_a_platform_registered_at_run_time_is_hashed_in_this_process(tmp_path: Path) -> None:
    rows = crm(400)
    with registered():
        counts = extract(rows, tmp_path / "clone", workers=2, platforms=("metaclone",))
    reference = extract(rows, tmp_path / "meta", workers=1)
    assert counts.valid == reference.valid
    # the same rows and hashes; fingerprints differ, as they are keyed with the platform
    clone = [
        {k: v for k, v in r.items() if k != "fingerprint"} for r in staged(counts.staged["metaclone"]["path"])
    ]
    meta = [
        {k: v for k, v in r.items() if k != "fingerprint"} for r in staged(reference.staged["meta"]["path"])
    ]
    assert clone == meta


def test_the_staged_group_is_read_by_slice(tmp_path: Path) -> None:
    counts = extract(crm(1000), tmp_path, workers=1)
    group = StagedGroup(counts.staged["meta"]["path"])
    assert group.size == counts.staged["meta"]["rows"]
    whole = group.slice("")
    assert whole.num_rows == group.size
    assert sum(group.slice(h).num_rows for h in PARTS) == group.size
    for h in ("3", "a7"):
        assert all(m.startswith(h) for m in group.slice(h)["member_id"].to_pylist())


def test_a_chunk_stages_its_rows_sorted_by_member_id_with_the_row_hash_of_their_payload() -> None:
    from audience_sync.core.extract import _Hasher, _Spec

    identifiers = {**IDENTIFIERS, "first_name": "fn", "last_name": "ln", "zip": "zip"}
    rows = [
        {**r, "fn": "Zoë " if i % 2 else "Ann", "ln": "O'Neil", "zip": "94025" if i % 4 else " SW1A 1AA"}
        for i, r in enumerate(crm(500))
    ]
    platforms = ("meta",)  # the registered platform: hashed keys, and MADID / EXTERN_ID quoted and sealed
    spec = _Spec("id", identifiers, platforms, "US", "ok")
    hashed = _Hasher(spec, KEYS).hash(rows)
    for platform in platforms:
        table = hashed.staged[platform]
        ids = table["member_id"].to_pylist()
        assert ids == sorted(ids) and len(ids) > 100
        hasher = RowHasher(platform, identifiers, "US", rules=get_rules(platform))
        schema = list(hasher.schema)
        for r in table.to_pylist():
            plain = hasher.hash_row(rows[r["_row"]]).values
            assert r["member_id"] == KEYS.member_id(rows[r["_row"]]["id"])
            assert r["row_hash"] == KEYS.row_hash(payload_json(schema, list(plain))), platform
            assert KEYS.open_payload({k: r[k] for k in schema}) == dict(zip(schema, plain, strict=True))


def test_member_ids_sharing_their_first_bytes_are_sorted_by_the_whole_id() -> None:
    import numpy as np

    from audience_sync.core.extract import _by_member_id

    ids = ["ab" * 8 + "ff", "ab" * 8 + "00", "00" * 8 + "11", "ab" * 8 + "00"]
    prefixes = np.frombuffer(bytes.fromhex("".join(m[:16] for m in ids)), dtype=">u8")
    assert _by_member_id(ids, prefixes) == [2, 1, 3, 0]  # stable among equal ids
    same = ["ab" * 8 + "00", "00" * 8, "ab" * 8 + "00"]
    prefixes = np.frombuffer(bytes.fromhex("".join(m[:16] for m in same)), dtype=">u8")
    assert _by_member_id(same, prefixes) == [1, 0, 2]


def test_staged_text_columns_are_built_from_their_buffers_whatever_the_text() -> None:
    from audience_sync.core.extract import _text_array

    for values in (["", "ab" * 32, "x"], ["Zoë", "", "東京", "a"], []):
        assert _text_array(values).to_pylist() == values


def test_the_utf8_bytes_of_each_value_are_read_from_the_buffer_of_a_sliced_array_too() -> None:
    from audience_sync.core.extract import _text_array, _utf8_values

    values = ["", "ab", "Zoë", "東京", "x"]
    array = _text_array(values)
    assert [bytes(v) for v in _utf8_values(array)] == [v.encode() for v in values]
    assert [bytes(v) for v in _utf8_values(array.slice(2, 2))] == [v.encode() for v in values[2:4]]


def test_fingerprints_are_staged_as_their_hex() -> None:
    import os

    import pytest

    from audience_sync.core.extract import _hex_array

    prints = [os.urandom(16) for _ in range(5)]
    assert _hex_array(prints).to_pylist() == [p.hex() for p in prints]
    assert _hex_array([]).to_pylist() == []
    with pytest.raises(ValueError, match="16 bytes"):
        _hex_array([b"short"])
