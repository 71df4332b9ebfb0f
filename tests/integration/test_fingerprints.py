"""Row fingerprints (``core/fingerprints.py``): a rerun normalises and hashes only the rows whose raw values
changed, on SQLite and PostgreSQL, against the Meta sandbox; a rules change re-hashes every row; the
fingerprints reveal no raw value; a v2 state database upgrades to v4 in place; a rerun whose ledger has not
moved since extraction compares only the changed rows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import itertools
import secrets
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from audience_sync.core import delta, migrations
from audience_sync.core.delta import Comparison, StagedGroup, StaleExtraction, compare, stage_changes
from audience_sync.core.extract import ExtractCounts, extract_and_stage, staged_parts
from audience_sync.core.fingerprints import known_in_background, rules_version
from audience_sync.core.keys import StateKeys
from audience_sync.core.ledger import StateStore, ledger, ledger_moved, metadata, schema_version, stage
from audience_sync.core.normalize import RowHasher, get_rules
from audience_sync.core.partitions import partition_of
from audience_sync.core.sync import RetryPolicy, SyncRequest, plan_sync, sync_audience
from audience_sync.destinations.meta import MetaDestination, make_meta_api
from tests.conftest import SANDBOX_TOKEN

IDENTIFIERS = {"email": "email", "phone": "phone", "madid": "madid"}
HASHER = RowHasher("meta", IDENTIFIERS)
FAST = RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.05)
GROUP = list(range(40))
_accounts = itertools.count(7 * 10**13 + secrets.randbelow(10**12))
_runs = itertools.count(1)


def customer(i: int, version: int = 0) -> dict[str, str]:
    return {
        "customer_id": f"cust-{i:04d}",
        "email": f" Member.{i}.{version}@Example.org" if version else f" Member.{i}@Example.org",
        "phone": f"+44 20 7946 {i:04d}" if i % 4 else "",
        "madid": f"6D92078A-8246-4BA4-AE5B-{i:012d}" if i % 3 == 0 else "",
    }


def sent_values(c: dict[str, str]) -> frozenset[tuple[str, str]]:
    row = HASHER.hash_row(c)
    return frozenset((k, v) for k, v in zip(HASHER.schema, row.values, strict=True) if v)


class World:
    def __init__(self, srv, url: str, tmp: Path) -> None:
        self.srv, self.url, self.tmp = srv, url, tmp
        self.account = f"act_{next(_accounts)}"
        self.segment = f"fingerprinted_{next(_runs)}"
        self.keys = StateKeys.generate()
        self.store = StateStore(url, keys=self.keys)

    def dest(self) -> MetaDestination:
        return MetaDestination(make_meta_api(SANDBOX_TOKEN, graph_url=self.srv.url), self.account)

    def extract(self, rows: list[dict[str, str]], **kw) -> ExtractCounts:
        # as the extract task: the fingerprints are read in a thread while the worker processes start
        known = known_in_background(self.store, [("meta", self.account, self.segment)])
        return extract_and_stage(
            [rows[i : i + 16] for i in range(0, len(rows), 16)],  # several chunks: the worker pool runs
            key="customer_id",
            identifiers=IDENTIFIERS,
            platforms=["meta"],
            staging_dir=self.tmp / f"run{next(_runs)}",
            keys=self.keys,
            known=known,
            workers=2,
            **kw,
        )

    def sync(self, counts: ExtractCounts, mode: str = "mirror"):
        req = SyncRequest(
            dag_id="dag_fingerprints",
            run_id=f"run_{next(_runs)}",
            platform="meta",
            account=self.account,
            segment_name=self.segment,
            schema=tuple(HASHER.schema),
            mode=mode,
        )
        path = counts.staged["meta"]["path"]
        return sync_audience(self.dest(), self.store, req, StagedGroup(path), retry=FAST)

    def run(self, rows: list[dict[str, str]], mode: str = "mirror", **kw):
        counts = self.extract(rows, **kw)
        return counts, self.sync(counts, mode)

    def members(self, audience_id: str) -> set[frozenset[tuple[str, str]]]:
        return {frozenset(m.items()) for m in self.srv.meta.members(audience_id)}

    def member_requests(self, since: int) -> list[dict]:
        return self.srv.meta.member_requests(since)

    def mark(self) -> int:
        return self.srv.meta.last_seq()

    def registry_id(self) -> int:
        entry = self.store.get_registry("meta", self.account, self.segment)
        assert entry is not None
        return entry.id


@pytest.fixture
def world(fresh_sandbox, state_url: str, tmp_path: Path) -> World:
    w = World(fresh_sandbox, state_url, tmp_path)
    yield w
    w.store.engine.dispose()


def test_an_unchanged_rerun_normalises_no_row_and_sends_nothing(world: World) -> None:
    rows = [customer(i) for i in GROUP]
    first, out = world.run(rows)
    assert (first.hashed, first.reused) == (len(GROUP), 0)  # no ledger yet: nothing to skip
    since = world.mark()

    again, out2 = world.run(rows)

    assert (again.hashed, again.reused, again.valid) == (0, len(GROUP), len(GROUP))
    assert world.member_requests(since) == []
    assert out2.counts["sent"] == len(GROUP) and out2.run["unchanged"] == len(GROUP)
    assert world.members(out.audience_id) == {sent_values(c) for c in rows}


def test_a_changed_raw_value_is_rehashed_and_resent_and_leavers_removed(world: World) -> None:
    rows = [customer(i) for i in GROUP]
    _, out = world.run(rows)
    changed, leaver = 3, 7  # member 3 (with a MADID) changes e-mail, member 7 leaves, member 99 joins
    rows2 = [customer(i, version=1 if i == changed else 0) for i in GROUP if i != leaver] + [customer(99)]
    since = world.mark()

    counts, out2 = world.run(rows2)

    assert (counts.hashed, counts.reused) == (2, len(GROUP) - 2)
    assert world.members(out.audience_id) == {sent_values(c) for c in rows2}
    ops = sorted((e["op"], e.get("num_rows")) for e in world.member_requests(since))
    assert ops == [("add", 2), ("remove", 2)]  # the old row of the changer and the leaver; changer + joiner
    assert out2.counts["sent"] == len(rows2) and out2.counts["removed"] == 1


def test_a_rules_version_change_rehashes_everything_and_sends_nothing(world: World) -> None:
    rows = [customer(i) for i in GROUP]
    world.run(rows)
    since = world.mark()

    counts, _ = world.run(rows, rules_versions={"meta": "rules changed"})
    again, _ = world.run(rows, rules_versions={"meta": "rules changed"})

    assert (counts.hashed, counts.reused) == (len(GROUP), 0)  # every fingerprint changed with the rules
    assert world.member_requests(since) == []  # the same hashes: nothing to send
    assert (again.hashed, again.reused) == (0, len(GROUP))  # the new fingerprints were recorded
    # the default version follows the rules table itself
    meta = get_rules("meta")
    assert rules_version(meta) == rules_version(get_rules("meta"))
    assert rules_version(dataclasses.replace(meta, standalone=meta.standalone - {"phone"})) != rules_version(
        meta
    )


def test_a_replace_of_unchanged_rows_resends_the_ledger_values(world: World) -> None:
    rows = [customer(i) for i in GROUP]
    _, out = world.run(rows)
    since = world.mark()

    counts, out2 = world.run(rows, mode="replace")

    assert counts.reused == len(GROUP)
    assert [(e["op"], e.get("num_rows")) for e in world.member_requests(since)] == [("replace", len(GROUP))]
    assert world.members(out.audience_id) == {sent_values(c) for c in rows}  # MADIDs decrypted, exact
    assert out2.counts["sent"] == len(GROUP)


def test_a_deleted_audience_is_recreated_from_unchanged_rows_with_the_ledger_values(world: World) -> None:
    rows = [customer(i) for i in GROUP]
    _, first = world.run(rows)
    world.dest().api.call("DELETE", (first.audience_id,))
    counts = world.extract(rows)
    assert counts.reused == len(GROUP)

    req = SyncRequest(
        dag_id="dag_fingerprints",
        run_id="plan",
        platform="meta",
        account=world.account,
        segment_name=world.segment,
        schema=tuple(HASHER.schema),
    )
    plan = plan_sync(world.dest(), world.store, req, StagedGroup(counts.staged["meta"]["path"]), retry=FAST)
    out = world.sync(counts)

    assert plan["audience"]["id"] is None and plan["adds"] == len(GROUP)  # would re-create, no error
    assert out.audience_action == "recreated" and out.audience_id != first.audience_id
    assert world.members(out.audience_id) == {sent_values(c) for c in rows}  # MADIDs decrypted, exact


def test_a_ledger_changed_since_extraction_fails_the_sync_instead_of_guessing(world: World) -> None:
    rows = [customer(i) for i in GROUP]
    world.run(rows)
    counts = world.extract(rows)
    with world.store.engine.begin() as c:  # another run changed a member's row in between
        c.execute(
            ledger.update()
            .where(ledger.c.member_id == world.keys.member_id("cust-0005"))
            .values(fingerprint="0" * 32)
        )
        ledger_moved(c, world.registry_id())  # as every write of ledger rows does
    with pytest.raises(StaleExtraction, match="run the extract task again"):
        world.sync(counts)


def _outcomes(world: World, staged: StagedGroup) -> tuple[Comparison, set[tuple], Comparison]:
    """What a plan and a mirror sync would make of the staged group: comparison, staged ledger changes."""
    store, rid = world.store, world.registry_id()
    revoked = [world.keys.member_id("cust-0002")]
    planned = compare(store, rid, staged, removals=True, revoked=revoked)
    changes = stage_changes(
        store, rid, staged, mode="mirror", backfill=False, exclude=None, dag_id="d", run_id="r", lease=None
    )
    with store.engine.connect() as c:
        q = sa.select(stage.c.member_id, stage.c.row_hash, stage.c.payload, stage.c.fingerprint)
        rows = set(c.execute(q.where(stage.c.stage_key == changes.key)).all())
    store.drop_stage(changes.key)
    return planned, rows, changes.comparison


def _ledger_rows_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many ledger rows each comparison reads (the real reader, counted)."""
    read: list[int] = []
    real = delta._ledger_rows

    def counted(*args, **kwargs):
        table = real(*args, **kwargs)
        read.append(table.num_rows)
        return table

    monkeypatch.setattr(delta, "_ledger_rows", counted)
    return read


@pytest.mark.parametrize("partitions", [1, 3])
def test_a_rerun_compares_only_the_changed_rows_and_finds_what_comparing_every_row_finds(
    world: World, monkeypatch: pytest.MonkeyPatch, partitions: int
) -> None:
    rows = [customer(i) for i in GROUP]
    world.run(rows)
    rid = world.registry_id()
    # ledger rows in every state a rerun meets: leaving, waiting to be removed, failed, left before
    world.store.queue_removals(rid, [world.keys.member_id("cust-0011")], "r0")
    ids = [world.keys.member_id(f"cust-{i:04d}") for i in (12, 13)]
    with world.store.engine.begin() as c:
        c.execute(ledger.update().where(ledger.c.member_id == ids[0]).values(status="failed"))
        c.execute(ledger.update().where(ledger.c.member_id == ids[1]).values(status="removed", op=None))
        ledger_moved(c, rid)
    # 3 changes e-mail, 7 and 12 leave, 99 joins, 2 withdraws consent (revoked)
    rows2 = [customer(i, version=1 if i == 3 else 0) for i in GROUP if i not in (2, 7, 12)] + [customer(99)]
    # extracted whole, or in disjoint partitions by member key as mapped extract tasks do
    parts = [[r for r in rows2 if partition_of(r["customer_id"], partitions) == i] for i in range(partitions)]
    assert all(parts)
    extracted = [world.extract(part) for part in parts]
    staged = StagedGroup([counts.staged["meta"]["path"] for counts in extracted])
    assert staged.reuse is not None and staged.reuse.generation == world.store.ledger_generation(rid)
    assert (staged.reuse.registry_id, staged.reuse.reused) == (rid, sum(c.reused for c in extracted))
    # 2, 7 and 12 had fingerprints no row matched; 3's changed (11 and 13 wait, and are hashed again)
    assert len(staged.reuse.unmatched_hex()) == 3
    read = _ledger_rows_read(monkeypatch)

    changed_only = _outcomes(world, staged)
    read_changed = sum(read)
    read.clear()
    staged.reuse = None  # as without extraction's record: every member compared
    every_row = _outcomes(world, staged)

    assert changed_only == every_row
    planned, stage_rows, _ = changed_only
    assert (planned.group, planned.new, planned.removes) == (len(rows2), 1, 3)  # 99 new; 2, 7, 12 out
    # 3 changed, 11 back from its removal, 13 back into the group, 99 new; 2, 7 and 12 leaving
    assert len(stage_rows) == 7
    # the changed rows only (plan, then sync): 11, 12 (waiting), 3, 11, 13 (hashed), 2, 3, 7 (unmatched
    # fingerprints); then every ledger row
    assert (read_changed, sum(read)) == (2 * 8, 2 * len(GROUP))


def test_fingerprints_reveal_no_raw_value(world: World) -> None:
    rows = [customer(i) for i in GROUP]
    counts, _ = world.run(rows)
    staged = pa.concat_tables(pq.read_table(p) for p in staged_parts(counts.staged["meta"]["path"]))
    with world.store.engine.connect() as c:
        stored = set(c.execute(sa.select(ledger.c.fingerprint)).scalars())
    prints = set(staged["fingerprint"].to_pylist())
    assert prints == stored and len(prints) == len(GROUP)
    assert all(len(p) == 32 and int(p, 16) >= 0 for p in prints)
    # no unkeyed digest of any raw value (or of the whole raw row) is a fingerprint
    raw = {v for c in rows for v in c.values() if v} | {"".join(c.values()) for c in rows}
    plain = {f(v.encode()).hexdigest()[:32] for v in raw for f in (hashlib.md5, hashlib.sha256)}
    plain |= {hashlib.blake2b(v.encode(), digest_size=16).hexdigest() for v in raw}
    assert not prints & plain
    text = " ".join(prints).lower()
    assert not [v for v in raw if v.strip().lower() in text]
    # keyed: the same rows under another state's keys give other fingerprints
    theirs = extract_and_stage(
        [rows],
        key="customer_id",
        identifiers=IDENTIFIERS,
        platforms=["meta"],
        staging_dir=world.tmp / "other_keys",
        keys=StateKeys.generate(),
    )
    table = pa.concat_tables(pq.read_table(p) for p in staged_parts(theirs.staged["meta"]["path"]))
    assert len(table) == len(GROUP) and not set(table["fingerprint"].to_pylist()) & prints


def v2_metadata() -> sa.MetaData:
    """The tables as v2 created them: today's, less the v3 fingerprint columns, the v4 generation, the
    v5 group size, the v6 platform sizes and the v7 approvals table."""
    md = sa.MetaData()
    later = {
        ("as_member_ledger", "fingerprint"),
        ("as_stage", "fingerprint"),
        ("as_audience_registry", "ledger_generation"),
        ("as_run_metrics", "group_size"),
        ("as_run_metrics", "audience_size"),
        ("as_run_metrics", "match_rate"),
    }
    for t in metadata.sorted_tables:
        if t.name == "as_approvals":
            continue
        columns = [c._copy() for c in t.columns if (t.name, c.name) not in later]
        sa.Table(t.name, md, *columns)
    ledger_v2 = md.tables["as_member_ledger"].c
    sa.Index("ix_as_ledger_status", ledger_v2.registry_id, ledger_v2.status, ledger_v2.op)
    return md


def test_a_v2_state_upgrades_to_the_latest_in_place_and_the_next_run_sends_nothing(
    fresh_sandbox, state_url: str, tmp_path: Path
) -> None:
    engine = sa.create_engine(state_url)  # the tables as v2 created them, version 2
    v2_metadata().create_all(engine)
    with engine.begin() as c:
        c.execute(schema_version.insert().values(version=2, applied_at=dt.datetime.now(dt.UTC)))
    engine.dispose()

    world = World(fresh_sandbox, state_url, tmp_path)  # opening the store upgrades it
    try:
        with world.store.engine.connect() as c:
            assert sorted(c.execute(sa.select(schema_version.c.version)).scalars()) == [2, 3, 4, 5, 6, 7]
            metrics_columns = {col["name"] for col in sa.inspect(c).get_columns("as_run_metrics")}
            assert {"group_size", "audience_size", "match_rate"} <= metrics_columns
            assert "as_approvals" in sa.inspect(c).get_table_names()
            assert "ledger_generation" in {
                col["name"] for col in sa.inspect(c).get_columns("as_audience_registry")
            }
            for table in ("as_member_ledger", "as_stage"):
                assert "fingerprint" in {col["name"] for col in sa.inspect(c).get_columns(table)}
            (index,) = [
                i for i in sa.inspect(c).get_indexes("as_member_ledger") if i["name"] == "ix_as_ledger_status"
            ]
            assert index["column_names"] == ["registry_id", "status", "op"]  # no random keys in an index
            assert "ix_as_ledger_unprinted" in {
                i["name"] for i in sa.inspect(c).get_indexes("as_member_ledger")
            }
        assert migrations.upgrade_v2_to_v3(world.store.engine) is False  # idempotent
        assert migrations.upgrade_v3_to_v4(world.store.engine) is False
        assert migrations.upgrade_v4_to_v5(world.store.engine) is False
        assert migrations.upgrade_v5_to_v6(world.store.engine) is False
        assert migrations.upgrade_v6_to_v7(world.store.engine) is False
        rows = [customer(i) for i in GROUP]
        _, out = world.run(rows)
        with world.store.engine.begin() as c:  # as a v2 ledger holds them: rows without fingerprints
            c.execute(ledger.update().values(fingerprint=None))
        since = world.mark()

        counts, _ = world.run(rows)
        again, _ = world.run(rows)

        assert (counts.hashed, counts.reused) == (len(GROUP), 0)  # no fingerprints yet: hashed once
        assert world.member_requests(since) == []  # the same hashes as before: nothing sent
        assert (again.hashed, again.reused) == (0, len(GROUP))  # and fingerprinted from then on
        assert world.members(out.audience_id) == {sent_values(c) for c in rows}
    finally:
        world.store.engine.dispose()
