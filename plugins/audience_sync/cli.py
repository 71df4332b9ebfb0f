"""``audience-sync`` command line: validate, hash, run, plan, version, approval, status, sandbox, demo."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from audience_sync.core.campaign import Campaign


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
        _print_approval(c)
    if bad:
        print(f"{bad} of {len(files)} campaign file(s) invalid", file=sys.stderr)
    return 1 if bad else 0


def _print_approval(c: Campaign) -> None:
    """A file's ``approval:`` block for another version is no error, but it does not apply: say so."""
    from audience_sync.approval_status import file_approval_line
    from audience_sync.core.approval import campaign_version

    if c.approval is not None:
        print(f"        approval: {file_approval_line(c, campaign_version(c))}")


# ------------------------------------------------------------------------------ version, status
def cmd_version(args: argparse.Namespace) -> int:
    from audience_sync.approval_status import find_campaign
    from audience_sync.core.approval import campaign_version

    print(campaign_version(find_campaign(args.campaign)))
    return 0


def cmd_approval(args: argparse.Namespace) -> int:
    from audience_sync.approval_status import campaign_status, find_campaign
    from audience_sync.runner import prepare_airflow_env

    c = find_campaign(args.campaign)
    prepare_airflow_env()  # the state database's connection is an Airflow connection
    print(campaign_status(c))
    return 0


def _shown(path: Path) -> str:
    from audience_sync.core.campaign import project_root

    try:
        return str(path.resolve().relative_to(project_root()))
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
def cmd_run(args: argparse.Namespace) -> int:
    from audience_sync.runner import format_run, run_campaign

    result = run_campaign(args.campaign, args.logical_date)
    print(format_run(result))
    return 0 if result["state"] == "success" else 1


# --------------------------------------------------------------------------------- plan
def cmd_plan(args: argparse.Namespace) -> int:
    # With --json, stdout carries the JSON alone: whatever logs while planning (Airflow binds its log
    # handlers to the stdout of the moment it is imported) goes to stderr.
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        from audience_sync.core.sync import format_plan
        from audience_sync.runner import plan_campaign

        result = plan_campaign(args.campaign, args.logical_date)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    g = result["group"]
    interval = result["data_interval"]
    dates = f"data interval {interval[0]} to {interval[1]}" if interval else "a list group"
    print(f"{result['dag_id']} plan as of {result['logical_date']} ({dates}; nothing is sent)")
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


# ------------------------------------------------------------------------------- status
def cmd_status(args: argparse.Namespace) -> int:
    # as for plan: with --json, stdout carries the JSON alone
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        from audience_sync.core.progress import format_progress
        from audience_sync.runner import prepare_airflow_env
        from audience_sync.status import UnknownCampaign, read_progress

        prepare_airflow_env()
        try:
            progress = read_progress(args.campaign)
        except UnknownCampaign as exc:
            print(exc, file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(progress.as_json(), indent=2))
        return 0
    print(format_progress(progress.campaigns) or "no valid campaign files")
    for path in progress.broken:
        print(f"broken campaign file {path} (audience-sync validate says why)")
    return 0


# ------------------------------------------------------------------------------ sandbox
def cmd_sandbox(args: argparse.Namespace) -> int:
    from audience_sync.core.settings import settings
    from audience_sync.sandbox.server import serve_forever

    token = args.token or settings().sandbox_token
    serve_forever(args.host, args.port, args.state_file, token)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from audience_sync.demo import run_demo

    return run_demo(rows=args.rows) if args.rows else run_demo()


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

    ve = sub.add_parser("version", help="print a campaign's version (what an approval approves)")
    ve.add_argument("campaign", help="campaign file stem, or the path of a campaign file")
    ve.set_defaults(func=cmd_version)

    ap = sub.add_parser(
        "approval", help="a campaign's version, whether it is approved, its decisions and its last run"
    )
    ap.add_argument("campaign", help="campaign file stem, or the path of a campaign file")
    ap.set_defaults(func=cmd_approval)

    st = sub.add_parser(
        "status", help="print each campaign's progress per destination (the Ads Audiences page)"
    )
    st.add_argument("campaign", nargs="?", default=None, help="campaign file stem (default: every campaign)")
    st.add_argument("--json", action="store_true", help="print the progress as JSON (the page's endpoint)")
    st.set_defaults(func=cmd_status)

    s = sub.add_parser("sandbox", help="serve the local platform sandbox until interrupted")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8990)
    s.add_argument("--state-file", default=None, help="keep audiences across restarts in this JSON file")
    s.add_argument(
        "--token", default=None, help="access token to accept (default $AUDIENCE_SYNC_SANDBOX_TOKEN)"
    )
    s.set_defaults(func=cmd_sandbox)

    d = sub.add_parser("demo", help="generate demo data, start the sandbox, run the demo campaign, summarise")
    d.add_argument("--rows", type=int, default=None, help="customers in the demo CRM (default 5000)")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    # gRPC's core logs connection events (e.g. a GOAWAY when the demo stops its sandbox) at INFO on
    # stderr; the command prints what matters itself. Set before anything imports grpc.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
