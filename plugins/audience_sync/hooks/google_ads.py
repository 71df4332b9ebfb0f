"""Airflow hook for Google Ads Customer Match (Google Ads API)."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException

from audience_sync.destinations.google_ads import DEFAULT_TIMEOUT, GoogleAdsDestination
from audience_sync.destinations.google_ads_client import make_client
from audience_sync.hooks import google_auth
from audience_sync.platforms.google_common import normalise_customer_id

#: the OAuth scope of the Google Ads API
ADWORDS_SCOPE = "https://www.googleapis.com/auth/adwords"
#: the Google Ads API's own endpoint (the client's default when the connection names no host)
DEFAULT_ENDPOINT = "googleads.googleapis.com"
#: extras a Google Ads connection may carry (documented on :class:`GoogleAdsAudienceHook`)
EXTRAS = (
    *google_auth.OAUTH_EXTRAS,
    "service_account_key",
    "impersonated_email",
    "login_customer_id",
    "developer_token",
    "timeout",
)
_CREDENTIALS_FIX = (
    "put either client_id, client_secret and refresh_token (OAuth), or service_account_key (a service "
    "account's JSON key) in its extras, or an access token in its password (the sandbox)"
)


class GoogleAdsAudienceHook(BaseHook):
    """Builds the ``google-ads`` client from an Airflow connection (default ``google_ads_default``).

    The connection may have any conn_type (env variable, secrets backend or UI):

    - ``host``: optional endpoint override ``host:port``, e.g. ``127.0.0.1:50051`` for the local sandbox
      (a loopback address is reached without TLS; a separate ``port`` field is appended). Default
      ``googleads.googleapis.com``.
    - extras (JSON), one way to authenticate:

      .. code-block:: json

          {"client_id": "<OAuth client id>", "client_secret": "<OAuth client secret>",
           "refresh_token": "<refresh token with the adwords scope>",
           "login_customer_id": "123-456-7890", "developer_token": "<optional>", "timeout": 120}

      - OAuth (a Google account with access to the customer): ``client_id`` and ``client_secret`` of an
        OAuth client of your Google Cloud project (APIs & Services > Credentials), and a
        ``refresh_token`` for the scope ``https://www.googleapis.com/auth/adwords``, made once with that
        client (e.g. ``google-oauthlib-tool --scope https://www.googleapis.com/auth/adwords
        --client-secrets client_secret.json``).
      - or ``service_account_key``: a service account's JSON key (object or string) from IAM & Admin >
        Service accounts; the service account must be a user of the Google Ads account, or set
        ``impersonated_email`` to a user it may impersonate (domain-wide delegation).
      - or, instead of extras, ``password``: a ready access token, never refreshed (it expires within an
        hour: the local sandbox, or a token minted elsewhere for one run).

      ``login_customer_id``: the manager account (10 digits, dashes allowed) through which the customer
      is reached; a campaign destination's own ``login_customer_id`` overrides it.
      ``developer_token``: optional; Google ignores it since 9 September 2026 (API access belongs to
      the Cloud project of the OAuth client now) and the client sends it only when set.

    The client is built from credential objects, never with ``GoogleAdsClient.load_from_*`` (those
    refresh the token over the network at once); the token is fetched on the first call. Secrets are
    never logged.
    """

    conn_name_attr = "google_ads_conn_id"
    default_conn_name = "google_ads_default"
    conn_type = "generic"
    hook_name = "Google Ads Customer Match (audience-sync)"

    def __init__(self, google_ads_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.google_ads_conn_id = google_ads_conn_id

    def _fail(self, problem: str, fix: str) -> AirflowException:
        return AirflowException(f"Airflow connection '{self.google_ads_conn_id}' {problem}: {fix}.")

    @cached_property
    def settings(self) -> dict[str, Any]:
        conn = self.get_connection(self.google_ads_conn_id)
        extras = conn.extra_dejson or {}
        unknown = set(extras) - set(EXTRAS)
        if unknown:
            raise self._fail(f"has unknown extras {sorted(unknown)}", f"allowed: {', '.join(EXTRAS)}")
        login = extras.get("login_customer_id")
        if login:
            try:
                login = normalise_customer_id(login)
            except ValueError:
                raise self._fail(
                    "has an invalid login_customer_id", "write 10 digits, e.g. 123-456-7890"
                ) from None
        return {
            "way": google_auth.auth_way(
                self.google_ads_conn_id, conn, extras, fix=_CREDENTIALS_FIX, allow_default=False
            ),
            "password": conn.password,
            "extras": extras,
            "endpoint": google_auth.endpoint(conn.host, conn.port, DEFAULT_ENDPOINT),
            "login_customer_id": login or None,
            "developer_token": extras.get("developer_token") or None,
            "timeout": float(extras.get("timeout") or DEFAULT_TIMEOUT),
        }

    def credentials(self) -> Any:
        """The google.auth credentials the connection describes (no network call)."""
        s = self.settings
        return google_auth.credentials(
            self.google_ads_conn_id, s["way"], s["password"], s["extras"], ADWORDS_SCOPE
        )

    def get_conn(self, login_customer_id: str | None = None) -> Any:
        s = self.settings
        return make_client(
            self.credentials(),
            endpoint=s["endpoint"],
            login_customer_id=login_customer_id or s["login_customer_id"],
            developer_token=s["developer_token"],
        )

    def get_destination(self, customer_id: str, **options: Any) -> GoogleAdsDestination:
        """The destination for one customer; ``options`` are the campaign destination's own settings."""
        login = options.pop("login_customer_id", None)
        return GoogleAdsDestination(
            self.get_conn(login),
            customer_id,
            conn_label=self.google_ads_conn_id,
            timeout=self.settings["timeout"],
            **options,
        )


def google_ads_destination(conn_id: str, account: str, **options: Any) -> GoogleAdsDestination:
    """The destination factory Google Ads' registration names (``audience_sync.platforms.google_ads``)."""
    return GoogleAdsAudienceHook(conn_id).get_destination(account, **options)
