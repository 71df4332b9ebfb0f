"""Schema upgrades of the state database, and the check that the configured keys are the state's own.

v1 -> v2 (keyed member ids and row hashes, unhashed identifiers encrypted), in place:

- ``member_id``: v1 stored SHA-256(member key); v2 stores HMAC(member_id_key, that id), so the upgrade
  re-keys every row without knowing a single raw customer key;
- ``row_hash``: recomputed as the keyed HMAC of the stored payload JSON (exactly the text v1 hashed, so
  the next run's extract produces the same hash and sends nothing new);
- ``payload`` / ``sent_payload``: unhashed identifiers (``keys.ENCRYPTED_KEYS``) replaced by Fernet tokens;
- ``as_stage``: emptied (only rows of runs killed under v1 can be there, holding plain identifiers);
- new columns: the ledger's ``upload_id`` / ``batch_seq`` (upload records) and the metrics' ``run_*``
  counts (what one run did).

The upgrade is one transaction (all or nothing, so it is safe to re-run after a crash), reads and writes
the ledger in batches through a work table (bounded memory; re-keying the primary key in place would
revisit rows), and serialises concurrent upgraders by locking the version rows first. Tables are
described here as they were at v1 (lightweight ``sa.table``), not imported from ``ledger.py``.

v2 -> v3 (row fingerprints, ``core/fingerprints.py``), in place: a nullable ``fingerprint`` column in the
ledger and the stage table (in no index). Existing rows get none, so the first v3 run hashes every row
once (and sends nothing new: its row hashes are the v2 ones) and records their fingerprints.

v3 -> v4 (ledger generations), in place: ``as_audience_registry.ledger_generation``, a number every write
of an audience's ledger rows moves, so a rerun knows whether the rows its extraction reused are unchanged
(``core/delta.py``). Existing audiences start at 0.

v4 -> v5 (the group-size guard), in place: ``as_run_metrics.group_size``, the plan's group of each run
and destination (``core/alerts.py``). Existing rows have none: the first v5 run has nothing to compare.

v5 -> v6 (platform sizes), in place: ``as_run_metrics.audience_size`` and ``match_rate``, what the platform
reported about the audience once the run's uploads were processed (Meta's approximate count, Google's list
size and match rate, TikTok's cover count), for the progress page's trend (``core/progress.py``). Existing
rows have none.

v6 -> v7 (approval decisions, ``core/approval_log.py``): a new table ``as_approvals``, created like every
new table by ``metadata.create_all``; the upgrade only records the version. No campaign version was ever
approved before v7, so every campaign asks for approval once after the upgrade.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from audience_sync.core.keys import StateKeyError, StateKeys

log = logging.getLogger(__name__)

LATEST = 7
BATCH_ROWS = 5_000

_version = sa.table("as_schema_version", sa.column("version"), sa.column("applied_at"))
_stage = sa.table("as_stage", sa.column("stage_key"))
_state_keys = sa.table("as_state_keys", sa.column("name"), sa.column("fingerprint"), sa.column("created_at"))
_LEDGER_COLUMNS = (
    "registry_id",
    "member_id",
    "status",
    "op",
    "row_hash",
    "payload",
    "sent_payload",
    "last_run_id",
    "last_error_code",
    "updated_at",
)
_ledger = sa.table(
    "as_member_ledger",
    *(
        sa.column(c, sa.DateTime(timezone=True)) if c == "updated_at" else sa.column(c)
        for c in _LEDGER_COLUMNS
    ),
)

_work_md = sa.MetaData()
_work = sa.Table(
    "as_migration_v2_ledger",
    _work_md,
    sa.Column("registry_id", sa.Integer, primary_key=True),
    sa.Column("member_id", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("op", sa.String(8), nullable=True),
    sa.Column("row_hash", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("sent_payload", sa.Text, nullable=True),
    sa.Column("last_run_id", sa.String(250), nullable=True),
    sa.Column("last_error_code", sa.String(32), nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


def prepare(engine: Engine, keys: StateKeys | None) -> None:
    """Upgrade an older schema to :data:`LATEST`, then check (or, on first use, record) the keys."""
    with engine.connect() as conn:
        current = conn.execute(sa.select(sa.func.max(_version.c.version))).scalar()
    if current is not None and current < 2:
        upgrade_v1_to_v2(engine, keys)
    if current is not None and current < 3:
        upgrade_v2_to_v3(engine)
    if current is not None and current < 4:
        upgrade_v3_to_v4(engine)
    if current is not None and current < 5:
        upgrade_v4_to_v5(engine)
    if current is not None and current < 6:
        upgrade_v5_to_v6(engine)
    if current is not None and current < 7:
        upgrade_v6_to_v7(engine)
    if keys is not None:
        check_keys(engine, keys)


def upgrade_v1_to_v2(engine: Engine, keys: StateKeys | None) -> bool:
    """Upgrade a v1 state database in place; False when another process already did (idempotent)."""
    with engine.begin() as conn:
        # Take the write lock before re-reading the version: a PostgreSQL row lock, SQLite's write lock.
        # A second upgrader waits here and then sees version 2.
        conn.execute(_version.update().values(applied_at=_version.c.applied_at))
        current = conn.execute(sa.select(sa.func.max(_version.c.version))).scalar()
        if current is None or current >= 2:
            return False
        rows = conn.execute(sa.select(sa.func.count()).select_from(_ledger)).scalar_one()
        if rows and keys is None:
            raise StateKeyError(
                f"the state database has schema version {current} with {rows} ledger rows; upgrading it "
                "re-keys member ids and needs the state's keys (open it through the audience_sync_db hook)"
            )
        conn.execute(_stage.delete())
        _add_v2_columns(conn)
        if rows:
            assert keys is not None  # noqa: S101 - checked above
            _rekey_ledger(conn, keys)
        conn.execute(_version.insert().values(version=2, applied_at=dt.datetime.now(dt.UTC)))
    log.info("Upgraded the state database to schema version 2 (%s ledger rows re-keyed)", rows)
    return True


#: columns v3 added: the keyed fingerprint of the raw row a ledger (or staged) row was built from.
#: No index holds it: random keys in an index made the first sync's ledger writes about twice as slow
#: (bench_sync, 200,000 members) for a rerun lookup barely faster.
_V3_COLUMNS = {"as_member_ledger": ("fingerprint VARCHAR(32)",), "as_stage": ("fingerprint VARCHAR(32)",)}

#: columns v4 added: a number every write of an audience's ledger rows moves (``ledger.ledger_moved``)
_V4_COLUMNS = {"as_audience_registry": ("ledger_generation INTEGER NOT NULL DEFAULT 0",)}
#: and an index of the ledger rows without a fingerprint (``ledger.UNPRINTED``)
_V4_INDEX = "CREATE INDEX IF NOT EXISTS ix_as_ledger_unprinted ON as_member_ledger (registry_id) WHERE fingerprint IS NULL"


def upgrade_v2_to_v3(engine: Engine) -> bool:
    """Add the fingerprint columns to a v2 state database; False when another process already did."""
    return _upgrade_columns(engine, 3, _V3_COLUMNS, "row fingerprints")


def upgrade_v3_to_v4(engine: Engine) -> bool:
    """Add the ledger generation (and the index of rows without a fingerprint) to a v3 state database;
    False when another process already did."""
    return _upgrade_columns(engine, 4, _V4_COLUMNS, "ledger generations", _V4_INDEX)


#: columns v5 added: each run's group size per destination, for the next run's size guard
_V5_COLUMNS = {"as_run_metrics": ("group_size INTEGER",)}


def upgrade_v4_to_v5(engine: Engine) -> bool:
    """Add the metrics' group size to a v4 state database; False when another process already did."""
    return _upgrade_columns(engine, 5, _V5_COLUMNS, "group sizes")


#: columns v6 added: the audience size (and match rate) the platform reported after each run
_V6_COLUMNS = {"as_run_metrics": ("audience_size INTEGER", "match_rate INTEGER")}


def upgrade_v5_to_v6(engine: Engine) -> bool:
    """Add the metrics' platform-reported size and match rate to a v5 state database; False when another
    process already did."""
    return _upgrade_columns(engine, 6, _V6_COLUMNS, "platform sizes")


def upgrade_v6_to_v7(engine: Engine) -> bool:
    """Record version 7 (the approvals table exists already: ``create_all`` made it); False when another
    process already did."""
    return _upgrade_columns(engine, 7, {}, "approval decisions")


def _upgrade_columns(
    engine: Engine, version: int, columns: dict[str, tuple[str, ...]], what: str, index: str = ""
) -> bool:
    """Add ``columns`` (and create ``index``) and record ``version`` in one transaction; False when another
    process already did."""
    with engine.begin() as conn:
        conn.execute(_version.update().values(applied_at=_version.c.applied_at))  # the write lock, as above
        current = conn.execute(sa.select(sa.func.max(_version.c.version))).scalar()
        if current is None or current >= version:
            return False
        _add_columns(conn, columns)
        if index:
            conn.execute(sa.text(index))
        conn.execute(_version.insert().values(version=version, applied_at=dt.datetime.now(dt.UTC)))
    log.info("Upgraded the state database to schema version %s (%s)", version, what)
    return True


#: columns v2 added to v1 tables (new tables are created by ``metadata.create_all``)
_V2_COLUMNS = {
    # the upload and batch a member is being sent in (core/uploads.py)
    "as_member_ledger": ("upload_id INTEGER", "batch_seq INTEGER"),
    # what one run did, beside the ledger's snapshot
    "as_run_metrics": tuple(
        f"run_{k} INTEGER NOT NULL DEFAULT 0" for k in ("added", "removed", "resent", "unchanged", "rejected")
    ),
}


def _add_columns(conn: Connection, columns_by_table: dict[str, tuple[str, ...]]) -> None:
    """Add the columns (``"name TYPE ..."``) a table does not have yet (an interrupted upgrade resumes)."""
    inspector = sa.inspect(conn)
    for table, columns in columns_by_table.items():
        have = {c["name"] for c in inspector.get_columns(table)}
        for column in columns:
            if column.split()[0] not in have:
                conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {column}"))


def _add_v2_columns(conn: Connection) -> None:
    _add_columns(conn, _V2_COLUMNS)
    inspector = sa.inspect(conn)
    indexes = {i["name"] for i in inspector.get_indexes("as_member_ledger")}
    if "ix_as_ledger_upload" not in indexes:
        conn.execute(
            sa.text(
                "CREATE INDEX ix_as_ledger_upload ON as_member_ledger (registry_id, upload_id, batch_seq)"
            )
        )


def _rekey_ledger(conn: Connection, keys: StateKeys) -> None:
    _work.drop(conn, checkfirst=True)
    _work.create(conn)
    registry_ids = conn.execute(sa.select(_ledger.c.registry_id).distinct()).scalars().all()
    for rid in registry_ids:
        last = ""
        while True:  # keyset pagination over the old ids; the ledger is not written until the swap
            batch = conn.execute(
                sa.select(*(_ledger.c[c] for c in _LEDGER_COLUMNS))
                .where(_ledger.c.registry_id == rid, _ledger.c.member_id > last)
                .order_by(_ledger.c.member_id)
                .limit(BATCH_ROWS)
            ).all()
            if not batch:
                break
            last = batch[-1].member_id
            conn.execute(_work.insert(), [_v2_row(r._mapping, keys) for r in batch])
    conn.execute(_ledger.delete())
    conn.execute(
        _ledger.insert().from_select(list(_LEDGER_COLUMNS), sa.select(*(_work.c[c] for c in _LEDGER_COLUMNS)))
    )
    _work.drop(conn)


def _v2_row(row: Mapping[str, object], keys: StateKeys) -> dict[str, object]:
    out = dict(row)
    payload = str(row["payload"])
    out["member_id"] = keys.rekey(str(row["member_id"]))
    out["row_hash"] = keys.row_hash(payload)  # v1 hashed exactly this stored text
    out["payload"] = _seal(payload, keys)
    out["sent_payload"] = _seal(str(row["sent_payload"]), keys) if row["sent_payload"] else None
    return out


def _seal(text: str, keys: StateKeys) -> str:
    sealed = keys.seal_payload(json.loads(text))  # dict order is the stored order, the order sent
    return json.dumps(sealed, separators=(",", ":"))


def check_keys(engine: Engine, keys: StateKeys) -> None:
    """Record the keys' fingerprints on first use; afterwards refuse keys the state was not written with.

    A different member-id key would make every member look new (the whole audience re-sent, the old ids
    queued for removal); a different encryption key would make stored identifiers unreadable.
    """
    wanted = keys.fingerprints()
    stored = _fingerprints(engine)
    for name in wanted.keys() - stored.keys():
        try:
            with engine.begin() as conn:
                conn.execute(
                    _state_keys.insert().values(
                        name=name, fingerprint=wanted[name], created_at=dt.datetime.now(dt.UTC)
                    )
                )
        except sa.exc.IntegrityError:  # a concurrent first use recorded it: compare with theirs below
            pass
    stored = _fingerprints(engine)
    wrong = [name for name, fp in wanted.items() if stored.get(name) != fp]
    if wrong:
        raise StateKeyError(
            f"the configured {' and '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} not the one(s) this "
            "state database was written with. Fix: configure the state's original key(s); changing the "
            "member-id key needs a migration of the ledger (see README, 'Keys')."
        )


def _fingerprints(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return {
            r.name: r.fingerprint
            for r in conn.execute(sa.select(_state_keys.c.name, _state_keys.c.fingerprint))
        }
