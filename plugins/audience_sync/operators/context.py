"""The date a run stands for, including Airflow 3 manual runs that have no logical date."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any


def run_date(context: Mapping[str, Any]) -> dt.datetime | None:
    """The run's logical date; for a run without one, its data interval end, else its ``run_after``.

    Airflow 3 lets a manual run have no logical date (the REST default, ``dag.test(logical_date=None)``):
    its context then has no ``logical_date`` nor data interval keys, only the ``dag_run`` with
    ``run_after``. Such a run still needs a date for the backfill guard (an older run never rolls an
    audience back) and for its metrics row. The result is aware and in UTC.
    """
    value = context.get("logical_date")
    if value is None:
        dag_run = context.get("dag_run")
        value = context.get("data_interval_end") or getattr(dag_run, "data_interval_end", None)
        value = value or getattr(dag_run, "run_after", None)
    if value is None:
        return None
    if value.tzinfo is None:  # Airflow hands out aware datetimes; a naive one would be UTC by convention
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)
