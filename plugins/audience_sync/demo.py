"""The end-to-end demo: synthetic CRM -> Airflow DAG -> local Meta, Google (Data Manager, Ads API) and
TikTok sandboxes and a local file drop, then a truthful summary."""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

from audience_sync.core.campaign import project_root
from audience_sync.runner import format_run, run_campaign

DEMO_CAMPAIGN = "demo_abandoned_cart"
FILE_DROP = "file_drop"
#: Outside include/campaigns/, so a deployment that mounts that folder does not deploy the demo.
DEMO_CAMPAIGNS_DIR = project_root() / "include" / "demo" / "campaigns"


#: customers in the demo CRM: enough that the consenting group holds 1,000 e-mails and 1,000 phones, so
#: TikTok (each of its audiences must keep 1,000 members) accepts the demo's audiences
DEMO_ROWS = 5000


def run_demo(rows: int = DEMO_ROWS) -> int:
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
            f"sandbox: Meta Graph and TikTok Business APIs on {srv.url}, Google Data Manager and Google Ads "
            f"APIs on {srv.grpc_target}"
        )
        os.environ["AIRFLOW_HOME"] = str(work / "airflow")
        # syncing is off until a deployment enables it: the demo does, for its own process only
        os.environ["AUDIENCE_SYNC_ENABLED"] = "1"
        campaigns, version = approved_copy(work)
        os.environ["AUDIENCE_SYNC_CAMPAIGNS_DIR"] = str(campaigns)
        print(
            f"approval: {(campaigns / (DEMO_CAMPAIGN + '.yaml')).relative_to(root)} approves campaign version "
            f"{version} (an approval block the demo wrote, as a code review would)"
        )
        os.environ["AIRFLOW_CONN_CRM_DB"] = json.dumps({"conn_type": "sqlite", "host": str(crm)})
        for conn in ("META_DEFAULT", "TIKTOK_DEFAULT"):  # both on the sandbox's HTTP port
            os.environ[f"AIRFLOW_CONN_{conn}"] = json.dumps(
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


def approved_copy(work: Path) -> tuple[Path, str]:
    """A copy of the demo campaign folder whose campaign file approves its current version, as a team
    approving by code review writes it, so the demo runs unattended; the folder and the version."""
    from audience_sync.core.approval import campaign_version
    from audience_sync.core.campaign import load_campaign

    folder = work / "campaigns"
    folder.mkdir()
    source = DEMO_CAMPAIGNS_DIR / f"{DEMO_CAMPAIGN}.yaml"
    version = campaign_version(load_campaign(source))
    now = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    block = (
        "\n# written by `make demo`: approves exactly this version of the campaign (audience-sync version)\n"
        f'approval: {{approved_by: make demo, approved_at: "{now}", version: "{version}"}}\n'
    )
    (folder / source.name).write_text(source.read_text(encoding="utf-8") + block, encoding="utf-8")
    return folder, version


def summary(result: dict, srv: Any) -> str:
    """Per-destination table from the sync and wait results (ledger counts) and the sandbox's own
    audience size; then what each platform refused, if anything."""
    ext = result["xcom"].get("extract") or {}
    header = (
        "platform",
        "account",
        "audience id",
        "group",
        "sent",
        "pending",
        "failed",
        "invalid",
        "excluded",
    )
    table: list[tuple[str, ...]] = [(*header, "size")]
    refused = []
    for task, x in sorted(result["xcom"].items()):
        if not task.startswith("sync_") or not isinstance(x, dict):
            continue
        platform = str(x.get("platform") or task.removeprefix("sync_"))
        # the wait task's counts are the final ones (members stay in progress until processed)
        x = {**x, **(result["xcom"].get("wait_" + task.removeprefix("sync_")) or {})}
        size = audience_size(srv, platform, x["account"], x["audience_id"])
        if x.get("refused"):
            notes = "; ".join(x.get("notes") or [])
            refused.append(f"{platform}: refused by the platform, {x['refused']}: {notes}")
        counts = (
            x["total"],
            x["sent"],
            x["pending"],
            x["failed"],
            ext.get("invalid", 0),
            x.get("excluded", 0),
        )
        table.append((platform, x["account"], x["audience_id"], *map(str, counts), size))
    widths = [max(len(row[i]) for row in table) for i in range(len(header) + 1)]
    lines = [
        "  ".join(
            cell.ljust(w) if i < 3 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in table
    ]
    lines.append(
        "group = valid, consenting members of the audience group; excluded = no consent or in an excluded "
        "segment; size = members the sandbox audience holds (real platforms report bucketed, delayed sizes; "
        "TikTok: the sizes of its e-mail/phone/MAID audiences), or the file drop's members file holds, read back."
    )
    return "\n".join(lines + refused)


def audience_size(srv: Any, platform: str, account: str, audience_id: str) -> str:
    """How many members the audience holds: the sandbox's own count, or the rows of the file drop's
    membership file (``file_drop_default``), read back; ``?`` when neither says."""
    if platform == FILE_DROP:
        from audience_sync.hooks.file_drop import FileDropHook

        members = FileDropHook().get_destination(account).current_members(audience_id)
        return "?" if members is None else str(len(members))
    try:
        return str(srv.app(platform).size_text(audience_id))
    except KeyError:  # no sandbox app for the platform, or no such audience there
        return "?"


if __name__ == "__main__":
    sys.exit(run_demo())
