"""``audience-sync`` command line: validate, hash, run, sandbox, demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _project_root() -> Path:
    from audience_sync.core.campaign import project_root

    return project_root()


def prepare_airflow_env(home: Path | None = None) -> None:
    """Point Airflow at this project before it is imported (only what the user has not set)."""
    root = _project_root()
    os.environ.setdefault("AIRFLOW_HOME", str(home or root / ".airflow"))
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(root / "dags"))
    os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(root / "plugins"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    if "AIRFLOW__API_AUTH__JWT_SECRET" not in os.environ:
        import secrets

        os.environ["AIRFLOW__API_AUTH__JWT_SECRET"] = secrets.token_hex(64)
    Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)


# ----------------------------------------------------------------------------- validate
def cmd_validate(args: argparse.Namespace) -> int:
    from audience_sync.core.campaign import campaigns_dir, load_campaign
    from audience_sync.core.errors import AudienceSyncError

    files = [Path(f) for f in args.files] or sorted(
        p for p in campaigns_dir().glob("*.y*ml") if not p.name.startswith(("_", "."))
    )
    if not files:
        print(f"no campaign files in {campaigns_dir()}", file=sys.stderr)
        return 1
    bad = 0
    for f in files:
        try:
            c = load_campaign(f)
        except AudienceSyncError as exc:
            bad += 1
            print(f"INVALID {exc}")
            continue
        print(
            f"OK      {_shown(f)}: DAG {c.dag_id}, segment {c.segment_name}, {len(c.destinations)} destination(s)"
        )
    if bad:
        print(f"{bad} of {len(files)} campaign file(s) invalid", file=sys.stderr)
    return 1 if bad else 0


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(_project_root()))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------------- hash
def cmd_hash(args: argparse.Namespace) -> int:
    from audience_sync.core.normalize import normalize_field

    rc = 0
    for value in args.values:
        try:
            out = normalize_field(args.platform, args.field, value, country=args.country).as_dict()
        except ValueError as exc:  # unknown platform, field or country: the same shape, with the reason
            out = {
                "platform": args.platform,
                "field": args.field,
                "normalized": None,
                "sent": None,
                "error": str(exc),
            }
        if out["error"]:
            rc = 1
        print(json.dumps(out, ensure_ascii=False))
    return rc


# ---------------------------------------------------------------------------------- run
def run_campaign(stem: str, logical_date: str | None = None) -> dict[str, Any]:
    """Run one campaign's DAG once through ``dag.test()``; return the run state and per-task results."""
    prepare_airflow_env()
    import pendulum
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.utils import db
    from airflow.utils.session import create_session

    from audience_sync.core.campaign import DAG_ID_PREFIX

    db.upgradedb()
    dag_id = f"{DAG_ID_PREFIX}{stem}"
    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    dag = bag.get_dag(dag_id)
    if dag is None:
        problems = "\n".join(f"{k}: {v}" for k, v in bag.import_errors.items())
        raise SystemExit(f"No DAG {dag_id} (campaign file '{stem}.yaml').\n{problems}")
    when = pendulum.parse(logical_date, tz="UTC") if logical_date else pendulum.now("UTC")
    dr = dag.test(logical_date=when)
    with create_session() as s:
        xcoms = {
            r.task_id: r.value
            for r in s.query(XComModel).filter_by(dag_id=dag_id, run_id=dr.run_id, key="return_value")
        }
        states = {ti.task_id: str(ti.state) for ti in dr.get_task_instances(session=s)}
    return {"dag_id": dag_id, "run_id": dr.run_id, "state": str(dr.state), "tasks": states, "xcom": xcoms}


def format_run(result: dict[str, Any]) -> str:
    lines = [f"{result['dag_id']} run {result['run_id']}: {result['state']}"]
    ext = result["xcom"].get("extract")
    if isinstance(ext, dict):
        lines.append(
            f"  group: {ext['rows']} rows, {ext['valid']} valid, {ext['invalid']} invalid "
            f"{ext.get('invalid_by_reason') or ''}, {ext.get('duplicates', 0)} duplicate keys, "
            f"{ext.get('excluded_no_consent', 0)} excluded (no consent)"
        )
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
            else:
                lines.append(f"  {task} [{state}] no result (see the task log)")
        elif state not in ("success", "skipped"):
            lines.append(f"  {task} [{state}] (see the task log)")
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    result = run_campaign(args.campaign, args.logical_date)
    print(format_run(result))
    return 0 if result["state"] == "success" else 1


# --------------------------------------------------------------------------------- plan
def plan_campaign(stem: str, logical_date: str | None = None) -> dict[str, Any]:
    """The dry-run plan of one campaign: extract to a temporary folder, then plan every destination."""
    prepare_airflow_env()
    import tempfile

    import jinja2
    import pendulum

    from audience_sync.core.campaign import campaigns_dir, load_campaign
    from audience_sync.core.extract import extract_and_stage, read_member_ids
    from audience_sync.core.sync import SyncRequest, plan_sync
    from audience_sync.hooks.state import AudienceSyncStateHook
    from audience_sync.operators.extract import read_group
    from audience_sync.operators.sync import DESTINATIONS, staged_rows

    path = next(
        (p for p in (campaigns_dir() / f"{stem}.yaml", campaigns_dir() / f"{stem}.yml") if p.exists()), None
    )
    if path is None:
        raise SystemExit(f"no campaign file {stem}.yaml in {campaigns_dir()}")
    c = load_campaign(path)
    when = pendulum.parse(logical_date, tz="UTC") if logical_date else pendulum.now("UTC")
    g = c.audience_group
    sql = None
    if g.source == "sql":
        ctx = {
            "data_interval_start": when,
            "data_interval_end": when,
            "logical_date": when,
            "ds": when.to_date_string(),
            "ts": when.isoformat(),
        }
        sql = jinja2.Template(g.sql_query()).render(**ctx)
    platforms = sorted({d.platform for d in c.destinations})
    store = AudienceSyncStateHook().store
    with tempfile.TemporaryDirectory(prefix="audience-sync-plan-") as tmp:
        counts = extract_and_stage(
            read_group(str(g.source_path) if g.source == "list" else None, sql, g.conn_id),
            key=g.key,
            identifiers=dict(g.identifiers),
            platforms=platforms,
            staging_dir=tmp,
            keys=store.keys,
            default_country=g.default_country,
            consent_column=g.consent.column if g.consent else None,
        )
        revoked = read_member_ids(counts.no_consent_path)
        plans = []
        for d in c.destinations:
            dest = DESTINATIONS[d.platform](d.conn_id, d.ad_account_id)
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
            plans.append(plan_sync(dest, store, req, staged_rows(staged), revoked=revoked))
    ext = counts.as_dict()
    ext.pop("staged", None)
    ext.pop("no_consent_path", None)
    return {
        "campaign": stem,
        "dag_id": c.dag_id,
        "logical_date": when.isoformat(),
        "group": ext,
        "destinations": plans,
    }


def cmd_plan(args: argparse.Namespace) -> int:
    from audience_sync.operators.sync import format_plan

    result = plan_campaign(args.campaign, args.logical_date)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    g = result["group"]
    print(f"{result['dag_id']} plan as of {result['logical_date']} (nothing is sent)")
    print(
        f"  group: {g['rows']} rows, {g['valid']} valid, {g['invalid']} invalid {g['invalid_by_reason']}, "
        f"{g['duplicates']} duplicate keys, {g['excluded_no_consent']} excluded (no consent)"
    )
    for plan in result["destinations"]:
        print(
            "  "
            + format_plan({**plan, "invalid": g["invalid"], "excluded_no_consent": g["excluded_no_consent"]})
        )
    return 0


# ------------------------------------------------------------------------------ sandbox
def cmd_sandbox(args: argparse.Namespace) -> int:
    from audience_sync.sandbox.server import serve_forever

    token = args.token or os.environ.get("AUDIENCE_SYNC_SANDBOX_TOKEN") or "sandbox-token"
    serve_forever(args.host, args.port, args.state_file, token)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from audience_sync.demo import run_demo

    return run_demo(rows=args.rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="audience-sync", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="validate campaign files (default: the campaign folder)")
    v.add_argument("files", nargs="*")
    v.set_defaults(func=cmd_validate)

    h = sub.add_parser("hash", help="show how values are normalised and hashed for a platform")
    h.add_argument("--platform", required=True)
    h.add_argument("--field", required=True)
    h.add_argument("--country", default=None, help="region for national phone numbers, e.g. GB")
    h.add_argument("values", nargs="+")
    h.set_defaults(func=cmd_hash)

    r = sub.add_parser("run", help="run one campaign's DAG once through Airflow's dag.test()")
    r.add_argument("campaign", help="campaign file stem, e.g. demo_abandoned_cart")
    r.add_argument("--logical-date", default=None, help="YYYY-MM-DD (default: now)")
    r.set_defaults(func=cmd_run)

    pl = sub.add_parser("plan", help="print what the next run would send, without sending anything")
    pl.add_argument("campaign", help="campaign file stem")
    pl.add_argument("--logical-date", default=None, help="YYYY-MM-DD (default: now)")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    pl.set_defaults(func=cmd_plan)

    s = sub.add_parser("sandbox", help="serve the local platform sandbox until interrupted")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8990)
    s.add_argument("--state-file", default=None, help="keep audiences across restarts in this JSON file")
    s.add_argument(
        "--token", default=None, help="access token to accept (default $AUDIENCE_SYNC_SANDBOX_TOKEN)"
    )
    s.set_defaults(func=cmd_sandbox)

    d = sub.add_parser("demo", help="generate demo data, start the sandbox, run the demo campaign, summarise")
    d.add_argument("--rows", type=int, default=3000)
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
