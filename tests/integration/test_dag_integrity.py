"""Every campaign file becomes a DAG; parsing touches no connection, Variable or database; broken files
fail alone and show as import errors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CAMPAIGNS = sorted(
    p for p in (ROOT / "include" / "demo" / "campaigns").glob("*.y*ml") if not p.name.startswith(("_", "."))
)


def _bag(folder: str | None = None):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=folder or os.environ["AIRFLOW__CORE__DAGS_FOLDER"])


def test_every_campaign_file_loads_as_a_dag() -> None:
    bag = _bag()
    assert bag.import_errors == {}, bag.import_errors
    assert CAMPAIGNS, "include/demo/campaigns/ holds no campaign file"
    expected = {f"ads_audience__{p.stem}" for p in CAMPAIGNS}
    assert expected <= set(bag.dag_ids)


@pytest.mark.parametrize("path", CAMPAIGNS, ids=lambda p: p.stem)
def test_dag_shape_tags_and_retries(path: Path) -> None:
    dag = _bag().dags.get(f"ads_audience__{path.stem}")
    assert dag is not None
    assert "audience-sync" in dag.tags
    assert dag.catchup is False and dag.max_active_runs == 1
    ids = set(dag.task_ids)
    assert "extract" in ids and "record_metrics" in ids
    syncs = [t for t in ids if t.startswith("sync_")]
    assert syncs
    for task in dag.tasks:
        assert task.retries >= 2, task.task_id
    assert dag.get_task("enabled").downstream_task_ids == {"extract"}
    assert [t.task_id for t in dag.roots] == ["enabled"]
    assert dag.get_task("extract").downstream_task_ids == {"plan"}
    assert dag.get_task("plan").downstream_task_ids == {"approve"}
    assert dag.get_task("approve").downstream_task_ids == set(syncs)
    assert dag.get_task("record_metrics").trigger_rule == "all_done"


def test_parsing_touches_no_connection_variable_or_database(monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlalchemy
    from airflow.sdk import BaseHook, Variable

    touched: list[str] = []

    def forbid(name: str):
        def _f(*a, **k):
            touched.append(name)
            raise AssertionError(f"{name} called while parsing DAGs")

        return _f

    monkeypatch.setattr(BaseHook, "get_connection", classmethod(lambda cls, *a, **k: forbid("connection")()))
    monkeypatch.setattr(Variable, "get", staticmethod(forbid("Variable.get")))
    real_create_engine = sqlalchemy.create_engine

    def guarded_engine(url, *a, **k):
        if "audience_sync" in str(url) or "state" in str(url):
            touched.append("state database")
        return real_create_engine(url, *a, **k)

    monkeypatch.setattr(sqlalchemy, "create_engine", guarded_engine)
    bag = _bag()
    assert bag.import_errors == {}
    assert touched == []


def test_a_broken_campaign_fails_alone_with_file_field_and_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "campaigns"
    folder.mkdir()
    shutil.copy(CAMPAIGNS[0], folder / "good_one.yaml")
    text = CAMPAIGNS[0].read_text().replace("schedule:", "schedual:")
    (folder / "broken_one.yaml").write_text(text)
    monkeypatch.setenv("AUDIENCE_SYNC_CAMPAIGNS_DIR", str(folder))
    monkeypatch.setenv("AUDIENCE_SYNC_STRICT", "0")
    bag = _bag()
    assert "ads_audience__good_one" in bag.dag_ids
    assert "ads_audience__broken_one" not in bag.dag_ids
    errors = "\n".join(bag.import_errors.values())
    assert len(bag.import_errors) == 1
    assert "broken_one.yaml" in errors and "schedual" in errors and "schedule" in errors  # file, field, fix


def test_strict_mode_fails_on_any_broken_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from audience_sync.factory import build_dags

    folder = tmp_path / "campaigns"
    folder.mkdir()
    (folder / "broken.yaml").write_text("campaign: x\n")
    monkeypatch.setenv("AUDIENCE_SYNC_STRICT", "1")
    with pytest.raises(Exception, match="broken.yaml"):
        build_dags(folder=folder)


def test_partitioned_dags_map_the_extract_task_without_touching_a_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.sdk import BaseHook

    def forbid(*a, **k):
        raise AssertionError("a connection was read while parsing DAGs")

    monkeypatch.setattr(BaseHook, "get_connection", classmethod(forbid))
    folder = tmp_path / "campaigns"
    folder.mkdir()
    text = CAMPAIGNS[0].read_text()  # a SQL group: ``auto`` must not count it at parse time
    (folder / "fixed.yaml").write_text(text + "partitions: 3\n")
    (folder / "sized.yaml").write_text(text + "partitions: auto\n")
    (folder / "single.yaml").write_text(text + "partitions: 1\n")
    (folder / "plain.yaml").write_text(text)
    monkeypatch.setenv("AUDIENCE_SYNC_CAMPAIGNS_DIR", str(folder))
    bag = _bag()
    assert bag.import_errors == {}
    fixed, sized, single = (bag.dags[f"ads_audience__{s}"] for s in ("fixed", "sized", "single"))

    extract = fixed.get_task("extract")
    assert type(extract).__name__ == "MappedOperator"
    assert extract.expand_input.value == {"partition": [[0, 3], [1, 3], [2, 3]]}
    assert "partition" not in fixed.task_ids and extract.downstream_task_ids == {"plan"}

    assert type(sized.get_task("extract")).__name__ == "MappedOperator"
    assert sized.get_task("partition").downstream_task_ids == {"extract"}
    assert sized.get_task("enabled").downstream_task_ids == {"partition"}
    assert fixed.get_task("enabled").downstream_task_ids == {"extract"}
    assert sized.get_task("extract").downstream_task_ids == {"plan"}

    # one partition is today's DAG: one plain extract task, the same task ids
    assert type(single.get_task("extract")).__name__ == "ExtractAudienceOperator"
    assert set(single.task_ids) == set(bag.dags["ads_audience__plain"].task_ids)
    assert "partition" not in single.task_ids
