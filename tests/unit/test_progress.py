"""The progress read model (core/progress.py) over a real state store: live ledger counts, the last run's
invalid and excluded, the platform's sizes, the delivery status and the next run."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa

from audience_sync.core.approval import APPROVED, FROM_AIRFLOW, Decision, campaign_version
from audience_sync.core.approval_log import ApprovalLog
from audience_sync.core.campaign import Campaign, load_campaign
from audience_sync.core.keys import StateKeys
from audience_sync.core.ledger import StateStore, ledger, uploads
from audience_sync.core.progress import (
    AT_RISK,
    MISSED,
    ON_TIME,
    as_json,
    campaign_progress,
    format_progress,
    next_run,
)
from tests.ledger_steps import apply_group

KEYS = StateKeys.generate()
ACCOUNT = "act_1234567890"
UTC = dt.UTC


def campaign(folder: Path, schedule: str = '"@daily"', extra: str = "") -> Campaign:
    path = folder / "loyal.yaml"
    path.write_text(
        f"""\
campaign: Loyal customers
duration: {{start: 2026-08-01}}
schedule: {schedule}
timezone: Europe/London
segment_name: loyal_customers
audience_group:
  list: tests/fixtures/campaigns/data/existing_list.csv
  key: customer_id
  identifiers: {{email: email}}
delivery: {{cutoff: "19:00", available_by: "01:00"}}
destinations:
  - platform: meta
    ad_account_id: "{ACCOUNT}"
  - platform: file_drop
    recipient: partner
{extra}""",
        encoding="utf-8",
    )
    return load_campaign(path)


def group(n: int) -> list[tuple[str, str, str]]:
    return [KEYS.staged_row(KEYS.member_id(k), ("EMAIL",), [f"{k:064x}"]) for k in range(n)]


def set_status(store: StateStore, registry_id: int, status: str, n: int) -> None:
    with store.engine.begin() as c:
        ids = sa.select(ledger.c.member_id).where(ledger.c.registry_id == registry_id).limit(n)
        ids = ids.where(ledger.c.status == "pending")
        c.execute(
            ledger.update()
            .where(
                ledger.c.registry_id == registry_id, ledger.c.member_id.in_(list(c.execute(ids).scalars()))
            )
            .values(status=status)
        )


def metrics(store: StateStore, run_id: str, finished: dt.datetime, **values: object) -> None:
    store.write_metrics(
        {
            "dag_id": "ads_audience__loyal",
            "run_id": run_id,
            "destination": f"meta:{ACCOUNT}",
            "segment_name": "loyal_customers",
            "audience_id": "111",
            "logical_date": finished - dt.timedelta(hours=1),
            "started_at": finished - dt.timedelta(minutes=10),
            "finished_at": finished,
            "outcome": "success",
            **values,
        }
    )


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(f"sqlite:///{tmp_path}/state.db", keys=KEYS)


def test_counts_are_the_ledgers_now_and_invalid_excluded_sizes_the_last_runs(
    store: StateStore, tmp_path: Path
) -> None:
    c = campaign(tmp_path)
    entry, _ = store.register("meta", ACCOUNT, "loyal_customers", "111", "created")
    apply_group(store, entry.id, group(20), "r2")
    set_status(store, entry.id, "sent", 11)
    set_status(store, entry.id, "in_progress", 5)
    set_status(store, entry.id, "failed", 1)  # 3 stay pending
    day = dt.datetime(2026, 11, 30, 12, tzinfo=UTC)
    metrics(store, "r0", day - dt.timedelta(days=2), sent=8, total=8, audience_size=8, invalid=9)
    metrics(
        store, "r1", day - dt.timedelta(days=1), sent=10, total=10, audience_size=None, invalid=4, excluded=2
    )

    (p,) = campaign_progress(store, [c], day)
    meta, drop = p.destinations
    assert meta.destination == f"meta:{ACCOUNT}" and meta.audience_id == "111"
    assert meta.counts == {
        "sent": 11,
        "in_progress": 5,
        "pending": 3,
        "failed": 1,
        "removed": 0,
        "removing": 0,
        "total": 20,
        "invalid": 4,  # the last run's, not the first's
        "excluded": 2,
    }
    assert meta.counts == {
        **store.ledger_counts(entry.id),
        "total": 20,
        "invalid": 4,
        "excluded": 2,
    }
    assert meta.syncing  # members in progress and pending
    # the size is the last one the platform reported (r1 read none)
    assert (meta.audience_size, meta.size_run_id) == (8, "r0")
    assert [(h.run_id, h.sent, h.audience_size) for h in meta.history] == [("r0", 8, 8), ("r1", 10, None)]
    assert p.last_run is not None and p.last_run["run_id"] == "r1" and p.last_run["outcome"] == "success"
    # a destination never synced: zeros, no audience, no delivery status
    assert drop.audience_id is None and drop.counts["total"] == 0 and drop.delivery is None
    assert not drop.syncing and drop.history == []
    # the seams of the approval work
    # the version an approval would approve, not approved yet; once recorded, who and when
    assert p.version == campaign_version(c) and p.approval is None
    decided = dt.datetime(2026, 12, 1, 9, 30, tzinfo=dt.UTC)
    ApprovalLog(store).record(
        Decision(c.dag_id, p.version, APPROVED, "ana", decided, FROM_AIRFLOW, run_id="r1")
    )
    (again,) = campaign_progress(store, [c], day)
    assert again.approval == {"by": "ana", "at": decided.isoformat(), "source": FROM_AIRFLOW}

    doc = as_json([p], day)
    assert doc["campaigns"][0]["destinations"][0]["counts"]["in_progress"] == 5
    text = format_progress([p])
    assert "sent 11, in progress 5, pending 3, failed 1" in text and "platform size 8" in text


def test_the_trend_holds_the_last_runs_only(store: StateStore, tmp_path: Path) -> None:
    c = campaign(tmp_path)
    start = dt.datetime(2026, 11, 1, 12, tzinfo=UTC)
    for i in range(5):
        metrics(store, f"r{i}", start + dt.timedelta(days=i), sent=i, total=i, audience_size=i)
    (p,) = campaign_progress(store, [c], start + dt.timedelta(days=6), runs=3)
    assert [h.run_id for h in p.destinations[0].history] == ["r2", "r3", "r4"]


def in_flight(store: StateStore, registry_id: int, run_id: str, created: dt.datetime) -> None:
    with store.engine.begin() as c:
        c.execute(
            uploads.insert().values(
                registry_id=registry_id,
                audience_id="111",
                op="add",
                handle="h",
                run_id=run_id,
                state="finished",
                created_at=created,
            )
        )


# Europe/London in winter is UTC: cut-off 19:00, promise 01:00 the day after the window's day
@pytest.mark.parametrize(
    ("finished", "now", "upload", "outcome", "want"),
    [
        ("2026-11-30T12:10", "2026-11-30T13:00", False, "success", ON_TIME),  # done before 01:00 on 12-01
        ("2026-12-01T02:00", "2026-12-01T03:00", False, "success", MISSED),  # done after the promise
        (None, "2026-11-30T14:00", True, None, ON_TIME),  # on its way, 11 hours left
        (None, "2026-12-01T00:30", True, None, AT_RISK),  # on its way, half an hour left
        (None, "2026-12-01T01:00", True, None, MISSED),  # on its way at the promise
        ("2026-11-30T12:10", "2026-11-30T13:00", False, "failed", AT_RISK),  # nothing on its way
    ],
)
def test_delivery_status(
    store: StateStore,
    tmp_path: Path,
    finished: str | None,
    now: str,
    upload: bool,
    outcome: str | None,
    want: str,
) -> None:
    c = campaign(tmp_path)
    entry, _ = store.register("meta", ACCOUNT, "loyal_customers", "111", "created")
    apply_group(store, entry.id, group(4), "r1")
    released = dt.datetime(2026, 11, 30, 12, tzinfo=UTC)
    if finished:
        set_status(store, entry.id, "sent", 4 if outcome == "success" else 0)
        end = dt.datetime.fromisoformat(finished).replace(tzinfo=UTC)
        metrics(store, "r1", end, started_at=released, outcome=outcome, sent=4, total=4)
    if upload:
        set_status(store, entry.id, "in_progress", 4)
        in_flight(store, entry.id, "r1", released)
    (p,) = campaign_progress(store, [c], dt.datetime.fromisoformat(now).replace(tzinfo=UTC))
    delivery = p.destinations[0].delivery
    assert delivery is not None and delivery.status == want
    assert delivery.available_by == "2026-12-01T01:00:00+00:00"


def test_next_run_follows_the_schedule_in_the_campaigns_time_zone(tmp_path: Path) -> None:
    summer = dt.datetime(2026, 8, 10, 12, tzinfo=UTC)  # London is UTC+1
    assert next_run(campaign(tmp_path), summer) == dt.datetime(2026, 8, 10, 23, tzinfo=UTC)
    assert next_run(campaign(tmp_path, '"30 6 * * 1"'), summer) == dt.datetime(2026, 8, 17, 5, 30, tzinfo=UTC)
    assert next_run(campaign(tmp_path, '"@once"'), summer) is None
    before = dt.datetime(2026, 7, 1, tzinfo=UTC)  # before the campaign starts: its first day
    assert next_run(campaign(tmp_path), before) == dt.datetime(2026, 7, 31, 23, tzinfo=UTC)
    ended = campaign(tmp_path).model_copy(update={"duration": campaign(tmp_path).duration.model_copy(
        update={"end": dt.date(2026, 8, 10)})})  # fmt: skip
    assert next_run(ended, summer) is None
