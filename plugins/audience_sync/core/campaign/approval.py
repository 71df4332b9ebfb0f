"""The ``approval:`` block of a campaign file: a code-review approval of one campaign version.

Whether it applies (its version is the campaign's computed one) is decided in
:mod:`audience_sync.core.approval`; here only its shape is checked.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time
from typing import Any

from pydantic import field_validator

from audience_sync.core.campaign.base import Invalid, NonEmptyStr, StrictModel

_VERSION_RE = re.compile(r"[0-9a-f]{64}")
_VERSION_FIX = (
    "copy the version printed by 'audience-sync version <campaign file stem>' (64 hexadecimal characters)"
)


class CampaignApproval(StrictModel):
    """``approval: {approved_by, approved_at, version}``: who approved which version, and when."""

    approved_by: NonEmptyStr
    approved_at: datetime
    version: str

    @field_validator("approved_at", mode="before")
    @classmethod
    def _as_datetime(cls, value: Any) -> Any:
        """A date means midnight UTC; a date-time without a zone is UTC."""
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if isinstance(value, date):
            return datetime.combine(value, time(), tzinfo=UTC)
        if isinstance(value, str):
            try:
                return cls._as_datetime(datetime.fromisoformat(value.strip()))
            except ValueError:
                pass
        raise Invalid(
            f"'{value}' is not a date or date-time",
            "write when it was approved as YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ",
        )

    @field_validator("version", mode="before")
    @classmethod
    def _check_version(cls, value: Any) -> Any:
        text = str(value).strip().lower() if isinstance(value, str) else None
        if text is None or not _VERSION_RE.fullmatch(text):
            raise Invalid(f"'{value}' is not a campaign version", _VERSION_FIX)
        return text
