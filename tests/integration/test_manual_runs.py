"""Airflow 3 runs without a logical date keep the backfill guard, and staged files of finished runs go.

Through ``dag.test()`` (in-process Airflow, SQLite metadata DB), the local Meta sandbox and a SQLite
state database:

1. a scheduled-style run for 2026-11-20 syncs 300 members (mirror);
2. a run for 2026-11-21 fails in its sync task (the sandbox refuses uploads): its staged files stay;
3. a manual run *without* a logical date whose ``run_after`` is 2026-11-15 syncs a smaller group: the
   guard treats it as older than the newest sync (add only, no removals), its metrics row carries
   2026-11-15, and its extract task removed run 2's staging folder (run 2 is finished);
4. clearing only run 2's sync task would now find no staged file: it fails with a clear message.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pendulum
import pytest

from audience_sync.core.ledger import StateStore

STEM = "manual_runs"
DAG_ID = f"ads_audience__{STEM}"
ACCOUNT = "act_5150"


def campaign(csv: Path) -> str:
    return f"""\
campaign: Manual runs
duration: {{start: 2026-11-01}}
schedule: "@daily"
segment_name: manual_run_users
retries: 0
audience_group:
  list: {csv}
  key: customer_id
  identifiers: {{email: email}}
destinations:
  - platform: meta
    ad_account_id: "{ACCOUNT}"
"""


def write_group(csv: Path, n: int) -> None:
    csv.write_text("customer_id,email\n" + "".join(f"{i},user{i}@example.com\n" for i in range(n)))


def xcoms(run_id: str) -> dict[str, object]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as s:
        rows = s.query(XComModel).filter_by(dag_id=DAG_ID, run_id=run_id, key="return_value").all()
        return {r.task_id: r.value for r in rows}


@pytest.mark.timeout(300)
def test_a_run_without_logical_date_is_guarded_and_prunes_finished_runs_staging(
    airflow_db, fresh_sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.exceptions import AirflowFailException

    from audience_sync.operators.extract import staging_dir
    from audience_sync.operators.sync import require_staged

    folder = tmp_path / "campaigns"
    folder.mkdir()
    csv = tmp_path / "group.csv"
    (folder / f"{STEM}.yaml").write_text(campaign(csv))
    state = tmp_path / "state.db"
    monkeypatch.setenv("AUDIENCE_SYNC_CAMPAIGNS_DIR", str(folder))
    monkeypatch.setenv(
        "AIRFLOW_CONN_AUDIENCE_SYNC_DB", json.dumps({"conn_type": "sqlite", "host": str(state)})
    )
    monkeypatch.setenv("AUDIENCE_SYNC_RETRY_ATTEMPTS", "1")

    def dag():
        return DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).dags[DAG_ID]

    write_group(csv, 300)
    first = dag().test(logical_date=pendulum.datetime(2026, 11, 20, tz="UTC"))
    assert first.state == "success"
    assert not staging_dir(DAG_ID, first.run_id).exists()  # record_metrics removed them

    fresh_sandbox.meta.add_fault(method="POST", path_regex="/users$", times=None, action="error", code=2655)
    write_group(csv, 320)
    failed = dag().test(logical_date=pendulum.datetime(2026, 11, 21, tz="UTC"))
    fresh_sandbox.meta.clear_faults()
    assert failed.state == "failed"
    left = staging_dir(DAG_ID, failed.run_id)
    assert list((left / "meta").glob("*.parquet"))  # a failed run leaves its hashes behind

    write_group(csv, 100)
    mark = fresh_sandbox.meta.requests_log()[-1]["seq"]
    manual = dag().test(logical_date=None, run_after=pendulum.datetime(2026, 11, 15, 6, tz="UTC"))
    assert manual.state == "success" and manual.logical_date is None
    sync = xcoms(manual.run_id)["sync_meta"]
    assert sync["backfill"] is True and any("backfill" in n for n in sync["notes"])
    member_calls = [e for e in fresh_sandbox.meta.requests_log(mark) if e.get("op")]
    assert member_calls == [] or {e["op"] for e in member_calls} == {"add"}  # no removals
    (aud,) = [a for a in fresh_sandbox.meta.audiences(ACCOUNT) if a["name"] == "manual_run_users"]
    # nobody removed: the 300 of the newer run stay; the 20 the failed run could not send wait, failed,
    # for the next regular run (a backfill only adds members new to the audience)
    assert aud["count"] == 300

    store = StateStore(f"sqlite:///{state}")
    entry = store.get_registry("meta", ACCOUNT, "manual_run_users")
    assert store.ledger_counts(entry.id)["failed"] == 20
    assert entry.last_logical_date == dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
    (row,) = store.read_metrics(DAG_ID, manual.run_id)
    assert row["outcome"] == "success_backfill"
    assert row["logical_date"] == dt.datetime(2026, 11, 15, 6, tzinfo=dt.UTC)
    store.engine.dispose()

    assert not left.exists()  # run 3's extract removed the finished run 2's staging folder
    with pytest.raises(AirflowFailException, match="staged file missing.*clear the extract task"):
        require_staged(xcoms(failed.run_id)["extract"], "meta")


def test_prune_keeps_running_runs_and_young_unmarked_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audience_sync.operators.extract import (
        RUN_MARKER,
        UNMARKED_MAX_AGE_SECONDS,
        prune_staging,
        staging_dir,
    )

    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    states = {"r_running": "running", "r_done": "success", "r_failed": "failed", "r_unknown": None}
    for run in states:
        d = staging_dir("dag_x", run)
        d.mkdir(parents=True)
        (d / RUN_MARKER).write_text(run)
    young, old = staging_dir("dag_x", "legacy_young"), staging_dir("dag_x", "legacy_old")
    for d in (young, old):
        d.mkdir()
    os.utime(old.path, (0, os.path.getmtime(old.path) - UNMARKED_MAX_AGE_SECONDS - 60))  # a local store
    other_dag = staging_dir("dag_y", "r_done")
    other_dag.mkdir(parents=True)
    (other_dag / RUN_MARKER).write_text("r_done")
    mine = staging_dir("dag_x", "r_mine")
    mine.mkdir()
    (mine / RUN_MARKER).write_text("r_mine")

    dropped = prune_staging("dag_x", "r_mine", states.get)
    assert sorted(p.name for p in dropped) == ["legacy_old", "r_done", "r_failed"]
    left = sorted(p.name for p in mine.parent.iterdir())
    assert left == ["legacy_young", "r_mine", "r_running", "r_unknown"]
    assert other_dag.exists()  # another DAG's runs are not ours to judge
