"""A real ``airflow backfill create`` over past dates never rolls an audience back.

Setup (see :mod:`tests.airflow_procs`): a throwaway ``AIRFLOW_HOME`` with a SQLite metadata DB,
``airflow dags reserialize`` instead of a dag-processor, ``airflow api-server`` (public REST API and the
Execution API the task processes talk to, on a free loopback port) and ``airflow scheduler``
(LocalExecutor, parallelism 2), each its own process group, always stopped at the end (SIGTERM, then
SIGKILL). The repo's ``dags/`` and ``plugins/`` are used; ``AUDIENCE_SYNC_CAMPAIGNS_DIR`` points at a
folder holding one test campaign whose SQL keeps carts abandoned in the 120 days before
``{{ data_interval_end }}`` — so every logical date sees a different group (Airflow 3's default cron
timetable gives every run an empty interval ending at its logical date). The campaign's
``duration.end`` (2026-11-20) stops the scheduler from creating scheduled runs of its own once the DAG
is unpaused (``catchup`` is off and the latest interval is past the end), so the only runs are the
ones this test asks for.

Scenario:

1. a manual run for logical date 2026-11-20 (REST trigger, executed by the scheduler) syncs the group
   as of that date into the local Meta sandbox;
2. ``airflow backfill create --from-date 2026-09-01 --to-date 2026-09-03`` creates three BACKFILL runs
   that the scheduler executes (concurrently: a backfill's ``max_active_runs`` defaults to 10,
   whatever the DAG says; the per-audience lock serialises the syncs). Their groups overlap the newer
   one only partly: a mirror sync would remove the newer members. Every run must succeed, send adds
   only (no ``DELETE …/users``, no replace), leave every member of the newer run in the audience, say
   ``backfill`` in its XCom, task log and metrics row (outcome ``success_backfill``), and leave the
   registry's ``last_logical_date`` at 2026-11-20.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import textwrap
from pathlib import Path

import pytest

from audience_sync.core.campaign import load_campaign
from audience_sync.core.ledger import StateStore
from audience_sync.core.normalize import RowHasher
from audience_sync.demo_data import write_demo_db
from tests.airflow_procs import AirflowStack, wait_for

STEM = "backfill_cart"
DAG_ID = f"ads_audience__{STEM}"
SEGMENT = "backfill_cart_users"
ACCOUNT = "act_1234567890"
WINDOW_DAYS = 120
NEWER = "2026-11-20"
BACKFILL_FROM, BACKFILL_TO = "2026-09-01", "2026-09-03"
TERMINAL = {"success", "failed"}

SQL = f"""\
-- Carts abandoned in the {WINDOW_DAYS} days before the end of the run's data interval.
SELECT customer_id, email, mobile, first_name, last_name, country
FROM customers
WHERE cart_abandoned_at IS NOT NULL
  AND datetime(cart_abandoned_at) < datetime('{{{{ data_interval_end.strftime("%Y-%m-%dT%H:%M:%S") }}}}')
  AND datetime(cart_abandoned_at) >=
      datetime('{{{{ data_interval_end.strftime("%Y-%m-%dT%H:%M:%S") }}}}', '-{WINDOW_DAYS} days')
"""


def write_campaign(folder: Path, sql_path: Path) -> Path:
    folder.mkdir(parents=True)
    sql_path.parent.mkdir(parents=True, exist_ok=True)
    sql_path.write_text(SQL)
    path = folder / f"{STEM}.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            campaign: Backfill test cart
            duration: {{start: 2026-08-01, end: {NEWER}}}
            schedule: "@daily"
            timezone: UTC
            segment_name: {SEGMENT}
            sync_mode: mirror
            retries: 0
            audience_group:
              sql: {sql_path}
              conn_id: crm_db
              key: customer_id
              identifiers:
                email: email
                phone: mobile
                first_name: first_name
                last_name: last_name
                country: country
              default_country: US
            destinations:
              - platform: meta
                ad_account_id: "{ACCOUNT}"
            """
        )
    )
    return path


def expected_group(crm: Path, campaign: Path, interval_end: dt.datetime) -> tuple[set[str], set[frozenset]]:
    """(customer ids, member hash sets) of the valid group for a data interval, computed without Airflow."""
    group = load_campaign(campaign).audience_group
    hasher = RowHasher("meta", dict(group.identifiers), group.default_country)
    start = interval_end - dt.timedelta(days=WINDOW_DAYS)
    con = sqlite3.connect(crm)
    con.row_factory = sqlite3.Row
    keys: set[str] = set()
    members: set[frozenset] = set()
    for row in con.execute("SELECT * FROM customers WHERE cart_abandoned_at IS NOT NULL"):
        if not start <= dt.datetime.fromisoformat(row["cart_abandoned_at"]) < interval_end:
            continue
        r = hasher.hash_row(dict(row))
        if r.valid:
            keys.add(str(row["customer_id"]))
            members.add(frozenset((k, v) for k, v in zip(hasher.schema, r.values, strict=True) if v))
    con.close()
    return keys, members


def sandbox_members(sandbox, audience_id: str) -> set[frozenset]:
    return {frozenset((k, v) for k, v in m.items() if v) for m in sandbox.meta.members(audience_id)}


def when(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def finished_runs(stack: AirflowStack, run_type: str, count: int) -> list[dict] | None:
    runs = [r for r in stack.dag_runs(DAG_ID) if r["run_type"] == run_type]
    if len(runs) == count and all(r["state"] in TERMINAL for r in runs):
        return runs
    return None


@pytest.mark.timeout(240)
def test_airflow_backfill_over_past_dates_never_rolls_the_audience_back(
    fresh_sandbox, tmp_path: Path
) -> None:
    from tests.conftest import SANDBOX_TOKEN

    sandbox = fresh_sandbox
    crm = tmp_path / "crm.db"
    write_demo_db(crm, n=600, seed=5)
    campaign = write_campaign(tmp_path / "campaigns", tmp_path / "sql" / "cart_window.sql")
    state_db = tmp_path / "state.db"
    env = {
        "AUDIENCE_SYNC_CAMPAIGNS_DIR": str(campaign.parent),
        "AIRFLOW_CONN_CRM_DB": json.dumps({"conn_type": "sqlite", "host": str(crm)}),
        "AIRFLOW_CONN_AUDIENCE_SYNC_DB": json.dumps({"conn_type": "sqlite", "host": str(state_db)}),
        "AIRFLOW_CONN_META_DEFAULT": json.dumps(
            {"conn_type": "generic", "host": sandbox.url, "password": SANDBOX_TOKEN}
        ),
    }

    with AirflowStack(tmp_path / "airflow-home", env, parallelism=2) as stack:
        try:
            run_scenario(stack, sandbox, crm, campaign, state_db)
        except BaseException:
            print(stack.outputs())  # shown by pytest on failure
            raise


def run_scenario(stack: AirflowStack, sandbox, crm: Path, campaign: Path, state_db: Path) -> None:
    assert stack.api("GET", f"/dags/{DAG_ID}")["is_paused"] is True
    stack.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})

    # 1. the newer run: a manual run for 2026-11-20, executed by the scheduler
    stack.api("POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": f"{NEWER}T00:00:00Z"})
    (newer,) = wait_for("the manual run", lambda: finished_runs(stack, "manual", 1), timeout=90)
    assert newer["state"] == "success", stack.task_instances(DAG_ID, newer["dag_run_id"])
    new_keys, new_members = expected_group(crm, campaign, when(newer["data_interval_end"]))
    first = stack.xcom(DAG_ID, newer["dag_run_id"], "sync_meta")
    assert first["backfill"] is False and first["total"] == len(new_keys) > 50
    audience_id = first["audience_id"]
    (aud,) = [a for a in sandbox.meta.audiences(ACCOUNT) if a["name"] == SEGMENT]
    assert aud["id"] == audience_id
    assert sandbox_members(sandbox, audience_id) == new_members
    seq = max(e["seq"] for e in sandbox.meta.requests_log())

    # 2. a real backfill over three earlier dates
    r = stack.cli(
        "backfill", "create", "--dag-id", DAG_ID, "--from-date", BACKFILL_FROM, "--to-date", BACKFILL_TO
    )
    if r.returncode != 0 and "database is locked" in r.stdout + r.stderr:
        # SQLite metadata DB shared with a busy scheduler: retry once if nothing was created
        if not stack.api("GET", "/backfills", dag_id=DAG_ID)["backfills"]:
            r = stack.cli(
                "backfill",
                "create",
                "--dag-id",
                DAG_ID,
                "--from-date",
                BACKFILL_FROM,
                "--to-date",
                BACKFILL_TO,
            )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    runs = wait_for("the backfill runs", lambda: finished_runs(stack, "backfill", 3), timeout=120)
    (backfill,) = wait_for(
        "the backfill to be completed",
        lambda: (
            [b for b in stack.api("GET", "/backfills", dag_id=DAG_ID)["backfills"] if b["completed_at"]]
            or None
        ),
        timeout=30,
    )
    assert backfill["from_date"].startswith(BACKFILL_FROM) and backfill["to_date"].startswith(BACKFILL_TO)
    assert [r["logical_date"][:10] for r in runs] == ["2026-09-01", "2026-09-02", "2026-09-03"]
    for run in runs:
        states = stack.task_instances(DAG_ID, run["dag_run_id"])
        assert run["state"] == "success" and set(states.values()) == {"success"}, (run["dag_run_id"], states)

    # each backfill run extracted the group as of its own data interval (smaller and different)
    groups = {
        run["dag_run_id"]: expected_group(crm, campaign, when(run["data_interval_end"])) for run in runs
    }
    all_keys = new_keys.union(*(k for k, _ in groups.values()))
    all_members = new_members.union(*(m for _, m in groups.values()))
    sizes = sorted(len(k) for k, _ in groups.values())
    assert 0 < sizes[0] and sizes[-1] < len(new_keys), (sizes, len(new_keys))
    assert len({frozenset(k) for k, _ in groups.values()}) == 3, "each date has its own group"
    assert all_keys - new_keys, "the backfill dates must bring members the newer run does not have"
    assert new_keys - set.union(*(k for k, _ in groups.values())), "a mirror backfill would remove these"

    # never shrunk: no removal or replace request during the backfill, nobody of the newer run lost
    during = [e for e in sandbox.meta.requests_log() if e["seq"] > seq]
    assert not [e for e in during if e["method"] == "DELETE" or e["path"].endswith("/usersreplace")], during
    assert [e for e in during if e["method"] == "POST" and e["path"].endswith(f"/{audience_id}/users")]
    final = sandbox_members(sandbox, audience_id)
    assert new_members <= final
    assert final == all_members  # exactly the newer group plus the backfills' adds
    assert len([a for a in sandbox.meta.audiences(ACCOUNT) if a["name"] == SEGMENT]) == 1

    # each run says so: XCom, plan, task log, metrics row
    store = StateStore(f"sqlite:///{state_db}")
    for run in runs:
        run_id, day = run["dag_run_id"], run["logical_date"][:10]
        keys, _ = groups[run_id]
        sync = stack.xcom(DAG_ID, run_id, "sync_meta")
        assert sync["backfill"] is True and sync["audience_id"] == audience_id, sync
        assert sync["removed"] == 0 and sync["total"] == len(keys), sync
        assert any("backfill" in n and "adds only" in n for n in sync["notes"]), sync["notes"]
        (plan,) = stack.xcom(DAG_ID, run_id, "plan").values()
        assert plan["backfill"] is True and plan["mode"] == "add_only" and plan["removes"] == 0, plan
        log = stack.task_log(DAG_ID, run_id, "sync_meta")
        assert f"backfill: logical date {day} is older than the newest synced ({NEWER})" in log
        (row,) = store.read_metrics(DAG_ID, run_id)
        assert row["outcome"] == "success_backfill" and "backfill" in (row["note"] or ""), row
        assert row["removed"] == 0 and row["total"] == len(keys), row
    (row,) = store.read_metrics(DAG_ID, newer["dag_run_id"])
    assert row["outcome"] == "success"

    entry = store.get_registry("meta", ACCOUNT, SEGMENT)
    assert entry is not None and entry.audience_id == audience_id
    assert entry.last_logical_date == dt.datetime.fromisoformat(f"{NEWER}T00:00:00+00:00")
    ledger = store.ledger_counts(entry.id)
    assert ledger["removed"] == ledger["removing"] == ledger["pending"] == ledger["failed"] == 0, ledger
    assert ledger["sent"] == len(all_keys), ledger
