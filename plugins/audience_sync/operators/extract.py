"""Extract task: read the audience group, hash per platform, stage hashes (unhashed identifiers encrypted)."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook, BaseOperator

from audience_sync import sources
from audience_sync.core.extract import extract_and_stage
from audience_sync.core.fingerprints import known_for_targets
from audience_sync.hooks.state import DEFAULT_CONN_ID, AudienceSyncStateHook, airflow_home

if TYPE_CHECKING:
    from airflow.sdk import Context


#: file in a run's staging folder holding its real run id (the folder name is a sanitised one)
RUN_MARKER = ".run_id"

#: run states after which a run's staged files are no longer read (unless someone clears a task)
FINISHED = ("success", "failed")

#: a folder without a marker (staged by an older version) is dropped once it is this old
UNMARKED_MAX_AGE_SECONDS = 7 * 24 * 3600


def staging_dir(dag_id: str, run_id: str) -> Path:
    """Where one run stages its hashed members: ``$AIRFLOW_HOME/audience_sync/staging/<dag>/<run>``."""
    safe_run = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)
    return airflow_home() / "audience_sync" / "staging" / dag_id / safe_run


def prune_staging(dag_id: str, run_id: str, run_state: Callable[[str], str | None]) -> list[Path]:
    """Delete the staging folders other runs of this DAG left behind (killed or failed runs).

    ``record_metrics`` deletes a run's files when every sync succeeded; a run that was killed or failed
    leaves them, hashes of the whole group, on disk. A folder is only deleted when its run is finished
    (``run_state`` says success or failed): a concurrent run (a backfill runs several at once) still
    needs its files. A later clear of just that old run's sync task then fails with a clear message.

    :return: the folders deleted.
    """
    base = staging_dir(dag_id, run_id).parent
    mine = staging_dir(dag_id, run_id)
    if not base.is_dir():
        return []
    dropped: list[Path] = []
    for folder in sorted(base.iterdir()):
        if not folder.is_dir() or folder == mine:
            continue
        marker = folder / RUN_MARKER
        if marker.exists():
            if run_state(marker.read_text().strip()) not in FINISHED:
                continue
        elif time.time() - folder.stat().st_mtime < UNMARKED_MAX_AGE_SECONDS:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        dropped.append(folder)
    return dropped


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
        chunk_rows: int | None = None,
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
        run_id = context["run_id"]
        dropped = prune_staging(self.dag_id, run_id, lambda rid: self._run_state(context, rid))
        if dropped:
            self.log.info("removed staged files of %d finished earlier run(s) of this DAG", len(dropped))
        out = staging_dir(self.dag_id, run_id)
        out.mkdir(parents=True, exist_ok=True)
        (out / RUN_MARKER).write_text(run_id)
        # the store's keys, not the hook's: opening the store checks them against the state database,
        # so a worker with the wrong key fails here instead of staging ids no ledger row matches
        store = AudienceSyncStateHook(self.state_conn_id).store
        keys = store.keys
        assert keys is not None  # noqa: S101 - the hook always opens the store with keys
        # rows whose raw values are unchanged since their audience's last sync are not hashed again
        known = known_for_targets(store, self._targets(context))
        counts = extract_and_stage(
            self._chunks(),
            key=self.key,
            identifiers=self.identifiers,
            platforms=self.platforms,
            staging_dir=out,
            keys=keys,
            default_country=self.default_country,
            consent_column=self.consent_column,
            known=known,
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
