"""The Google Ads sandbox app, driven by the real ``google-ads`` client over real gRPC on loopback: it
rejects what the API rejects (reference §2-§4), with the real error codes in a GoogleAdsFailure."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from google.ads.googleads.client import GoogleAdsClient
from google.ads.googleads.errors import GoogleAdsException
from google.oauth2.credentials import Credentials

from audience_sync.destinations.google_ads_api import (
    error_name,
    failure_details,
    job_query,
    operation_index,
    owned_lists_query,
)
from audience_sync.destinations.google_ads_client import make_client
from audience_sync.sandbox.google_ads import GoogleAdsSandbox
from audience_sync.sandbox.server import SandboxServer

TOKEN = "unit-google-token"
CID = "1234567890"


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


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


@pytest.fixture
def client(server: SandboxServer, app: GoogleAdsSandbox) -> GoogleAdsClient:
    return make_client(Credentials(token=TOKEN), endpoint=server.grpc_target, login_customer_id="9999999999")


def named(exc: GoogleAdsException) -> list[str]:
    return [".".join(error_name(e)[:2]) for e in exc.failure.errors]


def create_list(client: GoogleAdsClient, name: str, key_type: str = "CONTACT_INFO", app_id: str = "") -> str:
    op = client.get_type("UserListOperation")
    op.create.name = name
    op.create.membership_life_span = 30
    op.create.crm_based_user_list.upload_key_type = client.enums.CustomerMatchUploadKeyTypeEnum[key_type]
    if app_id:
        op.create.crm_based_user_list.app_id = app_id
    resp = client.get_service("UserListService").mutate_user_lists(customer_id=CID, operations=[op])
    return str(resp.results[0].resource_name)


def create_job(
    client: GoogleAdsClient, list_rn: str, consent: str | None = "GRANTED", external_id: int = 0
) -> str:
    job = client.get_type("OfflineUserDataJob")
    job.type_ = client.enums.OfflineUserDataJobTypeEnum.CUSTOMER_MATCH_USER_LIST
    job.customer_match_user_list_metadata.user_list = list_rn
    job.external_id = external_id
    if consent:
        job.customer_match_user_list_metadata.consent.ad_user_data = client.enums.ConsentStatusEnum[consent]
        job.customer_match_user_list_metadata.consent.ad_personalization = (
            client.enums.ConsentStatusEnum.GRANTED
        )
    service = client.get_service("OfflineUserDataJobService")
    return str(service.create_offline_user_data_job(customer_id=CID, job=job).resource_name)


def op(client: GoogleAdsClient, kind: str, *emails: str, remove_all: bool = False) -> Any:
    operation = client.get_type("OfflineUserDataJobOperation")
    if remove_all:
        operation.remove_all = True
        return operation
    if not emails:  # an operation with an empty UserData
        setattr(operation, kind, client.get_type("UserData"))
    user_data = getattr(operation, kind)
    for email in emails:
        ident = client.get_type("UserIdentifier")
        ident.hashed_email = email
        user_data.user_identifiers.append(ident)
    return operation


def add(client: GoogleAdsClient, job_rn: str, ops: list[Any], partial: bool = True) -> Any:
    request = client.get_type("AddOfflineUserDataJobOperationsRequest")
    request.resource_name = job_rn
    request.operations = ops
    request.enable_partial_failure = partial
    return client.get_service("OfflineUserDataJobService").add_offline_user_data_job_operations(
        request=request
    )


def run(client: GoogleAdsClient, job_rn: str) -> Any:
    return client.get_service("OfflineUserDataJobService").run_offline_user_data_job(resource_name=job_rn)


def job_status(client: GoogleAdsClient, job_rn: str) -> str:
    rows = list(
        client.get_service("GoogleAdsService").search(customer_id=CID, query=job_query(resource_name=job_rn))
    )
    return str(rows[0].offline_user_data_job.status.name)


def list_id(rn: str) -> int:
    return int(rn.rsplit("/", 1)[1])


# ------------------------------------------------------------------------------------ user lists


def test_lists_are_found_by_search_and_stream_and_names_are_unique(client: GoogleAdsClient) -> None:
    rn = create_list(client, "vip")
    with pytest.raises(GoogleAdsException) as info:
        create_list(client, "vip")
    assert named(info.value) == ["user_list_error.NAME_ALREADY_USED"]
    assert info.value.request_id  # the request-id trailer
    service = client.get_service("GoogleAdsService")
    found = [r.user_list for r in service.search(customer_id=CID, query=owned_lists_query())]
    assert [(u.resource_name, u.name, u.membership_life_span) for u in found] == [(rn, "vip", 30)]
    assert found[0].crm_based_user_list.upload_key_type.name == "CONTACT_INFO"
    streamed = [
        r.user_list.name
        for batch in service.search_stream(customer_id=CID, query=owned_lists_query())
        for r in batch.results
    ]
    assert streamed == ["vip"]


def test_shared_and_other_lists_are_not_owned_crm_lists(
    client: GoogleAdsClient, app: GoogleAdsSandbox
) -> None:
    app.create_list(CID, "shared", access_reason="SHARED")
    app.create_list(CID, "rules", list_type="RULE_BASED")
    app.create_list("5555555555", "elsewhere")
    mine = create_list(client, "mine")
    rows = client.get_service("GoogleAdsService").search(customer_id=CID, query=owned_lists_query())
    assert [r.user_list.resource_name for r in rows] == [mine]


def test_mobile_lists_need_an_app_id(client: GoogleAdsClient) -> None:
    with pytest.raises(GoogleAdsException) as info:
        create_list(client, "apps", key_type="MOBILE_ADVERTISING_ID")
    assert named(info.value) == ["user_list_error.APP_ID_NOT_SET"]
    assert create_list(client, "apps", key_type="MOBILE_ADVERTISING_ID", app_id="com.example.app")


def test_a_query_the_sandbox_does_not_know_is_a_query_error(client: GoogleAdsClient) -> None:
    query = "SELECT user_list.id FROM user_list WHERE user_list.name LIKE '%vip%'"
    with pytest.raises(GoogleAdsException) as info:
        list(client.get_service("GoogleAdsService").search(customer_id=CID, query=query))
    assert named(info.value)[0].startswith("query_error.")


def test_a_wrong_token_is_an_authentication_error(server: SandboxServer, app: GoogleAdsSandbox) -> None:
    other = make_client(Credentials(token="wrong"), endpoint=server.grpc_target)
    with pytest.raises(GoogleAdsException) as info:
        list(other.get_service("GoogleAdsService").search(customer_id=CID, query=owned_lists_query()))
    assert named(info.value) == ["authentication_error.OAUTH_TOKEN_INVALID"]
    assert info.value.error.code().name == "UNAUTHENTICATED"
    logged = app.requests_log()[-1]
    assert logged["status"] == "UNAUTHENTICATED"
    assert "authorization" not in logged["query"]  # the token never reaches the log


# ------------------------------------------------------------------------------------------ jobs


def test_a_job_is_pending_then_running_then_applied(client: GoogleAdsClient, app: GoogleAdsSandbox) -> None:
    rn = create_list(client, "vip")
    job = create_job(client, rn)
    add(client, job, [op(client, "create", sha("a"), sha("b")), op(client, "create", sha("c"))])
    assert job_status(client, job) == "PENDING"
    app.processing_seconds = 0.5
    lro = run(client, job)
    assert job_status(client, job) == "RUNNING"
    assert app.members(list_id(rn)) == set()  # nothing applies before the job has run
    lro.result(timeout=10)  # google.longrunning GetOperation until done
    assert job_status(client, job) == "SUCCESS"
    assert app.members(list_id(rn)) == {
        frozenset({("hashed_email", sha("a")), ("hashed_email", sha("b"))}),
        frozenset({("hashed_email", sha("c"))}),
    }
    assert [(e["op"], e["rows"]) for e in app.member_requests()] == [("add", 2)]


def test_remove_takes_out_the_matched_user(client: GoogleAdsClient, app: GoogleAdsSandbox) -> None:
    rn = create_list(client, "vip")
    job = create_job(client, rn)
    add(client, job, [op(client, "create", sha("a"), sha("b")), op(client, "create", sha("c"))])
    run(client, job)
    removal = create_job(client, rn, consent=None)  # remove jobs need no consent
    add(client, removal, [op(client, "remove", sha("b"))])
    run(client, removal)
    assert app.members(list_id(rn)) == {frozenset({("hashed_email", sha("c"))})}


def test_creates_and_removes_do_not_mix_in_one_job(client: GoogleAdsClient) -> None:
    job = create_job(client, create_list(client, "vip"))
    add(client, job, [op(client, "create", sha("a"))])
    with pytest.raises(GoogleAdsException) as info:
        add(client, job, [op(client, "remove", sha("b"))])
    assert named(info.value) == ["offline_user_data_job_error.CONFLICTING_OPERATION"]


def test_remove_all_must_be_the_first_operation(client: GoogleAdsClient, app: GoogleAdsSandbox) -> None:
    rn = create_list(client, "vip")
    job = create_job(client, rn)
    with pytest.raises(GoogleAdsException) as info:
        add(client, job, [op(client, "create", sha("a")), op(client, "create", remove_all=True)])
    assert named(info.value) == ["offline_user_data_job_error.INVALID_OPERATION_ORDER"]
    add(client, job, [op(client, "create", remove_all=True), op(client, "create", sha("a"))])
    with pytest.raises(GoogleAdsException):  # not first of the job either, though first of its request
        add(client, job, [op(client, "create", remove_all=True)])
    run(client, job)
    assert app.members(list_id(rn)) == {frozenset({("hashed_email", sha("a"))})}


def test_nothing_is_added_after_the_job_ran(client: GoogleAdsClient) -> None:
    job = create_job(client, create_list(client, "vip"))
    add(client, job, [op(client, "create", sha("a"))])
    run(client, job)
    with pytest.raises(GoogleAdsException) as info:
        add(client, job, [op(client, "create", sha("b"))])
    assert named(info.value) == ["offline_user_data_job_error.JOB_ALREADY_STARTED"]


def test_one_running_job_per_list(client: GoogleAdsClient, app: GoogleAdsSandbox) -> None:
    rn = create_list(client, "vip")
    first, second = create_job(client, rn), create_job(client, rn)
    add(client, first, [op(client, "create", sha("a"))])
    add(client, second, [op(client, "create", sha("b"))])
    app.processing_seconds = 30
    run(client, first)
    with pytest.raises(GoogleAdsException) as info:
        run(client, second)
    assert named(info.value) == ["database_error.CONCURRENT_MODIFICATION"]
    assert job_status(client, second) == "PENDING"


def test_denied_consent_is_refused_on_a_create_job(client: GoogleAdsClient) -> None:
    job = create_job(client, create_list(client, "vip"), consent="DENIED")
    with pytest.raises(GoogleAdsException) as info:
        add(client, job, [op(client, "create", sha("a"))])
    assert named(info.value) == ["offline_user_data_job_error.CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS"]


def test_an_external_id_names_one_job(client: GoogleAdsClient) -> None:
    rn = create_list(client, "vip")
    job = create_job(client, rn, external_id=77)
    with pytest.raises(GoogleAdsException) as info:
        create_job(client, rn, external_id=77)
    assert named(info.value) == ["offline_user_data_job_error.EXTERNAL_UPDATE_ID_ALREADY_EXISTS"]
    rows = client.get_service("GoogleAdsService").search(customer_id=CID, query=job_query(external_id=77))
    assert [r.offline_user_data_job.resource_name for r in rows] == [job]


# ------------------------------------------------------------------------------ operation errors


def test_partial_failure_names_each_failed_operation(client: GoogleAdsClient, app: GoogleAdsSandbox) -> None:
    rn = create_list(client, "vip")
    job = create_job(client, rn)
    ops = [op(client, "create", sha("a")), op(client, "create", "NOT-A-HASH"), op(client, "create", sha("c")),
           op(client, "create", sha("d").upper()), op(client, "create")]  # fmt: skip
    resp = add(client, job, ops)
    errors = [e for f in failure_details(resp.partial_failure_error) for e in f.errors]
    found = sorted((operation_index(e), ".".join(error_name(e)[:2])) for e in errors)
    assert found == [
        (1, "offline_user_data_job_error.INVALID_SHA256_FORMAT"),
        (3, "offline_user_data_job_error.INVALID_SHA256_FORMAT"),
        (4, "offline_user_data_job_error.MISSING_USER_IDENTIFIER"),
    ]
    run(client, job)
    assert app.members(list_id(rn)) == {frozenset({("hashed_email", sha(x))}) for x in "ac"}


def test_without_partial_failure_one_bad_operation_fails_the_request(client: GoogleAdsClient) -> None:
    job = create_job(client, create_list(client, "vip"))
    with pytest.raises(GoogleAdsException) as info:
        add(client, job, [op(client, "create", sha("a")), op(client, "create", "bad")], partial=False)
    assert named(info.value) == ["offline_user_data_job_error.INVALID_SHA256_FORMAT"]
    assert operation_index(info.value.failure.errors[0]) == 1


def test_identifier_limits(client: GoogleAdsClient) -> None:
    job = create_job(client, create_list(client, "vip"))
    crowded = op(client, "create", *(sha(f"x{i}") for i in range(21)))  # 21 identifiers in one UserData
    resp = add(client, job, [op(client, "create", sha("a")), crowded])
    errors = [e for f in failure_details(resp.partial_failure_error) for e in f.errors]
    assert [(operation_index(e), error_name(e)[1]) for e in errors] == [(1, "TOO_MANY_USER_IDENTIFIERS")]
    # 100,001 identifiers in one request: refused as a whole
    twenty = [sha(f"y{i}") for i in range(20)]
    request_ops = [op(client, "create", *twenty) for _ in range(5000)] + [op(client, "create", sha("z"))]
    with pytest.raises(GoogleAdsException) as info:
        add(client, job, request_ops)
    assert named(info.value) == ["offline_user_data_job_error.TOO_MANY_USER_IDENTIFIERS"]


def test_identifiers_must_fit_the_list_key_type(client: GoogleAdsClient) -> None:
    job = create_job(client, create_list(client, "ids", key_type="CRM_ID"))
    resp = add(client, job, [op(client, "create", sha("a"))])
    errors = [e for f in failure_details(resp.partial_failure_error) for e in f.errors]
    assert [error_name(e)[1] for e in errors] == ["INCOMPATIBLE_UPLOAD_KEY_TYPE"]


# -------------------------------------------------------------------------------- faults, state


def test_a_fault_rule_answers_a_real_google_ads_failure(
    client: GoogleAdsClient, app: GoogleAdsSandbox
) -> None:
    error = {"error": "database_error.CONCURRENT_MODIFICATION"}
    app.add_fault(action="error", method="RPC", path_regex="/Search$", headers=error, code=10)
    with pytest.raises(GoogleAdsException) as info:
        list(client.get_service("GoogleAdsService").search(customer_id=CID, query=owned_lists_query()))
    assert named(info.value) == ["database_error.CONCURRENT_MODIFICATION"]
    assert info.value.error.code().name == "ABORTED"
    assert app.requests_log()[-1]["fault"] == "error"


def test_state_survives_a_restart(tmp_path: Any) -> None:
    state = tmp_path / "state.json"
    with SandboxServer([GoogleAdsSandbox(access_token=TOKEN)], state_file=state) as srv:
        client = make_client(Credentials(token=TOKEN), endpoint=srv.grpc_target)
        rn = create_list(client, "vip")
        job = create_job(client, rn, external_id=5)
        add(client, job, [op(client, "create", sha("a"))])
    with SandboxServer([GoogleAdsSandbox(access_token=TOKEN)], state_file=state) as srv:
        client = make_client(Credentials(token=TOKEN), endpoint=srv.grpc_target)
        run(client, job)  # the job created before the restart, with its operations
        app = srv.app("google_ads")
        assert isinstance(app, GoogleAdsSandbox)
        assert app.members(list_id(rn)) == {frozenset({("hashed_email", sha("a"))})}
        assert create_list(client, "other") != rn  # ids go on after the restored ones
        app.reset()
        assert app.members(list_id(rn)) == set()


def test_processing_delay_is_observed_without_waiting_on_the_operation(
    client: GoogleAdsClient, app: GoogleAdsSandbox
) -> None:
    rn = create_list(client, "vip")
    job = create_job(client, rn)
    add(client, job, [op(client, "create", sha("a"))])
    app.processing_seconds = 0.3
    run(client, job)
    seen = [job_status(client, job)]
    while seen[-1] != "SUCCESS":
        time.sleep(0.05)
        seen.append(job_status(client, job))
    assert seen[0] == "RUNNING"


def test_inspection_endpoints(server: SandboxServer, client: GoogleAdsClient, app: GoogleAdsSandbox) -> None:
    import requests

    rn = create_list(client, "vip")
    job = create_job(client, rn)
    add(client, job, [op(client, "create", sha("a"))])
    assert requests.post(f"{server.url}/_sandbox/google_ads/processing", json={"seconds": 5}, timeout=5).ok
    assert app.processing_seconds == 5
    run(client, job)
    lists = requests.get(
        f"{server.url}/_sandbox/google_ads/lists", params={"customer": CID}, timeout=5
    ).json()
    assert [(x["name"], x["size"]) for x in lists["data"]] == [("vip", 0)]  # still running
    app.processing_seconds = 0
    held = requests.get(f"{server.url}/_sandbox/google_ads/lists/{list_id(rn)}/members", timeout=5).json()
    assert held["count"] == 0


def test_concurrent_calls_with_a_state_file_never_deadlock(tmp_path: Any) -> None:
    """A job settles inside calls while other calls persist the state: the locks are taken in one order."""
    import threading

    with SandboxServer([GoogleAdsSandbox(access_token=TOKEN)], state_file=tmp_path / "s.json") as srv:
        client = make_client(Credentials(token=TOKEN), endpoint=srv.grpc_target)
        app = srv.app("google_ads")
        assert isinstance(app, GoogleAdsSandbox)
        app.processing_seconds = 0.05
        lists = [create_list(client, f"l{i}") for i in range(4)]

        def work(rn: str) -> None:
            for _ in range(5):
                job = create_job(client, rn)
                add(client, job, [op(client, "create", sha(rn))])
                run(client, job)
                while job_status(client, job) != "SUCCESS":
                    app.members(list_id(rn))  # an inspection settling jobs too
                    time.sleep(0.01)

        threads = [threading.Thread(target=work, args=(rn,), daemon=True) for rn in lists]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads)
        assert all(app.members(list_id(rn)) for rn in lists)
