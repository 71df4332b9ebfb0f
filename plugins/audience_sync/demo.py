"""The end-to-end demo: synthetic CRM -> Airflow DAG -> local Meta sandbox, then a truthful summary."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys

from audience_sync.core.campaign import project_root
from audience_sync.runner import format_run, run_campaign

DEMO_CAMPAIGN = "demo_abandoned_cart"
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
        print(f"sandbox: Meta Graph API on {srv.url}")
        os.environ["AIRFLOW_HOME"] = str(work / "airflow")
        os.environ["AUDIENCE_SYNC_CAMPAIGNS_DIR"] = str(DEMO_CAMPAIGNS_DIR)
        os.environ["AIRFLOW_CONN_CRM_DB"] = json.dumps({"conn_type": "sqlite", "host": str(crm)})
        os.environ["AIRFLOW_CONN_META_DEFAULT"] = json.dumps(
            {"conn_type": "generic", "host": srv.url, "password": token}
        )
        result = run_campaign(DEMO_CAMPAIGN)
        print()
        print(format_run(result))
        print()
        print(summary(result, srv))
    print("sandbox stopped")
    return 0 if result["state"] == "success" else 1


def summary(result: dict, srv: object) -> str:
    """Per-platform table from the sync results (ledger counts) and the sandbox's own audience size."""
    ext = result["xcom"].get("extract") or {}
    lines = [
        "platform  account          audience id        group   sent  pending  failed  invalid  excluded  size"
    ]
    for task, x in sorted(result["xcom"].items()):
        if not task.startswith("sync_") or not isinstance(x, dict):
            continue
        platform = str(x.get("platform") or task.removeprefix("sync_"))
        size = "?"
        app = getattr(srv, platform, None)  # the sandbox's app of that platform, when it serves one
        for a in app.audiences() if app is not None else ():
            if str(a.get("id")) == str(x["audience_id"]):
                size = str(a.get("count", a.get("member_count", "?")))
        lines.append(
            f"{platform:<9} {x['account']:<16} {x['audience_id']:<18} {x['total']:>5} "
            f"{x['sent']:>6} {x['pending']:>8} {x['failed']:>7} {ext.get('invalid', 0):>8} "
            f"{x.get('excluded', 0):>9} {size:>5}"
        )
    lines.append(
        "group = valid, consenting members of the audience group; excluded = no consent or in an excluded "
        "segment; size = members the sandbox audience holds (real Meta reports a bucketed, delayed estimate)."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_demo())
