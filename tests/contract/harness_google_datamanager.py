"""The contract harness of ``google_datamanager``: the real google-ads-datamanager client over gRPC to
the session sandbox's Data Manager app (``sandbox/google_datamanager.py``)."""

from __future__ import annotations

from typing import Any, ClassVar

from google.oauth2.credentials import Credentials

from audience_sync.core.contract import Destination, Upload
from audience_sync.destinations.google_datamanager import (
    GoogleDataManagerDestination,
    account_path,
    make_clients,
)
from tests.conftest import SANDBOX_TOKEN
from tests.contract.conftest import ErrorCase, Harness, Member, _accounts, _closed_port

#: how Google's REST transcoding reports each gRPC status (the suite reads HTTP-like statuses)
HTTP_STATUS = {
    "OK": 200,
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


class GoogleDataManagerHarness(Harness):
    platform = "google_datamanager"
    max_batch_rows = 10_000
    list_page_size = 1000  # GoogleDataManagerDestination.find_audiences lists with page_size=1000
    schema = ("email_address", "phone_number")
    # the identifiers hashed on their own; the address parts (given/family name hashed, region and postal
    # code not) only count together, as one address identifier
    hashed_keys = ("email_address", "phone_number")
    # code: the gRPC status number; subcode: the Data Manager ErrorReason number of the ErrorInfo
    transient_errors = (
        ErrorCase(14, name="UNAVAILABLE"),
        ErrorCase(4, 2, name="DEADLINE_EXCEEDED"),
        ErrorCase(8, 3, name="RESOURCE_EXHAUSTED"),
        ErrorCase(13, 1, name="INTERNAL"),
        ErrorCase(10, name="ABORTED"),
    )
    auth_error = ErrorCase(16, says=("credentials", "google_datamanager_default"), name="UNAUTHENTICATED")
    permanent_errors = (
        auth_error,
        ErrorCase(7, 5, says=("no access", "{digits}", "login_account_id"), name="PERMISSION_DENIED"),
        ErrorCase(3, 26, says=("customer match terms", "{digits}"), name="TERMS_AND_CONDITIONS_NOT_SIGNED"),
        ErrorCase(3, 23, says=("does not exist", "{digits}"), name="INVALID_USER_LIST_ID"),
        ErrorCase(5, 4, says=("does not exist",), name="NOT_FOUND"),
        ErrorCase(3, 47, says=("allowlisted",), name="NOT_ALLOWLISTED"),
        ErrorCase(3, 6, says=("retrying will not help",), name="INVALID_ARGUMENT"),
    )
    processes_synchronously = False  # requests are PROCESSING for a while after they were accepted
    # no upload sessions: the handle is derived from the key, and nothing closes an upload
    offline_calls = ("open_upload", "finish_upload")
    # a list's name is unique among the account's lists (DISPLAY_NAME_ALREADY_USED), and the API reports
    # no creation time
    duplicate_names: ClassVar[bool] = False
    unique_names: ClassVar[bool] = True
    reports_created_time: ClassVar[bool] = False

    def __init__(self, srv: Any, account: str) -> None:
        self.srv = srv
        self.app = srv.app(self.platform)
        digits = "".join(c for c in account if c.isdigit())
        self.account = digits[-10:]  # a Google Ads customer id has 10 digits
        self.other_account = str(next(_accounts))[-10:]
        self.token = SANDBOX_TOKEN
        self.destination = self.make_destination(self.token, timeout=10)
        self._admin_lists = make_clients(Credentials(token=SANDBOX_TOKEN), srv.grpc_target)[1]

    def make_destination(self, token: str, timeout: float, target: str | None = None) -> Destination:
        ingestion, user_lists = make_clients(Credentials(token=token), target or self.srv.grpc_target)
        return GoogleDataManagerDestination(ingestion, user_lists, self.account, timeout=timeout)

    def members(self, audience_id: str) -> set[Member]:
        return {frozenset(m) for m in self.app.members(audience_id)}

    def delete_audience(self, audience_id: str) -> None:
        # DeleteUserList over gRPC, as the Google Ads UI would remove it
        self._admin_lists.delete_user_list(name=f"{account_path(self.account)}/userLists/{audience_id}")

    def create_by_hand(
        self, name: str, *, created_time: int | None = None, other_account: bool = False
    ) -> str:
        # created_time is ignored: the API reports none (reports_created_time is False)
        return self.app.create_list(self.other_account if other_account else self.account, name)

    def inject_error(self, case: ErrorCase, *, skip: int = 0, times: int = 1) -> None:
        self.app.add_fault(
            action="error", method="RPC", code=case.code, subcode=case.subcode, skip=skip, times=times
        )

    def inject_drop(self, *, apply: bool) -> None:
        self.app.add_fault(action="drop", method="RPC", apply=apply, times=1)

    def inject_delay(self, seconds: float) -> None:
        self.app.add_fault(action="delay", method="RPC", delay_seconds=seconds, times=1)

    def another_destination(self, *, token: str | None = None, timeout: float | None = None) -> Destination:
        return self.make_destination(token or self.token, timeout=timeout or 10)

    def unreachable(self) -> Destination:
        return self.make_destination(self.token, timeout=5, target=f"127.0.0.1:{_closed_port()}")

    def request_mark(self) -> int:
        return int(self.srv.journal.log.last_seq)

    def requests_since(self, mark: int) -> list[dict[str, Any]]:
        out = []
        for entry in self.app.requests_log(since=mark):
            dropped = entry.get("fault") == "drop"
            out.append({**entry, "status": None if dropped else HTTP_STATUS.get(entry["status"], 500)})
        return out

    def upload_received(self, upload: Upload) -> int:
        # rows per batch of the upload, from the destination reference "<handle>#<batch>" of each accepted
        # request; a batch sent twice (a retry after a lost answer) counts once
        per_batch: dict[str, int] = {}
        for rec in self.app.request_records():
            handle, _, seq = rec["reference"].partition("#")
            if handle == upload.handle and rec["kind"] in ("add", "remove"):
                per_batch[seq] = rec["records"]
        return sum(per_batch.values())

    def set_processing_delay(self, seconds: float) -> None:
        self.app.processing_seconds = float(seconds)

    def reset_faults(self) -> None:
        self.app.clear_faults()
