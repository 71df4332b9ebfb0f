"""The campaign's ``delivery`` section (cut-off and promise) and ``alerts`` section (who hears of what)."""

from __future__ import annotations

import datetime as dt
import importlib
import re
from typing import Any, Literal

from pydantic import Field, field_validator

from audience_sync.core.campaign.base import Invalid, NonEmptyStr, StrictModel
from audience_sync.core.delivery import DEFAULT_AVAILABLE_BY, DEFAULT_CUTOFF

#: what an alert can be about (``alerts.triggers``; not ``on``, which YAML 1.1 reads as true)
AlertTrigger = Literal["sync_failed", "available_by_missed", "approval_waiting", "group_size_moved"]
ALERT_TRIGGERS: tuple[str, ...] = AlertTrigger.__args__
_TIME_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_CLASS_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$")


def _clock_time(value: Any) -> dt.time:
    """``"HH:MM"`` (24-hour clock, seconds allowed) as a time; YAML's base-60 ints (19:00 unquoted) are
    refused with the fix."""
    if isinstance(value, dt.time):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 24 * 60:
        # YAML 1.1 reads an unquoted 19:00 as the base-60 number 1140
        raise Invalid(
            f"is the number {value}: YAML reads an unquoted time as base-60",
            f'put the time in quotes: "{value // 60:02d}:{value % 60:02d}"',
        )
    text = value.strip() if isinstance(value, str) else None
    match = _TIME_RE.match(text) if text else None
    if match is None:
        raise Invalid(
            f"{value!r} is not a time of day",
            'write it as "HH:MM" on a 24-hour clock, in quotes, e.g. "19:00"',
        )
    return dt.time(int(match[1]), int(match[2]), int(match[3] or 0))


class Delivery(StrictModel):
    """When approved data is promised on the platform, in the campaign's time zone (core/delivery.py)."""

    cutoff: dt.time = DEFAULT_CUTOFF
    available_by: dt.time = DEFAULT_AVAILABLE_BY

    @field_validator("cutoff", "available_by", mode="before")
    @classmethod
    def _hh_mm(cls, value: Any) -> dt.time:
        return _clock_time(value)


class NotifierSpec(StrictModel):
    """Any Airflow notifier class, built with ``params`` and the alert's text in ``message_param``."""

    class_path: NonEmptyStr = Field(alias="class")
    params: dict[str, Any] = Field(default_factory=dict)
    message_param: NonEmptyStr = "text"

    @field_validator("class_path")
    @classmethod
    def _importable(cls, value: str) -> str:
        """The class must import here (the DAG processor), not only when an alert fires at 1 AM."""
        fix = (
            "give the notifier's full class path, e.g. "
            "airflow.providers.slack.notifications.slack.SlackNotifier, and install its provider"
        )
        if not _CLASS_RE.match(value):
            raise Invalid(f"'{value}' is not a dotted class path", fix)
        module, _, name = value.rpartition(".")
        try:
            found = getattr(importlib.import_module(module), name, None)
        except ImportError as exc:
            raise Invalid(f"cannot import '{module}' ({exc})", fix) from None
        if not isinstance(found, type):
            raise Invalid(f"'{module}' has no class '{name}'", fix)
        return value


class Alerts(StrictModel):
    """Who is told, of which triggers, and the thresholds of two of them.

    ``group_change_percent`` also guards every run, with or without anyone to tell: a mirror run whose
    group shrank by more than it stops before removing and asks for approval.
    """

    email: tuple[NonEmptyStr, ...] = ()
    from_email: NonEmptyStr | None = None
    smtp_conn_id: NonEmptyStr = "smtp_default"
    notifiers: tuple[NotifierSpec, ...] = ()
    triggers: tuple[AlertTrigger, ...] = ALERT_TRIGGERS  # type: ignore[assignment]
    approval_waiting_hours: float = Field(default=4.0, gt=0)
    group_change_percent: float = Field(default=50.0, gt=0)

    @field_validator("email", mode="before")
    @classmethod
    def _addresses(cls, value: Any) -> Any:
        addresses = [value] if isinstance(value, str) else value
        if isinstance(addresses, (list, tuple)):
            for address in addresses:
                if isinstance(address, str) and not _EMAIL_RE.match(address.strip()):
                    raise Invalid(
                        f"'{address}' is not an e-mail address", "write addresses as name@example.com"
                    )
        return addresses

    @property
    def targets(self) -> int:
        """How many places an alert goes to (0: the thresholds still guard, nobody is told)."""
        return (1 if self.email else 0) + len(self.notifiers)

    def wants(self, trigger: str) -> bool:
        """Whether ``trigger`` is alerted (and someone would hear it)."""
        return trigger in self.triggers and self.targets > 0
