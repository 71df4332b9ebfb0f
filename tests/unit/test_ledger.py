"""The state store on SQLite and on a real PostgreSQL server: registry, ledger transitions, metrics."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from audience_sync.core.contract import ProcessingStatus
from audience_sync.core.delta import StagedGroup, compare
from audience_sync.core.keys import StateKeys
from audience_sync.core.ledger import StateStore
from audience_sync.core.uploads import UploadLog
from tests.ledger_steps import apply_group, stage_group

SCHEMA = ("EMAIL", "PHONE")
KEYS = StateKeys.generate()


def member_id(k: int) -> str:
    return KEYS.member_id(k)


def rows(keys: list[int], salt: str = "") -> list[tuple[str, str, str]]:
    return [KEYS.staged_row(member_id(k), SCHEMA, [f"{k:064x}", f"{k + 7:063x}{salt or 'a'}"]) for k in keys]


def plan_counts(store: StateStore, registry_id: int, group: list[tuple[str, str, str]]) -> dict[str, int]:
    """What a mirror sync of ``group`` would do (the dry-run plan's comparison)."""
    c = compare(store, registry_id, StagedGroup(group), removals=True)
    return {
        "group": c.group,
        "adds": c.adds,
        "new": c.new,
        "changed": c.changed,
        "removes": c.removes,
        "unchanged": c.unchanged,
    }


@pytest.fixture
def store(state_url: str) -> StateStore:
    s = StateStore(state_url, keys=KEYS)
    yield s
    s.engine.dispose()


def test_schema_is_created_once_and_versioned(store: StateStore) -> None:
    store.ensure_schema()  # second call is a no-op
    import sqlalchemy as sa

    with store.engine.connect() as c:
        assert c.execute(sa.text("SELECT COUNT(*) FROM as_schema_version")).scalar() == 1
        assert c.execute(sa.text("SELECT version FROM as_schema_version")).scalar() == 7
        fingerprints = dict(c.execute(sa.text("SELECT name, fingerprint FROM as_state_keys")).all())
    assert fingerprints == KEYS.fingerprints()  # the keys the state is written with, recorded on first use


def test_registry_is_unique_per_platform_account_segment(store: StateStore) -> None:
    first, inserted = store.register("meta", "act_1", "vip_users", "111", "created")
    again, inserted_again = store.register("meta", "act_1", "vip_users", "222", "created")
    assert inserted and not inserted_again
    assert again.audience_id == "111" == first.audience_id
    other, _ = store.register("meta", "act_2", "vip_users", "333", "created")
    assert other.audience_id == "333"


def test_concurrent_registration_keeps_one_audience(store: StateStore) -> None:
    results: list[str] = []

    def worker(n: int) -> None:
        entry, _ = store.register("meta", "act_9", "race_users", f"id{n}", "created")
        results.append(entry.audience_id)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1


def _send_all(store: StateStore, rid: int, op: str, run: str) -> list[str]:
    """Send the op's work through one upload the platform accepts and processes at once."""
    log = UploadLog(store)
    rec = log.set_handle(log.create(rid, "aud", op, run, log.count_work(rid, op)), f"h-{op}-{run}")
    sent: list[str] = []
    for seq, batch in enumerate(log.iter_work(rid, op, 3), start=1):
        ids = [r.member_id for r in batch]
        log.claim(rec, seq, ids, run)
        restated = [r.member_id for r in batch if op == "remove" and r.op == "add"]  # old hashes of changed
        log.confirm(
            rec,
            seq,
            accepted=ids,
            named_rejects=[],
            unattributed=[],
            restated=restated,
            received=3,
            invalid=0,
        )
        sent.extend(ids)
    log.processed(log.finish(log.get(rec.id), run), ProcessingStatus(done=True))
    return sent


def test_mirror_transitions_adds_changes_and_removals(store: StateStore) -> None:
    entry, _ = store.register("meta", "act_1", "seg_users", "1", "created")
    assert plan_counts(store, entry.id, rows([1, 2, 3, 4, 5])) == {
        "group": 5,
        "adds": 5,
        "new": 5,
        "changed": 0,
        "removes": 0,
        "unchanged": 0,
    }
    apply_group(store, entry.id, rows([1, 2, 3, 4, 5]), "r1")
    assert store.ledger_counts(entry.id)["pending"] == 5
    assert len(_send_all(store, entry.id, "add", "r1")) == 5
    assert store.ledger_counts(entry.id)["sent"] == 5

    # run 2: 1 and 2 left, 6 joined, 3 changed its hashes, 4 and 5 unchanged
    staged = rows([4, 5, 6]) + rows([3], salt="b")
    plan = plan_counts(store, entry.id, staged)
    assert plan == {"group": 4, "adds": 2, "new": 1, "changed": 1, "removes": 2, "unchanged": 2}
    apply_group(store, entry.id, staged, "r2")
    removals = list(UploadLog(store).iter_work(entry.id, "remove", 100))[0]
    # the removal upload takes off those who left, and the old hashes of the one who changed
    assert {r.member_id for r in removals} == {member_id(1), member_id(2), member_id(3)}
    assert {r.op for r in removals if r.member_id == member_id(3)} == {"add"}
    assert all(r.sent_payload and r.payload == r.sent_payload for r in removals)  # what was added
    assert UploadLog(store).count_work(entry.id, "add") == 1  # the changed one waits for its removal
    _send_all(store, entry.id, "remove", "r2")
    assert UploadLog(store).count_work(entry.id, "add") == 2  # the new one, and the changed one again
    _send_all(store, entry.id, "add", "r2")
    counts = store.ledger_counts(entry.id)
    assert counts["sent"] == 4 and counts["removed"] == 2 and counts["pending"] == 0

    # run 3: nothing changed -> no work at all
    apply_group(store, entry.id, staged, "r3")
    log = UploadLog(store)
    assert log.count_work(entry.id, "add") == 0 and log.count_work(entry.id, "remove") == 0


def test_add_only_never_queues_removals(store: StateStore) -> None:
    entry, _ = store.register("meta", "act_1", "add_only_users", "1", "created")
    apply_group(store, entry.id, rows([1, 2]), "r1", mode="add_only")
    _send_all(store, entry.id, "add", "r1")
    apply_group(store, entry.id, rows([3]), "r2", mode="add_only")
    assert UploadLog(store).count_work(entry.id, "remove") == 0
    assert store.ledger_counts(entry.id)["sent"] == 2


def test_an_unanswered_batch_is_found_in_flight_after_a_crash(store: StateStore) -> None:
    entry, _ = store.register("meta", "act_1", "crash_users", "1", "created")
    key = stage_group(store, entry.id, rows(list(range(10))), "r1").key  # kept: the retry re-applies it
    store.apply_stage(entry.id, key, "r1", mode="mirror")
    log = UploadLog(store)
    rec = log.set_handle(log.create(entry.id, "aud", "add", "r1", 10), "session-1")
    batches = log.iter_work(entry.id, "add", 4)
    first = [r.member_id for r in next(batches)]
    log.claim(rec, 1, first, "r1")
    log.confirm(rec, 1, accepted=first, named_rejects=[], unattributed=[], restated=[], received=4, invalid=0)
    second = [r.member_id for r in next(batches)]
    log.claim(rec, 2, second, "r1")  # sent, then the task dies before the answer
    # the retry re-applies the same stage: members of the upload are left to it
    store.apply_stage(entry.id, key, "r1", mode="mirror")
    rec = log.get(rec.id)
    assert (rec.state, rec.batches, rec.confirmed_seq) == ("open", 2, 1)
    assert [(seq, [r.member_id for r in rows]) for seq, rows in log.in_flight(rec)] == [(2, second)]
    todo = [r.member_id for b in log.iter_work(entry.id, "add", 100) for r in b]
    assert len(todo) == 2 and not set(todo) & set(first + second)
    assert store.ledger_counts(entry.id)["in_progress"] == 8 and store.ledger_counts(entry.id)["sent"] == 0


def test_last_logical_date_never_moves_backwards(store: StateStore) -> None:
    entry, _ = store.register("meta", "act_1", "dated_users", "1", "created")
    newer = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
    store.set_last_logical_date(entry.id, newer)
    store.set_last_logical_date(entry.id, dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
    got = store.get_registry("meta", "act_1", "dated_users")
    assert got is not None and got.last_logical_date == newer


def test_metrics_rows_are_upserted(store: StateStore) -> None:
    row = {
        "dag_id": "d",
        "run_id": "r",
        "destination": "meta:act_1",
        "segment_name": "s",
        "sent": 3,
        "total": 3,
        "outcome": "success",
    }
    store.write_metrics(row)
    store.write_metrics({**row, "sent": 4, "total": 4})
    got = store.read_metrics("d", "r")
    assert len(got) == 1 and got[0]["sent"] == 4
