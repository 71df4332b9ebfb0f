"""A campaign to TikTok through Airflow's dag.test(), at TikTok's real 1,000-member minimum: a small group
is refused and the run says so (the sync task's warning, XCom and the metrics row's outcome
``segment_too_small``) without failing or retrying; once the group has grown past 1,000 e-mails and
phones, the next run sends everyone to the segment's family of audiences."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pendulum
import pytest
import yaml

from audience_sync.core.ledger import StateStore
from audience_sync.demo_data import write_demo_db
from audience_sync.destinations.tiktok import family_parts

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "include" / "demo" / "campaigns" / "demo_abandoned_cart.yaml"
DAG_ID = "ads_audience__tiktok_only"


@pytest.fixture
def campaign(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox) -> Path:
    folder = tmp_path / "campaigns"
    folder.mkdir()
    data = yaml.safe_load(DEMO.read_text())
    data.update(segment_name="tiktok_dag_users", processing_poke_seconds=1, processing_timeout_minutes=2)
    data["destinations"] = [d for d in data["destinations"] if d["platform"] == "tiktok"]  # the demo's
    (folder / "tiktok_only.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("AUDIENCE_SYNC_CAMPAIGNS_DIR", str(folder))
    state = tmp_path / "state.db"
    monkeypatch.setenv(
        "AIRFLOW_CONN_AUDIENCE_SYNC_DB", json.dumps({"conn_type": "sqlite", "host": str(state)})
    )
    return state


def crm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows: int) -> None:
    path = tmp_path / f"crm-{rows}.db"
    write_demo_db(path, n=rows, seed=7)  # a prefix of the same customers: the bigger CRM holds the smaller
    monkeypatch.setenv("AIRFLOW_CONN_CRM_DB", json.dumps({"conn_type": "sqlite", "host": str(path)}))


def run(day: int) -> tuple[str, dict]:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).dags[DAG_ID]
    dag_run = dag.test(logical_date=pendulum.datetime(2026, 12, day, tz="UTC"))
    with create_session() as s:
        rows = s.query(XComModel).filter_by(dag_id=DAG_ID, run_id=dag_run.run_id, key="return_value").all()
        return dag_run.state, {"run_id": dag_run.run_id, **{r.task_id: r.value for r in rows}}


@pytest.mark.timeout(300)
def test_a_small_segment_is_reported_too_small_then_sent_once_it_grows(
    airflow_db, fresh_sandbox, campaign: Path, tmp_path: Path, monkeypatch, capfd
) -> None:
    app = fresh_sandbox.app("tiktok")
    assert app.min_audience_size == 1_000
    crm(tmp_path, monkeypatch, rows=300)
    state, x = run(1)
    assert state == "success"  # a refusal is an outcome, not a failed task
    plan, synced = x["plan"]["sync_tiktok"], x["sync_tiktok"]
    assert any(w.startswith("segment too small") for w in plan["warnings"])  # the plan warned first
    assert synced["refused"] == "segment_too_small" and synced["total"] > 50
    assert (synced["sent"], synced["failed"], synced["run"]["added"]) == (0, synced["total"], 0)
    assert app.size_text(synced["audience_id"]) == "0/0/0"  # nothing changed on TikTok
    store = StateStore(f"sqlite:///{campaign}")
    (row,) = store.read_metrics(DAG_ID, x["run_id"])
    assert row["outcome"] == "segment_too_small" and "segment too small" in row["note"]
    logs = "\n".join(capfd.readouterr())
    assert "tiktok refused the change (segment_too_small), not retried" in logs
    updates = [e for e in app.requests_log() if e["path"].endswith("update/")]
    assert updates and {e["code"] for e in updates} == {40002}  # each refused once, never retried

    crm(tmp_path, monkeypatch, rows=5_000)
    state, x = run(2)
    assert state == "success"
    synced = x["sync_tiktok"]
    assert synced["audience_id"] == x["plan"]["sync_tiktok"]["audience"]["id"]  # the same family
    assert (synced["refused"], synced["failed"]) == ("", 0) and synced["sent"] == synced["total"] > 1_000
    emails, phones, maids = (int(n) for n in app.size_text(synced["audience_id"]).split("/"))
    assert emails >= 1_000 and phones >= 1_000 and maids == 0
    (row,) = store.read_metrics(DAG_ID, x["run_id"])
    assert row["outcome"] == "success" and row["sent"] == synced["total"]


@pytest.mark.timeout(300)
def test_too_few_phones_refuses_the_phone_audience_alone_and_the_rerun_warns_again(
    airflow_db, fresh_sandbox, campaign: Path, tmp_path: Path, monkeypatch, caplog
) -> None:
    app = fresh_sandbox.app("tiktok")
    crm(tmp_path, monkeypatch, rows=5_000)
    with sqlite3.connect(tmp_path / "crm-5000.db") as db:  # one customer in ten keeps a phone, half of
        db.execute("UPDATE customers SET mobile = NULL WHERE customer_id % 10 != 0")  # those lose the e-mail
        db.execute("UPDATE customers SET email = NULL WHERE customer_id % 20 = 0")
    db.close()
    state, x = run(1)
    assert state == "success"  # a refusal is an outcome, not a failed task
    plan, synced = x["plan"]["sync_tiktok"], x["sync_tiktok"]
    emails, phones = plan["identifiers"]["EMAIL_SHA256"], plan["identifiers"]["PHONE_SHA256"]
    assert emails >= 1_000 > phones > 0
    assert (
        [w for w in plan["warnings"] if "audience" in w]
        == [
            w
            for w in plan["warnings"]
            if "phone audience (PHONE_SHA256)" in w and f"{phones:,} member(s)" in w
        ]
        != []
    )

    # TikTok: the e-mail audience holds exactly the group's e-mails; the phone audience refused its update
    store = StateStore(f"sqlite:///{campaign}")  # TikTok payloads hold hashes only: no keys needed
    entry = store.get_registry("tiktok", "7012345678901234567", "tiktok_dag_users")
    payloads = store.ledger_members(entry.id).values()
    parts = family_parts(synced["audience_id"])
    assert app.members(parts["EMAIL_SHA256"]) == {p["EMAIL_SHA256"] for p in payloads if p["EMAIL_SHA256"]}
    assert len(app.members(parts["EMAIL_SHA256"])) == emails and app.members(parts["PHONE_SHA256"]) == set()
    # the counts: members with an e-mail reached TikTok (sent), those with a phone only failed
    phone_only = sum(1 for p in payloads if not p["EMAIL_SHA256"])
    assert synced["refused"] == "segment_too_small" and phone_only > 0
    assert (synced["total"], synced["sent"], synced["failed"]) == (emails + phone_only, emails, phone_only)
    assert synced["run"]["added"] == emails
    (row,) = store.read_metrics(DAG_ID, x["run_id"])
    assert (row["outcome"], row["sent"], row["failed"]) == ("segment_too_small", emails, phone_only)
    assert "phone audience (PHONE_SHA256" in row["note"] and "less than 1,000" in row["note"]
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("audience_sync")]
    assert any("phone audience (PHONE_SHA256" in m and "e-mail audience(s) took it" in m for m in logged)

    # the next day, the same group: extraction reuses the sent rows by fingerprint; the plan still warns
    state, x = run(2)
    plan = x["plan"]["sync_tiktok"]
    assert x["extract"]["reused"] == emails
    assert plan["identifiers"] == {"EMAIL_SHA256": emails, "PHONE_SHA256": phones}
    assert any("phone audience (PHONE_SHA256)" in w for w in plan["warnings"])
    assert not any("e-mail audience" in w for w in plan["warnings"])
