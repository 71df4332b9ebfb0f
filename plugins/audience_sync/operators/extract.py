"""Extract task: read the audience group, hash per platform, stage hashes (unhashed identifiers encrypted)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook, BaseOperator

from audience_sync.core.extract import CHUNK_ROWS, extract_and_stage
from audience_sync.hooks.state import DEFAULT_CONN_ID, AudienceSyncStateHook, airflow_home

if TYPE_CHECKING:
    from airflow.sdk import Context


def staging_dir(dag_id: str, run_id: str) -> Path:
    """Where one run stages its hashed members: ``$AIRFLOW_HOME/audience_sync/staging/<dag>/<run>``."""
    safe_run = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)
    return airflow_home() / "audience_sync" / "staging" / dag_id / safe_run


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
    :param state_conn_id: the state database connection, whose keys make member ids and encrypt
        identifiers sent unhashed.
    :return: counts (rows, valid, invalid by reason, excluded) and the staged file of each platform.
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
        chunk_rows: int = CHUNK_ROWS,
        state_conn_id: str = DEFAULT_CONN_ID,
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

    def execute(self, context: Context) -> dict[str, Any]:
        out = staging_dir(self.dag_id, context["run_id"])
        # the store's keys, not the hook's: opening the store checks them against the state database,
        # so a worker with the wrong key fails here instead of staging ids no ledger row matches
        keys = AudienceSyncStateHook(self.state_conn_id).store.keys
        assert keys is not None  # noqa: S101 - the hook always opens the store with keys
        counts = extract_and_stage(
            self._chunks(),
            key=self.key,
            identifiers=self.identifiers,
            platforms=self.platforms,
            staging_dir=out,
            keys=keys,
            default_country=self.default_country,
            consent_column=self.consent_column,
        )
        result = counts.as_dict()
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

    def _chunks(self) -> Iterator[list[dict[str, Any]]]:
        return read_group(self.source_path, self.sql, self.conn_id, self.chunk_rows)


def read_group(
    source_path: str | None, sql: str | None, conn_id: str | None, chunk_rows: int = CHUNK_ROWS
) -> Iterator[list[dict[str, Any]]]:
    """Yield the audience group in chunks of row dicts, from a CSV/Parquet list or a SQL query."""
    if sql is not None:
        yield from _sql_chunks(sql, str(conn_id), chunk_rows)
        return
    path = Path(str(source_path))
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
            yield batch.to_pylist()
    else:
        import pandas as pd

        for frame in pd.read_csv(path, dtype=str, chunksize=chunk_rows, keep_default_na=False):
            yield frame.to_dict("records")


def _sql_chunks(sql: str, conn_id: str, chunk_rows: int) -> Iterator[list[dict[str, Any]]]:
    hook = BaseHook.get_connection(conn_id).get_hook()
    conn = hook.get_conn()
    try:
        cur = conn.cursor()
        cur.execute(sql)
        names = [d[0] for d in cur.description]
        while True:
            rows = cur.fetchmany(chunk_rows)
            if not rows:
                break
            yield [dict(zip(names, r, strict=True)) for r in rows]
        cur.close()
    finally:
        conn.close()
