"""Two real uploads to one audience never interleave: a run that lost its lease stops before its next request.

Against the local Meta sandbox through the real SDK, on SQLite and PostgreSQL. Run A holds a short lease
(1 s); the sandbox holds A's second upload batch for 3 s, so A's lease expires while it waits (as when
a worker stalls). Run B, another campaign with the same segment name, is started then: it waits for A's
lease to expire, takes it over and uploads. A's held request still completes (nothing can recall a
request on the wire), but A's heartbeat before its next request finds the lease taken and A stops with
``LeaseLost``. B's first request (reading the audience) is held 4 s by the sandbox, so even A's request
in flight completes before B sends anything: by arrival and by completion, all of A's requests come
before all of B's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import secrets
import threading
import time

import pytest

from audience_sync.core.keys import StateKeys
from audience_sync.core.ledger import LeaseLost, StateStore
from audience_sync.core.sync import RetryPolicy, SyncRequest, sync_audience
from audience_sync.destinations.meta import MetaDestination, make_meta_api
from tests.conftest import SANDBOX_TOKEN

SCHEMA = ("EMAIL", "PHONE")
FAST = RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.05)
_accounts = itertools.count(5 * 10**13 + secrets.randbelow(10**12))


KEYS = StateKeys.generate()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def rows(keys: range) -> list[tuple[str, str, str]]:
    return [KEYS.staged_row(KEYS.member_id(k), SCHEMA, [sha(f"e{k}"), sha(f"p{k}")]) for k in keys]


def request(dag: str, account: str) -> SyncRequest:
    return SyncRequest(
        dag_id=dag,
        run_id="scheduled__2026-11-20T00:00:00+00:00",
        platform="meta",
        account=account,
        segment_name="lease_users",
        schema=SCHEMA,
        logical_date=dt.datetime(2026, 11, 20, tzinfo=dt.UTC),
        task_id="sync_meta",
        try_number=1,
    )


@pytest.mark.timeout(180)
def test_a_run_that_lost_its_lease_stops_and_uploads_never_interleave(fresh_sandbox, state_url: str) -> None:
    srv = fresh_sandbox
    account = f"act_{next(_accounts)}"
    store_a, store_b = StateStore(state_url, keys=KEYS), StateStore(state_url, keys=KEYS)  # two workers
    dest_a = MetaDestination(make_meta_api(SANDBOX_TOKEN, graph_url=srv.url), account)
    dest_b = MetaDestination(make_meta_api(SANDBOX_TOKEN, graph_url=srv.url), account)
    held = srv.meta.add_fault(
        method="POST", path_regex="/users$", skip=1, times=1, action="delay", delay_seconds=3
    )
    srv.meta.add_fault(method="GET", path_regex=r"^/v[\d.]+/\d+/?$", times=1, action="delay", delay_seconds=4)
    mark = srv.meta.requests_log()[-1]["seq"] if srv.meta.requests_log() else 0
    outcome: dict[str, object] = {}

    def run(name: str, dest: MetaDestination, store: StateStore, keys: range, lease: float) -> None:
        try:
            outcome[name] = sync_audience(
                dest, store, request(f"campaign_{name}", account), rows(keys), retry=FAST,
                lease_seconds=lease, lock_wait_seconds=60,
            )  # fmt: skip
        except BaseException as exc:
            outcome[name] = exc

    a = threading.Thread(target=run, args=("a", dest_a, store_a, range(30_000), 1.0))
    a.start()
    deadline = time.monotonic() + 60
    while not any(r["id"] == held and r["fired"] for r in srv.journal.faults.rules()):
        assert time.monotonic() < deadline and a.is_alive(), outcome.get("a")
        time.sleep(0.02)
    started_b = time.time()  # A's second batch is now held by the sandbox
    b = threading.Thread(target=run, args=("b", dest_b, store_b, range(31_000), 600.0))
    b.start()
    a.join(120)
    b.join(120)
    srv.meta.clear_faults()

    assert isinstance(outcome["a"], LeaseLost), outcome["a"]
    assert "campaign_b" in str(outcome["a"])  # names who holds the lease now
    result_b = outcome["b"]
    assert not isinstance(result_b, BaseException), result_b

    log = srv.meta.requests_log(mark)
    uploads = [e for e in log if e.get("op") == "add"]
    session_a = uploads[0]["session"]["session_id"]
    # B starts after A's second batch arrived, so arrival time tells the two apart (B resumes A's open
    # upload, so the session id does not)
    runs = ["a" if e["time"] < started_b else "b" for e in log]
    a_uploads = [e for e, r in zip(log, runs, strict=True) if r == "a" and e.get("op") == "add"]
    assert [e["num_rows"] for e in a_uploads] == [10_000, 10_000]  # stopped before its third batch
    by_completion = "".join(runs)  # the log is in completion order
    by_arrival = "".join(r for _, r in sorted(zip((e["time"] for e in log), runs, strict=True)))
    assert by_completion == "a" * runs.count("a") + "b" * runs.count("b"), by_completion
    assert by_arrival == by_completion
    assert runs.count("b") >= 3  # B read the audience and uploaded
    b_uploads = [e for e, r in zip(log, runs, strict=True) if r == "b" and e.get("op") == "add"]
    # B finished A's upload with its own session and numbers (the platform never sees it twice), then its own
    assert b_uploads[0]["session"] == {**b_uploads[0]["session"], "session_id": session_a, "batch_seq": 3}

    # B finished the job: the audience holds B's group exactly, once
    want = {frozenset(zip(SCHEMA, (sha(f"e{k}"), sha(f"p{k}")), strict=True)) for k in range(31_000)}
    got = {frozenset((k, v) for k, v in m.items() if v) for m in srv.meta.members(result_b.audience_id)}
    assert got == want
    assert result_b.counts["sent"] == 31_000 and result_b.counts["in_progress"] == 0
    assert len([a for a in srv.meta.audiences(account) if a["name"] == "lease_users"]) == 1
    for s in (store_a, store_b):
        s.engine.dispose()
