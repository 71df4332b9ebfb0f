"""Google Ads API Customer Match over real gRPC, for the ``google-ads`` client (platform ``google_ads``).

Serves what the destination uses (reference §2): ``GoogleAdsService.Search``/``SearchStream`` for the
few GAQL queries :mod:`audience_sync.destinations.google_ads_api` builds, ``UserListService.MutateUserLists``
(create, remove), ``OfflineUserDataJobService`` Create/AddOperations/Run, and
``google.longrunning.Operations/GetOperation`` for the job's long-running operation.

What it enforces, with the real error codes in a ``GoogleAdsFailure`` trailer and a ``request-id``:

* a valid ``authorization: Bearer`` token when the app has one (authentication_error.OAUTH_TOKEN_*);
* one owned list per name (user_list_error.NAME_ALREADY_USED), an app id on mobile-id lists;
* per AddOfflineUserDataJobOperations request at most 100,000 identifiers, per UserData at most 20
  (TOO_MANY_USER_IDENTIFIERS); no creates and removes in one job (CONFLICTING_OPERATION); remove_all only
  as the job's first operation (INVALID_OPERATION_ORDER); nothing added after the job ran
  (JOB_ALREADY_STARTED); a job with creates needs consent that is not DENIED
  (CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS, reference §2 "Consent"); one running job per list
  (database_error.CONCURRENT_MODIFICATION on Run); an external id once per account;
* per operation (partial failure, ``operations[i]`` in the error's field path): hex SHA-256 in the
  hashed fields (INVALID_SHA256_FORMAT), identifiers that fit the list's upload key type
  (INCOMPATIBLE_UPLOAD_KEY_TYPE), at least one identifier (MISSING_USER_IDENTIFIER).

A job runs for :attr:`GoogleAdsSandbox.processing_seconds` after Run (RUNNING), then its operations
apply in order and it reads SUCCESS. Members of a list are sets of identifier (field, value) pairs; a
``remove`` drops every member sharing an identifier with it, as Google removes the matched user.

Known simplifications: every 10-digit customer exists and the token may act on all of them; a job
never expires (Google drops jobs not run within 5 days); lists have no sizes until a job completes.
"""

from __future__ import annotations

import itertools
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, empty_pb2
from google.rpc import status_pb2

from audience_sync.destinations.google_ads_api import (
    KEY_TYPE_FIELDS,
    MAX_IDENTIFIERS_PER_REQUEST,
    SERVICE_PREFIX,
    CrmBasedUserListInfo,
    CustomerMatchUserListMetadata,
    GoogleAdsFailure,
    OfflineUserDataJob,
    OfflineUserDataJobMetadata,
    UserList,
    ads_service,
    job_service,
    user_list_service,
)
from audience_sync.sandbox.base import FaultRule, SandboxRequest, SandboxResponse
from audience_sync.sandbox.google_ads_wire import (
    Member,
    Problem,
    abort,
    apply_ops,
    fail,
    failure,
    parse_query,
    problem,
    read_user_data,
)
from audience_sync.sandbox.grpc_host import GrpcApp, Rpc, RpcAbort, RpcCall

PLATFORM = "google_ads"
#: rows per Search page; the API fixes it at 10,000 (page_size is not settable)
PAGE_SIZE = 10_000
_CUSTOMER = re.compile(r"\d{10}")
_JOB_NAME = re.compile(r"customers/(\d+)/offlineUserDataJobs/(\d+)")
_LIST_NAME = re.compile(r"customers/(\d+)/userLists/(\d+)")
_OPERATION_NAME = re.compile(r"(customers/\d+/offlineUserDataJobs/\d+)/operations/\d+")
_JOB_ERROR = "offline_user_data_job_error."


class GoogleAdsSandbox(GrpcApp):
    """The Google Ads app: user lists and offline user data jobs per customer, in memory.

    :param access_token: the only OAuth token calls may carry (``None``: any or none).
    :param processing_seconds: how long a job runs after Run before it reads SUCCESS.
    """

    platform = PLATFORM

    def __init__(
        self,
        *,
        access_token: str | None = None,
        processing_seconds: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.access_token = access_token
        self.processing_seconds = processing_seconds
        self.clock = clock
        self._lock = threading.RLock()
        self.forget()

    # ------------------------------------------------------------------ state
    def forget(self) -> None:
        with self._lock:
            self.lists: dict[int, dict[str, Any]] = {}
            self.jobs: dict[int, dict[str, Any]] = {}
            self._ids = itertools.count(1000)

    def dump_state(self) -> dict[str, Any]:
        with self._lock:
            lists = [{**ul, "members": [sorted(m) for m in ul["members"]]} for ul in self.lists.values()]
            jobs = [{**j, "ops": [[k, sorted(m)] for k, m in j["ops"]]} for j in self.jobs.values()]
            next_id = max([1000, *self.lists, *self.jobs]) + 1
            return {
                "lists": lists,
                "jobs": jobs,
                "next_id": next_id,
                "processing_seconds": self.processing_seconds,
            }

    def load_state(self, state: dict[str, Any]) -> None:
        with self._lock:
            self.forget()
            for ul in state.get("lists", []):
                self.lists[int(ul["id"])] = {
                    **ul,
                    "members": {frozenset(map(tuple, m)) for m in ul["members"]},
                }
            for job in state.get("jobs", []):
                self.jobs[int(job["id"])] = {
                    **job,
                    "ops": [(k, frozenset(map(tuple, m))) for k, m in job["ops"]],
                }
            self._ids = itertools.count(int(state.get("next_id", 1000)))
            self.processing_seconds = float(state.get("processing_seconds", self.processing_seconds))

    # ------------------------------------------------------------ inspection (tests, demo)
    def create_list(
        self,
        customer_id: str,
        name: str,
        *,
        key_type: str = "CONTACT_INFO",
        access_reason: str = "OWNED",
        list_type: str = "CRM_BASED",
        app_id: str = "",
    ) -> int:
        """A list made outside our code (the Google Ads UI, another tool, or shared with the account)."""
        with self._lock:
            list_id = self._new_list(customer_id, name, key_type, access_reason, list_type, app_id)
        self.journal.changed()
        return list_id

    def _new_list(
        self, customer_id: str, name: str, key_type: str, access_reason: str, list_type: str, app_id: str
    ) -> int:
        list_id = next(self._ids)
        self.lists[list_id] = {
            "id": list_id,
            "customer": customer_id,
            "name": name,
            "description": "",
            "life_span": 540,
            "key_type": key_type,
            "app_id": app_id,
            "access_reason": access_reason,
            "type": list_type,
            "members": set(),
        }
        return list_id

    def members(self, list_id: int | str) -> set[Member]:
        self._settled()
        with self._lock:
            ul = self.lists.get(int(list_id))
            return set(ul["members"]) if ul else set()

    def job(self, resource_name: str) -> dict[str, Any] | None:
        """The job with this resource name (its ``ops``, ``status``, ...), or None."""
        self._settled()
        with self._lock:
            m = _JOB_NAME.fullmatch(resource_name)
            job = self.jobs.get(int(m.group(2))) if m else None
            return job if job is not None and m is not None and job["customer"] == m.group(1) else None

    def job_received(self, resource_name: str) -> int:
        """Distinct member operations in the job: a re-sent request repeats operations that Google
        applies as one (the same user added twice is one member), so they count once."""
        job = self.job(resource_name)
        return len({op for op in job["ops"] if op[0] != "remove_all"}) if job else 0

    def inspect(self, request: SandboxRequest, subpath: list[str]) -> SandboxResponse | None:
        """``POST /_sandbox/google_ads/processing {"seconds": s}``: how long jobs run from now on;
        ``GET .../lists[?customer=]`` and ``GET .../lists/<id>/members``: what Google holds."""
        if subpath == ["processing"] and request.method == "POST":
            body = request.json_body if isinstance(request.json_body, dict) else dict(request.form)
            self.processing_seconds = float(body.get("seconds", 0))
            return SandboxResponse(200, {"processing_seconds": self.processing_seconds}, mutated=True)
        if request.method != "GET" or not subpath or subpath[0] != "lists":
            return None
        if len(subpath) == 1:
            customer = request.query.get("customer")
            self._settled()
            with self._lock:
                found = [
                    {k: v for k, v in ul.items() if k != "members"} | {"size": len(ul["members"])}
                    for ul in self.lists.values()
                    if customer in (None, ul["customer"])
                ]
            return SandboxResponse(200, {"data": found})
        if len(subpath) == 3 and subpath[2] == "members" and subpath[1].isdigit():
            held = [dict(m) for m in self.members(subpath[1])]
            return SandboxResponse(200, {"count": len(held), "members": held})
        return None

    # ------------------------------------------------------------------ gRPC
    def rpcs(self) -> list[Rpc]:
        ads, lists, jobs = (
            f"{SERVICE_PREFIX}.{name}"
            for name in ("GoogleAdsService", "UserListService", "OfflineUserDataJobService")
        )
        ops = operations_pb2.Operation.SerializeToString
        return [
            Rpc(ads, "Search", self._search, ads_service.SearchGoogleAdsRequest.deserialize,
                ads_service.SearchGoogleAdsResponse.serialize),
            Rpc(ads, "SearchStream", self._search_stream,
                ads_service.SearchGoogleAdsStreamRequest.deserialize,
                ads_service.SearchGoogleAdsStreamResponse.serialize, streaming=True),
            Rpc(lists, "MutateUserLists", self._mutate_user_lists,
                user_list_service.MutateUserListsRequest.deserialize,
                user_list_service.MutateUserListsResponse.serialize),
            Rpc(jobs, "CreateOfflineUserDataJob", self._create_job,
                job_service.CreateOfflineUserDataJobRequest.deserialize,
                job_service.CreateOfflineUserDataJobResponse.serialize),
            Rpc(jobs, "AddOfflineUserDataJobOperations", self._add_operations,
                job_service.AddOfflineUserDataJobOperationsRequest.deserialize,
                job_service.AddOfflineUserDataJobOperationsResponse.serialize),
            Rpc(jobs, "RunOfflineUserDataJob", self._run_job,
                job_service.RunOfflineUserDataJobRequest.deserialize, ops),
            Rpc("google.longrunning.Operations", "GetOperation", self._get_operation,
                operations_pb2.GetOperationRequest.FromString, ops),
        ]  # fmt: skip

    def fault_abort(self, rule: FaultRule, call: RpcCall) -> RpcAbort:
        """A rule whose ``headers`` name ``error: <category>.<NAME>`` answers that GoogleAdsFailure
        (status: the rule's ``code`` as a gRPC status number, else the category's usual one)."""
        named = rule.headers.get("error")
        if not named:
            return super().fault_abort(rule, call)
        status = next((c for c in grpc.StatusCode if c.value[0] == rule.code), None)
        return abort(problem(named, rule.message or f"sandbox fault {rule.id}"), status=status)

    # ------------------------------------------------------------------ GoogleAdsService
    def _search(self, request: Any, call: RpcCall) -> Any:
        rows = self._query(request.customer_id, request.query, call)
        if request.page_token and not request.page_token.isdigit():
            raise fail("request_error.INVALID_PAGE_TOKEN", "bad page token", "page_token")
        start = int(request.page_token or 0)
        more = start + PAGE_SIZE < len(rows)
        return ads_service.SearchGoogleAdsResponse(
            results=rows[start : start + PAGE_SIZE],
            next_page_token=str(start + PAGE_SIZE) if more else "",
            total_results_count=len(rows) if request.search_settings.return_total_results_count else 0,
        )

    def _search_stream(self, request: Any, call: RpcCall) -> Iterator[Any]:
        rows = self._query(request.customer_id, request.query, call)
        request_id = secrets.token_hex(8)
        for start in range(0, max(len(rows), 1), PAGE_SIZE):
            yield ads_service.SearchGoogleAdsStreamResponse(
                results=rows[start : start + PAGE_SIZE], request_id=request_id
            )

    def _query(self, customer_id: str, query: str, call: RpcCall) -> list[Any]:
        customer = self._customer(customer_id, call)
        resource, wanted = parse_query(query)
        with self._lock:
            if self._settle():
                call.mutated = True
            if resource == "user_list":
                return [
                    ads_service.GoogleAdsRow(user_list=self._user_list(ul))
                    for ul in sorted(self.lists.values(), key=lambda u: u["id"])
                    if ul["customer"] == customer and _list_matches(ul, wanted)
                ]
            if resource == "offline_user_data_job":
                return [
                    ads_service.GoogleAdsRow(offline_user_data_job=self._job_resource(j))
                    for j in sorted(self.jobs.values(), key=lambda j: j["id"])
                    if j["customer"] == customer and _job_matches(j, wanted)
                ]
        raise fail("query_error.INVALID_RESOURCE_NAME", f"the sandbox does not serve {resource}", "query")

    # ------------------------------------------------------------------ UserListService
    def _mutate_user_lists(self, request: Any, call: RpcCall) -> Any:
        customer = self._customer(request.customer_id, call)
        results = []
        with self._lock:
            for i, op in enumerate(request.operations):
                which = type(op).pb(op).WhichOneof("operation")
                if which == "create":
                    results.append(self._create_list(customer, op.create, i))
                elif which == "remove":
                    m = _LIST_NAME.fullmatch(op.remove)
                    ul = self.lists.get(int(m.group(2))) if m and m.group(1) == customer else None
                    if ul is None:
                        raise fail(
                            "mutate_error.RESOURCE_NOT_FOUND", "no such list", ("operations", i), "remove"
                        )
                    del self.lists[ul["id"]]
                    results.append(user_list_service.MutateUserListResult(resource_name=op.remove))
                else:
                    message = f"{which} is not emulated"
                    raise fail("user_list_error.USER_LIST_MUTATE_NOT_SUPPORTED", message, ("operations", i))
            call.mutated = True
        return user_list_service.MutateUserListsResponse(results=results)

    def _create_list(self, customer: str, ul: Any, i: int) -> Any:
        at = (("operations", i), "create")
        key_type = ul.crm_based_user_list.upload_key_type.name
        app_id = ul.crm_based_user_list.app_id
        if not ul.name.strip():
            raise fail("user_list_error.INVALID_NAME", "name required", *at, "name")
        if key_type not in KEY_TYPE_FIELDS:
            raise fail("field_error.REQUIRED", "upload_key_type required", *at, "crm_based_user_list")
        if key_type == "MOBILE_ADVERTISING_ID" and not app_id:
            raise fail("user_list_error.APP_ID_NOT_SET", "app_id required", *at)
        if key_type != "MOBILE_ADVERTISING_ID" and app_id:
            raise fail("user_list_error.APP_ID_NOT_ALLOWED", "app_id only for mobile ids", *at)
        if not 0 <= ul.membership_life_span <= 540:
            raise fail("range_error.TOO_HIGH", "membership_life_span is 0..540", *at, "membership_life_span")
        if any(
            u["customer"] == customer and u["name"] == ul.name and u["access_reason"] == "OWNED"
            for u in self.lists.values()
        ):
            message = "Name is already being used for another user list for the account."
            raise fail("user_list_error.NAME_ALREADY_USED", message, *at, "name")
        list_id = self._new_list(customer, ul.name, key_type, "OWNED", "CRM_BASED", app_id)
        self.lists[list_id].update(description=ul.description, life_span=int(ul.membership_life_span))
        return user_list_service.MutateUserListResult(
            resource_name=f"customers/{customer}/userLists/{list_id}"
        )

    # ------------------------------------------------------------------ OfflineUserDataJobService
    def _create_job(self, request: Any, call: RpcCall) -> Any:
        customer = self._customer(request.customer_id, call)
        job = request.job
        if job.type_.name != "CUSTOMER_MATCH_USER_LIST":
            raise fail(
                "field_error.INVALID_VALUE", "only CUSTOMER_MATCH_USER_LIST is emulated", "job", "type"
            )
        meta = job.customer_match_user_list_metadata
        m = _LIST_NAME.fullmatch(meta.user_list)
        external = int(job.external_id)
        with self._lock:
            ul = self.lists.get(int(m.group(2))) if m and m.group(1) == customer else None
            if ul is None or ul["access_reason"] != "OWNED":
                raise fail(_JOB_ERROR + "INVALID_USER_LIST_ID", "no such list owned by the customer", "job")
            if ul["type"] != "CRM_BASED":
                raise fail(_JOB_ERROR + "INVALID_USER_LIST_TYPE", "not a CRM-based list", "job")
            if external and any(
                j["customer"] == customer and j["external_id"] == external for j in self.jobs.values()
            ):
                raise fail(
                    _JOB_ERROR + "EXTERNAL_UPDATE_ID_ALREADY_EXISTS",
                    "external id in use",
                    "job",
                    "external_id",
                )
            if request.validate_only:
                return job_service.CreateOfflineUserDataJobResponse()
            job_id = next(self._ids)
            self.jobs[job_id] = {
                "id": job_id,
                "customer": customer,
                "list_id": ul["id"],
                "external_id": external,
                "status": "PENDING",
                "consent": [meta.consent.ad_user_data.name, meta.consent.ad_personalization.name],
                "ops": [],
                "done_at": None,
            }
            call.mutated = True
        return job_service.CreateOfflineUserDataJobResponse(
            resource_name=f"customers/{customer}/offlineUserDataJobs/{job_id}"
        )

    def _add_operations(self, request: Any, call: RpcCall) -> Any:
        self._authenticate(call)
        pb = type(request).pb(request)  # the raw message: 100,000 identifiers through proto-plus is slow
        problems: list[Problem] = []
        with self._lock:
            job = self._job_of(pb.resource_name, call)
            ops = list(pb.operations)
            kinds = [op.WhichOneof("operation") for op in ops]
            call.log.update(op=_logged_op(job, kinds), rows=sum(k not in ("remove_all", None) for k in kinds))
            if not ops:
                raise fail("field_error.REQUIRED_NONEMPTY_LIST", "operations required", "operations")
            if job["status"] != "PENDING":
                raise fail(_JOB_ERROR + "JOB_ALREADY_STARTED", "The job has already been run.")
            total = sum(len(op.create.user_identifiers) + len(op.remove.user_identifiers) for op in ops)
            if total > MAX_IDENTIFIERS_PER_REQUEST:
                message = f"{total} identifiers; at most {MAX_IDENTIFIERS_PER_REQUEST} per request"
                raise fail(_JOB_ERROR + "TOO_MANY_USER_IDENTIFIERS", message, "operations")
            self._check_job(job, kinds)
            allowed = KEY_TYPE_FIELDS[self.lists[job["list_id"]]["key_type"]]
            accepted: list[tuple[str, Member]] = []
            for i, (op, kind) in enumerate(zip(ops, kinds, strict=True)):
                if kind == "remove_all":
                    accepted.append(("remove_all", frozenset()))
                    continue
                if kind is None:
                    problems.append(problem("field_error.REQUIRED", "operation required", ("operations", i)))
                    continue
                member, found = read_user_data(getattr(op, kind), i, kind, allowed)
                problems.extend(found)
                if not found:
                    accepted.append((kind, member))
            if problems and not pb.enable_partial_failure:
                raise abort(*problems)
            if not pb.validate_only:
                job["ops"].extend(accepted)
                call.mutated = True
        response = job_service.AddOfflineUserDataJobOperationsResponse()
        if problems:
            detail = any_pb2.Any()
            detail.Pack(GoogleAdsFailure.pb(failure(problems)))
            status = status_pb2.Status(code=3, message="Multiple errors in operations.", details=[detail])
            type(response).pb(response).partial_failure_error.CopyFrom(status)
        return response

    def _check_job(self, job: dict[str, Any], kinds: list[str | None]) -> None:
        """What makes a whole request fail: remove_all not first, creates and removes mixed, consent."""
        before = [k for k, _ in job["ops"]]
        for i, kind in enumerate(kinds):
            if kind == "remove_all" and (before or i > 0):
                message = "remove_all must be the job's first operation"
                raise fail(_JOB_ERROR + "INVALID_OPERATION_ORDER", message, ("operations", i))
        seen = set(before + kinds)
        if "create" in seen and "remove" in seen:
            message = "Mixing creation and removal of offline data in the same job is not allowed."
            raise fail(_JOB_ERROR + "CONFLICTING_OPERATION", message, "operations")
        if "create" in kinds and "DENIED" in job["consent"]:
            message = "Consent DENIED on the job: the customer data terms do not allow this upload."
            raise fail(_JOB_ERROR + "CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS", message)

    def _run_job(self, request: Any, call: RpcCall) -> Any:
        self._authenticate(call)
        with self._lock:
            job = self._job_of(request.resource_name, call)
            if job["status"] != "PENDING":
                raise fail(_JOB_ERROR + "JOB_ALREADY_STARTED", "The job has already been run.")
            if any(j["list_id"] == job["list_id"] and j["status"] == "RUNNING" for j in self.jobs.values()):
                message = "Another job is running on this user list; run this one once it finished."
                raise fail("database_error.CONCURRENT_MODIFICATION", message)
            job["status"] = "RUNNING"
            job["done_at"] = self.clock() + self.processing_seconds
            call.mutated = True
            self._settle()
        return operations_pb2.Operation(name=f"{request.resource_name}/operations/{job['id']}", done=False)

    def _get_operation(self, request: Any, call: RpcCall) -> Any:
        self._authenticate(call)
        m = _OPERATION_NAME.fullmatch(request.name)
        if m is None:
            raise RpcAbort(grpc.StatusCode.NOT_FOUND, f"no operation {request.name}")
        with self._lock:
            job = self._job_of(m.group(1), call)
            done = job["status"] in ("SUCCESS", "FAILED")
            metadata = any_pb2.Any()
            metadata.Pack(
                OfflineUserDataJobMetadata.pb(OfflineUserDataJobMetadata(match_rate_range=_match_range(job)))
            )
        operation = operations_pb2.Operation(name=request.name, done=done, metadata=metadata)
        if done:
            operation.response.Pack(empty_pb2.Empty())
        return operation

    # ------------------------------------------------------------------ helpers
    def _authenticate(self, call: RpcCall) -> None:
        if self.access_token is None:
            return
        header = call.metadata.get("authorization")
        if header is None:
            raise fail("authentication_error.OAUTH_TOKEN_HEADER_INVALID", "missing OAuth token")
        if header != f"Bearer {self.access_token}":
            raise fail("authentication_error.OAUTH_TOKEN_INVALID", "Oauth token is invalid.")

    def _customer(self, customer_id: str, call: RpcCall) -> str:
        self._authenticate(call)
        if not _CUSTOMER.fullmatch(customer_id):
            raise fail("request_error.INVALID_CUSTOMER_ID", "customer id must be 10 digits", "customer_id")
        return customer_id

    def _job_of(self, resource_name: str, call: RpcCall) -> dict[str, Any]:
        m = _JOB_NAME.fullmatch(resource_name)
        job = self.jobs.get(int(m.group(2))) if m else None
        if job is None or m is None or job["customer"] != m.group(1):
            raise fail("request_error.RESOURCE_NOT_FOUND", "no such job", "resource_name")
        if self._settle():
            call.mutated = True
        return job

    def _settle(self) -> bool:
        """Finish every running job whose processing time has passed, in the order they ran; whether
        any did. Called with the lock held: the caller persists (a handler marks its call mutated)."""
        now = self.clock()
        due = [j for j in self.jobs.values() if j["status"] == "RUNNING" and j["done_at"] <= now]
        for job in sorted(due, key=lambda j: (j["done_at"], j["id"])):
            ul = self.lists.get(job["list_id"])
            if ul is not None:
                apply_ops(ul["members"], job["ops"])
            job["status"] = "SUCCESS"
        return bool(due)

    def _settled(self) -> None:
        """:meth:`_settle` outside a call (inspection), persisted with this app's lock released: the
        server's save takes its own lock and then this app's, so never the other way round."""
        with self._lock:
            changed = self._settle()
        if changed:
            self.journal.changed()

    def _user_list(self, ul: dict[str, Any]) -> UserList:
        size = len(ul["members"]) or None  # Google leaves sizes unset until it has counted
        return UserList(
            resource_name=f"customers/{ul['customer']}/userLists/{ul['id']}",
            id=ul["id"],
            name=ul["name"],
            description=ul["description"],
            membership_status="OPEN",
            membership_life_span=ul["life_span"],
            type_=ul["type"],
            access_reason=ul["access_reason"],
            crm_based_user_list=CrmBasedUserListInfo(upload_key_type=ul["key_type"], app_id=ul["app_id"]),
            size_for_search=size,
            size_for_display=size,
            # every sandbox identifier "matches" (see _match_range); unset, as sizes, until counted
            match_rate_percentage=100 if size else None,
        )

    def _job_resource(self, job: dict[str, Any]) -> OfflineUserDataJob:
        user_list = f"customers/{job['customer']}/userLists/{job['list_id']}"
        resource = OfflineUserDataJob(
            resource_name=f"customers/{job['customer']}/offlineUserDataJobs/{job['id']}",
            id=job["id"],
            external_id=job["external_id"],
            type_="CUSTOMER_MATCH_USER_LIST",
            status=job["status"],
            customer_match_user_list_metadata=CustomerMatchUserListMetadata(user_list=user_list),
        )
        if job["status"] == "SUCCESS":
            resource.operation_metadata = OfflineUserDataJobMetadata(match_rate_range=_match_range(job))
        return resource


def _list_matches(ul: dict[str, Any], wanted: dict[str, str]) -> bool:
    have = {
        "user_list.type": ul["type"],
        "user_list.access_reason": ul["access_reason"],
        "user_list.id": str(ul["id"]),
        "user_list.resource_name": f"customers/{ul['customer']}/userLists/{ul['id']}",
    }
    return all(have.get(k) == v for k, v in wanted.items())


def _job_matches(job: dict[str, Any], wanted: dict[str, str]) -> bool:
    have = {
        "offline_user_data_job.resource_name": f"customers/{job['customer']}/offlineUserDataJobs/{job['id']}",
        "offline_user_data_job.id": str(job["id"]),
        "offline_user_data_job.external_id": str(job["external_id"]),
        "offline_user_data_job.status": job["status"],
    }
    return all(have.get(k) == v for k, v in wanted.items())


def _logged_op(job: dict[str, Any], kinds: list[str | None]) -> str:
    """The request log's ``op`` (as Meta's: add, remove, replace) of a job's request."""
    first = job["ops"][0][0] if job["ops"] else (kinds[0] if kinds else None)
    return {"remove": "remove", "remove_all": "replace"}.get(first or "", "add")


def _match_range(job: dict[str, Any]) -> str:
    """Every sandbox identifier "matches" (there are no Google accounts behind them)."""
    return "MATCH_RANGE_91_TO_100" if job["status"] == "SUCCESS" else "UNKNOWN"
