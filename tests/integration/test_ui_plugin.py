"""The Ads Audiences plugin as Airflow finds it in the project's plugins folder: one plugin, from
``plugins/ads_audiences_plugin.py``, without importing the package's modules under bare file names (the
folder's ``.airflowignore``) and without building the web app (every task process loads plugins)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
from airflow import plugins_manager
plugins, errors = plugins_manager._get_plugins()
package = sys.argv[1]
print(json.dumps({
    "plugins": [[p.name, str(p.source)] for p in plugins],
    "errors": errors,
    "app_built": "audience_sync.ui.app" in sys.modules,
    "bare": sorted(n for n, m in list(sys.modules.items())
                   if (getattr(m, "__file__", "") or "").startswith(package) and not n.startswith("audience_sync")),
}))
"""


@pytest.mark.timeout(120)
def test_airflow_loads_one_plugin_from_the_plugins_folder_and_builds_no_app() -> None:
    env = {**os.environ, "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(ROOT / "plugins" / "audience_sync")],
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=True,
    ).stdout
    found = json.loads(out.strip().splitlines()[-1])
    assert found["errors"] == {}
    assert found["plugins"] == [["audience_sync", "$PLUGINS_FOLDER/ads_audiences_plugin.py"]]
    assert found["bare"] == []  # no module of the package imported as a plugin file
    assert found["app_built"] is False  # FastAPI app built by the api-server on its first request only


def test_the_plugin_declares_the_page_its_dag_tab_and_the_app() -> None:
    from audience_sync.ui.plugin import AdsAudiencesPlugin, LazyApp

    (app,) = AdsAudiencesPlugin.fastapi_apps
    assert app["url_prefix"] == "/ads-audiences" and isinstance(app["app"], LazyApp)
    views = {v["destination"]: v for v in AdsAudiencesPlugin.external_views}
    assert views["nav"]["href"] == "/ads-audiences/" and views["nav"]["url_route"] == "ads-audiences"
    assert views["dag"]["href"] == "/ads-audiences/campaign/{DAG_ID}"  # the UI fills in the DAG id
