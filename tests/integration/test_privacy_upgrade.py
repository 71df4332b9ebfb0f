"""A v1 state database (plain SHA-256 member ids, plain payloads) upgrades in place to v2, on SQLite and
PostgreSQL, and the next real sync against the Meta sandbox sends no member request.

The v1 database is written here exactly the way the v1 code wrote it (the v1 formulas, via SQL): member id
= SHA-256 of the stripped member key, row hash = SHA-256 of the payload JSON, payloads holding Meta's
unhashed MADID and EXTERN_ID in clear. Its members are put on the sandbox audience through the real
destination, as a v1 sync would have left them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import secrets
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest
import sqlalchemy as sa

from audience_sync.core import migrations
from audience_sync.core.delta import StagedGroup
from audience_sync.core.extract import extract_and_stage
from audience_sync.core.keys import ENCRYPTED_KEYS, StateKeyError, StateKeys
from audience_sync.core.ledger import StateStore, ledger, metadata, registry, schema_version, stage
from audience_sync.core.normalize import RowHasher
from audience_sync.core.sync import RetryPolicy, SyncRequest, sync_audience
from audience_sync.destinations.meta import MetaDestination, make_meta_api
from tests.conftest import SANDBOX_TOKEN

IDENTIFIERS = {"email": "email", "phone": "phone", "madid": "madid", "external_id": "external_id"}
SEGMENT = "upgraded_users"
FAST = RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.05)
GROUP = list(range(1, 61))
REMOVED_UNDER_V1 = 99  # a member v1 already took off the platform
_accounts = itertools.count(8 * 10**13 + secrets.randbelow(10**12))
_runs = itertools.count(1)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def customer(i: int) -> dict[str, str]:
    return {
        "customer_id": f" cust-{i:04d} ",  # v1 stripped the key before hashing it
        "email": f" Member.{i}@Example.org",
        "phone": f"+44 20 7946 {i:04d}" if i % 5 else "",
        "madid": str(uuid.UUID(int=i * 7919 + 1)).upper() if i % 3 else "",
        "external_id": f"CRM-{i:05d}-ZQ" if i % 4 else "",
    }


HASHER = RowHasher("meta", IDENTIFIERS)
SCHEMA = HASHER.schema


def plain_values(i: int) -> tuple[str, ...]:
    r = HASHER.hash_row(customer(i))
    assert r.valid
    return r.values


def v1_payload(i: int) -> str:
    """The payload JSON exactly as v1's ``staged_row`` wrote it."""
    return json.dumps(dict(zip(SCHEMA, plain_values(i), strict=True)), separators=(",", ":"))


def v1_member_id(i: int) -> str:
    return sha(customer(i)["customer_id"].strip())


#: what v2 and later added: whole tables, and columns of tables v1 had
V2_TABLES = {"as_state_keys", "as_uploads", "as_stage_owner", "as_upload_receipts"}
V2_COLUMNS = {
    "upload_id",
    "batch_seq",
    *(f"run_{k}" for k in ("added", "removed", "resent", "unchanged", "rejected")),
    "fingerprint",  # v3
}


def v1_metadata() -> sa.MetaData:
    """The tables as v1 created them: today's, less what v2 and v3 added."""
    md = sa.MetaData()
    for t in metadata.sorted_tables:
        if t.name in V2_TABLES:
            continue
        columns = [c._copy() for c in t.columns if c.name not in V2_COLUMNS]
        uniques = [
            sa.UniqueConstraint(*(c.name for c in u.columns), name=u.name)
            for u in t.constraints
            if isinstance(u, sa.UniqueConstraint)
        ]
        sa.Table(t.name, md, *columns, *uniques)
    return md


def write_v1_database(url: str, dest: MetaDestination) -> int:
    """Tables as v1 had them, version 1, an audience whose members were synced by v1. Returns the registry id."""
    engine = sa.create_engine(url)
    now = dt.datetime.now(dt.UTC)
    v1_metadata().create_all(engine)
    audience = dest.create_audience(SEGMENT, "synced by v1")
    rows = [list(plain_values(i)) for i in GROUP]
    upload = dest.open_upload(audience.id, "add", key="synced by v1", estimated_total=len(rows))
    dest.send_batch(upload, 1, list(SCHEMA), rows, last=True)
    with engine.begin() as c:
        c.execute(schema_version.insert().values(version=1, applied_at=now))
        rid = c.execute(
            registry.insert().values(
                platform="meta",
                account=dest.account,
                segment_name=SEGMENT,
                audience_id=audience.id,
                origin="created",
                created_at=now,
                updated_at=now,
            )
        ).inserted_primary_key[0]
        common = {"registry_id": rid, "op": None, "last_run_id": "v1_run", "updated_at": now}
        c.execute(
            ledger.insert(),
            [
                {
                    **common,
                    "member_id": v1_member_id(i),
                    "status": "sent",
                    "row_hash": sha(v1_payload(i)),
                    "payload": v1_payload(i),
                    "sent_payload": v1_payload(i),
                }
                for i in GROUP
            ]
            + [
                {
                    **common,
                    "member_id": v1_member_id(REMOVED_UNDER_V1),
                    "status": "removed",
                    "row_hash": sha(v1_payload(REMOVED_UNDER_V1)),
                    "payload": v1_payload(REMOVED_UNDER_V1),
                    "sent_payload": None,
                }
            ],
        )
        # a run killed under v1 left its stage behind, raw MADIDs included
        c.execute(
            stage.insert(),
            [
                {
                    "stage_key": "v1",
                    "member_id": v1_member_id(i),
                    "row_hash": sha(v1_payload(i)),
                    "payload": v1_payload(i),
                }
                for i in GROUP[:5]
            ],
        )
    engine.dispose()
    return int(rid)


def raw_values(ids: Iterable[int]) -> set[str]:
    out: set[str] = set()
    for i in ids:
        c = customer(i)
        out |= {v.strip().lower() for k, v in c.items() if k != "customer_id" and v}
        out.add(v1_member_id(i))
    out |= {
        v.lower()
        for i in ids
        for k, v in zip(SCHEMA, plain_values(i), strict=True)
        if k in ENCRYPTED_KEYS and v
    }
    return out


def dump(url: str) -> str:
    engine = sa.create_engine(url)
    with engine.connect() as c:
        text = "\n".join(
            str(tuple(r))
            for t in sorted(sa.inspect(engine).get_table_names())
            for r in c.execute(sa.text(f"SELECT * FROM {t}"))
        )
    engine.dispose()
    return text.lower()


class World:
    def __init__(self, srv, url: str) -> None:
        self.srv, self.url = srv, url
        self.account = f"act_{next(_accounts)}"

    def dest(self) -> MetaDestination:
        return MetaDestination(make_meta_api(SANDBOX_TOKEN, graph_url=self.srv.url), self.account)

    def members(self, audience_id: str) -> set[frozenset[tuple[str, str]]]:
        return {frozenset(m.items()) for m in self.srv.meta.members(audience_id)}

    def expected(self, ids: Iterable[int]) -> set[frozenset[tuple[str, str]]]:
        return {frozenset((k, v) for k, v in zip(SCHEMA, plain_values(i), strict=True) if v) for i in ids}

    def sync(self, store: StateStore, keys: StateKeys, ids: list[int], tmp: Path):
        counts = extract_and_stage(
            [[customer(i) for i in ids]],
            key="customer_id",
            identifiers=IDENTIFIERS,
            platforms=["meta"],
            staging_dir=tmp / f"run{next(_runs)}",
            keys=keys,
        )
        assert counts.valid == len(ids)
        req = SyncRequest(
            dag_id="dag_upgrade",
            run_id=f"run_{next(_runs)}",
            platform="meta",
            account=self.account,
            segment_name=SEGMENT,
            schema=tuple(SCHEMA),
        )
        return sync_audience(self.dest(), store, req, StagedGroup(counts.staged["meta"]["path"]), retry=FAST)

    def member_requests(self, since: int) -> list[dict]:
        return self.srv.meta.member_requests(since)

    def mark(self) -> int:
        return self.srv.meta.last_seq()


@pytest.fixture
def world(fresh_sandbox, state_url: str) -> World:
    return World(fresh_sandbox, state_url)


def test_v1_ledger_upgrades_in_place_and_the_next_run_sends_nothing(world: World, tmp_path: Path) -> None:
    rid = write_v1_database(world.url, world.dest())
    raw = raw_values([*GROUP, REMOVED_UNDER_V1])
    before = dump(world.url)
    assert [v for v in raw if v in before]  # the v1 database really holds raw MADIDs and plain key hashes
    keys = StateKeys.generate()

    store = StateStore(world.url, keys=keys)  # upgrades

    with store.engine.connect() as c:
        assert c.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() == migrations.LATEST
        rows = {r.member_id: r for r in c.execute(sa.select(ledger).where(ledger.c.registry_id == rid))}
        assert c.execute(sa.select(sa.func.count()).select_from(stage)).scalar() == 0
    assert set(rows) == {keys.rekey(v1_member_id(i)) for i in [*GROUP, REMOVED_UNDER_V1]}
    assert set(rows) == {keys.member_id(customer(i)["customer_id"]) for i in [*GROUP, REMOVED_UNDER_V1]}
    for i in GROUP:
        r = rows[keys.member_id(customer(i)["customer_id"])]
        assert r.status == "sent" and r.row_hash == keys.row_hash(v1_payload(i))
        stored, sent = json.loads(r.payload), json.loads(r.sent_payload)
        assert list(stored) == list(SCHEMA)  # the order values are sent in survives
        assert keys.open_payload(stored) == keys.open_payload(sent) == json.loads(v1_payload(i))
        for k in ENCRYPTED_KEYS & set(SCHEMA):
            plain = json.loads(v1_payload(i))[k]
            assert (stored[k] != plain and stored[k].startswith("gAAAA")) if plain else stored[k] == ""
    removed = rows[keys.member_id(customer(REMOVED_UNDER_V1)["customer_id"])]
    assert removed.status == "removed" and removed.sent_payload is None
    after = dump(world.url)
    assert not [v for v in raw if v in after], "raw identifiers or plain member-key hashes left after upgrade"

    # the upgrade is idempotent: a second pass finds version 3 and changes nothing
    assert migrations.upgrade_v1_to_v2(store.engine, keys) is False
    assert migrations.upgrade_v2_to_v3(store.engine) is False
    assert dump(world.url) == after

    # the next run, same group, real extract and sync: not a single member request
    (audience,) = world.srv.meta.audiences(world.account)
    since = world.mark()
    outcome = world.sync(store, keys, GROUP, tmp_path)
    assert world.member_requests(since) == []
    assert outcome.counts["sent"] == len(GROUP) and outcome.counts["pending"] == 0
    assert outcome.audience_id == audience["id"] and outcome.audience_action == "reused"

    # a member with a MADID and an external id leaves: its removal resends the exact (decrypted) values
    leaver = next(i for i in GROUP if customer(i)["madid"] and customer(i)["external_id"])
    since = world.mark()
    world.sync(store, keys, [i for i in GROUP if i != leaver], tmp_path)
    reqs = world.member_requests(since)
    assert [(e["op"], e["status"], e.get("num_rows")) for e in reqs] == [("remove", 200, 1)]
    assert world.members(audience["id"]) == world.expected(i for i in GROUP if i != leaver)
    store.engine.dispose()


def test_upgrade_refuses_to_run_without_keys_and_leaves_v1_untouched(world: World) -> None:
    write_v1_database(world.url, world.dest())
    before = dump(world.url)
    with pytest.raises(StateKeyError, match="needs the state's keys"):
        StateStore(world.url)
    assert dump(world.url) == before


def test_a_wrong_key_fails_fast_instead_of_making_every_member_new(world: World) -> None:
    write_v1_database(world.url, world.dest())
    keys = StateKeys.generate()
    StateStore(world.url, keys=keys).engine.dispose()
    other = StateKeys.generate()
    with pytest.raises(StateKeyError, match="member_id_key and encryption_key are not") as exc:
        StateStore(world.url, keys=other)
    for text in (*keys.as_text().values(), *other.as_text().values()):
        assert text not in str(exc.value)  # never a key in an error
    half = StateKeys.from_text(
        {
            "member_id_key": keys.as_text()["member_id_key"],
            "encryption_key": other.as_text()["encryption_key"],
        },
        "t",
    )
    with pytest.raises(StateKeyError, match="encryption_key is not"):
        StateStore(world.url, keys=half)


def test_concurrent_first_opens_upgrade_once(world: World) -> None:
    write_v1_database(world.url, world.dest())
    # creating the new table concurrently is ensure_schema's race (covered there); this is the upgrade's
    metadata.create_all(sa.create_engine(world.url))
    keys = StateKeys.generate()
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            StateStore(world.url, keys=keys).engine.dispose()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    engine = sa.create_engine(world.url)
    with engine.connect() as c:
        ids = set(c.execute(sa.select(ledger.c.member_id)).scalars())
        versions = sorted(c.execute(sa.select(schema_version.c.version)).scalars())
    engine.dispose()
    assert ids == {
        keys.member_id(customer(i)["customer_id"]) for i in [*GROUP, REMOVED_UNDER_V1]
    }  # keyed once
    assert versions == [1, 2, 3, 4, 5, 6, 7]
