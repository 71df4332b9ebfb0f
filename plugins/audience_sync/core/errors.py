"""Exception hierarchy shared by the core, the destinations and the Airflow layer."""

from __future__ import annotations


class AudienceSyncError(Exception):
    """Base class of every error this package raises on purpose."""


class CampaignError(AudienceSyncError):
    """A campaign file is invalid. Names the file, the field and the fix."""

    def __init__(self, path: str, field: str, message: str, fix: str = "") -> None:
        self.path = path
        self.field = field
        self.message = message
        self.fix = fix
        text = f"{path}: field '{field}': {message}"
        if fix:
            text += f" Fix: {fix}"
        super().__init__(text)


class CampaignErrors(AudienceSyncError):
    """Several problems in one campaign file, reported together."""

    def __init__(self, path: str, errors: list[CampaignError]) -> None:
        self.path = path
        self.errors = errors
        lines = "\n".join(f"  - {e}" for e in errors)
        super().__init__(f"{path}: {len(errors)} problem(s)\n{lines}")


class DestinationError(AudienceSyncError):
    """A platform call failed.

    :param code: the platform's error code (e.g. Meta's ``error.code``), when known.
    :param subcode: the platform's error subcode, when known.
    """

    def __init__(self, message: str, *, code: int | None = None, subcode: int | None = None) -> None:
        self.code = code
        self.subcode = subcode
        super().__init__(message)


class TransientDestinationError(DestinationError):
    """Worth retrying with backoff: rate limits, busy audience, 5xx, dropped connections."""


class PermanentDestinationError(DestinationError):
    """Retrying cannot help: bad token, missing permission, terms not accepted, flagged audience."""
