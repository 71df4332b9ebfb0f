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
  tokens and decrypted when rows are read for sending (:meth:`StateStore.iter_work`). ``row_hash`` is a
  keyed HMAC of the plaintext payload.
  ``status`` is pending / in_progress / sent / failed / removed and ``op`` the operation it is
  waiting for (``add`` or ``remove``).
- ``as_run_metrics``: one row per (dag, run, destination) with the counts of that run.
- ``as_state_keys``: a fingerprint of each key the state was written with, so a wrong key fails fast
  instead of making every member look new.
- ``as_locks``: one row per audience being synced (platform, account, segment), with a lease, so no two
  runs upload to one audience at once. A retry of the same task takes its own lock over.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from audience_sync.core import migrations
from audience_sync.core.errors import AudienceSyncError
from audience_sync.core.keys import ENCRYPTED_KEYS, StateKeyError, StateKeys

#: 2: keyed member ids and row hashes, unhashed identifiers encrypted (``migrations.py`` upgrades v1)
SCHEMA_VERSION = migrations.LATEST

STATUSES = ("pending", "in_progress", "sent", "failed", "removed")

metadata = sa.MetaData()

schema_version = sa.Table(
    "as_schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
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
    sa.Column("last_logical_date", sa.DateTime(timezone=True), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
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
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Index("ix_as_ledger_status", ledger.c.registry_id, ledger.c.status, ledger.c.op)

stage = sa.Table(
    "as_stage",
    metadata,
    sa.Column("stage_key", sa.String(64), primary_key=True),
    sa.Column("member_id", sa.String(64), primary_key=True),
    sa.Column("row_hash", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
)

state_keys = sa.Table(
    "as_state_keys",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),  # member_id_key | encryption_key
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

locks = sa.Table(
    "as_locks",
    metadata,
    sa.Column("lock_key", sa.String(300), primary_key=True),
    sa.Column("owner", sa.String(500), nullable=False),
    sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)

metrics = sa.Table(
    "as_run_metrics",
    metadata,
    sa.Column("dag_id", sa.String(250), primary_key=True),
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("destination", sa.String(128), primary_key=True),
    sa.Column("segment_name", sa.String(128), nullable=False),
    sa.Column("audience_id", sa.String(64), nullable=True),
    sa.Column("logical_date", sa.DateTime(timezone=True), nullable=True),
    sa.Column("total", sa.Integer, nullable=False, default=0),
    sa.Column("sent", sa.Integer, nullable=False, default=0),
    sa.Column("in_progress", sa.Integer, nullable=False, default=0),
    sa.Column("pending", sa.Integer, nullable=False, default=0),
    sa.Column("failed", sa.Integer, nullable=False, default=0),
    sa.Column("removed", sa.Integer, nullable=False, default=0),
    sa.Column("invalid", sa.Integer, nullable=False, default=0),
    sa.Column("excluded", sa.Integer, nullable=False, default=0),
    sa.Column("requests", sa.Integer, nullable=False, default=0),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("note", sa.Text, nullable=True),
)

COUNT_KEYS = ("total", "sent", "in_progress", "pending", "failed", "removed", "invalid", "excluded")


class LockTimeout(AudienceSyncError):
    """Another run kept the audience's lock for longer than we were willing to wait."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; treat them as UTC so comparisons work on both databases."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


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


def dumps_payload(payload: Mapping[str, str]) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


class StateStore:
    """Registry, ledger and metrics on one SQLAlchemy engine.

    :param url: a SQLAlchemy URL (``sqlite:///path.db`` or ``postgresql+psycopg2://...``) or an Engine.
    :param keys: the state's keys. Needed to upgrade a v1 database and to read rows for sending; without
        them the store still serves the registry, counts and metrics. Given keys are checked against the
        fingerprints the database was created with.
    """

    def __init__(self, url: str | sa.URL | Engine, keys: StateKeys | None = None) -> None:
        self.keys = keys
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
        """Create the tables on first use and record the schema version (idempotent, race-safe)."""
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
    def stage_members(self, rows: Iterable[tuple[str, str, str]], chunk: int = 5000) -> str:
        """Bulk-load (member_id, row_hash, payload_json) rows into the stage table; return the stage key.

        Rows come as staged (``StateKeys.staged_row``): keyed ids and hashes, unhashed identifiers sealed.
        """
        key = uuid.uuid4().hex
        buf: list[dict[str, str]] = []
        with self.engine.begin() as conn:
            for member_id, row_hash, payload in rows:
                buf.append(
                    {"stage_key": key, "member_id": member_id, "row_hash": row_hash, "payload": payload}
                )
                if len(buf) >= chunk:
                    conn.execute(stage.insert(), buf)
                    buf = []
            if buf:
                conn.execute(stage.insert(), buf)
        return key

    def drop_stage(self, key: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(stage.delete().where(stage.c.stage_key == key))

    def plan_counts(self, registry_id: int, key: str, *, removals: bool) -> dict[str, int]:
        """What applying a stage would do, without changing anything.

        ``adds``: members to send (new, changed, or not yet confirmed); ``new``: unknown to the ledger;
        ``changed``: confirmed on the platform with other hashes (the old ones get removed first);
        ``removes``: members the platform may hold that left the group; ``unchanged``: nothing to do.
        """
        s, lg = stage.alias("s"), ledger.alias("l")
        join = s.outerjoin(lg, sa.and_(lg.c.registry_id == registry_id, lg.c.member_id == s.c.member_id))
        same = sa.and_(lg.c.status == "sent", lg.c.row_hash == s.c.row_hash)
        in_stage = (
            sa.select(
                sa.func.count().label("n"),
                sa.func.sum(sa.case((lg.c.member_id.is_(None), 1), else_=0)).label("new"),
                sa.func.sum(sa.case((same, 1), else_=0)).label("unchanged"),
                sa.func.sum(
                    sa.case(
                        (sa.and_(lg.c.sent_payload.is_not(None), lg.c.row_hash != s.c.row_hash), 1), else_=0
                    )
                ).label("changed"),
            )
            .select_from(join)
            .where(s.c.stage_key == key)
        )
        with self.engine.connect() as conn:
            n, new, unchanged, changed = (int(v or 0) for v in conn.execute(in_stage).one())
            removes = 0
            if removals:
                removes = conn.execute(
                    sa.select(sa.func.count())
                    .select_from(ledger)
                    .where(
                        ledger.c.registry_id == registry_id,
                        _may_be_on_platform(),
                        ~sa.exists().where(stage.c.stage_key == key, stage.c.member_id == ledger.c.member_id),
                    )
                ).scalar_one()
        return {
            "group": n,
            "adds": n - unchanged,
            "new": new,
            "changed": changed,
            "removes": int(removes),
            "unchanged": unchanged,
        }

    def members_on_platform(self, registry_id: int, member_ids: set[str]) -> int:
        """How many of these members the platform may hold (for planning consent removals)."""
        ids = list(member_ids)
        n = 0
        with self.engine.connect() as conn:
            for i in range(0, len(ids), 900):
                n += conn.execute(
                    sa.select(sa.func.count())
                    .select_from(ledger)
                    .where(
                        ledger.c.registry_id == registry_id,
                        ledger.c.member_id.in_(ids[i : i + 900]),
                        _may_be_on_platform(),
                    )
                ).scalar_one()
        return n

    def apply_stage(self, registry_id: int, key: str, run_id: str, *, removals: bool) -> None:
        """Turn the staged group into pending ledger work, in bulk SQL.

        - new members, changed members (``row_hash`` differs), and members not yet confirmed
          (pending / in_progress / failed / removed) become ``pending``/``add`` with the staged payload;
        - with ``removals``: members confirmed on the platform (or possibly, ``in_progress``) but not in
          the stage become ``pending``/``remove``; unconfirmed ones that left the group are ``removed``.
        """
        now = utcnow()
        staged = sa.select(stage.c.member_id, stage.c.row_hash, stage.c.payload).where(
            stage.c.stage_key == key
        )
        with self.engine.begin() as conn:
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
                        "last_run_id",
                        "updated_at",
                    ],
                    sa.select(
                        sa.literal(registry_id),
                        stage.c.member_id,
                        sa.literal("pending"),
                        sa.literal("add"),
                        stage.c.row_hash,
                        stage.c.payload,
                        sa.literal(run_id),
                        sa.literal(now, sa.DateTime(timezone=True)),
                    ).where(
                        stage.c.stage_key == key,
                        ~sa.exists().where(
                            ledger.c.registry_id == registry_id, ledger.c.member_id == stage.c.member_id
                        ),
                    ),
                )
            )
            # 2. members already known: re-queue unless already sent with the same hashes
            sub = staged.subquery()
            conn.execute(
                ledger.update()
                .where(
                    ledger.c.registry_id == registry_id,
                    ledger.c.member_id == sub.c.member_id,
                    sa.or_(ledger.c.status != "sent", ledger.c.row_hash != sub.c.row_hash),
                )
                .values(
                    status="pending",
                    op="add",
                    row_hash=sub.c.row_hash,
                    payload=sub.c.payload,
                    last_run_id=run_id,
                    last_error_code=None,
                    updated_at=now,
                )
            )
            if removals:
                gone = ~sa.exists().where(stage.c.stage_key == key, stage.c.member_id == ledger.c.member_id)
                mine = ledger.c.registry_id == registry_id
                # on the platform, or maybe (a batch in flight when a task died): remove what may be there
                conn.execute(
                    ledger.update()
                    .where(
                        mine,
                        gone,
                        _may_be_on_platform(),
                    )
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
            conn.execute(
                ledger.delete().where(ledger.c.registry_id == registry_id, ledger.c.status == "removed")
            )
            conn.execute(
                ledger.update()
                .where(ledger.c.registry_id == registry_id)
                .values(status="pending", op="add", sent_payload=None, updated_at=utcnow())
            )

    def iter_work(self, registry_id: int, op: str, batch_rows: int) -> Iterator[list[PendingRow]]:
        """Yield batches of ledger rows waiting for ``op``, oldest member id first (keyset pagination).

        Rows still ``in_progress`` from a killed attempt are included: their batch was never confirmed.
        """
        last = ""
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    sa.select(ledger.c.member_id, ledger.c.payload, ledger.c.sent_payload)
                    .where(
                        ledger.c.registry_id == registry_id,
                        ledger.c.op == op,
                        ledger.c.status.in_(("pending", "in_progress", "failed")),
                        ledger.c.member_id > last,
                    )
                    .order_by(ledger.c.member_id)
                    .limit(batch_rows)
                ).all()
            if not rows:
                return
            last = rows[-1].member_id
            yield [
                PendingRow(
                    r.member_id, self._open(r.payload), self._open(r.sent_payload) if r.sent_payload else None
                )
                for r in rows
            ]

    def count_work(self, registry_id: int, op: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.count())
                .select_from(ledger)
                .where(
                    ledger.c.registry_id == registry_id,
                    ledger.c.op == op,
                    ledger.c.status.in_(("pending", "in_progress", "failed")),
                )
            ).scalar_one()

    def mark(
        self,
        registry_id: int,
        member_ids: Sequence[str],
        status: str,
        run_id: str,
        *,
        error_code: str | None = None,
        confirm: str | None = None,
    ) -> None:
        """Set the status of a batch of members.

        :param confirm: ``"add"`` copies ``payload`` into ``sent_payload`` (now on the platform) and clears
            ``op``; ``"remove"`` clears ``sent_payload`` and ``op``.
        """
        if status not in STATUSES:
            raise ValueError(f"unknown ledger status {status!r}")
        values: dict[str, Any] = {"status": status, "last_run_id": run_id, "updated_at": utcnow()}
        values["last_error_code"] = error_code
        if confirm == "add":
            values["sent_payload"] = ledger.c.payload
            values["op"] = None
        elif confirm == "remove":
            values["sent_payload"] = None
            values["op"] = None
        with self.engine.begin() as conn:
            for i in range(0, len(member_ids), 900):
                conn.execute(
                    ledger.update()
                    .where(
                        ledger.c.registry_id == registry_id, ledger.c.member_id.in_(member_ids[i : i + 900])
                    )
                    .values(**values)
                )

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
            return {r.member_id: self._open(r.payload) for r in conn.execute(q)}

    def exclude_from_stage(self, key: str, platform: str, account: str, segment_names: Sequence[str]) -> int:
        """Drop from a stage every member currently on the platform in one of these segments' audiences."""
        if not segment_names:
            return 0
        holders = (
            sa.select(ledger.c.member_id)
            .join(registry, registry.c.id == ledger.c.registry_id)
            .where(
                registry.c.platform == platform,
                registry.c.account == account,
                registry.c.segment_name.in_(list(segment_names)),
                ledger.c.status.in_(("sent", "in_progress")),
            )
        )
        with self.engine.begin() as conn:
            return conn.execute(
                stage.delete().where(stage.c.stage_key == key, stage.c.member_id.in_(holders))
            ).rowcount

    def queue_removals(self, registry_id: int, member_ids: Iterable[str], run_id: str) -> int:
        """Mark these members for removal if the platform may hold them (e.g. consent withdrawn)."""
        ids = list(member_ids)
        n = 0
        now = utcnow()
        with self.engine.begin() as conn:
            for i in range(0, len(ids), 900):
                chunk = ids[i : i + 900]
                mine = sa.and_(ledger.c.registry_id == registry_id, ledger.c.member_id.in_(chunk))
                n += conn.execute(
                    ledger.update().where(mine, _may_be_on_platform()).values(**_queue_removal(run_id, now))
                ).rowcount
                conn.execute(
                    ledger.update()
                    .where(mine, ledger.c.status.in_(("pending", "failed")), ledger.c.sent_payload.is_(None))
                    .values(status="removed", op=None, last_run_id=run_id, updated_at=now)
                )
        return n

    def iter_stage(self, key: str, batch_rows: int) -> Iterator[list[tuple[str, dict[str, str]]]]:
        """Yield (member_id, payload) batches of a stage in member id order (keyset pagination), decrypted."""
        last = ""
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    sa.select(stage.c.member_id, stage.c.payload)
                    .where(stage.c.stage_key == key, stage.c.member_id > last)
                    .order_by(stage.c.member_id)
                    .limit(batch_rows)
                ).all()
            if not rows:
                return
            last = rows[-1].member_id
            yield [(r.member_id, self._open(r.payload)) for r in rows]

    def _open(self, stored: str) -> dict[str, str]:
        """A stored payload as sent to the platform: encrypted identifiers decrypted with the state's key."""
        payload: dict[str, str] = json.loads(stored)
        if self.keys is None:
            if any(v and k in ENCRYPTED_KEYS for k, v in payload.items()):
                raise StateKeyError(
                    "reading encrypted identifiers needs the state's keys (StateStore(keys=...))"
                )
            return payload
        return self.keys.open_payload(payload)

    def finish_replace(self, registry_id: int, key: str, run_id: str) -> None:
        """After a completed replace: the stage is exactly what the platform holds."""
        now = utcnow()
        in_stage = sa.exists().where(stage.c.stage_key == key, stage.c.member_id == ledger.c.member_id)
        with self.engine.begin() as conn:
            conn.execute(
                ledger.update()
                .where(ledger.c.registry_id == registry_id, in_stage)
                .values(
                    status="sent",
                    op=None,
                    sent_payload=ledger.c.payload,
                    last_run_id=run_id,
                    last_error_code=None,
                    updated_at=now,
                )
            )
            conn.execute(
                ledger.update()
                .where(ledger.c.registry_id == registry_id, ~in_stage, ledger.c.status != "removed")
                .values(status="removed", op=None, sent_payload=None, last_run_id=run_id, updated_at=now)
            )

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
        """Take the lock, waiting while another owner holds an unexpired lease.

        The same owner (a retry of the same task) takes its own lock over at once.
        :raises LockTimeout: when the lock stays held for ``wait_seconds``.
        """
        deadline = time.monotonic() + wait_seconds
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
                taken = conn.execute(
                    locks.update()
                    .where(
                        locks.c.lock_key == lock_key, sa.or_(locks.c.owner == owner, locks.c.expires_at < now)
                    )
                    .values(owner=owner, acquired_at=now, expires_at=expires)
                ).rowcount
                holder = conn.execute(sa.select(locks.c.owner).where(locks.c.lock_key == lock_key)).scalar()
            if taken:
                return
            if time.monotonic() > deadline:
                raise LockTimeout(
                    f"audience {lock_key} is being synced by {holder}; gave up after {wait_seconds:.0f}s"
                )
            time.sleep(poll)

    def refresh_lock(self, lock_key: str, owner: str, lease_seconds: float = 1800) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                locks.update()
                .where(locks.c.lock_key == lock_key, locks.c.owner == owner)
                .values(expires_at=utcnow() + dt.timedelta(seconds=lease_seconds))
            )

    def release_lock(self, lock_key: str, owner: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(locks.delete().where(locks.c.lock_key == lock_key, locks.c.owner == owner))

    # ----------------------------------------------------------------- metrics
    def write_metrics(self, row: Mapping[str, Any]) -> None:
        """Insert or update the metrics row of (dag_id, run_id, destination): safe to repeat."""
        values = {c.name: row.get(c.name) for c in metrics.columns if c.name in row}
        for k in COUNT_KEYS + ("requests",):
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

    def read_metrics(self, dag_id: str | None = None, run_id: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(metrics)
        if dag_id:
            q = q.where(metrics.c.dag_id == dag_id)
        if run_id:
            q = q.where(metrics.c.run_id == run_id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q.order_by(metrics.c.started_at))]


def _may_be_on_platform() -> sa.ColumnElement[bool]:
    """Ledger rows the platform may hold: confirmed, in flight, or with hashes sent earlier."""
    return sa.or_(ledger.c.status.in_(("sent", "in_progress")), ledger.c.sent_payload.is_not(None))


def _queue_removal(run_id: str, now: dt.datetime) -> dict[str, Any]:
    """Ledger values that queue a member's removal, with whatever hashes may be on the platform."""
    return {
        "status": "pending",
        "op": "remove",
        "sent_payload": sa.func.coalesce(ledger.c.sent_payload, ledger.c.payload),
        "last_run_id": run_id,
        "updated_at": now,
    }


def _entry(row: Any) -> RegistryEntry:
    return RegistryEntry(
        id=row.id,
        platform=row.platform,
        account=row.account,
        segment_name=row.segment_name,
        audience_id=row.audience_id,
        origin=row.origin,
        last_logical_date=_as_utc(row.last_logical_date),
    )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
