"""Campaign versions, the approval rules and the decision log (``core/approval.py``, ``core/approval_log.py``)."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from audience_sync.core.approval import (
    Decision,
    approval_body,
    campaign_definition,
    campaign_version,
    file_approval,
    plan_summary,
)
from audience_sync.core.approval_log import ApprovalLog
from audience_sync.core.campaign import campaign_from_mapping, load_campaign
from audience_sync.core.errors import CampaignErrors
from audience_sync.core.ledger import StateStore

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "include" / "demo" / "campaigns" / "demo_abandoned_cart.yaml"


@pytest.fixture
def base(tmp_path: Path) -> dict[str, Any]:
    """The demo campaign as data, reading its query from a file of the test's own."""
    data = yaml.safe_load(DEMO.read_text())
    sql = tmp_path / "group.sql"
    sql.write_text((ROOT / "include" / "demo" / "sql" / "abandoned_cart.sql").read_text())
    data["audience_group"]["sql"] = str(sql)
    return data


def version_of(data: dict[str, Any], tmp_path: Path, stem: str = "campaign") -> str:
    return campaign_version(campaign_from_mapping(data, tmp_path / f"{stem}.yaml"))


def changed(data: dict[str, Any], change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    out = copy.deepcopy(data)
    change(out)
    return out


NOT_IN_VERSION = {
    "campaign name": lambda d: d.update(campaign="Renamed"),
    "ads campaign name": lambda d: d.update(ads_campaign_name="Other ads"),
    "description": lambda d: d.update(description="why we run it"),
    "owner": lambda d: d.update(owner="marketing"),
    "tags": lambda d: d.update(tags=["q4"]),
    "duration": lambda d: d.update(duration={"start": "2026-12-01", "end": "2026-12-31"}),
    "schedule": lambda d: d.update(schedule="0 6 * * *"),
    "timezone": lambda d: d.update(timezone="Europe/London"),
    "retries": lambda d: d.update(retries=5),
    "partitions": lambda d: d.update(partitions="auto"),
    "processing timeout": lambda d: d.update(processing_timeout_minutes=60),
    "approval block": lambda d: d.update(
        approval={"approved_by": "jane", "approved_at": "2026-11-30", "version": "ab" * 32}
    ),
    "destination order": lambda d: d["destinations"].reverse(),
    "identifier order": lambda d: d["audience_group"].update(
        identifiers=dict(reversed(list(d["audience_group"]["identifiers"].items())))
    ),
    "account spelling": lambda d: d["destinations"][0].update(ad_account_id="1234567890"),  # act_ added
}

IN_VERSION = {
    "segment name": lambda d: d.update(segment_name="other_users"),
    "sync mode": lambda d: d.update(sync_mode="add_only"),
    "inline query": lambda d: d["audience_group"].update(sql="SELECT * FROM customers WHERE 1 = 1"),
    "group connection": lambda d: d["audience_group"].update(conn_id="warehouse"),
    "member key": lambda d: d["audience_group"].update(key="email"),
    "an identifier": lambda d: d["audience_group"]["identifiers"].pop("phone"),
    "identifier column": lambda d: d["audience_group"]["identifiers"].update(email="work_email"),
    "default country": lambda d: d["audience_group"].update(default_country="GB"),
    "consent": lambda d: d["audience_group"].update(consent={"column": "marketing_ok"}),
    "exclusions": lambda d: d["audience_group"].update(exclude_segments=["loyal_users"]),
    "a destination's account": lambda d: d["destinations"][0].update(ad_account_id="act_99"),
    "a destination's connection": lambda d: d["destinations"][0].update(conn_id="meta_other"),
    "a destination's own setting": lambda d: d["destinations"][1].update(membership_duration_days=30),
    "one destination less": lambda d: d["destinations"].pop(),
}


def test_the_version_is_stable_and_leaves_scheduling_and_descriptions_out(
    base: dict[str, Any], tmp_path: Path
) -> None:
    version = version_of(base, tmp_path)
    assert len(version) == 64 and int(version, 16) >= 0
    assert version_of(copy.deepcopy(base), tmp_path, "another_file") == version  # stable, not per file
    for what, change in NOT_IN_VERSION.items():
        assert version_of(changed(base, change), tmp_path) == version, what


def test_everything_that_decides_what_is_sent_changes_the_version(
    base: dict[str, Any], tmp_path: Path
) -> None:
    version = version_of(base, tmp_path)
    seen = {version}
    for what, change in IN_VERSION.items():
        other = version_of(changed(base, change), tmp_path)
        assert other not in seen, what
        seen.add(other)


def test_the_query_text_is_in_the_version(base: dict[str, Any], tmp_path: Path) -> None:
    version = version_of(base, tmp_path)
    sql = Path(base["audience_group"]["sql"])
    definition = campaign_definition(campaign_from_mapping(base, tmp_path / "c.yaml"))
    assert definition["audience_group"]["sql"] == sql.read_text().strip()
    sql.write_text(sql.read_text().replace("cart_abandoned_at", "cart_abandoned_at ", 1) + "\n-- edited\n")
    assert version_of(base, tmp_path) != version


def test_a_file_approval_applies_to_its_version_only() -> None:
    block = {"approved_by": "jane", "approved_at": "2026-11-30T08:00:00+01:00", "version": "ab" * 32}
    decision, why_not = file_approval(block, "ads_audience__x", "ab" * 32)
    assert why_not is None and decision is not None and decision.approved
    assert (decision.decided_by, decision.source) == ("jane", "campaign_file")
    assert decision.decided_at == dt.datetime(2026, 11, 30, 7, tzinfo=dt.UTC)

    decision, why_not = file_approval(block, "ads_audience__x", "cd" * 32)
    assert decision is None and why_not is not None
    assert "does not apply" in why_not and f"set approval.version: {'cd' * 32}" in why_not
    assert file_approval(None, "ads_audience__x", "cd" * 32) == (None, None)


def test_an_approval_block_is_validated_with_a_fix(base: dict[str, Any], tmp_path: Path) -> None:
    data = changed(
        base, lambda d: d.update(approval={"approved_by": "jane", "approved_at": "soon", "version": "1"})
    )
    with pytest.raises(CampaignErrors) as err:
        campaign_from_mapping(data, tmp_path / "c.yaml")
    text = str(err.value)
    assert "approval.version" in text and "audience-sync version" in text
    assert "approval.approved_at" in text and "YYYY-MM-DD" in text
    data["approval"] = {"approved_by": "jane", "approved_at": dt.date(2026, 11, 30), "version": "AB" * 32}
    c = campaign_from_mapping(data, tmp_path / "c.yaml")
    assert c.approval is not None and c.approval.version == "ab" * 32
    assert c.approval.approved_at == dt.datetime(2026, 11, 30, tzinfo=dt.UTC)


def test_the_demo_campaign_has_a_version(tmp_path: Path) -> None:
    assert len(campaign_version(load_campaign(DEMO))) == 64


PLAN = {
    "sync_meta": {
        "platform": "meta",
        "account": "act_1",
        "segment_name": "vip_users",
        "mode": "mirror",
        "audience": {"id": "123", "action": "reuse"},
        "group": 90,
        "adds": 10,
        "changed": 2,
        "removes": 5,
        "unchanged": 78,
        "invalid": 3,
        "excluded_no_consent": 4,
        "excluded_by_segments": 1,
        "warnings": ["fewer than 100 members"],
        "backfill": False,
    },
    "sync_tiktok": {
        "platform": "tiktok",
        "account": "7",
        "segment_name": "vip_users",
        "mode": "mirror",
        "audience": {"id": None, "action": "would create"},
        "group": 90,
        "adds": 90,
        "changed": 0,
        "removes": 0,
        "unchanged": 0,
        "warnings": [],
    },
}


def test_the_approval_body_shows_the_version_the_plan_and_the_warnings() -> None:
    summary = plan_summary(PLAN)
    assert "backfill" not in summary["sync_meta"] and summary["sync_meta"]["adds"] == 10
    body = approval_body(
        campaign="VIP", dag_id="ads_audience__vip", version="ab" * 32, summary=summary, timeout_hours=24
    )
    assert "VIP" in body and "ab" * 32 in body and "`vip_users`" in body and "mirror" in body
    assert "| meta act_1 | reuse 123 | 90 | 3 | 5 | 10 (changed 2) | 5 | 78 |" in body
    assert "| tiktok 7 | would create | 90 | 0 | 0 | 90 (changed 0) | 0 | 0 |" in body
    assert "- meta act_1: fewer than 100 members" in body
    assert "24 hour(s) counts as rejected" in body
    empty = approval_body(campaign="VIP", dag_id="d", version="v", summary={}, timeout_hours=1.5)
    assert "- none" in empty and "1.5 hour(s)" in empty


def test_the_log_records_decisions_and_finds_an_approval(state_url: str) -> None:
    store = StateStore(state_url)
    log = ApprovalLog(store)
    at = dt.datetime(2026, 11, 30, 9, tzinfo=dt.UTC)

    def decision(version: str, what: str, by: str | None = "jane") -> Decision:
        return Decision("ads_audience__vip", version, what, by, at, "airflow", "run-1", plan_summary(PLAN))

    assert log.approval("ads_audience__vip", "v1") is None
    log.record(decision("v1", "rejected"))
    log.record(decision("v1", "timed_out", None))
    assert log.approval("ads_audience__vip", "v1") is None  # not approved: each counted for its run
    log.record(decision("v1", "approved"))
    log.record(decision("v2", "rejected"))
    found = log.approval("ads_audience__vip", "v1")
    assert found == decision("v1", "approved")  # everything comes back as recorded
    assert log.approval("ads_audience__other", "v1") is None  # per campaign
    assert [d.decision for d in log.history("ads_audience__vip")] == [
        "rejected",
        "approved",
        "timed_out",
        "rejected",
    ]
    assert len(log.history("ads_audience__vip", limit=2)) == 2
    with pytest.raises(ValueError, match="unknown decision"):
        log.record(decision("v3", "maybe"))
    store.engine.dispose()
