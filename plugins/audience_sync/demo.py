"""The end-to-end demo: synthetic CRM -> Airflow DAG -> local Meta and Google (Data Manager, Ads API)
sandboxes and a local file drop, then a truthful summary."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from typing import Any

from audience_sync.core.campaign import project_root
from audience_sync.runner import format_run, run_campaign

DEMO_CAMPAIGN = "demo_abandoned_cart"
FILE_DROP = "file_drop"
#: Outside include/campaigns/, so a deployment that mounts that folder does not deploy the demo.
DEMO_CAMPAIGNS_DIR = project_root() / "include" / "demo" / "campaigns"


def run_demo(rows: int = 3000) -> int:
    """Generate the demo database, start the sandbox, run the demo campaign once, print the summary."""
    from audience_sync.demo_data import write_demo_db
    from audience_sync.sandbox import start_sandbox

    root = project_root()
    work = root / ".demo"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    crm = work / "crm.db"
    stats = write_demo_db(crm, n=rows)
    print(f"demo CRM: {crm.relative_to(root)} with {stats.get('rows', rows)} synthetic customers")

    token = secrets.token_urlsafe(24)  # a throwaway token shared by the sandbox and the connection only
    with start_sandbox(port=0, state_file=str(work / "sandbox_state.json"), access_token=token) as srv:
        print(
            f"sandbox: Meta Graph API on {srv.url}, Google Data Manager and Google Ads APIs on {srv.grpc_target}"
        )
        os.environ["AIRFLOW_HOME"] = str(work / "airflow")
        os.environ["AUDIENCE_SYNC_CAMPAIGNS_DIR"] = str(DEMO_CAMPAIGNS_DIR)
        os.environ["AIRFLOW_CONN_CRM_DB"] = json.dumps({"conn_type": "sqlite", "host": str(crm)})
        os.environ["AIRFLOW_CONN_META_DEFAULT"] = json.dumps(
            {"conn_type": "generic", "host": srv.url, "password": token}
        )
        # a loopback host: the hooks talk plaintext gRPC to the sandbox, with the token as the bearer
        for conn in ("GOOGLE_DATAMANAGER_DEFAULT", "GOOGLE_ADS_DEFAULT"):
            os.environ[f"AIRFLOW_CONN_{conn}"] = json.dumps(
                {"conn_type": "generic", "host": srv.grpc_target, "password": token}
            )
        drop = work / "file_drop"
        os.environ["AIRFLOW_CONN_FILE_DROP_DEFAULT"] = json.dumps(
            {"conn_type": "generic", "extra": {"base_url": drop.as_uri()}}
        )
        print(f"file drop: {drop.relative_to(root)}")
        result = run_campaign(DEMO_CAMPAIGN)
        print()
        print(format_run(result))
        print()
        print(summary(result, srv))
    print("sandbox stopped")
    return 0 if result["state"] == "success" else 1


def summary(result: dict, srv: Any) -> str:
    """Per-destination table from the sync and wait results (ledger counts) and the sandbox's own
    audience size."""
    ext = result["xcom"].get("extract") or {}
    lines = [
        "platform            account          audience id          group   sent  pending  failed  invalid  "
        "excluded  size"
    ]
    for task, x in sorted(result["xcom"].items()):
        if not task.startswith("sync_") or not isinstance(x, dict):
            continue
        platform = str(x.get("platform") or task.removeprefix("sync_"))
        # the wait task's counts are the final ones (members stay in progress until processed)
        x = {**x, **(result["xcom"].get("wait_" + task.removeprefix("sync_")) or {})}
        size = audience_size(srv, platform, x["account"], x["audience_id"])
        lines.append(
            f"{platform:<19} {x['account']:<16} {x['audience_id']:<20} {x['total']:>5} "
            f"{x['sent']:>6} {x['pending']:>8} {x['failed']:>7} {ext.get('invalid', 0):>8} "
            f"{x.get('excluded', 0):>9} {size:>5}"
        )
    lines.append(
        "group = valid, consenting members of the audience group; excluded = no consent or in an excluded "
        "segment; size = members the sandbox audience holds (real platforms report bucketed, delayed sizes), "
        "or the file drop's members file holds, read back."
    )
    return "\n".join(lines)


def audience_size(srv: Any, platform: str, account: str, audience_id: str) -> str:
    """How many members the audience holds: the sandbox's own count, or the rows of the file drop's
    membership file (``file_drop_default``), read back; ``?`` when neither says."""
    if platform == FILE_DROP:
        from audience_sync.hooks.file_drop import FileDropHook

        members = FileDropHook().get_destination(account).current_members(audience_id)
        return "?" if members is None else str(len(members))
    try:
        return str(len(srv.app(platform).members(audience_id)))
    except KeyError:  # no sandbox app for the platform, or no such audience there
        return "?"


if __name__ == "__main__":
    sys.exit(run_demo())
