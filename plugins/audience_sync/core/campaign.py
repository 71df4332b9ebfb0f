"""The campaign model: one YAML file per campaign in ``include/campaigns/`` becomes one DAG.

This module is pure Python (no Airflow import) so it can be unit-tested and reused by the CLI.

A campaign file looks like this (``include/campaigns/abandoned_cart.yaml`` -> DAG id
``ads_audience__abandoned_cart``)::

    campaign: Abandoned cart July
    ads_campaign_name: Abandoned cart ads          # optional, defaults to ``campaign``
    duration: {start: 2026-07-01, end: 2026-07-31}  # end optional
    schedule: "@daily"                             # @once|@hourly|@daily|@weekly|@monthly|5-field cron
    timezone: Asia/Kolkata                         # optional, default UTC
    segment_name: abandoned_cart_users
    sync_mode: mirror                              # mirror (default) | add_only | replace
    audience_group:
      sql: include/sql/abandoned_cart.sql          # or  list: <.csv|.parquet file>  (exactly one)
      conn_id: crm_db                              # required with sql, rejected with list
      key: customer_id
      identifiers: {email: email, phone: mobile, country: country}
      default_country: US
      exclude_segments: [week_one_users]
      consent: {column: ads_consent}
    destinations:
      - platform: meta
        ad_account_id: "act_1234567890"
        conn_id: meta_default

:func:`load_campaign` validates a file and raises :class:`~audience_sync.core.errors.CampaignErrors`
listing *every* problem it found, each as a :class:`~audience_sync.core.errors.CampaignError` naming the
dotted field (``destinations[0].platform``, ``audience_group.identifiers.emial``) and a fix.

Segment names follow the product naming rule (see :func:`check_segment_name`). Digits in a name are
spelled out *digit by digit* when a compliant name is suggested (``2026`` -> ``two_zero_two_six``), which
keeps different numbers distinct and needs no number-to-words grammar.

Adding a platform: define a ``<Platform>Destination(DestinationBase)`` model with
``platform: Literal["<platform>"]``, add it to the :data:`Destination` union and to
:data:`DESTINATION_MODELS`. Everything else (error messages, :data:`SUPPORTED_PLATFORMS`) follows.
"""

from __future__ import annotations

import difflib
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import yaml
from croniter import croniter
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from audience_sync.core.errors import CampaignError, CampaignErrors
from audience_sync.core.normalize import IDENTIFIER_TYPES

__all__ = [
    "CAMPAIGNS_DIR_ENV",
    "DAG_ID_PREFIX",
    "DESTINATION_MODELS",
    "FILE_FIELD",
    "FILE_NAME_FIELD",
    "IDENTIFIER_TYPES",
    "SCHEDULE_PRESETS",
    "SEGMENT_NAME_RULES",
    "SEGMENT_NAME_RULE_ENV",
    "SUPPORTED_PLATFORMS",
    "SYNC_MODES",
    "AudienceGroup",
    "Campaign",
    "Consent",
    "Destination",
    "DestinationBase",
    "Duration",
    "MetaDestination",
    "SegmentNameError",
    "campaigns_dir",
    "check_segment_name",
    "load_campaign",
    "load_campaigns",
    "project_root",
    "segment_name_rule",
    "suggest_segment_name",
]

# --------------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------------

IdentifierType = Literal[IDENTIFIER_TYPES]  # type: ignore[valid-type]  # the normaliser's list, one source

SyncMode = Literal["mirror", "add_only", "replace"]
SYNC_MODES: tuple[str, ...] = SyncMode.__args__

SCHEDULE_PRESETS: tuple[str, ...] = ("@once", "@hourly", "@daily", "@weekly", "@monthly")

DAG_ID_PREFIX = "ads_audience__"
CAMPAIGNS_DIR_ENV = "AUDIENCE_SYNC_CAMPAIGNS_DIR"
SEGMENT_NAME_RULE_ENV = "AUDIENCE_SYNC_SEGMENT_NAME_RULE"
SEGMENT_NAME_RULES: tuple[str, ...] = ("strict", "relaxed")

#: ``field`` used for problems with the file itself (unreadable, YAML syntax, not a mapping).
FILE_FIELD = "(file)"
#: ``field`` used for problems with the file name (it becomes the DAG id).
FILE_NAME_FIELD = "(file name)"

SEGMENT_NAME_MIN = 3
SEGMENT_NAME_MAX = 128

_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_STRICT_SEGMENT_RE = re.compile(r"[a-z]+(?:_[a-z]+)*")
_RELAXED_SEGMENT_CHARS = re.compile(r"[A-Za-z0-9_\- ]+")
_STEM_RE = re.compile(r"[A-Za-z0-9_]+")
_CRON_FIELDS = 5

_STRICT_RULE_TEXT = (
    f"{SEGMENT_NAME_MIN}-{SEGMENT_NAME_MAX} characters, lowercase letters a-z only, words separated by "
    "single underscores (no capitals, numbers, spaces or other special characters)"
)
_RELAXED_RULE_TEXT = (
    f"1-{SEGMENT_NAME_MAX} characters of letters, digits, underscore, hyphen and space "
    "(no other special characters, no leading or trailing space)"
)
_SCHEDULE_FIX = (
    "use one of " + ", ".join(SCHEDULE_PRESETS) + ", or a 5-field cron expression "
    "'minute hour day-of-month month day-of-week' such as '0 6 * * *' (06:00 every day, campaign timezone)"
)
_SOURCE_FIX = (
    "give exactly one of 'list: <.csv or .parquet file>' (an existing audience list) or "
    "'sql: <.sql file or inline query>' together with 'conn_id: <Airflow connection>' (a new audience group)"
)

# --------------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------------


def project_root() -> Path:
    """Return the project root: the parent of the ``plugins/`` folder holding this package."""
    return Path(__file__).resolve().parents[3]


def campaigns_dir() -> Path:
    """Return the campaign folder.

    ``$AUDIENCE_SYNC_CAMPAIGNS_DIR`` when set (a relative value is taken relative to the project root),
    else ``<project root>/include/campaigns``.
    """
    configured = os.environ.get(CAMPAIGNS_DIR_ENV, "").strip()
    if configured:
        return _resolve(configured)
    return project_root() / "include" / "campaigns"


def _resolve(value: str | Path) -> Path:
    """Resolve ``value`` against the project root unless it is absolute (``~`` is expanded)."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = project_root() / path
    return path.resolve()


def _display(path: Path) -> str:
    """Show ``path`` relative to the project root when it lies inside it, else absolute."""
    try:
        return path.resolve().relative_to(project_root()).as_posix()
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------------


class _Invalid(ValueError):
    """A validation problem carrying its fix; ``at`` is a location relative to the validated object."""

    def __init__(self, message: str, fix: str = "", at: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.at = at


Loc = tuple[str | int, ...]
_Problem = tuple[Loc, str, str]  # (location, message, fix)

NonEmptyStr = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


def _closest(value: str, options: Iterable[str]) -> str | None:
    """Return the option closest to ``value`` (case-insensitive match first), or None."""
    options = list(options)
    lowered = {o.lower(): o for o in options}
    if value.lower() in lowered:
        return lowered[value.lower()]
    matches = difflib.get_close_matches(value, options, n=1, cutoff=0.6)
    if not matches:
        matches = difflib.get_close_matches(value.lower(), list(lowered), n=1, cutoff=0.6)
        return lowered[matches[0]] if matches else None
    return matches[0]


def _did_you_mean(value: str, options: Iterable[str]) -> str:
    """Return ``"did you mean 'x'? "`` or an empty string."""
    match = _closest(value, options)
    return f"did you mean '{match}'? " if match else ""


def _is_sql_file_ref(text: str) -> bool:
    """True when ``sql`` names a file (one line ending in ``.sql``) rather than an inline query."""
    return "\n" not in text and text.lower().endswith(".sql")


def _check_file(value: str, suffixes: tuple[str, ...], what: str) -> Path:
    """Resolve a referenced file, check its suffix and that it exists; return the resolved path."""
    if not value.lower().endswith(suffixes):
        raise _Invalid(
            f"'{value}' is not a {' or '.join(suffixes)} file",
            f"point {what} to a file ending in {' or '.join(suffixes)}",
        )
    path = _resolve(value)
    if not path.is_file():
        where = "" if value == _display(path) else f" (looked for {_display(path)})"
        raise _Invalid(
            f"file '{value}' does not exist{where}",
            "create the file or correct the path; relative paths are relative to the project root",
        )
    return path


def _source_problems(has_list: bool, has_sql: bool, has_conn: bool) -> list[_Problem]:
    """Cross-field rules of ``audience_group``: exactly one of list/sql; conn_id goes with sql only."""
    if has_list and has_sql:
        return [((), "has both 'list' and 'sql'", _SOURCE_FIX)]
    if not has_list and not has_sql:
        return [((), "needs an audience source: neither 'list' nor 'sql' is set", _SOURCE_FIX)]
    if has_sql and not has_conn:
        return [
            (
                ("conn_id",),
                "is required when 'sql' is used",
                "add 'conn_id: <Airflow connection id>' naming the database the query runs on",
            )
        ]
    if has_list and has_conn:
        return [
            (
                ("conn_id",),
                "only applies to 'sql'; a 'list' file is read directly",
                "remove 'conn_id', or replace 'list' with 'sql'",
            )
        ]
    return []


def _duration_problems(start: date | None, end: date | None) -> list[_Problem]:
    """``end`` must not be before ``start``."""
    if start is not None and end is not None and end < start:
        return [
            (
                ("end",),
                f"end {end.isoformat()} is before start {start.isoformat()}",
                "set 'end' on or after 'start', or leave 'end' out for an open-ended campaign",
            )
        ]
    return []


def _exclusion_problems(segment_name: Any, excluded: Any) -> list[_Problem]:
    """A campaign cannot exclude its own segment."""
    if isinstance(segment_name, str) and isinstance(excluded, (list, tuple)):
        for i, name in enumerate(excluded):
            if isinstance(name, str) and name.strip() == segment_name.strip():
                return [
                    (
                        ("audience_group", "exclude_segments", i),
                        f"excludes the campaign's own segment '{segment_name}'",
                        "remove it from exclude_segments",
                    )
                ]
    return []


def _destination_problems(keys: list[tuple[Any, Any] | None]) -> list[_Problem]:
    """The same (platform, ad account) must not appear twice."""
    problems: list[_Problem] = []
    seen: dict[tuple[Any, Any], int] = {}
    for i, key in enumerate(keys):
        if key is None:
            continue
        if key in seen:
            problems.append(
                (
                    ("destinations", i),
                    f"duplicates destinations[{seen[key]}] (same platform and ad account)",
                    "remove the duplicate destination",
                )
            )
        else:
            seen[key] = i
    return problems


def _normalise_ad_account_id(value: Any) -> str:
    """Return ``act_<digits>`` for ``1234``, ``"1234"`` or ``"act_1234"``; raise otherwise."""
    fix = 'write the numeric ad account id, e.g. "act_1234567890" or "1234567890"'
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _Invalid("must be an ad account id", fix)
    text = str(value).strip()
    digits = text[4:] if text.lower().startswith("act_") else text
    if not digits.isascii() or not digits.isdigit():
        raise _Invalid(
            f"'{text}' is not a valid ad account id: expected digits, optionally after 'act_'", fix
        )
    return f"act_{digits}"


# --------------------------------------------------------------------------------------------------
# Segment names
# --------------------------------------------------------------------------------------------------


class SegmentNameError(ValueError):
    """A segment name breaks the naming rule. ``reason`` names the offence, ``suggestion`` a fix."""

    def __init__(self, name: str, reason: str, suggestion: str, rule: str) -> None:
        self.name = name
        self.reason = reason
        self.suggestion = suggestion
        self.rule = rule
        super().__init__(f"segment name '{name}' {reason}. Suggested name: '{suggestion}'.")


def segment_name_rule() -> str:
    """Return the configured segment name rule: ``"strict"`` (default) or ``"relaxed"``.

    Read from ``$AUDIENCE_SYNC_SEGMENT_NAME_RULE``; any other value raises ValueError.
    """
    value = os.environ.get(SEGMENT_NAME_RULE_ENV, "").strip().lower() or "strict"
    if value not in SEGMENT_NAME_RULES:
        raise ValueError(
            f"{SEGMENT_NAME_RULE_ENV} is '{value}' but must be 'strict' or 'relaxed' (or unset for strict)"
        )
    return value


def _quote_chars(chars: Iterable[str]) -> str:
    """Render offending characters once each, in order: ``'I', 'W', ' ' (space)``."""
    seen: list[str] = []
    for char in chars:
        if char not in seen:
            seen.append(char)
    return ", ".join("' ' (space)" if c == " " else repr(c) for c in seen)


def _strict_reasons(name: str) -> list[str]:
    """Return what is wrong with ``name`` under the strict rule (empty when fine)."""
    reasons: list[str] = []
    if len(name) < SEGMENT_NAME_MIN:
        reasons.append(f"is too short ({len(name)} characters, at least {SEGMENT_NAME_MIN})")
    if len(name) > SEGMENT_NAME_MAX:
        reasons.append(f"is too long ({len(name)} characters, at most {SEGMENT_NAME_MAX})")
    capitals = [c for c in name if c.isupper()]
    numbers = [c for c in name if c in "0123456789"]
    special = [c for c in name if not ("a" <= c <= "z" or c == "_" or c in capitals or c in numbers)]
    if capitals:
        reasons.append(f"contains capital letters {_quote_chars(capitals)}")
    if numbers:
        reasons.append(f"contains numbers {_quote_chars(numbers)}")
    if special:
        reasons.append(f"contains special characters {_quote_chars(special)}")
    if "_" in name and (name.startswith("_") or name.endswith("_") or "__" in name):
        reasons.append("has a leading, trailing or doubled underscore (underscore only separates words)")
    return reasons


def _relaxed_reasons(name: str) -> list[str]:
    """Return what is wrong with ``name`` under the relaxed rule (empty when fine)."""
    reasons: list[str] = []
    if not name.strip():
        reasons.append("is empty")
    if len(name) > SEGMENT_NAME_MAX:
        reasons.append(f"is too long ({len(name)} characters, at most {SEGMENT_NAME_MAX})")
    special = [c for c in name if not _RELAXED_SEGMENT_CHARS.fullmatch(c)]
    if special:
        reasons.append(f"contains special characters {_quote_chars(special)}")
    if name.strip() and name != name.strip():
        reasons.append("has a leading or trailing space")
    return reasons


def suggest_segment_name(name: str, *, strict: bool = True) -> str:
    """Propose a compliant segment name close to ``name``.

    Strict (default): accents are dropped, camelCase is split, every digit is spelled out as its own
    word (``Week1`` -> ``week_one``, ``2026`` -> ``two_zero_two_six``: digit by digit, so different
    numbers stay different), everything is lowercased, any other character becomes a single ``_``, the
    result is cut to 128 characters and padded with ``_segment`` when shorter than 3 characters.

    ``strict=False`` suggests a name for the relaxed rule: forbidden characters become ``_``.
    """
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    if not strict:
        text = re.sub(r"[^A-Za-z0-9_\- ]+", "_", text).strip(" _")[:SEGMENT_NAME_MAX].rstrip(" _")
        return text or "segment"
    text = re.sub(r"(?<=[a-z])(?=[A-Z])", "_", text)
    text = re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", "_", text)
    text = re.sub(r"[0-9]", lambda m: f"_{_DIGIT_WORDS[int(m.group())]}_", text)
    text = re.sub(r"[^a-z]+", "_", text.lower()).strip("_")
    text = text[:SEGMENT_NAME_MAX].rstrip("_")
    if not text:
        return "segment"
    if len(text) < SEGMENT_NAME_MIN:
        text = f"{text}_segment"
    return text


def check_segment_name(name: str, *, strict: bool | None = None) -> None:
    """Raise :class:`SegmentNameError` (a ValueError) when ``name`` breaks the segment naming rule.

    Strict rule (product spec, default): 3-128 characters, lowercase letters only, words separated by
    single underscores. Relaxed rule: 1-128 characters of letters, digits, underscore, hyphen, space.
    ``strict=None`` follows ``$AUDIENCE_SYNC_SEGMENT_NAME_RULE`` (``strict`` | ``relaxed``).
    The message names the offending characters and proposes a compliant name.
    """
    if not isinstance(name, str):
        raise ValueError("segment name must be text")
    if strict is None:
        strict = segment_name_rule() == "strict"
    if strict:
        reasons = _strict_reasons(name)
        if not reasons and not _STRICT_SEGMENT_RE.fullmatch(name):  # safety net, should not happen
            reasons = ["does not match the naming rule"]
    else:
        reasons = _relaxed_reasons(name)
    if reasons:
        rule = _STRICT_RULE_TEXT if strict else _RELAXED_RULE_TEXT
        raise SegmentNameError(name, "; ".join(reasons), suggest_segment_name(name, strict=strict), rule)


def _validate_segment_name(value: str) -> str:
    """Pydantic adapter for :func:`check_segment_name`."""
    try:
        check_segment_name(value)
    except SegmentNameError as exc:
        raise _Invalid(exc.reason, f"rename it to '{exc.suggestion}'; the rule: {exc.rule}") from None
    except ValueError as exc:
        raise _Invalid(str(exc), f"set {SEGMENT_NAME_RULE_ENV} to 'strict' or 'relaxed'") from None
    return value


SegmentName = Annotated[str, StringConstraints(strip_whitespace=True), AfterValidator(_validate_segment_name)]

# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


class _Model(BaseModel):
    """Base: unknown keys rejected, immutable, surrounding whitespace of strings stripped."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def _reject_non_date(value: Any) -> Any:
    """Refuse numbers and datetimes, which pydantic would otherwise turn into dates."""
    if isinstance(value, datetime):
        raise _Invalid("must be a date without a time", "write the date as YYYY-MM-DD, e.g. 2026-07-01")
    if isinstance(value, (bool, int, float)):
        raise _Invalid("must be a date", "write the date as YYYY-MM-DD, e.g. 2026-07-01")
    return value


class Duration(_Model):
    """When the campaign runs. ``end`` is optional (open-ended) and inclusive."""

    start: date
    end: date | None = None

    @field_validator("start", "end", mode="before")
    @classmethod
    def _no_numbers(cls, value: Any) -> Any:
        """Refuse numbers and datetimes."""
        return _reject_non_date(value)

    @model_validator(mode="after")
    def _end_after_start(self) -> Duration:
        """Reject an end before the start."""
        for at, message, fix in _duration_problems(self.start, self.end):
            raise _Invalid(message, fix, at)
        return self

    def contains(self, day: date) -> bool:
        """True when ``day`` lies within the duration (both ends inclusive)."""
        return self.start <= day and (self.end is None or day <= self.end)


class Consent(_Model):
    """Consent filter: rows whose ``column`` is false or absent are excluded."""

    column: NonEmptyStr


class AudienceGroup(_Model):
    """Where the audience comes from and how its columns map to identifier types.

    Exactly one source: ``list`` (CSV/Parquet file, attribute ``list_file``, resolved) or ``sql``
    (a ``.sql`` file or an inline query) with ``conn_id``.
    """

    list_file: Path | None = Field(default=None, alias="list")
    sql: NonEmptyStr | None = None
    conn_id: NonEmptyStr | None = None
    key: NonEmptyStr
    identifiers: dict[IdentifierType, NonEmptyStr] = Field(min_length=1)
    default_country: str | None = None
    exclude_segments: tuple[SegmentName, ...] = ()
    consent: Consent | None = None

    @field_validator("list_file", mode="before")
    @classmethod
    def _check_list(cls, value: Any) -> Any:
        """Check the list file's type and existence; return its resolved path."""
        if value is None:
            return None
        if not isinstance(value, (str, Path)) or not str(value).strip():
            raise _Invalid("must be a file path", "write the path of a .csv or .parquet file")
        return _check_file(str(value).strip(), (".csv", ".parquet"), "'list'")

    @field_validator("sql")
    @classmethod
    def _check_sql(cls, value: str | None) -> str | None:
        """A one-line value ending in ``.sql`` must be an existing file; otherwise a query."""
        if value is None:
            return None
        if _is_sql_file_ref(value):
            path = _check_file(value, (".sql",), "'sql'")
            if not path.read_text(encoding="utf-8").strip():
                raise _Invalid(f"file '{value}' is empty", "write the audience query into the file")
        elif not re.search(r"\s", value):
            raise _Invalid(
                f"'{value}' is neither a .sql file nor a query",
                "point 'sql' to a file ending in .sql, or write the query inline (SELECT ... FROM ...)",
            )
        return value

    @field_validator("default_country")
    @classmethod
    def _check_country(cls, value: str | None) -> str | None:
        """Normalise to an upper-case ISO 3166-1 alpha-2 code."""
        if value is None:
            return None
        code = value.upper()
        if not re.fullmatch(r"[A-Z]{2}", code):
            raise _Invalid(
                f"'{value}' is not a 2-letter country code",
                "use an ISO 3166-1 alpha-2 code such as US, GB or IN",
            )
        return code

    @model_validator(mode="after")
    def _one_source(self) -> AudienceGroup:
        """Exactly one of list/sql; conn_id only with sql."""
        problems = _source_problems(
            self.list_file is not None, self.sql is not None, self.conn_id is not None
        )
        for at, message, fix in problems:
            raise _Invalid(message, fix, at)
        return self

    @property
    def source(self) -> Literal["list", "sql"]:
        """``"list"`` for an existing audience list, ``"sql"`` for a new audience group."""
        return "list" if self.list_file is not None else "sql"

    @property
    def sql_file(self) -> Path | None:
        """Resolved path of the ``.sql`` file, or None for an inline query or a list source."""
        if self.sql is not None and _is_sql_file_ref(self.sql):
            return _resolve(self.sql)
        return None

    @property
    def source_path(self) -> Path | None:
        """Resolved path of the referenced file (list or .sql), None for an inline query."""
        return self.list_file if self.list_file is not None else self.sql_file

    def sql_query(self) -> str:
        """Return the query text (read from the ``.sql`` file, or the inline query)."""
        if self.sql is None:
            raise ValueError("this audience group reads a list file, it has no SQL query")
        path = self.sql_file
        return path.read_text(encoding="utf-8").strip() if path is not None else self.sql


class DestinationBase(_Model):
    """Fields every destination shares. Subclasses fix ``platform`` to a ``Literal``."""

    platform: str

    def identity(self) -> tuple[str, str]:
        """Identity used to detect duplicate destinations."""
        return (self.platform, self.model_dump_json())


class MetaDestination(DestinationBase):
    """A Meta (Facebook/Instagram) ad account. ``ad_account_id`` is normalised to ``act_<digits>``."""

    platform: Literal["meta"]
    ad_account_id: str
    conn_id: NonEmptyStr = "meta_default"

    @field_validator("ad_account_id", mode="before")
    @classmethod
    def _normalise(cls, value: Any) -> str:
        """Accept ``1234``, ``"1234"`` and ``"act_1234"``."""
        return _normalise_ad_account_id(value)

    def identity(self) -> tuple[str, str]:
        """Identity used to detect duplicate destinations."""
        return (self.platform, self.ad_account_id)


#: Discriminated union on ``platform``. Add new platform models here and in DESTINATION_MODELS.
Destination = Annotated[Union[MetaDestination], Field(discriminator="platform")]  # noqa: UP007

DESTINATION_MODELS: dict[str, type[DestinationBase]] = {"meta": MetaDestination}
SUPPORTED_PLATFORMS: tuple[str, ...] = tuple(DESTINATION_MODELS)


class Campaign(_Model):
    """One validated campaign file. Build it with :func:`load_campaign` (or :meth:`from_mapping`).

    ``campaign`` is the campaign name (also :attr:`name`); ``ads_campaign_name`` defaults to it.
    """

    campaign: NonEmptyStr
    ads_campaign_name: NonEmptyStr | None = Field(default=None, validate_default=True)
    description: str | None = None
    owner: NonEmptyStr = "audience-sync"
    tags: tuple[NonEmptyStr, ...] = ()
    duration: Duration
    schedule: NonEmptyStr
    timezone: NonEmptyStr = "UTC"
    segment_name: SegmentName
    sync_mode: SyncMode = "mirror"
    audience_group: AudienceGroup
    destinations: tuple[Destination, ...] = Field(min_length=1)
    retries: int = Field(default=3, ge=0, strict=True)
    retry_delay_minutes: int = Field(default=5, ge=0, strict=True)
    # how long the wait task lets a platform process the uploads (Meta: up to 24 h) and how often it asks
    processing_timeout_minutes: int = Field(default=360, ge=1, strict=True)
    processing_poke_seconds: int = Field(default=120, ge=1, strict=True)

    _path: Path | None = PrivateAttr(default=None)

    @field_validator("ads_campaign_name")
    @classmethod
    def _default_ads_name(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Default the ads campaign name to the campaign name."""
        return value if value is not None else info.data.get("campaign")

    @field_validator("schedule")
    @classmethod
    def _check_schedule(cls, value: str) -> str:
        """Accept a preset or a valid 5-field cron expression."""
        if value in SCHEDULE_PRESETS:
            return value
        if value.startswith("@"):
            raise _Invalid(
                f"unknown schedule preset '{value}'", _did_you_mean(value, SCHEDULE_PRESETS) + _SCHEDULE_FIX
            )
        fields = value.split()
        if len(fields) != _CRON_FIELDS:
            raise _Invalid(
                f"'{value}' is not a valid schedule: a cron expression has 5 fields, not {len(fields)}",
                _SCHEDULE_FIX,
            )
        if not croniter.is_valid(value):
            raise _Invalid(f"'{value}' is not a valid cron expression", _SCHEDULE_FIX)
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        """Must be an IANA time zone name known to zoneinfo."""
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            hint = _did_you_mean(value, available_timezones())
            raise _Invalid(
                f"unknown timezone '{value}'",
                hint + "use an IANA time zone name such as UTC, Europe/London or Asia/Kolkata",
            ) from None
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Campaign:
        """Rules spanning several sections."""
        problems = _exclusion_problems(self.segment_name, self.audience_group.exclude_segments)
        problems += _destination_problems([d.identity() for d in self.destinations])
        for at, message, fix in problems:
            raise _Invalid(message, fix, at)
        return self

    # -- derived attributes ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The campaign name (the ``campaign`` key)."""
        return self.campaign

    @property
    def path(self) -> Path:
        """The campaign file (absolute)."""
        if self._path is None:
            raise ValueError("this campaign was not loaded from a file")
        return self._path

    @property
    def stem(self) -> str:
        """The file name without suffix; it names the DAG."""
        return self.path.stem

    @property
    def dag_id(self) -> str:
        """``ads_audience__<stem>``."""
        return f"{DAG_ID_PREFIX}{self.stem}"

    @property
    def tzinfo(self) -> ZoneInfo:
        """The campaign time zone as a :class:`zoneinfo.ZoneInfo`."""
        return ZoneInfo(self.timezone)

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Any, path: str | Path) -> Campaign:
        """Validate already-parsed campaign data as if read from ``path``; raise CampaignErrors."""
        return _build(data, Path(path).expanduser().resolve(), None, [])


# --------------------------------------------------------------------------------------------------
# Error conversion
# --------------------------------------------------------------------------------------------------

_EXAMPLES: dict[str, str] = {
    "campaign": "campaign: Abandoned cart July",
    "duration": "duration: {start: 2026-07-01, end: 2026-07-31}",
    "duration.start": "start: 2026-07-01",
    "schedule": 'schedule: "@daily"',
    "segment_name": "segment_name: abandoned_cart_users",
    "audience_group": (
        "audience_group: {sql: <file or query>, conn_id: <connection>, key: <column>, "
        "identifiers: {email: <column>}}"
    ),
    "audience_group.key": "key: customer_id",
    "audience_group.identifiers": "identifiers: {email: email}",
    "audience_group.consent.column": "column: ads_consent",
    "destinations": 'destinations: [{platform: meta, ad_account_id: "act_1234567890"}]',
    "destinations[].platform": "platform: meta",
    "destinations[].ad_account_id": 'ad_account_id: "act_1234567890"',
}

_TYPE_MESSAGES: dict[str, tuple[str, str]] = {
    "string_type": (
        "must be text",
        "write it as text; quote it if YAML reads it as a number, date or yes/no",
    ),
    "int_type": ("must be a whole number", "write a whole number such as 3"),
    "int_parsing": ("must be a whole number", "write a whole number such as 3"),
    "bool_type": ("must be true or false", "write true or false"),
    "date_type": ("must be a date", "write the date as YYYY-MM-DD, e.g. 2026-07-01"),
    "date_parsing": ("must be a date", "write the date as YYYY-MM-DD, e.g. 2026-07-01"),
    "date_from_datetime_parsing": ("must be a date", "write the date as YYYY-MM-DD, e.g. 2026-07-01"),
    "date_from_datetime_inexact": ("must be a date without a time", "write the date as YYYY-MM-DD"),
    "model_type": ("must be a mapping of keys to values", "write 'key: value' lines indented under it"),
    "model_attributes_type": ("must be a mapping of keys to values", "write 'key: value' lines under it"),
    "dict_type": ("must be a mapping of keys to values", "write 'key: value' lines indented under it"),
    "tuple_type": ("must be a list", "write one '- item' line per entry"),
    "list_type": ("must be a list", "write one '- item' line per entry"),
    "string_too_short": ("must not be empty", "give it a value"),
    "path_type": ("must be a file path", "write a file path"),
}


def _clean_loc(loc: Iterable[str | int]) -> Loc:
    """Drop pydantic's internal parts (discriminator tags, ``[key]``) from an error location."""
    parts = list(loc)
    cleaned: list[str | int] = []
    for i, part in enumerate(parts):
        if part == "[key]":
            continue
        if (
            i >= 2
            and parts[i - 2] == "destinations"
            and isinstance(parts[i - 1], int)
            and part in DESTINATION_MODELS
        ):
            continue
        cleaned.append(part)
    return tuple(cleaned)


def _format_loc(loc: Loc) -> str:
    """``("destinations", 0, "platform")`` -> ``destinations[0].platform``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def _index_free(loc: Loc) -> str:
    """``destinations[0].platform`` -> ``destinations[].platform``."""
    return re.sub(r"\[\d+\]", "[]", _format_loc(loc)) if loc else ""


def _field_by_key(model: type[BaseModel], key: str) -> Any:
    """The pydantic FieldInfo whose alias (or name) is ``key``."""
    for name, info in model.model_fields.items():
        if (info.alias or name) == key:
            return info
    return None


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel class inside ``annotation`` (through Optional, tuple, Annotated), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _allowed_keys(raw_loc: Loc) -> list[str]:
    """Keys accepted in the mapping at pydantic location ``raw_loc``."""
    model: type[BaseModel] | None = Campaign
    parts = list(raw_loc)
    i = 0
    while i < len(parts) and model is not None:
        part = parts[i]
        if model is Campaign and part == "destinations":
            # ("destinations", index, tag, ...)
            tag = parts[i + 2] if i + 2 < len(parts) else None
            model = DESTINATION_MODELS.get(tag) if isinstance(tag, str) else None
            i += 3
            continue
        if isinstance(part, int):
            i += 1
            continue
        field = _field_by_key(model, part)
        model = _submodel(field.annotation) if field is not None else None
        i += 1
    if model is None:
        return []
    return [info.alias or name for name, info in model.model_fields.items()]


def _convert(error: Mapping[str, Any]) -> _Problem:
    """Turn one pydantic error into (location, message, fix)."""
    raw_loc: Loc = tuple(error["loc"])
    loc = _clean_loc(raw_loc)
    kind = error["type"]
    ctx = error.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, _Invalid):
        return loc + cause.at, cause.message, cause.fix
    if kind == "missing":
        example = _EXAMPLES.get(_index_free(loc))
        fix = f"add '{example}'" if example else f"add '{loc[-1]}: ...'"
        return loc, "is required but missing", fix
    if kind == "extra_forbidden":
        key = str(raw_loc[-1])
        allowed = _allowed_keys(raw_loc[:-1])
        return (
            loc,
            f"unknown key '{key}'",
            _did_you_mean(key, allowed)
            + ("allowed keys here: " + ", ".join(allowed) if allowed else "remove it"),
        )
    if kind == "literal_error" and raw_loc[-1] == "[key]":
        key = str(raw_loc[-2])
        return (
            loc,
            f"unknown identifier type '{key}'",
            _did_you_mean(key, IDENTIFIER_TYPES)
            + "supported identifier types: "
            + ", ".join(IDENTIFIER_TYPES),
        )
    if kind == "literal_error" and loc and loc[-1] == "sync_mode":
        return loc, "is not a known sync mode", "use one of: " + ", ".join(SYNC_MODES)
    if kind == "union_tag_invalid":
        tag = str(ctx.get("tag", ""))
        return (
            loc + ("platform",),
            f"unsupported platform '{tag}'",
            _did_you_mean(tag, SUPPORTED_PLATFORMS)
            + "supported platforms: "
            + ", ".join(SUPPORTED_PLATFORMS),
        )
    if kind == "union_tag_not_found":
        return (
            loc + ("platform",),
            "is required but missing",
            ("add 'platform: <name>'; supported platforms: " + ", ".join(SUPPORTED_PLATFORMS)),
        )
    if kind == "too_short" and loc and loc[-1] == "identifiers":
        return (
            loc,
            "needs at least one identifier",
            (
                "map an identifier type to its column, e.g. 'email: email'; types: "
                + ", ".join(IDENTIFIER_TYPES)
            ),
        )
    if kind == "too_short" and loc and loc[-1] == "destinations":
        return loc, "needs at least one destination", "add " + _EXAMPLES["destinations"]
    if kind == "greater_than_equal":
        return (
            loc,
            f"must be {ctx.get('ge', 0)} or more",
            f"use a whole number of at least {ctx.get('ge', 0)}",
        )
    if kind in _TYPE_MESSAGES:
        message, fix = _TYPE_MESSAGES[kind]
        return loc, message, fix
    return loc, str(error.get("msg", "is invalid")), "correct the value"


# --------------------------------------------------------------------------------------------------
# YAML reading
# --------------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """Safe loader that refuses duplicate keys."""


class _DuplicateKey(yaml.constructor.ConstructorError):
    """A mapping defines the same key twice (PyYAML would silently keep the last one)."""


def _construct_mapping(loader: _Loader, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
    """Build a mapping, raising on a key defined twice."""
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if isinstance(key_node, ScalarNode):
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(
                    None,
                    None,
                    f"duplicate key '{key}' (first defined on line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _line_of(root: Node | None, loc: Loc) -> int | None:
    """1-based line of the deepest node along ``loc`` in the YAML tree, if known."""
    node = root
    line: int | None = None
    for part in loc:
        if isinstance(node, MappingNode) and isinstance(part, str):
            for key_node, value_node in node.value:
                if isinstance(key_node, ScalarNode) and key_node.value == part:
                    line = key_node.start_mark.line + 1
                    node = value_node
                    break
            else:
                break
        elif isinstance(node, SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _read_yaml(path: Path) -> tuple[Any, Node | None]:
    """Parse ``path``; return (data, node tree). Raise CampaignError for unreadable/invalid files."""
    shown = _display(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CampaignError(shown, FILE_FIELD, "file does not exist", "check the path") from None
    except UnicodeDecodeError:
        raise CampaignError(shown, FILE_FIELD, "file is not UTF-8 text", "save the file as UTF-8") from None
    except OSError as exc:
        raise CampaignError(
            shown, FILE_FIELD, f"cannot read file ({exc.strerror})", "check the file"
        ) from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except _DuplicateKey as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else "?"
        raise CampaignError(
            shown, FILE_FIELD, f"{exc.problem} and again on line {line}", "keep only one of them"
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise CampaignError(
            shown,
            FILE_FIELD,
            f"YAML syntax error{where}: {problem}",
            "fix the YAML there: check indentation, and quote values containing ': ', '#', or starting "
            "with '@', '*', '&', '!', '{' or '['",
        ) from None
    except yaml.YAMLError as exc:
        raise CampaignError(shown, FILE_FIELD, f"YAML error: {type(exc).__name__}", "fix the YAML") from None
    finally:
        loader.dispose()
    return data, node


def _pre_checks(data: Mapping[Any, Any]) -> list[_Problem]:
    """Cross-field rules checked on the raw data, so they are reported even when other fields fail."""
    problems: list[_Problem] = []
    group = data.get("audience_group")
    if isinstance(group, Mapping):
        for at, message, fix in _source_problems(
            group.get("list") is not None, group.get("sql") is not None, group.get("conn_id") is not None
        ):
            problems.append((("audience_group", *at), message, fix))
        problems += _exclusion_problems(data.get("segment_name"), group.get("exclude_segments"))
    duration = data.get("duration")
    if isinstance(duration, Mapping):
        start, end = _as_date(duration.get("start")), _as_date(duration.get("end"))
        problems += [(("duration", *at), m, f) for at, m, f in _duration_problems(start, end)]
    destinations = data.get("destinations")
    if isinstance(destinations, list):
        keys: list[tuple[Any, Any] | None] = []
        for item in destinations:
            key = None
            if isinstance(item, Mapping) and item.get("platform") in DESTINATION_MODELS:
                try:
                    key = (item["platform"], _normalise_ad_account_id(item.get("ad_account_id")))
                except _Invalid:
                    key = None
            keys.append(key)
        problems += _destination_problems(keys)
    return problems


def _as_date(value: Any) -> date | None:
    """A plain date from a YAML value, or None when it is not one."""
    if isinstance(value, datetime):
        return None
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            return None
    return None


def _file_name_problem(path: Path) -> CampaignError | None:
    """The file stem becomes the DAG id, so it must be ``[A-Za-z0-9_]+``."""
    if _STEM_RE.fullmatch(path.stem):
        return None
    fixed = re.sub(r"[^A-Za-z0-9_]+", "_", path.stem).strip("_") or "campaign"
    return CampaignError(
        _display(path),
        FILE_NAME_FIELD,
        f"file name '{path.name}' cannot form a DAG id: only letters, digits and underscores are allowed",
        f"rename the file to '{fixed}{path.suffix}'",
    )


def _items_failed(error: Mapping[str, Any], data: Any) -> bool:
    """True for a 'too short' error on a non-empty input: its items failed and are reported already."""
    if error["type"] != "too_short":
        return False
    value = data
    for part in error["loc"]:
        if isinstance(value, Mapping):
            value = value.get(part)
        elif isinstance(value, list) and isinstance(part, int) and part < len(value):
            value = value[part]
        else:
            return False
    return isinstance(value, (list, Mapping)) and len(value) > 0


def _build(data: Any, path: Path, node: Node | None, problems: list[CampaignError]) -> Campaign:
    """Validate ``data`` for the file ``path``; raise CampaignErrors with every problem found."""
    shown = _display(path)
    name_problem = _file_name_problem(path)
    if name_problem is not None:
        problems.insert(0, name_problem)
    if data is None:
        problems.append(CampaignError(shown, FILE_FIELD, "file is empty", "write the campaign settings"))
        raise CampaignErrors(shown, problems)
    if not isinstance(data, Mapping):
        problems.append(
            CampaignError(
                shown,
                FILE_FIELD,
                f"top level must be a mapping of keys to values, not a {type(data).__name__}",
                "start the file with 'campaign: <name>' and the other keys, one per line, not indented",
            )
        )
        raise CampaignErrors(shown, problems)

    found: list[_Problem] = list(_pre_checks(data))
    campaign: Campaign | None = None
    try:
        campaign = Campaign.model_validate(data)
    except ValidationError as exc:
        found += [_convert(e) for e in exc.errors() if not _items_failed(e, data)]

    seen: set[tuple[Loc, str]] = set()
    located: list[tuple[int | None, CampaignError]] = []
    for loc, message, fix in found:
        if (loc, message) in seen:
            continue
        seen.add((loc, message))
        line = _line_of(node, loc)
        text = f"{message} (line {line})" if line is not None else message
        located.append((line, CampaignError(shown, _format_loc(loc), text, fix)))
    located.sort(key=lambda item: item[0] if item[0] is not None else 10**9)
    problems += [error for _, error in located]

    if problems or campaign is None:
        raise CampaignErrors(shown, problems)
    campaign._path = path
    return campaign


# --------------------------------------------------------------------------------------------------
# Public loaders
# --------------------------------------------------------------------------------------------------


def load_campaign(path: str | Path) -> Campaign:
    """Read and validate one campaign file.

    A relative ``path`` is taken relative to the current directory. Raises
    :class:`~audience_sync.core.errors.CampaignErrors` listing every problem of the file.
    """
    resolved = Path(path).expanduser().resolve()
    try:
        data, node = _read_yaml(resolved)
    except CampaignError as exc:
        name_problem = _file_name_problem(resolved)
        problems = [exc] if name_problem is None else [name_problem, exc]
        raise CampaignErrors(exc.path, problems) from None
    return _build(data, resolved, node, [])


def _campaign_files(folder: Path) -> list[Path]:
    """``*.yaml``/``*.yml`` files of ``folder`` (not recursive), sorted; ``_``/``.`` prefixes skipped."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in (".yaml", ".yml") and not p.name.startswith(("_", "."))
    )


def load_campaigns(
    folder: str | Path | None = None, *, strict: bool = False
) -> tuple[list[Campaign], dict[str, CampaignErrors]]:
    """Load every campaign file of ``folder`` (default :func:`campaigns_dir`).

    Returns ``(campaigns, broken)`` where ``broken`` maps each failing file (as shown in messages:
    relative to the project root when inside it) to its CampaignErrors. A broken file never stops the
    others. Two files with the same stem (``x.yaml`` and ``x.yml``) would make the same DAG id: the
    second one is reported as broken. ``strict=True`` raises the first file's CampaignErrors after
    loading everything; its message then lists every broken file and its problems.
    A relative ``folder`` is taken relative to the project root; a missing folder raises FileNotFoundError.
    """
    directory = campaigns_dir() if folder is None else _resolve(folder)
    if not directory.is_dir():
        raise FileNotFoundError(f"campaign folder '{_display(directory)}' does not exist")
    campaigns: list[Campaign] = []
    broken: dict[str, CampaignErrors] = {}
    by_dag_id: dict[str, Campaign] = {}
    for file in _campaign_files(directory):
        try:
            campaign = load_campaign(file)
        except CampaignErrors as exc:
            broken[exc.path] = exc
            continue
        other = by_dag_id.get(campaign.dag_id)
        if other is not None:
            shown = _display(file)
            broken[shown] = CampaignErrors(
                shown,
                [
                    CampaignError(
                        shown,
                        FILE_NAME_FIELD,
                        f"DAG id '{campaign.dag_id}' is already used by '{other.path.name}'",
                        "rename one of the two files",
                    )
                ],
            )
            continue
        by_dag_id[campaign.dag_id] = campaign
        campaigns.append(campaign)
    if strict and broken:
        first = next(iter(broken.values()))
        error = CampaignErrors(first.path, first.errors)
        if len(broken) > 1:
            listing = "\n".join(str(e) for e in broken.values())
            error.args = (f"{len(broken)} broken campaign files in {_display(directory)}:\n{listing}",)
        raise error
    return campaigns, broken
