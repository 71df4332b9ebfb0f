"""The file drop end to end without Airflow's scheduler: the sync engine and a real state database drive the
destination the hook builds from ``file_drop_default`` (a real ``ObjectStoragePath`` on local disk); the
files are read back as a consumer reads them and compared with the ledger."""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import itertools
import json
import re
from collections.abc import Iterable
from pathlib import Path

import pytest
from airflow.sdk import ObjectStoragePath
from airflow.sdk.io import attach
from fsspec.implementations.local import LocalFileSystem

from audience_sync.core.contract import upload_key
from audience_sync.core.errors import TransientDestinationError
from audience_sync.core.keys import StateKeys
from audience_sync.core.ledger import StateStore
from audience_sync.core.sync import RetryPolicy, SyncRequest, sync_audience
from audience_sync.destinations import build_destination
from audience_sync.destinations.file_drop import FileDropDestination
from audience_sync.destinations.file_drop_files import folder_name
from tests import file_drop_reader as reader

SCHEMA = ("email_sha256", "phone_sha256")
FAST = RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.05)
KEYS = StateKeys.generate()
SEGMENT = "loyal_users"
_runs = itertools.count(1)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def values(k: int, version: int = 0) -> list[str]:
    return [sha(f"e{k}v{version}"), "" if k % 7 == 0 else sha(f"p{k}")]


def rows(keys: Iterable[int], changed: Iterable[int] = ()) -> list[tuple[str, str, str]]:
    ch = set(changed)
    return [KEYS.staged_row(KEYS.member_id(k), SCHEMA, values(k, 1 if k in ch else 0)) for k in keys]


def ledger_view(store: StateStore, registry_id: int) -> set[frozenset[tuple[str, str]]]:
    """The members the ledger says are on the drop: every sent member's payload."""
    return {
        frozenset((k, v) for k, v in p.items() if v)
        for p in store.ledger_members(registry_id, "sent").values()
    }


class World:
    def __init__(self, tmp_path: Path, files: str, compression: str) -> None:
        self.store = StateStore(f"sqlite:///{tmp_path}/state.db", keys=KEYS)
        self.options = {"files": files, "compression": compression}

    def sync(self, staged: list, mode: str = "mirror") -> tuple[str, object]:
        run_id = f"scheduled__2026-11-{next(_runs):02d}T00:00:00+00:00"
        dest = build_destination("file_drop", "file_drop_default", "acme", self.options)
        req = SyncRequest(
            dag_id="dag_a",
            run_id=run_id,
            platform="file_drop",
            account="acme",
            segment_name=SEGMENT,
            schema=SCHEMA,
            mode=mode,
        )
        return run_id, sync_audience(dest, self.store, req, staged, retry=FAST)


@pytest.mark.parametrize(("files", "compression"), [("membership", "gzip"), ("changes", "none")])
def test_the_files_read_back_equal_the_ledger_run_after_run(
    drop: Path, tmp_path: Path, files: str, compression: str
) -> None:
    world = World(tmp_path, files, compression)
    segment = drop / "acme" / SEGMENT
    runs = []
    # run 1: 60 members; run 2: 10 leave, 20 join, 5 change identifiers; run 3: nothing changes
    for group in (
        rows(range(60)),
        rows(range(10, 80), changed=range(20, 25)),
        rows(range(10, 80), changed=range(20, 25)),
    ):
        run_id, outcome = world.sync(group)
        entry = world.store.get_registry("file_drop", "acme", SEGMENT)
        assert entry is not None and outcome.audience_id == entry.audience_id == SEGMENT
        # what a consumer rebuilds from the files (checksums verified) is what the ledger counts as sent
        assert reader.membership(segment) == ledger_view(world.store, entry.id)
        assert outcome.counts["sent"] == len(reader.membership(segment)) == outcome.counts["total"]
        assert outcome.counts["pending"] == outcome.counts["in_progress"] == 0  # a written file is sent
        runs.append((run_id, outcome))
    want = {
        frozenset((k, v) for k, v in zip(SCHEMA, values(i, 1 if 20 <= i < 25 else 0)) if v)
        for i in range(10, 80)
    }
    assert reader.membership(segment) == want

    manifests = {m["run"]: m for m in reader.manifests(segment)}
    assert set(manifests) == {runs[0][0], runs[1][0]}  # run 3 changed nothing: it wrote nothing
    first, second = manifests[runs[0][0]], manifests[runs[1][0]]
    for m, run_id in ((first, runs[0][0]), (second, runs[1][0])):
        assert (m["segment_name"], m["recipient"], m["run"], m["files_layout"]) == (
            SEGMENT,
            "acme",
            run_id,
            files,
        )
        assert m["columns"] == ["email_sha256", "phone_sha256", "madid_sha256", "external_id_sha256"]
        assert (
            m["hashing"]["algorithm"] == "sha256" and m["hashing"]["identifiers"]["email_sha256"] == "email"
        )
        assert m["folder"].name == folder_name(run_id)
    assert (first["counts"]["added"], first["counts"]["removed"]) == (60, 0)
    assert (second["counts"]["added"], second["counts"]["removed"]) == (25, 15)  # changed: removed, re-added
    ext = ".csv.gz" if compression == "gzip" else ".csv"
    if files == "membership":
        assert [f["name"] for f in second["files"]] == ["members" + ext]
        assert second["counts"]["members"] == second["files"][0]["rows"] == 70
    else:
        assert sorted(f["name"] for f in second["files"]) == ["adds" + ext, "removes" + ext]
        assert "members" not in second["counts"]
    # hashes only: every cell of every file is a SHA-256 or empty; no temporary or staged file is left
    for path in segment.rglob("*"):
        if path.is_file() and ".csv" in path.name:
            cells = [v for r in reader.read_rows(path) for v in r.values()]
            assert cells and all(re.fullmatch(r"[0-9a-f]{64}", v) for v in cells if v)
    leftovers = [p.name for p in segment.rglob(".*") if p.is_file()]
    assert leftovers == [] and list((segment / ".staging").iterdir()) == []


def test_a_replace_run_writes_the_whole_group(drop: Path, tmp_path: Path) -> None:
    world = World(tmp_path, "changes", "gzip")
    world.sync(rows(range(30)))
    run_id, outcome = world.sync(rows(range(20, 50)), mode="replace")
    segment = drop / "acme" / SEGMENT
    (m,) = [m for m in reader.manifests(segment) if m["run"] == run_id]
    assert [(f["name"], f["content"], f["rows"]) for f in m["files"]] == [("members.csv.gz", "members", 30)]
    assert reader.membership(segment) == ledger_view(
        world.store, world.store.get_registry("file_drop", "acme", SEGMENT).id
    )
    assert len(reader.membership(segment)) == outcome.counts["sent"] == 30


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino)
        for p in folder.rglob("*")
        if p.is_file()
    }


def _send(
    dest: FileDropDestination, audience_id: str, run_id: str, upload: int, members: Iterable[int]
) -> None:
    up = dest.open_upload(
        audience_id, "add", key=upload_key("dag_a", run_id, 1, "add", upload), estimated_total=0
    )
    dest.send_batch(up, 1, SCHEMA, [values(k) for k in members], last=True)
    dest.finish_upload(up, 1)


class FailingRename(LocalFileSystem):
    """A store on which every rename fails (an I/O error half-way through a commit)."""

    cachable = False

    def mv(self, *args: object, **kwargs: object) -> None:
        raise OSError(errno.EIO, "Input/output error")


def test_a_rerun_overwrites_its_own_files_atomically_and_never_another_runs(tmp_path: Path) -> None:
    base = tmp_path / "drop"
    dest = FileDropDestination(ObjectStoragePath(base.as_uri()), "acme")
    aud = dest.create_audience(SEGMENT, "")
    run_a, run_b = "manual__2026-11-01T00:00:00+00:00", "manual__2026-11-02T00:00:00+00:00"
    _send(dest, aud.id, run_a, 1, range(10))
    _send(dest, aud.id, run_b, 2, range(10, 20))
    runs = base / "acme" / SEGMENT / "runs"
    folder_a, folder_b = (runs / d.name for d in sorted(runs.iterdir()))
    before_a, before_b = _snapshot(folder_a), _snapshot(folder_b)

    # a rerun of run A whose commit fails half-way (the rename of its new members file): the old files stay
    attach("file", conn_id="file_drop_failing_rename", fs=FailingRename())
    failing = FileDropDestination(
        ObjectStoragePath(base.as_uri(), conn_id="file_drop_failing_rename"), "acme"
    )
    with pytest.raises(TransientDestinationError, match="errno 5"):
        _send(failing, aud.id, run_a, 3, range(20, 25))
    assert _snapshot(folder_a) == before_a and _snapshot(folder_b) == before_b
    assert not [p for p in runs.rglob(".*") if p.is_file()]  # the temporary file went too

    # the rerun of run A goes through: its own files are replaced (new inodes: renamed over), B's are untouched
    _send(dest, aud.id, run_a, 3, range(20, 25))
    after_a = _snapshot(folder_a)
    assert _snapshot(folder_b) == before_b
    assert set(after_a) == set(before_a) == {"manifest.json", "members.csv.gz"}
    for name in after_a:
        assert after_a[name][0] != before_a[name][0] and after_a[name][2] != before_a[name][2]
    (manifest,) = [m for m in reader.manifests(base / "acme" / SEGMENT) if m["run"] == run_a]
    assert [u["rows"] for u in manifest["uploads"]] == [10, 5]
    assert manifest["counts"] == {"added": 15, "removed": 0, "replaced": 0, "members": 25}
    assert not [p for p in runs.rglob(".*") if p.is_file()]


def test_the_same_rows_make_the_same_file(tmp_path: Path) -> None:
    """gzip without a timestamp and sorted rows: a rerun that writes the same membership writes the same
    bytes, so its checksum is stable and a consumer can skip what it already has."""
    digests = []
    for n in range(2):
        dest = FileDropDestination(ObjectStoragePath((tmp_path / f"d{n}").as_uri()), "acme")
        aud = dest.create_audience(SEGMENT, "")
        _send(dest, aud.id, "run", 1, reversed(range(50)) if n else range(50))
        (m,) = reader.manifests(tmp_path / f"d{n}" / "acme" / SEGMENT)
        digests.append(m["files"][0]["sha256"])
    assert digests[0] == digests[1]


def test_find_reads_the_segment_folder_among_many(tmp_path: Path) -> None:
    """A name is a folder: finding it reads that folder, whatever else the recipient holds."""
    dest = FileDropDestination(ObjectStoragePath(tmp_path.as_uri()), "acme")
    made = {
        name: dest.create_audience(name, "").id
        for name in ["vip", "VIP", "vip list", "vip_list", *map(str, range(40))]
    }
    assert len(set(made.values())) == len(made)
    for name in ("vip", "VIP", "vip list", "vip_list", "7"):
        assert [a.id for a in dest.find_audiences(name)] == [made[name]]
    assert dest.find_audiences("vi") == []
    assert dest.get_audience(made["VIP"]).name == "VIP"


def test_creating_writes_the_segments_audience_file(tmp_path: Path) -> None:
    dest = FileDropDestination(ObjectStoragePath(tmp_path.as_uri()), "acme")
    before = int(dt.datetime.now(dt.UTC).timestamp())
    aud = dest.create_audience(SEGMENT, "a description")
    assert aud.created_time >= before and aud.size == 0
    about = json.loads((tmp_path / "acme" / SEGMENT / "audience.json").read_text())
    assert (about["name"], about["description"]) == (SEGMENT, "a description")
