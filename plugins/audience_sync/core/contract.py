"""The destination contract: what the sync engine needs from an ad platform (core types both sides import).

Every platform module (``meta``, later ``google_ads`` and ``tiktok``) implements :class:`Destination`
without importing Airflow, so the same contract test suite runs against each one and its sandbox. A
destination raises :class:`~audience_sync.core.errors.TransientDestinationError` for what a retry can
fix and :class:`~audience_sync.core.errors.PermanentDestinationError` for what it cannot.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(frozen=True)
class PlatformAudience:
    """An audience as the platform reports it."""

    id: str
    name: str
    created_time: int = 0  # seconds since the epoch; used to pick the oldest of duplicate names
    size: int | None = None
    status: str | None = None


@dataclass(frozen=True)
class UploadSession:
    """One logical upload (all batches of one operation in one run).

    ``session_id`` is derived from the run and the operation, so a retried batch carries the same
    ``session_id`` and ``batch_seq`` as its first attempt and the platform can de-duplicate it.
    """

    session_id: int
    batch_seq: int
    last_batch: bool
    estimated_total: int


@dataclass
class UploadResult:
    """What the platform said about one batch."""

    received: int
    invalid: int = 0
    invalid_rows: list[int] = field(default_factory=list)  # row indexes in the batch the platform rejected


class Destination(abc.ABC):
    """One ad account on one platform."""

    #: platform name as used in campaign files
    platform: ClassVar[str]
    #: most member rows one add/replace request may carry
    max_batch_rows: ClassVar[int]
    #: most member rows one remove request may carry (Meta puts removals in the URL)
    max_remove_rows: ClassVar[int]
    #: below this many members an audience is unlikely to deliver (0: no known minimum)
    min_useful_size: ClassVar[int] = 0

    account: str
    requests_made: int = 0

    def split_removals(
        self, schema: Sequence[str], rows: Sequence[Sequence[str]]
    ) -> list[list[Sequence[str]]]:
        """Cut rows to remove into request-sized chunks (default: ``max_remove_rows`` rows each)."""
        n = self.max_remove_rows
        return [list(rows[i : i + n]) for i in range(0, len(rows), n)]

    @abc.abstractmethod
    def find_audiences(self, name: str) -> list[PlatformAudience]:
        """Every audience of the account with exactly this name, oldest first (all pages)."""

    @abc.abstractmethod
    def get_audience(self, audience_id: str) -> PlatformAudience | None:
        """The audience, or None when it no longer exists on the platform."""

    @abc.abstractmethod
    def create_audience(self, name: str, description: str) -> PlatformAudience:
        """Create a new audience with this name."""

    @abc.abstractmethod
    def add_members(
        self, audience_id: str, schema: Sequence[str], rows: Sequence[Sequence[str]], session: UploadSession
    ) -> UploadResult:
        """Add rows (aligned to ``schema``, already normalised and hashed) to the audience."""

    @abc.abstractmethod
    def remove_members(
        self, audience_id: str, schema: Sequence[str], rows: Sequence[Sequence[str]], session: UploadSession
    ) -> UploadResult:
        """Remove rows; they must carry the same schema and hashes that were added."""

    @abc.abstractmethod
    def replace_members(
        self, audience_id: str, schema: Sequence[str], rows: Sequence[Sequence[str]], session: UploadSession
    ) -> UploadResult:
        """Replace the whole membership; batches of one session together form the new membership."""
