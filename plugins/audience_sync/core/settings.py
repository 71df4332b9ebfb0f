"""Every environment setting of audience-sync in one typed, frozen object (:func:`settings`).

Each ``AUDIENCE_SYNC_*`` variable is parsed here and nowhere else; a bad value raises
:class:`SettingsError` naming the variable, what it must be and how to fix it. The README's settings
table lists the same variables (``tests/unit/test_settings.py`` checks that the two agree).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from audience_sync.core.errors import AudienceSyncError

__all__ = [
    "PHONE_LIBRARIES",
    "VARIABLES",
    "Settings",
    "SettingsError",
    "Variable",
    "override",
    "reload",
    "settings",
]

SegmentNameRule = Literal["strict", "relaxed"]
SEGMENT_NAME_RULES: tuple[str, ...] = SegmentNameRule.__args__
PhoneLibrary = Literal["auto", "rphonenumbers", "phonenumbers"]
PHONE_LIBRARIES: tuple[str, ...] = PhoneLibrary.__args__

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class SettingsError(AudienceSyncError, ValueError):
    """An environment variable has a value audience-sync cannot use. Names the variable and the fix."""

    def __init__(self, variable: str, value: str, expected: str, example: str) -> None:
        self.variable = variable
        self.value = value
        self.problem = f"{variable} is '{value}' but must be {expected}"
        self.fix = f"set {variable}={example}, or unset it for the default"
        super().__init__(f"{self.problem}. Fix: {self.fix}.")


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, the Settings field it fills, and how it is documented."""

    name: str
    field: str
    type: str
    default: str
    help: str
    parse: Callable[[str, str], Any]


def _text(name: str, raw: str) -> str:
    return raw


def _path(name: str, raw: str) -> Path:
    return Path(raw).expanduser()


def _segment_rule(name: str, raw: str) -> str:
    value = raw.lower()
    if value not in SEGMENT_NAME_RULES:
        raise SettingsError(name, raw, "'strict' or 'relaxed' (or unset for strict)", "relaxed")
    return value


def _phone_library(name: str, raw: str) -> str:
    value = raw.lower()
    if value not in PHONE_LIBRARIES:
        raise SettingsError(
            name, raw, "'auto', 'rphonenumbers' or 'phonenumbers' (or unset for auto)", "phonenumbers"
        )
    return value


def _flag(name: str, raw: str) -> bool:
    value = raw.lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(name, raw, "a yes/no flag (1, true, yes, on / 0, false, no, off)", "1")


def _url(name: str, raw: str) -> str:
    """A URL with a scheme (``s3://bucket/prefix``, ``file:///srv/staging``) or an absolute local path."""
    if raw.startswith("/"):
        return "file://" + raw.rstrip("/")
    scheme, sep, rest = raw.partition("://")
    if not sep or not scheme.isidentifier() or not rest.strip("/"):
        raise SettingsError(
            name,
            raw,
            "a URL such as s3://bucket/prefix, gs://bucket/prefix or file:///srv/staging",
            "s3://my-bucket/audience-sync",
        )
    return raw.rstrip("/")


def _hours(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:  # also refuses NaN
        raise SettingsError(name, raw, "a number of hours greater than 0", "24")
    return value


def _count(minimum: int) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise SettingsError(name, raw, f"a whole number of at least {minimum}", str(max(minimum, 5)))
        return value

    return parse


def _seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses NaN
        raise SettingsError(name, raw, "a number of seconds, 0 or more", "2")
    return value


#: Every variable audience-sync reads. Order = the README table's order.
VARIABLES: tuple[Variable, ...] = (
    Variable(
        "AUDIENCE_SYNC_ENABLED",
        "enabled",
        "flag",
        "off",
        "Off: every campaign DAG still loads, but its first task (`enabled`) stops each run before any "
        "data is read or sent. Set it to `1` on every Airflow component to sync (see *Enabling syncs*).",
        _flag,
    ),
    Variable(
        "AUDIENCE_SYNC_APPROVAL_REQUIRED",
        "approval_required",
        "flag",
        "on",
        "Off: runs skip the approval step (development and tests only; each run logs a warning). "
        "See *Approval*.",
        _flag,
    ),
    Variable(
        "AUDIENCE_SYNC_APPROVAL_TIMEOUT_HOURS",
        "approval_timeout_hours",
        "hours > 0",
        "24",
        "How long an approval request waits for an answer; unanswered, it counts as not approved for "
        "that run (the scheduler applies it).",
        _hours,
    ),
    Variable(
        "AUDIENCE_SYNC_CAMPAIGNS_DIR",
        "campaigns_dir",
        "path",
        "`include/campaigns`",
        "Folder of campaign files, one DAG per file; a relative path is taken from the project root.",
        _path,
    ),
    Variable(
        "AUDIENCE_SYNC_SEGMENT_NAME_RULE",
        "segment_name_rule",
        "`strict` \\| `relaxed`",
        "`strict`",
        "`relaxed` also allows capitals, digits, `-` and spaces in segment names (see *Segment names*).",
        _segment_rule,
    ),
    Variable(
        "AUDIENCE_SYNC_STRICT",
        "strict",
        "flag",
        "off",
        "On: any broken campaign file fails DAG parsing instead of only its own DAG (the test suite).",
        _flag,
    ),
    Variable(
        "AUDIENCE_SYNC_RETRY_ATTEMPTS",
        "retry_attempts",
        "integer ≥ 1",
        "5",
        "Tries per platform request on transient errors inside a task, before Airflow's own retries.",
        _count(1),
    ),
    Variable(
        "AUDIENCE_SYNC_RETRY_INITIAL_WAIT",
        "retry_initial_wait",
        "seconds ≥ 0",
        "2",
        "First backoff wait between those tries (exponential with jitter).",
        _seconds,
    ),
    Variable(
        "AUDIENCE_SYNC_RETRY_MAX_WAIT",
        "retry_max_wait",
        "seconds ≥ 0",
        "120",
        "Longest single backoff wait.",
        _seconds,
    ),
    Variable(
        "AUDIENCE_SYNC_EXTRACT_WORKERS",
        "extract_workers",
        "integer ≥ 0",
        "0 (one per usable core)",
        "Processes that normalise and hash a large audience group in parallel; 1 hashes in the task's "
        "own process.",
        _count(0),
    ),
    Variable(
        "AUDIENCE_SYNC_CHUNK_ROWS",
        "chunk_rows",
        "integer ≥ 100",
        "50000",
        "Rows of the audience group read, hashed and staged at a time: the unit of an extraction "
        "worker's work, and of its memory.",
        _count(100),
    ),
    Variable(
        "AUDIENCE_SYNC_STAGING_URL",
        "staging_url",
        "URL",
        "`file://$AIRFLOW_HOME/audience_sync/staging`",
        "Where extraction stages hashed members (Parquet), as an Airflow `ObjectStoragePath` URL: "
        "`s3://…`, `gs://…` when tasks run on several machines (see *Scale-out*); an absolute path "
        "means `file://`.",
        _url,
    ),
    Variable(
        "AUDIENCE_SYNC_STAGING_CONN_ID",
        "staging_conn_id",
        "text",
        "none",
        "Airflow connection holding the credentials for `AUDIENCE_SYNC_STAGING_URL` (e.g. an `aws` "
        "connection for `s3://`); none: the filesystem's own defaults.",
        _text,
    ),
    Variable(
        "AUDIENCE_SYNC_PARTITION_ROWS",
        "partition_rows",
        "integer ≥ 1000",
        "1000000",
        "For `partitions: auto`: rows of the group per extraction partition.",
        _count(1000),
    ),
    Variable(
        "AUDIENCE_SYNC_MAX_PARTITIONS",
        "max_partitions",
        "integer ≥ 1",
        "16",
        "For `partitions: auto`: the most partitions a group is split into.",
        _count(1),
    ),
    Variable(
        "AUDIENCE_SYNC_PHONE_LIBRARY",
        "phone_library",
        "`auto` \\| `rphonenumbers` \\| `phonenumbers`",
        "`auto`",
        "Phone parser. `auto`: the faster `rphonenumbers` when it imports and passes a self-check against "
        "`phonenumbers`, else `phonenumbers` (with a warning); see *Phone numbers*.",
        _phone_library,
    ),
    Variable(
        "AUDIENCE_SYNC_SANDBOX_TOKEN",
        "sandbox_token",
        "text",
        "`sandbox-token`",
        "Access token `audience-sync sandbox` accepts when `--token` is not given.",
        _text,
    ),
    Variable(
        "AIRFLOW_HOME",
        "airflow_home",
        "path",
        "`~/airflow`",
        "Airflow's own; audience-sync keeps staging files (unless `AUDIENCE_SYNC_STAGING_URL` says "
        "otherwise) and the default SQLite state database under `$AIRFLOW_HOME/audience_sync/`.",
        _path,
    ),
)


@dataclass(frozen=True)
class Settings:
    """The parsed environment. Defaults apply to unset or empty variables."""

    enabled: bool = False
    approval_required: bool = True
    approval_timeout_hours: float = 24.0
    campaigns_dir: Path | None = None
    segment_name_rule: SegmentNameRule = "strict"
    strict: bool = False
    retry_attempts: int = 5
    retry_initial_wait: float = 2.0
    retry_max_wait: float = 120.0
    extract_workers: int = 0
    chunk_rows: int = 50_000
    staging_url: str | None = None
    staging_conn_id: str | None = None
    partition_rows: int = 1_000_000
    max_partitions: int = 16
    phone_library: PhoneLibrary = "auto"
    sandbox_token: str = "sandbox-token"
    airflow_home: Path = dataclasses.field(default_factory=lambda: Path.home() / "airflow")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse ``environ`` (default ``os.environ``); raise SettingsError on the first bad value."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for var in VARIABLES:
            raw = (env.get(var.name) or "").strip()
            if raw:
                values[var.field] = var.parse(var.name, raw)
        return cls(**values)

    @property
    def workers(self) -> int:
        """Extraction processes: ``extract_workers``, or one per core this process may use."""
        if self.extract_workers:
            return self.extract_workers
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return max(1, os.cpu_count() or 1)

    @property
    def state_dir(self) -> Path:
        """``$AIRFLOW_HOME/audience_sync``: staging files and the default SQLite state database."""
        return self.airflow_home / "audience_sync"

    @property
    def staging(self) -> str:
        """The staging URL: ``staging_url``, else ``file://$AIRFLOW_HOME/audience_sync/staging``."""
        return self.staging_url or f"file://{(self.state_dir / 'staging').absolute()}"


# The cache is keyed by the raw values of the variables, so a process that changes its own environment
# after import (the demo, dag.test() in tests, monkeypatch) gets the new values instead of stale ones,
# while the usual case (nothing changed) parses once.
_lock = threading.Lock()
_cached: tuple[tuple[str | None, ...], Settings] | None = None
_overrides: list[Settings] = []


def _key() -> tuple[str | None, ...]:
    return tuple(os.environ.get(var.name) for var in VARIABLES)


def settings() -> Settings:
    """The current settings: an active :func:`override`, else the environment (parsed once per change)."""
    global _cached
    if _overrides:
        return _overrides[-1]
    key = _key()
    with _lock:
        if _cached is None or _cached[0] != key:
            _cached = (key, Settings.from_env())
        return _cached[1]


def reload() -> Settings:
    """Forget the cached settings and parse the environment again."""
    global _cached
    with _lock:
        _cached = None
    return settings()


@contextlib.contextmanager
def override(**changes: Any) -> Iterator[Settings]:
    """Within the block, :func:`settings` returns the current settings with ``changes`` applied."""
    changed = dataclasses.replace(settings(), **changes)
    _overrides.append(changed)
    try:
        yield changed
    finally:
        _overrides.remove(changed)
