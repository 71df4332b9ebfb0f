"""The TikTok Business API v1.3 custom-audience (customer file) endpoints, as the TikTok reference (§2) describes them.

Served under ``/open_api/v1.3/dmp/custom_audience/``: ``file/upload/`` (multipart, MD5 ``file_signature``
checked, a header row naming the identifier and one lowercase SHA-256 hex a line), ``create/`` (from
uploaded files of the audience's ``calculate_type``), ``update/`` (``APPEND`` / ``REMOVE`` / ``REPLACE``),
``list/`` (pages of at most 100, owned and shared audiences with ``is_creator``), ``get/`` (1-100 ids,
``is_valid`` false while processing) and ``delete/``. Every answer is the JSON envelope ``{code,
message, request_id, data}`` with HTTP 200, errors included, as TikTok answers; the access token travels
in the ``Access-Token`` header (40105 when wrong or missing).

The minimum size: an update that leaves an audience with fewer than :attr:`TikTokSandbox.min_audience_size`
members (1,000, TikTok's rule) is refused and changes nothing. Tests that work with a handful of rows
lower it through ``POST /_sandbox/tiktok/settings``; the rule itself is tested at 1,000.

Names may repeat. Unverified details (the code of the size refusal, ``is_valid`` as the processing flag,
whether a file holding only its header row is accepted) are marked [U] in the reference and the README.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from audience_sync.sandbox.base import FaultRule, Journal, PlatformApp, SandboxRequest, SandboxResponse

PREFIX = "/open_api/v1.3/dmp/custom_audience/"
FIRST_AUDIENCE_ID = 7_100_000_000_000_000_000
#: calculate_type -> the header row TikTok's customer-file template names it by (reference §2.5)
FILE_HEADERS = {"EMAIL_SHA256": "email_sha256", "PHONE_SHA256": "phone_sha256", "MAID_SHA256": "maid_sha256"}
ACTIONS = ("APPEND", "REMOVE", "REPLACE")
MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_PAGE_SIZE = 100
MAX_IDS = 100
MAX_NAME_CHARS = 128

OK = 0
PARAM_ERROR = 40002
AUTH_ERROR = 40105
#: [U] the code TikTok answers an update that would leave fewer than 1,000 members with
TOO_SMALL = 40002
_HEX64 = re.compile(r"[0-9a-f]{64}")

MESSAGES = {
    40001: "Permission error: The access token lacks the required scope",
    40100: "App reaches the QPS limit.",
    40105: "Access token is incorrect or has been revoked.",
    50000: "Internal system error, please try again later.",
}


class ApiError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def envelope(code: int, message: str, data: Any = None) -> dict[str, Any]:
    return {"code": code, "message": message, "request_id": secrets.token_hex(12), "data": data or {}}


@dataclass
class CustomerFile:
    path: str
    advertiser_id: str
    calculate_type: str
    name: str
    hashes: list[str]

    def dump(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class Audience:
    id: str
    advertiser_id: str
    name: str
    calculate_type: str
    create_time: int
    members: set[str] = field(default_factory=set)
    is_creator: bool = True
    deleted: bool = False
    ready_at: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    def item(self, now: float) -> dict[str, Any]:
        """The audience as ``list/`` and ``get/`` report it."""
        return {
            "audience_id": self.id,
            "name": self.name,
            "audience_type": "Customer File",
            "calculate_type": self.calculate_type,
            "cover_num": len(self.members),
            "is_valid": now >= self.ready_at,
            "is_expiring": False,
            "shared": not self.is_creator,
            "is_creator": self.is_creator,
            "create_time": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.create_time)),
        }

    def dump(self) -> dict[str, Any]:
        out = self.__dict__.copy()
        out["members"] = sorted(self.members)
        return out

    @classmethod
    def load(cls, data: dict[str, Any]) -> Audience:
        return cls(**{**data, "members": set(data.get("members", []))})


class TikTokSandbox(PlatformApp):
    """Thread-safe TikTok custom-audience state plus HTTP handlers."""

    platform = "tiktok"

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
        #: an audience reports ``is_valid: false`` for this long after a create or update
        self.processing_seconds = 0.0
        #: TikTok refuses an update that leaves fewer members than this (tests may lower it)
        self.min_audience_size = 1_000
        self._lock = threading.RLock()
        self._audiences: dict[str, Audience] = {}
        self._files: dict[str, CustomerFile] = {}
        self._next_id = FIRST_AUDIENCE_ID

    # ------------------------------------------------------------------ helpers for tests/demo
    def create_audience(
        self,
        advertiser_id: str,
        name: str,
        calculate_type: str = "EMAIL_SHA256",
        *,
        members: tuple[str, ...] = (),
        create_time: int | None = None,
        is_creator: bool = True,
    ) -> str:
        """Create an audience as if made by hand in TikTok Ads Manager (or shared with the advertiser)."""
        with self._lock:
            aud = self._create(advertiser_id, name, calculate_type, set(members), create_time)
            aud.is_creator = is_creator
        self.journal.changed()
        return aud.id

    def members(self, audience_id: str) -> set[str]:
        with self._lock:
            return set(self._live(audience_id).members)

    def size_text(self, audience_id: str) -> str:
        """An audience's size; for a segment's family of audiences (their ids joined by ``-``, empty for a
        type it lacks) the sizes of its e-mail, phone and MAID audiences, ``1328/1219/0``."""
        with self._lock:
            return "/".join(
                str(len(self._live(i).members)) if i else "-" for i in str(audience_id).split("-")
            )

    def audiences(self, advertiser_id: str | None = None) -> list[dict[str, Any]]:
        now = self.clock()
        with self._lock:
            return [
                a.item(now)
                for a in self._audiences.values()
                if not a.deleted and advertiser_id in (None, a.advertiser_id)
            ]

    def files(self) -> list[dict[str, Any]]:
        """Every uploaded file: path, name, calculate type and row count (no hashes)."""
        with self._lock:
            return [
                {"path": f.path, "name": f.name, "calculate_type": f.calculate_type, "rows": len(f.hashes)}
                for f in self._files.values()
            ]

    def forget(self) -> None:
        with self._lock:
            self._audiences.clear()
            self._files.clear()

    def dump_state(self) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(
                {
                    "next_id": self._next_id,
                    "min_audience_size": self.min_audience_size,
                    "audiences": [a.dump() for a in self._audiences.values()],
                    "files": [f.dump() for f in self._files.values()],
                }
            )

    def load_state(self, state: dict[str, Any]) -> None:
        with self._lock:
            self._next_id = int(state.get("next_id", FIRST_AUDIENCE_ID))
            self.min_audience_size = int(state.get("min_audience_size", 1_000))
            self._audiences = {a["id"]: Audience.load(a) for a in state.get("audiences", [])}
            self._files = {f["path"]: CustomerFile(**f) for f in state.get("files", [])}

    # ------------------------------------------------------------------ PlatformApp hooks
    def matches(self, path: str) -> bool:
        return path.startswith(PREFIX)

    def fault_response(self, rule: FaultRule, request: SandboxRequest) -> SandboxResponse:
        code = rule.code if rule.code is not None else 50000
        message = rule.message or MESSAGES.get(code, "Injected sandbox fault")
        return SandboxResponse(
            status=rule.http_status or 200, body=envelope(code, message), log={"code": code}
        )

    def handle(self, request: SandboxRequest) -> SandboxResponse:
        log: dict[str, Any] = {}
        try:
            token = request.header("access-token")
            if not token or (self.access_token is not None and token != self.access_token):
                raise ApiError(AUTH_ERROR, MESSAGES[AUTH_ERROR])
            route = self._routes().get((request.method, request.path.removeprefix(PREFIX)))
            if route is None:
                raise ApiError(PARAM_ERROR, f"unknown endpoint {request.method} {request.path}")
            with self._lock:
                data, mutated = route(request, log)
        except ApiError as err:
            log["code"] = err.code
            return SandboxResponse(200, envelope(err.code, err.message), log=log)
        log["code"] = OK
        return SandboxResponse(200, envelope(OK, "OK", data), log=log, mutated=mutated)

    def inspect(self, request: SandboxRequest, subpath: list[str]) -> SandboxResponse | None:
        body = request.json_body if isinstance(request.json_body, dict) else {}
        if subpath == ["settings"] and request.method == "POST":
            if "min_audience_size" in body:
                self.min_audience_size = int(body["min_audience_size"])
            if "processing_seconds" in body:
                self.processing_seconds = float(body["processing_seconds"])
            settings = {
                "min_audience_size": self.min_audience_size,
                "processing_seconds": self.processing_seconds,
            }
            return SandboxResponse(200, settings, mutated=True)
        if subpath == ["audiences"] and request.method == "GET":
            return SandboxResponse(200, {"data": self.audiences(request.query.get("advertiser_id"))})
        if len(subpath) == 3 and subpath[0] == "audiences" and subpath[2] == "members":
            try:
                return SandboxResponse(200, {"members": sorted(self.members(subpath[1]))})
            except KeyError:
                return SandboxResponse(404, {"error": f"no audience {subpath[1]}"})
        return None

    # ------------------------------------------------------------------ endpoints
    def _routes(self) -> dict[tuple[str, str], Callable[[SandboxRequest, dict[str, Any]], tuple[Any, bool]]]:
        return {
            ("POST", "file/upload/"): self._upload,
            ("POST", "create/"): self._create_from_files,
            ("POST", "update/"): self._update,
            ("GET", "list/"): self._list,
            ("GET", "get/"): self._get,
            ("POST", "delete/"): self._delete,
        }

    def _upload(self, request: SandboxRequest, log: dict[str, Any]) -> tuple[Any, bool]:
        advertiser = _required(request.form, "advertiser_id")
        ctype = _calculate_type(request.form.get("calculate_type"))
        if "file" not in request.files:
            raise ApiError(PARAM_ERROR, "file is required")
        filename, content = request.files["file"]
        name = request.form.get("file_name") or filename
        if not name.lower().endswith((".csv", ".txt")):
            raise ApiError(PARAM_ERROR, "file must be a .csv or .txt file")
        if len(content) > MAX_FILE_BYTES:
            raise ApiError(PARAM_ERROR, "file is larger than 50 MB")
        if hashlib.md5(content).hexdigest() != request.form.get("file_signature", "").lower():  # noqa: S324
            raise ApiError(PARAM_ERROR, "file_signature does not match the MD5 of the file")
        lines = content.decode("utf-8", "replace").splitlines()
        if not lines or lines[0].strip().lower() != FILE_HEADERS[ctype]:
            raise ApiError(PARAM_ERROR, f"the file's header row must be {FILE_HEADERS[ctype]} for {ctype}")
        hashes = [line.strip() for line in lines[1:] if line.strip()]
        for number, value in enumerate(hashes, start=2):
            if not _HEX64.fullmatch(value):
                raise ApiError(PARAM_ERROR, f"line {number} is not a lowercase SHA-256 hex of {ctype}")
        path = f"tiktok-sandbox/{advertiser}/{secrets.token_hex(16)}.csv"
        self._files[path] = CustomerFile(path, advertiser, ctype, name, hashes)
        log.update(op="upload", rows=len(hashes), file_name=name)
        return {"file_path": path}, True

    def _create_from_files(self, request: SandboxRequest, log: dict[str, Any]) -> tuple[Any, bool]:
        body = _json(request)
        advertiser = _required(body, "advertiser_id")
        name = _required(body, "custom_audience_name")
        if len(name) > MAX_NAME_CHARS:
            raise ApiError(PARAM_ERROR, f"custom_audience_name is longer than {MAX_NAME_CHARS} characters")
        ctype = _calculate_type(body.get("calculate_type"))
        files = self._files_of(body, advertiser, ctype)
        aud = self._create(advertiser, name, ctype, {h for f in files for h in f.hashes}, None)
        log.update(op="create", audience_id=aud.id)
        return {"custom_audience_id": aud.id}, True

    def _update(self, request: SandboxRequest, log: dict[str, Any]) -> tuple[Any, bool]:
        body = _json(request)
        advertiser = _required(body, "advertiser_id")
        aud = self._owned(advertiser, str(_required(body, "custom_audience_id")))
        action = str(body.get("action") or "REPLACE").upper()
        if action not in ACTIONS:
            raise ApiError(PARAM_ERROR, f"action must be one of {', '.join(ACTIONS)}")
        files = self._files_of(body, advertiser, aud.calculate_type)
        hashes = {h for f in files for h in f.hashes}
        after = {"APPEND": aud.members | hashes, "REMOVE": aud.members - hashes, "REPLACE": hashes}[action]
        log.update(op={"APPEND": "add", "REMOVE": "remove", "REPLACE": "replace"}[action], audience_id=aud.id)
        if len(after) < self.min_audience_size:
            raise ApiError(
                TOO_SMALL,
                f"{action} failed: the audience size would be less than {self.min_audience_size:,} after the "
                f"operation ({len(after)})",
            )
        aud.members = after
        aud.ready_at = self.clock() + self.processing_seconds
        aud.history.append({"action": action, "file_paths": [f.path for f in files], "time": self.clock()})
        log["rows"] = len(hashes)
        return {}, True

    def _list(self, request: SandboxRequest, log: dict[str, Any]) -> tuple[Any, bool]:
        advertiser = _required(request.query, "advertiser_id")
        page = _int(request.query.get("page"), 1, "page", 1)
        size = _int(request.query.get("page_size"), 10, "page_size", 1, MAX_PAGE_SIZE)
        now = self.clock()
        mine = [a for a in self._audiences.values() if a.advertiser_id == advertiser and not a.deleted]
        items = [a.item(now) for a in mine[(page - 1) * size : page * size]]
        total = len(mine)
        info = {"page": page, "page_size": size, "total_number": total, "total_page": -(-total // size)}
        return {"list": items, "page_info": info}, False

    def _get(self, request: SandboxRequest, log: dict[str, Any]) -> tuple[Any, bool]:
        advertiser = _required(request.query, "advertiser_id")
        ids = _id_list(request.query.get("custom_audience_ids"))
        now = self.clock()
        found = [self._audiences.get(i) for i in ids]
        items = [
            {"audience_details": a.item(now), "audience_history": a.history[-5:]}
            for a in found
            if a is not None and not a.deleted and a.advertiser_id == advertiser
        ]
        return {"list": items}, False

    def _delete(self, request: SandboxRequest, log: dict[str, Any]) -> tuple[Any, bool]:
        body = _json(request)
        advertiser = _required(body, "advertiser_id")
        ids = body.get("custom_audience_ids")
        if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_IDS:
            raise ApiError(PARAM_ERROR, f"custom_audience_ids must be a list of 1-{MAX_IDS} ids")
        for audience_id in ids:
            self._owned(advertiser, str(audience_id)).deleted = True
        return {}, True

    # ------------------------------------------------------------------ internals
    def _create(
        self, advertiser: str, name: str, ctype: str, members: set[str], create_time: int | None
    ) -> Audience:
        now = self.clock()
        aud = Audience(
            id=str(self._next_id),
            advertiser_id=str(advertiser),
            name=name,
            calculate_type=ctype,
            create_time=int(now) if create_time is None else create_time,
            members=members,
            ready_at=now + self.processing_seconds,
        )
        self._next_id += 1
        self._audiences[aud.id] = aud
        return aud

    def _live(self, audience_id: str) -> Audience:
        aud = self._audiences.get(str(audience_id))
        if aud is None or aud.deleted:
            raise KeyError(audience_id)
        return aud

    def _owned(self, advertiser: str, audience_id: str) -> Audience:
        aud = self._audiences.get(audience_id)
        if aud is None or aud.deleted or aud.advertiser_id != advertiser:
            raise ApiError(PARAM_ERROR, f"custom audience {audience_id} does not exist for this advertiser")
        if not aud.is_creator:
            raise ApiError(
                PARAM_ERROR, f"custom audience {audience_id} is shared with you; only its creator can edit it"
            )
        return aud

    def _files_of(self, body: dict[str, Any], advertiser: str, ctype: str) -> list[CustomerFile]:
        paths = body.get("file_paths")
        if not isinstance(paths, list) or not paths:
            raise ApiError(PARAM_ERROR, "file_paths must be a non-empty list")
        files = []
        for path in paths:
            f = self._files.get(str(path))
            if f is None or f.advertiser_id != advertiser:
                raise ApiError(PARAM_ERROR, f"file_path {path} does not exist")
            if f.calculate_type != ctype:
                raise ApiError(PARAM_ERROR, f"file {path} is {f.calculate_type}, the audience {ctype}")
            files.append(f)
        return files


def _json(request: SandboxRequest) -> dict[str, Any]:
    if not isinstance(request.json_body, dict):
        raise ApiError(PARAM_ERROR, "the request body must be a JSON object")
    return request.json_body


def _required(source: dict[str, Any], name: str) -> str:
    value = source.get(name)
    if value in (None, ""):
        raise ApiError(PARAM_ERROR, f"{name} is required")
    return str(value)


def _calculate_type(value: Any) -> str:
    if value not in FILE_HEADERS:
        raise ApiError(PARAM_ERROR, f"calculate_type must be one of {', '.join(FILE_HEADERS)}")
    return str(value)


def _int(raw: str | None, default: int, name: str, low: int, high: int | None = None) -> int:
    try:
        value = default if raw in (None, "") else int(str(raw))
    except ValueError:
        raise ApiError(PARAM_ERROR, f"{name} must be an integer") from None
    if value < low or (high is not None and value > high):
        raise ApiError(PARAM_ERROR, f"{name} must be between {low} and {high or 'any'}")
    return value


def _id_list(raw: str | None) -> list[str]:
    try:
        ids = json.loads(raw or "")
    except ValueError:
        raise ApiError(PARAM_ERROR, "custom_audience_ids must be a JSON array of ids") from None
    if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_IDS:
        raise ApiError(PARAM_ERROR, f"custom_audience_ids must hold 1-{MAX_IDS} ids")
    return [str(i) for i in ids]
