"""Google Ads Customer Match lists through the real ``google-ads`` client (Google Ads API, reference §2).

An audience is a CRM-based user list the account owns, found by exact name in Python among all of
them (a name never enters a GAQL string) and created when missing; a lost creation race
(NAME_ALREADY_USED) finds the winner. An upload is one OfflineUserDataJob: its resource name is the
upload's handle, which the engine stores before the first batch, so a retried task adds to the same
job. Adds and removes go in separate jobs (Google refuses to mix them); ``replace`` is one job whose
first operation is ``remove_all``. A batch becomes one UserData per row, sent in requests of at most
:data:`IDENTIFIERS_PER_REQUEST` identifiers with partial failure on, so each failed operation names its
row. ``finish_upload`` runs the job without waiting; ``upload_status`` reads the job's status by GAQL.

Rows arrive normalised and hashed (:mod:`audience_sync.core.normalize`), their columns named by the
v26 UserIdentifier / OfflineUserAddressInfo fields. Versioned types come from
:mod:`.google_ads_api`; everything else goes through ``client.get_type`` and ``client.enums``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from google.ads.googleads.client import GoogleAdsClient
from google.ads.googleads.errors import GoogleAdsException
from google.api_core import exceptions as api_exceptions

from audience_sync.core.contract import (
    UPLOAD_OPS,
    Destination,
    PlatformAudience,
    ProcessingStatus,
    Upload,
    UploadResult,
    pack,
)
from audience_sync.core.errors import PermanentDestinationError
from audience_sync.destinations.google_ads_api import (
    ADDRESS_FIELDS,
    IDENTIFIER_FIELDS,
    KEY_TYPE_FIELDS,
    MAX_IDENTIFIERS_PER_USER,
    RESOURCE_NAME,
    error_name,
    failure_details,
    job_query,
    operation_index,
    owned_lists_query,
)
from audience_sync.destinations.google_ads_errors import classify
from audience_sync.platforms.google_ads import GOOGLE_ADS
from audience_sync.platforms.google_common import MAX_MEMBERSHIP_DAYS

log = logging.getLogger(__name__)

T = TypeVar("T")

#: identifiers per AddOfflineUserDataJobOperations request: Google recommends ~10,000 (the hard cap
#: is 100,000), reference §3
IDENTIFIERS_PER_REQUEST = 10_000
DEFAULT_TIMEOUT = 120.0


class _CountingInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Counts the requests that leave this destination (``requests_made``), pages included."""

    def __init__(self) -> None:
        self.count = 0

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.count += 1
        return continuation(details, request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        self.count += 1
        return continuation(details, request)


class GoogleAdsDestination(Destination):
    """One Google Ads customer (account).

    :param client: a proto-plus ``GoogleAdsClient`` (see :func:`~.google_ads_client.make_client`).
    :param customer_id: ten digits, no dashes.
    :param conn_label: the Airflow connection id, named in error messages.
    :param upload_key_type: ``CONTACT_INFO``, ``CRM_ID`` or ``MOBILE_ADVERTISING_ID``: what lists this
        destination creates hold (Google allows one kind per list).
    :param app_id: the app of a ``MOBILE_ADVERTISING_ID`` list.
    :param membership_life_span_days: how long a member stays on a list we create (0..540).
    :param consent: ``{"ad_user_data": ..., "ad_personalization": ...}`` set on every add job
        (``GRANTED``/``UNSPECIFIED``...); None sends none.
    :param timeout: seconds per request.
    """

    platform = GOOGLE_ADS.name
    max_batch_rows = GOOGLE_ADS.max_batch_rows
    max_remove_rows = GOOGLE_ADS.max_remove_rows
    processes_synchronously = False  # a job runs for minutes to hours after it was started
    # one running job per list (CONCURRENT_MODIFICATION otherwise; reference §2 "Concurrency"): the engine
    # runs a mirror's add job once its remove job is processed
    serial_uploads = True
    max_named_rejects = GOOGLE_ADS.max_batch_rows  # partial failure names every failed operation

    def __init__(
        self,
        client: GoogleAdsClient,
        customer_id: str,
        conn_label: str = GOOGLE_ADS.default_conn_id,
        *,
        upload_key_type: str = "CONTACT_INFO",
        app_id: str | None = None,
        membership_life_span_days: int = MAX_MEMBERSHIP_DAYS,
        consent: Mapping[str, str] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        if upload_key_type not in KEY_TYPE_FIELDS:
            raise ValueError(
                f"upload_key_type must be one of {', '.join(KEY_TYPE_FIELDS)}, not {upload_key_type!r}"
            )
        if (upload_key_type == "MOBILE_ADVERTISING_ID") != bool(app_id):
            raise ValueError("app_id is required for MOBILE_ADVERTISING_ID lists and allowed for no others")
        if not 0 <= membership_life_span_days <= MAX_MEMBERSHIP_DAYS:
            raise ValueError(f"membership_life_span_days must be 0..{MAX_MEMBERSHIP_DAYS}")
        self.client = client
        self.account = GOOGLE_ADS.normalise_account(customer_id)
        self.conn_label = conn_label
        self.upload_key_type = upload_key_type
        self.app_id = app_id or ""
        self.life_span = membership_life_span_days
        self.consent = dict(consent or {})
        self.timeout = timeout
        self._counter = _CountingInterceptor()
        self._services: dict[str, Any] = {}
        # built once: protobuf classes of the per-row messages (proto-plus is slow at 10,000 rows)
        self._op_pb = type(client.get_type("OfflineUserDataJobOperation")).pb()

    @property
    def requests_made(self) -> int:  # type: ignore[override]
        return self._counter.count

    def split_removals(
        self, schema: Sequence[str], rows: Sequence[Sequence[str]]
    ) -> list[list[Sequence[str]]]:
        """Chunks of at most ``max_remove_rows`` rows and :data:`IDENTIFIERS_PER_REQUEST` identifiers,
        so that each removal batch is one request."""
        weights = [_identifier_count(schema, row) for row in rows]
        return pack(rows, weights, IDENTIFIERS_PER_REQUEST, self.max_remove_rows)

    # ------------------------------------------------------------ audiences
    def find_audiences(self, name: str) -> list[PlatformAudience]:
        """The owned CRM-based lists of this name (Google allows one; a list shared with the account
        is not ours to fill), by id: lists carry no creation time, ids grow with creation."""
        found = [a for a in self._lists() if a.name == name]
        return sorted(found, key=lambda a: int(a.id))

    def get_audience(self, audience_id: str) -> PlatformAudience | None:
        if not str(audience_id).isdigit():
            return None
        found = self._lists(int(audience_id))
        return found[0] if found else None

    def create_audience(self, name: str, description: str) -> PlatformAudience:
        op = self.client.get_type("UserListOperation")
        ul = op.create
        ul.name = name
        ul.description = description
        ul.membership_status = self.client.enums.UserListMembershipStatusEnum.OPEN
        ul.membership_life_span = self.life_span
        ul.crm_based_user_list.upload_key_type = self.client.enums.CustomerMatchUploadKeyTypeEnum[
            self.upload_key_type
        ]
        if self.app_id:
            ul.crm_based_user_list.app_id = self.app_id
        service = self._service("UserListService")
        try:
            resp = self._call(
                lambda: service.mutate_user_lists(
                    customer_id=self.account, operations=[op], timeout=self.timeout
                ),
                "create user list",
                raw=True,
            )
        except GoogleAdsException as exc:
            if _named(exc) != ("user_list_error", "NAME_ALREADY_USED"):
                raise self._classify(exc, "create user list") from None
            # a concurrent sync created it first: that one is the audience
            found = self.find_audiences(name)
            if found:
                return found[0]
            raise PermanentDestinationError(
                f"Google Ads says the user list name {name!r} is taken in customer {self.account}, but "
                "no CRM-based list the account owns has it (a list shared with the account, or of another "
                "type). Rename that list in Google Ads or choose another segment name.",
                code=exc.error.code().value[0],
                subcode=12,
            ) from None
        list_id = resp.results[0].resource_name.rsplit("/", 1)[1]
        return PlatformAudience(id=list_id, name=name)

    def _lists(self, list_id: int | None = None) -> list[PlatformAudience]:
        rows = self._search(owned_lists_query(list_id), "list user lists")
        return [_audience(row.user_list) for row in rows]

    # ------------------------------------------------------------ the upload lifecycle
    def open_upload(self, audience_id: str, op: str, *, key: str, estimated_total: int) -> Upload:
        """Create the upload's job, or find the one an earlier attempt created: the job's external id
        is derived from ``key`` and Google refuses a second job with it."""
        if op not in UPLOAD_OPS:
            raise ValueError(f"unknown upload operation {op!r}; use one of {', '.join(UPLOAD_OPS)}")
        external_id = external_id_for(key, audience_id, op)
        job = self.client.get_type("OfflineUserDataJob")
        job.type_ = self.client.enums.OfflineUserDataJobTypeEnum.CUSTOMER_MATCH_USER_LIST
        job.external_id = external_id
        meta = job.customer_match_user_list_metadata
        meta.user_list = self._list_name(audience_id)
        if op != "remove":  # removals carry no consent (reference §2 "Consent")
            for field, value in self.consent.items():
                setattr(meta.consent, field, self.client.enums.ConsentStatusEnum[value])
        service = self._service("OfflineUserDataJobService")
        try:
            resp = self._call(
                lambda: service.create_offline_user_data_job(
                    customer_id=self.account, job=job, timeout=self.timeout
                ),
                "create upload job",
                raw=True,
            )
            handle = resp.resource_name
        except GoogleAdsException as exc:
            if _named(exc) != ("offline_user_data_job_error", "EXTERNAL_UPDATE_ID_ALREADY_EXISTS"):
                raise self._classify(exc, "create upload job") from None
            handle = self._job_by_external_id(external_id, audience_id)
        return Upload(audience_id, op, handle, estimated_total)

    def _job_by_external_id(self, external_id: int, audience_id: str) -> str:
        rows = self._search(job_query(external_id=external_id), "find upload job")
        jobs = [r.offline_user_data_job for r in rows]
        mine = [
            j for j in jobs if j.customer_match_user_list_metadata.user_list == self._list_name(audience_id)
        ]
        if not mine:
            raise PermanentDestinationError(
                f"Google Ads customer {self.account} has a job with external id {external_id} that is not "
                f"for list {audience_id}; this upload's key collides with another upload's"
            )
        return str(mine[0].resource_name)

    def send_batch(
        self, upload: Upload, seq: int, schema: Sequence[str], rows: Sequence[Sequence[str]], *, last: bool
    ) -> UploadResult:
        """Batch ``seq`` as UserData operations, in requests of at most :data:`IDENTIFIERS_PER_REQUEST`
        identifiers. Google keeps no batch numbers: a re-sent batch repeats operations that change
        nothing (the same user added or removed again), and a batch of a job that already ran is
        answered as received (the engine runs a job only after its last batch)."""
        if upload.op not in UPLOAD_OPS:
            raise ValueError(f"unknown upload operation {upload.op!r}")
        limit = self.max_remove_rows if upload.op == "remove" else self.max_batch_rows
        if len(rows) > limit:
            raise ValueError(
                f"batch of {len(rows)} rows exceeds the limit of {limit}; cut it with split_removals()"
            )
        if not RESOURCE_NAME.fullmatch(upload.handle):
            raise ValueError(f"{upload.handle!r} is not a Google Ads job resource name")
        kind = "remove" if upload.op == "remove" else "create"
        ops = [self._operation(kind, schema, row) for row in rows]
        lead = 1 if upload.op == "replace" and seq == 1 else 0
        if lead:
            remove_all = self._op_pb()
            remove_all.remove_all = True
            ops.insert(0, remove_all)
        invalid: list[int] = []
        for start, end in _request_spans(ops, IDENTIFIERS_PER_REQUEST):
            chunk_lead = lead if start == 0 else 0
            failed = self._add(upload, ops[start:end], chunk_lead)
            if failed is None:  # the job ran already: this batch was part of it
                return UploadResult(received=len(rows))
            invalid.extend(start + i - lead for i in failed if start + i >= lead)
        invalid = sorted(set(invalid))
        return UploadResult(received=len(rows), invalid=len(invalid), invalid_rows=invalid)

    def _add(self, upload: Upload, ops: list[Any], lead: int) -> list[int] | None:
        """Send ``ops`` to the job; the indexes (in ``ops``) of failed operations, None if the job ran."""
        request = self.client.get_type("AddOfflineUserDataJobOperationsRequest")
        request.resource_name = upload.handle
        request.enable_partial_failure = True
        type(request).pb(request).operations.extend(ops)
        service = self._service("OfflineUserDataJobService")
        try:
            resp = self._call(
                lambda: service.add_offline_user_data_job_operations(request=request, timeout=self.timeout),
                f"{upload.op} members",
                raw=True,
            )
        except GoogleAdsException as exc:
            named = _named(exc)
            if named == ("offline_user_data_job_error", "JOB_ALREADY_STARTED"):
                log.info("job %s already ran; batch answered as received", upload.handle)
                return None
            if named == ("offline_user_data_job_error", "INVALID_OPERATION_ORDER") and lead:
                # an earlier attempt at batch 1 put remove_all in the job and its answer was lost
                failed = self._add(upload, ops[lead:], 0)
                return None if failed is None else [i + lead for i in failed]
            raise self._classify(exc, f"{upload.op} members") from None
        failed = set()
        for failure in failure_details(resp.partial_failure_error):
            for error in failure.errors:
                index = operation_index(error)
                if index is not None:
                    failed.add(index)
        return sorted(failed)

    def finish_upload(self, upload: Upload, batches: int) -> None:
        """Run the job. Google processes it for minutes to hours; nothing here waits for that."""
        service = self._service("OfflineUserDataJobService")
        try:
            self._call(
                lambda: service.run_offline_user_data_job(resource_name=upload.handle, timeout=self.timeout),
                "run upload job",
                raw=True,
            )
        except GoogleAdsException as exc:
            if _named(exc) == ("offline_user_data_job_error", "JOB_ALREADY_STARTED"):
                return  # an earlier attempt ran it and its answer was lost
            raise self._classify(exc, "run upload job") from None

    def upload_status(self, upload: Upload) -> ProcessingStatus:
        rows = self._search(job_query(resource_name=upload.handle), "read upload job")
        if not rows:
            return ProcessingStatus(done=True, failed=True, detail=f"job {upload.handle} no longer exists")
        job = rows[0].offline_user_data_job
        status = job.status.name
        detail = f"job {upload.handle}: {status}"
        if status == "SUCCESS":
            match = job.operation_metadata.match_rate_range.name
            return ProcessingStatus(done=True, progress=100, detail=f"{detail}, match rate range {match}")
        if status == "FAILED":
            return ProcessingStatus(done=True, failed=True, detail=f"{detail} ({job.failure_reason.name})")
        if status == "PENDING":
            return ProcessingStatus(done=False, detail=f"{detail}: not run yet (batches may still come)")
        return ProcessingStatus(done=False, detail=f"{detail}: Google is processing it")

    # ------------------------------------------------------------- helpers
    def _operation(self, kind: str, schema: Sequence[str], row: Sequence[str]) -> Any:
        op = self._op_pb()
        user_data = getattr(op, kind)
        address = None
        for field, value in zip(schema, row, strict=True):
            if not value:
                continue
            if field in ADDRESS_FIELDS:
                if address is None:
                    address = user_data.user_identifiers.add().address_info
                setattr(address, field, value)
            elif field in IDENTIFIER_FIELDS:
                setattr(user_data.user_identifiers.add(), field, value)
            else:
                raise ValueError(f"column {field!r} is no Google Ads user identifier")
        if len(user_data.user_identifiers) > MAX_IDENTIFIERS_PER_USER:
            raise ValueError(f"a row carries more than {MAX_IDENTIFIERS_PER_USER} identifiers")
        return op

    def _list_name(self, audience_id: str) -> str:
        return f"customers/{self.account}/userLists/{int(audience_id)}"

    def _service(self, name: str) -> Any:
        if name not in self._services:
            self._services[name] = self.client.get_service(name, interceptors=[self._counter])
        return self._services[name]

    def _search(self, query: str, what: str) -> list[Any]:
        service = self._service("GoogleAdsService")
        # the pager fetches later pages while it is read: read it all inside the error mapping
        return self._call(
            lambda: list(service.search(customer_id=self.account, query=query, timeout=self.timeout)), what
        )

    def _call(self, fn: Callable[[], T], what: str, *, raw: bool = False) -> T:
        """``fn()`` with its errors mapped; with ``raw`` a GoogleAdsException is left to the caller."""
        try:
            return fn()
        except GoogleAdsException as exc:
            if raw:
                raise
            raise self._classify(exc, what) from None
        except (api_exceptions.GoogleAPICallError, grpc.RpcError) as exc:
            raise self._classify(exc, what) from None

    def _classify(self, exc: BaseException, what: str) -> Exception:
        return classify(exc, what, account=self.account, conn_label=self.conn_label)


def _named(exc: GoogleAdsException) -> tuple[str, str] | None:
    errors = exc.failure.errors if exc.failure is not None else []
    if not errors:
        return None
    category, name, _ = error_name(errors[0])
    return category, name


def _audience(ul: Any) -> PlatformAudience:
    size = ul.size_for_search if "size_for_search" in ul else None
    if size is None and "size_for_display" in ul:
        size = ul.size_for_display
    match = ul.match_rate_percentage if "match_rate_percentage" in ul else None
    return PlatformAudience(
        id=str(ul.id), name=str(ul.name), size=int(size) if size is not None else None,
        status=ul.membership_status.name, match_rate=int(match) if match is not None else None,
    )  # fmt: skip


def _identifier_count(schema: Sequence[str], row: Sequence[str]) -> int:
    """Identifiers a row becomes: one per set identifier field, one for any address fields."""
    n = sum(1 for f, v in zip(schema, row, strict=True) if v and f not in ADDRESS_FIELDS)
    return n + any(v for f, v in zip(schema, row, strict=True) if f in ADDRESS_FIELDS)


def _request_spans(ops: Sequence[Any], limit: int) -> list[tuple[int, int]]:
    """``[start, end)`` spans of ``ops`` with at most ``limit`` identifiers each."""
    spans: list[tuple[int, int]] = []
    start, used = 0, 0
    for i, op in enumerate(ops):
        n = len(op.create.user_identifiers) + len(op.remove.user_identifiers)
        if i > start and used + n > limit:
            spans.append((start, i))
            start, used = i, 0
        used += n
    if start < len(ops) or not spans:
        spans.append((start, len(ops)))
    return [(s, e) for s, e in spans if e > s]


def external_id_for(*parts: object) -> int:
    """A stable positive int64 job external id (same inputs -> same id)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF or 1
