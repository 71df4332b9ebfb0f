"""The delivery window rule (core/delivery.py) on fixed clocks: cut-off, midnight, both DST changes."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from audience_sync.core.delivery import delivery_window

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
UTC = dt.UTC


def at(tz: ZoneInfo, *args: int, fold: int = 0) -> dt.datetime:
    return dt.datetime(*args, tzinfo=tz, fold=fold)


def utc(w: dt.datetime) -> dt.datetime:
    return w.astimezone(UTC)


@pytest.mark.parametrize(
    ("released", "day", "available_by"),
    [
        # Monday 18:59 is before the cut-off: that day's window, usable by Tuesday 01:00
        (at(PARIS, 2026, 6, 1, 18, 59, 59), dt.date(2026, 6, 1), at(PARIS, 2026, 6, 2, 1, 0)),
        # at the cut-off itself it is too late: Tuesday's window, usable by Wednesday 01:00
        (at(PARIS, 2026, 6, 1, 19, 0), dt.date(2026, 6, 2), at(PARIS, 2026, 6, 3, 1, 0)),
        (at(PARIS, 2026, 6, 1, 23, 59), dt.date(2026, 6, 2), at(PARIS, 2026, 6, 3, 1, 0)),
        # across midnight: 00:30 on Tuesday is before Tuesday's cut-off, the same window as 23:59 Monday
        (at(PARIS, 2026, 6, 2, 0, 30), dt.date(2026, 6, 2), at(PARIS, 2026, 6, 3, 1, 0)),
        # a release given in UTC is read in the campaign's zone: 17:30 UTC is 19:30 in Paris (summer)
        (dt.datetime(2026, 6, 1, 17, 30, tzinfo=UTC), dt.date(2026, 6, 2), at(PARIS, 2026, 6, 3, 1, 0)),
        # New Year's Eve after the cut-off: the next year's first window
        (at(PARIS, 2026, 12, 31, 20, 0), dt.date(2027, 1, 1), at(PARIS, 2027, 1, 2, 1, 0)),
    ],
)
def test_the_cut_off_decides_the_window_and_its_promise(
    released: dt.datetime, day: dt.date, available_by: dt.datetime
) -> None:
    w = delivery_window(released, PARIS)
    assert w.day == day
    assert utc(w.available_by) == utc(available_by)
    assert utc(w.cutoff) == utc(at(PARIS, day.year, day.month, day.day, 19, 0))


def test_a_promise_later_in_the_day_than_the_cut_off_is_the_same_day() -> None:
    w = delivery_window(at(NEW_YORK, 2026, 6, 1, 9, 0), NEW_YORK, dt.time(12, 0), dt.time(18, 0))
    assert (w.day, utc(w.available_by)) == (dt.date(2026, 6, 1), utc(at(NEW_YORK, 2026, 6, 1, 18, 0)))
    w = delivery_window(at(NEW_YORK, 2026, 6, 1, 12, 0, 1), NEW_YORK, dt.time(12, 0), dt.time(18, 0))
    assert (w.day, utc(w.available_by)) == (dt.date(2026, 6, 2), utc(at(NEW_YORK, 2026, 6, 2, 18, 0)))


def test_a_promise_at_the_cut_off_time_is_the_next_day() -> None:
    w = delivery_window(at(PARIS, 2026, 6, 1, 10, 0), PARIS, dt.time(19, 0), dt.time(19, 0))
    assert utc(w.available_by) == utc(at(PARIS, 2026, 6, 2, 19, 0))


def test_spring_forward_a_promise_at_a_skipped_time_moves_forward_by_the_gap() -> None:
    # Paris, 29 March 2026: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that night
    w = delivery_window(at(PARIS, 2026, 3, 28, 18, 0), PARIS, dt.time(19, 0), dt.time(2, 30))
    assert utc(w.available_by) == dt.datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # = 03:30 CEST
    assert (w.available_by.hour, w.available_by.minute) == (3, 30)
    # the window of that day is 23 hours long, and the default promise (01:00) still exists
    w = delivery_window(at(PARIS, 2026, 3, 28, 19, 30), PARIS)
    assert w.day == dt.date(2026, 3, 29)
    assert utc(w.available_by) == dt.datetime(2026, 3, 29, 23, 0, tzinfo=UTC)  # 30 March 01:00 CEST


def test_fall_back_a_repeated_time_means_its_first_occurrence() -> None:
    # New York, 1 November 2026: 02:00 EDT falls back to 01:00 EST; 01:00-02:00 happens twice
    w = delivery_window(at(NEW_YORK, 2026, 10, 31, 18, 0), NEW_YORK, dt.time(19, 0), dt.time(1, 30))
    assert utc(w.available_by) == dt.datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # 01:30 EDT, the first
    # a cut-off in the repeated hour: a release in its second pass (EST) is after the first pass's
    # cut-off, so it belongs to the next day, though its wall time reads earlier than the cut-off
    first = at(NEW_YORK, 2026, 11, 1, 1, 20, fold=0)  # 05:20 UTC
    second = at(NEW_YORK, 2026, 11, 1, 1, 20, fold=1)  # 06:20 UTC
    assert delivery_window(first, NEW_YORK, dt.time(1, 45), dt.time(1, 50)).day == dt.date(2026, 11, 1)
    assert delivery_window(second, NEW_YORK, dt.time(1, 45), dt.time(1, 50)).day == dt.date(2026, 11, 2)


def test_missed_is_at_or_past_the_promise_in_any_zone() -> None:
    w = delivery_window(at(PARIS, 2026, 6, 1, 12, 0), PARIS)
    promise = utc(w.available_by)
    assert not w.missed(promise - dt.timedelta(seconds=1))
    assert w.missed(promise) and w.missed(promise.astimezone(NEW_YORK) + dt.timedelta(minutes=1))
    assert "2026-06-02 01:00 CEST" in w.describe()


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        delivery_window(dt.datetime(2026, 6, 1, 12, 0), PARIS)
    with pytest.raises(ValueError, match="aware"):
        delivery_window(at(PARIS, 2026, 6, 1, 12, 0), PARIS).missed(dt.datetime(2026, 6, 2))
