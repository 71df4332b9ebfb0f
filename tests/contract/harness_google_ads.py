"""The contract harness of Google Ads Customer Match: the real ``google-ads`` client over real gRPC to the
sandbox's Google Ads app (``sandbox/google_ads.py``).

Platform facts that differ from Meta's, and how the harness states them:

* errors are gRPC statuses with a GoogleAdsFailure: an :class:`ErrorCase` has the status number as
  ``code``, the error's enum value as ``subcode`` and ``category.NAME`` as ``name`` (injected as a fault
  rule whose ``headers`` name the error); a bare status (UNAVAILABLE) has no subcode;
* the request log's statuses are gRPC names: ``requests_since`` shows OK as 200, like an HTTP answer;
* an account owns one list per name (``unique_names``) and a list carries no creation time
  (``reports_created_time`` is False);
* a re-sent request repeats operations in the job; Google applies them as one, and the sandbox counts
  distinct operations for ``upload_received``.
"""

from __future__ import annotations

from typing import Any

from google.oauth2.credentials import Credentials

from audience_sync.core.contract import Destination, Upload
from audience_sync.destinations.google_ads import GoogleAdsDestination
from audience_sync.destinations.google_ads_client import make_client
from audience_sync.sandbox.google_ads_wire import error_code
from tests.conftest import SANDBOX_TOKEN
from tests.contract.conftest import ErrorCase, Harness, Member, _accounts, _closed_port

GRANTED = {"ad_user_data": "GRANTED", "ad_personalization": "GRANTED"}


def _case(status: int, name: str, says: tuple[str, ...] = ()) -> ErrorCase:
    """A GoogleAdsFailure error: gRPC status number and ``category.NAME``."""
    code = error_code(name)
    return ErrorCase(status, int(getattr(code, name.partition(".")[0])), says=says, name=name)


def _customer(account: str) -> str:
    """A 10-digit customer id from the fixture's unique account number."""
    return "".join(c for c in account if c.isdigit())[-10:]


class GoogleAdsHarness(Harness):
    platform = "google_ads"
    max_batch_rows = 10_000
    list_page_size = 10_000  # Search pages are fixed at 10,000 rows
    reports_match_rate = True  # user_list.match_rate_percentage
    schema = ("hashed_email", "hashed_phone_number")
    #: first and last name form one address_info identifier
    hashed_keys = ("hashed_email", "hashed_phone_number", "hashed_first_name", "hashed_last_name")
    transient_errors = (
        _case(8, "quota_error.RESOURCE_EXHAUSTED"),
        _case(8, "quota_error.RESOURCE_TEMPORARILY_EXHAUSTED"),
        _case(10, "database_error.CONCURRENT_MODIFICATION"),
        _case(13, "internal_error.TRANSIENT_ERROR"),
        ErrorCase(14, name="UNAVAILABLE"),
        ErrorCase(4, name="DEADLINE_EXCEEDED"),
    )
    _data_manager = ("google_datamanager",)
    _permission = ("permission", "{digits}", "login_customer_id", "google_ads_default")
    _terms = ("terms", "{digits}", "consent")
    auth_error = _case(
        16, "authentication_error.OAUTH_TOKEN_INVALID", says=("google_ads_default", "refresh token")
    )
    permanent_errors = (
        auth_error,
        _case(16, "authentication_error.OAUTH_TOKEN_EXPIRED", says=auth_error.says),
        _case(7, "not_allowlisted_error.CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE", says=_data_manager),
        _case(7, "authorization_error.CLOUD_PROJECT_NOT_APPROVED_FOR_PRODUCTION", says=_data_manager),
        _case(7, "authorization_error.USER_PERMISSION_DENIED", says=_permission),
        _case(
            7,
            "authorization_error.INVALID_LOGIN_CUSTOMER_ID_SERVING_CUSTOMER_ID_COMBINATION",
            says=("login_customer_id", "{digits}"),
        ),
        _case(7, "authorization_error.DEVELOPER_TOKEN_NOT_APPROVED", says=("developer_token",)),
        _case(3, "offline_user_data_job_error.CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS", says=_terms),
        _case(3, "user_list_error.ADVERTISER_TOS_NOT_ACCEPTED", says=_terms),
        _case(3, "offline_user_data_job_error.NOT_ON_ALLOWLIST_FOR_USER_ID", says=("CONTACT_INFO",)),
    )
    unhashed_id_key = None  # a contact-info list takes hashed identifiers only (ids go on CRM_ID lists)
    processes_synchronously = False  # a job runs after finish_upload and takes a while
    offline_calls = ()  # every call is a request (the job is created, run and read on the platform)
    duplicate_names = False  # a second owned list of a name is refused (NAME_ALREADY_USED) ...
    unique_names = True  # ... and creating a taken name gives the list that holds it
    reports_created_time = False  # user lists carry no creation time

    def __init__(self, srv: Any, account: str) -> None:
        self.srv = srv
        self.app = srv.app("google_ads")
        self.account = _customer(account)
        self.other_account = _customer(f"act_{next(_accounts)}")
        self.token = SANDBOX_TOKEN
        self.destination = self._destination(srv.grpc_target, SANDBOX_TOKEN, 10.0)

    def _destination(self, endpoint: str, token: str, timeout: float) -> GoogleAdsDestination:
        client = make_client(Credentials(token=token), endpoint=endpoint, login_customer_id="9999999999")
        return GoogleAdsDestination(client, self.account, consent=GRANTED, timeout=timeout)

    def members(self, audience_id: str) -> set[Member]:
        return set(self.app.members(audience_id))

    def delete_audience(self, audience_id: str) -> None:
        # as in the Google Ads UI: a UserListService remove over gRPC
        client = make_client(Credentials(token=self.token), endpoint=self.srv.grpc_target)
        op = client.get_type("UserListOperation")
        op.remove = f"customers/{self.account}/userLists/{audience_id}"
        client.get_service("UserListService").mutate_user_lists(customer_id=self.account, operations=[op])

    def create_by_hand(
        self, name: str, *, created_time: int | None = None, other_account: bool = False
    ) -> str:
        # Google keeps no creation time on a list: created_time cannot be set (reports_created_time)
        account = self.other_account if other_account else self.account
        return str(self.app.create_list(account, name))

    def inject_error(self, case: ErrorCase, *, skip: int = 0, times: int = 1) -> None:
        named = {"error": case.name} if case.name and "." in case.name else {}
        self.app.add_fault(
            action="error", method="RPC", code=case.code, headers=named, skip=skip, times=times
        )

    def inject_drop(self, *, apply: bool) -> None:
        self.app.add_fault(action="drop", method="RPC", apply=apply, times=1)

    def inject_delay(self, seconds: float) -> None:
        self.app.add_fault(action="delay", method="RPC", delay_seconds=seconds, times=1)

    def another_destination(self, *, token: str | None = None, timeout: float | None = None) -> Destination:
        return self._destination(self.srv.grpc_target, token or self.token, timeout or 10.0)

    def unreachable(self) -> Destination:
        return self._destination(f"127.0.0.1:{_closed_port()}", self.token, 5.0)

    def request_mark(self) -> int:
        return int(self.srv.journal.log.last_seq)

    def requests_since(self, mark: int) -> list[dict[str, Any]]:
        out = []
        for entry in self.app.requests_log(since=mark):
            status = entry.get("status")
            if entry.get("fault") == "drop":
                status = None  # the connection was cut: no answer
            elif status == "OK":
                status = 200
            out.append({**entry, "status": status})
        return out

    def upload_received(self, upload: Upload) -> int:
        return self.app.job_received(upload.handle)  # the handle is the job's resource name

    def set_processing_delay(self, seconds: float) -> None:
        self.app.processing_seconds = float(seconds)

    def reset_faults(self) -> None:
        self.app.clear_faults()
