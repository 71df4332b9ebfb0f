"""The Data Manager sandbox (sandbox/google_datamanager.py), called by the real google-ads-datamanager
client over gRPC on loopback: what it accepts, what it refuses and how, and its persisted state."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
from google.ads import datamanager_v1 as dm
from google.api_core import exceptions as gexc
from google.oauth2.credentials import Credentials
from google.rpc import error_details_pb2

from audience_sync.destinations.google_datamanager import make_clients
from audience_sync.sandbox.google_datamanager import DataManagerSandbox
from audience_sync.sandbox.server import SandboxServer

TOKEN = "unit-token"
ACCOUNT = "1234567890"
PARENT = f"accountTypes/GOOGLE_ADS/accounts/{ACCOUNT}"
ACCEPTED = dm.TermsOfService(customer_match_terms_of_service_status=dm.TermsOfServiceStatus.ACCEPTED)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def server(tmp_path) -> Iterator[SandboxServer]:
    srv = SandboxServer([DataManagerSandbox(access_token=TOKEN)], state_file=tmp_path / "state.json").start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def clients(server: SandboxServer) -> tuple[dm.IngestionServiceClient, dm.UserListServiceClient]:
    return make_clients(Credentials(token=TOKEN), server.grpc_target)


def new_list(lists: dm.UserListServiceClient, name: str = "vip", **extra: Any) -> dm.UserList:
    ul = dm.UserList(
        display_name=name,
        ingested_user_list_info=dm.IngestedUserListInfo(
            upload_key_types=[dm.IngestedUserListInfo.UploadKeyType.CONTACT_ID]
        ),
        **extra,
    )
    return lists.create_user_list(request=dm.CreateUserListRequest(parent=PARENT, user_list=ul))


def destination(list_id: int | str, account: str = ACCOUNT) -> dm.Destination:
    return dm.Destination(
        operating_account=dm.ProductAccount(
            account_id=account, account_type=dm.ProductAccount.AccountType.GOOGLE_ADS
        ),
        product_destination_id=str(list_id),
    )


def member(*emails: str) -> dm.AudienceMember:
    return dm.AudienceMember(
        user_data=dm.UserData(user_identifiers=[dm.UserIdentifier(email_address=e) for e in emails])
    )


def ingest(ing: dm.IngestionServiceClient, list_id: int, members: list[Any], **extra: Any) -> str:
    extra.setdefault("terms_of_service", ACCEPTED)
    request = dm.IngestAudienceMembersRequest(
        destinations=[destination(list_id)], audience_members=members, encoding=dm.Encoding.HEX, **extra
    )
    return ing.ingest_audience_members(request=request, retry=None).request_id


def reasons(exc: gexc.GoogleAPICallError) -> tuple[str | None, list[tuple[str, str]]]:
    bad = [d for d in exc.details if isinstance(d, error_details_pb2.BadRequest)]
    return exc.reason, [(v.field, v.reason) for b in bad for v in b.field_violations]


def test_lists_are_created_listed_page_by_page_and_names_are_unique(clients, server) -> None:
    _ing, lists = clients
    first = new_list(lists, "vip", membership_duration=dt.timedelta(days=30))
    assert first.name == f"{PARENT}/userLists/{first.id}" and first.display_name == "vip"
    assert first.membership_duration == dt.timedelta(days=30)
    with pytest.raises(gexc.InvalidArgument) as taken:
        new_list(lists, "vip")
    assert taken.value.reason == "DISPLAY_NAME_ALREADY_USED"
    with pytest.raises(gexc.InvalidArgument) as too_long:
        new_list(lists, "long", membership_duration=dt.timedelta(days=541))
    assert too_long.value.reason == "MEMBERSHIP_DURATION_TOO_LONG"
    for i in range(4):
        new_list(lists, f"filler {i}")
    page = lists.list_user_lists(request=dm.ListUserListsRequest(parent=PARENT, page_size=2), retry=None)
    assert len(page.user_lists) == 2 and page.next_page_token
    assert [ul.display_name for ul in page] == [
        "vip",
        *(f"filler {i}" for i in range(4)),
    ]  # the pager goes on
    with pytest.raises(gexc.InvalidArgument):  # names are matched by the caller, never filtered here
        lists.list_user_lists(request=dm.ListUserListsRequest(parent=PARENT, filter='display_name = "vip"'))
    lists.delete_user_list(name=first.name)
    with pytest.raises(gexc.NotFound):
        lists.get_user_list(name=first.name)


def test_ingest_remove_and_status_with_a_processing_delay(clients, server) -> None:
    ing, lists = clients
    app = server.app("google_datamanager")
    ul = new_list(lists)
    app.processing_seconds = 30
    request_id = ingest(ing, ul.id, [member(sha("a")), member(sha("b"), sha("c"))])
    assert {frozenset(m) for m in app.members(ul.id)} == {
        frozenset({("email_address", sha("a"))}),
        frozenset({("email_address", sha("b")), ("email_address", sha("c"))}),
    }
    status = ing.retrieve_request_status(request=dm.RetrieveRequestStatusRequest(request_id=request_id))
    (per_dest,) = status.request_status_per_destination
    assert per_dest.request_status == dm.RequestStatusPerDestination.RequestStatus.PROCESSING
    app.processing_seconds = 0
    (per_dest,) = ing.retrieve_request_status(
        request=dm.RetrieveRequestStatusRequest(request_id=request_id)
    ).request_status_per_destination
    assert per_dest.request_status == dm.RequestStatusPerDestination.RequestStatus.SUCCESS
    counts = per_dest.audience_members_ingestion_status.user_data_ingestion_status
    assert (counts.record_count, counts.user_identifier_count) == (2, 3)
    removal = dm.RemoveAudienceMembersRequest(
        destinations=[destination(ul.id)], audience_members=[member(sha("a"))], encoding=dm.Encoding.HEX
    )
    assert ing.remove_audience_members(request=removal).request_id
    assert len(app.members(ul.id)) == 1
    assert [e["op"] for e in app.member_requests()] == ["add", "remove"]
    with pytest.raises(gexc.InvalidArgument) as unknown:
        ing.retrieve_request_status(request=dm.RetrieveRequestStatusRequest(request_id="nope"))
    assert unknown.value.reason == "INVALID_REQUEST_ID"


def test_documented_limits_and_bad_members_fail_the_whole_request(clients, server) -> None:
    ing, lists = clients
    app = server.app("google_datamanager")
    ul = new_list(lists)
    with pytest.raises(gexc.InvalidArgument) as too_many:
        ingest(ing, ul.id, [member(sha(str(i))) for i in range(10_001)])
    assert too_many.value.reason == "TOO_MANY_AUDIENCE_MEMBERS"
    with pytest.raises(gexc.InvalidArgument) as ids:
        ingest(ing, ul.id, [member(*(sha(f"{i}") for i in range(11)))])
    assert reasons(ids.value)[1] == [("audience_members.audience_members[0]", "TOO_MANY_USER_IDENTIFIERS")]
    with pytest.raises(gexc.InvalidArgument) as bad:
        ingest(ing, ul.id, [member(sha("ok")), member("not-a-hash"), member(sha("x").upper())])
    assert reasons(bad.value) == (
        "INVALID_ARGUMENT",
        [
            ("audience_members.audience_members[1]", "INVALID_SHA256_FORMAT"),
            ("audience_members.audience_members[2]", "INVALID_SHA256_FORMAT"),
        ],
    )
    assert app.members(ul.id) == []  # nothing of a refused request is applied


def test_destination_terms_and_consent_are_required(clients, server) -> None:
    ing, lists = clients
    ul = new_list(lists)
    with pytest.raises(gexc.InvalidArgument) as no_list:
        ingest(ing, 999, [member(sha("a"))])
    assert no_list.value.reason == "INVALID_USER_LIST_ID"
    request = dm.IngestAudienceMembersRequest(
        destinations=[destination(ul.id, account="999")],
        audience_members=[member(sha("a"))],
        encoding=dm.Encoding.HEX,
        terms_of_service=ACCEPTED,
    )
    with pytest.raises(gexc.InvalidArgument) as other_account:
        ing.ingest_audience_members(request=request)
    assert other_account.value.reason == "INVALID_USER_LIST_ID"
    with pytest.raises(gexc.InvalidArgument) as no_terms:
        ingest(ing, ul.id, [member(sha("a"))], terms_of_service=dm.TermsOfService())
    assert no_terms.value.reason == "TERMS_AND_CONDITIONS_NOT_SIGNED"
    denied = dm.Consent(ad_user_data=dm.ConsentStatus.CONSENT_DENIED)
    with pytest.raises(gexc.InvalidArgument):
        ingest(ing, ul.id, [member(sha("a"))], consent=denied)
    granted = dm.Consent(
        ad_user_data=dm.ConsentStatus.CONSENT_GRANTED, ad_personalization=dm.ConsentStatus.CONSENT_GRANTED
    )
    assert ingest(ing, ul.id, [member(sha("a"))], consent=granted)


def test_remove_all_as_of_a_time_keeps_members_added_since(clients, server) -> None:
    ing, lists = clients
    app = server.app("google_datamanager")
    ul = new_list(lists)
    clock = [1_000.0]
    app.clock = lambda: clock[0]
    ingest(ing, ul.id, [member(sha("old")), member(sha("kept"))])
    clock[0] = 2_000.0
    ingest(ing, ul.id, [member(sha("kept")), member(sha("new"))])
    clock[0] = 3_000.0
    as_of = dt.datetime.fromtimestamp(1_500, dt.UTC)
    ing.remove_all_audience_members(
        request=dm.RemoveAllAudienceMembersRequest(destinations=[destination(ul.id)], remove_as_of_time=as_of)
    )
    assert {m[0][1] for m in app.members(ul.id)} == {sha("kept"), sha("new")}
    with pytest.raises(gexc.InvalidArgument) as future:
        ing.remove_all_audience_members(
            request=dm.RemoveAllAudienceMembersRequest(
                destinations=[destination(ul.id)], remove_as_of_time=dt.datetime.fromtimestamp(9_000, dt.UTC)
            )
        )
    assert future.value.reason == "INVALID_REMOVE_AS_OF_TIME"


def test_a_wrong_token_is_unauthenticated(server) -> None:
    _ing, lists = make_clients(Credentials(token="wrong"), server.grpc_target)
    with pytest.raises(gexc.Unauthenticated):
        lists.list_user_lists(request=dm.ListUserListsRequest(parent=PARENT))
    assert "authorization" not in server.journal.log.entries()[-1]["query"]  # the token is never logged


def test_fault_rules_answer_with_the_platform_error_shape(clients, server) -> None:
    ing, lists = clients
    app = server.app("google_datamanager")
    ul = new_list(lists)
    app.add_fault(action="error", method="RPC", path_regex="/IngestAudienceMembers$", code=8, subcode=3)
    with pytest.raises(gexc.ResourceExhausted) as quota:
        ingest(ing, ul.id, [member(sha("a"))])
    assert quota.value.reason == "RESOURCE_EXHAUSTED"
    app.add_fault(action="error", method="RPC", code=14)
    with pytest.raises(gexc.ServiceUnavailable):
        lists.get_user_list(name=ul.name)


def test_state_survives_a_restart_and_reset_clears_it(clients, server, tmp_path) -> None:
    ing, lists = clients
    ul = new_list(lists)
    request_id = ingest(ing, ul.id, [member(sha("a"))])
    server.stop()
    again = SandboxServer(
        [DataManagerSandbox(access_token=TOKEN)], state_file=tmp_path / "state.json"
    ).start()
    try:
        ing2, lists2 = make_clients(Credentials(token=TOKEN), again.grpc_target)
        assert lists2.get_user_list(name=ul.name).display_name == "vip"
        assert ing2.retrieve_request_status(request=dm.RetrieveRequestStatusRequest(request_id=request_id))
        app = again.app("google_datamanager")
        assert len(app.members(ul.id)) == 1
        app.reset()
        assert app.user_lists() == []
    finally:
        again.stop()


def test_the_inspection_endpoints_show_lists_members_and_set_the_delay(clients, server) -> None:
    import requests

    ing, lists = clients
    ul = new_list(lists)
    ingest(ing, ul.id, [member(sha("a"))])
    base = f"{server.url}/_sandbox/google_datamanager"
    assert requests.get(f"{base}/user_lists", params={"account": ACCOUNT}, timeout=5).json()["data"] == [
        {"id": str(ul.id), "name": "vip", "account": ACCOUNT, "size": 1}
    ]
    got = requests.get(f"{base}/user_lists/{ul.id}/members", timeout=5).json()
    assert got["count"] == 1 and got["members"] == [{"email_address": sha("a")}]
    assert requests.get(f"{base}/user_lists/1/members", timeout=5).status_code == 404
    assert requests.post(f"{base}/processing", json={"seconds": 5}, timeout=5).json() == {
        "processing_seconds": 5.0
    }
    assert server.app("google_datamanager").processing_seconds == 5.0
