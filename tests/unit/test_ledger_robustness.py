"""Ledger robustness on SQLite and PostgreSQL: UTC timestamps, lease ownership, race-safe schema
creation, and the cleanup of stages a killed run left behind."""

from __future__ import annotations

import datetime as dt
import secrets
import threading
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from audience_sync.core import ledger as lg
from audience_sync.core.keys import StateKeys
from audience_sync.core.ledger import LeaseLost, LockTimeout, StateStore, lease_owner

BERLIN = ZoneInfo("Europe/Berlin")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")


KEYS = StateKeys.generate()


@pytest.fixture
def store(state_url: str) -> StateStore:
    s = StateStore(state_url, keys=KEYS)
    yield s
    s.engine.dispose()


def rows(keys: range) -> list[tuple[str, str, str]]:
    return [KEYS.staged_row(KEYS.member_id(k), ("EMAIL",), [f"{k:064x}"]) for k in keys]


# ------------------------------------------------------------------------------------------ UTC
def test_non_utc_aware_times_round_trip_as_the_same_instant_in_utc(store: StateStore) -> None:
    entry, _ = store.register("meta", "act_1", "tz_users", "1", "created")
    berlin = dt.datetime(2026, 7, 1, 9, 30, tzinfo=BERLIN)  # 07:30 UTC (summer time)
    store.set_last_logical_date(entry.id, berlin)
    got = store.get_registry("meta", "act_1", "tz_users").last_logical_date
    assert got == berlin and got.utcoffset() == dt.timedelta(0)
    assert (got.hour, got.minute) == (7, 30)  # the instant, not Berlin's wall time read as UTC

    store.write_metrics(
        {
            "dag_id": "d",
            "run_id": "r",
            "destination": "meta:act_1",
            "segment_name": "tz_users",
            "outcome": "success",
            "logical_date": dt.datetime(2026, 1, 15, 23, 0, tzinfo=LOS_ANGELES),  # 07:00 UTC next day
        }
    )
    (row,) = store.read_metrics("d", "r")
    assert row["logical_date"] == dt.datetime(2026, 1, 16, 7, 0, tzinfo=dt.UTC)
    assert row["logical_date"].tzinfo is not None and row["logical_date"].utcoffset() == dt.timedelta(0)


def test_ordering_compares_instants_not_wall_times(store: StateStore) -> None:
    entry, _ = store.register("meta", "act_1", "order_users", "1", "created")
    # 10:00 in Berlin is 08:00 UTC; 01:00 in Los Angeles is 09:00 UTC: LA is later, though its wall time is earlier
    berlin = dt.datetime(2026, 7, 1, 10, 0, tzinfo=BERLIN)
    los_angeles = dt.datetime(2026, 7, 1, 2, 0, tzinfo=LOS_ANGELES)
    store.set_last_logical_date(entry.id, berlin)
    store.set_last_logical_date(entry.id, los_angeles)  # later instant: moves forward
    assert store.get_registry("meta", "act_1", "order_users").last_logical_date == los_angeles
    # 09:30 Berlin (07:30 UTC) is earlier than both, although its wall time is later than LA's
    store.set_last_logical_date(entry.id, dt.datetime(2026, 7, 1, 9, 30, tzinfo=BERLIN))
    assert store.get_registry("meta", "act_1", "order_users").last_logical_date == los_angeles


def test_naive_datetimes_are_rejected(store: StateStore) -> None:
    entry, _ = store.register("meta", "act_1", "naive_users", "1", "created")
    with pytest.raises(sa.exc.StatementError, match="naive datetime"):
        store.set_last_logical_date(entry.id, dt.datetime(2026, 7, 1, 10, 0))


# ---------------------------------------------------------------------------------------- leases
def test_a_later_try_takes_the_lease_over_and_the_older_try_loses_it(store: StateStore) -> None:
    first = lease_owner("dag", "run_1", "sync_meta", 1)
    second = lease_owner("dag", "run_1", "sync_meta", 2)
    store.acquire_lock("meta|act|seg", first, lease_seconds=600)
    store.refresh_lock("meta|act|seg", first)  # ours: fine
    store.acquire_lock("meta|act|seg", second, lease_seconds=600, wait_seconds=0)  # at once
    with pytest.raises(LeaseLost, match="sync_meta\\|2"):
        store.refresh_lock("meta|act|seg", first)
    store.refresh_lock("meta|act|seg", second)
    # the older try cannot take it back, nor can another task or run while the lease lasts
    for other in (
        first,
        lease_owner("dag", "run_1", "sync_other", 9),
        lease_owner("dag", "run_2", "sync_meta", 5),
    ):
        with pytest.raises(LockTimeout):
            store.acquire_lock("meta|act|seg", other, wait_seconds=0.3, poll=0.05)
    store.release_lock("meta|act|seg", first)  # not the owner: no effect
    store.refresh_lock("meta|act|seg", second)


def test_an_expired_lease_is_taken_over_and_its_old_owner_stops(store: StateStore) -> None:
    a = lease_owner("dag_a", "run_1", "sync_meta", 1)
    b = lease_owner("dag_b", "run_7", "sync_meta", 1)
    store.acquire_lock("k", a, lease_seconds=0.2)
    store.refresh_lock("k", a, lease_seconds=0.2)
    t0 = dt.datetime.now(dt.UTC)
    store.acquire_lock("k", b, lease_seconds=60, wait_seconds=10, poll=0.05)  # waits for the expiry
    assert dt.datetime.now(dt.UTC) - t0 >= dt.timedelta(seconds=0.1)
    with pytest.raises(LeaseLost, match="dag_b"):
        store.refresh_lock("k", a)


def test_an_expired_lease_nobody_took_is_still_ours(store: StateStore) -> None:
    a = lease_owner("dag_a", "run_1", "sync_meta", 1)
    store.acquire_lock("k2", a, lease_seconds=0.05)
    threading.Event().wait(0.2)
    store.refresh_lock("k2", a, lease_seconds=60)  # nobody uploaded in between: no reason to stop
    with pytest.raises(LockTimeout):
        store.acquire_lock("k2", lease_owner("dag_b", "r", "t", 1), wait_seconds=0.2, poll=0.05)


def test_a_released_lease_is_lost(store: StateStore) -> None:
    a = lease_owner("dag_a", "run_1", "sync_meta", 1)
    store.acquire_lock("k3", a)
    store.release_lock("k3", a)
    with pytest.raises(LeaseLost, match="nobody"):
        store.refresh_lock("k3", a)


def test_contenders_for_an_expired_lease_never_both_win(store: StateStore) -> None:
    store.acquire_lock("k4", lease_owner("old", "r", "t", 1), lease_seconds=0.01)
    threading.Event().wait(0.05)
    winners: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def contend(n: int) -> None:
        owner = lease_owner(f"dag_{n}", "r", "t", 1)
        try:
            barrier.wait()
            store.acquire_lock("k4", owner, lease_seconds=60, wait_seconds=0.5, poll=0.05)
            winners.append(owner)
        except LockTimeout:
            pass
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(winners) == 1
    with store.engine.connect() as c:
        assert (
            c.execute(sa.select(lg.locks.c.owner).where(lg.locks.c.lock_key == "k4")).scalar() == winners[0]
        )


# ---------------------------------------------------------------------------------------- schema
def test_workers_creating_the_schema_at_once_never_fail_on_postgres(postgres) -> None:
    admin = sa.create_engine(postgres.admin_url, isolation_level="AUTOCOMMIT")
    base = postgres.url.rsplit("/", 1)[0]
    try:
        for _ in range(8):
            name = "race_" + secrets.token_hex(5)
            with admin.connect() as c:
                c.execute(sa.text(f"CREATE DATABASE {name}"))
            errors: list[BaseException] = []
            stores: list[StateStore] = []
            barrier = threading.Barrier(6)

            def worker(url: str = f"{base}/{name}") -> None:
                try:
                    barrier.wait()
                    stores.append(StateStore(url))
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=worker) for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not errors, errors
            assert len(stores) == 6
            with stores[0].engine.connect() as c:
                assert c.execute(sa.text("SELECT COUNT(*) FROM as_schema_version")).scalar() == 1
                held = c.execute(
                    sa.text("SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory'")
                ).scalar()
                assert held == 0  # every worker let go of the schema lock
            for s in stores:
                s.engine.dispose()
            with admin.connect() as c:
                c.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))
    finally:
        admin.dispose()


# ------------------------------------------------------------------------------- stale stages
def _stage_keys(store: StateStore) -> set[str]:
    with store.engine.connect() as c:
        staged = set(c.execute(sa.select(lg.stage.c.stage_key).distinct()).scalars())
        owned = set(c.execute(sa.select(lg.stage_owner.c.stage_key)).scalars())
    assert staged <= owned  # never members without an owner row
    return staged


def test_the_next_run_of_a_campaign_drops_what_its_killed_runs_left_behind(store: StateStore) -> None:
    killed = lease_owner("camp_a", "run_1", "sync_meta", 1)
    store.acquire_lock("meta|act|a_users", killed, lease_seconds=0.05)
    left_behind = store.stage_members(
        rows(range(50)), dag_id="camp_a", run_id="run_1", lease=("meta|act|a_users", killed)
    )
    # another destination of campaign A, synced right now by another run: its lease is live
    busy = lease_owner("camp_a", "run_0", "sync_other", 1)
    store.acquire_lock("meta|act2|a_users", busy, lease_seconds=600)
    in_use = store.stage_members(
        rows(range(20)), dag_id="camp_a", run_id="run_0", lease=("meta|act2|a_users", busy)
    )
    # campaign B stages at the same moment under an expired lease: not campaign A's to judge
    other = store.stage_members(
        rows(range(30)), dag_id="camp_b", run_id="run_9", lease=("meta|act|b_users", "x|y|z|1")
    )
    plan_recent = store.stage_members(rows(range(10)), dag_id="camp_a", run_id="run_1")  # a plan: no lease
    plan_old = store.stage_members(rows(range(10)), dag_id="camp_a", run_id="run_0")
    with store.engine.begin() as c:  # a plan killed a day ago
        c.execute(
            lg.stage_owner.update()
            .where(lg.stage_owner.c.stage_key == plan_old)
            .values(created_at=lg.utcnow() - dt.timedelta(days=1))
        )
    threading.Event().wait(0.1)  # the killed run's lease has expired

    mine = store.stage_members(
        rows(range(5)), dag_id="camp_a", run_id="run_2", lease=("meta|act|a_users", "me")
    )
    assert _stage_keys(store) == {in_use, other, plan_recent, mine}
    assert (
        store.stage_size(mine) == 5 and store.stage_size(in_use) == 20 and store.stage_size(left_behind) == 0
    )

    # a later try of the same task takes the lease over: the earlier try's stage is dropped at once
    t1 = lease_owner("camp_c", "run_1", "sync_meta", 1)
    store.acquire_lock("meta|act|c_users", t1, lease_seconds=600)
    first_try = store.stage_members(
        rows(range(7)), dag_id="camp_c", run_id="run_1", lease=("meta|act|c_users", t1)
    )
    t2 = lease_owner("camp_c", "run_1", "sync_meta", 2)
    store.acquire_lock("meta|act|c_users", t2, wait_seconds=0)
    retry = store.stage_members(
        rows(range(7)), dag_id="camp_c", run_id="run_1", lease=("meta|act|c_users", t2)
    )
    assert first_try not in _stage_keys(store) and retry in _stage_keys(store)
    store.drop_stage(retry)
    assert retry not in _stage_keys(store)
