"""Meta custom audiences through the real facebook-business SDK.

The SDK's own normaliser deviates from Meta's rules (see the Meta reference §1.5), so rows arrive here
already normalised and hashed by :mod:`audience_sync.core.normalize` and go out with ``is_raw: true``
in the multi-key list schema. Removals travel one of three ways (:data:`REMOVE_VIA`, the connection
extra ``remove_via``): by default the way the SDK sends them, a DELETE with the payload in the URL, in
batches small enough for real front ends (§1.8); or with the payload in the request body, in full
10,000-row batches (README, "Removals on Meta", has the evidence for each).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import quote_plus, urlencode

import requests
from facebook_business.adobjects.adaccount import AdAccount
from facebook_business.adobjects.customaudience import CustomAudience
from facebook_business.api import FacebookAdsApi
from facebook_business.exceptions import FacebookError, FacebookRequestError
from facebook_business.session import FacebookSession

from audience_sync.core.contract import (
    UPLOAD_OPS,
    Destination,
    PlatformAudience,
    ProcessingStatus,
    Upload,
    UploadResult,
    pack,
)
from audience_sync.core.errors import PermanentDestinationError, TransientDestinationError
from audience_sync.platforms.meta import META

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_GRAPH_URL = "https://graph.facebook.com"
DEFAULT_API_VERSION = "v26.0"

#: Meta error codes worth a retry with backoff (reference §1.6)
TRANSIENT_CODES = {1, 2, 4, 17, 341, 613, 80003}
#: 2650 with these subcodes means "audience busy" (a replace or upload is running)
BUSY_SUBCODES = {1870145, 1870158}

#: how removals reach ``/{audience_id}/users`` (the Meta connection extra ``remove_via``)
REMOVE_VIA: dict[str, str] = {
    "delete": "DELETE with the payload in the URL, as the SDK sends it; batches sized to a URL budget",
    "delete_body": "DELETE with the payload in a multipart body, as Meta's Java SDK sends it since 2024",
    "post_override": "POST with method=delete (the Graph API's method override); unverified on /users",
}
#: the default is the path real uploads have used for years; the body routes lift the URL limit
DEFAULT_REMOVE_VIA = "delete"

AUDIENCE_FIELDS = [
    "id",
    "name",
    "time_created",
    "approximate_count_lower_bound",
    "approximate_count_upper_bound",
    "operation_status",
]


def make_meta_api(
    access_token: str,
    *,
    app_secret: str | None = None,
    graph_url: str | None = None,
    api_version: str = DEFAULT_API_VERSION,
    timeout: float = 60.0,
) -> FacebookAdsApi:
    """Build an API object without ``FacebookAdsApi.init()`` (no global default, no crash reporter)."""
    session = FacebookSession(access_token=access_token, app_secret=app_secret, timeout=timeout)
    if graph_url:
        session.GRAPH = graph_url.rstrip("/")
    return FacebookAdsApi(session, api_version=api_version)


def normalize_account_id(account: str) -> str:
    """``act_123`` or ``123`` -> ``act_123``."""
    account = str(account).strip()
    return account if account.startswith("act_") else f"act_{account}"


class MetaDestination(Destination):
    """One Meta ad account.

    :param api: a :class:`FacebookAdsApi` (see :func:`make_meta_api`).
    :param ad_account_id: with or without the ``act_`` prefix.
    :param conn_label: the Airflow connection id, named in error messages so operators know what to fix.
    :param remove_via: how removals travel, one of :data:`REMOVE_VIA` (default ``delete``).
    """

    platform = META.name
    # the limits are the platform's registered facts (audience_sync.platforms.meta), not repeated here
    max_batch_rows = META.max_batch_rows
    #: a DELETE with the payload in the URL (the default) also sizes removal batches so that the
    #: encoded payload stays under this budget (python-sdk#717: ~21 KB breaks, ~18 KB works)
    max_remove_rows = META.max_remove_rows
    url_budget_bytes = 12_000

    def __init__(
        self,
        api: FacebookAdsApi,
        ad_account_id: str,
        conn_label: str = "meta_default",
        *,
        remove_via: str = DEFAULT_REMOVE_VIA,
    ) -> None:
        if remove_via not in REMOVE_VIA:
            raise ValueError(
                f"unknown remove_via {remove_via!r} for Meta connection '{conn_label}'; set the connection "
                f"extra remove_via to one of {', '.join(REMOVE_VIA)} (or leave it out for {DEFAULT_REMOVE_VIA})"
            )
        self.api = api
        self.account = normalize_account_id(ad_account_id)
        self.conn_label = conn_label
        self.remove_via = remove_via
        if remove_via != "delete":
            # the payload rides in the body, so no URL limits the batch: removals fill batches like adds
            self.max_remove_rows = self.max_batch_rows

    @property
    def requests_made(self) -> int:  # type: ignore[override]
        return int(self.api.get_num_requests_attempted())

    def split_removals(
        self, schema: Sequence[str], rows: Sequence[Sequence[str]]
    ) -> list[list[Sequence[str]]]:
        """Pack removal rows by their URL-encoded size, so every DELETE stays within ``url_budget_bytes``.

        Unhashed EXTERN_ID / MADID values can be long, so rows are measured, not counted. When the
        payload travels in the body (``remove_via`` other than ``delete``), batches of
        ``max_remove_rows`` rows.
        """
        if self.remove_via != "delete":
            return super().split_removals(schema, rows)
        budget = self.url_budget_bytes - _encoded_len(list(schema)) - 300  # schema, session, token
        sizes = [_encoded_len(list(row)) + 3 for row in rows]  # + %2C between rows
        for size in sizes:
            if size > budget:
                raise ValueError(
                    f"one removal row is {size} bytes once URL-encoded, over the {self.url_budget_bytes}-byte "
                    "budget of a DELETE request; shorten the unhashed identifiers (external_id, madid)"
                )
        return pack(rows, sizes, budget, self.max_remove_rows)

    # ------------------------------------------------------------ audiences
    def find_audiences(self, name: str) -> list[PlatformAudience]:
        def _list() -> list[PlatformAudience]:
            cursor = AdAccount(self.account, api=self.api).get_custom_audiences(
                fields=AUDIENCE_FIELDS, params={"limit": 200}
            )
            return [_audience(a) for a in cursor if a.get("name") == name]

        found = self._call(_list, "list custom audiences")
        return sorted(found, key=lambda a: (a.created_time, _id_key(a.id)))

    def get_audience(self, audience_id: str) -> PlatformAudience | None:
        try:
            obj = self._call(
                lambda: CustomAudience(audience_id, api=self.api).api_get(fields=AUDIENCE_FIELDS),
                f"read audience {audience_id}",
            )
        except PermanentDestinationError as exc:
            if exc.code == 100 and exc.subcode == 33:
                return None
            raise
        return _audience(obj)

    def create_audience(self, name: str, description: str) -> PlatformAudience:
        obj = self._call(
            lambda: AdAccount(self.account, api=self.api).create_custom_audience(
                params={
                    "name": name,
                    "subtype": "CUSTOM",
                    "description": description,
                    "customer_file_source": "USER_PROVIDED_ONLY",
                }
            ),
            f"create audience in {self.account}",
        )
        return PlatformAudience(id=str(obj["id"]), name=name)

    # ------------------------------------------------------------ the upload lifecycle
    def open_upload(self, audience_id: str, op: str, *, key: str, estimated_total: int) -> Upload:
        """A Meta upload is a session whose id we pick: derived from ``key``, no request needed."""
        if op not in UPLOAD_OPS:
            raise ValueError(f"unknown upload operation {op!r}; use one of {', '.join(UPLOAD_OPS)}")
        return Upload(audience_id, op, str(session_id_for(key)), estimated_total)

    def send_batch(
        self, upload: Upload, seq: int, schema: Sequence[str], rows: Sequence[Sequence[str]], *, last: bool
    ) -> UploadResult:
        """One batch of the session; Meta replays a known ``batch_seq`` instead of applying it twice."""
        remove = upload.op == "remove"
        limit = self.max_remove_rows if remove else self.max_batch_rows
        if len(rows) > limit:
            raise ValueError(f"batch of {len(rows)} rows exceeds the limit of {limit}")
        params: dict[str, Any] = {
            "payload": {"schema": list(schema), "data": [list(r) for r in rows], "is_raw": True},
            "session": {
                "session_id": int(upload.handle),
                "batch_seq": seq,
                "last_batch_flag": last,
                "estimated_num_total": upload.estimated_total,
            },
        }
        if remove and self.remove_via == "delete":
            url_bytes = len(
                urlencode(
                    {k: json.dumps(v, sort_keys=True, separators=(",", ":")) for k, v in params.items()}
                )
            )
            if url_bytes > self.url_budget_bytes:
                raise ValueError(
                    f"removal of {len(rows)} rows needs a {url_bytes}-byte URL, over the "
                    f"{self.url_budget_bytes}-byte budget; cut it with split_removals()"
                )
        audience = CustomAudience(upload.audience_id, api=self.api)
        send = {
            "add": audience.create_user,
            "remove": audience.delete_users,
            "replace": audience.create_users_replace,
        }
        if remove and self.remove_via != "delete":
            resp = self._call(lambda: self._remove_in_body(upload.audience_id, params), upload.op)
        else:
            resp = self._call(lambda: send[upload.op](params=params), upload.op)
        return _result(resp, len(rows))

    def _remove_in_body(self, audience_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """One removal with the payload in the request body instead of the URL.

        Through the SDK's own ``call`` (same session, token, appsecret_proof, error parsing and request
        count), which puts a DELETE's params in the URL and a POST's in the form body; for a DELETE
        the params go as multipart fields instead, encoded the way the SDK encodes them.
        """
        path = (audience_id, "users")
        if self.remove_via == "post_override":
            return self.api.call("POST", path, params={**params, "method": "delete"}).json()
        fields = {k: (None, json.dumps(v, sort_keys=True, separators=(",", ":"))) for k, v in params.items()}
        return self.api.call("DELETE", path, files=fields).json()

    def upload_status(self, upload: Upload) -> ProcessingStatus:
        """Read the session (``GET /{audience_id}/sessions?session_id=``): done once it left
        ``uploading``/``processing`` at 100 %; ``expired`` means Meta dropped the upload."""
        sessions = self._call(
            lambda: list(
                CustomAudience(upload.audience_id, api=self.api).get_sessions(
                    params={"session_id": upload.handle}
                )
            ),
            "read upload session",
        )
        found = [s for s in sessions if str(s.get("session_id")) == upload.handle]
        if not found:
            return ProcessingStatus(done=False, detail=f"session {upload.handle} not listed yet")
        sess = found[0]
        stage = str(sess.get("stage") or "")
        progress = _int(sess.get("progress"))
        invalid = _int(sess.get("num_invalid_entries")) or 0
        detail = f"session {upload.handle}: stage {stage or '?'}, progress {progress}%"
        if stage == "expired":
            return ProcessingStatus(done=True, failed=True, invalid=invalid, progress=progress, detail=detail)
        done = stage not in ("uploading", "processing", "") and (progress is None or progress >= 100)
        return ProcessingStatus(done=done, invalid=invalid, progress=progress, detail=detail)

    # ------------------------------------------------------------- helpers
    def _call(self, fn: Callable[[], T], what: str) -> T:
        try:
            return fn()
        except FacebookRequestError as exc:
            raise self._classify(exc, what) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransientDestinationError(
                f"Meta {what}: connection problem ({type(exc).__name__}); will retry"
            ) from None
        except FacebookError as exc:
            raise PermanentDestinationError(f"Meta {what}: {exc}") from None

    def _classify(self, exc: FacebookRequestError, what: str) -> Exception:
        code, sub = exc.api_error_code(), exc.api_error_subcode()
        status = exc.http_status() or 0
        detail = f"Meta {what} failed: {exc.api_error_message()} (code {code}, subcode {sub}, HTTP {status})"
        act = self.account
        digits = act.removeprefix("act_")
        if code in TRANSIENT_CODES or (code == 2650 and sub in BUSY_SUBCODES) or status >= 500:
            return TransientDestinationError(detail + "; will retry with backoff", code=code, subcode=sub)
        if code == 190:
            fix = (
                f"The access token in Airflow connection '{self.conn_label}' is invalid or expired. "
                "Create a new system-user token with ads_management and store it as the connection's password."
            )
        elif code in (10, 200, 294):
            fix = (
                f"The token of connection '{self.conn_label}' lacks permission on {act}. Grant ads_management "
                "and add the system user to the ad account as Admin."
            )
        elif code in (2655, 2663):
            fix = (
                f"The Custom Audience terms are not accepted for {act}. Accept them at "
                f"https://www.facebook.com/customaudiences/app/tos/?act={digits} and re-run."
            )
        elif code == 100 and sub == 1713230:
            fix = (
                "Meta flagged this audience (its name or data may suggest health or financial status) and "
                "blocks uploads. Use a neutral segment name or ask Meta for a review."
            )
        elif code == 100 and sub == 33:
            fix = f"The object does not exist or the token of '{self.conn_label}' cannot see it on {act}."
        else:
            fix = "Check the request and the account settings; retrying will not help."
        return PermanentDestinationError(f"{detail}. {fix}", code=code, subcode=sub)


def _audience(obj: Any) -> PlatformAudience:
    size = obj.get("approximate_count_lower_bound")
    status = obj.get("operation_status")
    return PlatformAudience(
        id=str(obj["id"]),
        name=str(obj.get("name", "")),
        created_time=_epoch(obj.get("time_created")),
        size=int(size) if size is not None else None,
        status=str(status.get("description")) if isinstance(status, dict) else None,
    )


def _epoch(value: Any) -> int:
    if value is None:
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        import datetime as dt

        try:
            return int(dt.datetime.fromisoformat(str(value).replace("+0000", "+00:00")).timestamp())
        except ValueError:
            return 0


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def session_id_for(*parts: object) -> int:
    """A stable positive int64 session id (same inputs -> same id)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF or 1


def _encoded_len(value: Any) -> int:
    return len(quote_plus(json.dumps(value, separators=(",", ":"))))


def _id_key(audience_id: str) -> tuple[int, str]:
    return (len(audience_id), audience_id)


def _result(resp: Any, n: int) -> UploadResult:
    data = resp.export_all_data() if hasattr(resp, "export_all_data") else dict(resp or {})
    received = int(data.get("num_received", n) or 0)
    invalid = int(data.get("num_invalid_entries", 0) or 0)
    samples = data.get("invalid_entry_samples") or {}
    rows = sorted(int(k) for k in samples if str(k).isdigit()) if isinstance(samples, dict) else []
    return UploadResult(received=received, invalid=invalid, invalid_rows=rows)
