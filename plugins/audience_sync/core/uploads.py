"""Upload records: every platform upload's handle and progress, and the ledger moves that follow it.

``as_uploads`` (defined in :mod:`~audience_sync.core.ledger` with the other tables) holds one row per upload (one operation on one audience): the platform's handle, the
highest batch the platform confirmed, and its state ``open`` -> ``finished`` -> ``processed`` (or
``failed`` / ``abandoned``). Ledger rows being sent carry ``upload_id`` and ``batch_seq``, so a task
that died mid-upload is resumed with the same handle and the same batch numbers (the platform
de-duplicates them) instead of a second upload.

Ledger moves of one member, by operation:

- add / replace: ``pending`` -> claimed ``in_progress`` -> accepted (``sent_payload`` = what was sent)
  -> ``sent`` once the platform processed the upload; named rejects -> ``failed``.
- remove: ``pending`` -> ``in_progress`` -> ``removed`` once processed.
- restate (identifiers changed): the old hashes ride in a remove upload; once accepted the member is
  plain add work again.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from audience_sync.core.contract import ProcessingStatus, Upload
from audience_sync.core.ledger import (
    PendingRow,
    StateStore,
    has_value,
    ledger,
    ledger_moved,
    upload_receipts,
    uploads,
    utcnow,
)

#: ledger statuses a member is picked up from as work; a run starts by turning earlier failures back into
#: ``pending`` (``StateStore.apply_stage``), so members that fail during a run are not retried in it
_WORK = ("pending",)


@dataclass(frozen=True)
class UploadRecord:
    """One stored upload."""

    id: int
    registry_id: int
    audience_id: str
    op: str
    handle: str | None
    run_id: str
    state: str
    estimated_total: int
    confirmed_seq: int
    batches: int
    closed: bool
    received: int
    invalid: int
    #: ``(batch number, receipt)`` the platform gave for its batches (``UploadResult.receipt``)
    receipts: tuple[tuple[int, str], ...] = ()

    def upload(self) -> Upload:
        if self.handle is None:
            raise RuntimeError(f"upload {self.id} has no platform handle yet")
        return Upload(self.audience_id, self.op, self.handle, self.estimated_total, self.receipts)


def _record(row: Any, receipts: tuple[tuple[int, str], ...] = ()) -> UploadRecord:
    m = row._mapping
    fields = {k: m[k] for k in UploadRecord.__dataclass_fields__ if k != "receipts"}
    return UploadRecord(**fields, receipts=receipts)


def _receipts(conn: Any, upload_ids: Sequence[int]) -> dict[int, tuple[tuple[int, str], ...]]:
    """Upload id -> its batches' receipts in batch order (only uploads that have any)."""
    out: dict[int, list[tuple[int, str]]] = {}
    for i in range(0, len(upload_ids), 900):
        rows = conn.execute(
            sa.select(upload_receipts.c.upload_id, upload_receipts.c.seq, upload_receipts.c.receipt)
            .where(upload_receipts.c.upload_id.in_(upload_ids[i : i + 900]))
            .order_by(upload_receipts.c.upload_id, upload_receipts.c.seq)
        ).all()
        for r in rows:
            out.setdefault(int(r.upload_id), []).append((int(r.seq), str(r.receipt)))
    return {k: tuple(v) for k, v in out.items()}


@dataclass(frozen=True)
class WorkRow(PendingRow):
    """A ledger row waiting to be sent, with the operation it waits for."""

    op: str = "add"


def _pending(store: StateStore, row: Any, value: str) -> WorkRow:
    sent = store.open_payload(row.sent_payload) if row.sent_payload else None
    return WorkRow(row.member_id, store.open_payload(value), sent, row.op)


class UploadLog:
    """Upload records and the ledger moves of their members, on a :class:`StateStore`'s engine."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.engine = store.engine

    # ------------------------------------------------------------------ records
    def get(self, upload_id: int) -> UploadRecord:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(uploads).where(uploads.c.id == upload_id)).one()
            return _record(row, _receipts(conn, [upload_id]).get(upload_id, ()))

    def in_state(self, registry_id: int, *states: str) -> list[UploadRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(uploads)
                .where(uploads.c.registry_id == registry_id, uploads.c.state.in_(states))
                .order_by(uploads.c.id)
            ).all()
            receipts = _receipts(conn, [int(r.id) for r in rows])
        return [_record(r, receipts.get(int(r.id), ())) for r in rows]

    def for_run(self, registry_id: int, run_id: str) -> list[UploadRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(uploads).where(uploads.c.registry_id == registry_id, uploads.c.run_id == run_id)
            ).all()
        return [_record(r) for r in rows]

    def create(self, registry_id: int, audience_id: str, op: str, run_id: str, estimated_total: int) -> int:
        """Record an upload about to be opened (the row id goes into the platform key)."""
        with self.engine.begin() as conn:
            return int(
                conn.execute(
                    uploads.insert().values(
                        registry_id=registry_id,
                        audience_id=audience_id,
                        op=op,
                        run_id=run_id,
                        state="open",
                        estimated_total=estimated_total,
                        confirmed_seq=0,
                        batches=0,
                        closed=False,
                        received=0,
                        invalid=0,
                        created_at=utcnow(),
                    )
                ).inserted_primary_key[0]
            )

    def set_handle(self, upload_id: int, handle: str) -> UploadRecord:
        """Store the platform's handle: from here on a retry resumes this upload, never opens another."""
        with self.engine.begin() as conn:
            conn.execute(uploads.update().where(uploads.c.id == upload_id).values(handle=handle))
        return self.get(upload_id)

    def abandon_all(self, registry_id: int, note: str) -> None:
        """The audience was re-created: its uploads will never be processed into it."""
        with self.engine.begin() as conn:
            conn.execute(
                uploads.update()
                .where(uploads.c.registry_id == registry_id, uploads.c.state.in_(("open", "finished")))
                .values(state="abandoned", detail=note)
            )

    # ------------------------------------------------------------------ work
    def count_work(self, registry_id: int, op: str) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(ledger).where(*_work_filter(registry_id, op))
                ).scalar_one()
            )

    def iter_work(
        self, registry_id: int, op: str, batch_rows: int, *, retrying: bool | None = None
    ) -> Iterator[list[WorkRow]]:
        """Batches of members waiting for ``op``, oldest member id first (keyset pagination).

        Removal work carries the hashes to take off (``sent_payload``): members that left, and members
        whose identifiers changed (their old hashes). ``retrying``: only (True) or never (False) members
        whose earlier send was rejected without the platform naming them.
        """
        value = ledger.c.sent_payload if op == "remove" else ledger.c.payload
        last = ""
        while True:
            q = sa.select(ledger.c.member_id, value.label("value"), ledger.c.sent_payload, ledger.c.op).where(
                *_work_filter(registry_id, op), ledger.c.member_id > last
            )
            if retrying is not None:
                unattributed = ledger.c.last_error_code == UNATTRIBUTED
                q = q.where(
                    unattributed if retrying else sa.or_(~unattributed, ledger.c.last_error_code.is_(None))
                )
            with self.engine.connect() as conn:
                rows = conn.execute(q.order_by(ledger.c.member_id).limit(batch_rows)).all()
            if not rows:
                return
            last = rows[-1].member_id
            yield [_pending(self.store, r, r.value) for r in rows]

    def in_flight(self, rec: UploadRecord) -> list[tuple[int, list[WorkRow]]]:
        """Batches of this upload that were sent (or about to be) but never answered, by batch number."""
        value = ledger.c.sent_payload if rec.op == "remove" else ledger.c.payload
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    ledger.c.member_id,
                    ledger.c.batch_seq,
                    value.label("value"),
                    ledger.c.sent_payload,
                    ledger.c.op,
                )
                .where(
                    ledger.c.registry_id == rec.registry_id,
                    ledger.c.upload_id == rec.id,
                    ledger.c.status == "in_progress",
                    ledger.c.batch_seq > rec.confirmed_seq,
                )
                .order_by(ledger.c.batch_seq, ledger.c.member_id)
            ).all()
        out: dict[int, list[WorkRow]] = {}
        for r in rows:
            out.setdefault(int(r.batch_seq), []).append(_pending(self.store, r, r.value))
        return sorted(out.items())

    # ------------------------------------------------------------------ batch moves
    def claim(self, rec: UploadRecord, seq: int, member_ids: Sequence[str], run_id: str) -> None:
        """Members about to go out in batch ``seq``: ``in_progress`` in this upload."""
        self._mark(
            rec.registry_id,
            member_ids,
            status="in_progress",
            upload_id=rec.id,
            batch_seq=seq,
            last_run_id=run_id,
        )
        with self.engine.begin() as conn:
            conn.execute(
                uploads.update().where(uploads.c.id == rec.id, uploads.c.batches < seq).values(batches=seq)
            )

    def confirm(
        self,
        rec: UploadRecord,
        seq: int,
        *,
        accepted: Sequence[str],
        named_rejects: Sequence[str],
        unattributed: Sequence[str],
        restated: Sequence[str],
        received: int,
        invalid: int,
        last: bool = False,
        receipt: str = "",
    ) -> None:
        """The platform answered batch ``seq``: record what it took, what it rejected, and the batch's
        receipt (what the platform needs later about it, e.g. request ids; kept when non-empty)."""
        rid = rec.registry_id
        with self.engine.begin() as conn:
            if receipt:
                mine = sa.and_(upload_receipts.c.upload_id == rec.id, upload_receipts.c.seq == seq)
                conn.execute(upload_receipts.delete().where(mine))
                conn.execute(upload_receipts.insert().values(upload_id=rec.id, seq=seq, receipt=receipt))
            if rec.op == "remove":
                # old hashes of changed members are off: they are plain add work again
                self._mark(
                    rid,
                    restated,
                    conn=conn,
                    status="pending",
                    sent_payload=None,
                    upload_id=None,
                    batch_seq=None,
                )
            else:
                # from here on the platform may hold these hashes, whatever processing says later
                self._mark(rid, accepted, conn=conn, sent_payload=ledger.c.payload, last_error_code=None)
            if rec.op != "remove":  # unnamed: maybe rejected, maybe taken; the platform may hold them
                self._mark(rid, unattributed, conn=conn, sent_payload=ledger.c.payload)
            for ids, code in ((named_rejects, "invalid_entry"), (unattributed, UNATTRIBUTED)):
                self._mark(
                    rid, ids, conn=conn, status="failed", upload_id=None, batch_seq=None, last_error_code=code
                )
            conn.execute(
                uploads.update()
                .where(uploads.c.id == rec.id)
                .values(
                    confirmed_seq=self._greatest(uploads.c.confirmed_seq, seq),
                    received=uploads.c.received + received,
                    invalid=uploads.c.invalid + invalid,
                    closed=sa.or_(uploads.c.closed, sa.literal(last)),
                )
            )

    def fail_batch(self, rec: UploadRecord, member_ids: Sequence[str], code: str) -> None:
        """A permanent platform error on this batch: the members did not get there."""
        self._mark(
            rec.registry_id, member_ids, status="failed", upload_id=None, batch_seq=None, last_error_code=code
        )

    def finish(self, rec: UploadRecord, run_id: str) -> UploadRecord:
        """No more batches. A replace also takes off everyone who is not in it."""
        now = utcnow()
        with self.engine.begin() as conn:
            ledger_moved(conn, rec.registry_id)
            if rec.op == "replace":
                mine = ledger.c.registry_id == rec.registry_id
                not_in = sa.or_(ledger.c.upload_id.is_(None), ledger.c.upload_id != rec.id)
                may_hold = sa.or_(
                    ledger.c.status.in_(("sent", "in_progress")), ledger.c.sent_payload.is_not(None)
                )
                conn.execute(
                    ledger.update()
                    .where(mine, not_in, ledger.c.status != "removed", may_hold)
                    .values(
                        status="in_progress",
                        op="remove",
                        upload_id=rec.id,
                        batch_seq=0,
                        last_run_id=run_id,
                        updated_at=now,
                    )
                )
                conn.execute(
                    ledger.update()
                    .where(mine, not_in, ledger.c.status != "removed", ~may_hold)
                    .values(
                        status="removed",
                        op=None,
                        upload_id=None,
                        batch_seq=None,
                        last_run_id=run_id,
                        updated_at=now,
                    )
                )
            conn.execute(
                uploads.update().where(uploads.c.id == rec.id).values(state="finished", finished_at=now)
            )
        return self.get(rec.id)

    def processed(self, rec: UploadRecord, status: ProcessingStatus) -> int:
        """The platform is done with the upload: its members are ``sent`` / ``removed`` (or back to work).

        When the platform applied only some keys' parts (:attr:`ProcessingStatus.keys_applied`), each
        member by what it holds: see there. :return: the upload's members the platform did not apply
        (failed, or back to ``pending`` removal).
        """
        now = utcnow()
        mine = sa.and_(
            ledger.c.registry_id == rec.registry_id,
            ledger.c.upload_id == rec.id,
            ledger.c.status == "in_progress",
        )
        adds = ledger.c.op.in_(("add", "replace"))
        removes = ledger.c.op == "remove"
        cleared = {"upload_id": None, "batch_seq": None, "updated_at": now}
        # the platform dropped the upload, or the part these members are in: nothing of it is there, and
        # the next run sends it again
        not_added, not_removed = _not_applied(status)
        undone = 0
        with self.engine.begin() as conn:
            ledger_moved(conn, rec.registry_id)
            code = status.refused or "platform_dropped"
            undone += conn.execute(
                ledger.update()
                .where(mine, adds, not_added)
                .values(status="failed", last_error_code=code, **cleared)
            ).rowcount
            undone += conn.execute(
                ledger.update().where(mine, removes, not_removed).values(status="pending", **cleared)
            ).rowcount
            conn.execute(ledger.update().where(mine, adds).values(status="sent", op=None, **cleared))
            conn.execute(
                ledger.update()
                .where(mine, removes)
                .values(status="removed", op=None, sent_payload=None, **cleared)
            )
            conn.execute(
                uploads.update()
                .where(uploads.c.id == rec.id)
                .values(
                    state="failed" if status.failed else "processed",
                    processed_at=now,
                    detail=status.detail or None,
                    invalid=self._greatest(uploads.c.invalid, status.invalid),
                )
            )
        return undone

    def run_rejected(self, registry_id: int, run_id: str) -> int:
        """Rows the platform rejected in this run's uploads of the audience."""
        return sum(r.invalid for r in self.for_run(registry_id, run_id))

    # ------------------------------------------------------------------ helpers
    def _greatest(self, column: sa.ColumnElement[int], value: int) -> sa.ColumnElement[int]:
        """The larger of a column and a value (SQLite's two-argument ``max``, PostgreSQL's ``greatest``)."""
        fn = sa.func.max if self.store.dialect == "sqlite" else sa.func.greatest
        return fn(column, value)

    def _mark(self, registry_id: int, member_ids: Sequence[str], *, conn: Any = None, **values: Any) -> None:
        if not member_ids:
            return
        values.setdefault("updated_at", utcnow())
        if conn is None:
            with self.engine.begin() as c:
                self._mark(registry_id, member_ids, conn=c, **values)
            return
        ledger_moved(conn, registry_id)
        for i in range(0, len(member_ids), 900):
            conn.execute(
                ledger.update()
                .where(ledger.c.registry_id == registry_id, ledger.c.member_id.in_(member_ids[i : i + 900]))
                .values(**values)
            )


#: ``last_error_code`` of members in a batch where the platform rejected rows without naming them all
UNATTRIBUTED = "unattributed_invalid"


def _not_applied(status: ProcessingStatus) -> tuple[sa.ColumnElement[bool], sa.ColumnElement[bool]]:
    """Which of a processed upload's added and removed members the platform did not apply: none, all
    (``failed``), or by the keys whose part it refused (:attr:`ProcessingStatus.keys_applied`)."""
    if not status.keys_applied:
        return (sa.true(), sa.true()) if status.failed else (sa.false(), sa.false())
    applied = [k for k, ok in status.keys_applied.items() if ok]
    refused = [k for k, ok in status.keys_applied.items() if not ok]
    reached = sa.or_(sa.false(), *(has_value(ledger.c.payload, k) for k in applied))
    kept = sa.or_(sa.false(), *(has_value(ledger.c.sent_payload, k) for k in refused))
    return sa.not_(reached), kept


def _work_filter(registry_id: int, op: str) -> list[sa.ColumnElement[bool]]:
    mine = ledger.c.registry_id == registry_id
    # in_progress without an upload: claimed by code that predates upload records; never answered
    waiting = sa.or_(
        ledger.c.status.in_(_WORK), sa.and_(ledger.c.status == "in_progress", ledger.c.upload_id.is_(None))
    )
    if op == "remove":
        stale = sa.and_(
            ledger.c.op == "add",
            ledger.c.sent_payload.is_not(None),
            ledger.c.sent_payload != ledger.c.payload,
        )
        return [mine, waiting, sa.or_(ledger.c.op == "remove", stale)]
    # adds wait until the old hashes of changed members are off
    fresh = sa.or_(ledger.c.sent_payload.is_(None), ledger.c.sent_payload == ledger.c.payload)
    return [mine, waiting, ledger.c.op == op, fresh]
