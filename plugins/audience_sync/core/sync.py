"""The sync engine: upsert an audience by segment name and bring its membership to the staged group.

Pure orchestration over a :class:`~audience_sync.core.contract.Destination`'s upload lifecycle and a
:class:`~audience_sync.core.ledger.StateStore`; no Airflow import. A sync first finishes the uploads an
earlier attempt left open (same handles, same batch numbers), then applies the group to the ledger and
sends each operation's work as one upload (:mod:`audience_sync.core.uploads` moves members pending ->
in_progress batch by batch), and looks once at the platform's processing: members become sent / removed
when the platform says it processed them (:func:`poll_processing`, which the wait task keeps calling).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import tenacity

from audience_sync.core.contract import Destination, ProcessingStatus, upload_key
from audience_sync.core.delta import Exclusion, StagedGroup, compare, stage_changes
from audience_sync.core.errors import PermanentDestinationError, TransientDestinationError
from audience_sync.core.ledger import RegistryEntry, StateStore, lease_owner
from audience_sync.core.platforms import GroupShape, get_platform
from audience_sync.core.settings import Settings, settings
from audience_sync.core.uploads import UploadLog, UploadRecord, WorkRow

log = logging.getLogger(__name__)

T = TypeVar("T")

SYNC_MODES = ("mirror", "add_only", "replace")

#: how often a long upload logs the ledger's counts (the ledger itself moves batch by batch)
PROGRESS_EVERY_SECONDS = 10.0

#: ledger rows handled per removal step (the destination cuts them into request-sized chunks)
REMOVE_LEDGER_BATCH = 2_000


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for transient platform errors inside a task (Airflow task retries come on top)."""

    attempts: int = 5
    initial_wait: float = 2.0
    max_wait: float = 120.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RetryPolicy:
        """From the ``AUDIENCE_SYNC_RETRY_*`` settings (:mod:`audience_sync.core.settings`), or ``environ``."""
        s = settings() if environ is None else Settings.from_env(environ)
        return cls(attempts=s.retry_attempts, initial_wait=s.retry_initial_wait, max_wait=s.retry_max_wait)

    def run(self, fn: Callable[[], T], what: str) -> T:
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransientDestinationError),
            wait=tenacity.wait_random_exponential(multiplier=self.initial_wait, max=self.max_wait),
            stop=tenacity.stop_after_attempt(self.attempts),
            reraise=True,
            before_sleep=lambda rs: log.warning(
                "%s: transient error (attempt %s/%s), retrying: %s",
                what,
                rs.attempt_number,
                self.attempts,
                rs.outcome.exception() if rs.outcome else "",
            ),
        )
        return retrying(fn)


@dataclass(frozen=True)
class SyncRequest:
    """Everything one sync task knows about what to do."""

    dag_id: str
    run_id: str
    platform: str
    account: str
    segment_name: str
    schema: tuple[str, ...]
    mode: str = "mirror"
    description: str = ""
    logical_date: dt.datetime | None = None
    exclude_segments: tuple[str, ...] = ()
    #: the Airflow task and try: with dag and run they own the audience's lease (``dag|run|task|try``)
    task_id: str = "sync"
    try_number: int = 1


@dataclass
class SyncOutcome:
    """Counts and facts of one sync, as pushed to XCom and written to the metrics table."""

    audience_id: str
    audience_action: str  # reused | adopted | created | recreated
    counts: dict[str, int]
    requests: int
    notes: list[str] = field(default_factory=list)
    backfill: bool = False
    #: what this run did: added, removed, resent (changed identifiers), unchanged, rejected (by the platform)
    run: dict[str, int] = field(default_factory=dict)
    #: uploads of the audience the platform has not finished processing
    waiting: int = 0
    #: why the platform refused to apply an upload of this run (e.g. ``segment_too_small``); '' if none
    refused: str = ""

    def as_xcom(self) -> dict[str, Any]:
        return {
            **self.counts,
            "run": self.run,
            "waiting_uploads": self.waiting,
            "audience_id": self.audience_id,
            "audience_action": self.audience_action,
            "requests": self.requests,
            "backfill": self.backfill,
            "notes": self.notes,
            "refused": self.refused,
        }


# --------------------------------------------------------------------------- audience
def resolve_audience(
    dest: Destination, store: StateStore, req: SyncRequest, retry: RetryPolicy
) -> tuple[RegistryEntry, str]:
    """Upsert by segment name: registry, else exact name on the platform (oldest wins), else create.

    :return: the registry entry and what happened: reused, adopted, created or recreated.
    """
    entry = store.get_registry(req.platform, dest.account, req.segment_name)
    if entry is not None:
        live = retry.run(lambda: dest.get_audience(entry.audience_id), "read audience")
        if live is not None:
            return entry, "reused"
        created = retry.run(
            lambda: dest.create_audience(req.segment_name, req.description), "create audience"
        )
        note = f"audience {entry.audience_id} was deleted on the platform; re-created as {created.id}"
        log.warning("Segment %s: %s; re-sending the full membership", req.segment_name, note)
        entry = store.replace_audience_id(entry, created.id, "recreated", note)
        UploadLog(store).abandon_all(entry.id, note)
        store.reset_for_new_audience(entry.id)
        return entry, "recreated"

    existing = retry.run(lambda: dest.find_audiences(req.segment_name), "find audience by name")
    if existing:
        chosen = existing[0]
        note = ""
        if len(existing) > 1:
            note = (
                f"{len(existing)} audiences named {req.segment_name!r} on {dest.account}: "
                f"{', '.join(a.id for a in existing)}; adopted the oldest, {chosen.id}"
            )
            log.warning("%s", note)
        entry, inserted = store.register(
            req.platform, dest.account, req.segment_name, chosen.id, "adopted", note
        )
        return entry, "adopted" if inserted else "reused"

    created = retry.run(lambda: dest.create_audience(req.segment_name, req.description), "create audience")
    entry, inserted = store.register(req.platform, dest.account, req.segment_name, created.id, "created")
    if not inserted:
        # Another run registered the name between our lookup and our create: use theirs.
        log.warning(
            "Segment %s was registered concurrently as %s; audience %s created by this run is unused",
            req.segment_name,
            entry.audience_id,
            created.id,
        )
        return entry, "reused"
    return entry, "created"


# ------------------------------------------------------------------------------ sync
def lock_key(req: SyncRequest, account: str) -> str:
    return f"{req.platform}|{account}|{req.segment_name}"


def is_backfill(req: SyncRequest, entry: RegistryEntry | None) -> bool:
    """A run for a logical date older than the newest one synced must not roll the audience back."""
    return bool(
        entry and req.logical_date and entry.last_logical_date and req.logical_date < entry.last_logical_date
    )


def sync_audience(
    dest: Destination,
    store: StateStore,
    req: SyncRequest,
    staged: StagedGroup | Iterable[tuple[str, str, str]],
    *,
    revoked: Iterable[str] = (),
    retry: RetryPolicy | None = None,
    progress: Callable[[dict[str, int]], None] | None = None,
    lock_wait_seconds: float = 600,
    lease_seconds: float = 1800,
) -> SyncOutcome:
    """Upsert the audience and bring it to the staged group; return the counts from the ledger.

    :param staged: the valid, consenting members of the group: a :class:`StagedGroup` (extraction's
        staged folder), or rows ``(member_id, row_hash, payload_json)``.
    :param revoked: member ids that lost consent: removed from the platform in every mode.
    :param lease_seconds: how long the audience lease lasts without a heartbeat; the engine heartbeats
        before platform requests, and stops with :class:`~audience_sync.core.ledger.LeaseLost` once the
        lease is someone else's.
    """
    retry = retry or RetryPolicy.from_env()
    if req.mode not in SYNC_MODES:
        raise ValueError(f"unknown sync mode {req.mode!r}; use one of {', '.join(SYNC_MODES)}")
    owner = lease_owner(req.dag_id, req.run_id, req.task_id, req.try_number)
    key_lock = lock_key(req, dest.account)
    store.acquire_lock(key_lock, owner, lease_seconds=lease_seconds, wait_seconds=lock_wait_seconds)
    try:
        group = staged if isinstance(staged, StagedGroup) else StagedGroup(staged)
        return _sync_locked(dest, store, req, group, list(revoked), retry, progress, key_lock, owner)
    finally:
        store.release_lock(key_lock, owner)


def _sync_locked(
    dest: Destination,
    store: StateStore,
    req: SyncRequest,
    staged: StagedGroup,
    revoked: list[str],
    retry: RetryPolicy,
    progress: Callable[[dict[str, int]], None] | None,
    key_lock: str,
    owner: str,
) -> SyncOutcome:
    requests_before = dest.requests_made
    entry, action = resolve_audience(dest, store, req, retry)
    notes: list[str] = []
    if action != "reused":
        notes.append(f"audience {action}: {entry.audience_id}")
    uploader = _Uploader(
        dest, store, entry, req, retry, progress, lambda: store.refresh_lock(key_lock, owner)
    )
    # An earlier attempt (a retry, or a run that died) may have left uploads open: finish them first,
    # with their own work and handles, before this run's group changes what is pending.
    resumed = uploader.resume_open()
    if resumed:
        notes.append(f"resumed {resumed} open upload(s) of an earlier attempt")

    mode = req.mode
    backfill = is_backfill(req, entry)
    if backfill:
        assert entry.last_logical_date is not None  # noqa: S101 - implied by is_backfill
        note = (
            f"backfill: logical date {req.logical_date:%Y-%m-%d} is older than the newest synced "
            f"({entry.last_logical_date:%Y-%m-%d}); adds only, of members new to the audience"
        )
        log.warning("%s", note)
        notes.append(note)
        mode = "add_only"

    # only what changes in the ledger is staged: a rerun that changes little writes little
    changes = stage_changes(
        store,
        entry.id,
        staged,
        mode=mode,
        backfill=backfill,
        exclude=Exclusion(req.platform, dest.account, req.exclude_segments),
        dag_id=req.dag_id,
        run_id=req.run_id,
        lease=(key_lock, owner),
    )
    before = changes.comparison
    group, excluded = before.group, before.excluded
    try:
        if excluded:
            notes.append(f"{excluded} member(s) excluded: already in {', '.join(req.exclude_segments)}")
        store.apply_stage(entry.id, changes.key, req.run_id, mode=mode, backfill=backfill)
        if revoked and mode != "replace":
            n = store.queue_removals(entry.id, revoked, req.run_id)
            if n:
                notes.append(f"{n} member(s) without consent queued for removal")
    finally:
        store.drop_stage(changes.key)

    for op in ("replace",) if mode == "replace" else ("remove", "add"):
        uploader.run(op)
    refusals: list[Refusal] = []
    waiting = poll_processing(dest, store, entry, retry, refusals=refusals)
    for refusal in refusals:
        notes.append(refusal.note(dest.platform))
        uploader.discount(refusal)  # what did not reach the platform
    if waiting:
        notes.append(
            f"{waiting} upload(s) still being processed by {dest.platform}; members stay in progress"
        )
    uploader.report(final=True)
    if req.logical_date and not backfill:
        store.set_last_logical_date(entry.id, req.logical_date)
    counts = store.ledger_counts(entry.id)
    counts["total"] = group
    counts["excluded"] = excluded
    run = uploader.run_counts(unchanged=group - (before.new if backfill else before.adds))
    return SyncOutcome(
        audience_id=entry.audience_id,
        audience_action=action,
        counts=counts,
        requests=dest.requests_made - requests_before,
        notes=notes,
        backfill=backfill,
        run=run,
        waiting=waiting,
        refused=refusals[0].status.refused if refusals else "",
    )


@dataclass(frozen=True)
class Refusal:
    """An upload (or part of one) the platform refused to apply, and how many of its members that left
    off the platform (failed adds, removals still owed)."""

    upload: UploadRecord
    status: ProcessingStatus
    undone: int

    def note(self, platform: str) -> str:
        """For the run's notes (and the metrics row): what was refused, and when only a part of the
        upload was, how many members that left off the platform."""
        what = self.status.detail or self.status.refused
        if not self.status.keys_applied:
            return what
        if self.upload.op == "remove":
            return f"{what}; {self.undone} member(s) of the remove upload stay to be removed (a refused part holds them)"
        return (
            f"{what}; {self.undone} member(s) of the {self.upload.op} upload have only refused identifiers: "
            f"failed, not on {platform}"
        )


def poll_processing(
    dest: Destination,
    store: StateStore,
    entry: RegistryEntry,
    retry: RetryPolicy | None = None,
    *,
    refusals: list[Refusal] | None = None,
) -> int:
    """Ask the platform about every finished upload of the audience; settle the processed ones. On a
    platform with :attr:`~Destination.serial_uploads`, then hand over the next upload waiting for its turn.

    :param refusals: collects each upload the platform refused to apply, all of it or a part
        (:attr:`ProcessingStatus.refused`), so the caller reports it as the run's outcome.

    :return: how many uploads are not processed yet (being processed, or waiting for their turn).
    """
    retry = retry or RetryPolicy.from_env()
    log_ = UploadLog(store)
    processing = _settle(dest, log_, entry, retry, refusals)
    if not dest.serial_uploads:
        return processing
    queued = _queued(log_, entry)
    if queued and not processing:
        rec = queued.pop(0)
        log.info(
            "handing over %s upload %s: the audience's earlier uploads are processed", rec.op, rec.handle
        )
        retry.run(lambda: dest.finish_upload(rec.upload(), rec.batches), f"finish {rec.op} upload")
        log_.finish(rec, rec.run_id)
        processing = 1
    return processing + len(queued)


def _settle(
    dest: Destination,
    log_: UploadLog,
    entry: RegistryEntry,
    retry: RetryPolicy,
    refusals: list[Refusal] | None = None,
) -> int:
    """Settle the audience's finished uploads the platform has processed; how many it is still processing."""
    waiting = 0
    for rec in log_.in_state(entry.id, "finished"):
        status = retry.run(lambda r=rec: dest.upload_status(r.upload()), "read upload status")
        if status.done:
            undone = log_.processed(rec, status)
            if status.failed or status.refused:
                log.warning(
                    "%s upload %s %s on the platform: %s; %d member(s) of it not applied",
                    rec.op,
                    rec.handle,
                    "failed" if status.failed else "was partly refused",
                    status.detail,
                    undone,
                )
            if status.refused and refusals is not None:
                refusals.append(Refusal(rec, status, undone))
        else:
            waiting += 1
            log.info("%s upload %s: %s", rec.op, rec.handle, status.detail or "processing")
    return waiting


def _queued(log_: UploadLog, entry: RegistryEntry) -> list[UploadRecord]:
    """Open uploads whose every batch went out (their last batch was sent), oldest first: on a platform
    with serial uploads, those waiting for their turn to be handed over."""
    return [r for r in log_.in_state(entry.id, "open") if r.closed and r.handle is not None]


# ------------------------------------------------------------------------------ plan
def plan_sync(
    dest: Destination,
    store: StateStore,
    req: SyncRequest,
    staged: StagedGroup | Iterable[tuple[str, str, str]],
    *,
    revoked: Iterable[str] = (),
    retry: RetryPolicy | None = None,
) -> dict[str, Any]:
    """What :func:`sync_audience` would do, without sending or recording anything (read-only on the platform).

    The group is compared with the ledger in Arrow (:mod:`audience_sync.core.delta`): nothing is written
    to the state database, and memory stays bounded however large the group.
    """
    retry = retry or RetryPolicy.from_env()
    entry = store.get_registry(req.platform, dest.account, req.segment_name)
    audience: dict[str, Any]
    if entry is not None:
        live = retry.run(lambda: dest.get_audience(entry.audience_id), "read audience")
        audience = (
            {"id": entry.audience_id, "action": "reuse"}
            if live
            else {"id": None, "action": "would re-create (deleted on the platform) and re-send everyone"}
        )
    else:
        found = retry.run(lambda: dest.find_audiences(req.segment_name), "find audience by name")
        audience = (
            {
                "id": found[0].id,
                "action": "adopt" + (f" (oldest of {len(found)} with this name)" if len(found) > 1 else ""),
            }
            if found
            else {"id": None, "action": "would create"}
        )
    backfill = is_backfill(req, entry)
    mode = "add_only" if backfill else req.mode
    known = entry.id if entry is not None and audience["id"] else None
    spec = get_platform(req.platform)
    c = compare(
        store,
        known,
        staged if isinstance(staged, StagedGroup) else StagedGroup(staged),
        removals=mode in ("mirror", "replace"),
        revoked=list(revoked) if mode != "replace" else (),
        exclude=Exclusion(req.platform, dest.account, req.exclude_segments),
        identifiers=req.schema if spec.count_identifiers else (),
        ledger_id=entry.id if entry is not None else None,
    )
    group, excluded = c.group, c.excluded
    adds, removes, unchanged, changed = c.adds, c.removes, c.unchanged, c.changed
    if known is None:  # a new (or re-created) audience gets everyone
        adds, removes, unchanged, changed = group, 0, 0, 0
    elif mode == "replace":
        adds, unchanged = group, 0
    elif backfill:  # a backfill adds members new to the audience only
        adds, removes, changed, unchanged = c.new, 0, 0, group - c.new
    counted = {k: c.identifiers[k] for k in req.schema} if spec.count_identifiers else {}
    return {
        "platform": req.platform,
        "account": dest.account,
        "segment_name": req.segment_name,
        "mode": mode,
        "backfill": backfill,
        "audience": audience,
        "group": group,
        "excluded_by_segments": excluded,
        "adds": adds,
        "changed": changed,
        "removes": removes,
        "unchanged": unchanged,
        # with count_identifiers, the group's members holding each identifier (TikTok's audiences per type)
        **({"identifiers": counted} if spec.count_identifiers else {}),
        # the platform's own: its useful minimum and warnings (Meta: names it may flag; TikTok: too small)
        "warnings": spec.plan_warnings(req.segment_name, group, GroupShape(mode, counted)),
    }


def format_plan(plan: Mapping[str, Any]) -> str:
    aud = plan["audience"]
    text = (
        f"{plan['platform']} {plan['account']} segment {plan['segment_name']} ({plan['mode']}): audience "
        f"{aud['id'] or '-'} [{aud['action']}]; group {plan['group']}, adds {plan['adds']} "
        f"(changed {plan['changed']}), removes {plan['removes']}, unchanged {plan['unchanged']}, "
        f"invalid {plan.get('invalid', 0)}, excluded: no consent {plan.get('excluded_no_consent', 0)}, "
        f"by segments {plan['excluded_by_segments']}"
    )
    if plan.get("identifiers"):
        text += "; members per identifier: " + ", ".join(f"{k} {n}" for k, n in plan["identifiers"].items())
    for w in plan["warnings"]:
        text += f"\n  warning: {w}"
    return text


class _Uploader:
    """Send ledger work through the destination's upload lifecycle, moving statuses batch by batch."""

    def __init__(
        self,
        dest: Destination,
        store: StateStore,
        entry: RegistryEntry,
        req: SyncRequest,
        retry: RetryPolicy,
        progress: Callable[[dict[str, int]], None] | None,
        heartbeat: Callable[[], None] = lambda: None,
    ) -> None:
        self.dest, self.store, self.entry, self.req, self.retry = dest, store, entry, req, retry
        self.log = UploadLog(store)
        self.progress = progress
        self.heartbeat = heartbeat
        self._last_report = time.monotonic()
        self.accepted: dict[str, int] = {"add": 0, "remove": 0, "replace": 0, "restated": 0}
        self._by_upload: dict[int, tuple[int, int]] = {}  # upload id -> (accepted, restated) this run

    # ------------------------------------------------------------------ uploads
    def resume_open(self) -> int:
        """Finish every upload an earlier attempt left open: unanswered batches again (same numbers),
        then the rest of its work."""
        open_ = self.log.in_state(self.entry.id, "open")
        for rec in open_:
            if rec.handle is None:  # died between recording the upload and opening it on the platform
                rec = self._open_on_platform(rec)
            log.warning("resuming %s upload %s of run %s", rec.op, rec.handle, rec.run_id)
            in_flight = self.log.in_flight(rec)
            more = self.log.count_work(self.entry.id, rec.op) > 0
            for i, (seq, rows) in enumerate(in_flight):
                self._send(rec, seq, rows, last=not more and i == len(in_flight) - 1)
            self._send_work(self.log.get(rec.id))
        return len(open_)

    def run(self, op: str) -> None:
        """One upload carrying all of this run's work for ``op`` (none when there is nothing to do,
        except that a replace of an empty group still empties the audience)."""
        total = self.log.count_work(self.entry.id, op)
        if not total and op != "replace":
            return
        upload_id = self.log.create(self.entry.id, self.entry.audience_id, op, self.req.run_id, total)
        self._send_work(self._open_on_platform(self.log.get(upload_id)))

    def _open_on_platform(self, rec: UploadRecord) -> UploadRecord:
        key = upload_key(self.req.dag_id, rec.run_id, rec.registry_id, rec.op, rec.id)
        self.heartbeat()
        upload = self.retry.run(
            lambda: self.dest.open_upload(
                rec.audience_id, rec.op, key=key, estimated_total=rec.estimated_total
            ),
            f"open {rec.op} upload",
        )
        return self.log.set_handle(rec.id, upload.handle)

    def _send_work(self, rec: UploadRecord) -> None:
        """Send the work waiting for the upload's operation as batches ``rec.batches + 1 ...``, then finish."""
        seq = rec.batches
        sent_any = False
        for rows, last in _lookahead(self._batches(rec.op)):
            seq += 1
            sent_any = True
            self._send(rec, seq, rows, last=last)
        if rec.op == "replace" and not sent_any and rec.batches == 0:
            self._send(rec, 1, [], last=True)  # an empty group: the replace empties the audience
        self._finish(self.log.get(rec.id))

    def _batches(self, op: str) -> Iterator[list[WorkRow]]:
        """Request-sized, one-schema batches of the op's work; members the platform rejected earlier
        without naming them go first, in batches small enough for it to name every reject."""
        rid = self.entry.id
        small = max(1, self.dest.max_named_rejects)
        if op == "remove":
            # the last chunk of a ledger page is usually short: carry it into the next page (per schema)
            # instead of sending it, so the number of removal requests does not depend on the page size
            carry: dict[tuple[str, ...], list[WorkRow]] = {}
            page_rows = max(REMOVE_LEDGER_BATCH, self.dest.max_remove_rows)
            for page in self.log.iter_work(rid, op, page_rows):
                for rows in _one_schema(page, "remove"):
                    schema = tuple(rows[0].sent_payload or {})
                    *full, rest = self._removal_chunks(schema, carry.pop(schema, []) + rows)
                    yield from full
                    carry[schema] = rest
            for schema, rows in carry.items():
                yield from self._removal_chunks(schema, rows)
            return
        for retrying, size in ((True, small), (False, self.dest.max_batch_rows)):
            for page in self.log.iter_work(rid, op, size, retrying=retrying):
                yield from _one_schema(page, op)

    def _removal_chunks(self, schema: Sequence[str], rows: list[WorkRow]) -> list[list[WorkRow]]:
        """The destination's request-sized removal chunks of ``rows`` (which share ``schema``)."""
        values = [list((r.sent_payload or {}).values()) for r in rows]
        chunks, start = [], 0
        for chunk in self.dest.split_removals(list(schema), values):
            chunks.append(rows[start : start + len(chunk)])  # chunks come back in order: map by position
            start += len(chunk)
        return chunks

    def _send(self, rec: UploadRecord, seq: int, rows: list[WorkRow], *, last: bool) -> None:
        ids = [r.member_id for r in rows]
        self.heartbeat()  # a run that lost its lease stops here, before its next request
        self.log.claim(rec, seq, ids, self.req.run_id)
        values = [r.sent_payload if rec.op == "remove" else r.payload for r in rows]
        schema = list(values[0]) if values and values[0] else list(self.req.schema)
        data = [list(v.values()) for v in values if v is not None]
        upload = rec.upload()
        try:
            result = self.retry.run(
                lambda: self.dest.send_batch(upload, seq, schema, data, last=last), f"{rec.op} batch {seq}"
            )
        except PermanentDestinationError as exc:
            self.log.fail_batch(rec, ids, str(exc.code or "error"))
            raise
        # TransientDestinationError (retries exhausted) propagates: the batch stays in flight and the
        # next attempt re-sends it with the same upload handle and number
        named = sorted({ids[i] for i in result.invalid_rows if 0 <= i < len(ids)})
        unnamed = max(0, result.invalid - len(named))
        rejected = set(named)
        unattributed = [m for m in ids if m not in rejected] if unnamed else []
        if named or unattributed:
            log.warning(
                "%s batch %s: the platform rejected %d row(s), named %d%s",
                rec.op,
                seq,
                result.invalid,
                len(named),
                f"; {len(unattributed)} member(s) of the batch are re-sent next run in small batches"
                if unattributed
                else "",
            )
        accepted = [m for m in ids if m not in rejected and not unattributed]
        # in a removal upload, members waiting to be added again carry their old (changed) hashes
        took = set(accepted)
        restated = [r.member_id for r in rows if rec.op == "remove" and r.op == "add" and r.member_id in took]
        self.log.confirm(
            rec,
            seq,
            accepted=accepted,
            named_rejects=named,
            unattributed=unattributed,
            restated=restated,
            received=result.received,
            invalid=result.invalid,
            last=last,
            receipt=result.receipt,
        )
        self.accepted[rec.op] += len(accepted) - len(restated)
        self.accepted["restated"] += len(restated)
        took_before, restated_before = self._by_upload.get(rec.id, (0, 0))
        self._by_upload[rec.id] = (
            took_before + len(accepted) - len(restated),
            restated_before + len(restated),
        )
        self.report()

    def _finish(self, rec: UploadRecord) -> None:
        if rec.confirmed_seq and not rec.closed:
            # an earlier attempt's last batch failed, or it died before sending one: the platform still
            # waits for the upload's end, so close it with an empty last batch
            self._send(rec, rec.batches + 1, [], last=True)
            rec = self.log.get(rec.id)
        self.heartbeat()
        if self.dest.serial_uploads and rec.confirmed_seq and self._turn_taken(rec):
            log.info(
                "%s upload %s waits for the audience's earlier uploads to be processed; the wait task "
                "hands it over",
                rec.op,
                rec.handle,
            )
            return
        self.retry.run(lambda: self.dest.finish_upload(rec.upload(), rec.batches), f"finish {rec.op} upload")
        rec = self.log.finish(rec, self.req.run_id)
        if self.dest.processes_synchronously or rec.confirmed_seq == 0:  # nothing reached the platform
            self.log.processed(rec, ProcessingStatus(done=True, detail="applied as accepted"))

    def _turn_taken(self, rec: UploadRecord) -> bool:
        """Whether an earlier upload of the audience is still processed or waiting (serial platforms)."""
        if _settle(self.dest, self.log, self.entry, self.retry):
            return True
        return any(r.id < rec.id for r in _queued(self.log, self.entry))

    # ------------------------------------------------------------------ reporting
    def discount(self, refusal: Refusal) -> None:
        """The platform refused the upload, or a part of it: what this run sent through it that did not
        happen (all of it, or the members the refused part alone carried) is not counted as done."""
        rec = refusal.upload
        took, restated = self._by_upload.pop(rec.id, (0, 0))
        if refusal.status.keys_applied:  # partly applied: the members it did not apply
            took, restated = min(took, refusal.undone), 0
        self.accepted[rec.op] -= took
        self.accepted["restated"] -= restated

    def run_counts(self, unchanged: int) -> dict[str, int]:
        """What this run did, beside the ledger's snapshot."""
        restated = self.accepted["restated"]
        return {
            "added": max(0, self.accepted["add"] + self.accepted["replace"] - restated),
            "resent": restated,
            "removed": self.accepted["remove"],
            "unchanged": max(0, unchanged),
            "rejected": self.log.run_rejected(self.entry.id, self.req.run_id),
        }

    def report(self, final: bool = False) -> None:
        """After each batch: now and then, report the ledger's counts."""
        now = time.monotonic()
        if self.progress and (final or now - self._last_report >= PROGRESS_EVERY_SECONDS):
            self._last_report = now
            self.progress(self.store.ledger_counts(self.entry.id))


def _lookahead(batches: Iterable[list[WorkRow]]) -> Iterator[tuple[list[WorkRow], bool]]:
    it = iter(batches)
    prev = next(it, None)
    while prev is not None:
        cur = next(it, None)
        yield prev, cur is None
        prev = cur


def _one_schema(rows: Sequence[WorkRow], op: str) -> Iterator[list[WorkRow]]:
    """Split rows into runs that share one schema (a batch carries one schema)."""
    groups: dict[tuple[str, ...], list[WorkRow]] = {}
    for r in rows:
        values = r.sent_payload if op == "remove" else r.payload
        groups.setdefault(tuple(values or ()), []).append(r)
    yield from groups.values()
