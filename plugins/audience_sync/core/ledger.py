"""The state database: audience registry, per-member ledger and run metrics.

Plain SQLAlchemy Core, so the same code runs on SQLite (embedded default) and PostgreSQL. No Airflow
import: the Airflow layer only turns a connection into a SQLAlchemy URL (see ``hooks/state.py``).

Tables (created on first use, versioned in ``as_schema_version``):

- ``as_audience_registry``: one row per (platform, account, segment name) -> platform audience id.
  The unique constraint is what stops a retry or a second campaign from creating a second audience.
- ``as_member_ledger``: one row per (registry row, member). ``member_id`` is the keyed HMAC of the
  campaign's member key (``core/keys.py``); ``payload`` holds what should be on the platform and
  ``sent_payload`` what was last confirmed there, both as JSON objects of schema key -> hash, except
  the identifiers a platform takes unhashed (Meta MADID, EXTERN_ID), which are stored only as Fernet
  tokens and decrypted when rows are read for sending (:meth:`StateStore.open_payload`, used by :mod:`audience_sync.core.uploads`). ``row_hash`` is a
  keyed HMAC of the plaintext payload.
  ``status`` is pending / in_progress / sent / failed / removed and ``op`` the operation it is
  waiting for (``add`` or ``remove``).
- ``as_uploads``: one row per platform upload (one operation on one audience) with the platform's
  handle, so a retried task resumes the same upload (see :mod:`audience_sync.core.uploads`).
- ``as_upload_receipts``: per upload and batch, what the platform needs later about it (request ids).
- ``as_run_metrics``: one row per (dag, run, destination) with the counts of that run.
- ``as_stage`` / ``as_stage_owner``: the group of a sync being reconciled, keyed by a random stage key;
  the owner row says which campaign run (and lease) staged it, so the next run of that campaign can drop
  what a killed run left behind.
- ``as_state_keys``: a fingerprint of each key the state was written with, so a wrong key fails fast
  instead of making every member look new.
- ``as_approvals``: one row per approval decision (approved, rejected, timed out) about a campaign
  version, with who decided, when, and the dry-run plan's summary (:mod:`audience_sync.core.approval_log`).
- ``as_locks``: one row per audience being synced (platform, account, segment), with a lease, so no two
  runs upload to one audience at once. The owner is ``dag|run|task|try``: a later try of the same task
  takes the lease over at once, anyone else waits for it to expire; a holder that lost it gets
  :class:`LeaseLost` on its next heartbeat and stops.

Every timestamp column is :class:`UTCDateTime`: aware datetimes in, aware UTC datetimes out, on both
databases (naive datetimes are rejected).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from audience_sync.core import migrations
from audience_sync.core.errors import AudienceSyncError
from audience_sync.core.keys import ENCRYPTED_KEYS, StateKeyError, StateKeys

log = logging.getLogger(__name__)

#: 2: keyed member ids and row hashes, unhashed identifiers encrypted; 3: row fingerprints; 4: ledger
#: generations; 5: group sizes in the metrics; 6: approval decisions (``migrations.py`` upgrades older versions)
SCHEMA_VERSION = migrations.LATEST

#: key of the PostgreSQL advisory lock that serialises schema creation between workers
SCHEMA_LOCK_KEY = 0x41535F534348454D  # "AS_SCHEM"

#: the row hash a stage of changes gives a member that left the group (no real row hash is empty)
LEAVING = ""

#: the payload a stage of changes gives a member whose raw row is the ledger's (same fingerprint): the
#: ledger's payload is kept (no real payload is empty)
KEEP_PAYLOAD = ""

#: a stage nobody holds a lease for (a plan's) is left alone this long before a later run may drop it
UNLEASED_STAGE_GRACE = dt.timedelta(hours=6)


class UTCDateTime(sa.types.TypeDecorator[dt.datetime]):
    """A timestamp that is UTC in the database and aware UTC in Python, on SQLite and PostgreSQL.

    SQLite has no time zones: SQLAlchemy writes an aware value's wall time and reads it back naive, so
    ``10:00+01:00`` came back as ``10:00`` and was then taken for UTC. Here every value is converted to
    UTC before it is written (and stored naive on SQLite, as ``timestamptz`` on PostgreSQL), and read back
    as aware UTC. Naive values are rejected rather than guessed: a naive time is a bug at its source.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if not isinstance(value, dt.datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"naive datetime {value.isoformat()} given to the state database; pass an aware one"
            )
        utc = value.astimezone(dt.UTC)
        # SQLite stores wall time only: store UTC wall time, so text order is time order
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


metadata = sa.MetaData()

schema_version = sa.Table(
    "as_schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", UTCDateTime(), nullable=False),
)

registry = sa.Table(
    "as_audience_registry",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("platform", sa.String(32), nullable=False),
    sa.Column("account", sa.String(64), nullable=False),
    sa.Column("segment_name", sa.String(128), nullable=False),
    sa.Column("audience_id", sa.String(64), nullable=False),
    sa.Column("origin", sa.String(16), nullable=False),  # created | adopted | recreated
    sa.Column("note", sa.Text, nullable=True),
    sa.Column("last_logical_date", UTCDateTime(), nullable=True),
    # moves with every write of the audience's ledger rows (see ``ledger_moved``): a rerun whose
    # extraction saw the same number knows the ledger rows it reused are still as they were
    sa.Column("ledger_generation", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("platform", "account", "segment_name", name="uq_as_registry_segment"),
)

ledger = sa.Table(
    "as_member_ledger",
    metadata,
    sa.Column("registry_id", sa.Integer, sa.ForeignKey("as_audience_registry.id"), primary_key=True),
    sa.Column("member_id", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("op", sa.String(8), nullable=True),
    sa.Column("row_hash", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("sent_payload", sa.Text, nullable=True),
    sa.Column("last_run_id", sa.String(250), nullable=True),
    sa.Column("last_error_code", sa.String(32), nullable=True),
    # the upload (as_uploads) and batch the member is being sent in, while ``in_progress``
    sa.Column("upload_id", sa.Integer, nullable=True),
    sa.Column("batch_seq", sa.Integer, nullable=True),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    # keyed fingerprint of the raw row ``row_hash`` and ``payload`` were built from (core/fingerprints.py)
    sa.Column("fingerprint", sa.String(32), nullable=True),
)
sa.Index("ix_as_ledger_upload", ledger.c.registry_id, ledger.c.upload_id, ledger.c.batch_seq)
# not with the fingerprint (see ``migrations.upgrade_v2_to_v3``)
sa.Index("ix_as_ledger_status", ledger.c.registry_id, ledger.c.status, ledger.c.op)
# rows without a fingerprint, few once every member was fingerprinted: a rerun looks them up (core/delta.py)
UNPRINTED = sa.Index(
    "ix_as_ledger_unprinted",
    ledger.c.registry_id,
    sqlite_where=ledger.c.fingerprint.is_(None),
    postgresql_where=ledger.c.fingerprint.is_(None),
)

#: one row per platform upload (see core/uploads.py)
uploads = sa.Table(
    "as_uploads",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("registry_id", sa.Integer, sa.ForeignKey("as_audience_registry.id"), nullable=False),
    sa.Column("audience_id", sa.String(64), nullable=False),
    sa.Column("op", sa.String(8), nullable=False),
    sa.Column("handle", sa.String(300), nullable=True),  # None until the platform gave one
    sa.Column("run_id", sa.String(250), nullable=False),  # the run that opened it
    sa.Column("state", sa.String(16), nullable=False),  # open | finished | processed | failed | abandoned
    sa.Column("estimated_total", sa.Integer, nullable=False, default=0),
    sa.Column("confirmed_seq", sa.Integer, nullable=False, default=0),  # batches 1..n answered
    sa.Column("batches", sa.Integer, nullable=False, default=0),  # batches numbered so far
    sa.Column("closed", sa.Boolean, nullable=False, default=False),  # the platform took the last batch
    sa.Column("received", sa.Integer, nullable=False, default=0),
    sa.Column("invalid", sa.Integer, nullable=False, default=0),  # rows the platform rejected
    sa.Column("detail", sa.Text, nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.Column("processed_at", UTCDateTime(), nullable=True),
)
sa.Index("ix_as_uploads_state", uploads.c.registry_id, uploads.c.state)

#: what the platform said per batch that a later call needs (``UploadResult.receipt``: Data Manager's
#: request ids); a table of its own, so a state database of an earlier version only gains it
upload_receipts = sa.Table(
    "as_upload_receipts",
    metadata,
    sa.Column("upload_id", sa.Integer, sa.ForeignKey("as_uploads.id"), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("receipt", sa.Text, nullable=False),
)

stage = sa.Table(
    "as_stage",
    metadata,
    sa.Column("stage_key", sa.String(64), primary_key=True),
    sa.Column("member_id", sa.String(64), primary_key=True),
    sa.Column("row_hash", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("fingerprint", sa.String(32), nullable=True),
)

stage_owner = sa.Table(
    "as_stage_owner",
    metadata,
    sa.Column("stage_key", sa.String(64), primary_key=True),
    sa.Column("dag_id", sa.String(250), nullable=True),
    sa.Column("run_id", sa.String(250), nullable=True),
    # the audience lease the stage was made under (None for a plan, which takes no lease)
    sa.Column("lock_key", sa.String(300), nullable=True),
    sa.Column("lease_owner", sa.String(500), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)
sa.Index("ix_as_stage_owner_dag", stage_owner.c.dag_id, stage_owner.c.created_at)

state_keys = sa.Table(
    "as_state_keys",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),  # member_id_key | encryption_key
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

locks = sa.Table(
    "as_locks",
    metadata,
    sa.Column("lock_key", sa.String(300), primary_key=True),
    sa.Column("owner", sa.String(500), nullable=False),
    sa.Column("acquired_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
)

metrics = sa.Table(
    "as_run_metrics",
    metadata,
    sa.Column("dag_id", sa.String(250), primary_key=True),
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("destination", sa.String(128), primary_key=True),
    sa.Column("segment_name", sa.String(128), nullable=False),
    sa.Column("audience_id", sa.String(64), nullable=True),
    sa.Column("logical_date", UTCDateTime(), nullable=True),
    sa.Column("total", sa.Integer, nullable=False, default=0),
    sa.Column("sent", sa.Integer, nullable=False, default=0),
    sa.Column("in_progress", sa.Integer, nullable=False, default=0),
    sa.Column("pending", sa.Integer, nullable=False, default=0),
    sa.Column("failed", sa.Integer, nullable=False, default=0),
    sa.Column("removed", sa.Integer, nullable=False, default=0),
    sa.Column("invalid", sa.Integer, nullable=False, default=0),
    sa.Column("excluded", sa.Integer, nullable=False, default=0),
    sa.Column("requests", sa.Integer, nullable=False, default=0),
    # what the run did (the columns above are the ledger's snapshot after it)
    sa.Column("run_added", sa.Integer, nullable=False, default=0),
    sa.Column("run_removed", sa.Integer, nullable=False, default=0),
    sa.Column("run_resent", sa.Integer, nullable=False, default=0),
    sa.Column("run_unchanged", sa.Integer, nullable=False, default=0),
    sa.Column("run_rejected", sa.Integer, nullable=False, default=0),
    sa.Column("started_at", UTCDateTime(), nullable=True),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("note", sa.Text, nullable=True),
    # the plan's group for this destination (valid members): the next run's size guard compares with it
    sa.Column("group_size", sa.Integer, nullable=True),
    # what the platform reported about the audience once the run's uploads were processed (None: it did
    # not say, or the run did not get that far): Meta's approximate count, Google's list size, TikTok's
    # cover count; and the match rate in percent where the platform reports one (Google Ads)
    sa.Column("audience_size", sa.Integer, nullable=True),
    sa.Column("match_rate", sa.Integer, nullable=True),
)

#: one row per approval decision about a campaign version (core/approval_log.py); added in schema v6
approvals = sa.Table(
    "as_approvals",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dag_id", sa.String(250), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("decision", sa.String(16), nullable=False),  # approved | rejected | timed_out
    sa.Column("decided_by", sa.String(250), nullable=True),  # None: nobody answered in time
    sa.Column("decided_at", UTCDateTime(), nullable=False),
    sa.Column("source", sa.String(32), nullable=False),  # airflow | campaign_file
    sa.Column("run_id", sa.String(250), nullable=True),
    sa.Column("plan_summary", sa.Text, nullable=True),  # JSON: counts and audiences, never a member
)
sa.Index("ix_as_approvals_version", approvals.c.dag_id, approvals.c.version, approvals.c.decision)

COUNT_KEYS = ("total", "sent", "in_progress", "pending", "failed", "removed", "invalid", "excluded")
#: what one run did, beside the snapshot: metrics column ``run_<key>``
RUN_KEYS = ("added", "removed", "resent", "unchanged", "rejected")


class LockTimeout(AudienceSyncError):
    """Another run kept the audience's lock for longer than we were willing to wait."""


class LeaseLost(AudienceSyncError):
    """The audience's lease is no longer ours (it expired and another run, or a later try, took it over)."""


def utcnow() -> dt.datetime:
    """Now, aware, in UTC."""
    return dt.datetime.now(dt.UTC)


def lease_owner(dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
    """The lease owner of one task try: ``dag|run|task|try``."""
    return f"{dag_id}|{run_id}|{task_id}|{int(try_number)}"


def _earlier_try(holder: str, owner: str) -> bool:
    """Whether ``holder`` is an earlier try of the same task as ``owner`` (same ``dag|run|task``)."""
    h_task, _, h_try = holder.rpartition("|")
    o_task, _, o_try = owner.rpartition("|")
    if not h_task or h_task != o_task or not (h_try.isdigit() and o_try.isdigit()):
        return False
    return int(h_try) < int(o_try)


@dataclass(frozen=True)
class RegistryEntry:
    """One registered platform audience."""

    id: int
    platform: str
    account: str
    segment_name: str
    audience_id: str
    origin: str
    last_logical_date: dt.datetime | None


@dataclass(frozen=True)
class PendingRow:
    """A ledger row waiting to be sent: the member and the schema-keyed values to send (decrypted)."""

    member_id: str
    payload: dict[str, str]
    sent_payload: dict[str, str] | None


class StateStore:
    """Registry, ledger and metrics on one SQLAlchemy engine.

    :param url: a SQLAlchemy URL (``sqlite:///path.db`` or ``postgresql+psycopg2://...``) or an Engine.
    :param keys: the state's keys. Needed to upgrade a v1 database and to read rows for sending; without
        them the store still serves the registry, counts and metrics. Given keys are checked against the
        fingerprints the database was created with.
    """

    def __init__(self, url: str | sa.URL | Engine, keys: StateKeys | None = None) -> None:
        self.keys = keys
        self._lease_seconds: dict[str, float] = {}
        if isinstance(url, Engine):
            self.engine = url
        else:
            kwargs: dict[str, Any] = {"future": True}
            if str(url).startswith("sqlite"):
                kwargs["connect_args"] = {"timeout": 60}
            self.engine = sa.create_engine(url, **kwargs)
            if self.engine.dialect.name == "sqlite":
                sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self.ensure_schema()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    # ------------------------------------------------------------------ schema
    def ensure_schema(self) -> None:
        """Create the tables on first use and record the schema version (idempotent, race-safe).

        On PostgreSQL two workers creating the schema at once would both see "no table" and one would
        fail on a duplicate type or table, so the whole step runs under a session-level advisory lock.
        SQLite serialises writers by itself.
        """
        if self.dialect != "postgresql":
            self._ensure_schema()
            return
        with self.engine.connect() as lock_conn:
            lock_conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": SCHEMA_LOCK_KEY})
            try:
                self._ensure_schema()
            finally:
                lock_conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": SCHEMA_LOCK_KEY})
                lock_conn.commit()

    def _ensure_schema(self) -> None:
        metadata.create_all(self.engine, checkfirst=True)
        with self.engine.begin() as conn:
            current = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
            if current is None:
                try:
                    conn.execute(schema_version.insert().values(version=SCHEMA_VERSION, applied_at=utcnow()))
                except sa.exc.IntegrityError:  # a concurrent first use wrote it
                    pass
            elif current > SCHEMA_VERSION:
                raise RuntimeError(
                    f"The state database has schema version {current}, newer than this audience-sync "
                    f"({SCHEMA_VERSION}). Upgrade audience-sync on every worker."
                )
        migrations.prepare(self.engine, self.keys)  # upgrade an older schema; check the keys match

    # ---------------------------------------------------------------- registry
    def get_registry(self, platform: str, account: str, segment_name: str) -> RegistryEntry | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(registry).where(
                    registry.c.platform == platform,
                    registry.c.account == account,
                    registry.c.segment_name == segment_name,
                )
            ).first()
        return _entry(row) if row else None

    def register(
        self, platform: str, account: str, segment_name: str, audience_id: str, origin: str, note: str = ""
    ) -> tuple[RegistryEntry, bool]:
        """Register an audience; if another writer registered the name first, return theirs.

        :return: (entry, inserted) — ``inserted`` is False when the unique constraint found an existing row.
        """
        now = utcnow()
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    registry.insert().values(
                        platform=platform,
                        account=account,
                        segment_name=segment_name,
                        audience_id=audience_id,
                        origin=origin,
                        note=note or None,
                        created_at=now,
                        updated_at=now,
                    )
                )
            inserted = True
        except sa.exc.IntegrityError:
            inserted = False
        entry = self.get_registry(platform, account, segment_name)
        if entry is None:  # pragma: no cover - only if someone deletes the row in between
            raise RuntimeError("registry row vanished right after it was written")
        return entry, inserted

    def replace_audience_id(
        self, entry: RegistryEntry, audience_id: str, origin: str, note: str
    ) -> RegistryEntry:
        """Point a registry row at a new platform audience (the old one was deleted on the platform)."""
        with self.engine.begin() as conn:
            conn.execute(
                registry.update()
                .where(registry.c.id == entry.id)
                .values(audience_id=audience_id, origin=origin, note=note, updated_at=utcnow())
            )
        fresh = self.get_registry(entry.platform, entry.account, entry.segment_name)
        assert fresh is not None  # noqa: S101 - the row exists, we just updated it
        return fresh

    def set_last_logical_date(self, registry_id: int, logical_date: dt.datetime) -> None:
        """Remember the newest logical date synced (never moves backwards)."""
        with self.engine.begin() as conn:
            conn.execute(
                registry.update()
                .where(
                    registry.c.id == registry_id,
                    sa.or_(
                        registry.c.last_logical_date.is_(None), registry.c.last_logical_date < logical_date
                    ),
                )
                .values(last_logical_date=logical_date, updated_at=utcnow())
            )

    # ------------------------------------------------------------------ ledger
    def stage_members(
        self,
        rows: Iterable[tuple[str, ...]],
        chunk: int = 5000,
        *,
        dag_id: str | None = None,
        run_id: str | None = None,
        lease: tuple[str, str] | None = None,
    ) -> str:
        """Bulk-load (member_id, row_hash, payload_json[, fingerprint]) rows into the stage table; return
        the stage key.

        :param dag_id: the campaign staging it; with it, stale stages of the same campaign (left by killed
            runs) are dropped first, see :meth:`drop_stale_stages`.
        :param run_id: the run staging it (recorded, for whoever looks at the table).
        :param lease: ``(lock_key, owner)`` of the audience lease held while the stage is in use.

        Rows come as staged (``StateKeys.staged_row``): keyed ids and hashes, unhashed identifiers sealed.
        """
        key = uuid.uuid4().hex
        now = utcnow()
        if dag_id is not None:
            self.drop_stale_stages(dag_id, now)
        lock_key, owner = lease if lease else (None, None)
        buf: list[tuple[str, str, str, str, str | None]] = []
        with self.engine.begin() as conn:
            # owner row and members commit together: nobody sees members without their owner
            conn.execute(
                stage_owner.insert().values(
                    stage_key=key,
                    dag_id=dag_id,
                    run_id=run_id,
                    lock_key=lock_key,
                    lease_owner=owner,
                    created_at=now,
                )
            )
            for member_id, row_hash, payload, *fingerprint in rows:
                buf.append((key, member_id, row_hash, payload, fingerprint[0] if fingerprint else None))
                if len(buf) >= chunk:
                    _bulk_stage(conn, buf)
                    buf = []
            if buf:
                _bulk_stage(conn, buf)
        return key

    def drop_stage(self, key: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(stage.delete().where(stage.c.stage_key == key))
            conn.execute(stage_owner.delete().where(stage_owner.c.stage_key == key))

    def drop_stale_stages(self, dag_id: str, before: dt.datetime | None = None) -> int:
        """Drop the stages a killed run of this campaign left behind; return how many were dropped.

        Only this campaign's stages are candidates (another campaign may be staging right now), and only
        those created before ``before`` (a run that started after us is not ours to judge). Of those, a
        stage made under an audience lease is dropped once that lease no longer holds (expired, released,
        or taken over by a later try); a stage made without a lease (a plan) after
        :data:`UNLEASED_STAGE_GRACE`.
        """
        now = utcnow()
        before = before or now
        live_lease = (
            sa.select(locks.c.lock_key)
            .where(
                locks.c.lock_key == stage_owner.c.lock_key,
                locks.c.owner == stage_owner.c.lease_owner,
                locks.c.expires_at >= now,
            )
            .exists()
        )
        stale = sa.select(stage_owner.c.stage_key).where(
            stage_owner.c.dag_id == dag_id,
            stage_owner.c.created_at < before,
            sa.or_(
                sa.and_(stage_owner.c.lease_owner.is_not(None), ~live_lease),
                sa.and_(
                    stage_owner.c.lease_owner.is_(None), stage_owner.c.created_at < now - UNLEASED_STAGE_GRACE
                ),
            ),
        )
        with self.engine.begin() as conn:
            keys = list(conn.execute(stale).scalars())
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                conn.execute(stage.delete().where(stage.c.stage_key.in_(chunk)))
                conn.execute(stage_owner.delete().where(stage_owner.c.stage_key.in_(chunk)))
        return len(keys)

    def apply_stage(
        self,
        registry_id: int,
        key: str,
        run_id: str,
        *,
        mode: str,
        backfill: bool = False,
    ) -> None:
        """Turn a stage of changes into pending ledger work, in bulk SQL.

        The stage (``core/delta.py``'s :func:`~audience_sync.core.delta.stage_changes`) holds only the
        members whose ledger rows change, and the members that left the group, marked with
        :data:`LEAVING` as their row hash.

        - new members become ``pending``/``add``;
        - known members whose hashes changed, or that are not on the platform and not on their way
          (pending / failed / removed), become ``pending``/``add`` with the staged payload; members on
          their way with the same hashes (``in_progress``) are left to their upload;
        - ``mirror``: members that may be on the platform but left the group become ``pending``/``remove``;
          unconfirmed ones that left are ``removed``;
        - ``replace``: every staged member becomes ``pending``/``replace`` (the replace re-sends all);
        - ``backfill`` (an older logical date than one already synced): only members unknown to the
          ledger are added; nothing a newer run sent is changed, re-sent with older hashes, or removed.
        """
        now = utcnow()
        in_group = sa.and_(stage.c.stage_key == key, stage.c.row_hash != LEAVING)
        staged = sa.select(stage.c.member_id, stage.c.row_hash, stage.c.payload, stage.c.fingerprint).where(
            in_group
        )
        add_op = "replace" if mode == "replace" and not backfill else "add"
        with self.engine.begin() as conn:
            ledger_moved(conn, registry_id)
            # 1. members new to the ledger
            conn.execute(
                ledger.insert().from_select(
                    [
                        "registry_id",
                        "member_id",
                        "status",
                        "op",
                        "row_hash",
                        "payload",
                        "fingerprint",
                        "last_run_id",
                        "updated_at",
                    ],
                    sa.select(
                        sa.literal(registry_id),
                        stage.c.member_id,
                        sa.literal("pending"),
                        sa.literal(add_op),
                        stage.c.row_hash,
                        stage.c.payload,
                        stage.c.fingerprint,
                        sa.literal(run_id),
                        sa.literal(now, UTCDateTime()),
                    ).where(
                        in_group,
                        ~sa.exists().where(
                            ledger.c.registry_id == registry_id, ledger.c.member_id == stage.c.member_id
                        ),
                    ),
                )
            )
            if backfill:
                return
            # 2. members already known: re-queue what is not (on its way to) the platform with these hashes
            sub = staged.subquery()
            requeue = (
                sa.true()
                if add_op == "replace"
                else sa.or_(
                    ledger.c.status.in_(("pending", "failed", "removed")),
                    ledger.c.row_hash != sub.c.row_hash,
                    ledger.c.op == "remove",
                )
            )
            conn.execute(
                ledger.update()
                .where(ledger.c.registry_id == registry_id, ledger.c.member_id == sub.c.member_id, requeue)
                .values(
                    status="pending",
                    op=add_op,
                    row_hash=sub.c.row_hash,
                    # a member staged by fingerprint keeps the ledger's payload (its row is unchanged)
                    payload=sa.case((sub.c.payload == KEEP_PAYLOAD, ledger.c.payload), else_=sub.c.payload),
                    fingerprint=sub.c.fingerprint,
                    upload_id=None,
                    batch_seq=None,
                    last_run_id=run_id,
                    # keep why a failed member failed: an unattributed reject is retried in small batches
                    last_error_code=sa.case(
                        (ledger.c.status == "failed", ledger.c.last_error_code), else_=None
                    ),
                    updated_at=now,
                )
            )
            # 3. same hashes from other raw values (or rules): only the fingerprint moves
            conn.execute(
                ledger.update()
                .where(
                    ledger.c.registry_id == registry_id,
                    ledger.c.member_id == sub.c.member_id,
                    ledger.c.row_hash == sub.c.row_hash,
                    sub.c.fingerprint.is_not(None),
                    sa.or_(ledger.c.fingerprint.is_(None), ledger.c.fingerprint != sub.c.fingerprint),
                )
                .values(fingerprint=sub.c.fingerprint)
            )
            if mode == "mirror":
                # from the stage's leavers to their ledger rows by key (an EXISTS per ledger row would
                # visit every member of the audience, however few left)
                gone = ledger.c.member_id.in_(
                    sa.select(stage.c.member_id).where(stage.c.stage_key == key, stage.c.row_hash == LEAVING)
                )
                mine = ledger.c.registry_id == registry_id
                # on the platform, or maybe (a batch in flight when a task died): remove what may be there
                conn.execute(
                    ledger.update()
                    .where(mine, gone, ledger.c.status != "removed", _may_be_on_platform(), ~_removing())
                    .values(**_queue_removal(run_id, now))
                )
                # never reached the platform: nothing to remove there
                conn.execute(
                    ledger.update()
                    .where(
                        mine,
                        gone,
                        ledger.c.status.in_(("pending", "failed")),
                        ledger.c.op == "add",
                        ledger.c.sent_payload.is_(None),
                    )
                    .values(status="removed", op=None, last_run_id=run_id, updated_at=now)
                )

    def reset_for_new_audience(self, registry_id: int) -> None:
        """The platform audience was re-created: nothing is confirmed there any more, re-send everyone."""
        with self.engine.begin() as conn:
            ledger_moved(conn, registry_id)
            conn.execute(
                ledger.delete().where(ledger.c.registry_id == registry_id, ledger.c.status == "removed")
            )
            conn.execute(
                ledger.update()
                .where(ledger.c.registry_id == registry_id)
                .values(
                    status="pending",
                    op="add",
                    sent_payload=None,
                    upload_id=None,
                    batch_seq=None,
                    updated_at=utcnow(),
                )
            )

    def ledger_generation(self, registry_id: int) -> int:
        """The audience's ledger generation (see :func:`ledger_moved`)."""
        with self.engine.connect() as conn:
            q = sa.select(registry.c.ledger_generation).where(registry.c.id == registry_id)
            return int(conn.execute(q).scalar_one())

    def ledger_counts(self, registry_id: int) -> dict[str, int]:
        """Status counts for one audience.

        ``sent``/``in_progress``/``pending``/``failed`` count members of the group (waiting to be added or
        confirmed); ``removing`` counts members waiting to be removed; ``removed`` those taken out.
        """
        with self.engine.connect() as conn:
            q = sa.select(ledger.c.status, ledger.c.op, sa.func.count()).where(
                ledger.c.registry_id == registry_id
            )
            rows = conn.execute(q.group_by(ledger.c.status, ledger.c.op)).all()
        out = {k: 0 for k in ("sent", "in_progress", "pending", "failed", "removed", "removing")}
        for status, op, n in rows:
            if op == "remove" and status != "removed":
                out["removing"] += n
            else:
                out[status] += n
        return out

    def ledger_members(self, registry_id: int, status: str | None = None) -> dict[str, dict[str, str]]:
        """member_id -> desired payload, decrypted (tests and the CLI)."""
        q = sa.select(ledger.c.member_id, ledger.c.payload, ledger.c.status).where(
            ledger.c.registry_id == registry_id
        )
        if status:
            q = q.where(ledger.c.status == status)
        with self.engine.connect() as conn:
            return {r.member_id: self.open_payload(r.payload) for r in conn.execute(q)}

    def queue_removals(self, registry_id: int, member_ids: Iterable[str], run_id: str) -> int:
        """Mark these members for removal if the platform may hold them (e.g. consent withdrawn)."""
        ids = list(member_ids)
        n = 0
        now = utcnow()
        with self.engine.begin() as conn:
            ledger_moved(conn, registry_id)
            for i in range(0, len(ids), 900):
                chunk = ids[i : i + 900]
                mine = sa.and_(ledger.c.registry_id == registry_id, ledger.c.member_id.in_(chunk))
                n += conn.execute(
                    ledger.update()
                    .where(mine, _may_be_on_platform(), ~_removing())
                    .values(**_queue_removal(run_id, now))
                ).rowcount
                conn.execute(
                    ledger.update()
                    .where(mine, ledger.c.status.in_(("pending", "failed")), ledger.c.sent_payload.is_(None))
                    .values(status="removed", op=None, last_run_id=run_id, updated_at=now)
                )
        return n

    def open_payload(self, stored: str) -> dict[str, str]:
        """A stored payload as sent to the platform: encrypted identifiers decrypted with the state's key."""
        payload: dict[str, str] = json.loads(stored)
        if self.keys is None:
            if any(v and k in ENCRYPTED_KEYS for k, v in payload.items()):
                raise StateKeyError(
                    "reading encrypted identifiers needs the state's keys (StateStore(keys=...))"
                )
            return payload
        return self.keys.open_payload(payload)

    def stage_size(self, key: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.count()).select_from(stage).where(stage.c.stage_key == key)
            ).scalar_one()

    # ------------------------------------------------------------------- locks
    def acquire_lock(
        self,
        lock_key: str,
        owner: str,
        *,
        lease_seconds: float = 1800,
        wait_seconds: float = 600,
        poll: float = 0.5,
    ) -> None:
        """Take the audience's lease, waiting while another owner holds an unexpired one.

        ``owner`` is ``dag|run|task|try`` (see :func:`lease_owner`). The same owner re-acquires at once; a
        later try of the same task takes the lease over from an earlier try at once (Airflow starts a new
        try only when it considers the old one gone; if that one still runs, it gets :class:`LeaseLost`
        on its next heartbeat); anyone else waits until the lease expires or is released.

        Every takeover is a compare-and-set on the holder we saw, so two contenders never both win.
        :raises LockTimeout: when the lock stays held for ``wait_seconds``.
        """
        deadline = time.monotonic() + wait_seconds
        self._lease_seconds[lock_key] = lease_seconds  # what the heartbeat extends the lease by
        while True:
            now = utcnow()
            expires = now + dt.timedelta(seconds=lease_seconds)
            try:
                with self.engine.begin() as conn:
                    conn.execute(
                        locks.insert().values(
                            lock_key=lock_key, owner=owner, acquired_at=now, expires_at=expires
                        )
                    )
                return
            except sa.exc.IntegrityError:
                pass
            with self.engine.begin() as conn:
                holder = conn.execute(sa.select(locks.c.owner).where(locks.c.lock_key == lock_key)).scalar()
                taken = 0
                if holder is not None:
                    cond = [locks.c.lock_key == lock_key, locks.c.owner == holder]
                    if not (holder == owner or _earlier_try(holder, owner)):
                        cond.append(locks.c.expires_at < now)
                    taken = conn.execute(
                        locks.update().where(*cond).values(owner=owner, acquired_at=now, expires_at=expires)
                    ).rowcount
            if taken:
                if holder != owner:
                    log.info("lease %s taken over from %s", lock_key, holder)
                return
            if holder is None:
                continue  # released between our insert and our read: try the insert again
            if time.monotonic() > deadline:
                raise LockTimeout(
                    f"audience {lock_key} is being synced by {holder}; gave up after {wait_seconds:.0f}s"
                )
            time.sleep(poll)

    def refresh_lock(self, lock_key: str, owner: str, lease_seconds: float | None = None) -> None:
        """Extend our lease, in one statement that also checks it is still ours (the heartbeat).

        :param lease_seconds: the new lease; by default the one this store acquired the lock with.

        A lease that expired but that nobody took over is still ours and is extended: no one else has
        uploaded in between.
        :raises LeaseLost: another owner holds the lease now, or it was released.
        """
        lease = self._lease_seconds.get(lock_key, 1800.0) if lease_seconds is None else lease_seconds
        with self.engine.begin() as conn:
            updated = conn.execute(
                locks.update()
                .where(locks.c.lock_key == lock_key, locks.c.owner == owner)
                .values(expires_at=utcnow() + dt.timedelta(seconds=lease))
            ).rowcount
            if updated == 1:
                return
            holder = conn.execute(sa.select(locks.c.owner).where(locks.c.lock_key == lock_key)).scalar()
        raise LeaseLost(
            f"lost the lease on audience {lock_key}: it is now held by {holder or 'nobody'} "
            f"(ours, {owner}, expired or was taken over by a later try); stopped before the next request"
        )

    def release_lock(self, lock_key: str, owner: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(locks.delete().where(locks.c.lock_key == lock_key, locks.c.owner == owner))

    # ----------------------------------------------------------------- metrics
    def write_metrics(self, row: Mapping[str, Any]) -> None:
        """Insert or update the metrics row of (dag_id, run_id, destination): safe to repeat."""
        values = {c.name: row.get(c.name) for c in metrics.columns if c.name in row}
        for k in (*COUNT_KEYS, "requests", *(f"run_{k}" for k in RUN_KEYS)):
            values.setdefault(k, 0)
        key = {k: values[k] for k in ("dag_id", "run_id", "destination")}
        with self.engine.begin() as conn:
            updated = conn.execute(
                metrics.update()
                .where(*(metrics.c[k] == v for k, v in key.items()))
                .values(**{k: v for k, v in values.items() if k not in key})
            ).rowcount
            if not updated:
                conn.execute(metrics.insert().values(**values))

    def last_group_size(self, dag_id: str, destination: str, run_id: str) -> int | None:
        """The group size another run of ``dag_id`` last recorded for ``destination`` (None: none did).

        A run held by the size guard records none (``group_size`` NULL), so the next run is compared with
        the size before the collapse, not with the collapsed group, and is held again.
        """
        q = (
            sa.select(metrics.c.group_size)
            .where(
                metrics.c.dag_id == dag_id,
                metrics.c.destination == destination,
                metrics.c.run_id != run_id,
                metrics.c.group_size.is_not(None),
            )
            .order_by(metrics.c.finished_at.desc(), metrics.c.started_at.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            return conn.execute(q).scalar()

    def recent_metrics(self, dag_id: str, runs: int) -> list[dict[str, Any]]:
        """The metrics rows of the campaign's last ``runs`` runs, oldest first (the progress page's trend)."""
        when = sa.func.coalesce(metrics.c.started_at, metrics.c.finished_at)
        last = (
            sa.select(metrics.c.run_id)
            .where(metrics.c.dag_id == dag_id)
            .group_by(metrics.c.run_id)
            .order_by(sa.func.max(when).desc())
            .limit(runs)
        )
        q = sa.select(metrics).where(metrics.c.dag_id == dag_id, metrics.c.run_id.in_(last.scalar_subquery()))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q.order_by(when, metrics.c.destination))]

    def upload_in_flight(self, registry_id: int) -> tuple[str, dt.datetime] | None:
        """The run and start of the audience's oldest upload not yet processed (open or finished), if any:
        a sync under way, or one whose uploads the platform is still processing."""
        q = (
            sa.select(uploads.c.run_id, uploads.c.created_at)
            .where(uploads.c.registry_id == registry_id, uploads.c.state.in_(("open", "finished")))
            .order_by(uploads.c.created_at)
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return (row.run_id, row.created_at) if row else None

    def read_metrics(self, dag_id: str | None = None, run_id: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(metrics)
        if dag_id:
            q = q.where(metrics.c.dag_id == dag_id)
        if run_id:
            q = q.where(metrics.c.run_id == run_id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q.order_by(metrics.c.started_at))]


_STAGE_COLUMNS = ("stage_key", "member_id", "row_hash", "payload", "fingerprint")


def _bulk_stage(conn: sa.Connection, rows: list[tuple[str, str, str, str, str | None]]) -> None:
    """Insert stage rows on the driver's own cursor, in the connection's transaction: ``COPY`` on
    PostgreSQL (psycopg2), ``executemany`` of plain tuples elsewhere; SQLAlchemy's executemany of dicts
    cost about a minute per million rows."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        if conn.dialect.name == "postgresql" and hasattr(cursor, "copy_expert"):
            text = io.StringIO()
            csv.writer(text, lineterminator="\n").writerows(rows)
            text.seek(0)
            # empty row hashes and payloads (LEAVING, KEEP_PAYLOAD) are strings; only a missing
            # fingerprint is NULL
            cursor.copy_expert(
                f"COPY as_stage ({', '.join(_STAGE_COLUMNS)}) FROM STDIN WITH (FORMAT csv, "
                "FORCE_NOT_NULL (stage_key, member_id, row_hash, payload))",
                text,
            )
        else:
            marks = ", ".join(
                "%s" if conn.dialect.paramstyle in ("format", "pyformat") else "?" for _ in rows[0]
            )
            cursor.executemany(f"INSERT INTO as_stage ({', '.join(_STAGE_COLUMNS)}) VALUES ({marks})", rows)
    finally:
        cursor.close()


#: rows fetched per database round trip by :func:`fetch_columns`
FETCH_ROWS = 100_000


def fetch_columns(engine: Engine, query: sa.Select[Any], width: int) -> list[list[Any]]:
    """The query's rows as columns, fetched on the driver's own cursor.

    SQLAlchemy builds a Row object per row; for a million ledger rows that costs several seconds, the
    plain cursor a fraction of it. Only plain columns may be selected (no type that converts values),
    so nothing is lost by skipping SQLAlchemy's result processing.
    """
    columns: list[list[Any]] = [[] for _ in range(width)]
    with engine.connect() as conn:
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


def in_slice(column: sa.ColumnElement[str], prefix: str) -> list[sa.ColumnElement[bool]]:
    """``column`` starts with ``prefix``, as a range the primary-key index serves."""
    if not prefix:
        return []
    after = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return [column >= prefix, column < after]


def fetch_text(engine: Engine, column: sa.ColumnElement[str], *where: sa.ColumnElement[bool]) -> str:
    """Every value of ``column`` in the ledger rows matching ``where``, joined into one text by the
    database: about twice as fast as a row per value (the text is all in memory once: 32 bytes a
    fingerprint, 320 MB at ten million members)."""
    joined = (
        sa.func.string_agg(column, "")
        if engine.dialect.name == "postgresql"
        else sa.func.group_concat(column, "")
    )
    with engine.connect() as conn:
        return conn.execute(sa.select(joined).where(*where)).scalar() or ""


def has_value(payload: sa.ColumnElement[str], key: str) -> sa.ColumnElement[bool]:
    """Whether a stored payload holds a non-empty value under ``key``, tested in SQL on both databases.

    Payloads are the canonical JSON of ``keys.payload_json`` (no spaces; every value a string without
    quotes: a hash, a sealed token or ``""``), so ``"KEY":"`` not followed by ``"`` is a value. LIKE rather
    than the databases' different JSON functions (SQLite's LIKE ignores ASCII case: one payload never
    holds two keys that differ only by case); ``_`` and ``%`` in the key are escaped.
    """
    escaped = key.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return sa.and_(
        payload.like(f'%"{escaped}":"%', escape="\\"), sa.not_(payload.like(f'%"{escaped}":""%', escape="\\"))
    )


def _may_be_on_platform() -> sa.ColumnElement[bool]:
    """Ledger rows the platform may hold: confirmed, in flight, or with hashes sent earlier."""
    return sa.or_(ledger.c.status.in_(("sent", "in_progress")), ledger.c.sent_payload.is_not(None))


def _removing() -> sa.ColumnElement[bool]:
    """Ledger rows already in a removal upload (not to be queued again)."""
    return sa.and_(ledger.c.op == "remove", ledger.c.status == "in_progress", ledger.c.upload_id.is_not(None))


def _queue_removal(run_id: str, now: dt.datetime) -> dict[str, Any]:
    """Ledger values that queue a member's removal, with whatever hashes may be on the platform."""
    return {
        "status": "pending",
        "op": "remove",
        "sent_payload": sa.func.coalesce(ledger.c.sent_payload, ledger.c.payload),
        "upload_id": None,
        "batch_seq": None,
        "last_run_id": run_id,
        "updated_at": now,
    }


def ledger_moved(conn: sa.Connection, registry_id: int) -> None:
    """Record, in the transaction of a write to an audience's ledger rows, that they moved.

    Every write of ledger rows calls it (``tests/unit/test_architecture.py`` checks): extraction reads the
    number with the fingerprints it reuses, and the sync compares only the rows that changed as long as
    the number has not moved since (``core/delta.py``). On PostgreSQL the update also serialises
    concurrent writers of one audience until commit.
    """
    conn.execute(
        registry.update()
        .where(registry.c.id == registry_id)
        .values(ledger_generation=registry.c.ledger_generation + 1)
    )


def _entry(row: Any) -> RegistryEntry:
    return RegistryEntry(
        id=row.id,
        platform=row.platform,
        account=row.account,
        segment_name=row.segment_name,
        audience_id=row.audience_id,
        origin=row.origin,
        last_logical_date=row.last_logical_date,
    )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
