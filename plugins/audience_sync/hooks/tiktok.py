"""Airflow hook for TikTok custom audiences."""

from __future__ import annotations

from functools import cached_property
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException

from audience_sync.destinations.tiktok import TikTokDestination
from audience_sync.destinations.tiktok_client import DEFAULT_BASE_URL, TikTokClient

#: extras a TikTok connection may carry (documented on :class:`TikTokAudienceHook`)
EXTRAS = ("timeout",)


class TikTokAudienceHook(BaseHook):
    """Builds the TikTok Business API client from an Airflow connection (default ``tiktok_default``).

    The connection may have any conn_type (env variable, secrets backend or UI):

    - ``password``: the long-term access token of a TikTok for Business app with the Audience
      Management scope, authorised by the advertiser (it does not expire unless revoked). Required.
    - ``host``: optional base URL of the API, with its version path; may carry scheme and port, e.g.
      ``http://127.0.0.1:8990`` for the local sandbox. A host without scheme gets ``https://``, one
      without a path TikTok's ``/open_api/v1.3``; a separate ``port`` field is added. Default
      ``https://business-api.tiktok.com/open_api/v1.3``.
    - extras (JSON), optional: ``{"timeout": 60}`` (seconds per request).

    The advertiser id is not part of the connection: each campaign destination names its
    ``advertiser_id``, so one token serves every advertiser it is authorised for.
    """

    conn_name_attr = "tiktok_conn_id"
    default_conn_name = "tiktok_default"
    conn_type = "generic"
    hook_name = "TikTok Custom Audiences (audience-sync)"

    def __init__(self, tiktok_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tiktok_conn_id = tiktok_conn_id

    @cached_property
    def settings(self) -> dict[str, Any]:
        conn = self.get_connection(self.tiktok_conn_id)
        if not conn.password:
            raise AirflowException(
                f"Airflow connection '{self.tiktok_conn_id}' has no password: put the TikTok access token "
                "(Audience Management scope) there."
            )
        extras = conn.extra_dejson or {}
        unknown = set(extras) - set(EXTRAS)
        if unknown:
            raise AirflowException(
                f"Airflow connection '{self.tiktok_conn_id}' has unknown extras {sorted(unknown)}; "
                f"allowed: {', '.join(EXTRAS)}."
            )
        try:
            timeout = float(extras.get("timeout") or 60)
        except (TypeError, ValueError):
            timeout = 0.0
        if timeout <= 0:
            raise AirflowException(
                f"Airflow connection '{self.tiktok_conn_id}' has extra timeout={extras.get('timeout')!r}; "
                "set it to a number of seconds above 0, or remove it for the default (60)."
            )
        return {"access_token": conn.password, "base_url": base_url(conn.host, conn.port), "timeout": timeout}

    def get_conn(self, advertiser_id: str = "") -> TikTokClient:
        s = self.settings
        return TikTokClient(
            s["access_token"],
            base_url=s["base_url"],
            timeout=s["timeout"],
            conn_label=self.tiktok_conn_id,
            account=advertiser_id,
        )

    def get_destination(self, advertiser_id: str) -> TikTokDestination:
        """The destination for one advertiser."""
        return TikTokDestination(self.get_conn(advertiser_id), advertiser_id)


def base_url(host: str | None, port: int | None) -> str:
    """Connection host (and port) -> the API's base URL; the default without a host."""
    if not host:
        return DEFAULT_BASE_URL
    text = host.strip().rstrip("/")
    parts = urlsplit(text if "://" in text else f"https://{text}")
    netloc = f"{parts.netloc}:{port}" if port and parts.port is None else parts.netloc
    path = parts.path if parts.path.strip("/") else urlsplit(DEFAULT_BASE_URL).path  # the version path
    return urlunsplit((parts.scheme, netloc, path, "", ""))


def tiktok_destination(conn_id: str, account: str) -> TikTokDestination:
    """The destination factory TikTok's registration names (``audience_sync.platforms.tiktok``)."""
    return TikTokAudienceHook(conn_id).get_destination(account)
