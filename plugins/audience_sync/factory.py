"""Build one Airflow DAG per campaign file:
enabled >> extract >> plan >> approve >> (sync >> wait) per destination >> metrics.

``enabled`` stops every run while the deployment has not enabled syncing (``operators/enabled.py``);
``approve`` waits for a human to approve a campaign version not approved before (``operators/approval.py``).

With ``partitions: N`` the extract task is mapped over N partitions of the group (dynamic task
mapping); with ``partitions: auto`` a ``partition`` task sizes the group first and the extract task is
mapped over what it returns.

Parse-time work is local only: YAML and SQL files are read, nothing connects to a database, an API
or Airflow Variables. A broken campaign file never stops the others: :func:`build_dags` skips it (and
logs why), and :func:`raise_campaign_errors` — called from its own DAG file — turns every broken file
into an Airflow import error naming the file, the field and the fix.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG

from audience_sync.core.approval import campaign_version
from audience_sync.core.campaign import Campaign, load_campaigns
from audience_sync.core.errors import AudienceSyncError
from audience_sync.core.settings import settings
from audience_sync.operators.alerts import FailureAlert
from audience_sync.operators.approval import CampaignApprovalOperator
from audience_sync.operators.enabled import SyncEnabledOperator
from audience_sync.operators.extract import ExtractAudienceOperator, PartitionGroupOperator
from audience_sync.operators.metrics import RecordMetricsOperator
from audience_sync.operators.processing import PROMISE_TIMEOUT, AwaitProcessingSensor
from audience_sync.operators.sync import PlanAudienceOperator, SyncAudienceOperator
from audience_sync.ui import URL_PREFIX

log = logging.getLogger(__name__)

SCHEDULE_PRESETS = {"@once", "@hourly", "@daily", "@weekly", "@monthly"}


class CampaignLoadError(AudienceSyncError):
    """One or more campaign files are invalid (shown as an Airflow import error)."""


def sync_task_id(platform: str, index: int, count: int) -> str:
    return f"sync_{platform}" if count == 1 else f"sync_{platform}_{index + 1}"


def build_dag(c: Campaign) -> DAG:
    """The DAG of one campaign."""
    tz = pendulum.timezone(c.timezone)
    start = pendulum.datetime(c.duration.start.year, c.duration.start.month, c.duration.start.day, tz=tz)
    end = None
    if c.duration.end:
        e = c.duration.end
        end = pendulum.datetime(e.year, e.month, e.day, 23, 59, 59, tz=tz)
    group = c.audience_group
    platforms = sorted({d.platform for d in c.destinations})
    doc = (
        f"### {c.campaign}\n\nAds campaign **{c.ads_campaign_name}**, segment `{c.segment_name}` "
        f"({c.sync_mode}) to {', '.join(f'{d.platform} {d.account}' for d in c.destinations)}.\n\n"
        f"Campaign file: `{c.path.name}`. Audience group: {group.source} "
        f"{'(' + str(group.conn_id) + ')' if group.conn_id else ''}.\n\n"
        f"Progress per destination: [Ads Audience]({URL_PREFIX}/campaign/{c.dag_id}) (also this DAG's "
        "*Ads Audience* tab)."
    )
    with DAG(
        dag_id=c.dag_id,
        description=c.campaign,
        schedule=c.schedule,
        start_date=start,
        end_date=end,
        catchup=False,
        max_active_runs=1,
        tags=["audience-sync", *platforms, *c.tags],
        default_args={
            "owner": c.owner,
            "retries": c.retries,
            "retry_delay": dt.timedelta(minutes=c.retry_delay_minutes),
            "retry_exponential_backoff": True,
            # a failed task tells the campaign's alert targets (record_metrics opts out: it only
            # repeats the failure of the task it reports)
            "on_failure_callback": FailureAlert(c.campaign, c.alerts),
        },
        doc_md=doc,
        params={},
    ) as dag:
        enabled = SyncEnabledOperator()
        extract = extract_tasks(c, platforms)
        dests: list[dict[str, str]] = []
        syncs = []
        for d in c.destinations:
            same = [x for x in c.destinations if x.platform == d.platform]
            task_id = sync_task_id(d.platform, same.index(d), len(same))
            wait_id = "wait_" + task_id.removeprefix("sync_")
            # where this destination's tasks send and wait: the same for the sync, the wait and the metrics
            target = {
                "platform": d.platform,
                "account": d.account,
                "conn_id": d.conn_id,
                "segment_name": c.segment_name,
                "options": d.options(),
            }
            sync = SyncAudienceOperator(
                task_id=task_id,
                **target,
                sync_mode=c.sync_mode,
                exclude_segments=group.exclude_segments,
                description=f"{c.ads_campaign_name} (audience-sync campaign {c.stem})",
            )
            # the platform processes uploads after accepting them: wait for it without holding a slot,
            # until the delivery promise of the window the sync was released in (or the campaign's cap)
            wait = AwaitProcessingSensor(
                task_id=wait_id,
                **target,
                delivery={
                    "cutoff": c.delivery.cutoff.isoformat(),
                    "available_by": c.delivery.available_by.isoformat(),
                    "timezone": c.timezone,
                },
                sync_task_id=task_id,
                timeout=(
                    dt.timedelta(minutes=c.processing_timeout_minutes)
                    if c.processing_timeout_minutes
                    else PROMISE_TIMEOUT
                ),
                poke_interval=dt.timedelta(seconds=c.processing_poke_seconds),
            )
            sync >> wait
            syncs.append((sync, wait))
            dests.append({"task_id": task_id, "wait_task_id": wait_id, **target})
        plan = PlanAudienceOperator(
            task_id="plan",
            destinations=dests,
            segment_name=c.segment_name,
            sync_mode=c.sync_mode,
            exclude_segments=group.exclude_segments,
            campaign=c.campaign,
            alerts=c.alerts,
        )
        metrics = RecordMetricsOperator(
            task_id="record_metrics", destinations=dests, on_failure_callback=None
        )
        approve = CampaignApprovalOperator(
            campaign=c.campaign,
            version=campaign_version(c),
            file_approval=c.approval.model_dump(mode="json") if c.approval else None,
        )
        extract >> plan >> approve
        for sync, wait in syncs:
            approve >> sync
            wait >> metrics
        enabled >> [t for t in dag.roots if t is not enabled]  # before the extraction's first task
    return dag


def extract_tasks(c: Campaign, platforms: list[str]) -> Any:
    """The extract task: one task, or mapped over the campaign's partitions (then the task the plan
    follows is the mapped one; with ``auto`` a ``partition`` task before it says how many)."""
    group = c.audience_group
    source = {
        "source_path": str(group.source_path) if group.source == "list" else None,
        "sql": group.sql_query() if group.source == "sql" else None,
        "conn_id": group.conn_id,
    }
    args = {
        **source,
        "key": group.key,
        "identifiers": group.extracted_fields,
        "platforms": platforms,
        "default_country": group.default_country,
        "consent_column": group.consent.column if group.consent else None,
    }
    if c.partitions == 1:
        return ExtractAudienceOperator(task_id="extract", **args)
    mapped = ExtractAudienceOperator.partial(task_id="extract", **args)
    if c.partitions == "auto":
        sizing = PartitionGroupOperator(task_id="partition", **source)
        return mapped.expand(partition=sizing.output)
    count = int(c.partitions)
    return mapped.expand(partition=[[i, count] for i in range(count)])


def build_dags(
    namespace: MutableMapping[str, Any] | None = None, folder: str | Path | None = None
) -> dict[str, DAG]:
    """Build every valid campaign's DAG; broken files are skipped here (see :func:`raise_campaign_errors`).

    With ``AUDIENCE_SYNC_STRICT=1`` (the test suite) any broken file raises instead.
    """
    campaigns, errors = load_campaigns(folder, strict=settings().strict)
    for path, err in errors.items():
        log.error("Skipping campaign %s: %s", path, err)
    dags: dict[str, DAG] = {}
    for c in campaigns:
        dag = build_dag(c)
        dags[dag.dag_id] = dag
        if namespace is not None:
            namespace[dag.dag_id] = dag
    return dags


def raise_campaign_errors(folder: str | Path | None = None) -> None:
    """Raise one error listing every broken campaign file (file, field, fix); do nothing when all are valid."""
    _, errors = load_campaigns(folder)
    if errors:
        text = "\n\n".join(str(e) for e in errors.values())
        raise CampaignLoadError(f"{len(errors)} campaign file(s) are invalid and have no DAG:\n\n{text}")
