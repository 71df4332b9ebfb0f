"""Airflow hook for Google Customer Match through the Data Manager API (``google_datamanager_default``)."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException

from audience_sync.destinations.google_datamanager import (
    DEFAULT_ENDPOINT,
    GoogleDataManagerDestination,
    make_clients,
)
from audience_sync.hooks import google_auth

#: the OAuth scope of the Data Manager API
SCOPE = "https://www.googleapis.com/auth/datamanager"
#: extras a Data Manager connection may carry (documented on :class:`GoogleDataManagerHook`)
EXTRAS = (
    "service_account_key",
    *google_auth.OAUTH_EXTRAS,
    "use_default_credentials",
    "login_account_id",
    "linked_account_id",
    "timeout",
)


class GoogleDataManagerHook(BaseHook):
    """Builds the ``google-ads-datamanager`` clients from an Airflow connection (default
    ``google_datamanager_default``; any conn_type, from env variable, secrets backend or UI).

    Credentials, exactly one way, in the extras (JSON):

    - ``service_account_key``: the JSON key of a Google Cloud service account (the object, or its text),
      from Google Cloud console > IAM > Service accounts > Keys. The service account must be a user of
      the Google Ads account (or of its manager) and its project must have the Data Manager API enabled.
    - ``client_id``, ``client_secret``, ``refresh_token``: an OAuth client of that project (console >
      APIs & Services > Credentials) and a refresh token a Google Ads user granted it for the scope
      ``https://www.googleapis.com/auth/datamanager`` (e.g. with ``gcloud auth application-default login
      --client-id-file=... --scopes=...`` or the OAuth playground).
    - ``use_default_credentials: true``: Application Default Credentials of the worker (workload
      identity, ``GOOGLE_APPLICATION_CREDENTIALS``).
    - the connection's ``password`` alone: a static OAuth access token (expires within an hour; for the
      local sandbox and short tests).

    Other fields:

    - ``host`` (+ ``port``): endpoint override, e.g. ``127.0.0.1:8991`` for the local sandbox (a loopback
      endpoint gets an insecure channel; any other TLS). Default ``datamanager.googleapis.com``.
    - extras ``login_account_id``: the manager account (10 digits) the credentials sign in through, when
      not the operating account itself; ``linked_account_id``: an account reached through a link of the
      login account (data partners); ``timeout``: seconds per call (default 60).

    Credentials are built from their parts without any network call; the first API call fetches a token.
    Secrets never reach logs or error messages.
    """

    conn_name_attr = "google_datamanager_conn_id"
    default_conn_name = "google_datamanager_default"
    conn_type = "generic"
    hook_name = "Google Data Manager (audience-sync)"

    def __init__(self, google_datamanager_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.google_datamanager_conn_id = google_datamanager_conn_id

    @cached_property
    def settings(self) -> dict[str, Any]:
        conn_id = self.google_datamanager_conn_id
        conn = self.get_connection(conn_id)
        extras = conn.extra_dejson or {}
        unknown = set(extras) - set(EXTRAS)
        if unknown:
            raise AirflowException(
                f"Airflow connection '{conn_id}' has unknown extras {sorted(unknown)}; allowed: {', '.join(EXTRAS)}."
            )
        way = google_auth.auth_way(
            conn_id,
            conn,
            extras,
            fix="put a service account's JSON key in extra service_account_key, or client_id, client_secret "
            "and refresh_token of an OAuth client in the extras, or set extra use_default_credentials to "
            "true (see GoogleDataManagerHook)",
            allow_default=True,
        )
        return {
            "way": way,
            "extras": extras,
            "password": conn.password,
            "endpoint": google_auth.endpoint(conn.host, conn.port, DEFAULT_ENDPOINT),
            "login_account_id": extras.get("login_account_id") or None,
            "linked_account_id": extras.get("linked_account_id") or None,
            "timeout": float(extras.get("timeout") or 60),
        }

    def credentials(self) -> Any:
        """google-auth credentials from the connection, built without a network call."""
        s = self.settings
        return google_auth.credentials(
            self.google_datamanager_conn_id, s["way"], s["password"], s["extras"], SCOPE
        )

    def get_conn(self) -> Any:
        """The (IngestionServiceClient, UserListServiceClient) pair."""
        return make_clients(self.credentials(), self.settings["endpoint"])

    def get_destination(self, operating_account_id: str, **options: Any) -> GoogleDataManagerDestination:
        """The destination of one operating account; ``options`` are the campaign destination's settings
        (``membership_duration_days``, ``consent``, ``login_account_id``)."""
        s = self.settings
        ingestion, user_lists = self.get_conn()
        consent = options.get("consent") or {}
        kwargs: dict[str, Any] = {}
        if options.get("membership_duration_days"):
            kwargs["membership_duration_days"] = int(options["membership_duration_days"])
        return GoogleDataManagerDestination(
            ingestion,
            user_lists,
            operating_account_id,
            login_account=options.get("login_account_id") or s["login_account_id"],
            linked_account=s["linked_account_id"],
            ad_user_data=consent.get("ad_user_data", "UNSPECIFIED"),
            ad_personalization=consent.get("ad_personalization", "UNSPECIFIED"),
            conn_label=self.google_datamanager_conn_id,
            timeout=s["timeout"],
            **kwargs,
        )


def google_datamanager_destination(
    conn_id: str, account: str, **options: Any
) -> GoogleDataManagerDestination:
    """The destination factory the registration names (``audience_sync.platforms.google_datamanager``)."""
    return GoogleDataManagerHook(conn_id).get_destination(account, **options)
