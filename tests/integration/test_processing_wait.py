"""The wait task: members stay in progress until the platform processed the upload, and waiting holds no
worker slot (a sensor in reschedule mode), through Airflow's dag.test() against the Meta sandbox."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pendulum
import pytest
import sqlalchemy as sa
import yaml

from audience_sync.core.ledger import StateStore
from audience_sync.demo_data import write_demo_db

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "include" / "demo" / "campaigns" / "demo_abandoned_cart.yaml"
DAG_ID = "ads_audience__slow_platform"


@pytest.fixture
def campaign_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The demo campaign as ``slow_platform``, asking the platform every second for at most 2 minutes."""
    folder = tmp_path / "campaigns"
    folder.mkdir()
    data = yaml.safe_load(DEMO.read_text())
    data.update(processing_poke_seconds=1, processing_timeout_minutes=2, segment_name="slow_platform_users")
    (folder / "slow_platform.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("AUDIENCE_SYNC_CAMPAIGNS_DIR", str(folder))
    crm = tmp_path / "crm.db"
    write_demo_db(crm, n=300, seed=5)
    monkeypatch.setenv("AIRFLOW_CONN_CRM_DB", json.dumps({"conn_type": "sqlite", "host": str(crm)}))
    state = tmp_path / "state.db"
    monkeypatch.setenv(
        "AIRFLOW_CONN_AUDIENCE_SYNC_DB", json.dumps({"conn_type": "sqlite", "host": str(state)})
    )
    return folder


def _dag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).dags[DAG_ID]


def test_the_wait_task_is_a_rescheduling_sensor_with_the_campaign_timeout(campaign_dir: Path) -> None:
    wait = _dag().get_task("wait_meta")
    assert wait.mode == "reschedule"  # gives its worker slot back between pokes
    assert wait.timeout == 120 and wait.poke_interval == 1
    assert [t.task_id for t in wait.upstream_list] == ["sync_meta"]
    assert [t.task_id for t in wait.downstream_list] == ["record_metrics"]


@pytest.mark.timeout(300)
def test_members_are_sent_only_once_the_platform_processed_them(
    airflow_db, fresh_sandbox, campaign_dir: Path, tmp_path: Path
) -> None:
    from airflow.models.taskreschedule import TaskReschedule
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    fresh_sandbox.meta.processing_seconds = 4
    try:
        run = _dag().test(logical_date=pendulum.datetime(2026, 12, 1, tz="UTC"))
    finally:
        fresh_sandbox.meta.processing_seconds = 0
    assert run.state == "success"
    with create_session() as s:
        rows = s.query(XComModel).filter_by(dag_id=DAG_ID, run_id=run.run_id, key="return_value").all()
        x = {r.task_id: r.value for r in rows}
        reschedules = (
            s.query(TaskReschedule)
            .join(TaskReschedule.task_instance)
            .filter_by(dag_id=DAG_ID, task_id="wait_meta")
            .count()
        )
    group = x["extract"]["valid"]
    assert group > 50
    # the sync task handed everything over; Meta was still processing, so nothing counted as sent yet
    assert x["sync_meta"]["in_progress"] == group and x["sync_meta"]["sent"] == 0
    assert x["sync_meta"]["waiting_uploads"] == 1 and x["sync_meta"]["run"]["added"] == group
    # the sensor gave its slot back at least once, then saw the upload processed
    assert reschedules >= 1
    assert x["wait_meta"]["sent"] == group and x["wait_meta"]["in_progress"] == 0
    store = StateStore(sa.make_url(f"sqlite:///{tmp_path / 'state.db'}"))
    # one metrics row per destination; the demo campaign also sends to Google
    (metrics,) = [m for m in store.read_metrics(DAG_ID, run.run_id) if m["destination"].startswith("meta")]
    assert metrics["outcome"] == "success" and metrics["sent"] == group and metrics["in_progress"] == 0
    assert metrics["run_added"] == group and metrics["run_rejected"] == 0
