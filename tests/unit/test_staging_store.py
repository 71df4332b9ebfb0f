"""Staging on an object store that has no local path: an fsspec memory filesystem attached to Airflow's
``ObjectStoragePath`` (``airflow.sdk.io.store.attach``), standing in for ``s3://`` or ``gs://``."""

from __future__ import annotations

from collections.abc import Iterator

import fsspec
import pytest
from airflow.sdk.io.store import attach

from audience_sync.core.delta import StagedGroup
from audience_sync.core.extract import extract_and_stage, read_member_ids
from audience_sync.core.keys import StateKeys
from audience_sync.core.partitions import partition_chunks
from audience_sync.operators.staging import (
    RUN_MARKER,
    arrow_filesystem,
    location,
    merge_extracts,
    open_staged,
    prune_staging,
    remove,
    staging_dir,
    url_on,
)
from audience_sync.operators.sync import revoked_members, staged_group

KEYS = StateKeys.generate()
ROOT = "memory://bucket/audience-sync"


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[fsspec.AbstractFileSystem]:
    fs = fsspec.filesystem("memory")
    attach("memory", fs=fs)
    monkeypatch.setenv("AUDIENCE_SYNC_STAGING_URL", ROOT)
    yield fs
    for path in ("/bucket", "/whole"):
        if fs.exists(path):
            fs.rm(path, recursive=True)


def _rows(n: int) -> list[dict[str, object]]:
    return [
        {"id": f"k{i % (n - 20)}", "email": f"user{i}@example.com", "consent": "no" if i % 13 == 0 else "yes"}
        for i in range(n)
    ]


def test_partitions_staged_on_an_object_store_read_back_as_one_group(
    store: fsspec.AbstractFileSystem,
) -> None:
    run = staging_dir("ads_audience__x", "manual__2026-11-20T00:00:00+00:00")
    assert str(run) == f"{ROOT}/ads_audience__x/manual__2026-11-20T00_00_00_00_00"
    rows = _rows(300)
    args = {"key": "id", "identifiers": {"email": "email"}, "platforms": ["meta"], "keys": KEYS}
    xcoms = []
    for i in range(2):
        out = run / f"part-{i}"
        fs, path = arrow_filesystem(out)
        counts = extract_and_stage(
            partition_chunks([rows], "id", i, 2),
            staging_dir=path,
            filesystem=fs,
            consent_column="consent",
            **args,
        ).as_dict()
        for s in counts["staged"].values():
            s["url"] = url_on(out, s["path"])
        counts["no_consent_url"] = url_on(out, counts["no_consent_path"])
        counts.update(run_url=str(run), partition=[i, 2])
        xcoms.append(counts)
    assert store.exists(
        "/bucket/audience-sync/ads_audience__x/manual__2026-11-20T00_00_00_00_00/part-1/meta/f.parquet"
    )

    merged = merge_extracts(list(reversed(xcoms)))  # XCom order does not matter
    assert merged["staged"]["meta"]["urls"] == [
        f"{run}/part-0/meta",
        f"{run}/part-1/meta",
    ]
    assert merged["duplicates"] == 20 and merged["rows"] == 300
    whole = extract_and_stage(
        [rows], staging_dir="/whole", filesystem=arrow_filesystem(run)[0], consent_column="consent", **args
    )
    assert merged["valid"] == whole.valid and merged["excluded_no_consent"] == whole.excluded_no_consent
    group = staged_group(merged["staged"]["meta"])
    assert group.size == whole.staged["meta"]["rows"] == merged["staged"]["meta"]["rows"]
    expected = StagedGroup(whole.staged["meta"]["path"], filesystem=arrow_filesystem(run)[0])
    assert group.slice("a").sort_by("member_id").equals(expected.slice("a").sort_by("member_id"))
    revoked = revoked_members(merged)
    assert len(revoked) == merged["excluded_no_consent"] > 0
    assert sorted(revoked) == sorted(read_member_ids(whole.no_consent_path, arrow_filesystem(run)[0]))
    fs, paths = open_staged(merged["staged"]["meta"]["urls"])
    assert fs is not None and paths[0].startswith("/bucket/")

    remove(location(merged["run_url"]))
    assert not store.exists("/bucket/audience-sync/ads_audience__x/manual__2026-11-20T00_00_00_00_00")


def test_prune_on_an_object_store(store: fsspec.AbstractFileSystem) -> None:
    states = {"r_running": "running", "r_done": "success", "r_failed": "failed", "r_unknown": None}
    for run in (*states, "r_mine"):
        d = staging_dir("dag_x", run)
        d.mkdir(parents=True, exist_ok=True)
        (d / RUN_MARKER).write_text(run)
        (d / "meta").mkdir(parents=True, exist_ok=True)
        (d / "meta" / "0.parquet").write_text("x")
    unmarked = staging_dir("dag_x", "legacy")  # an object store cannot say how old it is: it stays
    (unmarked / "meta").mkdir(parents=True, exist_ok=True)
    (unmarked / "meta" / "0.parquet").write_text("x")
    dropped = prune_staging("dag_x", "r_mine", states.get)
    assert sorted(p.name for p in dropped) == ["r_done", "r_failed"]
    left = sorted(p.name for p in staging_dir("dag_x", "r_mine").parent.iterdir())
    assert left == ["legacy", "r_mine", "r_running", "r_unknown"]
