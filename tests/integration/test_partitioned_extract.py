"""A partitioned DAG, run by a real scheduler, syncs exactly what an unpartitioned one syncs.

Setup (see :mod:`tests.airflow_procs`): ``airflow api-server`` + ``airflow scheduler`` with the
LocalExecutor, so every task instance — each mapped extract partition too — runs in its own process.
The tasks share only the staging URL (``AUDIENCE_SYNC_STAGING_URL``, a ``file://`` store outside
``AIRFLOW_HOME``, read and written through ``ObjectStoragePath`` like ``s3://`` would be), the state
database and Airflow's XCom, which carries counts and URLs.

Two campaigns read one CSV list (2,400 rows: repeated member keys whose later rows carry other
e-mails, rows without a key, invalid e-mails, rows without consent) into two segments on the local Meta
sandbox: ``whole`` with one extract task, ``split`` with ``partitions: auto`` and
``AUDIENCE_SYNC_PARTITION_ROWS=1000`` (a ``partition`` task counts 2,400 rows: three mapped extract
tasks). Both audiences must hold the same members with the same hashes, the summed counts of the
partitions must equal the single extraction's, and no staged file may exist outside the staging URL.
"""

from __future__ import annotations

import csv
import json
import random
import textwrap
from pathlib import Path

import pytest

from tests.airflow_procs import AirflowStack, q, wait_for

ACCOUNT = "act_1234567890"
TERMINAL = {"success", "failed"}
COUNTS = ("rows", "valid", "invalid", "duplicates", "missing_key", "excluded_no_consent")


def write_group(path: Path, n: int = 2400, seed: int = 11) -> None:
    rnd = random.Random(seed)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["customer_id", "email", "mobile", "first_name", "country", "ads_consent"])
        for i in range(n):
            key = f"C{i:05d}"
            if i % 9 == 0 and i:
                key = f"C{rnd.randrange(i):05d}"  # a repeated key: its first row must win
            elif i % 97 == 0:
                key = ""
            email = f"Person.{i}@Example.org " if i % 23 else "not an email"
            w.writerow(
                [key, email, f"+44 7700 9{i % 100000:05d}", f"Ünal{i}", "GB", "no" if i % 31 == 0 else "yes"]
            )


def write_campaign(folder: Path, stem: str, group: Path, extra: str = "") -> None:
    (folder / f"{stem}.yaml").write_text(
        textwrap.dedent(
            f"""\
            campaign: Partition test {stem}
            duration: {{start: 2026-08-01, end: 2026-11-20}}
            schedule: "@daily"
            segment_name: {stem}_users
            retries: 0
            audience_group:
              list: {group}
              key: customer_id
              identifiers: {{email: email, phone: mobile, first_name: first_name, country: country}}
              consent: {{column: ads_consent}}
            destinations:
              - platform: meta
                ad_account_id: "{ACCOUNT}"
            """
        )
        + extra
    )


def run_dag(stack: AirflowStack, dag_id: str) -> str:
    stack.api("PATCH", f"/dags/{dag_id}", {"is_paused": False})
    stack.api("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": "2026-11-20T00:00:00Z"})
    return dag_id


def finished(stack: AirflowStack, dag_id: str) -> dict | None:
    runs = [r for r in stack.dag_runs(dag_id) if r["run_type"] == "manual"]
    return runs[0] if runs and runs[0]["state"] in TERMINAL else None


def mapped_xcoms(stack: AirflowStack, dag_id: str, run_id: str, task_id: str) -> list[dict]:
    tis = stack.api("GET", f"/dags/{q(dag_id)}/dagRuns/{q(run_id)}/taskInstances/{q(task_id)}/listMapped")
    out = []
    for ti in sorted(tis["task_instances"], key=lambda t: t["map_index"]):
        assert ti["state"] == "success", ti
        entry = stack.api(
            "GET",
            f"/dags/{q(dag_id)}/dagRuns/{q(run_id)}/taskInstances/{q(task_id)}/xcomEntries/return_value",
            map_index=ti["map_index"],
        )["value"]
        out.append(json.loads(entry) if isinstance(entry, str) else entry)
    return out


def members(sandbox, segment: str) -> set[frozenset]:
    (aud,) = [a for a in sandbox.meta.audiences(ACCOUNT) if a["name"] == segment]
    return {frozenset(m.items()) for m in sandbox.meta.members(aud["id"])}


@pytest.mark.timeout(240)
def test_partitioned_extraction_in_separate_processes_syncs_what_one_extraction_syncs(
    fresh_sandbox, tmp_path: Path
) -> None:
    from tests.conftest import SANDBOX_TOKEN

    group = tmp_path / "group.csv"
    write_group(group)
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    write_campaign(campaigns, "whole", group)
    write_campaign(campaigns, "split", group, "partitions: auto\n")
    store = tmp_path / "object-store"  # the only place tasks stage to
    home = tmp_path / "airflow-home"
    env = {
        "AUDIENCE_SYNC_CAMPAIGNS_DIR": str(campaigns),
        "AUDIENCE_SYNC_STAGING_URL": f"file://{store}",
        "AUDIENCE_SYNC_PARTITION_ROWS": "1000",
        "AUDIENCE_SYNC_EXTRACT_WORKERS": "1",
        "AIRFLOW_CONN_AUDIENCE_SYNC_DB": json.dumps(
            {"conn_type": "sqlite", "host": str(tmp_path / "state.db")}
        ),
        "AIRFLOW_CONN_META_DEFAULT": json.dumps(
            {"conn_type": "generic", "host": fresh_sandbox.url, "password": SANDBOX_TOKEN}
        ),
    }
    with AirflowStack(home, env, parallelism=2) as stack:
        try:
            check(stack, fresh_sandbox, store, home)
        except BaseException:
            print(stack.outputs())  # shown by pytest on failure
            raise


def check(stack: AirflowStack, sandbox, store: Path, home: Path) -> None:
    whole, split = "ads_audience__whole", "ads_audience__split"
    for dag_id in (whole, split):
        run_dag(stack, dag_id)
    runs = {
        d: wait_for(f"{d} to finish", lambda d=d: finished(stack, d), timeout=150) for d in (whole, split)
    }
    for dag_id, run in runs.items():
        assert run["state"] == "success", (dag_id, stack.task_instances(dag_id, run["dag_run_id"]))

    one = stack.xcom(whole, runs[whole]["dag_run_id"], "extract")
    assert stack.xcom(split, runs[split]["dag_run_id"], "partition") == [[0, 3], [1, 3], [2, 3]]
    parts = mapped_xcoms(stack, split, runs[split]["dag_run_id"], "extract")
    assert [p["partition"] for p in parts] == [[0, 3], [1, 3], [2, 3]]
    assert one["duplicates"] > 100 and one["missing_key"] > 0 and one["excluded_no_consent"] > 0
    for name in COUNTS:
        assert sum(p[name] for p in parts) == one[name], name
    assert all(p["rows"] > 0 for p in parts)

    # what reached the platform: the same members, the same hashes
    assert members(sandbox, "split_users") == members(sandbox, "whole_users")
    assert len(members(sandbox, "whole_users")) == one["staged"]["meta"]["rows"]
    sync = {d: stack.xcom(d, runs[d]["dag_run_id"], "sync_meta") for d in (whole, split)}
    for key in ("total", "sent", "invalid", "excluded"):
        assert sync[whole][key] == sync[split][key], key

    # staged only under the staging URL, each partition in its own folder, removed after success
    urls = [s["url"] for x in (one, *parts) for s in x["staged"].values()]
    assert all(u.startswith(f"file://{store}/") for u in urls)
    assert [p["staged"]["meta"]["url"].rsplit("/", 2)[-2] for p in parts] == ["part-0", "part-1", "part-2"]
    assert not (home / "audience_sync" / "staging").exists()
    assert sorted(p.name for p in store.iterdir()) == [split, whole]
    assert not any(store.rglob("*.parquet"))  # record_metrics removed each run's folder


def sql_campaign(folder: Path, stem: str, partitions: str) -> None:
    (folder / f"{stem}.yaml").write_text(
        textwrap.dedent(
            f"""\
            campaign: Partitioned SQL {stem}
            duration: {{start: 2026-08-01}}
            schedule: "@daily"
            segment_name: {stem}_users
            retries: 0
            audience_group:
              sql: "SELECT customer_id, email, mobile, first_name, last_name, country, ads_consent FROM customers;"
              conn_id: crm_db
              key: customer_id
              identifiers: {{email: email, phone: mobile, first_name: first_name, last_name: last_name,
                             country: country}}
              default_country: US
              consent: {{column: ads_consent}}
            destinations:
              - platform: meta
                ad_account_id: "{ACCOUNT}"
            partitions: {partitions}
            """
        )
    )


def run_xcoms(dag_id: str, run_id: str, task_id: str) -> list[object]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as s:
        rows = s.query(XComModel).filter_by(dag_id=dag_id, run_id=run_id, task_id=task_id, key="return_value")
        return [r.value for r in sorted(rows, key=lambda r: r.map_index)]


@pytest.mark.timeout(240)
def test_a_sql_group_sized_at_run_time_and_a_fixed_split_sync_the_same_members(
    airflow_db, fresh_sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``partitions: auto`` counts a SQL group with ``COUNT(*)`` on its connection; ``partitions: 3``
    maps the extract task over a literal list: both run (``dag.test()``) and sync the same members."""
    import os

    import pendulum
    from airflow.dag_processing.dagbag import DagBag

    from audience_sync.demo_data import write_demo_db

    crm = tmp_path / "crm.db"
    write_demo_db(crm, n=2500, seed=3)
    folder = tmp_path / "campaigns"
    folder.mkdir()
    sql_campaign(folder, "sized", "auto")
    sql_campaign(folder, "fixed", "3")
    store = tmp_path / "object-store"
    monkeypatch.setenv("AUDIENCE_SYNC_CAMPAIGNS_DIR", str(folder))
    monkeypatch.setenv("AUDIENCE_SYNC_STAGING_URL", f"file://{store}")
    monkeypatch.setenv("AUDIENCE_SYNC_PARTITION_ROWS", "1000")
    monkeypatch.setenv("AIRFLOW_CONN_CRM_DB", json.dumps({"conn_type": "sqlite", "host": str(crm)}))
    monkeypatch.setenv(
        "AIRFLOW_CONN_AUDIENCE_SYNC_DB",
        json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "state.db")}),
    )
    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    totals = {}
    for stem in ("sized", "fixed"):
        dag_id = f"ads_audience__{stem}"
        run = bag.dags[dag_id].test(logical_date=pendulum.datetime(2026, 11, 20, tz="UTC"))
        assert run.state == "success", stem
        parts = run_xcoms(dag_id, run.run_id, "extract")
        assert [p["partition"] for p in parts] == [[0, 3], [1, 3], [2, 3]]
        assert sum(p["rows"] for p in parts) == 2500
        totals[stem] = sum(p["staged"]["meta"]["rows"] for p in parts)
        assert all(p["staged"]["meta"]["url"].startswith(f"file://{store}/{dag_id}/") for p in parts)
        sizing = run_xcoms(dag_id, run.run_id, "partition")  # only the auto DAG has a partition task
        assert sizing == ([[[0, 3], [1, 3], [2, 3]]] if stem == "sized" else [])
    assert totals["sized"] == totals["fixed"] > 500
    assert members(fresh_sandbox, "sized_users") == members(fresh_sandbox, "fixed_users")
    assert not any(store.rglob("*.parquet"))
