"""The progress read model: what the Ads Audiences page, its JSON endpoint and ``audience-sync status`` show.

One function, :func:`campaign_progress`, reads the state store (registry, ledger, metrics, uploads) for
each campaign and destination. Every surface prints its result, so the page, the JSON and the terminal
always agree. Pure: no Airflow import (the web app in ``ui/`` and the command line open the store).

Where the numbers come from:

- the progress bar (sent / in progress / pending / failed) and ``removed`` / ``removing`` are the
  ledger's counts read now (:meth:`StateStore.ledger_counts`), so they move while a sync runs; once a run
  has finished they are the numbers its metrics row and its wait task's XCom hold;
- ``invalid`` and ``excluded`` exist only per run: they are the last metrics row's (the sync task's XCom);
- the platform's size and match rate are what the wait task read from the platform after the run
  (metrics ``audience_size`` / ``match_rate``, schema v6);
- the delivery status applies the campaign's ``delivery`` rule (:mod:`audience_sync.core.delivery`) to
  the release of the latest run: the start of an upload still in flight, else the last run's sync start.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from croniter import croniter

from audience_sync.core.approval import campaign_version, short
from audience_sync.core.approval_log import ApprovalLog
from audience_sync.core.campaign import Campaign
from audience_sync.core.delivery import delivery_window
from audience_sync.core.ledger import StateStore

#: the stacked bar's segments, in order
BAR_KEYS = ("sent", "in_progress", "pending", "failed")
#: runs shown in the trend
HISTORY_RUNS = 12
#: a delivery still under way this close to its promise is "at risk"
RISK_MARGIN = dt.timedelta(hours=1)
#: the cron expressions of Airflow's schedule presets (``@once`` has no next run)
PRESETS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *"}

ON_TIME, AT_RISK, MISSED = "on time", "at risk", "missed"


@dataclass(frozen=True)
class RunPoint:
    """One run of one destination in the trend."""

    run_id: str
    logical_date: str | None
    finished_at: str | None
    outcome: str
    sent: int
    total: int
    audience_size: int | None
    match_rate: int | None


@dataclass(frozen=True)
class DeliveryStatus:
    """The delivery promise of the latest run and where it stands (:data:`ON_TIME`, :data:`AT_RISK`,
    :data:`MISSED`)."""

    status: str
    available_by: str
    window: str


@dataclass(frozen=True)
class DestinationProgress:
    """One destination of one campaign."""

    destination: str  # ``platform:account``, as in the metrics table
    platform: str
    account: str
    audience_id: str | None
    counts: dict[str, int]
    #: a sync is under way or the platform is still processing its uploads
    syncing: bool
    audience_size: int | None
    match_rate: int | None
    size_run_id: str | None
    last_run: dict[str, Any] | None
    delivery: DeliveryStatus | None
    history: list[RunPoint] = field(default_factory=list)


@dataclass(frozen=True)
class CampaignProgress:
    """One campaign: its schedule, runs and destinations."""

    campaign: str
    stem: str
    dag_id: str
    segment_name: str
    sync_mode: str
    schedule: str
    timezone: str
    #: the campaign version (core/approval.py) and its recorded approval: ``{by, at, source}``, or None
    #: while the version waits for one
    version: str | None
    approval: dict[str, Any] | None
    last_run: dict[str, Any] | None
    next_run: str | None
    destinations: list[DestinationProgress]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def campaign_progress(
    store: StateStore, campaigns: Iterable[Campaign], now: dt.datetime, *, runs: int = HISTORY_RUNS
) -> list[CampaignProgress]:
    """The progress of every campaign, in the order given."""
    return [_campaign(store, c, now, runs) for c in campaigns]


def _campaign(store: StateStore, c: Campaign, now: dt.datetime, runs: int) -> CampaignProgress:
    rows = store.recent_metrics(c.dag_id, runs)
    dests = [_destination(store, c, d.platform, d.account, rows, now) for d in c.destinations]
    last = rows[-1] if rows else None
    version = campaign_version(c)
    standing = ApprovalLog(store).approval(c.dag_id, version)
    return CampaignProgress(
        campaign=c.campaign,
        stem=c.stem,
        dag_id=c.dag_id,
        segment_name=c.segment_name,
        sync_mode=c.sync_mode,
        schedule=c.schedule,
        timezone=c.timezone,
        version=version,
        approval=(
            {"by": standing.decided_by, "at": _iso(standing.decided_at), "source": standing.source}
            if standing is not None
            else None
        ),
        last_run=_run(last, [r for r in rows if last and r["run_id"] == last["run_id"]]) if last else None,
        next_run=_iso(next_run(c, now)),
        destinations=dests,
    )


def _destination(
    store: StateStore,
    c: Campaign,
    platform: str,
    account: str,
    rows: Sequence[Mapping[str, Any]],
    now: dt.datetime,
) -> DestinationProgress:
    key = f"{platform}:{account}"
    mine = [r for r in rows if r["destination"] == key]
    last = mine[-1] if mine else None
    entry = store.get_registry(platform, account, c.segment_name)
    live = store.ledger_counts(entry.id) if entry else dict.fromkeys((*BAR_KEYS, "removed", "removing"), 0)
    in_flight = store.upload_in_flight(entry.id) if entry else None
    counts = {k: int(live[k]) for k in (*BAR_KEYS, "removed", "removing")}
    counts["total"] = sum(counts[k] for k in BAR_KEYS)
    counts["invalid"] = int(last["invalid"]) if last else 0
    counts["excluded"] = int(last["excluded"]) if last else 0
    sized = next((r for r in reversed(mine) if r.get("audience_size") is not None), None)
    syncing = in_flight is not None or bool(counts["in_progress"] or counts["pending"] or counts["removing"])
    return DestinationProgress(
        destination=key,
        platform=platform,
        account=account,
        audience_id=entry.audience_id if entry else (last or {}).get("audience_id"),
        counts=counts,
        syncing=syncing,
        audience_size=sized["audience_size"] if sized else None,
        match_rate=sized["match_rate"] if sized else None,
        size_run_id=sized["run_id"] if sized else None,
        last_run=_run(last, [last]) if last else None,
        delivery=_delivery(c, last, in_flight, syncing, now),
        history=[_point(r) for r in mine],
    )


def _delivery(
    c: Campaign,
    last: Mapping[str, Any] | None,
    in_flight: tuple[str, dt.datetime] | None,
    syncing: bool,
    now: dt.datetime,
) -> DeliveryStatus | None:
    """Where the latest release stands against its promise (None before the first run)."""
    if in_flight is not None:  # the promise of the run whose uploads are on their way
        released, finished = in_flight[1], None
    elif last is not None and (last["started_at"] or last["finished_at"]):
        released = last["started_at"] or last["finished_at"]
        done = not syncing and str(last["outcome"]).startswith("success")
        finished = last["finished_at"] if done else None
    else:
        return None
    window = delivery_window(released, c.tzinfo, c.delivery.cutoff, c.delivery.available_by)
    promise = window.available_by
    if finished is not None:
        status = ON_TIME if finished <= promise else MISSED
    elif now >= promise:
        status = MISSED
    elif promise - now <= RISK_MARGIN or in_flight is None:
        # close to the promise, or nothing is on its way (the run failed or was held): the next run
        # must deliver in time
        status = AT_RISK
    else:
        status = ON_TIME
    return DeliveryStatus(status=status, available_by=promise.isoformat(), window=window.describe())


def next_run(c: Campaign, now: dt.datetime) -> dt.datetime | None:
    """When the schedule next fires after ``now`` (in the campaign's time zone), within the campaign's
    duration; None for ``@once`` or after the campaign's end. Pausing the DAG is not known here."""
    expr = PRESETS.get(c.schedule, c.schedule)
    if expr.startswith("@"):
        return None
    tz = c.tzinfo
    start = dt.datetime.combine(c.duration.start, dt.time(), tzinfo=tz)
    base = max(now.astimezone(tz), start - dt.timedelta(seconds=1))
    nxt: dt.datetime = croniter(expr, base).get_next(dt.datetime)
    if c.duration.end is not None and nxt.date() > c.duration.end:
        return None
    return nxt


def _run(last: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A run as shown: id, dates and outcome (the worst of its destinations' when several)."""
    outcomes = sorted({str(r["outcome"]) for r in rows})
    bad = [o for o in outcomes if not o.startswith("success")]
    return {
        "run_id": last["run_id"],
        "logical_date": _iso(last["logical_date"]),
        "started_at": _iso(min((r["started_at"] for r in rows if r["started_at"]), default=None)),
        "finished_at": _iso(max((r["finished_at"] for r in rows if r["finished_at"]), default=None)),
        "outcome": bad[0] if bad else outcomes[0],
    }


def _point(r: Mapping[str, Any]) -> RunPoint:
    return RunPoint(
        run_id=r["run_id"],
        logical_date=_iso(r["logical_date"]),
        finished_at=_iso(r["finished_at"]),
        outcome=str(r["outcome"]),
        sent=int(r["sent"]),
        total=int(r["total"]),
        audience_size=r.get("audience_size"),
        match_rate=r.get("match_rate"),
    )


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def as_json(progress: Iterable[CampaignProgress], now: dt.datetime) -> dict[str, Any]:
    """The JSON document the endpoint serves and ``audience-sync status --json`` prints."""
    return {"generated_at": now.isoformat(), "campaigns": [p.as_dict() for p in progress]}


def format_progress(progress: Iterable[CampaignProgress]) -> str:
    """The terminal view: per campaign a header, per destination one line of counts and one of the
    platform's size and the delivery status."""
    lines: list[str] = []
    for p in progress:
        last = p.last_run
        ran = f"last run {last['run_id']} {last['outcome']}" if last else "no run yet"
        lines.append(
            f"{p.campaign} ({p.dag_id}, segment {p.segment_name}): {ran}; next run {p.next_run or '—'}; "
            f"version {short(p.version) if p.version else '—'}, approval "
            f"{'— (waiting)' if p.approval is None else str(p.approval['by']) + ' at ' + str(p.approval['at'])}"
        )
        for d in p.destinations:
            k = d.counts
            state = " [syncing]" if d.syncing else ""
            lines.append(
                f"  {d.destination} audience {d.audience_id or '—'}{state}: total {k['total']}, sent {k['sent']}, "
                f"in progress {k['in_progress']}, pending {k['pending']}, failed {k['failed']}, "
                f"removed {k['removed']}, removing {k['removing']}, invalid {k['invalid']}, "
                f"excluded {k['excluded']}"
            )
            size = "—" if d.audience_size is None else str(d.audience_size)
            rate = "" if d.match_rate is None else f", match rate {d.match_rate} %"
            deliv = f"{d.delivery.status} (by {d.delivery.available_by})" if d.delivery else "—"
            lines.append(f"    platform size {size}{rate}; delivery {deliv}")
    return "\n".join(lines)
