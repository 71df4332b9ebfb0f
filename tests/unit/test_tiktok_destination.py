"""The TikTok destination beyond the contract suite, over real HTTP to the session sandbox: batches that
span identifier types (one file and one audience per type), a replace that empties a type the group
lacks, how audiences of one name are paired into families, the customer file on the wire, the
hook's connection handling, and the client's error mapping with TikTok's request id in the log."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from audience_sync.core.errors import PermanentDestinationError, TransientDestinationError
from audience_sync.destinations.tiktok import TYPES, TikTokDestination, family_id, family_parts
from audience_sync.destinations.tiktok_client import TikTokClient
from tests.conftest import SANDBOX_TOKEN

_accounts = itertools.count(7_300_000_000_000_000_000 + secrets.randbelow(10**12) * 10)
_keys = itertools.count()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Setup:
    def __init__(self, srv: Any) -> None:
        self.srv = srv
        self.app = srv.app("tiktok")
        self.account = str(next(_accounts))
        self.dest = self.make()

    def make(self, token: str = SANDBOX_TOKEN, url: str | None = None) -> TikTokDestination:
        client = TikTokClient(token, base_url=f"{url or self.srv.url}/open_api/v1.3", account=self.account)
        return TikTokDestination(client, self.account)

    def members(self, audience_id: str) -> dict[str, set[str]]:
        return {t: self.app.members(i) for t, i in family_parts(audience_id).items()}

    def upload(self, audience_id: str, op: str, schema: tuple[str, ...], rows: list[tuple[str, ...]]) -> Any:
        up = self.dest.open_upload(audience_id, op, key=f"unit|{next(_keys)}", estimated_total=len(rows))
        result = self.dest.send_batch(up, 1, schema, rows, last=True)
        self.dest.finish_upload(up, 1)
        return up, result


@pytest.fixture
def tt(sandbox: Any) -> Iterator[Setup]:
    s = Setup(sandbox)
    s.app.min_audience_size = 0  # a handful of rows; the 1,000 rule is tested in test_tiktok_sync.py
    yield s
    s.app.clear_faults()
    s.app.min_audience_size = 1_000


def test_a_batch_spanning_identifier_types_fills_one_audience_per_type(tt: Setup) -> None:
    aud = tt.dest.create_audience("multi", "")
    schema = TYPES
    rows = [
        (sha(f"e{i}"), sha(f"p{i}") if i % 2 else "", sha(f"m{i}") if i % 3 == 0 else "") for i in range(30)
    ]
    mark = tt.app.last_seq()
    up, result = tt.upload(aud.id, "add", schema, rows)
    assert (result.received, result.invalid) == (30, 0)
    paths = [e["path"].rsplit("/", 2)[-2] for e in tt.app.requests_log(mark)]
    assert paths.count("upload") == 3 and paths.count("update") == 3  # one file and one update per type
    assert tt.members(aud.id) == {
        "EMAIL_SHA256": {r[0] for r in rows},
        "PHONE_SHA256": {r[1] for r in rows if r[1]},
        "MAID_SHA256": {r[2] for r in rows if r[2]},
    }
    assert json.loads(result.receipt)["files"].keys() == set(TYPES)
    assert tt.dest.upload_status(up).done


def test_a_row_with_a_bad_value_is_named_and_left_out_of_every_file(tt: Setup) -> None:
    aud = tt.dest.create_audience("bad rows", "")
    rows = [(sha("e0"), sha("p0")), (sha("e1"), "NOT-A-HASH"), (sha("e2").upper(), sha("p2"))]
    _, result = tt.upload(aud.id, "add", ("EMAIL_SHA256", "PHONE_SHA256"), rows)
    assert (result.invalid, result.invalid_rows) == (2, [1, 2])
    assert tt.members(aud.id) == {
        "EMAIL_SHA256": {sha("e0")},
        "PHONE_SHA256": {sha("p0")},
        "MAID_SHA256": set(),
    }


def test_replace_empties_the_audience_of_a_type_the_group_no_longer_has(tt: Setup) -> None:
    aud = tt.dest.create_audience("replace", "")
    tt.upload(
        aud.id, "add", ("EMAIL_SHA256", "PHONE_SHA256"), [(sha("e1"), sha("p1")), (sha("e2"), sha("p2"))]
    )
    up, _ = tt.upload(aud.id, "replace", ("EMAIL_SHA256",), [(sha("e3"),)])
    assert tt.members(aud.id) == {"EMAIL_SHA256": {sha("e3")}, "PHONE_SHA256": set(), "MAID_SHA256": set()}
    assert tt.dest.upload_status(up).done


def test_the_customer_file_is_a_header_row_then_one_hash_a_line_signed_with_its_md5(tt: Setup) -> None:
    aud = tt.dest.create_audience("wire", "")
    seen: list[tuple[dict[str, str], bytes]] = []
    send = tt.dest.client.session.request

    def spy(method: str, url: str, **kw: Any) -> Any:
        if "files" in kw:
            seen.append((kw["data"], kw["files"]["file"][1]))
        assert "Access-Token" in tt.dest.client.session.headers
        return send(method, url, **kw)

    tt.dest.client.session.request = spy  # type: ignore[method-assign]
    tt.upload(aud.id, "add", ("PHONE_SHA256",), [(sha("p1"),), (sha("p2"),)])
    ((form, content),) = seen
    assert content == f"Phone_SHA256\n{sha('p1')}\n{sha('p2')}\n".encode()
    assert form["file_signature"] == hashlib.md5(content).hexdigest()  # noqa: S324
    assert (form["calculate_type"], form["advertiser_id"]) == ("PHONE_SHA256", tt.account)


def test_families_pair_audiences_by_age_per_type_and_skip_shared_ones(tt: Setup, caplog) -> None:
    app, acct = tt.app, tt.account
    old = {t: app.create_audience(acct, "dup", t, create_time=1_600_000_000) for t in TYPES}
    new = {t: app.create_audience(acct, "dup", t, create_time=1_700_000_000) for t in TYPES}
    app.create_audience(acct, "dup", "EMAIL_SHA256", create_time=1_500_000_000, is_creator=False)  # shared
    with caplog.at_level(logging.WARNING):
        found = tt.dest.find_audiences("dup")
    assert [a.id for a in found] == [family_id(old), family_id(new)]
    assert found[0].created_time == 1_600_000_000
    assert "3 TikTok" not in caplog.text and "2 TikTok EMAIL_SHA256 audiences are named 'dup'" in caplog.text


def test_a_family_missing_a_type_fails_with_the_fix_when_that_type_is_sent(tt: Setup) -> None:
    only_email = family_id({"EMAIL_SHA256": tt.app.create_audience(tt.account, "partial", "EMAIL_SHA256")})
    up = tt.dest.open_upload(only_email, "add", key=f"unit|{next(_keys)}", estimated_total=1)
    tt.dest.send_batch(up, 1, ("EMAIL_SHA256", "PHONE_SHA256"), [(sha("e"), sha("p"))], last=True)
    with pytest.raises(PermanentDestinationError, match="no PHONE_SHA256 audience"):
        tt.dest.finish_upload(up, 1)


def test_family_ids_round_trip_and_bad_ones_say_what_is_expected() -> None:
    parts = {"EMAIL_SHA256": "7123456789012345678", "MAID_SHA256": "7123456789012345680"}
    assert family_id(parts) == "7123456789012345678--7123456789012345680"
    assert family_parts(family_id(parts)) == parts
    assert len(family_id(dict.fromkeys(TYPES, "7" * 19))) <= 64  # the state's audience id column
    for bad in ("", "--", "12-34", "a-b-c", "1-2-3-4"):
        with pytest.raises(ValueError, match="joined by '-'"):
            family_parts(bad)


def test_failures_log_tiktoks_request_id_and_never_the_token(tt: Setup, caplog) -> None:
    tt.app.add_fault(code=40100)
    with caplog.at_level(logging.WARNING), pytest.raises(TransientDestinationError) as info:
        tt.dest.find_audiences("x")
    logged = [r for r in caplog.records if "request_id" in r.getMessage()]
    assert logged and "40100" in logged[0].getMessage()
    request_id = logged[0].getMessage().rsplit(" ", 1)[-1]
    assert len(request_id) == 24 and request_id in str(info.value)
    assert SANDBOX_TOKEN not in caplog.text + str(info.value)


def test_an_http_error_without_an_envelope_is_mapped_by_its_status(tt: Setup) -> None:
    tt.app.add_fault(code=50000, http_status=502)
    with pytest.raises(TransientDestinationError):
        tt.dest.get_audience(family_id({"EMAIL_SHA256": "1"}))
    dest = tt.make(url=f"{tt.srv.url}/not-tiktok")  # the sandbox answers an unknown path with HTTP 404
    with pytest.raises(PermanentDestinationError, match="404"):
        dest.find_audiences("x")


# ------------------------------------------------------------------------------------------- the hook
CONN = "tiktok_unit"


@pytest.fixture
def conn(monkeypatch: pytest.MonkeyPatch):
    def set_conn(**fields: Any) -> None:
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", json.dumps({"conn_type": "generic", **fields}))

    return set_conn


@pytest.mark.parametrize(
    ("host", "port", "url"),
    [
        (None, None, "https://business-api.tiktok.com/open_api/v1.3"),
        ("http://127.0.0.1:8990", None, "http://127.0.0.1:8990/open_api/v1.3"),
        ("127.0.0.1", 8990, "https://127.0.0.1:8990/open_api/v1.3"),
        ("https://proxy.example.com/tiktok/v1.3/", None, "https://proxy.example.com/tiktok/v1.3"),
    ],
)
def test_the_hook_builds_the_client_from_the_connection(
    conn, host: str | None, port: int | None, url: str
) -> None:
    from audience_sync.hooks.tiktok import tiktok_destination

    conn(
        password="tok",
        **({"host": host} if host else {}),
        **({"port": port} if port else {}),
        extra={"timeout": 5},
    )
    dest = tiktok_destination(CONN, "7012345678901234567")
    assert (dest.client.base_url, dest.client.timeout, dest.account) == (url, 5.0, "7012345678901234567")
    assert dest.client.session.headers["Access-Token"] == "tok"
    assert dest.client.conn_label == CONN


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({}, "has no password: put the TikTok access token"),
        ({"password": "tok", "extra": {"advertiser_id": "1"}}, "unknown extras ['advertiser_id']"),
        ({"password": "tok", "extra": {"timeout": "soon"}}, "timeout='soon'"),
    ],
)
def test_the_hook_fails_fast_naming_the_connection_and_the_fix(conn, fields: dict, says: str) -> None:
    from airflow.sdk.exceptions import AirflowException

    from audience_sync.hooks.tiktok import TikTokAudienceHook

    conn(**fields)
    with pytest.raises(AirflowException) as info:
        TikTokAudienceHook(CONN).get_destination("1")
    assert CONN in str(info.value) and says in str(info.value)


# ------------------------------------------------------------------------------------ the registration
def test_the_plan_warns_below_1000_members_and_not_from_1000() -> None:
    from audience_sync.core.platforms import get_platform

    spec = get_platform("tiktok")
    (warning,) = spec.plan_warnings("cart_users", 999)
    assert warning.startswith("segment too small") and "1,000" in warning and "999" in warning
    assert spec.plan_warnings("cart_users", 1_000) == []


def test_the_plan_warns_per_identifier_type_by_the_mode() -> None:
    from audience_sync.core.platforms import GroupShape, get_platform

    spec = get_platform("tiktok")
    counts = {"EMAIL_SHA256": 3_000, "PHONE_SHA256": 600, "MAID_SHA256": 0}
    (phone,) = spec.plan_warnings("cart_users", 3_200, GroupShape("mirror", counts))
    assert phone.startswith("segment too small for TikTok's phone audience (PHONE_SHA256)")
    assert "600 member(s)" in phone and "will be refused" in phone
    (maybe,) = spec.plan_warnings("cart_users", 3_200, GroupShape("add_only", counts))
    assert "phone audience" in maybe and "may be refused" in maybe and "not read by the plan" in maybe
    # a replace also empties the MAID audience, which TikTok refuses
    phone, maid = spec.plan_warnings("cart_users", 3_200, GroupShape("replace", counts))
    assert "phone audience" in phone and "MAID audience (MAID_SHA256)" in maid and "0 member(s)" in maid
    big = {"EMAIL_SHA256": 1_000, "PHONE_SHA256": 1_000}
    assert spec.plan_warnings("cart_users", 1_500, GroupShape("mirror", big)) == []


@pytest.mark.parametrize("value", ["act_123", "12 34", "", True, 1.5, "７０１"])
def test_an_advertiser_id_must_be_digits_and_the_fix_says_so(value: object) -> None:
    from audience_sync.core.campaign.base import Invalid
    from audience_sync.platforms.tiktok import normalise_advertiser_id

    with pytest.raises(Invalid) as info:
        normalise_advertiser_id(value)
    assert "advertiser id" in str(info.value) and "7012345678901234567" in info.value.fix


def test_an_advertiser_id_is_kept_as_its_digits() -> None:
    from audience_sync.platforms.tiktok import normalise_advertiser_id

    assert normalise_advertiser_id(" 7012345678901234567 ") == "7012345678901234567"
    assert normalise_advertiser_id(7012345678901234567) == "7012345678901234567"
