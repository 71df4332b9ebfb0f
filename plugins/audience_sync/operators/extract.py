"""Extract task: read the audience group, hash per platform, stage hashes (unhashed identifiers encrypted)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
from airflow.sdk import BaseHook, BaseOperator

from audience_sync import sources
from audience_sync.core.extract import extract_and_stage
from audience_sync.core.fingerprints import known_in_background
from audience_sync.core.partitions import choose_count, partition_chunks
from audience_sync.core.settings import settings
from audience_sync.hooks.state import DEFAULT_CONN_ID, AudienceSyncStateHook
from audience_sync.operators.staging import (
    FINISHED,
    RUN_MARKER,
    UNMARKED_MAX_AGE_SECONDS,
    arrow_filesystem,
    prune_staging,
    remove,
    staging_dir,
    url_on,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = [
    "FINISHED",
    "RUN_MARKER",
    "UNMARKED_MAX_AGE_SECONDS",
    "ExtractAudienceOperator",
    "PartitionGroupOperator",
    "prune_staging",
    "read_group",
    "staging_dir",
]


class ExtractAudienceOperator(BaseOperator):
    """Read the audience group (CSV/Parquet list or SQL query) and stage per-platform hashes.

    :param source_path: a ``.csv`` or ``.parquet`` file (templated), for ``list:`` groups.
    :param sql: the query text (templated, e.g. ``{{ data_interval_end }}``), for ``sql:`` groups.
    :param conn_id: the Airflow connection the query runs on (any DB-API hook).
    :param key: the stable member key column.
    :param identifiers: identifier type -> column.
    :param platforms: the platforms to hash for.
    :param default_country: region used when a row has no country.
    :param consent_column: optional column; rows without explicit consent are excluded.
    :param chunk_rows: rows read and hashed at a time (default: the ``AUDIENCE_SYNC_CHUNK_ROWS`` setting,
        read when the task runs).
    :param state_conn_id: the state database connection, whose keys make member ids and encrypt
        identifiers sent unhashed.
    :param partition: ``[index, count]``: extract only the rows of that partition of the group (a
        stable hash of the member key, see ``core/partitions.py``) into ``<run>/part-<index>``; set by
        dynamic task mapping. None: the whole group, into the run's folder.
    :return: counts (rows, valid, invalid by reason, excluded) and the staged folder of each platform
        (``path`` on the staging filesystem and its ``url``).
    """

    template_fields: Sequence[str] = ("source_path", "sql")
    template_fields_renderers = {"sql": "sql"}
    ui_color = "#e8f4ea"

    def __init__(
        self,
        *,
        key: str,
        identifiers: Mapping[str, str],
        platforms: Sequence[str],
        source_path: str | None = None,
        sql: str | None = None,
        conn_id: str | None = None,
        default_country: str | None = None,
        consent_column: str | None = None,
        chunk_rows: int | None = None,
        state_conn_id: str = DEFAULT_CONN_ID,
        partition: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (source_path is None) == (sql is None):
            raise ValueError("give exactly one of source_path or sql")
        if sql is not None and not conn_id:
            raise ValueError("sql needs conn_id")
        self.source_path = source_path
        self.sql = sql
        self.conn_id = conn_id
        self.key = key
        self.identifiers = dict(identifiers)
        self.platforms = list(platforms)
        self.default_country = default_country
        self.consent_column = consent_column
        self.chunk_rows = chunk_rows
        self.state_conn_id = state_conn_id
        self.partition = list(partition) if partition is not None else None
        if self.partition is not None and not (
            len(self.partition) == 2 and 0 <= self.partition[0] < self.partition[1]
        ):
            raise ValueError(f"partition must be [index, count] with 0 <= index < count, not {partition}")

    def execute(self, context: Context) -> dict[str, Any]:
        run_id = context["run_id"]
        index, count = self.partition or (0, 1)
        if index == 0:  # one task of the run prunes
            dropped = prune_staging(self.dag_id, run_id, lambda rid: self._run_state(context, rid))
            if dropped:
                self.log.info("removed staged files of %d finished earlier run(s) of this DAG", len(dropped))
        run = staging_dir(self.dag_id, run_id)
        run.mkdir(parents=True, exist_ok=True)
        (run / RUN_MARKER).write_text(run_id)
        out = run
        if self.partition is not None:
            out = run / f"part-{index}"
            remove(out)  # a retried partition starts afresh
            self.log.info("partition %d of %d: the rows whose member key hashes to it", index, count)
        fs, out_path = arrow_filesystem(out)
        # the store's keys, not the hook's: opening the store checks them against the state database,
        # so a worker with the wrong key fails here instead of staging ids no ledger row matches
        store = AudienceSyncStateHook(self.state_conn_id).store
        keys = store.keys
        assert keys is not None  # noqa: S101 - the hook always opens the store with keys
        chunks = self._chunks()
        if count > 1:
            chunks = partition_chunks(chunks, self.key, index, count)
        # rows whose raw values are unchanged since their audience's last sync are not hashed again; their
        # fingerprints are read while the worker processes start
        known = known_in_background(store, self._targets(context))
        counts = extract_and_stage(
            chunks,
            key=self.key,
            identifiers=self.identifiers,
            platforms=self.platforms,
            staging_dir=out_path,
            keys=keys,
            default_country=self.default_country,
            consent_column=self.consent_column,
            filesystem=fs,
            known=known,
        )
        result = counts.as_dict()
        for staged in result["staged"].values():
            staged["url"] = url_on(out, staged["path"])
        result["no_consent_url"] = url_on(out, str(result["no_consent_path"]))
        result["run_url"] = str(run)
        result["partition"] = self.partition
        self.log.info(
            "Audience group: %s rows, %s valid, %s invalid %s, %s duplicate keys, %s excluded (no consent)",
            counts.rows,
            counts.valid,
            counts.invalid,
            result["invalid_by_reason"],
            counts.duplicates,
            counts.excluded_no_consent,
        )
        if counts.field_errors:
            self.log.info("Identifier problems (rows may still be usable): %s", result["field_errors"])
        return result

    def _targets(self, context: Context) -> list[tuple[str, str, str]]:
        """(platform, account, segment name) of each sync task of this DAG."""
        from audience_sync.operators.sync import SyncAudienceOperator

        return [
            (t.platform, t.account, t.segment_name)
            for t in context["dag"].tasks
            if isinstance(t, SyncAudienceOperator)
        ]

    def _chunks(self) -> Iterator[list[dict[str, Any]]]:
        return read_group(self.source_path, self.sql, self.conn_id, self.chunk_rows)

    def _run_state(self, context: Context, run_id: str) -> str | None:
        """The state of another run of this DAG, or None when Airflow cannot say (then its files stay)."""
        try:
            state = context["ti"].get_dagrun_state(self.dag_id, run_id)
            return str(getattr(state, "value", state))  # the SDK's enum prints as DagRunState.FAILED
        except Exception as exc:  # a deleted run, an API hiccup: keeping files is the safe side
            self.log.info("state of run %s unknown (%s); keeping its staged files", run_id, exc)
            return None


def read_group(
    source_path: str | None, sql: str | None, conn_id: str | None, chunk_rows: int | None = None
) -> Iterator[Any]:
    """The audience group in chunks (see :func:`audience_sync.sources.read_group`), SQL through ``conn_id``."""
    connect = (
        (lambda: BaseHook.get_connection(str(conn_id)).get_hook().get_conn()) if sql is not None else None
    )
    return sources.read_group(source_path, sql, connect, chunk_rows)


class PartitionGroupOperator(BaseOperator):
    """For ``partitions: auto``: count the group cheaply and return the partitions to extract.

    A list's rows are counted from the file (Parquet metadata, CSV line breaks); a query's with
    ``SELECT COUNT(*)`` around it on the source connection (reading the group once when the database
    refuses that). One partition per ``AUDIENCE_SYNC_PARTITION_ROWS`` rows begun, at most
    ``AUDIENCE_SYNC_MAX_PARTITIONS``.

    :return: ``[[0, n], [1, n], …]``: the ``partition`` argument of each mapped extract task.
    """

    template_fields: Sequence[str] = ("source_path", "sql")
    template_fields_renderers = {"sql": "sql"}
    ui_color = "#e8f4ea"

    def __init__(
        self,
        *,
        source_path: str | None = None,
        sql: str | None = None,
        conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (source_path is None) == (sql is None):
            raise ValueError("give exactly one of source_path or sql")
        self.source_path = source_path
        self.sql = sql
        self.conn_id = conn_id

    def execute(self, context: Context) -> list[list[int]]:
        rows = count_file_rows(Path(str(self.source_path))) if self.sql is None else self._count_query()
        s = settings()
        count = choose_count(rows, s.partition_rows, s.max_partitions)
        self.log.info(
            "audience group of about %d rows: %d partition(s) (%d rows each, at most %d)",
            rows,
            count,
            s.partition_rows,
            s.max_partitions,
        )
        return [[i, count] for i in range(count)]

    def _count_query(self) -> int:
        hook = BaseHook.get_connection(str(self.conn_id)).get_hook()
        query = str(self.sql).strip().rstrip(";")
        try:
            return int(hook.get_first(f"SELECT COUNT(*) FROM (\n{query}\n) audience_group")[0])
        except Exception as exc:  # a dialect that refuses the subquery: read the group once
            self.log.warning("could not count the group with COUNT(*) (%s); reading it to count", exc)
            return sum(_rows(chunk) for chunk in read_group(None, self.sql, self.conn_id))


def count_file_rows(path: Path) -> int:
    """Rows of a list file: Parquet from its metadata, CSV by its line breaks (less the header; a quoted
    line break counts too, which only matters for choosing a partition count)."""
    if path.suffix.lower() == ".parquet":
        return int(pq.ParquetFile(path).metadata.num_rows)
    lines, last = 0, b"\n"
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"  # a last line without a line break
    return max(0, lines - 1)


def _rows(chunk: Any) -> int:
    if hasattr(chunk, "num_rows"):
        return int(chunk.num_rows)
    if isinstance(chunk, Mapping):
        return len(next(iter(chunk.values()))) if chunk else 0
    return len(chunk)
