"""The sync engine with the Google Ads destination: the real ``google-ads`` client over real gRPC to the
session's sandbox, a SQLite state database, no Airflow."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import secrets
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from google.oauth2.credentials import Credentials

from audience_sync.core.errors import TransientDestinationError
from audience_sync.core.keys import StateKeys
from audience_sync.core.ledger import StateStore
from audience_sync.core.sync import RetryPolicy, SyncRequest, poll_processing, sync_audience
from audience_sync.destinations.google_ads import GoogleAdsDestination
from audience_sync.destinations.google_ads_client import make_client
from tests.conftest import SANDBOX_TOKEN

SCHEMA = ("hashed_email", "hashed_phone_number", "hashed_first_name", "hashed_last_name")
FAST = RetryPolicy(attempts=4, initial_wait=0.01, max_wait=0.05)
KEYS = StateKeys.generate()
_customers = itertools.count(6 * 10**9 + secrets.randbelow(10**8) * 10)
_runs = itertools.count(1)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def values(k: int) -> list[str]:
    return [sha(f"e{k}"), sha(f"p{k}"), sha(f"fn{k}"), sha(f"ln{k}")]


def rows(keys: Iterable[int]) -> list[tuple[str, str, str]]:
    return [KEYS.staged_row(KEYS.member_id(k), SCHEMA, values(k)) for k in keys]


def expected(keys: Iterable[int]) -> set[frozenset[tuple[str, str]]]:
    return {frozenset(zip(SCHEMA, values(k), strict=True)) for k in keys}


class World:
    def __init__(self, srv, url: str) -> None:
        self.app = srv.app("google_ads")
        self.target = srv.grpc_target
        self.customer = str(next(_customers))
        self.store = StateStore(url, keys=KEYS)

    def dest(self) -> GoogleAdsDestination:
        client = make_client(Credentials(token=SANDBOX_TOKEN), endpoint=self.target)
        consent = {"ad_user_data": "GRANTED", "ad_personalization": "GRANTED"}
        return GoogleAdsDestination(client, self.customer, consent=consent, timeout=10)

    def sync(self, staged, retry: RetryPolicy = FAST, mode: str = "mirror"):
        req = SyncRequest(
            dag_id="dag_g",
            run_id=f"run_{next(_runs)}",
            platform="google_ads",
            account=self.customer,
            segment_name="loyal_users",
            schema=SCHEMA,
            mode=mode,
            logical_date=dt.datetime(2026, 11, 20, tzinfo=dt.UTC),
        )
        return sync_audience(self.dest(), self.store, req, staged, retry=retry)


@pytest.fixture
def world(sandbox, tmp_path: Path) -> Iterator[World]:
    w = World(sandbox, f"sqlite:///{tmp_path}/state.db")
    w.app.clear_faults()
    w.app.processing_seconds = 0.0
    yield w
    w.app.clear_faults()
    w.app.processing_seconds = 0.0
    w.store.engine.dispose()


def test_mirror_twice_ends_exact_with_removals_and_adds_in_separate_jobs(world: World) -> None:
    first = world.sync(rows(range(4000)))
    assert first.audience_action == "created"
    assert world.app.members(first.audience_id) == expected(range(4000))
    mark = world.app.last_seq()
    out = world.sync(rows(range(3000, 5000)))
    assert out.audience_id == first.audience_id
    assert world.app.members(out.audience_id) == expected(range(3000, 5000))
    ops = [e["op"] for e in world.app.member_requests(since=mark)]
    assert set(ops) == {"remove", "add"}  # each in a job of its own (the sandbox refuses mixing)
    assert out.counts["sent"] == 2000 and out.counts["in_progress"] == 0


def test_a_job_that_fails_mid_way_is_resumed_and_the_rerun_ends_exact(world: World) -> None:
    # the second add request applies, then its answer is lost; no retries inside the task
    world.app.add_fault(
        action="drop", method="RPC", path_regex="AddOfflineUserDataJobOperations$", skip=1, apply=True
    )
    no_retry = RetryPolicy(attempts=1)
    staged = rows(range(25_000))  # 3 batches of at most 10,000 rows
    with pytest.raises(TransientDestinationError):
        world.sync(staged, retry=no_retry)
    jobs_before = {
        e["path"] for e in world.app.requests_log() if e["path"].endswith("CreateOfflineUserDataJob")
    }
    mark = world.app.last_seq()
    out = world.sync(staged, retry=no_retry)  # the task retry: the same job, from the batch in flight
    creates = [
        e for e in world.app.requests_log(since=mark) if e["path"].endswith("CreateOfflineUserDataJob")
    ]
    assert creates == [] and jobs_before  # no second job
    assert world.app.members(out.audience_id) == expected(range(25_000))
    assert out.counts["sent"] == 25_000 and out.counts["in_progress"] == 0


def test_members_stay_in_progress_until_the_job_is_processed(world: World) -> None:
    world.app.processing_seconds = 1.0
    out = world.sync(rows(range(300)))
    assert out.counts["in_progress"] == 300 and out.waiting == 1
    assert world.app.members(out.audience_id) == set()
    entry = world.store.get_registry("google_ads", world.customer, "loyal_users")
    time.sleep(1.2)
    assert poll_processing(world.dest(), world.store, entry, FAST) == 0
    counts = world.store.ledger_counts(entry.id)
    assert counts["sent"] == 300 and counts["in_progress"] == 0
    assert world.app.members(out.audience_id) == expected(range(300))


def test_an_add_job_waits_for_the_running_remove_job_of_its_list(world: World) -> None:
    """Google runs one job per list at a time: a mirror's add job is sent but not run while its remove
    job runs (the sync succeeds, the add job waits its turn); the wait step runs it once the remove job
    is processed, without a second job."""
    world.sync(rows(range(100)))
    world.app.processing_seconds = 1.0
    mark = world.app.last_seq()
    out = world.sync(rows(range(50, 150)))
    assert out.waiting == 2  # the remove job being processed, the add job waiting for its turn
    runs = [e for e in world.app.requests_log(since=mark) if e["path"].endswith("RunOfflineUserDataJob")]
    assert len(runs) == 1  # only the remove job was started: no CONCURRENT_MODIFICATION
    entry = world.store.get_registry("google_ads", world.customer, "loyal_users")
    assert poll_processing(world.dest(), world.store, entry, FAST) == 2  # still processing: no handover
    counts = world.store.ledger_counts(entry.id)
    # joining members and leaving ones, both handed to Google, neither settled yet
    assert (counts["in_progress"], counts["removing"], counts["sent"]) == (50, 50, 50)
    time.sleep(1.2)  # the remove job is processed
    mark = world.app.last_seq()
    assert poll_processing(world.dest(), world.store, entry, FAST) == 1  # the add job, now running
    log = world.app.requests_log(since=mark)
    assert not [e for e in log if e["path"].endswith("CreateOfflineUserDataJob")]  # the same add job
    assert len([e for e in log if e["path"].endswith("RunOfflineUserDataJob")]) == 1
    time.sleep(1.2)
    assert poll_processing(world.dest(), world.store, entry, FAST) == 0
    assert world.app.members(out.audience_id) == expected(range(50, 150))
    counts = world.store.ledger_counts(entry.id)
    assert (counts["sent"], counts["in_progress"], counts["removed"]) == (100, 0, 50)


def test_a_waiting_add_job_is_run_by_the_next_sync_when_its_turn_came(world: World) -> None:
    world.sync(rows(range(100)))
    world.app.processing_seconds = 1.0
    out = world.sync(rows(range(50, 150)))
    assert out.waiting == 2
    time.sleep(1.2)
    world.app.processing_seconds = 0.0
    again = world.sync(rows(range(50, 150)))  # resumes the waiting add job: no new job, nothing re-sent
    assert again.waiting == 0 and again.counts["sent"] == 100 and again.counts["in_progress"] == 0
    assert world.app.members(out.audience_id) == expected(range(50, 150))


def test_replace_is_one_job_that_starts_with_remove_all(world: World) -> None:
    world.sync(rows(range(500)))
    mark = world.app.last_seq()
    out = world.sync(rows(range(400, 12_000)), mode="replace")  # two batches of the replace upload
    assert world.app.members(out.audience_id) == expected(range(400, 12_000))
    assert {e["op"] for e in world.app.member_requests(since=mark)} == {"replace"}
    replaced = [
        j
        for j in world.app.jobs.values()
        if j["customer"] == world.customer and j["ops"][0][0] == "remove_all"
    ]
    (job,) = replaced
    assert [k for k, _ in job["ops"]].count("remove_all") == 1 and len(job["ops"]) == 11_601
