"""Google Customer Match through the Data Manager API (``google-ads-datamanager``), over real gRPC.

An audience is a Customer Match user list (contact info) of one Google Ads *operating account*; its id
is the list's numeric id. Rows arrive normalised and SHA-256 hashed (hex) by
:mod:`audience_sync.core.normalize` with the keys of
:data:`audience_sync.core.normalize.platforms.GOOGLE_DATAMANAGER` (``email_address``, ``phone_number``
and the address parts ``given_name``, ``family_name``, ``region_code``, ``postal_code``); each row is one
``AudienceMember`` whose ``user_data`` carries one ``UserIdentifier`` per value (the address as one).

How the upload lifecycle maps onto an API that has no upload sessions:

- **handle**: derived from the engine's key (no request), and sent as each request's destination
  ``reference`` (``<handle>#<batch>``), which ``RetrieveRequestStatus`` reports back.
- **add** = ``IngestAudienceMembers``, **remove** = ``RemoveAudienceMembers``, one request per batch of at
  most 10,000 members with at most 10 identifiers each (https://developers.google.com/data-manager/api/limits).
- **replace** = every batch ingested, then, with the last batch, ``RemoveAllAudienceMembers`` with
  ``remove_as_of_time`` = when the upload's first batch was sent: that removes exactly the members not
  (re-)added by this upload ("only audience members last added before this time will be removed",
  ``RemoveAllAudienceMembersRequest``). Unlike remove-all-then-ingest the list is never empty meanwhile,
  and the result does not depend on the order Google processes the requests in. The call waits until
  that time is :data:`REMOVE_ALL_SKEW_SECONDS` old, so a client clock slightly ahead of Google's cannot
  make it "in the future" (``INVALID_REMOVE_AS_OF_TIME``).
- **receipts**: a request's id is created by Google, and ``upload_status`` needs every one of the upload.
  Each batch's answer carries a receipt (request ids, send time, last flag, rejected rows) that the engine
  stores (``as_upload_receipts``) and hands back in ``Upload.receipts``, so a wait task in another
  process, or a retried task, sees them. A batch whose receipt is known was applied: sending it again
  (a retry after its answer was recorded) asks Google about the earlier request instead of applying it
  a second time over what later uploads changed.
- **status**: ``RetrieveRequestStatus`` per request id until none is ``PROCESSING``; members stay
  ``in_progress`` until then. ``FAILED`` marks the upload failed; ``PARTIAL_SUCCESS`` counts the records
  in ``error_info``.
- **bad members**: Google rejects the whole request with ``INVALID_ARGUMENT`` and a ``BadRequest`` naming
  each bad member (``audience_members.audience_members[i]``; quickstart "Send audience members"). The
  named rows are taken out and the rest sent again, so ``UploadResult.invalid_rows`` names them.
- **consent**: request-level ``consent`` (``ad_user_data``, ``ad_personalization``) from the campaign
  destination; EEA users need both ``GRANTED`` (Google's EU user consent policy), ``DENIED`` makes Google
  refuse the upload. ``terms_of_service`` says the Customer Match terms are accepted, which the API
  requires for contact-info uploads (upload-data guide); the operator accepts them in Google Ads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import grpc
from google.ads import datamanager_v1 as dm
from google.ads.datamanager_v1.services.ingestion_service.transports import IngestionServiceGrpcTransport
from google.ads.datamanager_v1.services.user_list_service.transports import UserListServiceGrpcTransport
from google.ads.datamanager_v1.types import audience, request_status_per_destination, user_data
from google.api_core import client_options
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc
from google.auth.credentials import Credentials
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2

from audience_sync.core.contract import (
    UPLOAD_OPS,
    Destination,
    PlatformAudience,
    ProcessingStatus,
    Upload,
    UploadResult,
)
from audience_sync.core.errors import PermanentDestinationError, TransientDestinationError
from audience_sync.destinations.grpc_common import TRANSIENT_STATUSES, is_loopback, loopback_channel
from audience_sync.platforms.google_common import CONSENT_VALUES, MAX_MEMBERSHIP_DAYS, normalise_customer_id

log = logging.getLogger(__name__)

T = TypeVar("T")

PLATFORM = "google_datamanager"
DEFAULT_ENDPOINT = "datamanager.googleapis.com"
#: members per IngestAudienceMembers / RemoveAudienceMembers request (Data Manager limits page)
MAX_MEMBERS = 10_000
#: user identifiers per audience member (same page)
MAX_IDENTIFIERS = 10
#: ListUserLists page size (its maximum; larger values are coerced to 1000)
LIST_PAGE_SIZE = 1000
#: how old the replace's ``remove_as_of_time`` must be before RemoveAllAudienceMembers is sent
REMOVE_ALL_SKEW_SECONDS = 1.0

HASHED_KEYS = ("email_address", "phone_number")
ADDRESS_KEYS = ("given_name", "family_name", "region_code", "postal_code")
#: a row's own consent to each purpose (the campaign's ``consent:`` columns), sent as the member's consent
CONSENT_KEYS = ("ad_user_data", "ad_personalization")

Reason = dm.ErrorReason
Status = request_status_per_destination.RequestStatusPerDestination.RequestStatus
_MEMBER_AT = re.compile(r"audience_members\[(\d+)\]")
_AccountType = dm.ProductAccount.AccountType


def make_clients(
    credentials: Credentials, endpoint: str | None = None
) -> tuple[dm.IngestionServiceClient, dm.UserListServiceClient]:
    """The two service clients on one channel.

    With no ``endpoint``: TLS to ``datamanager.googleapis.com`` with the credentials. Another endpoint
    gets TLS too, except a loopback one (the local sandbox), which gets a plaintext local channel still
    carrying the credentials' bearer token; nothing is patched.
    """
    if endpoint and is_loopback(endpoint):
        channel = loopback_channel(endpoint, credentials)
        return (
            dm.IngestionServiceClient(transport=IngestionServiceGrpcTransport(channel=channel)),
            dm.UserListServiceClient(transport=UserListServiceGrpcTransport(channel=channel)),
        )
    options = client_options.ClientOptions(api_endpoint=endpoint) if endpoint else None
    return (
        dm.IngestionServiceClient(credentials=credentials, client_options=options, transport="grpc"),
        dm.UserListServiceClient(credentials=credentials, client_options=options, transport="grpc"),
    )


def account_path(account: str) -> str:
    return f"accountTypes/GOOGLE_ADS/accounts/{account}"


def handle_for(key: str) -> str:
    """A stable handle for the engine's upload key (same key -> same handle)."""
    return "dm-" + hashlib.sha256(key.encode()).hexdigest()[:24]


@dataclass
class Receipt:
    """What one answered batch left behind (stored by the engine as JSON)."""

    request_ids: list[str] = field(default_factory=list)
    sent: float = 0.0  # when its first request went out (epoch seconds)
    last: bool = False
    bad: list[int] = field(default_factory=list)

    def text(self) -> str:
        return json.dumps(
            {"ids": self.request_ids, "t": round(self.sent, 3), "last": self.last, "bad": self.bad},
            separators=(",", ":"),
        )

    @classmethod
    def parse(cls, text: str) -> Receipt:
        data = json.loads(text)
        return cls(
            list(data.get("ids", [])),
            float(data.get("t", 0)),
            bool(data.get("last")),
            list(data.get("bad", [])),
        )


def consent_status(value: str) -> dm.ConsentStatus:
    """``GRANTED`` / ``DENIED`` / ``UNSPECIFIED`` -> the API's ConsentStatus."""
    text = str(value or "UNSPECIFIED").strip().upper()
    if text not in CONSENT_VALUES:
        raise ValueError(f"consent must be one of {', '.join(CONSENT_VALUES)}, not {value!r}")
    return {
        "GRANTED": dm.ConsentStatus.CONSENT_GRANTED,
        "DENIED": dm.ConsentStatus.CONSENT_DENIED,
        "UNSPECIFIED": dm.ConsentStatus.CONSENT_STATUS_UNSPECIFIED,
    }[text]


class GoogleDataManagerDestination(Destination):
    """One Google Ads operating account, through the Data Manager API.

    :param ingestion: an ``IngestionServiceClient`` (see ``hooks/google_datamanager.py``).
    :param user_lists: a ``UserListServiceClient`` on the same credentials and endpoint.
    :param operating_account: the Google Ads customer id (digits) that owns the lists.
    :param login_account: the account the caller signs in as (a manager account), when not the operating one.
    :param linked_account: an account reached through a link of the login account (data partners).
    :param ad_user_data, ad_personalization: request-level consent, ``GRANTED``/``DENIED``/``UNSPECIFIED``.
    :param membership_duration_days: how long a member stays in a list this destination creates.
    :param conn_label: the Airflow connection id, named in error messages.
    :param timeout: seconds per call.
    """

    platform = PLATFORM
    max_batch_rows = MAX_MEMBERS
    max_remove_rows = MAX_MEMBERS
    processes_synchronously = False

    def __init__(
        self,
        ingestion: dm.IngestionServiceClient,
        user_lists: dm.UserListServiceClient,
        operating_account: str,
        *,
        login_account: str | None = None,
        linked_account: str | None = None,
        ad_user_data: str = "UNSPECIFIED",
        ad_personalization: str = "UNSPECIFIED",
        membership_duration_days: int = MAX_MEMBERSHIP_DAYS,
        conn_label: str = "google_datamanager_default",
        timeout: float = 60.0,
    ) -> None:
        if not (1 <= int(membership_duration_days) <= MAX_MEMBERSHIP_DAYS):
            raise ValueError(
                f"membership_duration_days must be 1..{MAX_MEMBERSHIP_DAYS}, not {membership_duration_days}"
            )
        self.ingestion = ingestion
        self.user_lists = user_lists
        self.account = normalise_customer_id(operating_account)
        self.login_account = normalise_customer_id(login_account) if login_account else None
        self.linked_account = normalise_customer_id(linked_account) if linked_account else None
        self.consent = dm.Consent(
            ad_user_data=consent_status(ad_user_data), ad_personalization=consent_status(ad_personalization)
        )
        self.membership_duration_days = int(membership_duration_days)
        self.conn_label = conn_label
        self.timeout = timeout
        self.requests_made = 0
        # receipts of batches answered in this process, and request statuses known to be final
        self._receipts: dict[tuple[str, int], Receipt] = {}
        self._final: dict[str, tuple[int, int]] = {}  # request id -> (status, rejected records)

    # ------------------------------------------------------------------ audiences
    def find_audiences(self, name: str) -> list[PlatformAudience]:
        """Every owned list of the account named exactly ``name``: all pages listed and matched here,
        never a name put into a ``filter`` string."""
        found: list[PlatformAudience] = []
        token = ""
        while True:
            request = dm.ListUserListsRequest(
                parent=account_path(self.account), page_size=LIST_PAGE_SIZE, page_token=token
            )
            # one page per call (the pager's own iteration would fetch the next pages outside _call)
            page = self._call(
                lambda r=request: self.user_lists.list_user_lists(
                    request=r, retry=None, timeout=self.timeout, metadata=self._list_metadata()
                ),
                "list user lists",
            )
            found += [_audience(ul) for ul in page.user_lists if ul.display_name == name and _owned(ul)]
            token = page.next_page_token
            if not token:
                break
        return sorted(found, key=lambda a: (a.created_time, len(a.id), a.id))

    def get_audience(self, audience_id: str) -> PlatformAudience | None:
        name = f"{account_path(self.account)}/userLists/{audience_id}"
        try:
            ul = self._call(
                lambda: self.user_lists.get_user_list(
                    name=name, retry=None, timeout=self.timeout, metadata=self._list_metadata()
                ),
                f"read user list {audience_id}",
            )
        except PermanentDestinationError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND.value[0]:
                return None
            raise
        return _audience(ul)

    def create_audience(self, name: str, description: str) -> PlatformAudience:
        """Create a contact-info Customer Match list; a name taken meanwhile (a race lost to another
        run: ``DISPLAY_NAME_ALREADY_USED``) gives the list that won instead of a second one."""
        ul = dm.UserList(
            display_name=name,
            description=description,
            membership_status=dm.UserList.MembershipStatus.OPEN,
            membership_duration=timedelta(days=self.membership_duration_days),
            ingested_user_list_info=dm.IngestedUserListInfo(
                upload_key_types=[dm.IngestedUserListInfo.UploadKeyType.CONTACT_ID],
                contact_id_info=dm.ContactIdInfo(
                    data_source_type=dm.DataSourceType.DATA_SOURCE_TYPE_FIRST_PARTY
                ),
            ),
        )
        request = dm.CreateUserListRequest(parent=account_path(self.account), user_list=ul)
        try:
            created = self._call(
                lambda: self.user_lists.create_user_list(
                    request=request, retry=None, timeout=self.timeout, metadata=self._list_metadata()
                ),
                "create user list",
            )
        except PermanentDestinationError as exc:
            if exc.subcode != Reason.DISPLAY_NAME_ALREADY_USED:
                raise
            winners = self.find_audiences(name)
            if not winners:
                raise
            log.info("user list name taken meanwhile: using list %s", winners[0].id)
            return winners[0]
        return _audience(created)

    # ------------------------------------------------------------------ the upload lifecycle
    def open_upload(self, audience_id: str, op: str, *, key: str, estimated_total: int) -> Upload:
        """No request: Data Manager has no upload sessions; the handle comes from the key."""
        if op not in UPLOAD_OPS:
            raise ValueError(f"unknown upload operation {op!r}; use one of {', '.join(UPLOAD_OPS)}")
        return Upload(audience_id, op, handle_for(key), estimated_total)

    def send_batch(
        self, upload: Upload, seq: int, schema: Sequence[str], rows: Sequence[Sequence[str]], *, last: bool
    ) -> UploadResult:
        if len(rows) > self.max_batch_rows:
            raise ValueError(f"batch of {len(rows)} rows exceeds the limit of {self.max_batch_rows} members")
        # ValueError before any request; a removal carries no consent (Google asks for none)
        members = [_member(schema, row, with_consent=upload.op != "remove") for row in rows]
        known = self._receipt(upload, seq)
        if known is not None:
            # answered before (a re-send after the answer was recorded): applying it again could undo
            # what later uploads changed, so ask Google about the earlier request instead
            if known.request_ids:
                self._retrieve(known.request_ids[0])
            return UploadResult(len(rows), len(known.bad), list(known.bad), known.text())
        receipt = Receipt(sent=time.time(), last=last)
        pending = list(range(len(rows)))
        while pending:
            try:
                receipt.request_ids.append(self._send_members(upload, seq, [members[i] for i in pending]))
                break
            except _BadMembers as bad:
                named = {pending[i] for i in bad.indexes}
                receipt.bad += sorted(named)
                pending = [i for i in pending if i not in named]
        if last and upload.op == "replace":
            receipt.request_ids.append(self._remove_all(upload, seq, self._replace_start(upload, receipt)))
        receipt.bad.sort()
        self._receipts[(upload.handle, seq)] = receipt
        return UploadResult(len(rows), len(receipt.bad), list(receipt.bad), receipt.text())

    def upload_status(self, upload: Upload) -> ProcessingStatus:
        receipts = self._all_receipts(upload)
        if not any(r.last for r in receipts.values()):
            sent = len(receipts)
            detail = f"{sent} batch(es) sent, the last one not yet" if sent else "no batch sent yet"
            return ProcessingStatus(done=False, detail=detail)
        ids = [rid for _, r in sorted(receipts.items()) for rid in r.request_ids]
        failed = rejected = 0
        for n, rid in enumerate(ids):
            if rid not in self._final:
                try:
                    status, errors = self._retrieve(rid)
                except PermanentDestinationError as exc:
                    if exc.subcode != Reason.REQUEST_TOO_OLD:
                        raise
                    # Google keeps a request's status ~50 days (REQUEST_TOO_OLD); long processed by then
                    status, errors = Status.SUCCESS, 0
                if status in (Status.PROCESSING, Status.REQUEST_STATUS_UNKNOWN):
                    return ProcessingStatus(
                        done=False,
                        progress=100 * n // len(ids),
                        detail=f"Google is processing request {n + 1} of {len(ids)} of upload {upload.handle}",
                    )
                self._final[rid] = (int(status), errors)
            status, errors = self._final[rid]
            failed += status == Status.FAILED
            rejected += errors
        detail = f"{len(ids)} request(s) processed" + (f", {failed} failed" if failed else "")
        return ProcessingStatus(done=True, failed=bool(failed), invalid=rejected, progress=100, detail=detail)

    # ------------------------------------------------------------------ requests
    def _send_members(self, upload: Upload, seq: int, members: list[Any]) -> str:
        """One ingest/remove request; :class:`_BadMembers` when Google names bad members."""
        dest = self._destination(upload, seq)
        encoding = dm.Encoding.HEX
        if upload.op == "remove":
            pb = dm.RemoveAudienceMembersRequest.pb()(
                destinations=[dm.Destination.pb(dest)], audience_members=members, encoding=encoding
            )
            request: Any = dm.RemoveAudienceMembersRequest.wrap(pb)
            send: Callable[..., Any] = self.ingestion.remove_audience_members
        else:
            pb = dm.IngestAudienceMembersRequest.pb()(
                destinations=[dm.Destination.pb(dest)],
                audience_members=members,
                encoding=encoding,
                consent=dm.Consent.pb(self.consent),
                terms_of_service=dm.TermsOfService.pb(
                    dm.TermsOfService(customer_match_terms_of_service_status=dm.TermsOfServiceStatus.ACCEPTED)
                ),
            )
            request = dm.IngestAudienceMembersRequest.wrap(pb)
            send = self.ingestion.ingest_audience_members
        what = f"{upload.op} batch {seq}"
        answer = self._call(
            lambda: send(request=request, retry=None, timeout=self.timeout),
            what,
            name_bad_members=len(members),
        )
        return str(answer.request_id)

    def _remove_all(self, upload: Upload, seq: int, as_of: float) -> str:
        wait = as_of + REMOVE_ALL_SKEW_SECONDS - time.time()
        if wait > 0:
            time.sleep(wait)
        stamp = timestamp_pb2.Timestamp()
        stamp.FromNanoseconds(int(as_of * 1e9))
        request = dm.RemoveAllAudienceMembersRequest(
            destinations=[self._destination(upload, seq)], remove_as_of_time=stamp
        )
        answer = self._call(
            lambda: self.ingestion.remove_all_audience_members(
                request=request, retry=None, timeout=self.timeout
            ),
            f"replace: remove members not in upload {upload.handle}",
        )
        return str(answer.request_id)

    def _retrieve(self, request_id: str) -> tuple[Any, int]:
        """(status, rejected records) of one request, as Google reports it for our destination."""
        answer = self._call(
            lambda: self.ingestion.retrieve_request_status(
                request=dm.RetrieveRequestStatusRequest(request_id=request_id),
                retry=None,
                timeout=self.timeout,
            ),
            "read request status",
        )
        statuses = list(answer.request_status_per_destination)
        if not statuses:
            return Status.PROCESSING, 0
        st = statuses[0]
        errors = sum(int(c.record_count) for c in st.error_info.error_counts)
        return st.request_status, errors

    # ------------------------------------------------------------------ helpers
    def _destination(self, upload: Upload, seq: int) -> dm.Destination:
        dest = dm.Destination(
            reference=f"{upload.handle}#{seq}",
            operating_account=dm.ProductAccount(
                account_id=self.account, account_type=_AccountType.GOOGLE_ADS
            ),
            product_destination_id=str(upload.audience_id),
        )
        if self.login_account:
            dest.login_account = dm.ProductAccount(
                account_id=self.login_account, account_type=_AccountType.GOOGLE_ADS
            )
        if self.linked_account:
            dest.linked_account = dm.ProductAccount(
                account_id=self.linked_account, account_type=_AccountType.GOOGLE_ADS
            )
        return dest

    def _list_metadata(self) -> tuple[tuple[str, str], ...]:
        """UserListService takes the login / linked account as request headers."""
        out: list[tuple[str, str]] = []
        if self.login_account:
            out.append(("login-account", account_path(self.login_account)))
        if self.linked_account:
            out.append(("linked-account", account_path(self.linked_account)))
        return tuple(out)

    def _receipt(self, upload: Upload, seq: int) -> Receipt | None:
        return self._all_receipts(upload).get(seq)

    def _all_receipts(self, upload: Upload) -> dict[int, Receipt]:
        """Batch number -> receipt: the engine's (``upload.receipts``) and this process's own."""
        out = {seq: Receipt.parse(text) for seq, text in upload.receipts}
        out.update({seq: r for (handle, seq), r in self._receipts.items() if handle == upload.handle})
        return out

    def _replace_start(self, upload: Upload, current: Receipt) -> float:
        """When the replace's first batch went out: members last added before then are not in it."""
        times = [r.sent for r in self._all_receipts(upload).values() if r.sent] + [current.sent]
        return min(times)

    def _call(self, fn: Callable[[], T], what: str, *, name_bad_members: int = 0) -> T:
        """``fn()`` with Google's errors mapped; with ``name_bad_members`` (the request's member count), a
        refusal naming members of the request raises :class:`_BadMembers` instead."""
        self.requests_made += 1
        try:
            return fn()
        except gexc.GoogleAPICallError as exc:
            indexes = _bad_members(exc) if name_bad_members else []
            if indexes and indexes[-1] < name_bad_members:
                raise _BadMembers(indexes) from None
            raise self._classify(exc, what) from None
        except auth_exc.RefreshError:
            raise PermanentDestinationError(
                f"Data Manager {what}: Google refused to issue an access token for Airflow connection "
                f"'{self.conn_label}'. Fix the service-account key or the OAuth client id/secret/refresh token "
                "in its extras (the refresh token may be revoked or expired)."
            ) from None
        except auth_exc.TransportError:
            raise TransientDestinationError(
                f"Data Manager {what}: could not reach Google's token endpoint; will retry"
            ) from None

    def _classify(self, exc: gexc.GoogleAPICallError, what: str) -> Exception:
        status = exc.grpc_status_code or grpc.StatusCode.UNKNOWN
        code = status.value[0]
        reason = exc.reason or ""
        subcode = Reason[reason].value if reason in Reason.__members__ else None
        message = str(exc.message or "")[:300]
        fields = _violations(exc)  # field paths and reasons only: never a value sent
        detail = (
            f"Data Manager {what} failed: {status.name}"
            + (f" ({reason})" if reason else "")
            + f": {message}"
            + (f" [{fields}]" if fields else "")
        )
        if status in TRANSIENT_STATUSES:
            return TransientDestinationError(detail + "; will retry with backoff", code=code, subcode=subcode)
        acct, conn = self.account, self.conn_label
        if status == grpc.StatusCode.UNAUTHENTICATED:
            fix = (
                f"Google refused the credentials of Airflow connection '{conn}': check its service-account key "
                "or OAuth refresh token, and that they carry the https://www.googleapis.com/auth/datamanager scope."
            )
        elif subcode == Reason.TERMS_AND_CONDITIONS_NOT_SIGNED:
            fix = (
                f"Accept the Customer Match terms of service in Google Ads account {acct} "
                "(Tools > Shared library > Audience manager) and re-run."
            )
        elif "consent" in fields:
            fix = (
                "Google refuses Customer Match data whose consent is DENIED: set the campaign destination's "
                "consent (ad_user_data, ad_personalization) to GRANTED for members who consented."
            )
        elif subcode == Reason.NOT_ALLOWLISTED:
            fix = f"Google Ads account {acct} is not allowlisted for this feature; ask your Google representative."
        elif status == grpc.StatusCode.PERMISSION_DENIED:
            fix = (
                f"The Google account of connection '{conn}' has no access to Google Ads account {acct}: grant it "
                "access, or set login_account_id to the manager account it signs in through; and enable the "
                "Data Manager API in its Google Cloud project."
            )
        elif status == grpc.StatusCode.NOT_FOUND or subcode in (
            Reason.INVALID_USER_LIST_ID,
            Reason.INVALID_DESTINATION,
        ):
            fix = f"The user list does not exist in Google Ads account {acct} or connection '{conn}' cannot see it."
        else:
            fix = "Check the request and the account settings; retrying will not help."
        return PermanentDestinationError(f"{detail}. {fix}", code=code, subcode=subcode)


class _BadMembers(Exception):
    """Google refused the request for the members at these indexes (of that request)."""

    def __init__(self, indexes: list[int]) -> None:
        super().__init__(f"{len(indexes)} bad member(s)")
        self.indexes = indexes


def _violations(exc: gexc.GoogleAPICallError, most: int = 3) -> str:
    """``field: REASON`` of the first BadRequest violations that name no member (those are rows)."""
    found = [
        f"{v.field}: {v.reason}"
        for d in exc.details or ()
        if isinstance(d, error_details_pb2.BadRequest)
        for v in d.field_violations
        if not _MEMBER_AT.search(v.field)
    ]
    return "; ".join(found[:most])


def _bad_members(exc: gexc.GoogleAPICallError) -> list[int]:
    """Indexes of the audience members a BadRequest names (``audience_members.audience_members[i]``)."""
    if exc.grpc_status_code != grpc.StatusCode.INVALID_ARGUMENT:
        return []
    found: set[int] = set()
    for detail in exc.details or ():
        if isinstance(detail, error_details_pb2.BadRequest):
            for violation in detail.field_violations:
                match = _MEMBER_AT.search(violation.field)
                if match is not None:
                    found.add(int(match.group(1)))
    return sorted(found)


def _member(schema: Sequence[str], row: Sequence[str], *, with_consent: bool = True) -> Any:
    """One row -> an ``AudienceMember`` protobuf: one identifier per e-mail / phone, the address as one,
    and the row's own consent, which overrides the request's (a purpose the row leaves unspecified
    keeps the request's)."""
    ids = []
    address: dict[str, str] = {}
    consent: dict[str, Any] = {}
    for key, value in zip(schema, row, strict=True):
        if not value:
            continue
        if key in HASHED_KEYS:
            ids.append(_IDENTIFIER(**{key: value}))
        elif key in ADDRESS_KEYS:
            address[key] = value
        elif key in CONSENT_KEYS:
            if with_consent and value != "UNSPECIFIED":
                consent[key] = consent_status(value)
        else:
            raise ValueError(
                f"Data Manager has no identifier {key!r}; expected {', '.join(HASHED_KEYS + ADDRESS_KEYS)}"
            )
    if address:
        ids.append(_IDENTIFIER(address=_ADDRESS(**address)))
    if len(ids) > MAX_IDENTIFIERS:
        raise ValueError(
            f"a member carries {len(ids)} identifiers; Data Manager takes at most {MAX_IDENTIFIERS}"
        )
    member = _MEMBER(user_data=_USER_DATA(user_identifiers=ids))
    if consent:
        member.consent.CopyFrom(_CONSENT(**consent))
    return member


# raw protobuf classes: building 10,000 members through proto-plus wrappers costs seconds
_MEMBER = audience.AudienceMember.pb()
_USER_DATA = user_data.UserData.pb()
_IDENTIFIER = user_data.UserIdentifier.pb()
_ADDRESS = user_data.AddressInfo.pb()
_CONSENT = dm.Consent.pb()


def _owned(ul: dm.UserList) -> bool:
    """Lists the account owns (shared or licensed ones cannot be written)."""
    return ul.access_reason in (
        dm.UserList.AccessReason.OWNED,
        dm.UserList.AccessReason.ACCESS_REASON_UNSPECIFIED,
    )


def _audience(ul: dm.UserList) -> PlatformAudience:
    size = ul.size_info.display_network_members_count if "size_info" in ul else None
    return PlatformAudience(
        id=str(ul.id),
        name=ul.display_name,
        size=int(size) if size is not None else None,
        status=ul.membership_status.name,
    )
