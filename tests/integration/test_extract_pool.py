"""A campaign whose group spans several chunks is hashed by worker processes inside its extract task.

``dag.test()`` runs the tasks in this process, so the pool's workers are spawned from a task's
process as a deployment's task process spawns them. The run must stage what one process stages, and
the sandbox audience must hold exactly the group.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path

import pendulum
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audience_sync.core.extract import extract_and_stage, staged_parts
from audience_sync.sources import read_file

STEM = "extract_pool"
DAG_ID = f"ads_audience__{STEM}"
ACCOUNT = "act_6160"
IDENTIFIERS = {"email": "email", "phone": "phone", "country": "country"}


def write_group(path: Path, n: int) -> None:
    rows = [
        f"{i % 1150},User{i}@Example.com,+1 650 253 {i % 10000:04d},{'US' if i % 2 else 'United States'}"
        for i in range(n)
    ]
    path.write_text("customer_id,email,phone,country\n" + "\n".join(rows) + "\n")


def campaign(csv: Path) -> str:
    return f"""\
campaign: Extract pool
duration: {{start: 2026-11-01}}
schedule: "@daily"
segment_name: extract_pool_users
retries: 0
audience_group:
  list: {csv}
  key: customer_id
  identifiers: {json.dumps(IDENTIFIERS)}
destinations:
  - platform: meta
    ad_account_id: "{ACCOUNT}"
"""


def staged(path: str) -> list[dict[str, str]]:
    table = pa.concat_tables(pq.read_table(p) for p in staged_parts(path))
    return sorted(table.to_pylist(), key=lambda r: r["member_id"])


@pytest.mark.timeout(300)
def test_a_group_of_many_chunks_is_hashed_by_worker_processes_in_the_task(
    airflow_db,
    fresh_sandbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    from audience_sync.hooks.state import AudienceSyncStateHook

    folder = tmp_path / "campaigns"
    folder.mkdir()
    csv = tmp_path / "group.csv"
    write_group(csv, 1200)  # 12 chunks of 100; keys repeat after 1,150 rows
    (folder / f"{STEM}.yaml").write_text(campaign(csv))
    monkeypatch.setenv("AUDIENCE_SYNC_CAMPAIGNS_DIR", str(folder))
    monkeypatch.setenv(
        "AIRFLOW_CONN_AUDIENCE_SYNC_DB", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "s.db")})
    )
    monkeypatch.setenv("AUDIENCE_SYNC_CHUNK_ROWS", "100")
    monkeypatch.setenv("AUDIENCE_SYNC_EXTRACT_WORKERS", "2")

    dag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).dags[DAG_ID]
    run = dag.test(logical_date=pendulum.datetime(2026, 11, 30, tz="UTC"))
    assert run.state == "success"
    with create_session() as s:
        xcom = {
            r.task_id: r.value
            for r in s.query(XComModel).filter_by(dag_id=DAG_ID, run_id=run.run_id, key="return_value")
        }
    extracted = xcom["extract"]
    assert (extracted["rows"], extracted["valid"], extracted["duplicates"]) == (1200, 1150, 50)
    assert extracted["workers"] == 2  # hashed by the pool, not in the task's own process
    (audience,) = fresh_sandbox.meta.audiences(ACCOUNT)
    assert audience["count"] == 1150

    # what one process stages from the same file with the same keys
    one = extract_and_stage(
        read_file(csv, 100),
        key="customer_id",
        identifiers=IDENTIFIERS,
        platforms=["meta"],
        staging_dir=tmp_path / "one_process",
        keys=AudienceSyncStateHook().keys,
        workers=1,
    )
    schema = one.staged["meta"]["schema"]
    expected = {
        frozenset((k, v) for k, v in row.items() if k in schema and v)
        for row in staged(one.staged["meta"]["path"])
    }
    sent = {frozenset(m.items()) for m in fresh_sandbox.meta.members(audience["id"])}
    assert len(expected) == 1150
    assert sent == expected  # what the workers hashed is exactly what one process hashes


def _extract(csv: Path, out: Path, keys: object, workers: int) -> dict:
    return extract_and_stage(
        read_file(csv, 100),
        key="customer_id",
        identifiers=IDENTIFIERS,
        platforms=["meta"],
        staging_dir=out,
        keys=keys,  # type: ignore[arg-type]
        workers=workers,
    ).staged["meta"]


@pytest.mark.timeout(300)
def test_keys_that_arrive_while_the_workers_hash_give_what_known_keys_give(tmp_path: Path) -> None:
    from audience_sync.core.keys import StateKeys

    csv = tmp_path / "group.csv"
    write_group(csv, 1200)
    keys = StateKeys.generate()
    later: Future[StateKeys] = Future()
    timer = threading.Timer(1.0, later.set_result, (keys,))  # as the CLI's thread importing Airflow
    timer.start()
    try:
        pooled = _extract(csv, tmp_path / "later", later, workers=2)
    finally:
        timer.cancel()
    one = _extract(csv, tmp_path / "known", keys, workers=1)
    assert pooled["rows"] == one["rows"] == 1150
    assert staged(pooled["path"]) == staged(one["path"])  # member ids and row hashes included


@pytest.mark.timeout(300)
@pytest.mark.parametrize("workers", [1, 2])
def test_keys_that_fail_to_load_fail_the_extraction_with_their_own_error(
    tmp_path: Path, workers: int
) -> None:
    from audience_sync.core.keys import StateKeyError

    csv = tmp_path / "group.csv"
    write_group(csv, 1200)
    failing: Future[object] = Future()
    timer = threading.Timer(0.5, failing.set_exception, (StateKeyError("no keys in the connection"),))
    timer.start()
    try:
        with pytest.raises(StateKeyError, match="no keys in the connection"):
            _extract(csv, tmp_path / "failed", failing, workers=workers)
    finally:
        timer.cancel()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("workers", [1, 2])
def test_fingerprints_that_fail_to_load_fail_the_extraction_with_their_own_error(
    tmp_path: Path, workers: int
) -> None:
    from audience_sync.core.keys import StateKeys

    csv = tmp_path / "group.csv"
    write_group(csv, 1200)
    failing: Future[object] = Future()
    timer = threading.Timer(0.5, failing.set_exception, (OSError("state database unreachable"),))
    timer.start()
    try:
        with pytest.raises(OSError, match="state database unreachable"):
            extract_and_stage(
                read_file(csv, 100),
                key="customer_id",
                identifiers=IDENTIFIERS,
                platforms=["meta"],
                staging_dir=tmp_path / "failed",
                keys=StateKeys.generate(),
                known=failing,  # type: ignore[arg-type]
                workers=workers,
            )
    finally:
        timer.cancel()


SCRIPT = """\
import sys
from pathlib import Path

with open(sys.argv[1] + ".imports", "a") as f:  # every process that runs this script says so
    f.write(__name__ + "\\n")

from audience_sync.core.extract import extract_and_stage
from audience_sync.core.keys import StateKeys
from audience_sync.sources import read_file

# no ``if __name__ == "__main__":`` guard: a worker that re-ran this script would start an extraction
counts = extract_and_stage(
    read_file(Path(sys.argv[1]), 100),
    key="customer_id",
    identifiers={"email": "email", "phone": "phone", "country": "country"},
    platforms=["meta"],
    staging_dir=sys.argv[2],
    keys=StateKeys.generate(),
    workers=2,
)
print(counts.workers, counts.valid)
"""


@pytest.mark.timeout(300)
def test_worker_processes_do_not_run_the_main_script(tmp_path: Path) -> None:
    # a task's main script is the airflow command, which imports all of Airflow: a spawned worker would
    # re-run it (as __mp_main__) before its first chunk
    csv = tmp_path / "group.csv"
    write_group(csv, 600)
    script = tmp_path / "unguarded.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, str(script), str(csv), str(tmp_path / "staged")],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=True,
    )
    assert out.stdout.split() == ["2", "600"]  # hashed by 2 workers, every row valid
    assert (tmp_path / "group.csv.imports").read_text().split() == ["__main__"]  # the parent only
