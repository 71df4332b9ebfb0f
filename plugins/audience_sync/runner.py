"""Run or plan one campaign from a plain process (the command line and the demo): dag.test() and dry runs."""

from __future__ import annotations

import os
import secrets
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audience_sync.core.campaign import DAG_ID_PREFIX, campaigns_dir, load_campaign, project_root

if TYPE_CHECKING:
    from airflow.sdk import DAG
    from pendulum import DateTime

    from audience_sync.core.campaign import Campaign
    from audience_sync.core.contract import Destination
    from audience_sync.core.keys import StateKeys
    from audience_sync.core.ledger import StateStore


def prepare_airflow_env(home: Path | None = None) -> None:
    """Point Airflow at this project before it is imported (only what the user has not set)."""
    root = project_root()
    os.environ.setdefault("AIRFLOW_HOME", str(home or root / ".airflow"))
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(root / "dags"))
    os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(root / "plugins"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    if "AIRFLOW__API_AUTH__JWT_SECRET" not in os.environ:
        os.environ["AIRFLOW__API_AUTH__JWT_SECRET"] = secrets.token_hex(64)
    Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)


def _when(logical_date: str | None) -> DateTime:
    import pendulum

    return pendulum.parse(logical_date, tz="UTC") if logical_date else pendulum.now("UTC")


# ----------------------------------------------------------------------------------------------- run
def run_campaign(stem: str, logical_date: str | None = None) -> dict[str, Any]:
    """Run one campaign's DAG once through ``dag.test()``; return the run state and per-task results."""
    prepare_airflow_env()
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.utils import db
    from airflow.utils.session import create_session

    db.upgradedb()
    dag_id = f"{DAG_ID_PREFIX}{stem}"
    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    dag = bag.get_dag(dag_id)
    if dag is None:
        problems = "\n".join(f"{k}: {v}" for k, v in bag.import_errors.items())
        raise SystemExit(f"No DAG {dag_id} (campaign file '{stem}.yaml').\n{problems}")
    from audience_sync.approval_status import approval_wait, find_campaign

    waiting = approval_wait(find_campaign(stem))
    if waiting:  # dag.test() would wait for the answer forever
        raise SystemExit(waiting)
    dr = dag.test(logical_date=_when(logical_date))
    with create_session() as s:
        xcoms = {
            r.task_id: r.value
            for r in s.query(XComModel).filter_by(dag_id=dag_id, run_id=dr.run_id, key="return_value")
        }
        states = {ti.task_id: str(ti.state) for ti in dr.get_task_instances(session=s)}
    return {"dag_id": dag_id, "run_id": dr.run_id, "state": str(dr.state), "tasks": states, "xcom": xcoms}


def format_run(result: dict[str, Any]) -> str:
    """One line for the run, one for the group, one per sync task; failed tasks point to their log."""
    lines = [f"{result['dag_id']} run {result['run_id']}: {result['state']}"]
    ext = result["xcom"].get("extract")
    if isinstance(ext, dict):
        lines.append(
            f"  group: {ext['rows']} rows, {ext['valid']} valid, {ext['invalid']} invalid "
            f"{ext.get('invalid_by_reason') or ''}, {ext.get('duplicates', 0)} duplicate keys, "
            f"{ext.get('excluded_no_consent', 0)} excluded (no consent)"
        )
    if result["tasks"].get("enabled") == "success" and result["tasks"].get("extract") == "skipped":
        lines.append(
            "  syncing is disabled on this deployment: nothing was read or sent (AUDIENCE_SYNC_ENABLED)"
        )
    approval = result["xcom"].get("approve")
    if isinstance(approval, dict):
        by = f" by {approval['decided_by']}" if approval.get("decided_by") else ""
        source = f" ({str(approval['source']).replace('_', ' ')})" if approval.get("source") else ""
        lines.append(f"  approval: version {approval['version']} {approval['decision']}{by}{source}")
    for task, state in sorted(result["tasks"].items()):
        x = result["xcom"].get(task)
        if task.startswith("sync_"):
            if isinstance(x, dict):
                lines.append(
                    f"  {task} [{state}] {x.get('account')} audience {x.get('audience_id')} "
                    f"({x.get('audience_action')}): total {x['total']}, sent {x['sent']}, "
                    f"in progress {x['in_progress']}, pending {x['pending']}, failed {x['failed']}, "
                    f"removed {x['removed']}, invalid {x['invalid']}, requests {x['requests']}"
                )
                run = x.get("run") or {}
                if run:
                    lines.append(
                        f"    this run: added {run['added']}, removed {run['removed']}, re-sent {run['resent']} "
                        f"(changed identifiers), unchanged {run['unchanged']}, rejected by the platform "
                        f"{run['rejected']}"
                    )
            else:
                lines.append(f"  {task} [{state}] no result (see the task log)")
        elif state not in ("success", "skipped"):
            lines.append(f"  {task} [{state}] (see the task log)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- plan
def data_interval(dag: DAG, logical_date: DateTime) -> tuple[DateTime, DateTime]:
    """The data interval a run of ``dag`` for ``logical_date`` gets.

    A date on the schedule gets the interval the scheduler (and a backfill) gives that run, from the
    DAG's timetable; any other date gets what a manual run of it gets (``audience-sync run``,
    ``dag.test()``): the timetable's ``infer_manual_data_interval``.
    """
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.serialization.serialized_objects import DagSerialization

    scheduler_dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    for info in scheduler_dag.iter_dagrun_infos_between(logical_date, logical_date):
        if info.logical_date == logical_date and info.data_interval is not None:
            return info.data_interval.start, info.data_interval.end
    manual = coerce_to_core_timetable(dag.timetable).infer_manual_data_interval(run_after=logical_date)
    return manual.start, manual.end


def render_query(dag: DAG, logical_date: DateTime) -> str | None:
    """The extract task's SQL rendered as a run of ``logical_date`` renders it (None for a list group)."""
    from airflow.sdk.execution_time.context import MacrosAccessor

    task = dag.get_task("extract")
    if task.sql is None:  # type: ignore[attr-defined]
        return None
    start, end = data_interval(dag, logical_date)
    ds = logical_date.strftime("%Y-%m-%d")
    ts = logical_date.isoformat()
    # The date keys exactly as the task runner computes them for a task's template context.
    context = {
        "dag": dag,
        "task": task,
        "run_id": "plan",
        "params": dag.params,
        "macros": MacrosAccessor(),
        "logical_date": logical_date,
        "ds": ds,
        "ds_nodash": ds.replace("-", ""),
        "ts": ts,
        "ts_nodash": logical_date.strftime("%Y%m%dT%H%M%S"),
        "ts_nodash_with_tz": ts.replace("-", "").replace(":", ""),
        "data_interval_start": start,
        "data_interval_end": end,
    }
    return task.render_template(task.sql, context)  # type: ignore[attr-defined,arg-type]


def plan_campaign(stem: str, logical_date: str | None = None) -> dict[str, Any]:
    """The dry-run plan of one campaign: extract to a temporary folder, then plan every destination.

    The campaign's SQL is rendered with the data interval a run of ``logical_date`` would get (see
    :func:`data_interval`), so the plan reads the same group that run will read; a list group has no
    data interval (``None``).

    A list group is extracted while another thread imports Airflow, opens the state and builds the
    destinations (:func:`_open_state`): the extraction needs the state's keys only at its first member
    id (``extract_and_stage`` takes them as a future), so Airflow's import, most of this command's
    fixed cost, is off the critical path.
    """
    prepare_airflow_env()
    # planning's modules (SQLAlchemy) are imported once the state is open, when the other thread has
    # imported SQLAlchemy with Airflow: the extraction starts without waiting for them
    from audience_sync.core.extract import extract_and_stage, read_member_ids
    from audience_sync.sources import read_group

    folder = campaigns_dir()
    path = next((p for p in (folder / f"{stem}.yaml", folder / f"{stem}.yml") if p.exists()), None)
    if path is None:
        raise SystemExit(f"no campaign file {stem}.yaml in {folder}")
    c = load_campaign(path)
    when = _when(logical_date)
    g = c.audience_group
    sql: str | None = None
    interval: list[str] | None = None
    keys: Future[StateKeys] = Future()
    with ThreadPoolExecutor(1, thread_name_prefix="audience-sync-plan") as opener:
        if g.source == "sql":
            # only a query depends on the run's dates (building the DAG costs ~1 s); this thread imports
            # Airflow for it, so the state is opened here first rather than alongside
            from audience_sync.factory import build_dag
            from audience_sync.operators.extract import read_group as read_sql_group

            opened = _open_state(keys, c)
            dag = build_dag(c)
            start, end = data_interval(dag, when)
            interval = [start.isoformat(), end.isoformat()]
            sql = render_query(dag, when)
            chunks = read_sql_group(None, sql, g.conn_id)
        else:
            opening = opener.submit(_open_state, keys, c)
            chunks = read_group(g.source_path, None)
        platforms = sorted({d.platform for d in c.destinations})
        with tempfile.TemporaryDirectory(prefix="audience-sync-plan-") as tmp:
            counts = extract_and_stage(
                chunks,
                key=g.key,
                identifiers=g.extracted_fields,
                platforms=platforms,
                staging_dir=tmp,
                keys=keys,
                default_country=g.default_country,
                consent_column=g.consent.column if g.consent else None,
            )
            if g.source != "sql":
                opened = opening.result()
            store, destinations = opened
            from audience_sync.core.delta import StagedGroup
            from audience_sync.core.sync import SyncRequest, plan_sync

            revoked = read_member_ids(counts.no_consent_path)
            plans = []
            for d, dest in zip(c.destinations, destinations, strict=True):
                staged = counts.staged[d.platform]
                req = SyncRequest(
                    dag_id=c.dag_id,
                    run_id="plan",
                    platform=d.platform,
                    account=dest.account,
                    segment_name=c.segment_name,
                    schema=tuple(staged["schema"]),
                    mode=c.sync_mode,
                    logical_date=when,
                    exclude_segments=tuple(g.exclude_segments),
                )
                plans.append(plan_sync(dest, store, req, StagedGroup(staged["path"]), revoked=revoked))
    ext = counts.as_dict()
    ext.pop("staged", None)
    ext.pop("no_consent_path", None)
    return {
        "campaign": stem,
        "dag_id": c.dag_id,
        "logical_date": when.isoformat(),
        "data_interval": interval,
        "sql": sql,
        "group": ext,
        "destinations": plans,
    }


def _open_state(keys: Future[StateKeys], campaign: Campaign) -> tuple[StateStore, list[Destination]]:
    """Import Airflow, open the state (``keys`` gets its keys, or the failure) and build the campaign's
    destinations (no request is sent)."""
    try:
        from audience_sync.hooks.state import AudienceSyncStateHook

        store = AudienceSyncStateHook().store
    except BaseException as exc:
        keys.set_exception(exc)
        raise
    keys.set_result(store.keys)
    from audience_sync.destinations import build_destination

    return store, [
        build_destination(d.platform, d.conn_id, d.account, d.options()) for d in campaign.destinations
    ]
