"""Airflow hook for Meta custom audiences."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException

from audience_sync.destinations.meta import (
    DEFAULT_API_VERSION,
    DEFAULT_GRAPH_URL,
    DEFAULT_REMOVE_VIA,
    REMOVE_VIA,
    MetaDestination,
    make_meta_api,
)

#: extras a Meta connection may carry (documented on :class:`MetaAudienceHook`)
EXTRAS = ("api_version", "app_secret", "timeout", "remove_via")


class MetaAudienceHook(BaseHook):
    """Builds the facebook-business client from an Airflow connection (default ``meta_default``).

    The connection may have any conn_type (env variable, secrets backend or UI):

    - ``password``: the access token (a system-user token with ``ads_management``). Required.
    - ``host``: optional Graph base URL; may carry scheme and port, e.g. ``http://127.0.0.1:8990`` for the
      local sandbox. A host without scheme gets ``https://``; a separate ``port`` field is appended.
      Default ``https://graph.facebook.com``.
    - extras (JSON), all optional:

      .. code-block:: json

          {"api_version": "v26.0", "app_secret": "<adds appsecret_proof>", "timeout": 60,
           "remove_via": "delete"}

      ``remove_via`` is how removals reach ``/{audience_id}/users``:

      - ``delete`` (default): a DELETE with the payload in the URL, as the SDK sends it. Real front ends
        drop long URLs, so removals go in batches packed under a URL budget (~30 rows of a 5-key schema).
      - ``delete_body``: a DELETE with the payload in a multipart body, in batches of 10,000 rows. Meta's
        own Java Business SDK sends DELETEs this way since 2024, RudderStack its removals since 2026.
      - ``post_override``: a POST with ``method=delete`` (the Graph API's method override), in batches
        of 10,000. Nobody is known to remove audience members this way; if Meta ignored the override on
        this edge, the POST would *add* the rows. Try it on a test audience first.

      The README ("Removals on Meta") gives the evidence for each.

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
        unknown = set(extras) - set(EXTRAS)
        if unknown:
            raise AirflowException(
                f"Airflow connection '{self.meta_conn_id}' has unknown extras {sorted(unknown)}; "
                f"allowed: {', '.join(EXTRAS)}."
            )
        remove_via = extras.get("remove_via") or DEFAULT_REMOVE_VIA
        if remove_via not in REMOVE_VIA:
            raise AirflowException(
                f"Airflow connection '{self.meta_conn_id}' has extra remove_via={remove_via!r}; set it to one "
                f"of {', '.join(REMOVE_VIA)}, or remove it for the default ({DEFAULT_REMOVE_VIA})."
            )
        return {
            "access_token": token,
            "graph_url": graph_url(conn.host, conn.port),
            "api_version": extras.get("api_version") or DEFAULT_API_VERSION,
            "app_secret": extras.get("app_secret") or None,
            "timeout": float(extras.get("timeout") or 60),
            "remove_via": remove_via,
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
        return MetaDestination(
            self.get_conn(),
            ad_account_id,
            conn_label=self.meta_conn_id,
            remove_via=self.settings["remove_via"],
        )


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
