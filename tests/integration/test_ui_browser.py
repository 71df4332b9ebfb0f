"""The Ads Audiences page as a person sees it: Debian's Chromium, driven by playwright, logs into a real
Airflow api-server started by the test (its own process group, stopped however the test ends), watches a
sandbox sync of the demo campaign while Meta is still processing it and again once the run completed, and
checks every number against the ledger, the metrics table, the sync and wait tasks' XCom, the JSON endpoint
and ``audience-sync status --json``. Screenshots are kept under ``tmp/artifacts/ui/`` (the path is printed).

The run itself goes through ``dag.test()`` in this process; the api-server only serves the page, reading
the same state database and campaign folder.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pendulum
import pytest
import requests
import sqlalchemy as sa
import yaml

from audience_sync import cli
from audience_sync.core.ledger import StateStore, utcnow
from audience_sync.demo_data import write_demo_db
from tests.airflow_procs import AirflowStack

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "include" / "demo" / "campaigns" / "demo_abandoned_cart.yaml"
STEM = "ui_progress"
DAG_ID = f"ads_audience__{STEM}"
META = "meta:act_1234567890"
ARTIFACTS = ROOT / "tmp" / "artifacts" / "ui"
CHROMIUM = Path("/usr/bin/chromium")
#: as root, in a closed network: no sandbox, and none of Chromium's own background connections
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
USER, PASSWORD = "operator", "pw-" + secrets.token_hex(8)
#: seconds Meta's sandbox takes to process the upload: the page is watched meanwhile
META_PROCESSING_SECONDS = 25
BAR = ("sent", "in_progress", "pending", "failed")
SHOWN = (*BAR, "removed", "total", "invalid", "excluded")


@dataclass
class Setup:
    state_url: str
    server_env: dict[str, str]
    home: Path


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, drop: Path) -> Setup:
    """The demo campaign as ``ui_progress`` (Meta asked every second), a CRM, a state database, and the
    api-server's environment: the same campaigns and state, a viewer who must log in."""
    folder = tmp_path / "campaigns"
    folder.mkdir()
    data = yaml.safe_load(DEMO.read_text())
    data.update(processing_poke_seconds=1, processing_timeout_minutes=3, segment_name="ui_progress_users")
    (folder / f"{STEM}.yaml").write_text(yaml.safe_dump(data))
    crm = tmp_path / "crm.db"
    write_demo_db(crm, n=5000, seed=11)  # TikTok needs 1,000 e-mails and 1,000 phones
    state = tmp_path / "state.db"
    state_conn = json.dumps({"conn_type": "sqlite", "host": str(state)})
    monkeypatch.setenv("AUDIENCE_SYNC_CAMPAIGNS_DIR", str(folder))
    monkeypatch.setenv("AIRFLOW_CONN_CRM_DB", json.dumps({"conn_type": "sqlite", "host": str(crm)}))
    monkeypatch.setenv("AIRFLOW_CONN_AUDIENCE_SYNC_DB", state_conn)
    home = tmp_path / "airflow-home"
    home.mkdir()
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({USER: PASSWORD}))
    server_env = {
        "AUDIENCE_SYNC_CAMPAIGNS_DIR": str(folder),
        "AIRFLOW_CONN_AUDIENCE_SYNC_DB": state_conn,
        # Airflow's own login: a viewer, no all-admins shortcut
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
    }
    return Setup(f"sqlite:///{state}", server_env, home)


@pytest.fixture
def artifacts() -> Iterator[Path]:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    print(f"\nUI screenshots: {ARTIFACTS}")
    yield ARTIFACTS
    print(f"\nUI screenshots: {sorted(p.name for p in ARTIFACTS.iterdir())} in {ARTIFACTS}")


def read_page(page: Any) -> dict[str, dict[str, str]]:
    """Every destination's shown values (``data-k`` elements), by destination."""
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll("[data-destination]")].map((d) => [
             d.dataset.destination,
             Object.fromEntries([...d.querySelectorAll("[data-k]")].map((e) => [e.dataset.k, e.textContent]))]))"""
    )


def number(text: str) -> int | None:
    return None if text == "\u2014" else int(text.replace(",", ""))


def counts(shown: dict[str, str]) -> dict[str, int | None]:
    return {k: number(shown[k]) for k in SHOWN}


@dataclass(eq=False)  # a thread must stay hashable
class Watcher(threading.Thread):
    """The person at the browser, in a thread of its own while ``dag.test()`` runs in the main thread:
    logs in, opens the page, waits to see Meta processing, then, once told the run is over, for the
    page's next refresh."""

    url: str
    state_url: str
    out: Path
    ready: threading.Event = field(default_factory=threading.Event)
    run_over: threading.Event = field(default_factory=threading.Event)
    seen: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        threading.Thread.__init__(self, name="ui-watcher", daemon=True)

    def run(self) -> None:
        from playwright.sync_api import sync_playwright

        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(
                    executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, timeout=60_000
                )
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                try:
                    self.watch(page)
                except BaseException:
                    page.screenshot(path=str(self.out / "failed.png"), full_page=True)  # what it saw
                    raise
                finally:
                    browser.close()
        except BaseException as exc:  # handed to the main thread
            self.error = exc
        finally:
            self.ready.set()

    def watch(self, page: Any) -> None:
        page.set_default_timeout(30_000)
        # an anonymous browser gets no page
        response = page.goto(f"{self.url}/ads-audiences/")
        assert response is not None and response.status == 401
        # Airflow's login page, as a person fills it in
        page.goto(f"{self.url}/auth/login")
        page.get_by_label("Username").fill(USER)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(lambda u: "/auth/login" not in u)
        page.goto(f"{self.url}/ads-audiences/campaign/{DAG_ID}")
        page.wait_for_selector(f'[data-destination="{META}"]')
        self.seen["before"] = read_page(page)
        page.screenshot(path=str(self.out / "1-before-the-run.png"), full_page=True)
        self.ready.set()

        # while the run is on: Meta holds the members who joined in progress until its sandbox processed them
        page.wait_for_function(
            f"""() => {{
                const d = document.querySelector('[data-destination="{META}"]');
                return d && d.querySelector('[data-k=in_progress]').textContent !== "0";
            }}""",
            timeout=180_000,
            polling=200,
        )
        shown = read_page(page)
        entry = StateStore(self.state_url).get_registry("meta", "act_1234567890", "ui_progress_users")
        assert entry is not None
        self.seen["during"] = shown
        self.seen["during_ledger"] = StateStore(self.state_url).ledger_counts(entry.id)
        self.seen["during_syncing"] = page.locator(f'[data-destination="{META}"] .badge.syncing').count()
        page.screenshot(path=str(self.out / "2-while-meta-processes.png"), full_page=True)

        # once the run is over: the page's next refresh shows its numbers
        if not self.run_over.wait(timeout=300):
            raise TimeoutError("the run did not end within 300 s")
        over = utcnow().isoformat()
        page.wait_for_function(
            f"() => (document.body.dataset.generatedAt || '') > '{over}'", timeout=30_000, polling=200
        )
        self.seen["after"] = read_page(page)
        page.screenshot(path=str(self.out / "3-after-the-run.png"), full_page=True)
        # the page inside Airflow's UI: the navigation's entry, and the DAG's tab
        page.goto(f"{self.url}/plugin/ads-audiences")
        page.frame_locator("iframe").locator(f'[data-destination="{META}"]').wait_for(timeout=60_000)
        page.screenshot(path=str(self.out / "4-in-the-airflow-ui.png"))
        page.goto(f"{self.url}/dags/{DAG_ID}/plugin/ads-audience")
        page.frame_locator("iframe").locator(f'[data-campaign="{DAG_ID}"]').wait_for(timeout=60_000)
        page.screenshot(path=str(self.out / "5-the-dags-tab.png"))


def xcoms(run_id: str) -> dict[str, Any]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as s:
        rows = s.query(XComModel).filter_by(dag_id=DAG_ID, run_id=run_id, key="return_value").all()
        return {r.task_id: r.value for r in rows}


@pytest.mark.timeout(600)
def test_the_page_shows_a_sync_live_and_then_exactly_the_runs_numbers(
    airflow_db, fresh_sandbox, setup: Setup, artifacts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert CHROMIUM.exists(), "Debian's chromium is missing: apt-get install chromium (.ci/run does)"
    from airflow.dag_processing.dagbag import DagBag

    with AirflowStack(setup.home, setup.server_env, scheduler=False) as stack:
        # anonymous requests are refused: the page, one campaign's view, the endpoint
        for path in ("/ads-audiences/", f"/ads-audiences/campaign/{DAG_ID}", "/ads-audiences/api/progress"):
            assert requests.get(stack.url + path, timeout=30).status_code == 401, path
        token = requests.post(
            f"{stack.url}/auth/token", json={"username": USER, "password": PASSWORD}, timeout=30
        ).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        unknown = requests.get(
            f"{stack.url}/ads-audiences/api/progress?campaign=nope", headers=auth, timeout=30
        )
        assert unknown.status_code == 404 and "nope" in unknown.json()["detail"]
        # the plugin's views: in the navigation, and a tab on the campaign's DAG
        plugins = requests.get(f"{stack.url}/api/v2/plugins", headers=auth, timeout=30).json()["plugins"]
        (plugin,) = [p for p in plugins if p["name"] == "audience_sync"]
        assert {(v["destination"], v["href"]) for v in plugin["external_views"]} == {
            ("nav", "/ads-audiences/"),
            ("dag", "/ads-audiences/campaign/{DAG_ID}"),
        }

        # a first run, weeks earlier: a smaller group (the CRM's carts were abandoned over months)
        dag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).dags[DAG_ID]
        assert f"(/ads-audiences/campaign/{DAG_ID})" in dag.doc_md  # the DAG's docs link to its view
        first = dag.test(logical_date=pendulum.datetime(2026, 11, 5, tz="UTC"))
        assert first.state == "success"

        watcher = Watcher(stack.url, setup.state_url, artifacts)
        watcher.start()
        assert watcher.ready.wait(timeout=180)
        if watcher.error:
            raise watcher.error
        fresh_sandbox.meta.processing_seconds = META_PROCESSING_SECONDS
        try:
            run = dag.test(logical_date=pendulum.datetime(2026, 12, 1, tz="UTC"))
        finally:
            fresh_sandbox.meta.processing_seconds = 0
            watcher.run_over.set()
        watcher.join(timeout=240)
        assert not watcher.is_alive(), "the browser did not finish"
        if watcher.error:
            raise watcher.error
        assert run.state == "success"
        page_json = requests.get(
            f"{stack.url}/ads-audiences/api/progress", params={"campaign": STEM}, headers=auth, timeout=30
        ).json()

    seen = watcher.seen
    x = xcoms(run.run_id)
    store = StateStore(sa.make_url(setup.state_url))
    rows = {m["destination"]: m for m in store.read_metrics(DAG_ID, run.run_id)}
    group = x["extract"]["valid"]

    # before the run: the first run's numbers, as its metrics rows hold them
    earlier = {m["destination"]: m for m in store.read_metrics(DAG_ID, first.run_id)}
    assert set(seen["before"]) == set(earlier) == set(rows) and len(rows) == 5
    for key, shown in seen["before"].items():
        assert counts(shown) == {k: earlier[key][k] for k in SHOWN}, key

    # while Meta processed: the members the first run sent are sent, the new ones in progress, as the
    # ledger and the sync task said
    during = counts(seen["during"][META])
    joined = x["sync_meta"]["run"]["added"]
    assert 0 < joined < group and during["in_progress"] == joined == x["sync_meta"]["in_progress"]
    assert during["sent"] == x["sync_meta"]["sent"] == earlier[META]["sent"] and seen["during_syncing"] == 1
    assert {k: during[k] for k in BAR} == {k: seen["during_ledger"][k] for k in BAR}

    # after the run: every destination's numbers are its metrics row's, its tasks' XCom's and the ledger's
    campaign_json = page_json["campaigns"][0]
    for d in campaign_json["destinations"]:
        key, platform = d["destination"], d["platform"]
        shown = counts(seen["after"][key])
        row = rows[key]
        assert shown == {k: row[k] for k in SHOWN}, key
        assert shown == {k: d["counts"][k] for k in SHOWN}, key  # the page shows what the endpoint serves
        entry = store.get_registry(platform, d["account"], "ui_progress_users")
        assert entry is not None
        ledger_counts = store.ledger_counts(entry.id)
        assert {k: shown[k] for k in (*BAR, "removed")} == {k: ledger_counts[k] for k in (*BAR, "removed")}
        sync, wait = x[f"sync_{platform}"], x[f"wait_{platform}"]
        assert {k: shown[k] for k in ("total", "invalid", "excluded")} == {
            k: sync[k] for k in ("total", "invalid", "excluded")
        }
        assert {k: shown[k] for k in BAR} == {k: wait[k] for k in BAR}
        # the size the platform reported after the run, recorded in the metrics
        assert wait["audience_size"] == row["audience_size"] == number(seen["after"][key]["audience_size"])
        assert seen["after"][key]["audience_id"] == row["audience_id"] == sync["audience_id"]
    meta = counts(seen["after"][META])
    assert meta["sent"] == group and meta["in_progress"] == 0
    assert rows[META]["audience_size"] == group  # the Meta sandbox counts exactly
    assert rows["google_ads:1234567890"]["match_rate"] == 100  # Google Ads reports a match rate

    # the terminal prints the same document
    capsys.readouterr()
    assert cli.main(["status", STEM, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [d["counts"] for d in printed["campaigns"][0]["destinations"]] == [
        d["counts"] for d in campaign_json["destinations"]
    ]
    assert cli.main(["status", STEM]) == 0
    text = capsys.readouterr().out
    assert f"{META} audience {rows[META]['audience_id']}: total {group}, sent {group}, in progress 0," in text
    assert f"platform size {group}; delivery on time" in text
    assert campaign_json["last_run"]["run_id"] == run.run_id
    # the trend: both runs, the platform's size after each
    meta_json = campaign_json["destinations"][0]
    assert [(h["run_id"], h["sent"], h["audience_size"]) for h in meta_json["history"]] == [
        (first.run_id, earlier[META]["sent"], earlier[META]["audience_size"]),
        (run.run_id, group, group),
    ]
    assert {p.name for p in artifacts.iterdir()} == {
        "1-before-the-run.png",
        "2-while-meta-processes.png",
        "3-after-the-run.png",
        "4-in-the-airflow-ui.png",
        "5-the-dags-tab.png",
    }
    assert dt.datetime.fromisoformat(campaign_json["next_run"]) > utcnow()
