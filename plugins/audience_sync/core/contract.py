"""The destination contract: the upload lifecycle every ad platform implements (types both sides import).

An upload is one operation (add, remove or replace) on one audience, in the platform's own terms: a
Meta upload session, a Google Customer Match job, a TikTok audience file. Its life is always

    open_upload -> send_batch (1..n, numbered) -> finish_upload -> upload_status (until done)

The engine (:mod:`audience_sync.core.sync`) stores every upload's platform *handle* in the state
database before the first batch goes out, so a retried or re-run task resumes the same upload with the
same batch numbers instead of starting another, and the platform de-duplicates a re-sent batch. Members
of a finished upload stay ``in_progress`` until :meth:`Destination.upload_status` says the platform has
processed them; a platform that applies batches as it accepts them sets
:attr:`Destination.processes_synchronously` and its members go straight to ``sent``.

Every platform module implements :class:`Destination` without importing Airflow, so the same contract
test suite runs against each one and its sandbox. A destination raises
:class:`~audience_sync.core.errors.TransientDestinationError` for what a retry can fix and
:class:`~audience_sync.core.errors.PermanentDestinationError` for what it cannot.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

#: the operations an upload can carry
UPLOAD_OPS = ("add", "remove", "replace")

Row = TypeVar("Row")


def pack(rows: Sequence[Row], weights: Sequence[int], budget: int, max_rows: int) -> list[list[Row]]:
    """Cut ``rows`` in order into chunks of at most ``max_rows`` rows whose ``weights`` (one per row: bytes,
    identifiers...) add up to at most ``budget``; a row heavier than the budget goes alone."""
    chunks: list[list[Row]] = []
    cur: list[Row] = []
    used = 0
    for row, weight in zip(rows, weights, strict=True):
        if cur and (used + weight > budget or len(cur) >= max_rows):
            chunks.append(cur)
            cur, used = [], 0
        cur.append(row)
        used += weight
    if cur:
        chunks.append(cur)
    return chunks


def upload_key(dag_id: str, run_id: str, audience: object, op: str, upload: object) -> str:
    """The key the engine opens an upload with (:meth:`Destination.open_upload`): unique and stable per
    upload, and naming the Airflow run that created it (see :func:`key_run`)."""
    return f"{dag_id}|{run_id}|{audience}|{op}|{upload}"


def key_run(key: str) -> str | None:
    """The run id in a key made by :func:`upload_key` (a destination that writes per run, the file drop,
    reads it); None for a key of another shape. A DAG id has no ``|``, a run id might."""
    parts = key.split("|")
    return "|".join(parts[1:-3]) if len(parts) >= 5 else None


@dataclass(frozen=True)
class PlatformAudience:
    """An audience as the platform reports it."""

    id: str
    name: str
    created_time: int = 0  # seconds since the epoch; used to pick the oldest of duplicate names
    #: the members the platform counts in the audience (Meta: approximate count, Google: list size,
    #: TikTok: cover count, file drop: rows), None until the platform has counted
    size: int | None = None
    status: str | None = None
    #: percent of the uploaded identifiers the platform matched to its users, where it reports one
    #: (Google Ads); None elsewhere
    match_rate: int | None = None


@dataclass(frozen=True)
class Upload:
    """One upload: one operation on one audience, and the platform's handle for it.

    ``handle`` is what the platform knows the upload by (Meta's session id, a Google job resource name,
    a TikTok file id); the engine stores it and hands the same object back to resume the upload.
    """

    audience_id: str
    op: str
    handle: str
    estimated_total: int = 0
    #: ``(batch number, receipt)`` of the batches the engine recorded, in batch order (see
    #: :attr:`UploadResult.receipt`): how a platform that needs every request of an upload to report its
    #: status (Data Manager) finds them in a process that did not send them
    receipts: tuple[tuple[int, str], ...] = ()


@dataclass
class UploadResult:
    """What the platform said about one batch."""

    received: int
    invalid: int = 0
    invalid_rows: list[int] = field(default_factory=list)  # row indexes in the batch the platform named
    #: what the platform needs later about this batch (Data Manager: its request ids), kept by the engine
    #: with the upload and handed back in :attr:`Upload.receipts`; empty when there is nothing to keep
    receipt: str = ""


@dataclass(frozen=True)
class ProcessingStatus:
    """The platform's processing state of a finished upload."""

    done: bool
    #: the platform gave up on the upload (expired, failed): its members are not on the platform
    failed: bool = False
    #: rows the platform rejected while processing, when it says (beyond what batch answers said)
    invalid: int = 0
    #: percent processed, when the platform says
    progress: int | None = None
    detail: str = ""
    #: the platform refused to apply the upload, or with ``keys_applied`` a part of it, for a reason no
    #: retry fixes, as a short code (TikTok: ``segment_too_small``); the engine reports it as the run's
    #: outcome instead of an error
    refused: str = ""
    #: with ``refused``, when the platform applies an upload in parts by payload key (TikTok: one audience
    #: per identifier type): per key the upload touched, whether its part was applied. A member the upload
    #: added is sent when it holds a value under an applied key (it reached the platform), else failed with
    #: ``refused``; a member it removed is removed unless it holds a value under a refused key (then it
    #: waits to be removed again). Empty: all of the upload was refused (``failed``) or applied.
    keys_applied: Mapping[str, bool] = field(default_factory=dict)


class Destination(abc.ABC):
    """One ad account on one platform."""

    #: platform name as used in campaign files
    platform: ClassVar[str]
    #: most member rows one add/replace batch may carry
    max_batch_rows: ClassVar[int]
    #: most member rows one remove batch may carry (Meta's default puts removals in the URL); a
    #: destination may set it per instance (Meta: by how its connection sends removals)
    max_remove_rows: int
    #: True when the platform has applied a batch once it accepted it (no processing to wait for)
    processes_synchronously: ClassVar[bool] = False
    #: True when the platform processes one upload of an audience at a time (Google Ads: one running
    #: OfflineUserDataJob per list, for 10 minutes to 24 hours). The engine then hands an upload over
    #: (:meth:`finish_upload`) only once the audience's earlier uploads are processed; until then the
    #: upload stays open with every batch sent, and the wait task hands it over when its turn comes.
    serial_uploads: ClassVar[bool] = False
    #: at most this many rejected rows are named per batch answer; batches this small name every reject
    max_named_rejects: ClassVar[int] = 10

    account: str
    requests_made: int = 0

    def split_removals(
        self, schema: Sequence[str], rows: Sequence[Sequence[str]]
    ) -> list[list[Sequence[str]]]:
        """Cut rows to remove into request-sized chunks (default: ``max_remove_rows`` rows each)."""
        n = self.max_remove_rows
        return [list(rows[i : i + n]) for i in range(0, len(rows), n)]

    # ------------------------------------------------------------------ audiences
    @abc.abstractmethod
    def find_audiences(self, name: str) -> list[PlatformAudience]:
        """Every audience of the account with exactly this name, oldest first (all pages)."""

    @abc.abstractmethod
    def get_audience(self, audience_id: str) -> PlatformAudience | None:
        """The audience, or None when it no longer exists on the platform."""

    @abc.abstractmethod
    def create_audience(self, name: str, description: str) -> PlatformAudience:
        """Create a new audience with this name."""

    # ------------------------------------------------------------------ the upload lifecycle
    @abc.abstractmethod
    def open_upload(self, audience_id: str, op: str, *, key: str, estimated_total: int) -> Upload:
        """Start one upload of ``op`` (see :data:`UPLOAD_OPS`) on the audience.

        :param key: unique and stable for this upload; a platform that lets the client choose the handle
            (Meta's session id) derives it from the key, so opening twice with one key is harmless.
        """

    @abc.abstractmethod
    def send_batch(
        self, upload: Upload, seq: int, schema: Sequence[str], rows: Sequence[Sequence[str]], *, last: bool
    ) -> UploadResult:
        """Send batch ``seq`` (1, 2, ...) of rows aligned to ``schema`` (normalised, hashed where hashed).

        Sending the same ``seq`` of the same upload again (a retry after a lost answer) must not count
        twice on the platform. ``last`` marks the final batch; for removals the rows must carry the same
        schema and hashes that were added.
        """

    def finish_upload(self, upload: Upload, batches: int) -> None:  # noqa: B027 - optional step
        """No more batches: hand the upload over for processing (Meta: the last batch's flag did it)."""

    @abc.abstractmethod
    def upload_status(self, upload: Upload) -> ProcessingStatus:
        """Where the platform is with processing a finished upload."""
