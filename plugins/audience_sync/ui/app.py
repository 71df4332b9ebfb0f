"""The Ads Audiences web app, mounted by the api-server under ``/ads-audiences`` (``ui/plugin.py``).

- ``GET /``: every campaign's page; ``GET /campaign/{dag_id}``: one campaign's (the DAG's tab);
- ``GET /api/progress[?campaign=<stem or DAG id>]``: the same data as JSON (``status.Progress.as_json``,
  what ``audience-sync status --json`` prints).

Every route needs an Airflow user (``GetUserDep``: the UI's ``_token`` cookie or a Bearer token); an
anonymous request gets 401. A user sees the campaigns whose DAG the auth manager lets them read.
The page draws itself in the browser from the JSON endpoint and polls it every few seconds.
"""

from __future__ import annotations

import html
import json
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import urlencode

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse

from audience_sync.status import UnknownCampaign, read_progress

#: how often the page asks the endpoint again
REFRESH_SECONDS = 3


@cache
def _template() -> str:
    return resources.files("audience_sync.ui").joinpath("page.html").read_text(encoding="utf-8")


def render_page(api_url: str, title: str) -> str:
    """The page, pointed at its endpoint (the page fetches and draws the data itself)."""
    settings = {"api": api_url, "refreshSeconds": REFRESH_SECONDS}
    return (
        _template()
        .replace("__TITLE__", html.escape(title))
        # JSON in a <script>: "</" must not end the script early
        .replace("__SETTINGS__", json.dumps(settings).replace("</", "<\\/"))
    )


def create_app() -> FastAPI:
    app = FastAPI(title="Ads Audiences", description=__doc__, docs_url=None, redoc_url=None)

    def visible(user: Any, campaign: str | None) -> dict[str, Any]:
        try:
            progress = read_progress(campaign)
        except UnknownCampaign as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None
        doc = progress.as_json()
        manager = get_auth_manager()
        doc["campaigns"] = [
            c
            for c in doc["campaigns"]
            if manager.is_authorized_dag(method="GET", user=user, details=DagDetails(id=c["dag_id"]))
        ]
        if campaign is not None and not doc["campaigns"]:
            raise HTTPException(status_code=403, detail=f"not allowed to read the DAG of campaign {campaign}")
        return doc

    def api_url(request: Request, campaign: str | None = None) -> str:
        # the app is mounted under the api-server (and maybe a proxy's prefix): its root path says where;
        # url_for would look in the api-server's routes
        url = f"{request.scope.get('root_path', '')}/api/progress"
        return f"{url}?{urlencode({'campaign': campaign})}" if campaign else url

    @app.get("/api/progress")
    def progress(user: GetUserDep, campaign: str | None = None) -> dict[str, Any]:
        """Every campaign's progress per destination (or one campaign's), as the page shows it."""
        return visible(user, campaign)

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, user: GetUserDep) -> str:
        return render_page(api_url(request), "Ads Audiences")

    @app.get("/campaign/{dag_id}", response_class=HTMLResponse)
    def campaign(request: Request, dag_id: str, user: GetUserDep) -> str:
        # a DAG that is no campaign gets the page too (the tab is on every DAG): it shows the endpoint's 404
        return render_page(api_url(request, dag_id), f"Ads Audience · {dag_id}")

    return app
