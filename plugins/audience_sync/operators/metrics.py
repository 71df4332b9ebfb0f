"""Metrics task: one row per (run, destination) in the metrics table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from audience_sync.core.ledger import COUNT_KEYS, RUN_KEYS
from audience_sync.hooks.state import DEFAULT_CONN_ID, AudienceSyncStateHook
from audience_sync.operators.approval import DECISION_KEY, not_approved
from audience_sync.operators.context import run_date
from audience_sync.operators.staging import location, merge_extracts, remove
from audience_sync.outcome import metrics_row

if TYPE_CHECKING:
    from airflow.sdk import Context


class RecordMetricsOperator(BaseOperator):
    """Write the counts of every sync task of this run into the metrics table (an upsert: safe to repeat).

    Runs whatever happened upstream (``trigger_rule=all_done``). Each row holds what the run did
    (``run_added``, ``run_removed``, ``run_resent``, ``run_unchanged``, ``run_rejected``) beside the
    ledger's snapshot after it. A sync task that left no result is recorded as ``failed``, one whose
    uploads the platform had not processed in time as ``processing``, with the counts the ledger holds;
    this task then fails too, so the run is not shown green. A change the platform refused for a reason
    no retry fixes is recorded with that reason as its outcome (TikTok: ``segment_too_small``) and does
    not fail the run: the plan warned of it and the next run tries again. A sync the plan held (the
    group-size guard) is recorded as ``held``, without a group size, and fails this task too. A run whose
    campaign version was not approved is recorded as ``rejected`` (or ``approval_timeout``) and does not
    fail.

    :param destinations: one dict per sync task: ``task_id``, ``wait_task_id``, ``platform``,
        ``account``, ``segment_name``.
    """

    template_fields: Sequence[str] = ()

    def __init__(
        self,
        *,
        destinations: Sequence[dict[str, str]],
        state_conn_id: str = DEFAULT_CONN_ID,
        approval_task_id: str = "approve",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        self.destinations = [dict(d) for d in destinations]
        self.state_conn_id = state_conn_id
        self.approval_task_id = approval_task_id

    def execute(self, context: Context) -> dict[str, Any]:
        store = AudienceSyncStateHook(self.state_conn_id).store
        ti = context["ti"]
        extracted = merge_extracts(ti.xcom_pull(task_ids="extract"))
        plans = ti.xcom_pull(task_ids="plan") or {}
        stopped = not_approved(ti.xcom_pull(task_ids=self.approval_task_id, key=DECISION_KEY))
        unfinished: list[str] = []
        held: list[str] = []
        summary: dict[str, Any] = {}
        for d in self.destinations:
            result = ti.xcom_pull(task_ids=d["task_id"])
            waited = ti.xcom_pull(task_ids=d["wait_task_id"]) if result and d.get("wait_task_id") else None
            if result and not d.get("wait_task_id"):
                waited = result  # no wait task: the sync's own counts are final
            dest_key = f"{d['platform']}:{d['account']}"
            counts = None
            entry = store.get_registry(d["platform"], d["account"], d["segment_name"])
            if entry is not None and not (result and waited):
                counts = store.ledger_counts(entry.id)
            row = metrics_row(
                {
                    "dag_id": self.dag_id,
                    "run_id": context["run_id"],
                    "destination": dest_key,
                    "segment_name": d["segment_name"],
                    "logical_date": run_date(context),
                    "audience_id": entry.audience_id if entry else None,
                },
                result,
                waited,
                counts,
                extract_invalid=int(extracted.get("invalid", 0)),
            )
            plan = plans.get(d["task_id"]) or {}
            if plan.get("hold"):  # the size guard stopped it: not a failure to retry, nor a size to keep
                row.update(outcome="held", note=plan["hold"])
            elif "group" in plan:
                row["group_size"] = int(plan["group"])
            if stopped is not None and not result:  # nothing was sent: the decision is the outcome
                row["outcome"], row["note"] = stopped
            if row["outcome"] == "held":
                held.append(d["task_id"])
            elif row["outcome"] in ("failed", "processing"):
                unfinished.append(d["wait_task_id"] if result else d["task_id"])
            store.write_metrics(row)
            summary[dest_key] = {
                k: row.get(k)
                for k in (*COUNT_KEYS, *(f"run_{k}" for k in RUN_KEYS), "requests", "outcome", "audience_id")
            }
            self.log.info("metrics %s: %s", dest_key, summary[dest_key])
        problems = []
        if held:
            problems.append(
                f"Task(s) {', '.join(held)} were held by the group-size guard and sent nothing; their "
                "metrics were recorded as 'held'. The plan task's log says why and what to do."
            )
        if unfinished:
            problems.append(
                f"Task(s) {', '.join(unfinished)} did not finish; their metrics were recorded as 'failed' or "
                "'processing'. See those tasks' logs for the platform error and what to do."
            )
        if problems:
            raise AirflowFailException(" ".join(problems))
        self._drop_staging(extracted)
        return summary

    def _drop_staging(self, extracted: dict[str, Any]) -> None:
        """Every destination is synced: the run's staged hashes (every partition's) are no longer needed."""
        if extracted.get("run_url"):
            remove(location(extracted["run_url"]))
            self.log.info("removed the run's staged files (%s)", extracted["run_url"])
