"""Outcome policy: which failures Airflow retries or fails fast, and what a run's metrics row says."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from audience_sync.core.errors import AudienceSyncError, PermanentDestinationError, TransientDestinationError
from audience_sync.core.ledger import COUNT_KEYS, RUN_KEYS, LeaseLost, LockTimeout, utcnow

#: failures a task retry can fix: the platform or the lock may be free next time
RETRYABLE = (TransientDestinationError, LockTimeout)


def as_airflow_error(exc: Exception) -> Exception:
    """Permanent platform errors fail the task at once (a retry cannot help); transient ones, a busy
    audience and a lost lease let Airflow retry; other audience-sync errors fail; anything else is left."""
    if isinstance(exc, PermanentDestinationError):
        return AirflowFailException(str(exc))
    if isinstance(exc, LeaseLost):  # another run or a later try of this task is uploading now
        return AirflowException(f"{exc}. This try stopped so two uploads never interleave.")
    if isinstance(exc, RETRYABLE):
        return AirflowException(f"{exc} (Airflow will retry the task)")
    if isinstance(exc, AudienceSyncError):
        return AirflowFailException(str(exc))
    return exc


def metrics_row(
    base: Mapping[str, Any],
    result: Mapping[str, Any] | None,
    waited: Mapping[str, Any] | None,
    ledger_counts: Mapping[str, int] | None,
    *,
    extract_invalid: int,
) -> dict[str, Any]:
    """The metrics row of one destination in one run.

    :param result: the sync task's result (None when it did not finish). When the platform refused to
        apply an upload (``result["refused"]``, e.g. ``segment_too_small``), that is the outcome.
    :param waited: the processing wait task's final counts, and the audience's size and match rate as the
        platform reported them (None when it did not finish).
    :param ledger_counts: the audience's ledger counts, read when a task did not finish.
    """
    row: dict[str, Any] = dict(base)
    if result:
        row.update({k: int(result.get(k, 0)) for k in COUNT_KEYS})
        run = result.get("run") or {}
        row.update({f"run_{k}": int(run.get(k, 0)) for k in RUN_KEYS})
        row.update(
            audience_id=result.get("audience_id"),
            requests=int(result.get("requests", 0)),
            started_at=_ts(result.get("started_at")),
            finished_at=_ts(result.get("finished_at")),
            note="; ".join(result.get("notes") or []) or None,
        )
        if waited:  # the platform processed everything: the snapshot after processing
            row.update(
                {k: int(waited.get(k, row.get(k, 0))) for k in ("sent", "in_progress", "pending", "failed")}
            )
            row.update(audience_size=waited.get("audience_size"), match_rate=waited.get("match_rate"))
            row["finished_at"] = utcnow()
            row["outcome"] = "success_backfill" if result.get("backfill") else "success"
        else:
            row["outcome"] = "processing"
            counts = ledger_counts or {}
            row.update(
                {k: int(counts.get(k, row.get(k, 0))) for k in ("sent", "in_progress", "pending", "failed")}
            )
            row["note"] = "; ".join(
                filter(None, [row.get("note"), "the platform had not finished processing the uploads"])
            )
        if result.get("refused") and row["outcome"] != "processing":
            row["outcome"] = str(result["refused"])  # e.g. TikTok's segment_too_small: no retry can help
        return row
    counts = ledger_counts or {}
    row.update({k: int(counts.get(k, 0)) for k in COUNT_KEYS})
    row.update(
        invalid=extract_invalid,
        finished_at=utcnow(),
        outcome="failed",
        note="the sync task did not finish; counts read from the ledger",
        total=sum(int(counts.get(k, 0)) for k in ("sent", "in_progress", "pending", "failed")),
    )
    return row


def _ts(value: Any) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(str(value))
