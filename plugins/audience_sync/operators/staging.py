"""Where a run's hashed members are staged: Airflow ``ObjectStoragePath`` URLs, readable by any worker.

The root is the ``AUDIENCE_SYNC_STAGING_URL`` setting (default ``file://$AIRFLOW_HOME/audience_sync/staging``;
``s3://…`` or ``gs://…`` in a deployment whose tasks run on several machines), opened with the
``AUDIENCE_SYNC_STAGING_CONN_ID`` connection's credentials. Layout::

    <staging url>/<dag_id>/<run>/.run_id                     the run's real id (the folder name is sanitised)
    <staging url>/<dag_id>/<run>/<platform>/<0-f>.parquet    one extraction task
    <staging url>/<dag_id>/<run>/no_consent.parquet
    <staging url>/<dag_id>/<run>/part-<i>/<platform>/…       partition i of a partitioned extraction

Tasks hand each other URLs (XCom), never local paths; the pure core reads and writes through a
``pyarrow`` filesystem made from the path's fsspec filesystem.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyarrow.fs as pafs
from airflow.sdk import ObjectStoragePath

from audience_sync.core.settings import settings

#: file in a run's staging folder holding its real run id (the folder name is a sanitised one)
RUN_MARKER = ".run_id"

#: run states after which a run's staged files are no longer read (unless someone clears a task)
FINISHED = ("success", "failed")

#: a folder without a marker (staged by an older version) is dropped once it is this old
UNMARKED_MAX_AGE_SECONDS = 7 * 24 * 3600

#: counts of an extraction that add up over partitions
SUMMED = ("rows", "valid", "invalid", "duplicates", "missing_key", "excluded_no_consent")


def location(url: str) -> ObjectStoragePath:
    """An ``ObjectStoragePath`` of a staging URL, with the staging connection's credentials."""
    return ObjectStoragePath(url, conn_id=settings().staging_conn_id)


def staging_root() -> ObjectStoragePath:
    return location(settings().staging)


def staging_dir(dag_id: str, run_id: str) -> ObjectStoragePath:
    """Where one run stages its hashed members: ``<staging url>/<dag>/<run>``."""
    safe_run = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)
    return staging_root() / dag_id / safe_run


def arrow_filesystem(path: ObjectStoragePath) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of a path (its fsspec filesystem, wrapped) and the path on it."""
    return pafs.PyFileSystem(pafs.FSSpecHandler(path.fs)), path.path


def url_on(folder: ObjectStoragePath, fs_path: str) -> str:
    """The URL of ``fs_path``, a path on ``folder``'s filesystem at or below ``folder``."""
    relative = fs_path[len(folder.path) :].strip("/")
    return str(folder / relative) if relative else str(folder)


def remove(path: ObjectStoragePath) -> None:
    """Delete a staged folder (or file) and everything under it; nothing when it is gone."""
    if path.exists():
        path.fs.rm(path.path, recursive=True)


def merge_extracts(value: Any) -> dict[str, Any]:
    """One view of what the extraction staged: the extract task's XCom, or the list of a mapped
    extract's (one per partition), counts summed and staged locations listed.

    :return: the counts, ``staged: {platform: {urls, rows, schema}}``, ``no_consent_urls`` and
        ``run_url``; ``{}`` when nothing was extracted.
    """
    items = [v for v in (value if isinstance(value, list) else [value]) if v]
    if not items:
        return {}
    items.sort(key=lambda v: (v.get("partition") or [0])[0])
    out: dict[str, Any] = {k: sum(int(v.get(k, 0)) for v in items) for k in SUMMED}
    for k in ("invalid_by_reason", "field_errors"):
        total: Counter[str] = Counter()
        for v in items:
            total.update(v.get(k) or {})
        out[k] = dict(sorted(total.items()))
    out["workers"] = max(int(v.get("workers", 1)) for v in items)
    out["partitions"] = len(items)
    staged: dict[str, dict[str, Any]] = {}
    for v in items:
        for platform, s in (v.get("staged") or {}).items():
            entry = staged.setdefault(platform, {"urls": [], "rows": 0, "schema": s["schema"]})
            entry["urls"].append(s.get("url") or _file_url(s["path"]))
            entry["rows"] += int(s["rows"])
    out["staged"] = staged
    out["no_consent_urls"] = [
        v.get("no_consent_url") or _file_url(v["no_consent_path"]) for v in items if v.get("no_consent_path")
    ]
    out["run_url"] = items[0].get("run_url")
    out["merged"] = True
    return out


def _file_url(path: str) -> str:
    """A local path in the XCom of an extraction from before staging URLs."""
    return path if "://" in path else f"file://{path}"


def open_staged(urls: Sequence[str]) -> tuple[pafs.FileSystem | None, list[str]]:
    """The pyarrow filesystem of staged URLs (all on one staging root) and their paths on it."""
    if not urls:
        return None, []
    paths = [location(u) for u in urls]
    fs, _ = arrow_filesystem(paths[0])
    return fs, [p.path for p in paths]


def prune_staging(
    dag_id: str, run_id: str, run_state: Callable[[str], str | None]
) -> list[ObjectStoragePath]:
    """Delete the staging folders other runs of this DAG left behind (killed or failed runs).

    ``record_metrics`` deletes a run's files when every sync succeeded; a run that was killed or failed
    leaves them, hashes of the whole group, in the staging store. A folder is only deleted when its run is
    finished (``run_state`` says success or failed): a concurrent run (a backfill runs several at once)
    still needs its files. A later clear of just that old run's sync task then fails with a clear
    message. A folder without a marker goes once it is old; where the store cannot say how old (object
    stores have no folders), it stays.

    :return: the folders deleted.
    """
    mine = staging_dir(dag_id, run_id)
    base = mine.parent
    if not base.is_dir():
        return []
    dropped: list[ObjectStoragePath] = []
    for folder in sorted(base.iterdir(), key=str):
        if folder.name == mine.name or not folder.is_dir():
            continue
        marker = folder / RUN_MARKER
        if marker.exists():
            if run_state(marker.read_text().strip()) not in FINISHED:
                continue
        else:
            modified = _mtime(folder)
            if modified is None or time.time() - modified < UNMARKED_MAX_AGE_SECONDS:
                continue
        remove(folder)
        dropped.append(folder)
    return dropped


def _mtime(path: ObjectStoragePath) -> float | None:
    value = path.fs.info(path.path).get("mtime")
    if isinstance(value, dt.datetime):
        return value.timestamp()
    return float(value) if isinstance(value, int | float) else None


def require_urls(merged: Mapping[str, Any], platform: str) -> list[str]:
    """Every staged URL a sync of ``platform`` reads (its parts and the no-consent lists)."""
    return [*merged["staged"][platform]["urls"], *merged.get("no_consent_urls", [])]
