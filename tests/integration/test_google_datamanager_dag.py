"""One campaign to Meta and Google (Data Manager) through Airflow's dag.test(): the registered factory
builds the Google destination from ``google_datamanager_default`` and the campaign's options, the sync
task hands the members over while Google is still processing, and the wait task settles them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pendulum
import pytest
import yaml

from audience_sync.demo_data import write_demo_db

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "include" / "demo" / "campaigns" / "demo_abandoned_cart.yaml"
DAG_ID = "ads_audience__two_platforms"
ACCOUNT = "1234567890"


@pytest.fixture
def campaign_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox) -> Path:
    folder = tmp_path / "campaigns"
    folder.mkdir()
    data = yaml.safe_load(DEMO.read_text())
    data.update(processing_poke_seconds=1, processing_timeout_minutes=2, segment_name="two_platform_users")
    (google,) = [d for d in data["destinations"] if d["platform"] == "google_datamanager"]  # the demo's
    assert google["operating_account_id"] == "123-456-7890"
    google["membership_duration_days"] = 30
    (folder / "two_platforms.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("AUDIENCE_SYNC_CAMPAIGNS_DIR", str(folder))
    crm = tmp_path / "crm.db"
    write_demo_db(crm, n=300, seed=7)
    monkeypatch.setenv("AIRFLOW_CONN_CRM_DB", json.dumps({"conn_type": "sqlite", "host": str(crm)}))
    state = tmp_path / "state.db"
    monkeypatch.setenv(
        "AIRFLOW_CONN_AUDIENCE_SYNC_DB", json.dumps({"conn_type": "sqlite", "host": str(state)})
    )
    return folder


@pytest.mark.timeout(300)
def test_one_campaign_syncs_to_meta_and_google(airflow_db, fresh_sandbox, campaign_dir: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    google = fresh_sandbox.app("google_datamanager")
    google.processing_seconds = 3
    try:
        dag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).dags[DAG_ID]
        run = dag.test(logical_date=pendulum.datetime(2026, 12, 1, tz="UTC"))
    finally:
        google.processing_seconds = 0
    assert run.state == "success"
    with create_session() as s:
        rows = s.query(XComModel).filter_by(dag_id=DAG_ID, run_id=run.run_id, key="return_value").all()
        x = {r.task_id: r.value for r in rows}
    synced, waited = x["sync_google_datamanager"], x["wait_google_datamanager"]
    group = synced["total"]
    assert group > 50
    # handed over while Google was still processing: in progress, then sent once processed
    assert (synced["in_progress"], synced["sent"], synced["waiting_uploads"]) == (group, 0, 1)
    assert (waited["sent"], waited["in_progress"]) == (group, 0)
    (user_list,) = [ul for ul in google.user_lists(ACCOUNT) if ul["name"] == "two_platform_users"]
    assert user_list["id"] == synced["audience_id"] and user_list["size"] == group
    assert x["wait_meta"]["sent"] == x["sync_meta"]["total"] > 50
