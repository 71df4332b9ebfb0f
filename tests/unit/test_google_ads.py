"""Google Ads beyond the contract suite: the destination's batching, jobs and lists against the sandbox
(real client, real gRPC), the hook's connection handling, and the campaign model's checks."""

from __future__ import annotations

import hashlib
import json
import logging
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.oauth2.credentials import Credentials

from audience_sync.core.campaign import load_campaign
from audience_sync.core.errors import CampaignErrors, TransientDestinationError
from audience_sync.destinations.google_ads import GoogleAdsDestination
from audience_sync.destinations.google_ads_api import gaql
from audience_sync.destinations.google_ads_client import LIBRARY_LOGGER, is_loopback, make_client
from audience_sync.sandbox.google_ads import GoogleAdsSandbox
from audience_sync.sandbox.server import SandboxServer

TOKEN = "unit-google-token"
CID = "1234567890"
GRANTED = {"ad_user_data": "GRANTED", "ad_personalization": "GRANTED"}
SCHEMA = ("hashed_email", "hashed_phone_number")


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def rows(n: int, tag: str = "r") -> list[tuple[str, str]]:
    return [(sha(f"{tag}e{i}"), sha(f"{tag}p{i}")) for i in range(n)]


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    with SandboxServer([GoogleAdsSandbox(access_token=TOKEN)]) as srv:
        yield srv


@pytest.fixture
def app(server: SandboxServer) -> GoogleAdsSandbox:
    app = server.app("google_ads")
    assert isinstance(app, GoogleAdsSandbox)
    app.reset()
    app.processing_seconds = 0.0
    app.clear_faults()
    return app


def destination(server: SandboxServer, **options: Any) -> GoogleAdsDestination:
    client = make_client(Credentials(token=TOKEN), endpoint=server.grpc_target)
    return GoogleAdsDestination(client, CID, **{"consent": GRANTED, **options})


@pytest.fixture
def dest(server: SandboxServer, app: GoogleAdsSandbox) -> GoogleAdsDestination:
    return destination(server)


def members(
    rows_: list[tuple[str, ...]], schema: tuple[str, ...] = SCHEMA
) -> set[frozenset[tuple[str, str]]]:
    return {frozenset((k, v) for k, v in zip(schema, r, strict=True) if v) for r in rows_}


# ------------------------------------------------------------------------------------ destination


def test_a_lost_creation_race_finds_the_winner(dest: GoogleAdsDestination, app: GoogleAdsSandbox) -> None:
    winner = app.create_list(CID, "vip")  # another sync created it a moment ago
    assert dest.create_audience("vip", "").id == str(winner)
    assert [a.id for a in dest.find_audiences("vip")] == [str(winner)]


def test_names_never_reach_a_query() -> None:
    with pytest.raises(ValueError, match="int, enum name or resource name"):
        gaql("user_list", ["user_list.id"], {"user_list.name": "vip' OR user_list.id > 0 --"})


def test_a_name_with_quotes_is_found_exactly(dest: GoogleAdsDestination) -> None:
    created = dest.create_audience('o\'brien "vip"', "")
    dest.create_audience("o'brien", "")
    assert [a.id for a in dest.find_audiences('o\'brien "vip"')] == [created.id]


def test_a_batch_is_split_at_10000_identifiers_and_rejects_map_to_rows(
    dest: GoogleAdsDestination, app: GoogleAdsSandbox
) -> None:
    aud = dest.create_audience("vip", "")
    batch = rows(6000)
    batch[1] = ("bad", batch[1][1])
    batch[5500] = (sha("x").upper(), batch[5500][1])
    upload = dest.open_upload(aud.id, "add", key="k", estimated_total=len(batch))
    mark = app.last_seq()
    result = dest.send_batch(upload, 1, SCHEMA, batch, last=True)
    assert (result.received, result.invalid, result.invalid_rows) == (6000, 2, [1, 5500])
    assert [e["rows"] for e in app.member_requests(since=mark)] == [5000, 1000]  # 10,000 identifiers each
    dest.finish_upload(upload, 1)
    assert app.members(aud.id) == members([r for i, r in enumerate(batch) if i not in (1, 5500)])


def test_replace_starts_with_remove_all_and_an_empty_replace_empties(
    dest: GoogleAdsDestination, app: GoogleAdsSandbox
) -> None:
    aud = dest.create_audience("vip", "")
    add = dest.open_upload(aud.id, "add", key="a", estimated_total=3)
    dest.send_batch(add, 1, SCHEMA, rows(3), last=True)
    dest.finish_upload(add, 1)
    replace = dest.open_upload(aud.id, "replace", key="r", estimated_total=0)
    assert dest.send_batch(replace, 1, SCHEMA, [], last=True).received == 0
    dest.finish_upload(replace, 1)
    assert app.job(replace.handle)["ops"] == [("remove_all", frozenset())]  # type: ignore[index]
    assert app.members(aud.id) == set()


def test_a_replace_batch_1_resent_after_its_answer_was_lost(
    dest: GoogleAdsDestination, app: GoogleAdsSandbox
) -> None:
    aud = dest.create_audience("vip", "")
    upload = dest.open_upload(aud.id, "replace", key="r", estimated_total=10)
    batch = rows(10)
    batch[3] = ("bad", batch[3][1])
    dest.send_batch(upload, 1, SCHEMA, batch, last=True)
    again = dest.send_batch(upload, 1, SCHEMA, batch, last=True)  # remove_all is in the job already
    assert (again.received, again.invalid_rows) == (10, [3])
    dest.finish_upload(upload, 1)
    dest.finish_upload(upload, 1)  # a retried finish: the job already runs, nothing to do
    assert app.members(aud.id) == members([r for i, r in enumerate(batch) if i != 3])
    assert app.job_received(upload.handle) == 9


def test_consent_goes_on_add_jobs_only(dest: GoogleAdsDestination, app: GoogleAdsSandbox) -> None:
    aud = dest.create_audience("vip", "")
    add = dest.open_upload(aud.id, "add", key="a", estimated_total=0)
    remove = dest.open_upload(aud.id, "remove", key="r", estimated_total=0)
    assert app.job(add.handle)["consent"] == ["GRANTED", "GRANTED"]  # type: ignore[index]
    assert app.job(remove.handle)["consent"] == ["UNSPECIFIED", "UNSPECIFIED"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("options", "schema", "values"),
    [
        ({"upload_key_type": "CRM_ID"}, ("third_party_user_id",), ("crm-1", "crm-2")),
        (
            {"upload_key_type": "MOBILE_ADVERTISING_ID", "app_id": "com.example.app"},
            ("mobile_id",),
            ("6D92078A-8246-4BA4-AE5B-76104861E7DC", "38400000-8cf0-11bd-b23e-10b96e40000d"),
        ),
        (
            {},
            ("hashed_first_name", "hashed_last_name", "country_code", "postal_code"),
            (sha("ann"), sha("lee"), "US", "94043"),
        ),
    ],
    ids=["crm-id", "mobile-id", "address"],
)
def test_list_kinds(
    server: SandboxServer, app: GoogleAdsSandbox, options: dict, schema: tuple, values: tuple
) -> None:
    dest = destination(server, **options)
    aud = dest.create_audience("kind", "")
    key_type = options.get("upload_key_type", "CONTACT_INFO")
    assert app.lists[int(aud.id)]["key_type"] == key_type
    batch = [values] if len(schema) > 1 else [(v,) for v in values]
    upload = dest.open_upload(aud.id, "add", key="k", estimated_total=len(batch))
    assert dest.send_batch(upload, 1, schema, batch, last=True).invalid == 0
    dest.finish_upload(upload, 1)
    assert app.members(aud.id) == members(batch, schema)


def test_a_job_on_a_busy_list_is_run_later(dest: GoogleAdsDestination, app: GoogleAdsSandbox) -> None:
    aud = dest.create_audience("vip", "")
    first = dest.open_upload(aud.id, "remove", key="1", estimated_total=1)
    dest.send_batch(first, 1, SCHEMA, rows(1), last=True)
    app.processing_seconds = 60
    dest.finish_upload(first, 1)
    second = dest.open_upload(aud.id, "add", key="2", estimated_total=1)
    dest.send_batch(second, 1, SCHEMA, rows(1), last=True)
    with pytest.raises(TransientDestinationError, match="CONCURRENT_MODIFICATION"):
        dest.finish_upload(second, 1)
    assert not dest.upload_status(first).done


def test_the_destination_checks_its_options() -> None:
    client = make_client(Credentials(token=TOKEN), endpoint="127.0.0.1:1")
    with pytest.raises(ValueError, match="app_id"):
        GoogleAdsDestination(client, CID, upload_key_type="MOBILE_ADVERTISING_ID")
    with pytest.raises(ValueError, match="540"):
        GoogleAdsDestination(client, CID, membership_life_span_days=541)
    assert GoogleAdsDestination(client, "123-456-7890").account == CID


def test_client_construction() -> None:
    assert is_loopback("127.0.0.1:50051") and is_loopback("localhost:1") and is_loopback("[::1]:5")
    assert not is_loopback("googleads.googleapis.com") and not is_loopback("10.0.0.1:443")
    logging.getLogger(LIBRARY_LOGGER).setLevel(logging.NOTSET)
    make_client(Credentials(token=TOKEN))  # the library logs whole requests below WARNING
    assert logging.getLogger(LIBRARY_LOGGER).level == logging.WARNING


# ----------------------------------------------------------------------------------------- hook

CONN = "google_ads_unit"


@pytest.fixture
def conn(monkeypatch: pytest.MonkeyPatch):
    def set_conn(extra: dict, host: str | None = None, password: str | None = None) -> None:
        value = {"conn_type": "generic", "host": host, "password": password, "extra": extra}
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", json.dumps(value))

    return set_conn


def test_the_hook_reaches_the_sandbox_with_the_campaign_options(
    conn, server: SandboxServer, app: GoogleAdsSandbox
) -> None:
    from audience_sync.hooks.google_ads import google_ads_destination

    conn({"login_customer_id": "111-222-3333"}, host=server.grpc_target, password=TOKEN)
    options = {"upload_key_type": "CRM_ID", "consent": GRANTED, "login_customer_id": "4445556666"}
    dest = google_ads_destination(CONN, "123-456-7890", **options)
    assert dest.upload_key_type == "CRM_ID"
    assert dest.client.login_customer_id == "4445556666"  # the campaign's manager account wins
    aud = dest.create_audience("vip", "")
    assert app.requests_log()[-1]["query"]["login-customer-id"] == "4445556666"
    assert app.lists[int(aud.id)]["key_type"] == "CRM_ID"


def test_oauth_extras_make_credentials_without_a_network_call(conn) -> None:
    from audience_sync.hooks.google_ads import GoogleAdsAudienceHook

    conn({"client_id": "cid", "client_secret": "s3cret", "refresh_token": "rt", "developer_token": "dev"})
    hook = GoogleAdsAudienceHook(CONN)
    creds = hook.credentials()
    assert (creds.refresh_token, creds.client_id, creds.token) == ("rt", "cid", None)  # not refreshed yet
    client = hook.get_conn()
    assert client.developer_token == "dev"
    assert client.endpoint is None  # Google's own endpoint, over TLS


@pytest.mark.parametrize(
    ("extra", "password", "says"),
    [
        ({}, None, "exactly one way to authenticate"),
        ({"client_id": "cid", "client_secret": "s3cret"}, None, "without refresh_token"),
        ({"refresh_token": "r", "client_id": "c", "client_secret": "s3cret"}, "tok", "exactly one"),
        ({"devtoken": "x"}, "tok", "unknown extras ['devtoken']"),
        (
            {"service_account_key": '{"type": "service_account", "private_key": "s3cret"}'},
            None,
            "not a service",
        ),
        ({"login_customer_id": "12"}, "tok", "login_customer_id"),
    ],
    ids=["none", "partial-oauth", "two-ways", "unknown", "bad-key", "bad-login"],
)
def test_a_broken_connection_fails_fast_with_the_fix(
    conn, extra: dict, password: str | None, says: str
) -> None:
    from airflow.sdk.exceptions import AirflowException

    from audience_sync.hooks.google_ads import google_ads_destination

    conn(extra, password=password)
    with pytest.raises(AirflowException) as info:
        google_ads_destination(CONN, CID)
    message = str(info.value)
    assert CONN in message and says in message
    assert "s3cret" not in message


# ------------------------------------------------------------------------------- campaign model

CAMPAIGN = """\
campaign: Loyal customers
duration: {{start: 2026-08-01}}
schedule: "@daily"
segment_name: loyal_customers
audience_group:
  list: tests/fixtures/campaigns/data/existing_list.csv
  key: customer_id
  identifiers: {{email: email}}
destinations:
  - platform: google_ads
{destination}
"""


def load(tmp_path: Path, destination: str) -> Any:
    path = tmp_path / "campaign.yaml"
    path.write_text(CAMPAIGN.format(destination=textwrap.indent(destination, "    ")), encoding="utf-8")
    return load_campaign(path)


def test_the_campaign_destination_and_its_options(tmp_path: Path) -> None:
    campaign = load(
        tmp_path,
        'customer_id: "123-456-7890"\nmembership_life_span_days: 30\nconsent: {ad_user_data: granted}\n'
        "login_customer_id: 999-888-7777\n",
    )
    dest = campaign.destinations[0]
    assert (dest.account, dest.conn_id) == ("1234567890", "google_ads_default")
    assert dest.options() == {
        "upload_key_type": "CONTACT_INFO",
        "app_id": None,
        "membership_life_span_days": 30,
        # what the campaign says; the other stays UNSPECIFIED (granting is the advertiser's statement)
        "consent": {"ad_user_data": "GRANTED", "ad_personalization": "UNSPECIFIED"},
        "login_customer_id": "9998887777",
    }


@pytest.mark.parametrize(
    ("destination", "field", "says", "fix"),
    [
        ('customer_id: "123-45"', "destinations[0].customer_id", "not a Google Ads customer id", "10-digit"),
        (
            "customer_id: 1234567890\nupload_key_type: MOBILE_ADVERTISING_ID",
            "app_id",
            "needs app_id",
            "app_id:",
        ),
        ("customer_id: 1234567890\napp_id: com.x", "app_id", "only for", "MOBILE_ADVERTISING_ID"),
        ("customer_id: 1234567890\nconsent: {ad_personalization: DENIED}", "consent", "DENIED", "GRANTED"),
        ("customer_id: 1234567890\nmembership_life_span_days: 541", "membership_life_span_days", "540", ""),
    ],
    ids=["customer-id", "no-app-id", "stray-app-id", "denied", "life-span"],
)
def test_a_malformed_destination_names_file_field_and_fix(
    tmp_path: Path, destination: str, field: str, says: str, fix: str
) -> None:
    with pytest.raises(CampaignErrors) as info:
        load(tmp_path, destination)
    (error,) = info.value.errors
    assert str(tmp_path / "campaign.yaml") in str(error)
    assert field in error.field
    assert says in error.message
    assert fix in error.fix


def test_the_plan_warns_about_the_allowlist_and_small_lists() -> None:
    from audience_sync.platforms.google_ads import GOOGLE_ADS

    small, allowlist = GOOGLE_ADS.plan_warnings("loyal_customers", 999)
    assert "1000" in small.replace(",", "")
    assert "google_datamanager" in allowlist
    assert len(GOOGLE_ADS.plan_warnings("loyal_customers", 5000)) == 1
