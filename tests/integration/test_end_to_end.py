"""End to end: a campaign's DAG through Airflow's dag.test(), the real facebook-business SDK against the
local sandbox, and a real state database (SQLite here; PostgreSQL in test_end_to_end_postgres)."""

from __future__ import annotations

import gzip
import json
import os
import re
import sqlite3
from pathlib import Path

import pendulum
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from audience_sync.core.campaign import load_campaign
from audience_sync.core.ledger import StateStore
from audience_sync.core.normalize import RowHasher
from audience_sync.demo_data import write_demo_db
from tests import file_drop_reader
from tests.conftest import state_connection

ROOT = Path(__file__).resolve().parents[2]
CAMPAIGN = ROOT / "include" / "demo" / "campaigns" / "demo_abandoned_cart.yaml"
DAG_ID = "ads_audience__demo_abandoned_cart"


@pytest.fixture
def crm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "crm.db"
    write_demo_db(path, n=5000, seed=11)  # TikTok needs 1,000 e-mails and 1,000 phones in the group
    monkeypatch.setenv("AIRFLOW_CONN_CRM_DB", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    return path


@pytest.fixture
def state_db(state_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The state database as the DAG sees it: the ``audience_sync_db`` connection (SQLite or PostgreSQL)."""
    conn, _ = state_connection(state_url)
    monkeypatch.setenv("AIRFLOW_CONN_AUDIENCE_SYNC_DB", json.dumps(conn))
    return state_url


def run_dag(logical_date: pendulum.DateTime):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).dags[DAG_ID]
    return dag.test(logical_date=logical_date)


def xcoms(run_id: str) -> dict[str, object]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as s:
        rows = s.query(XComModel).filter_by(dag_id=DAG_ID, run_id=run_id, key="return_value").all()
        return {r.task_id: r.value for r in rows}


def expected_members(crm: Path, before: str, platform: str = "meta") -> set[frozenset[tuple[str, str]]]:
    """The valid group's hashes, computed independently of the DAG from the CRM and the campaign."""
    group = load_campaign(CAMPAIGN).audience_group
    hasher = RowHasher(platform, dict(group.identifiers), group.default_country)
    con = sqlite3.connect(crm)
    con.row_factory = sqlite3.Row
    rows = con.execute(
        "SELECT * FROM customers WHERE cart_abandoned_at IS NOT NULL AND cart_abandoned_at < ?", (before,)
    ).fetchall()
    out = set()
    for row in rows:
        if not row["ads_consent"]:
            continue
        r = hasher.hash_row(dict(row))
        if r.valid:
            out.add(frozenset((k, v) for k, v in zip(hasher.schema, r.values, strict=True) if v))
    return out


def sandbox_members(sandbox, audience_id: str) -> set[frozenset[tuple[str, str]]]:
    return {frozenset((k, v) for k, v in m.items() if v) for m in sandbox.meta.members(audience_id)}


@pytest.mark.timeout(300)
def test_campaign_syncs_exactly_the_valid_group_and_reruns_create_nothing(
    airflow_db, fresh_sandbox, crm: Path, state_db: str, drop: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    sandbox = fresh_sandbox
    first = run_dag(pendulum.datetime(2026, 12, 1, tz="UTC"))
    assert first.state == "success"
    x1 = xcoms(first.run_id)
    sync = x1["sync_meta"]
    extract = x1["extract"]

    # the sandbox audience holds exactly the valid members' hashes
    auds = [a for a in sandbox.meta.audiences("act_1234567890") if a["name"] == "abandoned_cart_users"]
    assert len(auds) == 1
    audience_id = auds[0]["id"]
    assert sync["audience_id"] == audience_id and sync["audience_action"] == "created"
    want = expected_members(crm, "2026-12-02T00:00:00")
    assert want and sandbox_members(sandbox, audience_id) == want
    assert extract["invalid"] > 0 and extract["valid"] == len(want) == sync["total"] == sync["sent"]
    assert extract["excluded_no_consent"] > 0 and sync["excluded"] == extract["excluded_no_consent"]
    assert sync["pending"] == sync["in_progress"] == sync["failed"] == 0

    # the requests are the ones Meta documents, in order: look up by name, create, upload in one session,
    # read the session until Meta says it is processed, then read the audience's size for the metrics
    log = sandbox.meta.requests_log()
    calls = [(e["method"], re.sub(r"/\d{6,}/", "/{id}/", e["path"])) for e in log]
    uploads = [e for e in log if e.get("op") == "add"]
    lookups = len(calls) - 3 - len(uploads)  # the plan task looks up too (read-only)
    assert lookups >= 1
    assert calls == [("GET", "/v26.0/act_1234567890/customaudiences")] * lookups + [
        ("POST", "/v26.0/act_1234567890/customaudiences")
    ] + [("POST", "/v26.0/{id}/users")] * len(uploads) + [
        ("GET", "/v26.0/{id}/sessions"),
        ("GET", "/v26.0/{id}/"),
    ]
    assert log[-2]["query"]["session_id"] == str(uploads[0]["session"]["session_id"])
    assert "approximate_count_lower_bound" in log[-1]["query"]["fields"].split(",")
    assert len({e["session"]["session_id"] for e in uploads}) == 1
    assert "name" in log[0]["query"]["fields"].split(",") and log[0]["query"]["access_token"] == "***"
    assert sum(e["num_rows"] for e in uploads) == len(want)
    for i, e in enumerate(uploads, start=1):
        assert e["num_rows"] <= 10_000
        assert set(e["session"]) == {"session_id", "batch_seq", "last_batch_flag", "estimated_num_total"}
        assert e["session"]["batch_seq"] == i and e["session"]["last_batch_flag"] == (i == len(uploads))
    (aud,) = auds
    assert aud["subtype"] == "CUSTOM" and aud["customer_file_source"] == "USER_PROVIDED_ONLY"
    assert aud["schema"] == [
        "EMAIL",
        "PHONE",
        "FN",
        "LN",
        "CT",
        "ST",
        "ZIP",
        "COUNTRY",
    ]  # multi-key list form

    # counts in XCom, the metrics table and the ledger agree
    store = StateStore(state_db)
    entry = store.get_registry("meta", "act_1234567890", "abandoned_cart_users")
    assert entry is not None and entry.audience_id == audience_id
    ledger = store.ledger_counts(entry.id)
    # the file drop's files, read back as a consumer reads them (checksums verified), hold the group as the
    # file drop hashes it, and exactly what the ledger counts as sent
    dropped = file_drop_reader.membership(drop / "demo_partner" / "abandoned_cart_users")
    assert dropped and dropped == expected_members(crm, "2026-12-02T00:00:00", "file_drop")
    drop_entry = store.get_registry("file_drop", "demo_partner", "abandoned_cart_users")
    assert drop_entry is not None
    sent = store.ledger_members(drop_entry.id, "sent").values()
    assert dropped == {frozenset((k, v) for k, v in p.items() if v) for p in sent}
    assert x1["sync_file_drop"]["sent"] == x1["sync_file_drop"]["total"] == len(dropped)

    # one metrics row per destination; the demo campaign also sends to Google and the file drop
    (metrics,) = [m for m in store.read_metrics(DAG_ID, first.run_id) if m["destination"].startswith("meta")]
    for k in ("sent", "pending", "in_progress", "failed", "removed"):
        assert sync[k] == ledger[k] == metrics[k], k
    assert metrics["total"] == sync["total"] and metrics["invalid"] == extract["invalid"]
    assert metrics["outcome"] == "success" and metrics["requests"] == sync["requests"] > 0
    # the size Meta reported once it processed the upload (the sandbox counts exactly)
    assert metrics["audience_size"] == x1["wait_meta"]["audience_size"] == len(want)
    # TikTok: one audience per identifier type, each holding its 1,000 members or more
    tiktok = x1["sync_tiktok"]
    (tiktok_row,) = [
        m for m in store.read_metrics(DAG_ID, first.run_id) if m["destination"].startswith("tiktok")
    ]
    assert tiktok_row["outcome"] == "success" and not tiktok["refused"]
    assert tiktok_row["sent"] == tiktok["sent"] == tiktok["total"] > 1_000
    assert all(int(n) >= 1_000 for n in sandbox.app("tiktok").size_text(tiktok["audience_id"]).split("/")[:2])

    # a second run of the same group: same audience, no member request at all
    seq = max(e["seq"] for e in sandbox.meta.requests_log())
    second = run_dag(pendulum.datetime(2026, 12, 2, tz="UTC"))
    assert second.state == "success"
    x2 = xcoms(second.run_id)["sync_meta"]
    x2_extract = xcoms(second.run_id)["extract"]
    assert x2["audience_id"] == audience_id and x2["audience_action"] == "reused"
    assert (
        len([a for a in sandbox.meta.audiences("act_1234567890") if a["name"] == "abandoned_cart_users"]) == 1
    )
    later = [e for e in sandbox.meta.requests_log() if e["seq"] > seq]
    assert later and not [e for e in later if e["path"].endswith(("/users", "/usersreplace"))]
    assert x2["sent"] == sync["sent"]
    assert len(store.read_metrics(DAG_ID)) == 2 * 5  # two runs, five destinations
    # the extract task found the audience from the DAG's sync task: unchanged rows were not hashed again
    assert x2_extract["reused"] > 0 and extract["reused"] == 0

    # no raw email or phone from the input anywhere: logs, XCom, state DB, staged files
    out, err = capfd.readouterr()
    con = sqlite3.connect(crm)
    raw: set[str] = set()
    for email, phone in con.execute("SELECT email, mobile FROM customers"):
        if email and "@" in email:
            raw.add(email.strip().lower())
        if phone:
            digits = re.sub(r"\D", "", str(phone))
            if len(digits) >= 9:
                raw.add(str(phone).strip())
                raw.add(digits)
    assert len(raw) > 500
    assert "audience group:" in (out + err).lower()  # the task logs were captured
    haystacks = {"logs": (out + err).lower(), "xcom": json.dumps([x1, xcoms(second.run_id)]).lower()}
    with sa.create_engine(state_db).connect() as c:
        dump = []
        for table in ("as_audience_registry", "as_member_ledger", "as_run_metrics"):
            dump += [str(tuple(r)) for r in c.execute(sa.text(f"SELECT * FROM {table}"))]
    haystacks["state db"] = "\n".join(dump).lower()
    staged = Path(extract["staged"]["meta"]["path"])
    assert not staged.exists()  # removed once every destination was synced
    staged = Path(x2_extract["staged"]["meta"]["path"])
    from audience_sync.core.extract import (  # re-stage run 2's group to inspect a staged file
        extract_and_stage,
        staged_parts,
    )
    from audience_sync.hooks.state import AudienceSyncStateHook
    from audience_sync.operators.extract import read_group

    campaign = load_campaign(CAMPAIGN).audience_group
    sql = campaign.sql_query().replace(
        '{{ data_interval_end.strftime("%Y-%m-%dT%H:%M:%S") }}', "2026-12-02T00:00:00"
    )
    staged_dir = staged.parent.parent / "inspect"
    extract_and_stage(
        read_group(None, sql, "crm_db"),
        key=campaign.key,
        identifiers=dict(campaign.identifiers),
        platforms=["meta"],
        staging_dir=staged_dir,
        keys=AudienceSyncStateHook().keys,  # the state's keys, as the extract task uses them
        default_country=campaign.default_country,
        consent_column="ads_consent",
    )
    parts = staged_parts(staged_dir / "meta")
    table = pa.concat_tables(pq.read_table(p) for p in parts)
    assert table.num_rows == len(want)
    haystacks["staged file"] = (
        b"".join(p.read_bytes() for p in parts).decode("latin-1").lower() + str(table.to_pylist()).lower()
    )
    haystacks["file drop"] = "\n".join(
        (gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()).decode().lower()
        for p in drop.rglob("*")
        if p.is_file()
    )
    logs_dir = Path(os.environ["AIRFLOW_HOME"]) / "logs"
    if logs_dir.exists():
        haystacks["task log files"] = "\n".join(
            p.read_text(errors="replace") for p in logs_dir.rglob("*") if p.is_file()
        ).lower()
    for where, text in haystacks.items():
        leaked = [v for v in raw if v.lower() in text]
        assert not leaked, f"{len(leaked)} raw identifier(s) found in {where}"
