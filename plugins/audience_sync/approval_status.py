"""``audience-sync version`` and ``audience-sync approval``: a campaign's version and its approval state."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

from audience_sync.core.approval import campaign_version, file_approval
from audience_sync.core.campaign import campaigns_dir, load_campaign
from audience_sync.core.campaign.paths import display_path
from audience_sync.core.settings import settings

if TYPE_CHECKING:
    from audience_sync.core.campaign import Campaign

#: decisions ``status`` lists
HISTORY = 10
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def find_campaign(name: str) -> Campaign:
    """A campaign by file stem (in the campaign folder) or by the path of its file."""
    given = Path(name)
    if given.suffix.lower() in (".yaml", ".yml") or len(given.parts) > 1:
        return load_campaign(given)
    folder = campaigns_dir()
    path = next((p for p in (folder / f"{name}.yaml", folder / f"{name}.yml") if p.exists()), None)
    if path is None:
        raise SystemExit(f"no campaign file {name}.yaml in {display_path(folder)}")
    return load_campaign(path)


def file_approval_line(c: Campaign, version: str) -> str | None:
    """What the campaign file's ``approval:`` block means for ``version`` (None without a block)."""
    decision, why_not = file_approval(c.approval, c.dag_id, version)
    if decision is not None:
        return f"its approval block approves this version ({decision.describe()})"
    return why_not


def approval_wait(c: Campaign) -> str | None:
    """Why a run of ``c`` would stop and wait for an approval (None when it would not): for
    ``audience-sync run``, whose ``dag.test()`` would otherwise wait forever (reads the state database)."""
    from audience_sync.core.approval_log import ApprovalLog
    from audience_sync.hooks.state import AudienceSyncStateHook

    s = settings()
    version = campaign_version(c)
    if not (s.enabled and s.approval_required) or file_approval(c.approval, c.dag_id, version)[0]:
        return None
    if ApprovalLog(AudienceSyncStateHook().store).approval(c.dag_id, version) is not None:
        return None
    return (
        f"version {version} of {c.dag_id} is not approved: its run would wait for an answer in Airflow's "
        "Required Actions, which a run from the command line cannot give. Approve it by code review (add "
        f'approval: {{approved_by: <you>, approved_at: <date>, version: "{version}"}} to '
        f"{display_path(c.path)}), or answer a deployment's run in Required Actions; for local development "
        "only, AUDIENCE_SYNC_APPROVAL_REQUIRED=0 skips the step."
    )


def campaign_status(c: Campaign) -> str:
    """The campaign's DAG, whether syncing is enabled, its version and whether that version is approved,
    its latest approval decisions and its latest run's metrics (reads the state database)."""
    from audience_sync.core.approval_log import ApprovalLog
    from audience_sync.hooks.state import AudienceSyncStateHook

    version = campaign_version(c)
    s = settings()
    lines = [
        f"{c.dag_id} ({display_path(c.path)}): {c.campaign}",
        "  syncing: "
        + ("enabled" if s.enabled else "disabled on this deployment (set AUDIENCE_SYNC_ENABLED=1 to enable)"),
        f"  version: {version}",
    ]
    store = AudienceSyncStateHook().store
    log = ApprovalLog(store)
    standing = log.approval(c.dag_id, version)
    from_file, _ = file_approval(c.approval, c.dag_id, version)
    if not s.approval_required:
        state = "not required on this deployment (AUDIENCE_SYNC_APPROVAL_REQUIRED is off)"
    elif standing is not None:
        state = f"approved: {standing.describe()}"
    elif from_file is not None:
        state = "approved by the campaign file's approval block (recorded at the next run)"
    else:
        state = "not approved: the next run waits for approval in Airflow's Required Actions"
    lines.append(f"  approval: {state}")
    if (about_file := file_approval_line(c, version)) is not None:
        lines.append(f"  campaign file: {about_file}")
    history = log.history(c.dag_id, HISTORY)
    lines.append("  decisions (newest first):" if history else "  decisions: none recorded")
    for d in history:
        plans = d.plan_summary.values()
        counts = ", ".join(
            f"{p.get('platform')} adds {p.get('adds')} removes {p.get('removes')}" for p in plans
        )
        lines.append(f"    {d.describe()}{'; plan: ' + counts if counts else ''}")
    rows = store.read_metrics(c.dag_id)
    if rows:
        last = max(rows, key=lambda r: r["finished_at"] or r["started_at"] or _EPOCH)["run_id"]
        lines.append(f"  last run {last}:")
        for row in (r for r in rows if r["run_id"] == last):
            lines.append(
                f"    {row['destination']}: {row['outcome']}, sent {row['sent']}, removed {row['removed']}, "
                f"failed {row['failed']}{'; ' + row['note'] if row.get('note') else ''}"
            )
    return "\n".join(lines)
