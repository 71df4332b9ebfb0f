"""Alerts and the delivery promise end to end: a campaign's DAG through dag.test() against the Meta
sandbox, alerts e-mailed through Airflow's SMTP notifier to a real SMTP server (tests/smtp.py)."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pendulum
import pytest
import sqlalchemy as sa

from audience_sync.core.ledger import StateStore
from tests.conftest import state_connection
from tests.smtp import Inbox, smtp_server

DAG_ID = "ads_audience__alerting"
SEGMENT = "alerting_users"


@pytest.fixture
def state_url(tmp_path: Path) -> str:
    """A SQLite state: what is tested here is the DAG's, the state engines are tested elsewhere."""
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def inbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_url: str, airflow_db: None, fresh_sandbox: object
) -> Iterator[Inbox]:
    conn, _ = state_connection(state_url)
    monkeypatch.setenv("AIRFLOW_CONN_AUDIENCE_SYNC_DB", json.dumps(conn))
    monkeypatch.setenv("AUDIENCE_SYNC_CAMPAIGNS_DIR", str(tmp_path / "campaigns"))
    (tmp_path / "campaigns").mkdir()
    with smtp_server("smtp_alerts") as box:
        yield box


def write_campaign(folder: Path, members: int, extra: str = "") -> None:
    """A mirror campaign of ``members`` customers (a list file) to Meta, alerting ops@example.com."""
    data = folder / "members.csv"
    data.write_text(
        "customer_id,email\n" + "".join(f"{i},person{i}@example.com\n" for i in range(members)),
        encoding="utf-8",
    )
    (folder / "campaigns" / "alerting.yaml").write_text(
        f"""\
campaign: Alerting test
duration: {{start: 2026-01-01}}
schedule: "@daily"
segment_name: {SEGMENT}
processing_poke_seconds: 1
retries: 0
audience_group:
  list: {json.dumps(str(data))}
  key: customer_id
  identifiers: {{email: email}}
destinations:
  - platform: meta
    ad_account_id: "act_1234567890"
alerts:
  email: [ops@example.com]
  smtp_conn_id: smtp_alerts
{extra}""",
        encoding="utf-8",
    )


def run(day: int):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).dags[DAG_ID]
    return dag.test(logical_date=pendulum.datetime(2026, 12, day, tz="UTC"))


def task_states(dag_run) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in dag_run.get_task_instances()}


def xcoms(run_id: str) -> dict[str, object]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as s:
        rows = s.query(XComModel).filter_by(dag_id=DAG_ID, run_id=run_id, key="return_value").all()
        return {r.task_id: r.value for r in rows}


def audience_size(sandbox: object) -> int:
    (audience,) = [a for a in sandbox.meta.audiences() if a["name"] == SEGMENT]  # type: ignore[attr-defined]
    return int(audience["count"])


def assert_no_identifiers(inbox: Inbox) -> None:
    for text in [*inbox.subjects(), *inbox.bodies()]:
        assert "@example.com" not in text.replace("ops@example.com", "").replace("airflow@example.com", "")


@pytest.mark.timeout(300)
def test_a_failed_sync_e_mails_the_campaign_s_alert_once(inbox: Inbox, tmp_path: Path, fresh_sandbox) -> None:
    write_campaign(tmp_path, members=30)
    fresh_sandbox.meta.add_fault(method="POST", path_regex=r"/users", times=None, code=190)  # token revoked
    dag_run = run(1)

    assert dag_run.state == "failed" and task_states(dag_run)["sync_meta"] == "failed"
    assert inbox.subjects() == ["[audience-sync] Alerting test: sync failed"]  # not record_metrics' echo
    (body,) = inbox.bodies()
    assert f"DAG {DAG_ID}" in body and "task sync_meta" in body and "190" in body
    assert [str(m["To"]) for m in inbox.messages] == ["ops@example.com"]
    assert_no_identifiers(inbox)


@pytest.mark.timeout(600)
def test_a_collapsing_group_is_held_before_removing_and_alerted(
    inbox: Inbox, tmp_path: Path, fresh_sandbox, state_url: str
) -> None:
    write_campaign(tmp_path, members=200)
    assert run(1).state == "success" and audience_size(fresh_sandbox) == 200
    assert inbox.messages == []  # a first run has nothing to compare with

    write_campaign(tmp_path, members=20)  # a broken query: 90 % of the group gone
    dag_run = run(2)
    states = task_states(dag_run)
    assert (states["plan"], states["sync_meta"], states["wait_meta"]) == (
        "success",
        "failed",
        "upstream_failed",
    )
    assert audience_size(fresh_sandbox) == 200  # nothing removed
    plan = xcoms(dag_run.run_id)["plan"]["sync_meta"]  # type: ignore[index]
    assert plan["removes"] == 180 and "would remove 180 members" in plan["hold"]
    assert any("-90.0 %" in w for w in plan["warnings"])
    assert inbox.subjects() == ["[audience-sync] Alerting test: audience group size moved"]
    assert "The run is held" in inbox.bodies()[0]
    store = StateStore(sa.make_url(state_url))
    (row,) = store.read_metrics(DAG_ID, dag_run.run_id)
    assert (row["outcome"], row["group_size"]) == ("held", None)

    # held again next time: compared with the last size synced (200), not the held run's
    assert run(3).state == "failed" and audience_size(fresh_sandbox) == 200

    # the collapse was intended: a limit above it lets the run remove the 180
    write_campaign(tmp_path, members=20, extra="  group_change_percent: 95\n")
    assert run(4).state == "success" and audience_size(fresh_sandbox) == 20
    assert len(inbox.messages) == 2  # the second held run's alert; none for the allowed one
    assert_no_identifiers(inbox)


def _zone_near_noon() -> str:
    """An Etc/GMT zone where it is between 11:00 and 13:00 now: a promise seconds away stays on today."""
    offset = 12 - dt.datetime.now(dt.UTC).hour  # hours east of UTC; Etc/GMT names count the other way
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"


@pytest.mark.timeout(300)
def test_a_missed_available_by_fails_the_wait_and_alerts(inbox: Inbox, tmp_path: Path, fresh_sandbox) -> None:
    zone = _zone_near_noon()
    now = dt.datetime.now(ZoneInfo(zone))
    cutoff = (now + dt.timedelta(seconds=40)).time().replace(microsecond=0)
    promise = (now + dt.timedelta(seconds=45)).time().replace(microsecond=0)
    write_campaign(
        tmp_path,
        members=30,
        extra=f'timezone: "{zone}"\ndelivery: {{cutoff: "{cutoff}", available_by: "{promise}"}}\n',
    )
    fresh_sandbox.meta.processing_seconds = 600  # Meta keeps processing well past the promise
    try:
        dag_run = run(1)
    finally:
        fresh_sandbox.meta.processing_seconds = 0

    started = dt.datetime.fromisoformat(xcoms(dag_run.run_id)["sync_meta"]["started_at"])  # type: ignore[index]
    assert started.astimezone(ZoneInfo(zone)).time() < cutoff, "the sync started after the test's cut-off"
    states = task_states(dag_run)
    assert (states["sync_meta"], states["wait_meta"]) == ("success", "failed")
    assert inbox.subjects() == ["[audience-sync] Alerting test: missed its delivery promise"]
    (body,) = inbox.bodies()
    assert "DeliveryMissed" in body and f"usable on the platform by {now:%Y-%m-%d} {promise:%H:%M}" in body
    assert "in progress 30" in body
