"""The installed `audience-sync` command: validate, hash, run (a real dag.test in a subprocess), demo."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from audience_sync.demo_data import write_demo_db

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).parent / "audience-sync"
BAD = ROOT / "tests" / "fixtures" / "campaigns" / "bad"


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    assert CLI.exists(), "the console script is installed into the venv by `make setup`"
    return subprocess.run(
        [str(CLI), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or os.environ.copy(),
        cwd=ROOT,
    )


def campaign_env(tmp_path: Path, graph_url: str, token: str, *, rows: int, seed: int) -> dict[str, str]:
    """The environment of a separate `audience-sync` process: its own Airflow home, a CRM, the sandbox."""
    crm = tmp_path / "crm.db"
    write_demo_db(crm, n=rows, seed=seed)
    env = os.environ.copy()
    for k in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__UNIT_TEST_MODE"):
        env.pop(k, None)
    env["AIRFLOW_HOME"] = str(tmp_path / "home")
    env["AIRFLOW_CONN_CRM_DB"] = json.dumps({"conn_type": "sqlite", "host": str(crm)})
    env["AIRFLOW_CONN_META_DEFAULT"] = json.dumps(
        {"conn_type": "generic", "host": graph_url, "password": token}
    )
    env["AIRFLOW_CONN_FILE_DROP_DEFAULT"] = json.dumps(
        {"conn_type": "generic", "extra": {"base_url": (tmp_path / "file_drop").as_uri()}}
    )
    return env


def test_validate_default_folder_ok() -> None:
    r = cli("validate")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ads_audience__demo_abandoned_cart" in r.stdout


def test_validate_reports_each_broken_file() -> None:
    bad = sorted(BAD.glob("*.yaml"))[:3]
    good = ROOT / "include" / "demo" / "campaigns" / "demo_abandoned_cart.yaml"
    r = cli("validate", str(good), *map(str, bad))
    assert r.returncode == 1
    assert r.stdout.count("INVALID") == 3 and r.stdout.count("OK ") == 1
    for f in bad:
        assert f.name in r.stdout
    assert "field '" in r.stdout and "Fix:" in r.stdout


def test_hash_prints_what_is_sent() -> None:
    r = cli("hash", "--platform", "meta", "--field", "email", "  Test1@Example.com ")
    assert r.returncode == 0
    out = json.loads(r.stdout)
    assert out == {
        "platform": "meta",
        "field": "email",
        "normalized": "test1@example.com",
        "sent": "9b431636bd164765d63c573c346708846af4f68fe3701a77a3bdd7e7e5166254",
        "error": None,
    }
    r = cli("hash", "--platform", "meta", "--field", "phone", "--country", "GB", "020 7946 0958", "12")
    assert r.returncode == 1  # one value is invalid
    ok, bad = (json.loads(line) for line in r.stdout.splitlines())
    assert ok["normalized"] == "442079460958" and ok["error"] is None and len(ok["sent"]) == 64
    assert bad["sent"] is None and bad["error"]


@pytest.mark.timeout(300)
def test_run_executes_the_dag_and_exits_non_zero_on_failure(fresh_sandbox, tmp_path: Path) -> None:
    from tests.conftest import SANDBOX_TOKEN

    env = campaign_env(tmp_path, fresh_sandbox.url, SANDBOX_TOKEN, rows=300, seed=3)
    r = cli("run", "demo_abandoned_cart", "--logical-date", "2026-12-01", env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "sync_meta [success]" in r.stdout and "sent" in r.stdout
    added = re.search(r"this run: added (\d+), removed 0, re-sent 0 .* rejected by the platform 0", r.stdout)
    assert added and int(added.group(1)) > 0
    (aud,) = fresh_sandbox.meta.audiences("act_1234567890")
    assert f"audience {aud['id']}" in r.stdout and aud["count"] > 0

    env["AIRFLOW_CONN_META_DEFAULT"] = json.dumps(
        {"conn_type": "generic", "host": fresh_sandbox.url, "password": "wrong-token"}
    )
    r = cli("run", "demo_abandoned_cart", "--logical-date", "2026-12-02", env=env)
    assert r.returncode != 0
    assert "plan [failed]" in r.stdout  # the dry run already meets the bad token
    assert "sync_meta [upstream_failed]" in r.stdout
    assert "wrong-token" not in r.stdout + r.stderr  # the token never reaches the output


@pytest.mark.timeout(300)
def test_demo_runs_end_to_end_and_prints_a_truthful_summary(tmp_path: Path) -> None:
    env = os.environ.copy()
    # as a fresh deployment: syncing off and approval required; the demo enables and approves itself
    for k in (
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__CORE__UNIT_TEST_MODE",
        "AIRFLOW_HOME",
        "AUDIENCE_SYNC_ENABLED",
        "AUDIENCE_SYNC_APPROVAL_REQUIRED",
    ):
        env.pop(k, None)
    r = cli("demo", "--rows", "500", env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    version = cli("version", str(ROOT / "include" / "demo" / "campaigns" / "demo_abandoned_cart.yaml"))
    assert version.returncode == 0 and re.fullmatch(r"[0-9a-f]{64}\n", version.stdout)
    assert f"approves campaign version {version.stdout.strip()}" in r.stdout
    assert f"approval: version {version.stdout.strip()} approved by make demo (campaign file)" in r.stdout
    lines = r.stdout.split("\nplatform ", 1)[1].splitlines()[1:6]
    rows = {line.split()[0]: line.split() for line in lines}
    assert set(rows) == {
        "meta",
        "google_datamanager",
        "google_ads",
        "tiktok",
        "file_drop",
    }  # the demo campaign's destinations
    accounts = {
        "meta": "act_1234567890",
        "google_datamanager": "1234567890",
        "google_ads": "1234567890",
        "file_drop": "demo_partner",
    }
    for platform, account in accounts.items():
        _, shown, _audience, group, sent, pending, failed, invalid, excluded, size = rows[platform]
        assert shown == account
        # every member sent (Google's processing finished within the run's wait), as the sandbox holds
        # (the file drop: as its members file holds, read back)
        assert int(group) == int(sent) == int(size) > 0 and int(pending) == int(failed) == 0
        assert int(invalid) > 0 and int(excluded) > 0
    # 500 customers make a group far below TikTok's 1,000 members: refused, reported as such, nothing sent
    _, shown, audience, group, sent, pending, failed, invalid, excluded, size = rows["tiktok"]
    assert (shown, size, int(sent), int(pending)) == ("7012345678901234567", "0/0/0", 0, 0)
    assert int(failed) == int(group) > 0 and len(audience.split("-")) == 3
    refusal = r.stdout.split("tiktok: refused by the platform, segment_too_small: ", 1)[1].splitlines()[0]
    assert "segment too small" in refusal and "less than 1,000" in refusal
    assert "sandbox stopped" in r.stdout


@pytest.mark.timeout(300)
def test_plan_prints_without_sending_and_matches_the_next_run(fresh_sandbox, tmp_path: Path) -> None:
    from tests.conftest import SANDBOX_TOKEN

    env = campaign_env(tmp_path, fresh_sandbox.url, SANDBOX_TOKEN, rows=200, seed=5)
    r = cli("plan", "demo_abandoned_cart", "--logical-date", "2026-12-01", "--json", env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    plan = json.loads(r.stdout)
    dest = plan["destinations"][0]
    assert [d["platform"] for d in plan["destinations"]] == [
        "meta",
        "google_datamanager",
        "google_ads",
        "tiktok",
        "file_drop",
    ]
    assert all(d["audience"] == {"id": None, "action": "would create"} for d in plan["destinations"])
    assert dest["adds"] == dest["group"] == plan["group"]["valid"] > 0
    assert plan["group"]["excluded_no_consent"] > 0 and "invalid_by_reason" in plan["group"]
    assert any("100" in w for w in dest["warnings"])  # a demo-sized group is below Meta's useful minimum
    tiktok = plan["destinations"][3]
    assert any(w.startswith("segment too small") for w in tiktok["warnings"])  # TikTok would refuse it
    assert fresh_sandbox.meta.audiences() == []  # nothing created, nothing sent
    assert not [e for e in fresh_sandbox.meta.requests_log() if e["method"] != "GET"]

    r = cli("run", "demo_abandoned_cart", "--logical-date", "2026-12-01", env=env)
    assert r.returncode == 0, r.stdout[-3000:]
    (aud,) = fresh_sandbox.meta.audiences()
    assert aud["count"] == dest["adds"]
    text = cli("plan", "demo_abandoned_cart", "--logical-date", "2026-12-02", env=env)
    assert text.returncode == 0
    assert (
        f"audience {aud['id']} [reuse]" in text.stdout
        and "adds 0 " in text.stdout
        and "removes 0" in text.stdout
    )


WINDOW_CAMPAIGN = """\
campaign: Cart window
duration: {start: 2099-01-01}
schedule: "@daily"
segment_name: cart_window_users
audience_group:
  sql: |
    SELECT customer_id, email, ads_consent FROM customers
    WHERE cart_abandoned_at IS NOT NULL
      AND '{{ data_interval_start }}' < '{{ data_interval_end }}' -- {{ ds }}
  conn_id: crm_db
  key: customer_id
  identifiers: {email: email}
destinations:
  - platform: meta
    ad_account_id: "act_1234567890"
"""


@pytest.mark.timeout(300)
def test_plan_renders_the_query_with_the_data_interval_of_the_scheduled_run(
    fresh_sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With interval timetables a run's data interval differs from its logical date; plan must match it."""
    from airflow.serialization.serialized_objects import DagSerialization

    from audience_sync.core.campaign import load_campaign
    from audience_sync.factory import build_dag
    from tests.conftest import SANDBOX_TOKEN

    folder = tmp_path / "campaigns"
    folder.mkdir()
    (folder / "cart_window.yaml").write_text(WINDOW_CAMPAIGN, encoding="utf-8")
    # "@daily" then means the interval [day, next day) with the run's logical date at its start.
    monkeypatch.setenv("AIRFLOW__SCHEDULER__CREATE_CRON_DATA_INTERVALS", "True")
    env = campaign_env(tmp_path, fresh_sandbox.url, SANDBOX_TOKEN, rows=100, seed=9)
    env["AUDIENCE_SYNC_CAMPAIGNS_DIR"] = str(folder)

    # The scheduler's own first run of this DAG (the campaign starts in the future, so it is that day's).
    dag = build_dag(load_campaign(folder / "cart_window.yaml"))
    scheduler_dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    scheduled = scheduler_dag.next_dagrun_info(last_automated_run_info=None)
    assert scheduled is not None and scheduled.logical_date.isoformat() == "2099-01-01T00:00:00+00:00"
    start, end = scheduled.data_interval
    assert (start.isoformat(), end.isoformat()) == ("2099-01-01T00:00:00+00:00", "2099-01-02T00:00:00+00:00")
    extract = dag.get_task("extract")
    scheduled_sql = extract.render_template(
        extract.sql, {"data_interval_start": start, "data_interval_end": end, "ds": "2099-01-01"}
    )
    assert "'2099-01-01 00:00:00+00:00' < '2099-01-02 00:00:00+00:00' -- 2099-01-01" in scheduled_sql

    r = cli("plan", "cart_window", "--logical-date", "2099-01-01", "--json", env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    plan = json.loads(r.stdout)
    assert plan["data_interval"] == [start.isoformat(), end.isoformat()]
    assert plan["sql"] == scheduled_sql
    assert plan["group"]["valid"] > 0  # the rendered query ran against the CRM


@pytest.mark.timeout(120)
def test_version_validate_and_status_show_whether_a_version_is_approved(tmp_path: Path) -> None:
    source = ROOT / "include" / "demo" / "campaigns" / "demo_abandoned_cart.yaml"
    version = cli("version", str(source)).stdout.strip()
    folder = tmp_path / "campaigns"
    folder.mkdir()
    path = folder / "reviewed.yaml"
    block = 'approval: {{approved_by: jane, approved_at: 2026-11-30, version: "{v}"}}\n'
    path.write_text(source.read_text() + block.format(v="ab" * 32))
    env = os.environ.copy()
    env.pop("AUDIENCE_SYNC_APPROVAL_REQUIRED", None)
    env.pop("AIRFLOW_CONN_AUDIENCE_SYNC_DB", None)
    env["AIRFLOW_HOME"] = str(tmp_path / "home")
    env["AUDIENCE_SYNC_CAMPAIGNS_DIR"] = str(folder)

    r = cli("version", "reviewed", env=env)
    assert r.stdout.strip() == version  # the approval block is not part of the version
    r = cli("validate", str(path), env=env)
    assert r.returncode == 0, r.stdout + r.stderr  # a block for another version is no error...
    assert "does not apply" in r.stdout and f"set approval.version: {version}" in r.stdout  # ...but said
    r = cli("approval", "reviewed", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"version: {version}" in r.stdout and "not approved: the next run waits" in r.stdout
    assert "decisions: none recorded" in r.stdout
    # a run from the command line cannot be answered: `run` says how to approve instead of waiting forever
    r = cli("run", "reviewed", env=env)
    assert r.returncode != 0 and f"version {version} of ads_audience__reviewed is not approved" in r.stderr
    assert f'version: "{version}"' in r.stderr and "AUDIENCE_SYNC_APPROVAL_REQUIRED=0" in r.stderr

    path.write_text(source.read_text() + block.format(v=version))
    r = cli("validate", str(path), env=env)
    assert "approval: its approval block approves this version" in r.stdout and "by jane" in r.stdout
    r = cli("approval", "reviewed", env=env)
    assert "approval: approved by the campaign file's approval block" in r.stdout
