"""One registration is enough: a throwaway platform registered in one place (``tests/fixtures/metaclone.py``)
is validated in campaign files, gets its DAG tasks, is planned with its own warnings and runs the
destination contract suite."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from audience_sync.core.campaign import load_campaign
from audience_sync.core.errors import CampaignError, CampaignErrors
from audience_sync.core.platforms import Platform, get_platform, platforms
from audience_sync.platforms import BUILTINS
from tests.fixtures.metaclone import WARNING, MetaCloneCampaignDestination, registered

BUILTIN_NAMES = tuple(p.name for p in BUILTINS)

ROOT = Path(__file__).resolve().parents[2]
LIST_FILE = "tests/fixtures/campaigns/data/existing_list.csv"  # two customers


def campaign_text(destinations: str, segment: str = "clone_fans") -> str:
    return f"""\
campaign: Clone fans
duration: {{start: 2026-08-01}}
schedule: "@daily"
segment_name: {segment}
audience_group:
  list: {LIST_FILE}
  key: customer_id
  identifiers: {{email: email, phone: phone, country: country}}
destinations:
{textwrap.indent(textwrap.dedent(destinations), "  ")}"""


def write(folder: Path, text: str, name: str = "clone_fans.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(path: Path) -> list[CampaignError]:
    with pytest.raises(CampaignErrors) as info:
        load_campaign(path)
    return info.value.errors


@pytest.fixture
def metaclone() -> Iterator[Platform]:
    with registered() as spec:
        yield spec
    assert "metaclone" not in platforms()  # nothing leaks into other tests


# ---------------------------------------------------------------------------------------- validation
def test_a_campaign_file_may_name_the_registered_platform(metaclone: Platform, tmp_path: Path) -> None:
    path = write(tmp_path, campaign_text('- {platform: metaclone, clone_account: "mc-42"}\n'))
    (dest,) = load_campaign(path).destinations
    assert isinstance(dest, MetaCloneCampaignDestination)
    assert (dest.platform, dest.account, dest.conn_id) == ("metaclone", "mc-42", "metaclone_default")

    path = write(tmp_path, campaign_text("- {platform: metaclone, clone_account: 42, conn_id: other}\n"))
    (dest,) = load_campaign(path).destinations
    assert (dest.account, dest.conn_id) == ("mc-42", "other")


def test_a_bad_account_gets_the_platforms_own_error(metaclone: Platform, tmp_path: Path) -> None:
    path = write(tmp_path, campaign_text('- {platform: metaclone, clone_account: "act_42"}\n'))
    (error,) = errors_of(path)
    assert error.field == "destinations[0].clone_account"
    assert "'act_42' is not a metaclone account: expected mc-<digits>" in error.message
    assert 'clone_account: "mc-1234567890"' in error.fix

    path = write(tmp_path, campaign_text("- {platform: metaclone}\n"))
    (error,) = errors_of(path)
    assert (error.field, error.fix) == (
        "destinations[0].clone_account",
        "add 'clone_account: \"mc-1234567890\"'",
    )

    path = write(tmp_path, campaign_text('- {platform: metaclone, clone_acount: "mc-1"}\n'))
    fixes = {e.field: e.fix for e in errors_of(path)}
    assert "did you mean 'clone_account'?" in fixes["destinations[0].clone_acount"]


def test_duplicates_are_found_with_each_platforms_own_account_rule(
    metaclone: Platform, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        campaign_text(
            """\
            - {platform: metaclone, clone_account: "mc-42"}
            - {platform: metaclone, clone_account: 42}
            """
        ),
    )
    (error,) = errors_of(path)
    assert error.field == "destinations[1]" and "duplicates destinations[0]" in error.message

    # the same digits on Meta and on metaclone are two different accounts
    path = write(
        tmp_path,
        campaign_text(
            """\
            - {platform: meta, ad_account_id: "42"}
            - {platform: metaclone, clone_account: "42"}
            """
        ),
    )
    assert [d.identity() for d in load_campaign(path).destinations] == [
        ("meta", "act_42"),
        ("metaclone", "mc-42"),
    ]


def test_an_unknown_platform_lists_the_registered_one(metaclone: Platform, tmp_path: Path) -> None:
    path = write(tmp_path, campaign_text('- {platform: metaclon, clone_account: "mc-1"}\n'))
    (error,) = errors_of(path)
    assert error.field == "destinations[0].platform"
    assert "did you mean 'metaclone'?" in error.fix
    supported = f"supported platforms: {', '.join((*BUILTIN_NAMES, 'metaclone'))}"
    assert supported in error.fix
    with pytest.raises(ValueError, match=f"did you mean 'metaclone'.*{re.escape(supported)}"):
        get_platform("metaclon")


def test_without_the_registration_the_platform_is_unknown(tmp_path: Path) -> None:
    path = write(tmp_path, campaign_text('- {platform: metaclone, clone_account: "mc-42"}\n'))
    with registered():
        load_campaign(path)
    (error,) = errors_of(path)
    assert error.message.startswith("unsupported platform 'metaclone'")
    assert error.fix.endswith(f"supported platforms: {', '.join(BUILTIN_NAMES)}")


# ---------------------------------------------------------------------------------------- the DAG
def test_the_dag_gets_sync_and_wait_tasks_for_the_platform(metaclone: Platform, tmp_path: Path) -> None:
    from audience_sync.factory import build_dag

    path = write(
        tmp_path,
        campaign_text(
            """\
            - {platform: meta, ad_account_id: "42"}
            - {platform: metaclone, clone_account: "42"}
            """
        ),
    )
    dag = build_dag(load_campaign(path))
    assert {"sync_meta", "wait_meta", "sync_metaclone", "wait_metaclone"} <= set(dag.task_dict)
    sync = dag.get_task("sync_metaclone")
    wait = dag.get_task("wait_metaclone")
    assert (sync.platform, sync.account, sync.conn_id) == ("metaclone", "mc-42", "metaclone_default")  # type: ignore[attr-defined]
    assert (wait.platform, wait.account, wait.conn_id) == ("metaclone", "mc-42", "metaclone_default")  # type: ignore[attr-defined]
    assert wait.downstream_task_ids == {"record_metrics"}
    assert dag.get_task("extract").platforms == ["meta", "metaclone"]  # type: ignore[attr-defined]
    assert "metaclone" in dag.tags


# ---------------------------------------------------------------------------------------- the plan
def test_the_plan_covers_the_platform_with_its_own_warnings(
    metaclone: Platform, sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audience_sync.runner import plan_campaign
    from tests.conftest import SANDBOX_TOKEN

    suffix = str(10**11 + secrets.randbelow(10**11))  # accounts no other test uses
    # "health" is a name Meta may flag: Meta's plan warns about it, metaclone's does not
    write(
        tmp_path,
        campaign_text(
            f"""\
            - {{platform: meta, ad_account_id: "{suffix}"}}
            - {{platform: metaclone, clone_account: "9{suffix}"}}
            """,
            segment="health_clone_fans",
        ),
    )
    monkeypatch.setenv("AUDIENCE_SYNC_CAMPAIGNS_DIR", str(tmp_path))
    conn = json.dumps({"conn_type": "generic", "host": sandbox.url, "password": SANDBOX_TOKEN})
    monkeypatch.setenv("AIRFLOW_CONN_METACLONE_DEFAULT", conn)
    monkeypatch.setenv("AIRFLOW_CONN_META_DEFAULT", conn)
    state = json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "state.db")})
    monkeypatch.setenv("AIRFLOW_CONN_AUDIENCE_SYNC_DB", state)

    plan = plan_campaign("clone_fans", logical_date="2026-08-02")

    meta, clone = plan["destinations"]
    assert (meta["platform"], clone["platform"]) == ("meta", "metaclone")
    assert clone["group"] == clone["adds"] == 2
    assert clone["audience"] == {"id": None, "action": "would create"}
    assert clone["warnings"] == [
        "group of 2 is below MetaClone's useful minimum (~50 matched members); the audience may be too "
        "small to deliver",
        WARNING,
    ]
    assert any("below Meta's useful minimum (~100" in w for w in meta["warnings"])
    assert any("'health'" in w for w in meta["warnings"])
    assert WARNING not in meta["warnings"]
    assert sandbox.meta.audiences(f"act_{suffix}") == sandbox.meta.audiences(f"act_9{suffix}") == []


# ---------------------------------------------------------------------------------------- the contract
@pytest.mark.timeout(300)
def test_the_contract_suite_runs_against_the_registered_platform(tmp_path: Path) -> None:
    report = tmp_path / "contract.xml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    r = subprocess.run(
        [
            sys.executable, "-m", "pytest", "tests/contract", "-q", "-p", "no:cacheprovider",
            "-p", "tests.fixtures.metaclone_contract", "-k", "metaclone", f"--junitxml={report}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cases = ET.parse(report).getroot().iter("testcase")
    outcomes = {c.get("name", ""): [child.tag for child in c] for c in cases}
    ran = {name: tags for name, tags in outcomes.items() if "metaclone" in name}
    assert len(ran) > 50, sorted(outcomes)
    assert all(tags == [] for tags in ran.values()), {
        n: t for n, t in ran.items() if t
    }  # no failure, no skip
    assert "test_every_registered_platform_has_a_harness[metaclone]" in ran
    assert "test_the_harness_and_the_destination_agree_with_the_registration[metaclone]" in ran
