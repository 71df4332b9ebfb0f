"""The campaign model (pydantic): Duration, Consent, AudienceGroup and Campaign with their field rules."""

from __future__ import annotations

import re
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import croniter
from pydantic import Field, PrivateAttr, ValidationInfo, create_model, field_validator, model_validator

from audience_sync.core.campaign.approval import CampaignApproval
from audience_sync.core.campaign.base import (
    Invalid,
    NonEmptyStr,
    StrictModel,
    check_file,
    did_you_mean,
    duration_problems,
    exclusion_problems,
    is_sql_file_ref,
    source_problems,
)
from audience_sync.core.campaign.delivery import Alerts, Delivery
from audience_sync.core.campaign.destinations import (
    DestinationBase,
    destination_models,
    destination_problems,
)
from audience_sync.core.campaign.paths import resolve_path
from audience_sync.core.campaign.segment_name import SegmentName
from audience_sync.core.normalize import CONSENT_TYPES, IDENTIFIER_TYPES

IdentifierType = Literal[IDENTIFIER_TYPES]  # type: ignore[valid-type]  # the normaliser's list, one source
SyncMode = Literal["mirror", "add_only", "replace"]
SYNC_MODES: tuple[str, ...] = SyncMode.__args__
SCHEDULE_PRESETS: tuple[str, ...] = ("@once", "@hourly", "@daily", "@weekly", "@monthly")
DAG_ID_PREFIX = "ads_audience__"
#: most extraction partitions a campaign may ask for (each is one mapped task instance)
MAX_PARTITIONS = 64
_PARTITIONS_FIX = (
    f"write 'partitions: auto' (split by the group's size), or a whole number from 1 to {MAX_PARTITIONS}, "
    "or leave it out for one extraction task"
)
_CRON_FIELDS = 5
_SCHEDULE_FIX = (
    "use one of " + ", ".join(SCHEDULE_PRESETS) + ", or a 5-field cron expression "
    "'minute hour day-of-month month day-of-week' such as '0 6 * * *' (06:00 every day, campaign timezone)"
)


def _reject_non_date(value: Any) -> Any:
    """Refuse numbers and datetimes, which pydantic would otherwise turn into dates."""
    if isinstance(value, datetime):
        raise Invalid("must be a date without a time", "write the date as YYYY-MM-DD, e.g. 2026-07-01")
    if isinstance(value, (bool, int, float)):
        raise Invalid("must be a date", "write the date as YYYY-MM-DD, e.g. 2026-07-01")
    return value


class Duration(StrictModel):
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
        for at, message, fix in duration_problems(self.start, self.end):
            raise Invalid(message, fix, at)
        return self

    def contains(self, day: date) -> bool:
        """True when ``day`` lies within the duration (both ends inclusive)."""
        return self.start <= day and (self.end is None or day <= self.end)


class Consent(StrictModel):
    """Consent: ``column`` filters (rows whose column is false or absent are excluded, for every platform);
    ``ad_user_data`` / ``ad_personalization`` name columns of each person's consent to those purposes,
    sent with the person to the platforms that take them (Google Data Manager: the member's own consent,
    which overrides the destination's)."""

    column: NonEmptyStr | None = None
    ad_user_data: NonEmptyStr | None = None
    ad_personalization: NonEmptyStr | None = None

    @model_validator(mode="after")
    def _some(self) -> Consent:
        if not (self.column or self.ad_user_data or self.ad_personalization):
            raise Invalid(
                "names no column",
                "give column (the consent filter) and/or ad_user_data / ad_personalization columns",
            )
        return self

    def purposes(self) -> dict[str, str]:
        """Consent type -> source column, for the per-person purposes given."""
        return {k: v for k in CONSENT_TYPES if (v := getattr(self, k))}


class AudienceGroup(StrictModel):
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
            raise Invalid("must be a file path", "write the path of a .csv or .parquet file")
        return check_file(str(value).strip(), (".csv", ".parquet"), "'list'")

    @field_validator("sql")
    @classmethod
    def _check_sql(cls, value: str | None) -> str | None:
        """A one-line value ending in ``.sql`` must be an existing file; otherwise a query."""
        if value is None:
            return None
        if is_sql_file_ref(value):
            path = check_file(value, (".sql",), "'sql'")
            if not path.read_text(encoding="utf-8").strip():
                raise Invalid(f"file '{value}' is empty", "write the audience query into the file")
        elif not re.search(r"\s", value):
            raise Invalid(
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
            raise Invalid(
                f"'{value}' is not a 2-letter country code",
                "use an ISO 3166-1 alpha-2 code such as US, GB or IN",
            )
        return code

    @model_validator(mode="after")
    def _one_source(self) -> AudienceGroup:
        """Exactly one of list/sql; conn_id only with sql."""
        problems = source_problems(self.list_file is not None, self.sql is not None, self.conn_id is not None)
        for at, message, fix in problems:
            raise Invalid(message, fix, at)
        return self

    @property
    def source(self) -> Literal["list", "sql"]:
        """``"list"`` for an existing audience list, ``"sql"`` for a new audience group."""
        return "list" if self.list_file is not None else "sql"

    @property
    def sql_file(self) -> Path | None:
        """Resolved path of the ``.sql`` file, or None for an inline query or a list source."""
        if self.sql is not None and is_sql_file_ref(self.sql):
            return resolve_path(self.sql)
        return None

    @property
    def source_path(self) -> Path | None:
        """Resolved path of the referenced file (list or .sql), None for an inline query."""
        return self.list_file if self.list_file is not None else self.sql_file

    @property
    def extracted_fields(self) -> dict[str, str]:
        """What extraction reads for the platforms: the identifiers, and the per-person consent columns."""
        return {**self.identifiers, **(self.consent.purposes() if self.consent else {})}

    def sql_query(self) -> str:
        """Return the query text (read from the ``.sql`` file, or the inline query)."""
        if self.sql is None:
            raise ValueError("this audience group reads a list file, it has no SQL query")
        path = self.sql_file
        return path.read_text(encoding="utf-8").strip() if path is not None else self.sql


class Campaign(StrictModel):
    """One validated campaign file. Build it with :func:`load_campaign` (or :func:`campaign_from_mapping`).

    ``campaign`` is the campaign name (also :attr:`name`); ``ads_campaign_name`` defaults to it. Files
    are validated with :func:`campaign_model`, this class with ``destinations`` narrowed to the
    registered platforms' models.
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
    destinations: tuple[DestinationBase, ...] = Field(min_length=1)
    retries: int = Field(default=3, ge=0, strict=True)
    retry_delay_minutes: int = Field(default=5, ge=0, strict=True)
    # how often the wait task asks the platform whether it processed the uploads, and an optional cap on
    # the wait (without one, the wait lasts until the delivery promise, ``delivery.available_by``)
    processing_timeout_minutes: int | None = Field(default=None, ge=1, strict=True)
    processing_poke_seconds: int = Field(default=120, ge=1, strict=True)
    # extraction split over mapped tasks by a hash of the member key: 1 (one task), N, or "auto"
    partitions: int | Literal["auto"] = 1
    # when approved data is promised on the platforms, and who hears when something goes wrong
    delivery: Delivery = Delivery()
    alerts: Alerts = Alerts()
    # a code-review approval of one campaign version (core/approval.py decides whether it applies)
    approval: CampaignApproval | None = None

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
            raise Invalid(
                f"unknown schedule preset '{value}'", did_you_mean(value, SCHEDULE_PRESETS) + _SCHEDULE_FIX
            )
        fields = value.split()
        if len(fields) != _CRON_FIELDS:
            raise Invalid(
                f"'{value}' is not a valid schedule: a cron expression has 5 fields, not {len(fields)}",
                _SCHEDULE_FIX,
            )
        if not croniter.is_valid(value):
            raise Invalid(f"'{value}' is not a valid cron expression", _SCHEDULE_FIX)
        return value

    @field_validator("partitions", mode="before")
    @classmethod
    def _check_partitions(cls, value: Any) -> Any:
        """``auto`` or a whole number from 1 to :data:`MAX_PARTITIONS`."""
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"'{value}' is not a number of partitions", _PARTITIONS_FIX)
        if not 1 <= value <= MAX_PARTITIONS:
            raise Invalid(f"{value} partitions is not between 1 and {MAX_PARTITIONS}", _PARTITIONS_FIX)
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        """Must be an IANA time zone name known to zoneinfo."""
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            hint = did_you_mean(value, available_timezones())
            raise Invalid(
                f"unknown timezone '{value}'",
                hint + "use an IANA time zone name such as UTC, Europe/London or Asia/Kolkata",
            ) from None
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Campaign:
        """Rules spanning several sections."""
        problems = exclusion_problems(self.segment_name, self.audience_group.exclude_segments)
        problems += destination_problems([d.identity() for d in self.destinations])
        for at, message, fix in problems:
            raise Invalid(message, fix, at)
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


def campaign_model() -> type[Campaign]:
    """:class:`Campaign` whose ``destinations`` are a union, discriminated on ``platform``, of the
    registered platforms' destination models (built once per registry content)."""
    return _campaign_model(tuple(destination_models().values()))


@lru_cache(maxsize=8)
def _campaign_model(models: tuple[type[DestinationBase], ...]) -> type[Campaign]:
    """The campaign model for exactly these destination models."""
    one = Annotated[Union[models], Field(discriminator="platform")]  # noqa: UP007 - a runtime-built union
    return create_model(  # type: ignore[call-overload,no-any-return]
        "Campaign",
        __base__=Campaign,
        __module__=__name__,
        __doc__=Campaign.__doc__,
        destinations=(tuple[one, ...], Field(min_length=1)),  # type: ignore[valid-type]
    )
