"""What the sandbox server and every platform app share: request/response values, the request log,
fault rules and the :class:`PlatformApp` base class.

Kept apart from :mod:`.server` so a platform app (``meta.py``) and the server that hosts it import this
module instead of each other.
"""

from __future__ import annotations

import collections
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_LOG_CAPACITY = 20000
_LOG_VALUE_CHARS = 200
SECRET_PARAMS = frozenset({"access_token", "appsecret_proof", "client_secret", "secret"})
FAULT_ACTIONS = ("error", "drop", "delay")

#: logged operations that carry members
MEMBER_OPS = ("add", "remove", "replace")


# --------------------------------------------------------------------------------------------
# Request / response values passed between the server and the apps


@dataclass
class SandboxRequest:
    """One parsed HTTP request as an app sees it."""

    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str] = field(default_factory=dict)
    json_body: Any = None
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    raw_body: bytes = b""

    def param(self, name: str) -> str | None:
        """A parameter from the form body, else the query string (Graph accepts both)."""
        if name in self.form:
            return self.form[name]
        return self.query.get(name)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class SandboxResponse:
    """What an app answers. ``log`` adds fields to the request-log entry; ``mutated`` asks the
    server to persist the state file."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    log: dict[str, Any] = field(default_factory=dict)
    mutated: bool = False


def json_response(status: int, body: Any, **log_fields: Any) -> SandboxResponse:
    return SandboxResponse(status=status, body=body, log=dict(log_fields))


# --------------------------------------------------------------------------------------------
# Shared request log and fault rules


def redact_query(query: dict[str, str]) -> dict[str, str]:
    """Copy of ``query`` with secrets replaced by ``***`` and long values shortened."""
    out: dict[str, str] = {}
    for key, value in query.items():
        if key in SECRET_PARAMS:
            out[key] = "***"
        elif len(value) > _LOG_VALUE_CHARS:
            out[key] = f"{value[:_LOG_VALUE_CHARS]}...({len(value)} chars)"
        else:
            out[key] = value
    return out


class RequestLog:
    """Thread-safe, bounded request log with a monotonically increasing ``seq``."""

    def __init__(self, capacity: int = _LOG_CAPACITY) -> None:
        self._lock = threading.Lock()
        self._entries: collections.deque[dict[str, Any]] = collections.deque(maxlen=capacity)
        self._seq = 0

    def append(self, entry: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._seq += 1
            entry = {"seq": self._seq, **entry}
            self._entries.append(entry)
            return entry

    def entries(self, since: int = 0, platform: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                dict(e)
                for e in self._entries
                if e["seq"] > since and (platform is None or e.get("platform") == platform)
            ]

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._seq

    def clear(self, platform: str | None = None) -> None:
        """Drop entries (all, or one platform's). ``seq`` keeps counting so ``since`` stays valid."""
        with self._lock:
            if platform is None:
                self._entries.clear()
            else:
                kept = [e for e in self._entries if e.get("platform") != platform]
                self._entries.clear()
                self._entries.extend(kept)


@dataclass
class FaultRule:
    """Applies ``action`` to the ``times`` matching requests that follow the first ``skip`` ones.

    ``times=None`` means every matching request after ``skip``. ``platform=None`` matches any app.
    Each rule counts its own matches; when several rules fire for one request the first one added
    wins.
    """

    action: str = "error"
    method: str | None = None
    path_regex: str = ""
    platform: str | None = None
    skip: int = 0
    times: int | None = 1
    http_status: int | None = None
    code: int | None = None
    subcode: int | None = None
    is_transient: bool | None = None
    message: str | None = None
    error_user_title: str | None = None
    error_user_msg: str | None = None
    delay_seconds: float = 0.0
    apply: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    id: int = 0
    seen: int = 0
    fired: int = 0

    _FIELDS = (
        "action",
        "method",
        "path_regex",
        "platform",
        "skip",
        "times",
        "http_status",
        "code",
        "subcode",
        "is_transient",
        "message",
        "error_user_title",
        "error_user_msg",
        "delay_seconds",
        "apply",
        "headers",
    )

    def __post_init__(self) -> None:
        if self.action not in FAULT_ACTIONS:
            raise ValueError(f"fault action must be one of {FAULT_ACTIONS}, got {self.action!r}")
        if self.method is not None:
            self.method = str(self.method).upper()
        try:
            self._regex = re.compile(self.path_regex or "")
        except re.error as exc:
            raise ValueError(f"invalid path_regex {self.path_regex!r}: {exc}") from exc
        for name in ("skip", "times", "http_status", "code", "subcode"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"fault field {name!r} must be a non-negative integer, got {value!r}")
        if not isinstance(self.delay_seconds, int | float) or self.delay_seconds < 0:
            raise ValueError(f"delay_seconds must be a non-negative number, got {self.delay_seconds!r}")
        if not isinstance(self.headers, dict):
            raise ValueError("headers must be an object of header name -> value")

    @classmethod
    def from_dict(cls, rule: dict[str, Any]) -> FaultRule:
        unknown = set(rule) - set(cls._FIELDS)
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(sorted(unknown))}")
        return cls(**rule)

    def matches(self, platform: str, method: str, path: str) -> bool:
        if self.platform is not None and self.platform != platform:
            return False
        if self.method is not None and self.method != method:
            return False
        return self._regex.search(path) is not None

    def to_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self._FIELDS}
        out.update(id=self.id, seen=self.seen, fired=self.fired)
        return out


class FaultBook:
    """Thread-safe list of :class:`FaultRule`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._next_id = 1

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            rule.id = self._next_id
            self._next_id += 1
            self._rules.append(rule)
            return rule

    def match(self, platform: str, method: str, path: str) -> FaultRule | None:
        """Count this request against every matching rule; return the rule that fires, if any."""
        chosen: FaultRule | None = None
        with self._lock:
            for rule in self._rules:
                if not rule.matches(platform, method, path):
                    continue
                index = rule.seen
                rule.seen += 1
                in_window = index >= rule.skip and (rule.times is None or index < rule.skip + rule.times)
                if in_window and chosen is None:
                    rule.fired += 1
                    chosen = rule
        return chosen

    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.to_dict() for r in self._rules]

    def clear(self, platform: str | None = None) -> int:
        """Remove all rules, or those that can apply to ``platform`` (its own and wildcard ones)."""
        with self._lock:
            before = len(self._rules)
            if platform is None:
                self._rules = []
            else:
                self._rules = [r for r in self._rules if r.platform not in (None, platform)]
            return before - len(self._rules)


class Journal:
    """What the server shares with its apps: the request log, the fault rules and a hook that
    persists state after an in-process mutation."""

    def __init__(self) -> None:
        self.log = RequestLog()
        self.faults = FaultBook()
        self.on_change: Callable[[], None] | None = None

    def changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


# --------------------------------------------------------------------------------------------
# Platform apps


class PlatformApp:
    """Base class of a platform emulation. Subclasses set ``platform`` and implement the hooks."""

    platform: str = ""

    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal or Journal()

    def bind(self, journal: Journal) -> None:
        self.journal = journal

    def matches(self, path: str) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def handle(self, request: SandboxRequest) -> SandboxResponse:  # pragma: no cover - abstract
        raise NotImplementedError

    def fault_response(self, rule: FaultRule, request: SandboxRequest) -> SandboxResponse:
        raise NotImplementedError  # pragma: no cover - abstract

    def inspect(self, request: SandboxRequest, subpath: list[str]) -> SandboxResponse | None:
        return None

    def size_text(self, audience_id: str) -> str:
        """How many members the audience holds, as the demo's summary shows it (KeyError: no such audience)."""
        return str(len(self.members(audience_id)))  # type: ignore[attr-defined] - every app has members()

    def reset(self) -> None:
        """Forget the platform's state (:meth:`forget`), its fault rules and its request-log entries."""
        self.forget()
        self.journal.faults.clear(self.platform)
        self.journal.log.clear(self.platform)
        self.journal.changed()

    def forget(self) -> None:  # pragma: no cover - abstract
        """Drop every audience (list, file...) the app holds."""
        raise NotImplementedError

    def dump_state(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_state(self, state: dict[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # shared helpers for subclasses

    def add_fault(self, **rule: Any) -> int:
        """Add a fault rule scoped to this platform; returns its id. See :class:`FaultRule`."""
        rule.setdefault("platform", self.platform)
        return self.journal.faults.add(FaultRule.from_dict(rule)).id

    def clear_faults(self) -> int:
        return self.journal.faults.clear(self.platform)

    def requests_log(self, since: int = 0) -> list[dict[str, Any]]:
        return self.journal.log.entries(since=since, platform=self.platform)

    def last_seq(self) -> int:
        """The sequence number of this platform's latest logged request (0: none yet): a mark to pass
        to :meth:`member_requests` as ``since``."""
        log = self.requests_log()
        return log[-1]["seq"] if log else 0

    def member_requests(self, since: int = 0, ops: tuple[str, ...] = MEMBER_OPS) -> list[dict[str, Any]]:
        """Logged requests after ``since`` that carried members (``ops``: which operations)."""
        return [e for e in self.requests_log(since) if e.get("op") in ops]
