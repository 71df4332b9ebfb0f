"""Google credentials and endpoints from an Airflow connection, as both Google hooks read them.

One connection authenticates exactly one way: a service account's JSON key (extra
``service_account_key``), an OAuth client and refresh token (extras ``client_id``, ``client_secret``,
``refresh_token``), the worker's Application Default Credentials (extra ``use_default_credentials``,
where the hook allows it), or a static access token in the password (the local sandbox). Credentials are
built from their parts without a network call: the first API call fetches the token. Secrets never
reach a message.
"""

from __future__ import annotations

import json
from typing import Any

from airflow.sdk.exceptions import AirflowException

TOKEN_URI = "https://oauth2.googleapis.com/token"
OAUTH_EXTRAS = ("client_id", "client_secret", "refresh_token")
#: the ways, as messages name them
SERVICE_ACCOUNT, OAUTH, DEFAULT, TOKEN = (
    "service_account_key",
    "client_id/client_secret/refresh_token",
    "use_default_credentials",
    "password (access token)",
)


def auth_way(conn_id: str, conn: Any, extras: dict[str, Any], *, fix: str, allow_default: bool) -> str:
    """The one way the connection authenticates (see the module); fails with ``fix`` otherwise."""
    present = {
        SERVICE_ACCOUNT: bool(extras.get("service_account_key")),
        OAUTH: any(extras.get(k) for k in OAUTH_EXTRAS),
        DEFAULT: allow_default and bool(extras.get("use_default_credentials")),
        TOKEN: bool(conn.password),
    }
    ways = [name for name, there in present.items() if there]
    if len(ways) != 1:
        found = f"found {' and '.join(ways)}" if ways else "found none"
        raise AirflowException(
            f"Airflow connection '{conn_id}' needs exactly one way to authenticate ({found}): {fix}."
        )
    missing = [k for k in OAUTH_EXTRAS if not extras.get(k)]
    if ways[0] == OAUTH and missing:
        raise AirflowException(
            f"Airflow connection '{conn_id}' has OAuth extras without {', '.join(missing)}: give all of "
            "client_id, client_secret and refresh_token."
        )
    return ways[0]


def credentials(conn_id: str, way: str, password: str | None, extras: dict[str, Any], scope: str) -> Any:
    """google-auth credentials of ``way`` (from :func:`auth_way`) for ``scope``, without a network call.
    A service account may act for a user through extra ``impersonated_email`` (domain-wide delegation)."""
    if way == SERVICE_ACCOUNT:
        from google.oauth2 import service_account

        key = extras["service_account_key"]
        try:
            info = json.loads(key) if isinstance(key, str) else dict(key)
            creds = service_account.Credentials.from_service_account_info(info, scopes=[scope])
        except (ValueError, TypeError, KeyError):
            # the key's own text may be in the exception: name the problem, not the content
            raise AirflowException(
                f"Airflow connection '{conn_id}': extra service_account_key is not a service account's JSON "
                "key; paste the whole key file downloaded from Google Cloud console."
            ) from None
        subject = extras.get("impersonated_email")
        return creds.with_subject(subject) if subject else creds
    if way == DEFAULT:
        import google.auth

        found, _project = google.auth.default(scopes=[scope])
        return found
    from google.oauth2.credentials import Credentials

    if way == TOKEN:
        return Credentials(token=password)
    return Credentials(
        token=None,
        refresh_token=extras["refresh_token"],
        client_id=extras["client_id"],
        client_secret=extras["client_secret"],
        token_uri=TOKEN_URI,
        scopes=[scope],
    )


def endpoint(host: str | None, port: int | None, default: str) -> str | None:
    """Connection host (+ port) -> ``host:port``; None for the API's own ``default`` endpoint."""
    if not host:
        return None
    text = host.strip().rstrip("/")
    for scheme in ("https://", "http://", "grpc://", "dns:///"):
        text = text.removeprefix(scheme)
    if text == default and not port:
        return None
    if port and ":" not in text.rsplit("]", 1)[-1]:
        text = f"{text}:{port}"
    return text
