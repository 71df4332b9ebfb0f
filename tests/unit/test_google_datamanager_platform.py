"""google_datamanager as a campaign file and an Airflow connection see it: the destination model
(account normalised, options, malformed fields named with their fix) and the hook (credentials built
without a network call, fails fast with the fix, options reach the destination)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audience_sync.core.campaign import load_campaign
from audience_sync.core.errors import CampaignErrors
from tests.campaign_files import one_destination

CONN = "gdm_test"


def write(folder: Path, destination: str) -> Path:
    return one_destination(folder, "google_datamanager", destination)


def test_the_account_is_normalised_and_options_reach_the_factory(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        operating_account_id: "123-456-7890"
        login_account_id: 9876543210
        membership_duration_days: 90
        consent: {ad_user_data: granted, ad_personalization: GRANTED}
        """,
    )
    (dest,) = load_campaign(path).destinations
    assert dest.account == dest.operating_account_id == "1234567890"
    assert dest.conn_id == "google_datamanager_default"
    assert dest.options() == {
        "login_account_id": "9876543210",
        "membership_duration_days": 90,
        "consent": {"ad_user_data": "GRANTED", "ad_personalization": "GRANTED"},
    }


def test_defaults(tmp_path: Path) -> None:
    (dest,) = load_campaign(write(tmp_path, 'operating_account_id: "1234567890"\n')).destinations
    assert dest.options() == {
        "login_account_id": None,
        "membership_duration_days": 540,
        "consent": {"ad_user_data": "UNSPECIFIED", "ad_personalization": "UNSPECIFIED"},
    }


@pytest.mark.parametrize(
    ("destination", "field", "in_message", "in_fix"),
    [
        (
            'operating_account_id: "12345"\n',
            "destinations[0].operating_account_id",
            "'12345'",
            "123-456-7890",
        ),
        (
            'operating_account_id: "act_1234567890"\n',
            "destinations[0].operating_account_id",
            "10 digits",
            "123-456-7890",
        ),
        (
            'operating_account_id: "1234567890"\nmembership_duration_days: 600\n',
            "destinations[0].membership_duration_days",
            "600",
            "1 to 540",
        ),
        (
            'operating_account_id: "1234567890"\nconsent: {ad_user_data: yes}\n',
            "destinations[0].consent.ad_user_data",
            "not a consent status",
            "GRANTED, DENIED, UNSPECIFIED",
        ),
        (
            'operating_account_id: "1234567890"\nlogin_account_id: "x1"\n',
            "destinations[0].login_account_id",
            "'x1'",
            "123-456-7890",
        ),
    ],
)
def test_a_malformed_field_names_file_field_and_fix(
    tmp_path: Path, destination: str, field: str, in_message: str, in_fix: str
) -> None:
    path = write(tmp_path, destination)
    with pytest.raises(CampaignErrors) as info:
        load_campaign(path)
    matching = [e for e in info.value.errors if e.field == field]
    assert len(matching) == 1, [str(e) for e in info.value.errors]
    (error,) = matching
    assert in_message in error.message
    assert in_fix in error.fix
    assert str(path.name) in str(error)


# ------------------------------------------------------------------------------------------ the hook


@pytest.fixture
def conn(monkeypatch: pytest.MonkeyPatch):
    def set_conn(extra: dict, **fields: object) -> None:
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{CONN.upper()}", json.dumps({"conn_type": "generic", **fields, "extra": extra})
        )

    return set_conn


OAUTH = {
    "client_id": "cid.apps.googleusercontent.com",
    "client_secret": "shh-secret",
    "refresh_token": "1//rt",
}


def test_oauth_extras_build_credentials_without_a_network_call(conn) -> None:
    from google.oauth2.credentials import Credentials

    from audience_sync.hooks.google_datamanager import SCOPE, GoogleDataManagerHook

    conn({**OAUTH, "login_account_id": "1112223333", "timeout": 5})
    hook = GoogleDataManagerHook(CONN)
    creds = hook.credentials()
    assert isinstance(creds, Credentials) and creds.token is None  # refreshed on the first call, not here
    assert creds.refresh_token == "1//rt" and creds.scopes == [SCOPE]
    dest = hook.get_destination(
        "1234567890",
        consent={"ad_user_data": "GRANTED", "ad_personalization": "DENIED"},
        membership_duration_days=30,
    )
    assert (dest.account, dest.login_account, dest.timeout, dest.membership_duration_days) == (
        "1234567890",
        "1112223333",
        5.0,
        30,
    )
    assert dest.consent.ad_personalization.name == "CONSENT_DENIED"


def test_a_service_account_key_is_read_from_its_json(conn) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from google.oauth2 import service_account

    from audience_sync.hooks.google_datamanager import GoogleDataManagerHook

    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        .decode()
    )
    key = {
        "type": "service_account",
        "client_email": "sync@project.iam.gserviceaccount.com",
        "private_key": pem,
        "private_key_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    conn({"service_account_key": json.dumps(key)})
    creds = GoogleDataManagerHook(CONN).credentials()
    assert isinstance(creds, service_account.Credentials)
    assert creds.service_account_email == "sync@project.iam.gserviceaccount.com"


@pytest.mark.parametrize(
    ("extra", "fields", "says"),
    [
        ({}, {}, "found none"),
        (OAUTH, {"password": "tok"}, "found client_id/client_secret/refresh_token and password"),
        ({"client_id": "x"}, {}, "without client_secret, refresh_token"),
        ({**OAUTH, "scope": "x"}, {}, "unknown extras ['scope']"),
        ({"service_account_key": "{not json"}, {}, "not a service account's JSON key"),
    ],
)
def test_a_bad_connection_fails_fast_with_the_fix_and_no_secret(
    conn, extra: dict, fields: dict, says: str
) -> None:
    from airflow.sdk.exceptions import AirflowException

    from audience_sync.hooks.google_datamanager import GoogleDataManagerHook

    conn(extra, **fields)
    with pytest.raises(AirflowException) as info:
        GoogleDataManagerHook(CONN).get_destination("1234567890")
    message = str(info.value)
    assert CONN in message and says in message
    assert "shh-secret" not in message and "1//rt" not in message


@pytest.mark.parametrize(
    ("host", "port", "endpoint"),
    [
        (None, None, None),
        ("datamanager.googleapis.com", None, None),
        ("127.0.0.1", 8991, "127.0.0.1:8991"),
        ("http://localhost:9000/", None, "localhost:9000"),
        ("dm.example.com", 443, "dm.example.com:443"),
    ],
)
def test_endpoint_override(host: str | None, port: int | None, endpoint: str | None) -> None:
    from audience_sync.destinations.google_datamanager import DEFAULT_ENDPOINT
    from audience_sync.destinations.grpc_common import is_loopback
    from audience_sync.hooks.google_auth import endpoint as endpoint_of

    assert endpoint_of(host, port, DEFAULT_ENDPOINT) == endpoint
    if endpoint:
        assert is_loopback(endpoint) == endpoint.startswith(("127.", "localhost"))


def test_the_registered_factory_builds_the_destination_from_the_connection(conn, sandbox) -> None:
    from audience_sync.destinations import build_destination
    from tests.conftest import SANDBOX_TOKEN

    conn({}, host=sandbox.grpc_target, password=SANDBOX_TOKEN)
    dest = build_destination(
        "google_datamanager", CONN, "1234567890", {"membership_duration_days": 7, "consent": {}}
    )
    assert dest.platform == "google_datamanager"
    created = dest.create_audience("factory check", "")
    assert dest.find_audiences("factory check") == [created]


def test_denied_consent_is_refused_by_google_with_the_fix(sandbox) -> None:
    from google.oauth2.credentials import Credentials

    from audience_sync.core.errors import PermanentDestinationError
    from audience_sync.destinations.google_datamanager import GoogleDataManagerDestination, make_clients
    from tests.conftest import SANDBOX_TOKEN

    clients = make_clients(Credentials(token=SANDBOX_TOKEN), sandbox.grpc_target)
    dest = GoogleDataManagerDestination(
        *clients, "2223334445", ad_user_data="DENIED", ad_personalization="GRANTED"
    )
    audience = dest.create_audience("denied consent", "")
    upload = dest.open_upload(audience.id, "add", key="denied", estimated_total=1)
    with pytest.raises(PermanentDestinationError) as info:
        dest.send_batch(upload, 1, ["email_address"], [["a" * 64]], last=True)
    assert "consent" in str(info.value) and "GRANTED" in str(info.value)
    assert "a" * 64 not in str(info.value)


def test_a_request_too_old_for_its_status_counts_as_processed(sandbox) -> None:
    from google.oauth2.credentials import Credentials

    from audience_sync.destinations.google_datamanager import GoogleDataManagerDestination, make_clients
    from tests.conftest import SANDBOX_TOKEN

    app = sandbox.app("google_datamanager")
    dest = GoogleDataManagerDestination(
        *make_clients(Credentials(token=SANDBOX_TOKEN), sandbox.grpc_target), "3334445556"
    )
    audience = dest.create_audience("old request", "")
    upload = dest.open_upload(audience.id, "add", key="old", estimated_total=1)
    dest.send_batch(upload, 1, ["email_address"], [["b" * 64]], last=True)
    # Google keeps a request's status about 50 days, then answers REQUEST_TOO_OLD (ErrorReason 126)
    app.add_fault(action="error", method="RPC", path_regex="/RetrieveRequestStatus$", code=3, subcode=126)
    try:
        status = dest.upload_status(upload)
    finally:
        app.clear_faults()
    assert status.done and not status.failed
