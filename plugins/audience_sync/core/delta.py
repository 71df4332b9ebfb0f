"""The staged group against the ledger, in Arrow, one slice of member ids at a time (bounded memory).

A group of millions is never loaded into the state database to be compared with the ledger: the
staged files (split by the first hex digit of the member id, see ``extract.py``) and the ledger rows
of the same member-id range are read into Arrow and joined there, slice by slice, so memory follows
the slice, not the group. :func:`compare` answers what a sync would do (the dry-run plan);
:func:`stage_changes` stages only what a sync must change in the ledger.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePath

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from audience_sync.core.errors import AudienceSyncError
from audience_sync.core.extract import KEPT, PARTS, staged_parts, staged_schema
from audience_sync.core.fingerprints import Reuse, reusable
from audience_sync.core.keys import payload_json
from audience_sync.core.ledger import (
    KEEP_PAYLOAD,
    LEAVING,
    StateStore,
    fetch_columns,
    in_slice,
    ledger,
    registry,
)

#: members (staged + ledger) compared at once, at most about
SLICE_ROWS = 1_000_000

#: staged rows turned into Python values at once
ROWS_PER_BATCH = 50_000

#: at most this many changed rows (hashed rows + ledger rows no reused row matched) for a comparison of
#: the changed rows only; more, and every member is compared slice by slice
CHANGED_ROWS = 200_000

_IDS = pa.schema([("member_id", pa.string()), ("row_hash", pa.string()), ("fingerprint", pa.string())])


class StaleExtraction(AudienceSyncError):
    """Rows extraction took from the ledger (same fingerprint) no longer match it: extract again."""


class StagedGroup:
    """(member_id, row_hash) of one platform's staged group, sliced by member-id prefix.

    :param source: a staged folder (or single file) written by extraction, a list of them (one per
        extraction partition: their members are disjoint), or rows ``(member_id, row_hash, payload)``
        (tests, small groups).
    :param filesystem: where the staged folders are (default: the local filesystem).

    A staged row with a null ``row_hash`` is one extraction found unchanged by its fingerprint
    (``core/fingerprints.py``): it stands for the ledger row with that fingerprint, payload and hash.
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
        #: what extraction recorded of the rows it staged unchanged (one staged folder only)
        self.reuse: Reuse | None = None
        if isinstance(source, str | PurePath):
            source = [source]
        if isinstance(source, list | tuple) and source and isinstance(source[0], str | PurePath):
            for folder in source:
                for part in staged_parts(folder, filesystem):
                    self.parts.setdefault(part.stem[-1], []).append(part)  # "<h>" and "kept-<h>"
            self.size = sum(
                pq.ParquetFile(str(p), filesystem=filesystem).metadata.num_rows
                for files in self.parts.values()
                for p in files
            )
            self.schema = staged_schema(source[0], filesystem)
            # partitions each matched a part of the known fingerprints: their records combined
            self.reuse = Reuse.merge([Reuse.read(folder, filesystem) for folder in source])
        else:
            columns: tuple[list[str], list[str], list[str]] = ([], [], [])
            for row in source:
                for column, value in zip(columns, row, strict=True):
                    column.append(value)
            ids, hashes, payloads = columns
            self.table = pa.table(
                [ids, hashes, [None] * len(ids), payloads],
                schema=_IDS.append(pa.field("payload", pa.string())),
            )
            self.size = self.table.num_rows

    def slice(self, prefix: str, *, full: bool = False, kept: bool = True) -> pa.Table:
        """The members whose id starts with ``prefix`` (``""``: all): ids and row hashes, and with
        ``full`` what :meth:`payloads` needs too; without ``kept``, the hashed rows only (rows staged
        unchanged by fingerprint are in parts of their own, see ``extract._Parts``)."""
        if self.table is not None:
            table = self.table if full else self.table.select(_IDS.names)
            return _starting(table, prefix)
        if prefix and set(self.parts) == set(PARTS):
            files = self.parts[prefix[0]]
        else:  # every part, or a single file staged by an older version
            files = [f for fs in self.parts.values() for f in fs]
        if not kept:
            files = [f for f in files if not f.name.startswith(KEPT)]
        tables = [_read_part(f, full, self.filesystem) for f in files]
        return _starting(pa.concat_tables(tables) if tables else _IDS.empty_table(), prefix)

    def payloads(self, table: pa.Table) -> list[str]:
        """The ledger payload (schema key -> value as staged) of each row of a full slice."""
        if self.table is not None:
            return [str(p) for p in table["payload"].to_pylist()]
        columns = [table[name].to_pylist() for name in self.schema]  # rows with a row hash only
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
        may_hold = pc.or_(_on_platform(known), known["has_sent"])
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

    Rows extraction staged unchanged by fingerprint carry no hash or values: when the ledger must move
    them anyway they are staged with the ledger's own hash and :data:`KEEP_PAYLOAD`. Rows with the
    ledger's hash but another fingerprint (raw values that normalise the same, or new rules) are
    staged with :data:`KEEP_PAYLOAD` too, so the ledger records their fingerprint and nothing else.
    """
    out = Comparison()
    requeue = ("pending", "failed", "removed")

    def rows() -> Iterator[tuple[str, str, str]]:
        # a replace re-sends every member: rows reused by fingerprint are needed one by one
        slices = _slices(store, registry_id, staged, exclude, out, reuse=mode != "replace")
        for _prefix, group, known, joined in slices:
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
                    _removing(joined),
                )
                pick = pc.or_(pc.or_(new, moved), pc.invert(_same_hash(joined)))
            if not backfill:  # same hashes from other raw values (or rules): record their fingerprints
                moved_print = pc.fill_null(
                    pc.not_equal(joined["fingerprint"], joined["fingerprint_ledger"]), True
                )
                refresh = pc.and_(
                    pc.and_(pc.invert(pick), pc.is_valid(joined["row_hash"])),
                    pc.and_(pc.is_valid(joined["fingerprint"]), moved_print),
                )
                fresh = joined.filter(refresh)
                yield from zip(
                    fresh["member_id"].to_pylist(),
                    fresh["row_hash"].to_pylist(),
                    [KEEP_PAYLOAD] * fresh.num_rows,
                    fresh["fingerprint"].to_pylist(),
                    strict=True,
                )
            picked = joined.filter(pick)
            kept = pc.is_null(picked["row_hash"])
            # unchanged raw rows (by fingerprint) the ledger must move anyway: its own hash and payload
            same = picked.filter(kept)
            yield from zip(
                same["member_id"].to_pylist(),
                same["row_hash_ledger"].to_pylist(),
                [KEEP_PAYLOAD] * same.num_rows,
                same["fingerprint"].to_pylist(),
                strict=True,
            )
            wanted = picked.filter(pc.invert(kept))["member_id"]
            if len(wanted):  # only now the staged values: a rerun that changes nothing never reads them
                full = staged.slice(_prefix, full=True, kept=False)  # the wanted rows have hashes
                chosen_rows = full.filter(pc.is_in(full["member_id"], wanted))
                for batch in chosen_rows.to_batches(ROWS_PER_BATCH):  # Python values a batch at a time
                    chosen = pa.Table.from_batches([batch])
                    yield from zip(
                        chosen["member_id"].to_pylist(),
                        chosen["row_hash"].to_pylist(),
                        staged.payloads(chosen),
                        chosen["fingerprint"].to_pylist(),
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
    *,
    reuse: bool = True,
) -> Iterator[tuple[str, pa.Table, pa.Table | None, pa.Table | None]]:
    """Per member-id slice: the group (less excluded members), the audience's ledger rows and the two
    joined; counts group, excluded, new, unchanged and changed into ``out`` on the way.

    With ``reuse`` (and extraction's record, see :func:`_changed_only`) only the changed rows, as one slice.
    """
    changed = _changed_only(store, registry_id, staged, exclude, out) if reuse and registry_id else None
    if changed is not None:
        yield changed
        return
    total = staged.size + (_ledger_size(store, registry_id) if registry_id is not None else 0)
    for prefix in _prefixes(total):
        group = staged.slice(prefix)
        if exclude is not None and exclude.segments:
            holders = _holders(store, exclude, prefix)
            kept = group.filter(pc.invert(pc.is_in(group["member_id"], holders)))
            out.excluded += group.num_rows - kept.num_rows
            group = kept
        out.group += group.num_rows
        if registry_id is None:  # everyone is new (a plan only: a sync always has the audience)
            yield prefix, group, None, None
            continue
        known = _ledger_rows(store, registry_id, *in_slice(ledger.c.member_id, prefix))
        yield prefix, group, known, _joined(group, known, out)


def _joined(group: pa.Table, known: pa.Table, out: Comparison) -> pa.Table:
    """The group's rows joined with their ledger rows; counts new, unchanged and changed into ``out``."""
    joined = group.join(known, "member_id", join_type="left outer", right_suffix="_ledger")
    status, same_hash = joined["status"], _same_hash(joined)
    if _count(pc.and_(pc.is_null(joined["row_hash"]), pc.invert(same_hash))):
        raise _stale()
    out.new += _count(pc.is_null(status))
    out.unchanged += _count(pc.and_(pc.fill_null(pc.equal(status, "sent"), False), same_hash))
    out.changed += _count(pc.and_(pc.fill_null(joined["has_sent"], False), pc.invert(same_hash)))
    return joined


def _changed_only(
    store: StateStore, registry_id: int, staged: StagedGroup, exclude: Exclusion | None, out: Comparison
) -> tuple[str, pa.Table, pa.Table, pa.Table] | None:
    """The comparison as one slice of the changed rows only, when extraction's record allows it.

    Rows staged unchanged by fingerprint stand for ledger rows that need nothing, as long as the ledger
    has not moved since extraction read their fingerprints (the same ledger generation): they are only
    counted. What can change is in the staged rows extraction hashed, and in the ledger rows no reused
    row matched: rows not reusable (pending, failed, leaving...), and reusable ones whose member left
    the group or changed. Those are compared as every slice is, so the result is the same; at a million
    members this reads a few thousand rows instead of every one. None (compare slice by slice) without
    a record of this audience's current generation, with excluded segments (every member is looked
    up), or when too much changed.
    """
    reuse = staged.reuse
    if reuse is None or reuse.registry_id != registry_id or (exclude is not None and exclude.segments):
        return None
    unmatched = reuse.unmatched_hex()
    hashed = staged.size - reuse.reused
    if hashed + len(unmatched) > CHANGED_ROWS or store.ledger_generation(registry_id) != reuse.generation:
        return None
    group = staged.slice("", kept=False)
    known = _changed_ledger_rows(store, registry_id, group["member_id"].to_pylist(), unmatched)
    out.group += group.num_rows + reuse.reused
    out.unchanged += reuse.reused_sent
    return "", group, known, _joined(group, known, out)


def _changed_ledger_rows(
    store: StateStore, registry_id: int, hashed: list[str], unmatched: list[str]
) -> pa.Table:
    """The ledger rows of an audience no row reused by fingerprint stands for: rows not reusable (less
    removed ones, which matter only for members in the group), rows of the hashed members, and reusable
    rows no reused row matched (changed, or left). One query each, on an index but the last: it scans
    the audience's rows, and runs only when some fingerprint was not matched."""
    on_platform = sa.or_(ledger.c.status == "sent", ledger.c.status == "in_progress")
    waiting = sa.or_(ledger.c.status == "pending", ledger.c.status == "failed")
    # only these two conditions: with a status among them SQLite would rather walk the status index
    unprinted = _ledger_rows(store, registry_id, ledger.c.fingerprint.is_(None), ledger.c.status != "removed")
    tables = [
        _ledger_rows(store, registry_id, waiting),
        _ledger_rows(store, registry_id, on_platform, ledger.c.op == "remove"),
        unprinted.filter(pc.and_(_on_platform(unprinted), pc.invert(_removing(unprinted)))),
    ]
    dialect = store.dialect
    if hashed:
        elsewhere = pa.concat_tables(tables)["member_id"]
        by_member = _ledger_rows(store, registry_id, _among(ledger.c.member_id, hashed, dialect))
        tables.append(by_member.filter(pc.invert(pc.is_in(by_member["member_id"], elsewhere))))
    if unmatched:
        left = _ledger_rows(store, registry_id, _among(ledger.c.fingerprint, unmatched, dialect), *reusable())
        tables.append(left.filter(pc.invert(pc.is_in(left["member_id"], pa.array(hashed, pa.string())))))
    return pa.concat_tables(tables)


def _on_platform(rows: pa.Table) -> pa.ChunkedArray:
    return pc.is_in(rows["status"], pa.array(["sent", "in_progress"]))


def _removing(rows: pa.Table) -> pa.ChunkedArray:
    return pc.fill_null(pc.equal(rows["op"], "remove"), False)


def _among(column: sa.ColumnElement[str], values: list[str], dialect: str) -> sa.ColumnElement[bool]:
    """``column`` is one of ``values``, as one parameter however many they are (a list of thousands of
    parameters would exceed SQLite's limit): a PostgreSQL array, or a JSON array SQLite unpacks."""
    if not values:
        return sa.false()
    if dialect == "postgresql":
        return column == sa.any_(sa.bindparam(None, values, type_=postgresql.ARRAY(sa.String)))
    unpacked = sa.func.json_each(sa.bindparam(None, json.dumps(values))).table_valued("value")
    return column.in_(sa.select(unpacked.c.value))


def _same_hash(joined: pa.Table) -> pa.ChunkedArray:
    """Per joined row: the ledger holds the staged row hash, or the fingerprint of a row staged without
    one (False for members new to the ledger)."""
    return pc.or_(
        pc.fill_null(pc.equal(joined["row_hash"], joined["row_hash_ledger"]), False),
        pc.fill_null(
            pc.and_(
                pc.is_null(joined["row_hash"]), pc.equal(joined["fingerprint"], joined["fingerprint_ledger"])
            ),
            False,
        ),
    )


def _stale() -> StaleExtraction:
    return StaleExtraction(
        "the staged group reuses ledger rows (same raw values) that the ledger no longer holds as they were "
        "at extraction (another run changed the audience since). Fix: run the extract task again, then "
        "this task."
    )


def _read_part(path: PurePath, full: bool, filesystem: pafs.FileSystem | None) -> pa.Table:
    """A staged part's ids, row hashes and fingerprints (all columns with ``full``); files staged before
    fingerprints existed get a null fingerprint column."""
    names = pq.ParquetFile(str(path), filesystem=filesystem).schema_arrow.names
    columns = None if full else [n for n in _IDS.names if n in names]
    table = pq.read_table(str(path), columns=columns, filesystem=filesystem)
    if "fingerprint" not in table.column_names:
        table = table.append_column("fingerprint", pa.nulls(table.num_rows, pa.string()))
    return table


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


def _ledger_size(store: StateStore, registry_id: int) -> int:
    with store.engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(ledger).where(ledger.c.registry_id == registry_id)
            ).scalar_one()
        )


def _ledger_rows(store: StateStore, registry_id: int, *where: sa.ColumnElement[bool]) -> pa.Table:
    """member_id, row_hash, status, whether hashes were sent, op and fingerprint of one audience's
    ledger rows that match ``where``."""
    q = sa.select(
        ledger.c.member_id,
        ledger.c.row_hash,
        ledger.c.status,
        ledger.c.sent_payload.is_not(None).label("has_sent"),
        ledger.c.op,
        ledger.c.fingerprint,
    ).where(ledger.c.registry_id == registry_id, *where)
    columns = fetch_columns(store.engine, q, 6)
    return pa.table(
        {
            "member_id": pa.array(columns[0], pa.string()),
            "row_hash": pa.array(columns[1], pa.string()),  # row_hash_ledger once joined
            "status": pa.array(columns[2], pa.string()),
            "has_sent": pa.array([bool(v) for v in columns[3]], pa.bool_()),
            "op": pa.array(columns[4], pa.string()),
            "fingerprint": pa.array(columns[5], pa.string()),  # fingerprint_ledger once joined
        }
    )


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
            *in_slice(ledger.c.member_id, prefix),
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
