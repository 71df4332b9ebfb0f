"""Airflow hook for Meta custom audiences."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException

from audience_sync.destinations.meta import (
    DEFAULT_API_VERSION,
    DEFAULT_GRAPH_URL,
    MetaDestination,
    make_meta_api,
)


class MetaAudienceHook(BaseHook):
    """Builds the facebook-business client from an Airflow connection (default ``meta_default``).

    The connection may have any conn_type (env variable, secrets backend or UI):

    - ``password``: the access token (a system-user token with ``ads_management``). Required.
    - ``host``: optional Graph base URL; may carry scheme and port, e.g. ``http://127.0.0.1:8990`` for the
      local sandbox. A host without scheme gets ``https://``; a separate ``port`` field is appended.
      Default ``https://graph.facebook.com``.
    - extras (JSON):

      .. code-block:: json

          {"api_version": "v26.0", "app_secret": "<optional; adds appsecret_proof>", "timeout": 60}

    ``FacebookAdsApi.init()`` is never called: it would install a crash reporter that posts
    tracebacks to Meta, and a process-wide default API.
    """

    conn_name_attr = "meta_conn_id"
    default_conn_name = "meta_default"
    conn_type = "generic"
    hook_name = "Meta Custom Audiences (audience-sync)"

    def __init__(self, meta_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.meta_conn_id = meta_conn_id

    @cached_property
    def settings(self) -> dict[str, Any]:
        conn = self.get_connection(self.meta_conn_id)
        token = conn.password
        if not token:
            raise AirflowException(
                f"Airflow connection '{self.meta_conn_id}' has no password: put the Meta access token there."
            )
        extras = conn.extra_dejson or {}
        unknown = set(extras) - {"api_version", "app_secret", "timeout"}
        if unknown:
            raise AirflowException(
                f"Airflow connection '{self.meta_conn_id}' has unknown extras {sorted(unknown)}; "
                "allowed: api_version, app_secret, timeout."
            )
        return {
            "access_token": token,
            "graph_url": graph_url(conn.host, conn.port),
            "api_version": extras.get("api_version") or DEFAULT_API_VERSION,
            "app_secret": extras.get("app_secret") or None,
            "timeout": float(extras.get("timeout") or 60),
        }

    def get_conn(self) -> Any:
        s = self.settings
        return make_meta_api(
            s["access_token"],
            app_secret=s["app_secret"],
            graph_url=s["graph_url"],
            api_version=s["api_version"],
            timeout=s["timeout"],
        )

    def get_destination(self, ad_account_id: str) -> MetaDestination:
        """The destination for one ad account (``act_`` prefix optional)."""
        return MetaDestination(self.get_conn(), ad_account_id, conn_label=self.meta_conn_id)


def meta_destination(conn_id: str, account: str) -> MetaDestination:
    """The destination factory Meta's registration names (``audience_sync.platforms.meta``)."""
    return MetaAudienceHook(conn_id).get_destination(account)


def graph_url(host: str | None, port: int | None) -> str:
    """Connection host/port -> Graph base URL."""
    if not host:
        return DEFAULT_GRAPH_URL
    url = host.strip().rstrip("/")
    if "://" not in url:
        url = f"https://{url}"
    scheme, rest = url.split("://", 1)
    if port and ":" not in rest.split("/", 1)[0]:
        head, _, tail = rest.partition("/")
        rest = f"{head}:{port}" + (f"/{tail}" if tail else "")
    return f"{scheme}://{rest}"
