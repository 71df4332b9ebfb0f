"""A sync task that dies mid-upload is retried by Airflow and resumes from the first unconfirmed batch."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pendulum
import pytest

from audience_sync.core.campaign import load_campaign
from audience_sync.demo_data import write_demo_db

CAMPAIGN = """\
campaign: Retry drill
duration: {start: 2026-11-01}
schedule: "@daily"
segment_name: retry_drill_users
retries: 2
retry_delay_minutes: 0
audience_group:
  sql: SELECT customer_id, email, mobile, country FROM customers
  conn_id: crm_db
  key: customer_id
  identifiers: {email: email, phone: mobile, country: country}
  default_country: US
destinations:
  - platform: meta
    ad_account_id: "act_4242"
"""


@pytest.mark.timeout(300)
def test_airflow_retries_a_killed_upload_and_it_resumes_exactly(
    airflow_db, fresh_sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    folder = tmp_path / "campaigns"
    folder.mkdir()
    (folder / "retry_drill.yaml").write_text(CAMPAIGN)
    assert load_campaign(folder / "retry_drill.yaml").retries == 2
    crm = tmp_path / "crm.db"
    write_demo_db(crm, n=26_000, seed=21)
    monkeypatch.setenv("AUDIENCE_SYNC_CAMPAIGNS_DIR", str(folder))
    monkeypatch.setenv("AIRFLOW_CONN_CRM_DB", json.dumps({"conn_type": "sqlite", "host": str(crm)}))
    state = tmp_path / "state.db"
    monkeypatch.setenv(
        "AIRFLOW_CONN_AUDIENCE_SYNC_DB", json.dumps({"conn_type": "sqlite", "host": str(state)})
    )
    monkeypatch.setenv("AUDIENCE_SYNC_RETRY_ATTEMPTS", "1")  # no in-task retry: the task itself must fail
    # the connection drops on the second upload batch, before the sandbox applies it
    fresh_sandbox.meta.add_fault(
        method="POST", path_regex="/users$", skip=1, times=1, action="drop", apply=False
    )

    dag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).dags["ads_audience__retry_drill"]
    dr = dag.test(logical_date=pendulum.datetime(2026, 11, 20, tz="UTC"))

    assert dr.state == "success"
    ti = dr.get_task_instance("sync_meta")
    assert ti.try_number == 2  # the first try died mid-upload, Airflow ran it again
    with create_session() as s:
        result = (
            s.query(XComModel)
            .filter_by(dag_id=dag.dag_id, run_id=dr.run_id, task_id="sync_meta", key="return_value")
            .one()
            .value
        )
    group = result["total"]
    assert group > 20_000  # three batches of at most 10,000
    (aud,) = fresh_sandbox.meta.audiences("act_4242")
    assert aud["count"] == group == result["sent"]
    posts = [
        e for e in fresh_sandbox.meta.requests_log() if e["method"] == "POST" and e["path"].endswith("/users")
    ]
    assert [e["status"] for e in posts].count(200) == 3  # batch 1, then after the retry batches 2 and 3 only
    assert sum(e.get("num_rows", 0) for e in posts if e["status"] == 200) == group  # nothing sent twice
    assert len(fresh_sandbox.meta.audiences("act_4242")) == 1
