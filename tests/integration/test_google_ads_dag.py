"""One campaign to Meta and Google Ads through Airflow's ``dag.test()``: the session's google_ads_default
connection (endpoint override, token as password), the campaign's options reaching the destination, both
sandboxes holding exactly the group afterwards."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

import pendulum
import pytest

STEM = "meta_and_google"
DAG_ID = f"ads_audience__{STEM}"


def campaign(csv: Path, meta_account: str, customer: str) -> str:
    return f"""\
campaign: Meta and Google
duration: {{start: 2026-11-01}}
schedule: "@daily"
segment_name: both_platform_users
retries: 0
audience_group:
  list: {csv}
  key: customer_id
  identifiers: {{email: email}}
destinations:
  - platform: meta
    ad_account_id: "{meta_account}"
  - platform: google_ads
    customer_id: "{customer[:3]}-{customer[3:6]}-{customer[6:]}"
    membership_life_span_days: 90
    consent: {{ad_user_data: GRANTED, ad_personalization: GRANTED}}
"""


def write_group(csv: Path, keys: range) -> None:
    csv.write_text("customer_id,email\n" + "".join(f"{i},user{i}@example.com\n" for i in keys))


def google_members(keys: range) -> set[frozenset[tuple[str, str]]]:
    return {
        frozenset({("hashed_email", hashlib.sha256(f"user{i}@example.com".encode()).hexdigest())})
        for i in keys
    }


@pytest.mark.timeout(300)
def test_one_campaign_syncs_meta_and_google_ads(
    airflow_db, sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    suffix = str(10**9 + secrets.randbelow(9 * 10**9))  # accounts no other test uses
    folder = tmp_path / "campaigns"
    folder.mkdir()
    csv = tmp_path / "group.csv"
    (folder / f"{STEM}.yaml").write_text(campaign(csv, f"act_{suffix}", suffix))
    monkeypatch.setenv("AUDIENCE_SYNC_CAMPAIGNS_DIR", str(folder))
    state = json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "state.db")})
    monkeypatch.setenv("AIRFLOW_CONN_AUDIENCE_SYNC_DB", state)
    app = sandbox.app("google_ads")
    app.processing_seconds = 0.0

    def dag():
        return DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).dags[DAG_ID]

    write_group(csv, range(300))
    first = dag().test(logical_date=pendulum.datetime(2026, 11, 20, tz="UTC"))
    assert first.state == "success"
    (ul,) = [u for u in app.lists.values() if u["customer"] == suffix]
    assert (ul["name"], ul["life_span"], ul["key_type"]) == ("both_platform_users", 90, "CONTACT_INFO")
    assert app.members(ul["id"]) == google_members(range(300))
    (aud,) = [a for a in sandbox.meta.audiences(f"act_{suffix}") if a["name"] == "both_platform_users"]
    assert aud["count"] == 300

    write_group(csv, range(100, 350))  # mirror: 100 leave, 50 join
    second = dag().test(logical_date=pendulum.datetime(2026, 11, 21, tz="UTC"))
    assert second.state == "success"
    assert app.members(ul["id"]) == google_members(range(100, 350))
    jobs = [j for j in app.jobs.values() if j["list_id"] == ul["id"]]
    assert sorted({k for j in jobs for k, _ in j["ops"]}) == ["create", "remove"]
    assert all(len({k for k, _ in j["ops"]}) == 1 for j in jobs)  # adds and removes never share a job
