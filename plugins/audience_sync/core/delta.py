"""The staged group against the ledger, in Arrow, one slice of member ids at a time (bounded memory).

A group of millions is never loaded into the state database to be compared with the ledger: the
staged files (split by the first hex digit of the member id, see ``extract.py``) and the ledger rows
of the same member-id range are read into Arrow and joined there, slice by slice, so memory follows
the slice, not the group. :func:`compare` answers what a sync would do (the dry-run plan);
:func:`stage_changes` stages only what a sync must change in the ledger.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import sqlalchemy as sa

from audience_sync.core.extract import PARTS, staged_parts, staged_schema
from audience_sync.core.keys import payload_json
from audience_sync.core.ledger import LEAVING, StateStore, ledger, registry

#: members (staged + ledger) compared at once, at most about
SLICE_ROWS = 1_000_000

#: staged rows turned into Python values at once
ROWS_PER_BATCH = 50_000

#: ledger rows fetched per database round trip
FETCH_ROWS = 100_000

_IDS = pa.schema([("member_id", pa.string()), ("row_hash", pa.string())])


class StagedGroup:
    """(member_id, row_hash) of one platform's staged group, sliced by member-id prefix.

    :param source: a staged folder (or single file) written by extraction, a list of them (one per
        extraction partition: their members are disjoint), or rows ``(member_id, row_hash, payload)``
        (tests, small groups).
    :param filesystem: where the staged folders are (default: the local filesystem).
    """

    def __init__(
        self,
        source: str | PurePath | Sequence[str | PurePath] | Iterable[tuple[str, str, str]],
        filesystem: pafs.FileSystem | None = None,
    ) -> None:
        self.parts: dict[str, list[PurePath]] = {}
        self.table: pa.Table | None = None
        self.schema: list[str] = []  # the platform keys of staged files (rows carry a payload instead)
        self.filesystem = filesystem
        if isinstance(source, str | PurePath):
            source = [source]
        if isinstance(source, list | tuple) and source and isinstance(source[0], str | PurePath):
            for folder in source:
                for part in staged_parts(folder, filesystem):
                    self.parts.setdefault(part.stem, []).append(part)
            self.size = sum(
                pq.ParquetFile(str(p), filesystem=filesystem).metadata.num_rows
                for files in self.parts.values()
                for p in files
            )
            self.schema = staged_schema(source[0], filesystem)
        else:
            columns: tuple[list[str], list[str], list[str]] = ([], [], [])
            for row in source:
                for column, value in zip(columns, row, strict=True):
                    column.append(value)
            self.table = pa.table(list(columns), schema=_IDS.append(pa.field("payload", pa.string())))
            self.size = self.table.num_rows

    def slice(self, prefix: str, *, full: bool = False) -> pa.Table:
        """The members whose id starts with ``prefix`` (``""``: all): ids and row hashes, and with
        ``full`` what :meth:`payloads` needs too."""
        if self.table is not None:
            table = self.table if full else self.table.select(["member_id", "row_hash"])
            return _starting(table, prefix)
        if prefix and set(self.parts) == set(PARTS):
            files = self.parts[prefix[0]]
        else:  # every part, or a single file staged by an older version
            files = [f for fs in self.parts.values() for f in fs]
        columns = None if full else ["member_id", "row_hash"]
        tables = [pq.read_table(str(f), columns=columns, filesystem=self.filesystem) for f in files]
        return _starting(pa.concat_tables(tables) if tables else _IDS.empty_table(), prefix)

    def payloads(self, table: pa.Table) -> list[str]:
        """The ledger payload (schema key -> value as staged) of each row of a full slice."""
        if self.table is not None:
            return [str(p) for p in table["payload"].to_pylist()]
        columns = [table[name].to_pylist() for name in self.schema]
        return [payload_json(self.schema, [v or "" for v in values]) for values in zip(*columns, strict=True)]


@dataclass
class Comparison:
    """What applying the group to an audience would do.

    ``adds``: members to send (new, changed, or not confirmed with these hashes); ``new``: unknown to
    the ledger; ``changed``: confirmed on the platform with other hashes; ``removes``: members the
    platform may hold that left the group, or withdrew consent; ``excluded``: staged members held by
    an excluded segment's audience (left out of the group).
    """

    group: int = 0
    new: int = 0
    unchanged: int = 0
    changed: int = 0
    removes: int = 0
    excluded: int = 0

    @property
    def adds(self) -> int:
        return self.group - self.unchanged


@dataclass(frozen=True)
class Exclusion:
    """Members currently in these segments' audiences (same platform and account) are left out."""

    platform: str
    account: str
    segments: Sequence[str]


def compare(
    store: StateStore,
    registry_id: int | None,
    staged: StagedGroup,
    *,
    removals: bool,
    revoked: Sequence[str] = (),
    exclude: Exclusion | None = None,
) -> Comparison:
    """Compare the staged group with the ledger of one audience (``None``: an audience not yet known).

    :param removals: count members that left the group (mirror and replace modes).
    :param revoked: member ids without consent: counted as removals when the platform may hold them.
    """
    out = Comparison()
    revoked_ids = pa.array(sorted(set(revoked)), pa.string())
    for _prefix, group, known, joined in _slices(store, registry_id, staged, exclude, out):
        if known is None or joined is None:
            out.new += group.num_rows
            continue
        may_hold = pc.or_(pc.is_in(known["status"], pa.array(["sent", "in_progress"])), known["has_sent"])
        leaving = pc.is_in(known["member_id"], _starting_ids(revoked_ids, _prefix))
        if removals:
            leaving = pc.or_(leaving, pc.invert(pc.is_in(known["member_id"], group["member_id"])))
        out.removes += _count(pc.and_(may_hold, leaving))
    return out


@dataclass
class Changes:
    """A stage holding only what changes in an audience's ledger (see :func:`stage_changes`)."""

    key: str
    comparison: Comparison


def stage_changes(
    store: StateStore,
    registry_id: int,
    staged: StagedGroup,
    *,
    mode: str,
    backfill: bool,
    exclude: Exclusion | None,
    dag_id: str,
    run_id: str,
    lease: tuple[str, str] | None,
) -> Changes:
    """Stage the members whose ledger rows change, for ``StateStore.apply_stage``.

    Rows go to the stage only when the ledger has to change for them: members new to it, members
    whose hashes changed or that are not on (or on their way to) the platform, every member for a
    replace, new members only for a backfill; in mirror mode, the members that left the group, marked
    with :data:`~audience_sync.core.ledger.LEAVING`. A rerun that changes little stages little.
    """
    out = Comparison()
    requeue = ("pending", "failed", "removed")

    def rows() -> Iterator[tuple[str, str, str]]:
        for _prefix, group, known, joined in _slices(store, registry_id, staged, exclude, out):
            if known is None or joined is None:  # only for an audience not registered yet
                continue
            new = pc.is_null(joined["status"])
            if backfill:
                pick = new
            elif mode == "replace":
                pick = pa.array([True] * joined.num_rows, pa.bool_())
            else:
                moved = pc.or_(
                    pc.fill_null(pc.is_in(joined["status"], pa.array(requeue)), False),
                    pc.fill_null(pc.equal(joined["op"], "remove"), False),
                )
                pick = pc.or_(pc.or_(new, moved), pc.invert(_same_hash(joined)))
            wanted = joined.filter(pick)["member_id"]
            if len(wanted):  # only now the staged values: a rerun that changes nothing never reads them
                full = staged.slice(_prefix, full=True)
                chosen_rows = full.filter(pc.is_in(full["member_id"], wanted))
                for batch in chosen_rows.to_batches(ROWS_PER_BATCH):  # Python values a batch at a time
                    chosen = pa.Table.from_batches([batch])
                    yield from zip(
                        chosen["member_id"].to_pylist(),
                        chosen["row_hash"].to_pylist(),
                        staged.payloads(chosen),
                        strict=True,
                    )
            if mode == "mirror" and not backfill:
                gone = pc.and_(
                    pc.invert(pc.is_in(known["member_id"], group["member_id"])),
                    pc.not_equal(known["status"], "removed"),
                )
                for member_id in known.filter(gone)["member_id"].to_pylist():
                    yield member_id, LEAVING, ""

    key = store.stage_members(rows(), dag_id=dag_id, run_id=run_id, lease=lease)
    return Changes(key, out)


def _slices(
    store: StateStore,
    registry_id: int | None,
    staged: StagedGroup,
    exclude: Exclusion | None,
    out: Comparison,
) -> Iterator[tuple[str, pa.Table, pa.Table | None, pa.Table | None]]:
    """Per member-id slice: the group (less excluded members), the audience's ledger rows and the two
    joined; counts group, excluded, new, unchanged and changed into ``out`` on the way."""
    total = staged.size + (_ledger_size(store, registry_id) if registry_id is not None else 0)
    for prefix in _prefixes(total):
        group = staged.slice(prefix)
        if exclude is not None and exclude.segments:
            holders = _holders(store, exclude, prefix)
            kept = group.filter(pc.invert(pc.is_in(group["member_id"], holders)))
            out.excluded += group.num_rows - kept.num_rows
            group = kept
        out.group += group.num_rows
        if registry_id is None:
            yield prefix, group, None, None
            continue
        known = _ledger_slice(store, registry_id, prefix)
        joined = group.join(known, "member_id", join_type="left outer", right_suffix="_ledger")
        status, same_hash = joined["status"], _same_hash(joined)
        out.new += _count(pc.is_null(status))
        out.unchanged += _count(pc.and_(pc.fill_null(pc.equal(status, "sent"), False), same_hash))
        out.changed += _count(pc.and_(pc.fill_null(joined["has_sent"], False), pc.invert(same_hash)))
        yield prefix, group, known, joined


def _same_hash(joined: pa.Table) -> pa.ChunkedArray:
    """Per joined row: the ledger holds the staged row hash (False for members new to it)."""
    return pc.fill_null(pc.equal(joined["row_hash"], joined["row_hash_ledger"]), False)


# ------------------------------------------------------------------------------------------ reading
def _prefixes(total: int) -> list[str]:
    """Member-id prefixes splitting ``total`` members into slices of about :data:`SLICE_ROWS`."""
    if total <= SLICE_ROWS:
        return [""]
    length = math.ceil(math.log(total / SLICE_ROWS, len(PARTS)))
    prefixes = [""]
    for _ in range(length):
        prefixes = [p + h for p in prefixes for h in PARTS]
    return prefixes


def _in_slice(column: sa.ColumnElement[str], prefix: str) -> list[sa.ColumnElement[bool]]:
    """``column`` starts with ``prefix``, as a range the primary-key index serves."""
    if not prefix:
        return []
    after = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return [column >= prefix, column < after]


def _ledger_size(store: StateStore, registry_id: int) -> int:
    with store.engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(ledger).where(ledger.c.registry_id == registry_id)
            ).scalar_one()
        )


def _ledger_slice(store: StateStore, registry_id: int, prefix: str) -> pa.Table:
    """member_id, row_hash, status and whether hashes were sent, of one audience's ledger slice."""
    q = sa.select(
        ledger.c.member_id,
        ledger.c.row_hash,
        ledger.c.status,
        ledger.c.sent_payload.is_not(None).label("has_sent"),
        ledger.c.op,
    ).where(ledger.c.registry_id == registry_id, *_in_slice(ledger.c.member_id, prefix))
    columns = _fetch_columns(store, q, 5)
    return pa.table(
        {
            "member_id": pa.array(columns[0], pa.string()),
            "row_hash": pa.array(columns[1], pa.string()),  # row_hash_ledger once joined
            "status": pa.array(columns[2], pa.string()),
            "has_sent": pa.array([bool(v) for v in columns[3]], pa.bool_()),
            "op": pa.array(columns[4], pa.string()),
        }
    )


def _fetch_columns(store: StateStore, query: sa.Select[Any], width: int) -> list[list[Any]]:
    """The query's rows as columns, fetched on the driver's own cursor.

    SQLAlchemy builds a Row object per row; for a slice of a million ledger rows that costs several
    seconds, the plain cursor a fraction of it. Only plain columns are selected here (no type that
    converts values), so nothing is lost by skipping SQLAlchemy's result processing.
    """
    columns: list[list[Any]] = [[] for _ in range(width)]
    with store.engine.connect() as conn:
        compiled = query.compile(dialect=conn.dialect)
        params = compiled.params
        args = tuple(params[k] for k in compiled.positiontup or ()) if compiled.positional else params
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(str(compiled), args)
            while rows := cursor.fetchmany(FETCH_ROWS):
                for column, values in zip(columns, zip(*rows, strict=True), strict=True):
                    column.extend(values)
        finally:
            cursor.close()
    return columns


def _holders(store: StateStore, exclude: Exclusion, prefix: str) -> pa.Array:
    """Member ids on the platform (or on their way) in the excluded segments' audiences."""
    q = (
        sa.select(ledger.c.member_id)
        .join(registry, registry.c.id == ledger.c.registry_id)
        .where(
            registry.c.platform == exclude.platform,
            registry.c.account == exclude.account,
            registry.c.segment_name.in_(list(exclude.segments)),
            ledger.c.status.in_(("sent", "in_progress")),
            *_in_slice(ledger.c.member_id, prefix),
        )
    )
    with store.engine.connect() as conn:
        return pa.array(list(conn.execute(q).scalars()), pa.string())


def _starting(table: pa.Table, prefix: str) -> pa.Table:
    return table.filter(pc.starts_with(table["member_id"], prefix)) if prefix else table


def _starting_ids(ids: pa.Array, prefix: str) -> pa.Array:
    return ids.filter(pc.starts_with(ids, prefix)) if prefix else ids


def _count(mask: pa.ChunkedArray | pa.Array) -> int:
    return int(pc.sum(pc.cast(mask, pa.int64())).as_py() or 0)
