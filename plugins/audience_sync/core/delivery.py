"""The delivery window: which day's promise a run's release belongs to, and its ``available_by`` deadline.

The rule (the README states it for users, the tests hold it with fixed clocks):

- A run is *released* when it may send: when its approval arrived, or, for a version approved before,
  when its sync starts. audience-sync never holds data back: it sends at once.
- The release belongs to the window of day ``W`` in the campaign's time zone: the release's own date
  if its local time is before the cut-off, else the next date. Each day's window so runs from the
  previous day's cut-off to its own.
- Window ``W`` promises the data is usable on the platform by ``available_by`` after its cut-off: on
  ``W`` itself when ``available_by`` is later in the day than the cut-off, else on the next day. With
  the defaults (19:00, 01:00): approved on Monday 18:59, usable by Tuesday 01:00; approved at 19:00,
  usable by Wednesday 01:00.
- Local times a clock change skips are read with the offset before the change (so 02:30 on a spring-
  forward night is 03:30 summer time); repeated ones mean their first occurrence (PEP 495 ``fold=0``).

Pure: no Airflow, no I/O. Times are aware datetimes; a naive one is refused.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

#: the defaults of a campaign's ``delivery`` section
DEFAULT_CUTOFF = dt.time(19, 0)
DEFAULT_AVAILABLE_BY = dt.time(1, 0)


@dataclass(frozen=True)
class DeliveryWindow:
    """The window a release belongs to.

    :param day: the window's day, in the campaign's time zone.
    :param cutoff: the window's end (the cut-off on ``day``), aware, in the campaign's time zone.
    :param available_by: the promise: the data is usable on the platform by then (aware).
    """

    day: dt.date
    cutoff: dt.datetime
    available_by: dt.datetime

    def missed(self, now: dt.datetime) -> bool:
        """Whether ``now`` is at or past the promise."""
        return _instant(now, "now") >= _instant(self.available_by, "available_by")

    def describe(self) -> str:
        """One line for logs, alerts and the approver: the window's day and its promise."""
        return (
            f"delivery window of {self.day.isoformat()} (cut-off {self.cutoff:%H:%M %Z}): usable on the "
            f"platform by {self.available_by:%Y-%m-%d %H:%M %Z}"
        )


def local_at(day: dt.date, at: dt.time, tz: ZoneInfo) -> dt.datetime:
    """``day`` at local time ``at`` in ``tz`` (a skipped time keeps the earlier offset; ``fold=0``)."""
    wall = dt.datetime.combine(day, at.replace(tzinfo=None, fold=0), tzinfo=tz)
    return wall.astimezone(dt.UTC).astimezone(tz)  # normalised: a skipped 02:30 reads 03:30


def delivery_window(
    released_at: dt.datetime,
    tz: ZoneInfo,
    cutoff: dt.time = DEFAULT_CUTOFF,
    available_by: dt.time = DEFAULT_AVAILABLE_BY,
) -> DeliveryWindow:
    """The window of a release at ``released_at`` (see the module's rule)."""
    instant = _instant(released_at, "released_at")
    day = instant.astimezone(tz).date()
    # instants, not wall times: Python compares datetimes of one zone by their wall time, and around a
    # clock change one wall time can be two instants
    if instant >= local_at(day, cutoff, tz).astimezone(dt.UTC):
        day += dt.timedelta(days=1)
    promise_day = day if available_by > cutoff else day + dt.timedelta(days=1)
    return DeliveryWindow(
        day=day, cutoff=local_at(day, cutoff, tz), available_by=local_at(promise_day, available_by, tz)
    )


def _instant(value: dt.datetime, what: str) -> dt.datetime:
    """``value`` in UTC; a naive datetime is refused (its zone would be a guess)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be an aware datetime, got {value!r}")
    return value.astimezone(dt.UTC)
