"""The sync engine: upsert an audience by segment name and bring its membership to the staged group.

Pure orchestration over a :class:`~audience_sync.core.contract.Destination` and a
:class:`~audience_sync.core.ledger.StateStore`; no Airflow import. The ledger moves every member
pending -> in_progress -> sent | failed (and sent -> removed) batch by batch, so a task killed
mid-upload resumes from the first unconfirmed batch when it is retried.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import tenacity

from audience_sync.core.contract import Destination, UploadSession
from audience_sync.core.errors import PermanentDestinationError, TransientDestinationError
from audience_sync.core.ledger import PendingRow, RegistryEntry, StateStore, utcnow

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
        """Defaults, overridden by ``AUDIENCE_SYNC_RETRY_ATTEMPTS`` / ``_INITIAL_WAIT`` / ``_MAX_WAIT`` (seconds)."""
        env = os.environ if environ is None else environ
        d = cls()
        try:
            return cls(
                attempts=max(1, int(env.get("AUDIENCE_SYNC_RETRY_ATTEMPTS", d.attempts))),
                initial_wait=float(env.get("AUDIENCE_SYNC_RETRY_INITIAL_WAIT", d.initial_wait)),
                max_wait=float(env.get("AUDIENCE_SYNC_RETRY_MAX_WAIT", d.max_wait)),
            )
        except ValueError as exc:
            raise ValueError(f"invalid AUDIENCE_SYNC_RETRY_* setting: {exc}") from None

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


@dataclass
class SyncOutcome:
    """Counts and facts of one sync, as pushed to XCom and written to the metrics table."""

    audience_id: str
    audience_action: str  # reused | adopted | created | recreated
    counts: dict[str, int]
    requests: int
    notes: list[str] = field(default_factory=list)
    backfill: bool = False

    def as_xcom(self) -> dict[str, Any]:
        return {
            **self.counts,
            "audience_id": self.audience_id,
            "audience_action": self.audience_action,
            "requests": self.requests,
            "backfill": self.backfill,
            "notes": self.notes,
        }


def session_id_for(*parts: object) -> int:
    """A stable positive int64 session id for one upload (same inputs -> same id)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF or 1


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
    staged: Iterable[tuple[str, str, str]],
    *,
    revoked: Iterable[str] = (),
    retry: RetryPolicy | None = None,
    progress: Callable[[dict[str, int]], None] | None = None,
    lock_wait_seconds: float = 600,
) -> SyncOutcome:
    """Upsert the audience and bring it to the staged group; return the counts from the ledger.

    :param staged: (member_id, row_hash, payload_json) of every valid, consenting member of the group.
    :param revoked: member ids that lost consent: removed from the platform in every mode.
    """
    retry = retry or RetryPolicy.from_env()
    if req.mode not in SYNC_MODES:
        raise ValueError(f"unknown sync mode {req.mode!r}; use one of {', '.join(SYNC_MODES)}")
    owner = f"{req.dag_id}|{req.run_id}"
    key_lock = lock_key(req, dest.account)
    store.acquire_lock(key_lock, owner, wait_seconds=lock_wait_seconds)
    try:
        return _sync_locked(dest, store, req, staged, list(revoked), retry, progress, key_lock, owner)
    finally:
        store.release_lock(key_lock, owner)


def _sync_locked(
    dest: Destination,
    store: StateStore,
    req: SyncRequest,
    staged: Iterable[tuple[str, str, str]],
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

    mode = req.mode
    backfill = is_backfill(req, entry)
    if backfill:
        assert entry.last_logical_date is not None  # noqa: S101 - implied by is_backfill
        note = (
            f"backfill: logical date {req.logical_date:%Y-%m-%d} is older than the newest synced "
            f"({entry.last_logical_date:%Y-%m-%d}); sending adds only, no removals or replace"
        )
        log.warning("%s", note)
        notes.append(note)
        mode = "add_only"

    key = store.stage_members(staged)
    try:
        excluded = store.exclude_from_stage(key, req.platform, dest.account, req.exclude_segments)
        if excluded:
            notes.append(f"{excluded} member(s) excluded: already in {', '.join(req.exclude_segments)}")
        store.apply_stage(entry.id, key, req.run_id, removals=(mode == "mirror"))
        if revoked and mode != "replace":
            n = store.queue_removals(entry.id, revoked, req.run_id)
            if n:
                notes.append(f"{n} member(s) without consent queued for removal")

        engine = _Uploader(
            dest, store, entry, req, retry, progress, lambda: store.refresh_lock(key_lock, owner)
        )
        if mode == "replace":
            engine.replace(key)
        else:
            engine.removals()
            engine.adds()
            engine.report(final=True)
        group = store.stage_size(key)
    finally:
        store.drop_stage(key)
    if req.logical_date and not backfill:
        store.set_last_logical_date(entry.id, req.logical_date)
    counts = store.ledger_counts(entry.id)
    counts["total"] = group
    counts["excluded"] = excluded
    return SyncOutcome(
        audience_id=entry.audience_id,
        audience_action=action,
        counts=counts,
        requests=dest.requests_made - requests_before,
        notes=notes,
        backfill=backfill,
    )


# ------------------------------------------------------------------------------ plan
#: words that may get an audience flagged by Meta as suggesting health or financial status (reference §1.2)
SENSITIVE_TERMS = (
    "health",
    "medical",
    "disease",
    "diabet",
    "cancer",
    "hiv",
    "aids",
    "pregnan",
    "fertility",
    "depress",
    "anxiety",
    "mental",
    "therapy",
    "pharma",
    "drug",
    "addict",
    "alcohol",
    "obes",
    "weight_loss",
    "disab",
    "income",
    "salary",
    "wealth",
    "rich",
    "debt",
    "loan",
    "credit",
    "bankrupt",
    "mortgage",
    "insolven",
    "poverty",
    "welfare",
    "benefit",
)


def plan_warnings(dest: Destination, segment_name: str, group: int) -> list[str]:
    warnings: list[str] = []
    if dest.min_useful_size and group < dest.min_useful_size:
        warnings.append(
            f"group of {group} is below {dest.platform}'s useful minimum (~{dest.min_useful_size} matched "
            "members); the audience may be too small to deliver"
        )
    name = segment_name.lower()
    words = name.replace("-", "_").replace(" ", "_").split("_")
    hits = [t for t in SENSITIVE_TERMS if (t in name if "_" in t else any(w.startswith(t) for w in words))]
    if hits and dest.platform == "meta":
        warnings.append(
            f"segment name {segment_name!r} contains {', '.join(repr(h) for h in hits)}: Meta may flag audiences "
            "whose names suggest health conditions or financial status and then block uploads"
        )
    return warnings


def plan_sync(
    dest: Destination,
    store: StateStore,
    req: SyncRequest,
    staged: Iterable[tuple[str, str, str]],
    *,
    revoked: Iterable[str] = (),
    retry: RetryPolicy | None = None,
) -> dict[str, Any]:
    """What :func:`sync_audience` would do, without sending or recording anything (read-only on the platform)."""
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
    key = store.stage_members(staged)
    try:
        excluded = store.exclude_from_stage(key, req.platform, dest.account, req.exclude_segments)
        group = store.stage_size(key)
        if entry is not None and audience["id"]:
            pc = store.plan_counts(entry.id, key, removals=mode in ("mirror", "replace"))
            revoked_ids = set(revoked)
            on_platform = (
                store.members_on_platform(entry.id, revoked_ids) if revoked_ids and mode != "replace" else 0
            )
            adds, removes, unchanged, changed = (
                pc["adds"],
                pc["removes"] + on_platform,
                pc["unchanged"],
                pc["changed"],
            )
            if mode == "replace":
                adds, unchanged = group, 0
        else:
            adds, removes, unchanged, changed = group, 0, 0, 0
    finally:
        store.drop_stage(key)
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
        "warnings": plan_warnings(dest, req.segment_name, group),
    }


class _Uploader:
    """Send ledger work in batches, moving statuses batch by batch."""

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
        self.progress = progress
        self.heartbeat = heartbeat
        self._last_report = time.monotonic()
        self.started = utcnow().isoformat()

    def _session(self, op: str, work: str | None = None) -> Callable[[bool], UploadSession]:
        """A factory of consecutive batches of one upload session for ``op``.

        :param work: the ledger operation whose pending count estimates the session's total (default ``op``).
        """
        sid = session_id_for(self.req.run_id, self.entry.id, op, self.started)
        total = self.store.count_work(self.entry.id, work or op)
        seq = 0

        def nxt(last: bool) -> UploadSession:
            nonlocal seq
            seq += 1
            return UploadSession(session_id=sid, batch_seq=seq, last_batch=last, estimated_total=total)

        return nxt

    def _send(
        self,
        fn: Callable[..., Any],
        schema: Sequence[str],
        rows: list[list[str]],
        sess: UploadSession,
        what: str,
    ) -> Any:
        return self.retry.run(lambda: fn(self.entry.audience_id, schema, rows, sess), what)

    def _remove(
        self,
        ids: list[str],
        payloads: Sequence[dict[str, str]],
        nxt: Callable[[bool], UploadSession],
        last: bool,
    ) -> None:
        """Remove these payloads in as many requests as the destination needs (all of one session)."""
        parts = [
            (schema, chunk)
            for schema, rows in _by_schema(payloads)
            for chunk in self.dest.split_removals(schema, rows)
        ]
        for i, (schema, chunk) in enumerate(parts):
            sess = nxt(last and i == len(parts) - 1)
            self._guard(
                ids,
                lambda s=schema, c=chunk, ss=sess: self._send(self.dest.remove_members, s, c, ss, "remove"),
            )

    def removals(self) -> None:
        """Remove members that left the group (with the schema and hashes that were added)."""
        rid = self.entry.id
        nxt = self._session("remove")
        for batch, last in _lookahead(self.store.iter_work(rid, "remove", REMOVE_LEDGER_BATCH)):
            ids = [r.member_id for r in batch]
            self.store.mark(rid, ids, "in_progress", self.req.run_id)
            self._remove(ids, [r.sent_payload or r.payload for r in batch], nxt, last)
            self.store.mark(rid, ids, "removed", self.req.run_id, confirm="remove")
            self.report()

    def adds(self) -> None:
        rid = self.entry.id
        nxt = self._session("add")
        restate = self._session("restate", work="add")  # at most every member being added
        for batch, last in _lookahead(self.store.iter_work(rid, "add", self.dest.max_batch_rows)):
            ids = [r.member_id for r in batch]
            self.store.mark(rid, ids, "in_progress", self.req.run_id)
            stale = [r.sent_payload for r in batch if r.sent_payload and r.sent_payload != r.payload]
            if stale:  # identifiers changed: take the old hashes off first
                self._remove(ids, stale, restate, last)
            sess = nxt(last)
            failed: list[str] = []
            for schema, rows, members in _by_schema_with_ids(batch):
                result = self._guard(
                    ids, lambda s=schema, rw=rows: self._send(self.dest.add_members, s, rw, sess, "add")
                )
                failed.extend(members[i] for i in result.invalid_rows if i < len(members))
            rejected = set(failed)
            self.store.mark(
                rid, [m for m in ids if m not in rejected], "sent", self.req.run_id, confirm="add"
            )
            if failed:
                log.warning("%d member(s) rejected by the platform as invalid entries", len(failed))
                self.store.mark(rid, failed, "failed", self.req.run_id, error_code="invalid_entry")
            self.report()

    def replace(self, key: str) -> None:
        """Full refresh: one replace session across batches; afterwards the ledger equals the group."""
        rid = self.entry.id
        total = self.store.stage_size(key)
        sid = session_id_for(self.req.run_id, rid, "replace", self.started)
        batches = (
            _lookahead(self.store.iter_stage(key, self.dest.max_batch_rows)) if total else iter([([], True)])
        )
        for seq, (batch, last) in enumerate(batches, start=1):
            ids = [m for m, _ in batch]
            self.store.mark(rid, ids, "in_progress", self.req.run_id)
            sess = UploadSession(session_id=sid, batch_seq=seq, last_batch=last, estimated_total=total)
            payloads = [p for _, p in batch]
            groups = list(_by_schema(payloads)) or [(list(self.req.schema), [])]
            if len(groups) > 1:
                raise ValueError("replace needs one schema for the whole group")
            schema, rows = groups[0]
            self._guard(
                ids, lambda s=schema, rw=rows: self._send(self.dest.replace_members, s, rw, sess, "replace")
            )
            self.report()
        self.store.finish_replace(rid, key, self.req.run_id)
        self.report(final=True)

    def _guard(self, ids: list[str], call: Callable[[], T]) -> T:
        """Run one platform call; on a permanent error mark the batch failed with the platform's code."""
        try:
            return call()
        except PermanentDestinationError as exc:
            self.store.mark(
                self.entry.id, ids, "failed", self.req.run_id, error_code=str(exc.code or "error")
            )
            raise
        except TransientDestinationError:
            # retries exhausted: leave the batch in_progress; the next attempt re-sends it
            raise

    def report(self, final: bool = False) -> None:
        """After each batch: extend the audience lock; now and then, report the ledger's counts."""
        self.heartbeat()
        now = time.monotonic()
        if self.progress and (final or now - self._last_report >= PROGRESS_EVERY_SECONDS):
            self._last_report = now
            self.progress(self.store.ledger_counts(self.entry.id))


def _lookahead(batches: Iterable[list[PendingRow]]) -> Iterator[tuple[list[PendingRow], bool]]:
    it = iter(batches)
    prev = next(it, None)
    while prev is not None:
        cur = next(it, None)
        yield prev, cur is None
        prev = cur


def _by_schema(payloads: Iterable[dict[str, str]]) -> Iterator[tuple[list[str], list[list[str]]]]:
    groups: dict[tuple[str, ...], list[list[str]]] = {}
    for p in payloads:
        groups.setdefault(tuple(p), []).append(list(p.values()))
    for schema, rows in groups.items():
        yield list(schema), rows


def _by_schema_with_ids(
    batch: Sequence[PendingRow],
) -> Iterator[tuple[list[str], list[list[str]], list[str]]]:
    groups: dict[tuple[str, ...], tuple[list[list[str]], list[str]]] = {}
    for r in batch:
        rows, ids = groups.setdefault(tuple(r.payload), ([], []))
        rows.append(list(r.payload.values()))
        ids.append(r.member_id)
    for schema, (rows, ids) in groups.items():
        yield list(schema), rows, ids
