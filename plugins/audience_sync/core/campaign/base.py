"""What the campaign modules share: the validation error with its fix, the model base, cross-field rules.

The cross-field rules are checked on the model and again on the raw YAML, so a file reports them even
when other fields fail.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints

from audience_sync.core.campaign.paths import display_path, resolve_path

#: ``field`` used for problems with the file itself (unreadable, YAML syntax, not a mapping).
FILE_FIELD = "(file)"
#: ``field`` used for problems with the file name (it becomes the DAG id).
FILE_NAME_FIELD = "(file name)"
_SOURCE_FIX = (
    "give exactly one of 'list: <.csv or .parquet file>' (an existing audience list) or "
    "'sql: <.sql file or inline query>' together with 'conn_id: <Airflow connection>' (a new audience group)"
)


class Invalid(ValueError):
    """A validation problem carrying its fix; ``at`` is a location relative to the validated object."""

    def __init__(self, message: str, fix: str = "", at: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.at = at


Loc = tuple[str | int, ...]
Problem = tuple[Loc, str, str]  # (location, message, fix)
NonEmptyStr = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class StrictModel(BaseModel):
    """Base: unknown keys rejected, immutable, surrounding whitespace of strings stripped."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


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


def did_you_mean(value: str, options: Iterable[str]) -> str:
    """Return ``"did you mean 'x'? "`` or an empty string."""
    match = _closest(value, options)
    return f"did you mean '{match}'? " if match else ""


def is_sql_file_ref(text: str) -> bool:
    """True when ``sql`` names a file (one line ending in ``.sql``) rather than an inline query."""
    return "\n" not in text and text.lower().endswith(".sql")


def check_file(value: str, suffixes: tuple[str, ...], what: str) -> Path:
    """Resolve a referenced file, check its suffix and that it exists; return the resolved path."""
    if not value.lower().endswith(suffixes):
        raise Invalid(
            f"'{value}' is not a {' or '.join(suffixes)} file",
            f"point {what} to a file ending in {' or '.join(suffixes)}",
        )
    path = resolve_path(value)
    if not path.is_file():
        where = "" if value == display_path(path) else f" (looked for {display_path(path)})"
        raise Invalid(
            f"file '{value}' does not exist{where}",
            "create the file or correct the path; relative paths are relative to the project root",
        )
    return path


def source_problems(has_list: bool, has_sql: bool, has_conn: bool) -> list[Problem]:
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


def duration_problems(start: date | None, end: date | None) -> list[Problem]:
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


def exclusion_problems(segment_name: Any, excluded: Any) -> list[Problem]:
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
