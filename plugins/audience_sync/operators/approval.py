"""Approval task: a new campaign version waits for a human in Airflow's Required Actions before sending.

Built on the standard provider's :class:`ApprovalOperator` (human-in-the-loop). It runs after the plan
and before every sync task. The rules (``core/approval.py``):

- a version with a recorded approval passes at once, without asking (later runs of an approved version);
- else the campaign file's ``approval:`` block approves it when its ``version`` is the computed one
  (recorded, then passes); a block for another version does not apply and the task says so;
- else the task asks: subject and body show the campaign, its version, the dry-run plan and its
  warnings. Approve: recorded, the syncs run. Reject: recorded, every sync (and its wait) is skipped,
  ``record_metrics`` records the run as ``rejected``. No answer within the response timeout: the
  scheduler applies the default, Reject, and the run is recorded as timed out (``approval_timeout``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import ApprovalOperator

from audience_sync.core.approval import (
    APPROVED,
    FROM_AIRFLOW,
    REJECTED,
    TIMED_OUT,
    Decision,
    approval_body,
    file_approval,
    plan_summary,
    short,
)
from audience_sync.core.approval_log import ApprovalLog
from audience_sync.core.settings import settings
from audience_sync.hooks.state import DEFAULT_CONN_ID, AudienceSyncStateHook

if TYPE_CHECKING:
    from airflow.sdk import Context

#: the XCom key of the approval task's decision (``record_metrics`` reads it)
DECISION_KEY = "decision"

#: the metrics outcome of a run whose version was not approved, by decision
NOT_APPROVED_OUTCOMES = {REJECTED: "rejected", TIMED_OUT: "approval_timeout"}


def not_approved(result: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """``(metrics outcome, note)`` when the approval task's result says this run was not approved."""
    if not result or result.get("approved", True):
        return None
    decision = str(result.get("decision"))
    note = (
        f"version {result.get('version')} was not approved ({decision.replace('_', ' ')}"
        f"{' by ' + str(result['decided_by']) if result.get('decided_by') else ''}): nothing was sent"
    )
    return NOT_APPROVED_OUTCOMES.get(decision, decision), note


class CampaignApprovalOperator(ApprovalOperator):
    """Pass an approved campaign version; ask for approval of a new one (see the module's rules).

    :param campaign: the campaign's name, shown to the approver.
    :param version: the campaign version (``core.approval.campaign_version``), computed when parsing.
    :param file_approval: the campaign file's ``approval:`` block (JSON), if any.
    :param plan_task_id: the plan task whose XCom is shown and recorded.
    :param response_timeout: how long to wait for an answer (default: the
        ``AUDIENCE_SYNC_APPROVAL_TIMEOUT_HOURS`` setting).
    :return: ``{approved, decision, version, decided_by, decided_at, source}``.
    """

    ui_color = "#fde8e8"

    def __init__(
        self,
        *,
        campaign: str,
        version: str,
        file_approval: Mapping[str, Any] | None = None,
        plan_task_id: str = "plan",
        state_conn_id: str = DEFAULT_CONN_ID,
        response_timeout: dt.timedelta | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("task_id", "approve")
        timeout = response_timeout or dt.timedelta(hours=settings().approval_timeout_hours)
        super().__init__(
            subject=f"Approve audience sync: {campaign}, version {short(version)} (run {{{{ run_id }}}})",
            body="Run `{{ run_id }}` of `{{ dag.dag_id }}` waits for approval before it sends anything.",
            defaults=[self.REJECT],  # what the scheduler applies when nobody answers in time
            response_timeout=timeout,
            **kwargs,
        )
        self.campaign = campaign
        self.version = version
        self.file_approval = dict(file_approval) if file_approval else None
        self.plan_task_id = plan_task_id
        self.state_conn_id = state_conn_id

    def execute(self, context: Context) -> Any:
        if not settings().approval_required:
            self.log.warning(
                "AUDIENCE_SYNC_APPROVAL_REQUIRED is off: version %s is sent without approval "
                "(for development and tests only)",
                self.version,
            )
            result = {"approved": True, "decision": "not_required", "version": self.version}
            context["ti"].xcom_push(key=DECISION_KEY, value=result)
            return result
        log = ApprovalLog(AudienceSyncStateHook(self.state_conn_id).store)
        standing = log.approval(self.dag_id, self.version)
        if standing is not None:
            self.log.info("already approved, not asking again: %s", standing.describe())
            return self._result(context, standing)
        from_file, why_not = file_approval(self.file_approval, self.dag_id, self.version)
        if why_not:
            self.log.warning("%s", why_not)
        summary = plan_summary(context["ti"].xcom_pull(task_ids=self.plan_task_id))
        if from_file is not None:
            decision = dataclasses.replace(from_file, run_id=context["run_id"], plan_summary=summary)
            log.record(decision)
            self.log.info("approved by the campaign file's approval block: %s", decision.describe())
            return self._result(context, decision)
        timeout = self.response_timeout or dt.timedelta(0)
        self.body = "\n\n".join(
            filter(
                None,
                [
                    self.body,
                    approval_body(
                        campaign=self.campaign,
                        dag_id=self.dag_id,
                        version=self.version,
                        summary=summary,
                        timeout_hours=timeout.total_seconds() / 3600,
                    ),
                ],
            )
        )
        self.log.info(
            "version %s of this campaign is not approved yet: waiting for an answer in Airflow's "
            "Required Actions (timeout %s)",
            self.version,
            self.response_timeout,
        )
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        if "error" in event:  # not an answer (e.g. no defaults and no response): the provider raises
            return super().execute_complete(context, event)
        approved = event["chosen_options"] == [self.APPROVE]
        user = event.get("responded_by_user") or {}
        decision = Decision(
            dag_id=self.dag_id,
            version=self.version,
            decision=APPROVED if approved else TIMED_OUT if event.get("timedout") else REJECTED,
            decided_by=(user.get("name") or user.get("id")) if user else None,
            decided_at=_aware(event["responded_at"]),
            source=FROM_AIRFLOW,
            run_id=context["run_id"],
            plan_summary=plan_summary(context["ti"].xcom_pull(task_ids=self.plan_task_id)),
        )
        ApprovalLog(AudienceSyncStateHook(self.state_conn_id).store).record(decision)
        result = self._result(context, decision)
        if approved:
            self.log.info("recorded: %s; later runs of this version run without asking", decision.describe())
        else:
            self.log.warning("recorded: %s; nothing is sent in this run", decision.describe())
        # on Reject the provider skips the sync tasks by raising, so the decision is recorded first
        super().execute_complete(context, event)
        return result

    def _result(self, context: Context, decision: Decision) -> dict[str, Any]:
        """The decision as this task's result, also pushed as XCom ``decision``: a rejected run's task
        ends by skipping its downstream tasks, which leaves no return value."""
        result = {
            "approved": decision.approved,
            "decision": decision.decision,
            "version": decision.version,
            "decided_by": decision.decided_by,
            "decided_at": decision.decided_at.isoformat(),
            "source": decision.source,
        }
        context["ti"].xcom_push(key=DECISION_KEY, value=result)
        return result


def _aware(value: dt.datetime) -> dt.datetime:
    """The answer's time as an aware datetime (Airflow's are aware; a naive one is UTC by convention)."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
