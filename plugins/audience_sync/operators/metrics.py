"""Metrics task: one row per (run, destination) in the metrics table."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from audience_sync.core.ledger import COUNT_KEYS, utcnow
from audience_sync.hooks.state import DEFAULT_CONN_ID, AudienceSyncStateHook
from audience_sync.operators.context import run_date
from audience_sync.operators.extract import RUN_MARKER

if TYPE_CHECKING:
    from airflow.sdk import Context


class RecordMetricsOperator(BaseOperator):
    """Write the counts of every sync task of this run into the metrics table (an upsert: safe to repeat).

    Runs whatever happened upstream (``trigger_rule=all_done``). A sync task that left no result is
    recorded with outcome ``failed`` and the counts the ledger holds for its audience; this task then
    fails too, so the run is not shown green.

    :param destinations: one dict per sync task: ``task_id``, ``platform``, ``account``, ``segment_name``.
    """

    template_fields: Sequence[str] = ()

    def __init__(
        self,
        *,
        destinations: Sequence[dict[str, str]],
        state_conn_id: str = DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        self.destinations = [dict(d) for d in destinations]
        self.state_conn_id = state_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        store = AudienceSyncStateHook(self.state_conn_id).store
        ti = context["ti"]
        run_id = context["run_id"]
        logical: dt.datetime | None = run_date(context)
        extracted = ti.xcom_pull(task_ids="extract") or {}
        failed: list[str] = []
        summary: dict[str, Any] = {}
        for d in self.destinations:
            result = ti.xcom_pull(task_ids=d["task_id"])
            dest_key = f"{d['platform']}:{d['account']}"
            row: dict[str, Any] = {
                "dag_id": self.dag_id,
                "run_id": run_id,
                "destination": dest_key,
                "segment_name": d["segment_name"],
                "logical_date": logical,
            }
            if result:
                row.update({k: int(result.get(k, 0)) for k in COUNT_KEYS})
                row.update(
                    audience_id=result.get("audience_id"),
                    requests=int(result.get("requests", 0)),
                    started_at=_ts(result.get("started_at")),
                    finished_at=_ts(result.get("finished_at")),
                    outcome="success_backfill" if result.get("backfill") else "success",
                    note="; ".join(result.get("notes") or []) or None,
                )
            else:
                failed.append(d["task_id"])
                entry = store.get_registry(d["platform"], d["account"], d["segment_name"])
                counts = store.ledger_counts(entry.id) if entry else {}
                row.update({k: int(counts.get(k, 0)) for k in COUNT_KEYS})
                row.update(
                    audience_id=entry.audience_id if entry else None,
                    invalid=int(extracted.get("invalid", 0)),
                    finished_at=utcnow(),
                    outcome="failed",
                    note=f"task {d['task_id']} did not finish; counts read from the ledger",
                )
                row["total"] = sum(
                    int(counts.get(k, 0)) for k in ("sent", "in_progress", "pending", "failed")
                )
            store.write_metrics(row)
            summary[dest_key] = {k: row.get(k) for k in (*COUNT_KEYS, "requests", "outcome", "audience_id")}
            self.log.info("metrics %s: %s", dest_key, summary[dest_key])
        if failed:
            raise AirflowFailException(
                f"Sync task(s) {', '.join(failed)} failed; their metrics were recorded as 'failed'. "
                "See those tasks' logs for the platform error and what to do."
            )
        self._drop_staging(extracted)
        return summary

    def _drop_staging(self, extracted: dict[str, Any]) -> None:
        """Every destination is synced: the run's staged hashes are no longer needed."""
        paths = [Path(s["path"]) for s in (extracted.get("staged") or {}).values()]
        if extracted.get("no_consent_path"):
            paths.append(Path(extracted["no_consent_path"]))
        for p in paths:
            p.unlink(missing_ok=True)
        folders = {p.parent for p in paths}
        for folder in folders:
            (folder / RUN_MARKER).unlink(missing_ok=True)  # the extract's note of whose folder it is
            if folder.exists() and not any(folder.iterdir()):
                folder.rmdir()
        if paths:
            self.log.info("removed the run's staged files (%d)", len(paths))


def _ts(value: Any) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(str(value))
