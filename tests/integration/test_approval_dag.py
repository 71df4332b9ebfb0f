"""Off by default, and approval of campaign versions, through dag.test(), the local Meta sandbox, a SQLite
state database and Airflow's real REST endpoint for human-in-the-loop responses (in-process API app).

Every test here has a pytest timeout: ``dag.test()`` waits forever at an unanswered approval.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pendulum
import pytest

from audience_sync.core.approval import campaign_version
from audience_sync.core.approval_log import ApprovalLog
from audience_sync.core.campaign import load_campaign
from audience_sync.core.ledger import StateStore
from tests.hitl import responding

ACCOUNT = "act_7070"
SEGMENT = "approval_users"


def campaign_text(csv: Path, extra: str = "", mode: str = "mirror") -> str:
    return f"""\
campaign: Approval flow
duration: {{start: 2026-11-01}}
schedule: "@daily"
segment_name: {SEGMENT}
sync_mode: {mode}
retries: 0
audience_group:
  list: {csv}
  key: customer_id
  identifiers: {{email: email}}
destinations:
  - platform: meta
    ad_account_id: "{ACCOUNT}"
{extra}"""


class World:
    """One campaign file (``stem``) in its own folder, its state database, and how to run it."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch, stem: str, rows: int = 40) -> None:
        self.stem = stem
        self.dag_id = f"ads_audience__{stem}"
        self.folder = tmp / "campaigns"
        self.folder.mkdir()
        self.csv = tmp / "group.csv"
        self.csv.write_text(
            "customer_id,email\n" + "".join(f"{i},user{i}@example.com\n" for i in range(rows))
        )
        self.state = tmp / "state.db"
        monkeypatch.setenv("AUDIENCE_SYNC_CAMPAIGNS_DIR", str(self.folder))
        monkeypatch.setenv(
            "AIRFLOW_CONN_AUDIENCE_SYNC_DB", json.dumps({"conn_type": "sqlite", "host": str(self.state)})
        )
        monkeypatch.setenv("AUDIENCE_SYNC_RETRY_ATTEMPTS", "1")
        monkeypatch.setenv("AUDIENCE_SYNC_APPROVAL_REQUIRED", "1")
        self.write()

    @property
    def path(self) -> Path:
        return self.folder / f"{self.stem}.yaml"

    def write(self, extra: str = "", mode: str = "mirror") -> str:
        """Write the campaign file; return its version."""
        self.path.write_text(campaign_text(self.csv, extra, mode))
        return campaign_version(load_campaign(self.path))

    def run(self, day: int) -> object:
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
        assert bag.import_errors == {}, bag.import_errors
        return bag.dags[self.dag_id].test(logical_date=pendulum.datetime(2026, 11, day, tz="UTC"))

    def states(self, dr: object) -> dict[str, str]:
        return {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}  # type: ignore[attr-defined]

    def xcom(self, run_id: str, task_id: str, key: str = "return_value") -> object:
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        with create_session() as s:
            row = (
                s.query(XComModel)
                .filter_by(dag_id=self.dag_id, run_id=run_id, task_id=task_id, key=key)
                .one_or_none()
            )
            return row.value if row is not None else None

    def store(self) -> StateStore:
        return StateStore(f"sqlite:///{self.state}")


@pytest.fixture(scope="module")
def api() -> object:
    """An in-process client of Airflow's real API app (the REST API the Required Actions page uses)."""
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] = "True"  # no login: test use only
    try:
        with TestClient(create_app()) as client:
            yield client
    finally:
        os.environ.pop("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", None)


def member_uploads(sandbox: object) -> list[dict]:
    """Requests that would change an audience: creating one, or adding/removing members."""
    return [
        e
        for e in sandbox.meta.requests_log()  # type: ignore[attr-defined]
        if e["method"] != "GET"
    ]


# ------------------------------------------------------------------------------------------ enabled
@pytest.mark.timeout(300)
def test_a_disabled_deployment_reads_and_sends_nothing_and_enabling_syncs(
    airflow_db,
    fresh_sandbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from audience_sync.operators.staging import staging_dir

    world = World(tmp_path, monkeypatch, "approval_disabled")
    monkeypatch.setenv("AUDIENCE_SYNC_APPROVAL_REQUIRED", "0")
    monkeypatch.delenv("AUDIENCE_SYNC_ENABLED")  # the default: off

    dr = world.run(2)
    states = world.states(dr)
    assert str(dr.state) == "success"
    assert states.pop("enabled") == "success"
    assert set(states.values()) == {"skipped"}, states  # record_metrics too: the state is never opened
    assert fresh_sandbox.meta.requests_log() == []
    assert not staging_dir(world.dag_id, dr.run_id).exists()
    assert not world.state.exists()
    out = "\n".join([*capfd.readouterr(), caplog.text])  # the task's log, wherever it was captured
    assert "audience-sync is disabled" in out and "set AUDIENCE_SYNC_ENABLED=1" in out

    monkeypatch.setenv("AUDIENCE_SYNC_ENABLED", "1")
    dr = world.run(3)
    assert str(dr.state) == "success"
    assert set(world.states(dr).values()) == {"success"}
    (aud,) = fresh_sandbox.meta.audiences(ACCOUNT)
    assert len(fresh_sandbox.meta.members(aud["id"])) == 40


@pytest.mark.timeout(300)
def test_a_disabled_partitioned_campaign_stops_before_sizing_its_group(
    airflow_db, fresh_sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World(tmp_path, monkeypatch, "approval_disabled_parts")
    world.write(extra="partitions: auto\n")
    monkeypatch.delenv("AUDIENCE_SYNC_ENABLED")
    dr = world.run(2)
    states = world.states(dr)
    assert str(dr.state) == "success" and states.pop("enabled") == "success"
    assert {"partition", "extract", "plan", "approve"} <= set(states) and set(states.values()) == {"skipped"}
    assert fresh_sandbox.meta.requests_log() == [] and not world.state.exists()


# ----------------------------------------------------------------------------------------- approval
@pytest.mark.timeout(300)
def test_a_new_version_waits_for_approval_then_runs_without_asking_until_it_changes(
    airflow_db, fresh_sandbox, api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World(tmp_path, monkeypatch, "approval_flow")
    version = campaign_version(load_campaign(world.path))

    with responding(api, world.dag_id, "Approve") as r:
        first = world.run(2)
    assert str(first.state) == "success" and len(r.asked) == 1
    (asked,) = r.asked
    assert asked["status"] == 200 and asked["task_id"] == "approve"
    # the approver sees the campaign, its version, the dry-run plan and the warnings
    assert "Approval flow" in asked["subject"] and version[:12] in asked["subject"]
    body = asked["body"]
    assert version in body and first.run_id in body
    assert f"meta {ACCOUNT} | would create" in body and "| 40 | 0 | 0 | 40 (changed 0) | 0 | 0 |" in body
    assert "**Warnings:**" in body
    (aud,) = fresh_sandbox.meta.audiences(ACCOUNT)
    assert len(fresh_sandbox.meta.members(aud["id"])) == 40

    store = world.store()
    (decision,) = ApprovalLog(store).history(world.dag_id)
    assert (decision.decision, decision.version, decision.source) == ("approved", version, "airflow")
    assert decision.decided_by and decision.run_id == first.run_id
    assert decision.plan_summary["sync_meta"]["adds"] == 40
    assert decision.plan_summary["sync_meta"]["audience"]["action"] == "would create"
    assert [m["outcome"] for m in store.read_metrics(world.dag_id)] == ["success"]

    # the same version again: no question, it runs
    with responding(api, world.dag_id, "Reject") as r:
        second = world.run(3)
    assert r.asked == [] and str(second.state) == "success"
    assert world.xcom(second.run_id, "approve")["source"] == "airflow"
    assert world.states(second)["sync_meta"] == "success"

    # any change to what is sent is a new version: it asks again (and a rejection sends nothing)
    changed = world.write(mode="add_only")
    assert changed != version
    before = len(fresh_sandbox.meta.requests_log())
    with responding(api, world.dag_id, "Reject") as r:
        third = world.run(4)
    assert len(r.asked) == 1 and changed in r.asked[0]["body"]
    assert str(third.state) == "success"
    assert [e for e in fresh_sandbox.meta.requests_log()[before:] if e["method"] != "GET"] == []
    decisions = ApprovalLog(store).history(world.dag_id)
    assert [(d.decision, d.version) for d in decisions] == [("rejected", changed), ("approved", version)]

    # `audience-sync approval` shows it all
    from audience_sync.approval_status import campaign_status

    text = campaign_status(load_campaign(world.path))
    assert f"version: {changed}" in text and "not approved: the next run waits" in text
    assert f"version {changed[:12]} rejected by" in text and f"version {version[:12]} approved by" in text
    assert f"meta:{ACCOUNT}: rejected, sent 40" in text  # the ledger's count: nothing more was sent


@pytest.mark.timeout(300)
def test_a_rejected_version_sends_nothing_and_the_run_is_recorded_as_rejected(
    airflow_db, fresh_sandbox, api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World(tmp_path, monkeypatch, "approval_rejected")
    with responding(api, world.dag_id, "Reject") as r:
        dr = world.run(2)
    assert len(r.asked) == 1 and r.asked[0]["status"] == 200
    states = world.states(dr)
    assert str(dr.state) == "success"
    assert (
        states["approve"] == "success"
        and states["sync_meta"] == "skipped"
        and states["wait_meta"] == "skipped"
    )
    assert states["record_metrics"] == "success"
    assert member_uploads(fresh_sandbox) == []  # the plan only looked the audience up
    assert fresh_sandbox.meta.audiences(ACCOUNT) == []
    assert world.xcom(dr.run_id, "approve") is None  # the task ended by skipping the syncs
    result = world.xcom(dr.run_id, "approve", key="decision")
    assert result["approved"] is False and result["decision"] == "rejected"
    store = world.store()
    (row,) = store.read_metrics(world.dag_id)
    assert row["outcome"] == "rejected" and row["sent"] == 0 and "not approved" in row["note"]
    (decision,) = ApprovalLog(store).history(world.dag_id)
    assert decision.decision == "rejected" and decision.decided_by

    # rejected counts for that run only: the next run of the same version asks again
    with responding(api, world.dag_id, "Approve") as r:
        dr = world.run(3)
    assert len(r.asked) == 1 and str(dr.state) == "success"
    (aud,) = fresh_sandbox.meta.audiences(ACCOUNT)
    assert len(fresh_sandbox.meta.members(aud["id"])) == 40


@pytest.mark.timeout(300)
def test_an_unanswered_approval_times_out_as_not_approved(
    airflow_db, fresh_sandbox, api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The response timeout is enforced by the scheduler's ``awaiting_input`` sweep: the test runs that
    very code once the deadline has passed, as a scheduler tick would."""
    import logging
    import time

    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.utils.session import create_session

    monkeypatch.setenv("AUDIENCE_SYNC_APPROVAL_TIMEOUT_HOURS", str(1 / 3600))  # one second
    world = World(tmp_path, monkeypatch, "approval_timeout")

    def let_it_time_out(ti: object) -> None:
        time.sleep(1.5)
        tick = SimpleNamespace(log=logging.getLogger("scheduler-tick"))
        with create_session() as session:
            SchedulerJobRunner.check_awaiting_input_timeouts(tick, session=session)  # type: ignore[arg-type]

    with responding(api, world.dag_id, act=let_it_time_out) as r:
        dr = world.run(2)
    assert len(r.asked) == 1
    states = world.states(dr)
    assert states["approve"] == "success" and states["sync_meta"] == "skipped"
    assert member_uploads(fresh_sandbox) == []
    store = world.store()
    (decision,) = ApprovalLog(store).history(world.dag_id)
    assert decision.decision == "timed_out" and decision.decided_by is None
    (row,) = store.read_metrics(world.dag_id)
    assert row["outcome"] == "approval_timeout"


@pytest.mark.timeout(300)
def test_a_campaign_file_approval_applies_to_its_version_only(
    airflow_db,
    fresh_sandbox,
    api,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = World(tmp_path, monkeypatch, "approval_in_file")
    version = campaign_version(load_campaign(world.path))
    block = 'approval: {{approved_by: jane@example.com, approved_at: 2026-11-01T09:30:00Z, version: "{v}"}}\n'

    # a block for another version does not apply: the run asks, and the log gives the version to copy
    world.write(extra=block.format(v="ab" * 32))
    assert campaign_version(load_campaign(world.path)) == version  # the block is not part of the version
    with responding(api, world.dag_id, "Reject") as r:
        dr = world.run(2)
    assert len(r.asked) == 1 and world.states(dr)["sync_meta"] == "skipped"
    out = "\n".join([*capfd.readouterr(), caplog.text])
    assert f"set approval.version: {version}" in out
    assert member_uploads(fresh_sandbox) == []

    # the block for this version approves it: no question, sent, recorded with the file's approver
    world.write(extra=block.format(v=version))
    with responding(api, world.dag_id, "Reject") as r:
        dr = world.run(3)
    assert r.asked == [] and str(dr.state) == "success"
    assert world.states(dr)["sync_meta"] == "success"
    (aud,) = fresh_sandbox.meta.audiences(ACCOUNT)
    assert len(fresh_sandbox.meta.members(aud["id"])) == 40
    decision = ApprovalLog(world.store()).history(world.dag_id)[0]
    assert (decision.decision, decision.source, decision.decided_by) == (
        "approved",
        "campaign_file",
        "jane@example.com",
    )
    assert decision.decided_at == pendulum.datetime(2026, 11, 1, 9, 30, tz="UTC")
