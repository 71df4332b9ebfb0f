"""Google's Data Manager API (v1) emulated over gRPC, for the real ``google-ads-datamanager`` client.

Serves what the ``google_datamanager`` destination uses: ``UserListService`` (list, get, create, delete
Customer Match lists of a Google Ads account) and ``IngestionService`` (IngestAudienceMembers,
RemoveAudienceMembers, RemoveAllAudienceMembers, RetrieveRequestStatus). Behaviour follows Google's
documentation, cited where it is used:

- limits per request (https://developers.google.com/data-manager/api/limits): at most 10,000 audience
  members per request and 10 user identifiers per member (``TOO_MANY_AUDIENCE_MEMBERS``,
  ``TOO_MANY_USER_IDENTIFIERS``), at most 10 destinations;
- a malformed member fails the whole request with ``INVALID_ARGUMENT`` and a ``google.rpc.BadRequest``
  naming it (``audience_members.audience_members[i]``, reason ``INVALID_SHA256_FORMAT``), beside a
  ``google.rpc.ErrorInfo`` of domain ``datamanager.googleapis.com`` (quickstart "Send audience members",
  failure responses); nothing of a rejected request is applied;
- the Customer Match terms must be accepted on an ingestion (``terms_of_service``, upload-data guide),
  a consent of ``CONSENT_DENIED`` fails the upload (Google's EU user consent policy for Customer Match);
- a list's display name is unique among the account's lists (create-audience guide:
  ``DISPLAY_NAME_ALREADY_USED``); ``membership_duration`` is whole days, at most 540;
- a request is ``PROCESSING`` after it was accepted, then ``SUCCESS`` with its counts
  (``RetrieveRequestStatus``); here processing takes :attr:`processing_seconds` (0: at once), while
  membership changes apply when the request is accepted;
- ``RemoveAllAudienceMembers`` removes the members last added before ``remove_as_of_time`` (all of them
  when unset); a time in the future fails with ``INVALID_REMOVE_AS_OF_TIME``.

A member is kept as the set of identifiers it was ingested with; a removal takes off the member with
exactly those identifiers (Google matches on its side, which the sandbox does not model).

Errors carry the real shape: the gRPC status, and a ``grpc-status-details-bin`` trailer holding a
``google.rpc.Status`` with ``ErrorInfo`` (reason = the Data Manager ``ErrorReason`` name) and, for bad
members, ``BadRequest``; the client library turns them into ``google.api_core`` exceptions with
``.details`` and ``.reason``. Fault rules (``method="RPC"``) answer the rule's ``code`` (a gRPC status
number) with ``subcode`` as the ``ErrorReason`` number.

No Airflow imports here (the sandbox runs in a plain Python process).
"""

from __future__ import annotations

import base64
import copy
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.ads.datamanager_v1.types import (
    audience,
    consent,
    destination,
    error,
    ingestion_service,
    request_status_per_destination,
    terms_of_service,
    user_list,
    user_list_service,
)
from google.protobuf import any_pb2, empty_pb2
from google.rpc import error_details_pb2, status_pb2

from audience_sync.sandbox.base import FaultRule, Journal, SandboxRequest, SandboxResponse
from audience_sync.sandbox.grpc_host import GrpcApp, Rpc, RpcAbort, RpcCall

PACKAGE = "google.ads.datamanager.v1"
INGESTION = f"{PACKAGE}.IngestionService"
USER_LISTS = f"{PACKAGE}.UserListService"
DOMAIN = "datamanager.googleapis.com"
STATUS_TRAILER = "grpc-status-details-bin"

MAX_MEMBERS = 10_000
MAX_IDENTIFIERS = 10
MAX_DESTINATIONS = 10
MAX_MEMBERSHIP_DAYS = 540
LIST_PAGE_DEFAULT = 50
LIST_PAGE_MAX = 1000
FIRST_LIST_ID = 9_100_000_001
DAY = 86_400

_HEX = re.compile(r"[0-9a-f]{64}")
_REGION = re.compile(r"[A-Z]{2}")
_PARENT = re.compile(r"accountTypes/GOOGLE_ADS/accounts/(\d+)")
_LIST_NAME = re.compile(r"accountTypes/GOOGLE_ADS/accounts/(\d+)/userLists/(\d+)")

Reason = error.ErrorReason
RequestStatus = request_status_per_destination.RequestStatusPerDestination
Member = tuple[tuple[str, str], ...]


def list_path(account: str, list_id: int | str) -> str:
    return f"accountTypes/GOOGLE_ADS/accounts/{account}/userLists/{list_id}"


def rpc_error(
    code: grpc.StatusCode,
    reason: str,
    message: str,
    violations: Sequence[tuple[str, str, str]] = (),
) -> RpcAbort:
    """An error as Data Manager sends it: status, ErrorInfo(reason) and a BadRequest of
    ``(field, reason, description)`` violations, in the ``grpc-status-details-bin`` trailer."""
    status = status_pb2.Status(code=code.value[0], message=message)
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN))
    status.details.append(info)
    if violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, reason=r, description=d)
                for f, r, d in violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        status.details.append(packed)
    return RpcAbort(code, message, [(STATUS_TRAILER, status.SerializeToString())])


def _invalid(reason: Reason, message: str, violations: Sequence[tuple[str, str, str]] = ()) -> RpcAbort:
    return rpc_error(grpc.StatusCode.INVALID_ARGUMENT, reason.name, message, violations)


@dataclass
class ListState:
    """One Customer Match user list and its members (identifier pairs -> time last added)."""

    id: int
    account: str
    display_name: str
    description: str = ""
    membership_days: int = MAX_MEMBERSHIP_DAYS
    deleted: bool = False
    members: dict[Member, float] = field(default_factory=dict)

    def to_proto(self) -> user_list.UserList:
        size = len(self.members)
        return user_list.UserList(
            name=list_path(self.account, self.id),
            id=self.id,
            display_name=self.display_name,
            description=self.description,
            membership_status=user_list.UserList.MembershipStatus.OPEN,
            membership_duration={"seconds": self.membership_days * DAY},
            access_reason=user_list.UserList.AccessReason.OWNED,
            size_info=user_list.SizeInfo(
                display_network_members_count=size, search_network_members_count=size
            ),
            ingested_user_list_info=user_list.IngestedUserListInfo(
                upload_key_types=[user_list.IngestedUserListInfo.UploadKeyType.CONTACT_ID]
            ),
        )

    def dump(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "account": self.account,
            "display_name": self.display_name,
            "description": self.description,
            "membership_days": self.membership_days,
            "deleted": self.deleted,
            "members": [[list(map(list, m)), t] for m, t in self.members.items()],
        }

    @classmethod
    def load(cls, data: dict[str, Any]) -> ListState:
        members = {tuple(tuple(p) for p in m): float(t) for m, t in data.get("members", [])}
        return cls(
            id=int(data["id"]),
            account=str(data["account"]),
            display_name=str(data["display_name"]),
            description=str(data.get("description", "")),
            membership_days=int(data.get("membership_days", MAX_MEMBERSHIP_DAYS)),
            deleted=bool(data.get("deleted", False)),
            members=members,  # type: ignore[arg-type]
        )


@dataclass
class RequestRecord:
    """One accepted ingestion request, as RetrieveRequestStatus reports it."""

    request_id: str
    kind: str  # add | remove | remove_all
    account: str
    list_id: int
    reference: str
    created: float
    records: int = 0
    identifiers: int = 0

    def dump(self) -> dict[str, Any]:
        return dict(self.__dict__)


class DataManagerSandbox(GrpcApp):
    """Thread-safe Data Manager state plus the gRPC handlers.

    :param access_token: the only bearer token calls may carry (``authorization`` metadata); None
        accepts any call.
    """

    platform = "google_datamanager"

    def __init__(
        self,
        access_token: str | None = "sandbox-token",
        *,
        clock: Callable[[], float] = time.time,
        journal: Journal | None = None,
    ) -> None:
        super().__init__(journal)
        self.access_token = access_token
        self.clock = clock
        #: how long an accepted request reports PROCESSING before SUCCESS (0: at once)
        self.processing_seconds = 0.0
        self._lock = threading.RLock()
        self._lists: dict[int, ListState] = {}
        self._requests: dict[str, RequestRecord] = {}
        self._next_id = FIRST_LIST_ID

    # ------------------------------------------------------------------ helpers for tests/demo

    def user_lists(self, account: str | None = None) -> list[dict[str, Any]]:
        """Live lists (optionally of one account) with their member counts."""
        with self._lock:
            return [
                {"id": str(s.id), "name": s.display_name, "account": s.account, "size": len(s.members)}
                for s in self._lists.values()
                if not s.deleted and (account is None or s.account == account)
            ]

    def members(self, list_id: str | int) -> list[Member]:
        """The list's members, each as its (identifier, value) pairs. KeyError when unknown."""
        with self._lock:
            return list(self._live(int(list_id)).members)

    def create_list(self, account: str, name: str, *, membership_days: int = MAX_MEMBERSHIP_DAYS) -> str:
        """Create a list as if made in the Google Ads UI; returns its id. Names are not checked for
        uniqueness here, so a test can set up what the API itself would refuse."""
        with self._lock:
            state = self._new_list(account, name, "", membership_days)
        self.journal.changed()
        return str(state.id)

    def delete_list(self, list_id: str | int) -> None:
        with self._lock:
            self._live(int(list_id)).deleted = True
        self.journal.changed()

    def request_records(self, list_id: str | int | None = None) -> list[dict[str, Any]]:
        """Accepted ingestion requests (optionally of one list), oldest first."""
        with self._lock:
            return [
                r.dump()
                for r in sorted(self._requests.values(), key=lambda r: r.created)
                if list_id is None or r.list_id == int(list_id)
            ]

    def forget(self) -> None:
        with self._lock:
            self._lists.clear()
            self._requests.clear()

    def inspect(self, request: SandboxRequest, subpath: list[str]) -> SandboxResponse | None:
        """``GET /_sandbox/google_datamanager/user_lists[?account=]``, ``.../user_lists/<id>/members``,
        ``GET .../requests``, ``POST .../processing {"seconds": n}`` (how long requests stay PROCESSING)."""
        method = request.method
        if subpath == ["user_lists"] and method == "GET":
            return SandboxResponse(200, {"data": self.user_lists(request.query.get("account") or None)})
        if subpath == ["requests"] and method == "GET":
            return SandboxResponse(200, {"data": self.request_records(request.query.get("list_id") or None)})
        if subpath == ["processing"] and method == "POST":
            body = request.json_body if isinstance(request.json_body, dict) else dict(request.form)
            self.processing_seconds = float(body.get("seconds", 0))
            return SandboxResponse(200, {"processing_seconds": self.processing_seconds}, mutated=True)
        if len(subpath) == 3 and subpath[0] == "user_lists" and subpath[2] == "members" and method == "GET":
            try:
                members = [dict(m) for m in self.members(subpath[1])]
            except (KeyError, ValueError):
                return SandboxResponse(404, {"error": {"message": f"no user list {subpath[1]}"}})
            return SandboxResponse(200, {"list_id": subpath[1], "count": len(members), "members": members})
        return None

    # ------------------------------------------------------------------ persistence

    def dump_state(self) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(
                {
                    "next_id": self._next_id,
                    "processing_seconds": self.processing_seconds,
                    "lists": [s.dump() for s in self._lists.values()],
                    "requests": [r.dump() for r in self._requests.values()],
                }
            )

    def load_state(self, state: dict[str, Any]) -> None:
        with self._lock:
            self._next_id = int(state.get("next_id", FIRST_LIST_ID))
            self.processing_seconds = float(state.get("processing_seconds", 0.0))
            self._lists = {int(d["id"]): ListState.load(d) for d in state.get("lists", [])}
            self._requests = {d["request_id"]: RequestRecord(**d) for d in state.get("requests", [])}

    # ------------------------------------------------------------------ gRPC

    def rpcs(self) -> list[Rpc]:
        ing, uls = ingestion_service, user_list_service
        return [
            Rpc(
                USER_LISTS,
                "ListUserLists",
                self._list,
                *_wire(uls.ListUserListsRequest, uls.ListUserListsResponse),
            ),
            Rpc(USER_LISTS, "GetUserList", self._get, *_wire(uls.GetUserListRequest, user_list.UserList)),
            Rpc(
                USER_LISTS,
                "CreateUserList",
                self._create,
                *_wire(uls.CreateUserListRequest, user_list.UserList),
            ),
            Rpc(USER_LISTS, "DeleteUserList", self._delete, uls.DeleteUserListRequest.deserialize, _empty),
            Rpc(
                INGESTION,
                "IngestAudienceMembers",
                self._ingest,
                *_wire(ing.IngestAudienceMembersRequest, ing.IngestAudienceMembersResponse),
            ),
            Rpc(
                INGESTION,
                "RemoveAudienceMembers",
                self._remove,
                *_wire(ing.RemoveAudienceMembersRequest, ing.RemoveAudienceMembersResponse),
            ),
            Rpc(
                INGESTION,
                "RemoveAllAudienceMembers",
                self._remove_all,
                *_wire(ing.RemoveAllAudienceMembersRequest, ing.RemoveAllAudienceMembersResponse),
            ),
            Rpc(
                INGESTION,
                "RetrieveRequestStatus",
                self._status,
                *_wire(ing.RetrieveRequestStatusRequest, ing.RetrieveRequestStatusResponse),
            ),
        ]

    def fault_abort(self, rule: FaultRule, call: RpcCall) -> RpcAbort:
        code = _status_code(rule.code if rule.code is not None else grpc.StatusCode.UNAVAILABLE.value[0])
        message = rule.message or f"sandbox fault {rule.id}"
        if rule.subcode is None:  # a bare status, as a proxy or a dropped backend answers
            return RpcAbort(code, message)
        return rpc_error(code, Reason(rule.subcode).name, message)

    # ------------------------------------------------------------------ user lists

    def _list(self, req: user_list_service.ListUserListsRequest, call: RpcCall) -> Any:
        self._check_token(call)
        account = self._parent(req.parent)
        if req.filter:
            raise _invalid(Reason.INVALID_FILTER, "the sandbox does not evaluate filters; list all pages")
        size = min(req.page_size or LIST_PAGE_DEFAULT, LIST_PAGE_MAX)
        after = _decode_token(req.page_token) if req.page_token else 0
        with self._lock:
            mine = sorted(
                (s for s in self._lists.values() if s.account == account and not s.deleted and s.id > after),
                key=lambda s: s.id,
            )
            page = mine[:size]
            more = len(mine) > size
            answer = user_list_service.ListUserListsResponse(user_lists=[s.to_proto() for s in page])
        if more:
            answer.next_page_token = _encode_token(page[-1].id)
        return answer

    def _get(self, req: user_list_service.GetUserListRequest, call: RpcCall) -> Any:
        self._check_token(call)
        with self._lock:
            return self._by_name(req.name).to_proto()

    def _create(self, req: user_list_service.CreateUserListRequest, call: RpcCall) -> Any:
        self._check_token(call)
        account = self._parent(req.parent)
        ul = req.user_list
        name = ul.display_name.strip()
        if not name:
            raise _invalid(
                Reason.REQUIRED_FIELD_MISSING,
                "display_name is required",
                [("user_list.display_name", "REQUIRED_FIELD_MISSING", "")],
            )
        seconds = (
            int(ul.membership_duration.total_seconds())
            if "membership_duration" in ul
            else MAX_MEMBERSHIP_DAYS * DAY
        )
        if seconds % DAY or seconds <= 0:
            raise _invalid(Reason.INVALID_ARGUMENT, "membership_duration must be a whole number of days")
        if seconds > MAX_MEMBERSHIP_DAYS * DAY:
            raise _invalid(
                Reason.MEMBERSHIP_DURATION_TOO_LONG, f"membership_duration above {MAX_MEMBERSHIP_DAYS} days"
            )
        keys = list(ul.ingested_user_list_info.upload_key_types)
        if keys != [user_list.IngestedUserListInfo.UploadKeyType.CONTACT_ID]:
            raise _invalid(
                Reason.UNSUPPORTED_USER_LIST_UPLOAD_KEY_TYPES,
                "the sandbox serves contact-info Customer Match lists: upload_key_types [CONTACT_ID]",
            )
        with self._lock:
            if any(
                s.display_name == name for s in self._lists.values() if s.account == account and not s.deleted
            ):
                raise _invalid(Reason.DISPLAY_NAME_ALREADY_USED, f"a user list named {name!r} already exists")
            if req.validate_only:
                return ul
            state = self._new_list(account, name, ul.description, seconds // DAY)
            call.mutated = True
            call.log["list_id"] = str(state.id)
            return state.to_proto()

    def _delete(self, req: user_list_service.DeleteUserListRequest, call: RpcCall) -> Any:
        self._check_token(call)
        with self._lock:
            state = self._by_name(req.name)
            if not req.validate_only:
                state.deleted = True
                call.mutated = True
        return empty_pb2.Empty()

    # ------------------------------------------------------------------ ingestion

    def _ingest(self, req: ingestion_service.IngestAudienceMembersRequest, call: RpcCall) -> Any:
        self._check_token(call)
        tos = req.terms_of_service.customer_match_terms_of_service_status
        if tos != terms_of_service.TermsOfServiceStatus.ACCEPTED:
            raise _invalid(
                Reason.TERMS_AND_CONDITIONS_NOT_SIGNED,
                "the Customer Match terms of service must be accepted (terms_of_service)",
            )
        denied = consent.ConsentStatus.CONSENT_DENIED
        if denied in (req.consent.ad_user_data, req.consent.ad_personalization):
            raise _invalid(
                Reason.INVALID_ARGUMENT,
                "consent is DENIED: the data cannot be used for Customer Match",
                [("consent", "INVALID_ARGUMENT", "ad_user_data and ad_personalization must not be DENIED")],
            )
        return self._members_request(req, call, "add", check_consent=True)

    def _remove(self, req: ingestion_service.RemoveAudienceMembersRequest, call: RpcCall) -> Any:
        self._check_token(call)
        return self._members_request(req, call, "remove", check_consent=False)

    def _members_request(self, req: Any, call: RpcCall, kind: str, *, check_consent: bool) -> Any:
        targets = self._destinations(req.destinations)
        n = len(req.audience_members)
        if n == 0:
            raise _invalid(Reason.REQUIRED_FIELD_MISSING, "audience_members is required")
        if n > MAX_MEMBERS:
            raise _invalid(
                Reason.TOO_MANY_AUDIENCE_MEMBERS, f"{n} audience members; at most {MAX_MEMBERS} per request"
            )
        if req.encoding not in (ingestion_service.Encoding.HEX, ingestion_service.Encoding.BASE64):
            raise _invalid(
                Reason.REQUIRED_FIELD_MISSING,
                "encoding is required for UserData uploads",
                [("encoding", "REQUIRED_FIELD_MISSING", "")],
            )
        members: list[Member] = []
        violations: list[tuple[str, str, str]] = []
        for i, m in enumerate(req.audience_members):
            at = f"audience_members.audience_members[{i}]"
            try:
                if check_consent and consent.ConsentStatus.CONSENT_DENIED in (
                    m.consent.ad_user_data,
                    m.consent.ad_personalization,
                ):
                    raise _Bad("INVALID_ARGUMENT", "consent DENIED")
                members.append(_member(m, req.encoding))
            except _Bad as bad:
                violations.append((at, bad.reason, bad.description))
        if violations:
            raise _invalid(Reason.INVALID_ARGUMENT, "There was a problem with the request.", violations)
        now = self.clock()
        request_id = str(uuid.uuid4())
        with self._lock:
            for state, ref in targets:
                for member in members:
                    if kind == "add":
                        state.members[member] = now
                    else:
                        state.members.pop(member, None)
                self._requests[request_id] = RequestRecord(
                    request_id,
                    kind,
                    state.account,
                    state.id,
                    ref,
                    now,
                    records=n,
                    identifiers=sum(len(m) for m in members),
                )
        call.mutated = True
        call.log.update(op=kind, rows=n, request_id=request_id)
        if kind == "add":  # each member's consent: its own, else the request's (which it overrides)
            call.log["consent"] = dict(Counter(_consent_of(m, req.consent) for m in req.audience_members))
        if kind == "add":
            return ingestion_service.IngestAudienceMembersResponse(request_id=request_id)
        return ingestion_service.RemoveAudienceMembersResponse(request_id=request_id)

    def _remove_all(self, req: ingestion_service.RemoveAllAudienceMembersRequest, call: RpcCall) -> Any:
        self._check_token(call)
        targets = self._destinations(req.destinations)
        now = self.clock()
        as_of = now
        if "remove_as_of_time" in req:
            as_of = req.remove_as_of_time.timestamp()
            if as_of > now + 1.0:  # a second of slack for clocks
                raise _invalid(
                    Reason.INVALID_REMOVE_AS_OF_TIME, "remove_as_of_time must not be in the future"
                )
        if req.validate_only:
            return ingestion_service.RemoveAllAudienceMembersResponse()
        request_id = str(uuid.uuid4())
        removed = 0
        with self._lock:
            for state, ref in targets:
                gone = [m for m, added in state.members.items() if added < as_of]
                for m in gone:
                    del state.members[m]
                removed += len(gone)
                self._requests[request_id] = RequestRecord(
                    request_id, "remove_all", state.account, state.id, ref, now, records=len(gone)
                )
        call.mutated = True
        call.log.update(op="remove_all", removed=removed, request_id=request_id)
        return ingestion_service.RemoveAllAudienceMembersResponse(request_id=request_id)

    def _status(self, req: ingestion_service.RetrieveRequestStatusRequest, call: RpcCall) -> Any:
        self._check_token(call)
        with self._lock:
            rec = self._requests.get(req.request_id)
            if rec is None:
                raise _invalid(Reason.INVALID_REQUEST_ID, f"unknown request id {req.request_id!r}")
            processing = self.clock() < rec.created + self.processing_seconds
            status = RequestStatus(
                destination=destination.Destination(
                    reference=rec.reference,
                    operating_account=destination.ProductAccount(
                        account_id=rec.account, account_type=destination.ProductAccount.AccountType.GOOGLE_ADS
                    ),
                    product_destination_id=str(rec.list_id),
                ),
                request_status=RequestStatus.RequestStatus.PROCESSING
                if processing
                else RequestStatus.RequestStatus.SUCCESS,
            )
            if rec.kind == "add":
                status.audience_members_ingestion_status = RequestStatus.IngestAudienceMembersStatus(
                    user_data_ingestion_status=RequestStatus.IngestUserDataStatus(
                        record_count=rec.records, user_identifier_count=rec.identifiers
                    )
                )
            elif rec.kind == "remove":
                status.audience_members_removal_status = RequestStatus.RemoveAudienceMembersStatus(
                    user_data_removal_status=RequestStatus.RemoveUserDataStatus(
                        record_count=rec.records, user_identifier_count=rec.identifiers
                    )
                )
            else:
                status.remove_all_audience_members_status = RequestStatus.RemoveAllAudienceMembersStatus()
        return ingestion_service.RetrieveRequestStatusResponse(request_status_per_destination=[status])

    # ------------------------------------------------------------------ checks

    def _check_token(self, call: RpcCall) -> None:
        if self.access_token is None:
            return
        given = call.metadata.get("authorization")
        if given != f"Bearer {self.access_token}":
            raise rpc_error(
                grpc.StatusCode.UNAUTHENTICATED,
                "ACCESS_TOKEN_INVALID",
                "Request had invalid authentication credentials. Expected OAuth 2 access token.",
            )

    def _parent(self, parent: str) -> str:
        match = _PARENT.fullmatch(parent or "")
        if match is None:
            raise _invalid(
                Reason.INVALID_RESOURCE_NAME,
                f"parent {parent!r} is not accountTypes/GOOGLE_ADS/accounts/<id>",
            )
        return match.group(1)

    def _by_name(self, name: str) -> ListState:
        match = _LIST_NAME.fullmatch(name or "")
        if match is None:
            raise _invalid(Reason.INVALID_RESOURCE_NAME, f"{name!r} is not a user list resource name")
        state = self._lists.get(int(match.group(2)))
        if state is None or state.deleted or state.account != match.group(1):
            raise rpc_error(grpc.StatusCode.NOT_FOUND, Reason.NOT_FOUND.name, f"user list {name} not found")
        return state

    def _destinations(self, dests: Sequence[destination.Destination]) -> list[tuple[ListState, str]]:
        """Every destination must be a live list of its Google Ads operating account."""
        if not dests:
            raise _invalid(Reason.REQUIRED_FIELD_MISSING, "destinations is required")
        if len(dests) > MAX_DESTINATIONS:
            raise _invalid(
                Reason.TOO_MANY_DESTINATIONS, f"at most {MAX_DESTINATIONS} destinations per request"
            )
        google_ads = destination.ProductAccount.AccountType.GOOGLE_ADS
        out: list[tuple[ListState, str]] = []
        with self._lock:
            for i, d in enumerate(dests):
                at = f"destinations[{i}]"
                account = d.operating_account
                if account.account_type != google_ads or not account.account_id.isdigit():
                    raise _invalid(
                        Reason.INVALID_DESTINATION,
                        "operating_account must be a GOOGLE_ADS account id (digits)",
                        [(f"{at}.operating_account", "INVALID_DESTINATION", "")],
                    )
                pid = d.product_destination_id
                state = self._lists.get(int(pid)) if pid.isdigit() else None
                if state is None or state.deleted or state.account != account.account_id:
                    raise _invalid(
                        Reason.INVALID_USER_LIST_ID,
                        f"user list {pid!r} is not a list of account {account.account_id}",
                        [(f"{at}.product_destination_id", "INVALID_USER_LIST_ID", "")],
                    )
                out.append((state, d.reference))
        return out

    def _live(self, list_id: int) -> ListState:
        state = self._lists.get(list_id)
        if state is None or state.deleted:
            raise KeyError(f"no user list {list_id}")
        return state

    def _new_list(self, account: str, name: str, description: str, days: int) -> ListState:
        state = ListState(self._next_id, str(account), name, description, days)
        self._lists[state.id] = state
        self._next_id += 1
        return state


class _Bad(Exception):
    def __init__(self, reason: str, description: str = "") -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description


def _hashed(value: str, encoding: int, what: str) -> str:
    """A SHA-256 value as sent: 64 lowercase hex chars (HEX) or 32 bytes of base64 (BASE64)."""
    if encoding == ingestion_service.Encoding.BASE64:
        try:
            raw = base64.b64decode(value, validate=True)
        except ValueError:
            raise _Bad("INVALID_BASE64_ENCODING", f"{what} is not base64 encoded") from None
        if len(raw) != 32:
            raise _Bad("INVALID_SHA256_FORMAT", f"{what} is not a SHA-256 hash")
        return raw.hex()
    if not _HEX.fullmatch(value):
        raise _Bad("INVALID_SHA256_FORMAT", f"{what} is not a hex-encoded SHA-256 hash")
    return value


def _member(m: audience.AudienceMember, encoding: int) -> Member:
    """The member's identifier pairs (sorted), or :class:`_Bad` naming why it is not valid."""
    if audience.AudienceMember.pb(m).WhichOneof("data") != "user_data":
        raise _Bad("INVALID_AUDIENCE_MEMBER", "the sandbox serves contact-info lists: user_data only")
    ids = m.user_data.user_identifiers
    if not ids:
        raise _Bad("REQUIRED_FIELD_MISSING", "user_data.user_identifiers is empty")
    if len(ids) > MAX_IDENTIFIERS:
        raise _Bad("TOO_MANY_USER_IDENTIFIERS", f"at most {MAX_IDENTIFIERS} user identifiers per member")
    pairs: list[tuple[str, str]] = []
    for ident in ids:
        kind = type(ident).pb(ident).WhichOneof("identifier")
        if kind in ("email_address", "phone_number"):
            pairs.append((kind, _hashed(getattr(ident, kind), encoding, kind)))
        elif kind == "address":
            a = ident.address
            if not (a.given_name and a.family_name and a.region_code and a.postal_code):
                raise _Bad(
                    "REQUIRED_FIELD_MISSING",
                    "address needs given_name, family_name, region_code, postal_code",
                )
            if not _REGION.fullmatch(a.region_code):
                raise _Bad("INVALID_REGION_CODE", "region_code must be an ISO-3166-1 alpha-2 code")
            pairs += [
                ("given_name", _hashed(a.given_name, encoding, "given_name")),
                ("family_name", _hashed(a.family_name, encoding, "family_name")),
                ("region_code", a.region_code),
                ("postal_code", a.postal_code),
            ]
        else:
            raise _Bad("REQUIRED_FIELD_MISSING", "a user identifier without a value")
    return tuple(sorted(pairs))


def _wire(request_cls: Any, response_cls: Any) -> tuple[Callable[[bytes], Any], Callable[[Any], bytes]]:
    return request_cls.deserialize, response_cls.serialize


def _empty(_: Any) -> bytes:
    return empty_pb2.Empty().SerializeToString()


def _status_code(number: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    raise ValueError(f"{number} is not a gRPC status code (0-16)")


def _encode_token(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"after:{last_id}".encode()).decode()


def _decode_token(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        return int(text.removeprefix("after:"))
    except ValueError:
        raise _invalid(Reason.INVALID_PAGE_TOKEN, "page_token is not valid") from None


def _consent_of(member: Any, request: Any) -> str:
    """``ad_user_data/ad_personalization`` of one member as Google applies them: the member's own status
    where it gives one, else the request's (e.g. ``GRANTED/UNSPECIFIED``)."""
    names = []
    for purpose in ("ad_user_data", "ad_personalization"):
        status = consent.ConsentStatus(getattr(member.consent, purpose) or getattr(request, purpose))
        names.append(status.name.removeprefix("CONSENT_").removeprefix("STATUS_"))
    return "/".join(names)
