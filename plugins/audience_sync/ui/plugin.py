"""The Airflow plugin that adds the Ads Audiences page (``plugins/ads_audiences_plugin.py`` exposes it to
Airflow's plugins folder).

Every Airflow process loads plugins, task processes too (for macros), so this module stays light: the
FastAPI app is built on its first request, in the api-server only (:class:`LazyApp`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from airflow.sdk.plugins_manager import AirflowPlugin

from audience_sync.ui import URL_PREFIX

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


class LazyApp:
    """An ASGI app that builds the real one (``ui/app.py``, which imports FastAPI and Airflow's API
    security) when the first request arrives."""

    def __init__(self) -> None:
        self._app: Callable[..., Awaitable[None]] | None = None

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if self._app is None:
            from audience_sync.ui.app import create_app

            self._app = create_app()
        await self._app(scope, receive, send)


class AdsAudiencesPlugin(AirflowPlugin):
    """The page in the navigation, a tab on every DAG (the campaign's own view) and the app behind both."""

    name = "audience_sync"
    fastapi_apps = [{"app": LazyApp(), "url_prefix": URL_PREFIX, "name": "Ads Audiences"}]
    external_views = [
        {
            "name": "Ads Audiences",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "category": "browse",
            "url_route": "ads-audiences",
        },
        {
            "name": "Ads Audience",
            "href": f"{URL_PREFIX}/campaign/{{DAG_ID}}",
            "destination": "dag",
            "url_route": "ads-audience",
        },
    ]
