"""Meta Graph (Marketing API) custom-audience emulation for the loopback sandbox.

Serves ``/v<major>.<minor>/...`` (any version) with the subset of the Graph API that
audience-sync uses, shaped after the facebook-business SDK 26.0.3 wire format:

* ``GET|POST /act_{id}/customaudiences`` - list (cursor paging, ``fields``, ``summary``) / create.
* ``GET|POST|DELETE /{audience_id}`` - read / rename / delete.
* ``POST|DELETE /{audience_id}/users`` - add / remove members. A DELETE's parameters are read from its
  body as well as its URL (the SDK puts them in the URL, which the server's URL limit then applies to;
  Meta's Java SDK puts them in a multipart body), and ``POST`` with ``method=delete`` is a DELETE.
* ``POST /{audience_id}/usersreplace`` - replace members, batch by batch, within one session.
* ``GET /{audience_id}/sessions`` - upload sessions.

Deliberate simplifications (documented so nobody mistakes them for Meta behaviour):

* ``approximate_count_lower_bound`` and ``_upper_bound`` both report the exact member count,
  immediately. Real Meta buckets the counts and lags up to 24 h behind uploads.
* A member is identified by its non-empty ``(key, value)`` pairs. Removing deletes only members whose
  pairs are identical, so removals must use the same schema and hashes as the add (as with Meta,
  python-sdk#285). ``num_matched`` counts valid rows (adds/replace) or removed members (removals).
* While a ``usersreplace`` session is open the audience reports ``operation_status``
  ``{"code": 414, ...}`` (busy) and ``/users`` answers error 2650/1870145 with
  ``is_transient: false``: classify by code/subcode, not by ``is_transient``. An open replace
  session expires after ``replace_timeout_seconds`` (default 90 min): its rows are discarded, the
  membership is left unchanged and the session's ``stage`` becomes ``"expired"``.
* Session objects (``/sessions``) carry string values, as the SDK declares them. A session closed by
  its last batch reports ``stage: "processing"`` for ``processing_seconds`` (default 0; set it on the
  object or with ``POST /_sandbox/meta/processing {"seconds": n}``), then ``"processed"``. Meta's
  stage values are undocumented; members are applied at once either way.
* The Graph ``method`` override (a POST whose ``method`` parameter is ``get``, ``post`` or ``delete``,
  any case) is handled as a request of that method on every path, as Meta's old SDKs relied on; the
  request log keeps the wire method and adds ``method_override``. Whether Meta still honours it on
  ``/users`` is not verified (README, "Removals on Meta"); any other ``method`` value is error 100.
* ``filtering`` on the list edge is not emulated and is rejected with error 100 rather than silently
  ignored.
* Audience ids are numeric strings from 23850000000000001 upwards; ids are never reused, even after
  :meth:`MetaSandbox.reset`.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import hmac
import json
import re
import secrets
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from audience_sync.sandbox.base import FaultRule, Journal, PlatformApp, SandboxRequest, SandboxResponse

GRAPH_PATH = re.compile(r"^/v\d+\.\d+(?:/|$)")
ACCOUNT_ID = re.compile(r"^act_\d+$")
NODE_ID = re.compile(r"^\d+$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")

FIRST_AUDIENCE_ID = 23850000000000001
MAX_ROWS_PER_REQUEST = 10000
DEFAULT_PAGE_SIZE = 25
MAX_PAGE_SIZE = 500
MAX_INVALID_SAMPLES = 10

SINGLE_KEYS = frozenset({"EMAIL_SHA256", "PHONE_SHA256", "MOBILE_ADVERTISER_ID"})
MULTI_KEYS = (
    "EXTERN_ID",
    "EMAIL",
    "PHONE",
    "GEN",
    "DOBY",
    "DOBM",
    "DOBD",
    "LN",
    "FN",
    "FI",
    "CT",
    "ST",
    "ZIP",
    "MADID",
    "COUNTRY",
)
UNHASHED_KEYS = frozenset({"EXTERN_ID", "MADID", "MOBILE_ADVERTISER_ID"})
FORM_MULTI = "MULTI_HASHES"
FORM_SINGLE = "HASHES_OR_USER_IDS"
CUSTOMER_FILE_SOURCES = ("USER_PROVIDED_ONLY", "PARTNER_PROVIDED_ONLY", "BOTH_USER_AND_PARTNER_PROVIDED")

AUDIENCE_FIELDS = frozenset(
    {
        "id",
        "account_id",
        "name",
        "subtype",
        "description",
        "customer_file_source",
        "approximate_count_lower_bound",
        "approximate_count_upper_bound",
        "operation_status",
        "delivery_status",
        "time_created",
        "time_updated",
        "time_content_updated",
        "data_source",
        "retention_days",
        "is_value_based",
    }
)

BUSY_SUBCODE = 1870145
FLAGGED_SUBCODE = 1713230
TRANSIENT_CODES = frozenset({1, 2, 4, 17, 341, 613, 80003})
DEFAULT_FAULT_MESSAGES = {
    1: "An unknown error occurred",
    2: "Service temporarily unavailable",
    4: "Application request limit reached",
    10: "Application does not have permission for this action",
    17: "User request limit reached",
    100: "Invalid parameter",
    190: "Error validating access token: Session has expired",
    200: "(#200) Permissions error",
    341: "Application limit reached",
    368: "The action attempted has been deemed abusive or is otherwise disallowed",
    613: "Calls to this api have exceeded the rate limit.",
    2650: "(#2650) Failed to update the custom audience",
    2655: "(#2655) Terms of service has not been accepted",
    2663: "(#2663) Terms of service has not been accepted.",
    80003: "(#80003) There have been too many calls to this ad-account. Wait a bit and try again.",
}


class GraphError(Exception):
    """A Graph error to answer in Meta's envelope."""

    def __init__(
        self,
        message: str,
        code: int,
        subcode: int | None = None,
        *,
        http_status: int = 400,
        error_type: str = "OAuthException",
        is_transient: bool = False,
        user_title: str | None = None,
        user_msg: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.subcode = subcode
        self.http_status = http_status
        self.error_type = error_type
        self.is_transient = is_transient
        self.user_title = user_title
        self.user_msg = user_msg


def _trace_id() -> str:
    alphabet = string.ascii_letters + string.digits
    return "A" + "".join(secrets.choice(alphabet) for _ in range(22))


def error_body(
    message: str,
    code: int,
    subcode: int | None = None,
    *,
    error_type: str = "OAuthException",
    is_transient: bool = False,
    user_title: str | None = None,
    user_msg: str | None = None,
    trace_id: str | None = None,
) -> dict[str, Any]:
    """Meta's error envelope."""
    err: dict[str, Any] = {"message": message, "type": error_type, "code": code}
    if subcode is not None:
        err["error_subcode"] = subcode
    err["is_transient"] = is_transient
    if user_title:
        err["error_user_title"] = user_title
    if user_msg:
        err["error_user_msg"] = user_msg
    err["fbtrace_id"] = trace_id or _trace_id()
    return {"error": err}


def _unsupported(method: str, object_id: str) -> GraphError:
    return GraphError(
        f"Unsupported {method.lower()} request. Object with ID '{object_id}' does not exist, cannot be "
        "loaded due to missing permissions, or does not support this operation. Please read the Graph "
        "API documentation at https://developers.facebook.com/docs/graph-api",
        100,
        33,
        error_type="GraphMethodException",
    )


def _param_error(message: str) -> GraphError:
    return GraphError(f"(#100) {message}", 100)


def member_key(member: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(member.items()))


# --------------------------------------------------------------------------------------------
# State


@dataclass
class UploadSession:
    session_id: int
    kind: str  # "add" | "remove" | "replace"
    start_time: int
    stage: str = "uploading"  # "uploading" | "processed" | "expired"
    end_time: int | None = None
    num_received: int = 0
    num_invalid_entries: int = 0
    num_matched: int = 0
    estimated_num_total: int | None = None
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    rows: dict[tuple[tuple[str, str], ...], dict[str, str]] = field(default_factory=dict)
    schema: list[str] = field(default_factory=list)

    def to_graph(self, now: float = 0.0, processing_seconds: float = 0.0) -> dict[str, Any]:
        stage = self.stage
        if stage == "processed" and self.end_time is not None and now < self.end_time + processing_seconds:
            stage = "processing"  # handed over, not yet processed (see MetaSandbox.processing_seconds)
        if stage == "uploading":
            total = self.estimated_num_total or 0
            progress = min(99, int(100 * self.num_received / total)) if total else 0
        else:
            progress = 90 if stage == "processing" else 100
        out = {
            "session_id": str(self.session_id),
            "stage": stage,
            "progress": str(progress),
            "num_received": str(self.num_received),
            "num_matched": str(self.num_matched),
            "num_invalid_entries": str(self.num_invalid_entries),
            "start_time": str(self.start_time),
        }
        if self.end_time is not None:
            out["end_time"] = str(self.end_time)
        return out

    def dump(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "kind": self.kind,
            "start_time": self.start_time,
            "stage": self.stage,
            "end_time": self.end_time,
            "num_received": self.num_received,
            "num_invalid_entries": self.num_invalid_entries,
            "num_matched": self.num_matched,
            "estimated_num_total": self.estimated_num_total,
            "batches": self.batches,
            "rows": list(self.rows.values()),
            "schema": self.schema,
        }

    @classmethod
    def load(cls, data: dict[str, Any]) -> UploadSession:
        data = dict(data)
        rows = data.pop("rows", [])
        sess = cls(**data)
        sess.rows = {member_key(m): m for m in rows}
        return sess


@dataclass
class Audience:
    id: str
    account: str
    name: str
    subtype: str = "CUSTOM"
    description: str = ""
    customer_file_source: str | None = None
    time_created: int = 0
    time_updated: int = 0
    time_content_updated: int = 0
    deleted: bool = False
    flagged: bool = False
    form: str | None = None
    schema: list[str] = field(default_factory=list)
    members: dict[tuple[tuple[str, str], ...], dict[str, str]] = field(default_factory=dict)
    sessions: dict[int, UploadSession] = field(default_factory=dict)
    replace_session: int | None = None

    def operation_status(self) -> dict[str, Any]:
        if self.flagged:
            return {
                "code": 471,
                "description": "This audience has been flagged: its name or data may "
                "suggest sensitive information. Edits are blocked.",
            }
        if self.replace_session is not None:
            return {"code": 414, "description": "This audience is busy: a replace session is in progress."}
        return {"code": 200, "description": "Normal"}

    def data_source(self) -> dict[str, Any]:
        if self.form is None:
            return {"type": "UNKNOWN", "sub_type": "ANYTHING", "creation_params": "[]"}
        return {"type": "FILE_IMPORTED", "sub_type": self.form, "creation_params": "[]"}

    def graph_field(self, name: str) -> Any:
        count = len(self.members)
        values: dict[str, Callable[[], Any]] = {
            "id": lambda: self.id,
            "account_id": lambda: self.account.removeprefix("act_"),
            "name": lambda: self.name,
            "subtype": lambda: self.subtype,
            "description": lambda: self.description,
            "customer_file_source": lambda: self.customer_file_source,
            "approximate_count_lower_bound": lambda: count,
            "approximate_count_upper_bound": lambda: count,
            "operation_status": self.operation_status,
            "delivery_status": lambda: {"code": 200, "description": "This audience is ready for use."},
            "time_created": lambda: self.time_created,
            "time_updated": lambda: self.time_updated,
            "time_content_updated": lambda: self.time_content_updated,
            "data_source": self.data_source,
            "retention_days": lambda: 0,
            "is_value_based": lambda: False,
        }
        return values[name]()

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "account": self.account,
            "name": self.name,
            "subtype": self.subtype,
            "description": self.description,
            "customer_file_source": self.customer_file_source,
            "count": len(self.members),
            "data_source": self.form,
            "schema": list(self.schema),
            "operation_status": self.operation_status(),
            "replace_session_id": self.replace_session,
            "flagged": self.flagged,
            "time_created": self.time_created,
            "time_updated": self.time_updated,
        }

    def dump(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "account": self.account,
            "name": self.name,
            "subtype": self.subtype,
            "description": self.description,
            "customer_file_source": self.customer_file_source,
            "time_created": self.time_created,
            "time_updated": self.time_updated,
            "time_content_updated": self.time_content_updated,
            "deleted": self.deleted,
            "flagged": self.flagged,
            "form": self.form,
            "schema": self.schema,
            "members": list(self.members.values()),
            "sessions": [s.dump() for s in self.sessions.values()],
            "replace_session": self.replace_session,
        }

    @classmethod
    def load(cls, data: dict[str, Any]) -> Audience:
        data = dict(data)
        members = data.pop("members", [])
        sessions = data.pop("sessions", [])
        aud = cls(**data)
        aud.members = {member_key(m): m for m in members}
        aud.sessions = {s["session_id"]: UploadSession.load(s) for s in sessions}
        return aud


@dataclass
class ParsedPayload:
    keys: list[str]
    form: str
    rows: list[list[Any]]


# --------------------------------------------------------------------------------------------
# Payload / session validation


def _json_object_param(raw: Any, name: str) -> dict[str, Any]:
    """A required form/query parameter holding a JSON object, as Graph parses it (error 100 otherwise)."""
    if raw is None or raw == "":
        raise _param_error(f"The parameter {name} is required")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise _param_error(f"Param {name} must be a JSON object") from exc
    if not isinstance(raw, dict):
        raise _param_error(f"Param {name} must be a JSON object")
    return raw


def parse_payload(raw: Any) -> ParsedPayload:
    """Validate ``payload``; raise :class:`GraphError` 100 for request-level problems."""
    raw = _json_object_param(raw, "payload")
    schema = raw.get("schema")
    data = raw.get("data")
    if isinstance(schema, str):
        if schema not in SINGLE_KEYS:
            raise _param_error(
                f"Invalid schema: {schema!r}. Use one of {sorted(SINGLE_KEYS)} or a list of "
                f"multi-key fields {list(MULTI_KEYS)}"
            )
        keys, form = [schema], FORM_SINGLE
    elif isinstance(schema, list) and schema:
        for key in schema:
            if key not in MULTI_KEYS:
                raise _param_error(
                    f"Invalid schema field: {key!r}. Multi-key schema fields are {', '.join(MULTI_KEYS)}"
                )
        if len(set(schema)) != len(schema):
            raise _param_error("Duplicate field in schema")
        keys, form = list(schema), FORM_MULTI
    else:
        raise _param_error("Data is missing or does not match schema: payload.schema is missing")
    if not isinstance(data, list):
        raise _param_error("Data is missing or does not match schema: payload.data must be a list")
    if len(data) > MAX_ROWS_PER_REQUEST:
        raise _param_error(
            f"Too many users in a single request, max {MAX_ROWS_PER_REQUEST} (got {len(data)})"
        )
    rows: list[list[Any]] = []
    if form == FORM_SINGLE:
        for index, item in enumerate(data):
            if isinstance(item, list | dict):
                raise _param_error(
                    f"Data is missing or does not match schema: row {index} is a "
                    f"{type(item).__name__}, schema {keys[0]} expects a flat list of values"
                )
            rows.append([item])
    else:
        for index, row in enumerate(data):
            if not isinstance(row, list) or len(row) != len(keys):
                size = len(row) if isinstance(row, list) else "not a list"
                raise _param_error(
                    f"Data is missing or does not match schema: row {index} has {size} "
                    f"values, the schema has {len(keys)} fields"
                )
            rows.append(row)
    return ParsedPayload(keys=keys, form=form, rows=rows)


def parse_session(raw: Any) -> dict[str, Any]:
    raw = _json_object_param(raw, "session")

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not is_int(raw.get("session_id")) or raw["session_id"] < 0:
        raise _param_error("session.session_id must be a non-negative integer")
    if not is_int(raw.get("batch_seq")) or raw["batch_seq"] < 1:
        raise _param_error("session.batch_seq must be an integer >= 1")
    if not isinstance(raw.get("last_batch_flag"), bool):
        raise _param_error("session.last_batch_flag must be a boolean")
    total = raw.get("estimated_num_total")
    if total is not None and (not is_int(total) or total < 0):
        raise _param_error("session.estimated_num_total must be a non-negative integer")
    return {
        "session_id": raw["session_id"],
        "batch_seq": raw["batch_seq"],
        "last_batch_flag": raw["last_batch_flag"],
        "estimated_num_total": total,
    }


def validate_rows(payload: ParsedPayload) -> tuple[list[dict[str, str]], dict[str, str]]:
    """Split rows into members and invalid rows (row index -> reason)."""
    members: list[dict[str, str]] = []
    invalid: dict[str, str] = {}
    for index, row in enumerate(payload.rows):
        member: dict[str, str] = {}
        reason = None
        for key, value in zip(payload.keys, row, strict=True):
            if value is None or value == "":
                continue
            if key in UNHASHED_KEYS:
                if isinstance(value, int | str) and not isinstance(value, bool):
                    member[key] = str(value)
                    continue
                reason = f"{key}: value must be a string"
                break
            if not isinstance(value, str) or not HEX64.match(value):
                reason = f"{key}: value is not a lowercase hex SHA-256 hash"
                break
            member[key] = value
        if reason is None and not member:
            reason = "all values are empty"
        if reason is None:
            members.append(member)
        else:
            invalid[str(index)] = reason
    return members, invalid


# --------------------------------------------------------------------------------------------
# The app


class MetaSandbox(PlatformApp):
    """Thread-safe Meta Graph custom-audience state plus HTTP handlers."""

    platform = "meta"

    def __init__(
        self,
        access_token: str | None = "sandbox-token",
        app_secret: str | None = None,
        *,
        replace_timeout_seconds: float = 5400.0,
        clock: Callable[[], float] = time.time,
        journal: Journal | None = None,
    ) -> None:
        super().__init__(journal)
        self.access_token = access_token
        self.app_secret = app_secret
        self.replace_timeout_seconds = replace_timeout_seconds
        #: a finished session reports stage ``processing`` for this long before ``processed`` (Meta
        #: processes uploads after accepting them; members are applied at once all the same)
        self.processing_seconds = 0.0
        self.clock = clock
        self._lock = threading.RLock()
        self._audiences: dict[str, Audience] = {}
        self._next_id = FIRST_AUDIENCE_ID

    # ------------------------------------------------------------------ helpers for tests/demo

    def audiences(self, account: str | None = None) -> list[dict[str, Any]]:
        """Non-deleted audiences (optionally of one ``act_...`` account) with member counts."""
        account = _account(account) if account else None
        with self._lock:
            return [
                a.summary()
                for a in self._audiences.values()
                if not a.deleted and (account is None or a.account == account)
            ]

    def audience(self, audience_id: str) -> dict[str, Any]:
        with self._lock:
            aud = self._live(str(audience_id))
            out = aud.summary()
            out["sessions"] = [
                s.to_graph(self.clock(), self.processing_seconds) for s in aud.sessions.values()
            ]
            return out

    def members(self, audience_id: str) -> list[dict[str, str]]:
        """Current members of an audience, each a dict schema-key -> value. KeyError if unknown."""
        with self._lock:
            return [dict(m) for m in self._live(str(audience_id)).members.values()]

    def create_audience(
        self,
        account: str,
        name: str,
        *,
        subtype: str = "CUSTOM",
        description: str = "",
        customer_file_source: str | None = "USER_PROVIDED_ONLY",
        flagged: bool = False,
    ) -> str:
        """Create an audience as if made by hand in Ads Manager; returns its id.

        ``flagged=True`` simulates Meta's 471 flag (uploads rejected with 100/1713230)."""
        with self._lock:
            aud = self._create(_account(account), name, subtype, description, customer_file_source)
            aud.flagged = flagged
        self.journal.changed()
        return aud.id

    def add_members(self, audience_id: str, schema: str | list[str], data: list[Any]) -> dict[str, Any]:
        """Add members in-process (same validation as ``POST /{id}/users``); returns the response."""
        session = {
            "session_id": secrets.randbelow(2**62),
            "batch_seq": 1,
            "last_batch_flag": True,
            "estimated_num_total": None,
        }
        with self._lock:
            body = self._upload(
                str(audience_id), "add", parse_payload({"schema": schema, "data": data}), session, "POST"
            )
        self.journal.changed()
        return body

    def forget(self) -> None:
        with self._lock:
            self._audiences.clear()

    # ------------------------------------------------------------------ persistence

    def dump_state(self) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(
                {
                    "next_id": self._next_id,
                    "audiences": [a.dump() for a in self._audiences.values()],
                }
            )

    def load_state(self, state: dict[str, Any]) -> None:
        with self._lock:
            self._next_id = int(state.get("next_id", FIRST_AUDIENCE_ID))
            self._audiences = {a["id"]: Audience.load(a) for a in state.get("audiences", [])}

    # ------------------------------------------------------------------ PlatformApp hooks

    def matches(self, path: str) -> bool:
        return GRAPH_PATH.match(path) is not None

    def fault_response(self, rule: FaultRule, request: SandboxRequest) -> SandboxResponse:
        code = rule.code if rule.code is not None else 2
        status = rule.http_status or (500 if code in (1, 2) else 400)
        transient = rule.is_transient if rule.is_transient is not None else code in TRANSIENT_CODES
        message = rule.message or DEFAULT_FAULT_MESSAGES.get(code, f"(#{code}) Injected sandbox fault")
        trace = _trace_id()
        body = error_body(
            message,
            code,
            rule.subcode,
            is_transient=transient,
            user_title=rule.error_user_title,
            user_msg=rule.error_user_msg,
            trace_id=trace,
        )
        headers = {"x-fb-trace-id": trace, **rule.headers}
        log: dict[str, Any] = {"error_code": code, "error_subcode": rule.subcode}
        try:  # record which upload batch the fault hit, so retries can be checked for the same session/seq
            log["session"] = parse_session(request.param("session"))
        except (GraphError, TypeError, ValueError):
            pass
        return SandboxResponse(status=status, body=body, headers=headers, log=log)

    def handle(self, request: SandboxRequest) -> SandboxResponse:
        log_fields: dict[str, Any] = {}
        trace = _trace_id()
        try:
            self._check_token(request)
            status, body, mutated = self._route(request, log_fields)
        except GraphError as err:
            log_fields.update(error_code=err.code, error_subcode=err.subcode)
            body = error_body(
                err.message,
                err.code,
                err.subcode,
                error_type=err.error_type,
                is_transient=err.is_transient,
                user_title=err.user_title,
                user_msg=err.user_msg,
                trace_id=trace,
            )
            return SandboxResponse(
                status=err.http_status, body=body, headers={"x-fb-trace-id": trace}, log=log_fields
            )
        return SandboxResponse(
            status=status, body=body, headers={"x-fb-trace-id": trace}, log=log_fields, mutated=mutated
        )

    def inspect(self, request: SandboxRequest, subpath: list[str]) -> SandboxResponse | None:
        method = request.method
        if subpath == ["audiences"] and method == "GET":
            account = request.query.get("account") or None
            return SandboxResponse(200, {"data": self.audiences(account)})
        if subpath == ["audiences"] and method == "POST":
            body = request.json_body if isinstance(request.json_body, dict) else dict(request.form)
            if not body.get("account") or not body.get("name"):
                raise ValueError("POST /_sandbox/meta/audiences needs 'account' and 'name'")
            with self._lock:
                aud = self._create(
                    _account(str(body["account"])),
                    str(body["name"]),
                    str(body.get("subtype", "CUSTOM")),
                    str(body.get("description", "")),
                    body.get("customer_file_source", "USER_PROVIDED_ONLY"),
                )
                aud.flagged = bool(body.get("flagged", False))
            return SandboxResponse(200, {"id": aud.id}, mutated=True)
        if subpath == ["processing"] and method == "POST":
            body = request.json_body if isinstance(request.json_body, dict) else dict(request.form)
            self.processing_seconds = float(body.get("seconds", 0))
            return SandboxResponse(200, {"processing_seconds": self.processing_seconds}, mutated=True)
        if len(subpath) in (2, 3) and subpath[0] == "audiences" and method == "GET":
            try:
                if len(subpath) == 2:
                    return SandboxResponse(200, self.audience(subpath[1]))
                if subpath[2] == "members":
                    with self._lock:
                        aud = self._live(subpath[1])
                        members = [dict(m) for m in aud.members.values()]
                        return SandboxResponse(
                            200,
                            {
                                "audience_id": aud.id,
                                "schema": list(aud.schema),
                                "count": len(members),
                                "members": members,
                            },
                        )
            except KeyError:
                return SandboxResponse(404, {"error": {"message": f"no audience {subpath[1]}"}})
        return None

    # ------------------------------------------------------------------ internals

    def _live(self, audience_id: str) -> Audience:
        aud = self._audiences.get(audience_id)
        if aud is None or aud.deleted:
            raise KeyError(audience_id)
        return aud

    def _create(
        self, account: str, name: str, subtype: str, description: str, customer_file_source: str | None
    ) -> Audience:
        now = int(self.clock())
        aud = Audience(
            id=str(self._next_id),
            account=account,
            name=name,
            subtype=subtype,
            description=description,
            customer_file_source=customer_file_source,
            time_created=now,
            time_updated=now,
        )
        self._next_id += 1
        self._audiences[aud.id] = aud
        return aud

    def _check_token(self, request: SandboxRequest) -> None:
        token = request.param("access_token")
        if not token:
            auth = request.header("authorization") or ""
            scheme, _, value = auth.partition(" ")
            if scheme.lower() in ("bearer", "oauth"):
                token = value.strip()
        if not token:
            raise GraphError("An access token is required to request this resource.", 190)
        if self.access_token is not None and not hmac.compare_digest(token, self.access_token):
            raise GraphError("Invalid OAuth access token - Cannot parse access token", 190)
        proof = request.param("appsecret_proof")
        if proof and self.app_secret:
            expected = hmac.new(self.app_secret.encode(), token.encode(), hashlib.sha256).hexdigest()
            if not hmac.compare_digest(proof, expected):
                raise GraphError(
                    "Invalid appsecret_proof provided in the API argument",
                    100,
                    error_type="GraphMethodException",
                )

    def _route(self, request: SandboxRequest, log_fields: dict[str, Any]) -> tuple[int, Any, bool]:
        parts = [p for p in request.path.split("/") if p][1:]  # drop the version
        method = request.method
        override = request.param("method") if method == "POST" else None
        if override:
            if override.upper() not in ("GET", "POST", "DELETE"):
                raise _param_error(
                    f"Unsupported method override {override!r}; the 'method' parameter of a POST may be "
                    "get, post or delete"
                )
            method = override.upper()
            log_fields["method_override"] = method
        if not parts:
            raise GraphError("Unsupported request: no object id in the path", 100)
        node, edge, rest = parts[0], (parts[1] if len(parts) > 1 else None), parts[2:]
        if rest:
            raise GraphError(f"Unknown path components: /{'/'.join(parts[1:])}", 2500)
        with self._lock:
            if ACCOUNT_ID.match(node):
                if edge == "customaudiences":
                    if method == "GET":
                        return 200, self._list_audiences(node, request), False
                    if method == "POST":
                        return 200, self._create_from_request(node, request, log_fields), True
                    raise _unsupported(method, node)
                if edge is None:
                    raise _unsupported(method, node)
                raise GraphError(f"Unknown path components: /{edge}", 2500)
            aud = self._audiences.get(node) if NODE_ID.match(node) else None
            if aud is not None and aud.deleted:
                aud = None
            if aud is None:
                raise _unsupported(method, node)
            log_fields["audience_id"] = aud.id
            self._expire_replace(aud)
            if edge is None:
                if method == "GET":
                    return 200, self._fields(aud, request), False
                if method == "DELETE":
                    aud.deleted = True
                    aud.members = {}
                    aud.sessions = {}
                    aud.replace_session = None
                    return 200, {"success": True}, True
                if method == "POST":
                    return 200, self._update(aud, request), True
                raise _unsupported(method, node)
            if edge in ("users", "usersreplace"):
                op = (
                    {"POST": "add", "DELETE": "remove"}.get(method)
                    if edge == "users"
                    else ("replace" if method == "POST" else None)
                )
                if op is None:
                    raise _unsupported(method, node)
                payload = parse_payload(request.param("payload"))
                log_fields["num_rows"] = len(payload.rows)
                session = parse_session(request.param("session"))
                log_fields["session"] = session
                log_fields["op"] = op
                body = self._upload(aud.id, op, payload, session, method, log_fields)
                return 200, body, True
            if edge == "sessions":
                if method != "GET":
                    raise _unsupported(method, node)
                return 200, self._sessions(aud, request), False
            raise GraphError(f"Unknown path components: /{edge}", 2500)

    def _requested_fields(self, request: SandboxRequest) -> list[str]:
        raw = request.param("fields") or ""
        names = [f.strip() for f in raw.split(",") if f.strip()]
        for name in names:
            if name not in AUDIENCE_FIELDS:
                raise _param_error(
                    f"Tried accessing nonexisting field ({name}) on node type (CustomAudience)"
                )
        return names

    def _fields(
        self, aud: Audience, request: SandboxRequest, names: list[str] | None = None
    ) -> dict[str, Any]:
        names = self._requested_fields(request) if names is None else names
        out = {name: aud.graph_field(name) for name in names if name != "id"}
        out["id"] = aud.id
        return {k: v for k, v in out.items() if v is not None}

    def _list_audiences(self, account: str, request: SandboxRequest) -> dict[str, Any]:
        if request.param("filtering"):
            raise _param_error(
                "The sandbox does not emulate 'filtering' on customaudiences; list with "
                "fields=id,name and match names client-side"
            )
        names = self._requested_fields(request)
        raw_limit = request.param("limit")
        try:
            limit = int(raw_limit) if raw_limit not in (None, "") else DEFAULT_PAGE_SIZE
        except ValueError as exc:
            raise _param_error(f"Param limit must be an integer, got {raw_limit!r}") from exc
        limit = max(1, min(limit, MAX_PAGE_SIZE))
        items = [a for a in self._audiences.values() if a.account == account and not a.deleted]
        items.sort(key=lambda a: int(a.id))
        after = request.param("after")
        if after:
            after_id = _decode_cursor(after)
            items_after = [a for a in items if int(a.id) > after_id]
        else:
            items_after = items
        page = items_after[:limit]
        body: dict[str, Any] = {"data": [self._fields(a, request, names) for a in page]}
        if page:
            paging: dict[str, Any] = {
                "cursors": {"before": _encode_cursor(page[0].id), "after": _encode_cursor(page[-1].id)}
            }
            if len(items_after) > limit:
                query = dict(request.query)
                query["after"] = paging["cursors"]["after"]
                query["limit"] = str(limit)
                paging["next"] = f"http://{request.host}{request.path}?{urlencode(query)}"
            body["paging"] = paging
        summary = (request.param("summary") or "").lower()
        if summary in ("true", "1", "total_count"):
            body["summary"] = {"total_count": len(items)}
        return body

    def _create_from_request(self, account: str, request: SandboxRequest, log_fields: dict[str, Any]) -> dict:
        name = (request.param("name") or "").strip()
        if not name:
            raise _param_error("The parameter name is required")
        subtype = request.param("subtype") or "CUSTOM"
        if subtype != "CUSTOM":
            raise _param_error(f"The sandbox only emulates subtype CUSTOM, got {subtype!r}")
        source = request.param("customer_file_source") or None
        if source is not None and source not in CUSTOMER_FILE_SOURCES:
            raise _param_error(
                f"Param customer_file_source must be one of {{{', '.join(CUSTOMER_FILE_SOURCES)}}}"
            )
        aud = self._create(account, name, subtype, request.param("description") or "", source)
        log_fields["audience_id"] = aud.id
        return {"id": aud.id}

    def _update(self, aud: Audience, request: SandboxRequest) -> dict[str, Any]:
        name = request.param("name")
        description = request.param("description")
        if name is None and description is None:
            raise _param_error("Nothing to update: send name and/or description")
        if name is not None:
            if not name.strip():
                raise _param_error("Param name must be non-empty")
            aud.name = name.strip()
        if description is not None:
            aud.description = description
        aud.time_updated = int(self.clock())
        return {"success": True}

    def _sessions(self, aud: Audience, request: SandboxRequest) -> dict[str, Any]:
        wanted = request.param("session_id")
        sessions = sorted(aud.sessions.values(), key=lambda s: (s.start_time, s.session_id), reverse=True)
        if wanted:
            sessions = [s for s in sessions if str(s.session_id) == wanted]
        now = self.clock()
        return {"data": [s.to_graph(now, self.processing_seconds) for s in sessions]}

    def _expire_replace(self, aud: Audience) -> None:
        if aud.replace_session is None:
            return
        sess = aud.sessions.get(aud.replace_session)
        now = self.clock()
        if sess is None or now - sess.start_time > self.replace_timeout_seconds:
            if sess is not None:
                sess.stage = "expired"
                sess.end_time = int(now)
                sess.rows = {}
            aud.replace_session = None

    def _upload(
        self,
        audience_id: str,
        op: str,
        payload: ParsedPayload,
        session: dict[str, Any],
        method: str,
        log_fields: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Apply one add/remove/replace batch. Caller holds the lock."""
        aud = self._audiences.get(audience_id)
        if aud is None or aud.deleted:
            raise _unsupported(method, audience_id)
        self._expire_replace(aud)
        sid, seq, last = session["session_id"], session["batch_seq"], session["last_batch_flag"]
        if aud.flagged:
            raise GraphError(
                "(#100) Audience Upload Blocked: this audience has been flagged (471) and does not "
                "accept user edits",
                100,
                FLAGGED_SUBCODE,
                user_title="Audience Upload Blocked",
            )
        if aud.replace_session is not None and (op != "replace" or aud.replace_session != sid):
            raise GraphError(
                f"(#2650) Failed to update the custom audience: the audience is busy with replace session "
                f"{aud.replace_session}; retry after it finishes",
                2650,
                BUSY_SUBCODE,
                user_title="Audience is busy",
                user_msg="A replace operation is in progress on this audience. Try again later.",
            )
        if aud.form is not None and aud.form != payload.form:
            raise GraphError(
                f"(#2650) Failed to update the custom audience: This audience was created from data "
                f"source FILE_IMPORTED.{aud.form}, which does not support data source "
                f"FILE_IMPORTED.{payload.form}",
                2650,
            )
        sess = aud.sessions.get(sid)
        batch_key = f"{op}:{seq}"
        if sess is not None and batch_key in sess.batches:
            if log_fields is not None:
                log_fields["replayed"] = True
            return dict(sess.batches[batch_key])
        if op == "replace" and sess is not None and sess.kind == "replace" and sess.stage != "uploading":
            raise _param_error(
                f"Replace session {sid} has already ended (stage {sess.stage}); start a new session_id"
            )
        members, invalid = validate_rows(payload)
        now = int(self.clock())
        if sess is None:
            sess = UploadSession(session_id=sid, kind=op, start_time=now)
            aud.sessions[sid] = sess
        if session.get("estimated_num_total") is not None:
            sess.estimated_num_total = session["estimated_num_total"]
        sess.num_received += len(payload.rows)
        sess.num_invalid_entries += len(invalid)
        for key in payload.keys:
            if key not in sess.schema:
                sess.schema.append(key)
        if op in ("add", "replace"):
            aud.form = payload.form
        if op == "add":
            for m in members:
                aud.members[member_key(m)] = m
            sess.num_matched += len(members)
            _merge_schema(aud.schema, payload.keys)
        elif op == "remove":
            removed = 0
            for m in members:
                if aud.members.pop(member_key(m), None) is not None:
                    removed += 1
            sess.num_matched += removed
        else:
            aud.replace_session = sid
            for m in members:
                sess.rows[member_key(m)] = m
            if last:
                aud.members = dict(sess.rows)
                aud.schema = list(sess.schema)
                sess.num_matched = len(sess.rows)
                sess.rows = {}
                aud.replace_session = None
        if last:
            sess.stage = "processed"
            sess.end_time = now
        aud.time_updated = now
        aud.time_content_updated = now
        body = {
            "audience_id": aud.id,
            "session_id": str(sid),
            "num_received": len(payload.rows),
            "num_invalid_entries": len(invalid),
            "invalid_entry_samples": dict(list(invalid.items())[:MAX_INVALID_SAMPLES]),
        }
        sess.batches[batch_key] = body
        return dict(body)


def _merge_schema(schema: list[str], keys: list[str]) -> None:
    for key in keys:
        if key not in schema:
            schema.append(key)


def _account(account: str) -> str:
    account = str(account)
    return account if account.startswith("act_") else f"act_{account}"


def _encode_cursor(audience_id: str) -> str:
    return base64.urlsafe_b64encode(f"ca:{audience_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, value = raw.partition(":")
        if prefix != "ca":
            raise ValueError(cursor)
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise _param_error(f"Invalid cursor {cursor!r}") from exc
