"""Campaign versions and approval rules: what must be approved, and whether an approval applies.

A campaign **version** is the SHA-256 of a canonical JSON of everything that decides what is sent: the
segment name, the sync mode, the audience group (its source: the query text and its connection, or the
list file's path; the member key, identifiers, default country, consent and exclusions) and the
destinations (platform, normalised account, connection and the platform's own settings). Scheduling and
descriptive fields (name, description, owner, tags, duration, schedule, timezone, retries, partitions,
the ``approval:`` block itself) are not in it: changing them needs no new approval. The fields are picked
by name, so a field added to campaign files later changes no version until it is added here.

Pure: no Airflow import. The decisions are stored by :mod:`audience_sync.core.approval_log`; the Airflow
side is ``operators/approval.py``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from audience_sync.core.campaign import Campaign
from audience_sync.core.campaign.approval import CampaignApproval
from audience_sync.core.campaign.paths import display_path

#: bump when what goes into a version changes (every campaign then needs approving again)
VERSION_SCHEME = 1

APPROVED = "approved"
REJECTED = "rejected"
TIMED_OUT = "timed_out"
DECISIONS = (APPROVED, REJECTED, TIMED_OUT)

#: where a decision came from
FROM_AIRFLOW = "airflow"
FROM_CAMPAIGN_FILE = "campaign_file"

#: what a plan summary keeps of each destination's plan (counts and names only, never a member)
PLAN_KEYS = (
    "platform",
    "account",
    "segment_name",
    "mode",
    "audience",
    "group",
    "adds",
    "changed",
    "removes",
    "unchanged",
    "invalid",
    "excluded_no_consent",
    "excluded_by_segments",
    "warnings",
)


def campaign_definition(c: Campaign) -> dict[str, Any]:
    """The part of a campaign that decides what is sent, as plain JSON-ready data (the version's input)."""
    g = c.audience_group
    if g.source == "sql":
        source: dict[str, Any] = {"sql": g.sql_query(), "conn_id": g.conn_id}
    else:
        assert g.list_file is not None  # noqa: S101 - a list group has its file
        source = {"list": display_path(g.list_file)}
    return {
        "scheme": VERSION_SCHEME,
        "segment_name": c.segment_name,
        "sync_mode": c.sync_mode,
        "audience_group": {
            **source,
            "key": g.key,
            "identifiers": dict(g.identifiers),
            "default_country": g.default_country,
            "exclude_segments": sorted(g.exclude_segments),
            "consent": g.consent.model_dump(mode="json") if g.consent else None,
        },
        "destinations": sorted(
            (
                {"platform": d.platform, "account": d.account, "conn_id": d.conn_id, "options": d.options()}
                for d in c.destinations
            ),
            key=lambda d: (d["platform"], d["account"]),
        ),
    }


def campaign_version(c: Campaign) -> str:
    """The campaign's version: SHA-256 (hex) of :func:`campaign_definition` as canonical JSON."""
    text = json.dumps(campaign_definition(c), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def short(version: str) -> str:
    """The first 12 characters, for subjects and log lines (the full version is always shown beside)."""
    return version[:12]


@dataclass(frozen=True)
class Decision:
    """One approval decision about one version of one campaign (DAG)."""

    dag_id: str
    version: str
    decision: str
    decided_by: str | None
    decided_at: dt.datetime
    source: str
    run_id: str | None = None
    plan_summary: dict[str, Any] = field(default_factory=dict)

    @property
    def approved(self) -> bool:
        return self.decision == APPROVED

    def describe(self) -> str:
        by = self.decided_by or "nobody (no answer in time)"
        run = f", run {self.run_id}" if self.run_id else ""
        return (
            f"version {short(self.version)} {self.decision} by {by} at {self.decided_at.isoformat()} "
            f"({self.source.replace('_', ' ')}{run})"
        )


def file_approval(
    block: CampaignApproval | Mapping[str, Any] | None, dag_id: str, version: str
) -> tuple[Decision | None, str | None]:
    """The campaign file's ``approval:`` block as a decision when it approves ``version``.

    :return: ``(decision, None)`` when it applies; ``(None, why not)`` when the block names another
        version (the message gives the computed one to copy); ``(None, None)`` without a block.
    """
    if block is None:
        return None, None
    approval = block if isinstance(block, CampaignApproval) else CampaignApproval.model_validate(block)
    if approval.version != version:
        return None, (
            f"the campaign file's approval block approves version {approval.version}, but the campaign's "
            f"version is now {version} (it changed since it was approved), so it does not apply and this "
            f"version needs approval. To approve it by code review, set approval.version: {version}"
        )
    return (
        Decision(
            dag_id=dag_id,
            version=version,
            decision=APPROVED,
            decided_by=approval.approved_by,
            decided_at=approval.approved_at,
            source=FROM_CAMPAIGN_FILE,
        ),
        None,
    )


def plan_summary(plans: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    """What a decision records of the dry-run plan: per sync task, its counts, audience and warnings."""
    return {task: {k: plan.get(k) for k in PLAN_KEYS if k in plan} for task, plan in (plans or {}).items()}


def approval_body(
    *,
    campaign: str,
    dag_id: str,
    version: str,
    summary: Mapping[str, Mapping[str, Any]],
    timeout_hours: float,
) -> str:
    """The approval request's Markdown: the campaign, its version, the dry-run plan and its warnings."""
    first = next(iter(summary.values()), {})
    lines = [
        f"**Campaign:** {campaign} (`{dag_id}`)",
        f"**Segment:** `{first.get('segment_name', '?')}`, sync mode {first.get('mode', '?')}",
        f"**Version:** `{version}`",
        "",
        "**Dry-run plan** (nothing has been sent yet):",
        "",
        "| destination | audience | group | invalid | excluded | adds | removes | unchanged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    warnings: list[str] = []
    for plan in summary.values():
        audience = plan.get("audience") or {}
        where = f"{plan.get('platform')} {plan.get('account')}"
        excluded = int(plan.get("excluded_no_consent") or 0) + int(plan.get("excluded_by_segments") or 0)
        lines.append(
            f"| {where} | {audience.get('action')} {audience.get('id') or ''}".rstrip()
            + f" | {plan.get('group')} "
            f"| {plan.get('invalid', 0)} | {excluded} | {plan.get('adds')} (changed {plan.get('changed')}) "
            f"| {plan.get('removes')} | {plan.get('unchanged')} |"
        )
        warnings += [f"{where}: {w}" for w in plan.get("warnings") or []]
    lines += ["", "**Warnings:**", *([f"- {w}" for w in warnings] or ["- none"]), ""]
    lines.append(
        "**Approve**: this run sends the changes above, and later runs of this same version run without "
        "asking. **Reject**: nothing is sent in this run. No answer within "
        f"{timeout_hours:g} hour(s) counts as rejected for this run. Any change to the campaign makes a "
        "new version that asks again."
    )
    return "\n".join(lines)
