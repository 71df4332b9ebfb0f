"""The Arrow comparison of a group with the ledger gives what the SQL stage gave, slice by slice."""

from __future__ import annotations

import random

import pytest
import sqlalchemy as sa

from audience_sync.core import delta
from audience_sync.core.delta import Exclusion, StagedGroup, compare
from audience_sync.core.keys import StateKeys
from audience_sync.core.ledger import StateStore, ledger, utcnow
from tests.ledger_steps import stage_group

KEYS = StateKeys.generate()
SCHEMA = ("EMAIL",)
STATUSES = ("pending", "in_progress", "sent", "failed", "removed")


def row(k: int, version: int = 0) -> tuple[str, str, str]:
    return KEYS.staged_row(KEYS.member_id(k), SCHEMA, [f"{k:060x}{version:04x}"])


@pytest.fixture
def store(state_url: str) -> StateStore:
    s = StateStore(state_url, keys=KEYS)
    yield s
    s.engine.dispose()


def fill_ledger(store: StateStore, registry_id: int, keys: range, rng: random.Random) -> None:
    """Ledger rows in every state: any status, hashes sent or not, hashes equal to the group's or not."""
    now = utcnow()
    values = []
    for k in keys:
        mid, row_hash, payload = row(k, version=rng.choice((0, 0, 1)))
        status = rng.choice(STATUSES)
        values.append(
            {
                "registry_id": registry_id,
                "member_id": mid,
                "status": status,
                "op": rng.choice(("add", "remove", None)),
                "row_hash": row_hash,
                "payload": payload,
                "sent_payload": payload if rng.random() < 0.5 else None,
                "updated_at": now,
            }
        )
    with store.engine.begin() as conn:
        conn.execute(ledger.insert(), values)


def ledger_rows(store: StateStore, registry_id: int) -> dict[str, tuple[str, str, bool]]:
    """member id -> (status, row hash, hashes sent) of one audience's ledger."""
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(ledger.c.member_id, ledger.c.status, ledger.c.row_hash, ledger.c.sent_payload).where(
                ledger.c.registry_id == registry_id
            )
        )
        return {m: (status, row_hash, sent is not None) for m, status, row_hash, sent in rows}


@pytest.mark.parametrize("slice_rows", [10_000, 50])  # one slice, then many (1 and 2 hex digits)
def test_compare_counts_what_the_ledger_says(store: StateStore, monkeypatch, slice_rows: int) -> None:
    monkeypatch.setattr(delta, "SLICE_ROWS", slice_rows)
    rng = random.Random(slice_rows)
    mine, _ = store.register("meta", "act_1", "mine_users", "1", "created")
    other, _ = store.register("meta", "act_1", "other_users", "2", "created")
    fill_ledger(store, mine.id, range(0, 900), rng)
    fill_ledger(store, other.id, range(700, 1000), rng)
    group = [row(k) for k in range(300, 1200)]
    revoked = {KEYS.member_id(k) for k in range(0, 1300, 7)}

    # the oracle: plain Python over the ledger rows
    known, held = ledger_rows(store, mine.id), ledger_rows(store, other.id)
    holders = {m for m, (status, _h, _s) in held.items() if status in ("sent", "in_progress")}
    staged = {m: h for m, h, _p in group if m not in holders}
    may_hold = {m for m, (status, _h, sent) in known.items() if status in ("sent", "in_progress") or sent}
    want = {
        "excluded": len(group) - len(staged),
        "group": len(staged),
        "new": sum(m not in known for m in staged),
        "unchanged": sum(
            m in known and known[m][0] == "sent" and known[m][1] == h for m, h in staged.items()
        ),
        "changed": sum(m in known and known[m][2] and known[m][1] != h for m, h in staged.items()),
        "removes": len(may_hold - set(staged)),
    }
    got = compare(
        store, mine.id, StagedGroup(group), removals=True, exclude=Exclusion("meta", "act_1", ["other_users"])
    )
    assert want["excluded"] > 0 and want["removes"] > 0 and want["changed"] > 0
    assert {k: getattr(got, k) for k in want} == want
    assert got.adds == want["group"] - want["unchanged"]
    # consent withdrawn: counted once, whether or not the member also left the group
    no_removals = compare(store, mine.id, StagedGroup(group), removals=False, revoked=sorted(revoked))
    assert no_removals.removes == len(may_hold & revoked) > 0
    both = compare(store, mine.id, StagedGroup(group), removals=True, revoked=sorted(revoked))
    assert both.removes == len(may_hold & (revoked | (set(known) - {m for m, _h, _p in group})))


def test_an_unknown_audience_gets_the_whole_group(store: StateStore) -> None:
    got = compare(store, None, StagedGroup([row(k) for k in range(25)]), removals=True)
    assert (got.group, got.new, got.adds, got.removes) == (25, 25, 25, 0)


def test_a_rerun_stages_only_what_changes(store: StateStore) -> None:
    entry, _ = store.register("meta", "act_1", "rerun_users", "1", "created")
    first = [row(k) for k in range(500)]
    changes = stage_group(store, entry.id, first, "r1")
    assert store.stage_size(changes.key) == 500  # everyone is new
    store.apply_stage(entry.id, changes.key, "r1", mode="mirror")
    store.drop_stage(changes.key)
    with store.engine.begin() as conn:  # as if every member had been sent and confirmed
        conn.execute(
            ledger.update()
            .where(ledger.c.registry_id == entry.id)
            .values(status="sent", op=None, sent_payload=ledger.c.payload)
        )

    same = stage_group(store, entry.id, first, "r2")
    assert store.stage_size(same.key) == 0 and same.comparison.unchanged == 500
    store.drop_stage(same.key)

    # 10 leave, 5 change their identifiers, 7 join
    churned = [row(k, version=1) if k < 15 else row(k) for k in range(10, 500)] + [
        row(k) for k in range(900, 907)
    ]
    changes = stage_group(store, entry.id, churned, "r3")
    c = changes.comparison
    assert (c.group, c.new, c.changed, c.unchanged) == (497, 7, 5, 485)
    assert store.stage_size(changes.key) == 7 + 5 + 10
    store.apply_stage(entry.id, changes.key, "r3", mode="mirror")
    store.drop_stage(changes.key)
    counts = store.ledger_counts(entry.id)
    assert counts["removing"] == 10 and counts["pending"] == 7 + 5 and counts["sent"] == 485 - 0
