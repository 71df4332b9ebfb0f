"""Sync semantics against the local Meta sandbox through the real SDK, on SQLite and on PostgreSQL.

Each test drives :func:`sync_audience` / :func:`plan_sync` directly (no Airflow), so it can look at the
sandbox's members and request log after every step.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Iterable

import pytest

from audience_sync.core.errors import PermanentDestinationError, TransientDestinationError
from audience_sync.core.keys import StateKeys
from audience_sync.core.ledger import StateStore
from audience_sync.core.sync import RetryPolicy, SyncRequest, plan_sync, poll_processing, sync_audience
from audience_sync.core.uploads import UploadLog
from audience_sync.destinations.meta import MetaDestination, make_meta_api
from tests.conftest import SANDBOX_TOKEN

SCHEMA = ("EMAIL", "PHONE", "FN", "LN")
FAST = RetryPolicy(attempts=4, initial_wait=0.01, max_wait=0.05)
_accounts = itertools.count(7 * 10**13 + secrets.randbelow(10**12))
_runs = itertools.count(1)
KEYS = StateKeys.generate()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def values(k: int, version: int = 0) -> list[str]:
    return [sha(f"e{k}v{version}"), sha(f"p{k}"), sha(f"fn{k}"), "" if k % 7 == 0 else sha(f"ln{k}")]


def rows(keys: Iterable[int], changed: Iterable[int] = ()) -> list[tuple[str, str, str]]:
    ch = set(changed)
    return [KEYS.staged_row(KEYS.member_id(k), SCHEMA, values(k, 1 if k in ch else 0)) for k in keys]


def expected(keys: Iterable[int], changed: Iterable[int] = ()) -> set[frozenset[tuple[str, str]]]:
    ch = set(changed)
    return {frozenset((a, b) for a, b in zip(SCHEMA, values(k, 1 if k in ch else 0)) if b) for k in keys}


class World:
    """One ad account on the sandbox, one state database, helpers to run syncs and inspect."""

    def __init__(self, srv, url: str) -> None:
        self.srv = srv
        self.account = f"act_{next(_accounts)}"
        self.store = StateStore(url, keys=KEYS)

    def dest(self, token: str = SANDBOX_TOKEN) -> MetaDestination:
        return MetaDestination(make_meta_api(token, graph_url=self.srv.url), self.account)

    def req(
        self,
        segment: str = "loyal_users",
        *,
        dag: str = "dag_a",
        mode: str = "mirror",
        day: int = 20,
        exclude: tuple[str, ...] = (),
    ) -> SyncRequest:
        return SyncRequest(
            dag_id=dag,
            run_id=f"run_{next(_runs)}",
            platform="meta",
            account=self.account,
            segment_name=segment,
            schema=SCHEMA,
            mode=mode,
            logical_date=dt.datetime(2026, 11, day, tzinfo=dt.UTC),
            exclude_segments=exclude,
        )

    def sync(self, staged, segment: str = "loyal_users", retry: RetryPolicy = FAST, **kw):
        revoked = kw.pop("revoked", ())
        return sync_audience(
            self.dest(), self.store, self.req(segment, **kw), staged, retry=retry, revoked=revoked
        )

    def audiences(self, segment: str = "loyal_users") -> list[dict]:
        return [a for a in self.srv.meta.audiences(self.account) if a["name"] == segment]

    def members(self, audience_id: str) -> set[frozenset[tuple[str, str]]]:
        return {frozenset((k, v) for k, v in m.items() if v) for m in self.srv.meta.members(audience_id)}

    def mark(self) -> int:
        return self.srv.meta.last_seq()

    def member_requests(self, since: int) -> list[dict]:
        return self.srv.meta.member_requests(since)


@pytest.fixture
def world(fresh_sandbox, state_url: str):
    w = World(fresh_sandbox, state_url)
    yield w
    w.srv.meta.clear_faults()
    w.store.engine.dispose()


def sent_rows(reqs: list[dict], op: str) -> int:
    return sum(e.get("num_rows", 0) for e in reqs if e.get("op") == op and e["status"] == 200)


def test_mirror_with_adds_changes_and_thousands_of_removals_ends_exact(world: World) -> None:
    first = world.sync(rows(range(6000)))
    assert first.audience_action == "created"
    assert world.members(first.audience_id) == expected(range(6000))
    mark = world.mark()
    group, changed = range(3000, 6500), range(3000, 3100)
    out = world.sync(rows(group, changed))
    assert out.audience_id == first.audience_id
    assert world.members(out.audience_id) == expected(group, changed)
    reqs = world.member_requests(mark)
    deletes = [e for e in reqs if e["op"] == "remove"]
    assert len(deletes) > 10 and {e["status"] for e in deletes} == {200}  # small URL-safe batches
    assert sent_rows(reqs, "remove") == 3000 + 100  # those who left, and the old hashes of the changed
    assert sent_rows(reqs, "add") == 500 + 100  # those who joined, and the new hashes of the changed
    assert out.counts["sent"] == 3500 and out.counts["removed"] == 3000 and out.counts["total"] == 3500
    assert out.counts["pending"] == out.counts["in_progress"] == out.counts["failed"] == 0
    # what this run did, beside the snapshot
    assert out.run == {"added": 500, "resent": 100, "removed": 3000, "unchanged": 2900, "rejected": 0}
    assert first.run == {"added": 6000, "resent": 0, "removed": 0, "unchanged": 0, "rejected": 0}


def test_batches_respect_the_ten_thousand_row_limit_with_one_session(world: World) -> None:
    mark = world.mark()
    out = world.sync(rows(range(10_050)))
    adds = [e for e in world.member_requests(mark) if e["op"] == "add"]
    assert [e["num_rows"] for e in adds] == [10_000, 50]
    assert len({e["session"]["session_id"] for e in adds}) == 1
    assert [e["session"]["batch_seq"] for e in adds] == [1, 2]
    assert [e["session"]["last_batch_flag"] for e in adds] == [False, True]
    assert all(e["session"]["estimated_num_total"] == 10_050 for e in adds)
    assert len(world.members(out.audience_id)) == 10_050


def test_rerun_without_change_sends_no_member_request(world: World) -> None:
    world.sync(rows(range(300)))
    mark = world.mark()
    out = world.sync(rows(range(300)))
    assert world.member_requests(mark) == []
    assert out.counts["sent"] == 300 and len(world.audiences()) == 1


def test_two_campaigns_sharing_a_segment_name_share_one_audience(world: World) -> None:
    a = world.sync(rows(range(0, 200)), dag="campaign_a")
    b = world.sync(rows(range(100, 400)), dag="campaign_b")
    assert a.audience_id == b.audience_id and len(world.audiences()) == 1
    assert world.members(b.audience_id) == expected(range(100, 400))  # the later sync defines membership
    other = world.sync(rows(range(50)), segment="other_users", dag="campaign_a")
    assert other.audience_id != a.audience_id  # a new name creates a new audience


def test_an_audience_created_by_hand_is_adopted_oldest_first(world: World, caplog) -> None:
    older = world.srv.meta.create_audience(world.account, "loyal_users")
    newer = world.srv.meta.create_audience(world.account, "loyal_users")
    with caplog.at_level(logging.WARNING):
        out = world.sync(rows(range(50)))
    assert out.audience_action == "adopted" and out.audience_id == older
    assert older in caplog.text and newer in caplog.text  # the warning names them
    assert len(world.audiences()) == 2  # nothing new created
    entry = world.store.get_registry("meta", world.account, "loyal_users")
    assert entry is not None and entry.origin == "adopted" and entry.audience_id == older
    assert world.members(older) == expected(range(50)) and world.members(newer) == set()


def test_concurrent_runs_create_one_audience(world: World) -> None:
    results, errors = [], []
    barrier = threading.Barrier(2)

    def run(dag: str) -> None:
        try:
            barrier.wait()
            results.append(world.sync(rows(range(3000)), dag=dag))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(d,)) for d in ("dag_one", "dag_two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(world.audiences()) == 1
    assert {r.audience_id for r in results} == {world.audiences()[0]["id"]}
    assert world.members(results[0].audience_id) == expected(range(3000))


@pytest.mark.parametrize("applied", [False, True], ids=["dropped-before-apply", "dropped-after-apply"])
def test_crash_mid_upload_then_retry_ends_exact(world: World, applied: bool) -> None:
    world.srv.meta.add_fault(
        method="POST", path_regex="/users$", skip=1, times=1, action="drop", apply=applied
    )
    no_retry = RetryPolicy(attempts=1)
    staged = rows(range(25_000))
    with pytest.raises(TransientDestinationError):
        world.sync(staged, retry=no_retry)
    (aud,) = world.audiences()
    entry = world.store.get_registry("meta", world.account, "loyal_users")
    counts = world.store.ledger_counts(entry.id)
    # batch 1 accepted and batch 2 in flight are both in progress (the upload never finished); the rest waits
    assert counts["sent"] == 0 and counts["in_progress"] == 20_000 and counts["pending"] == 5_000
    first_session = {e["session"]["session_id"] for e in world.member_requests(0)}
    mark = world.mark()
    out = world.sync(staged, retry=no_retry)  # the task retry
    assert out.audience_id == aud["id"] and len(world.audiences()) == 1
    assert world.members(aud["id"]) == expected(range(25_000))
    # only the unconfirmed batches are sent again: the one in flight and the rest, in the same upload
    reqs = world.member_requests(mark)
    assert sent_rows(reqs, "add") == 15_000
    assert {e["session"]["session_id"] for e in reqs} == first_session
    assert [e["session"]["batch_seq"] for e in reqs] == [2, 3]
    assert out.counts["sent"] == 25_000 and out.counts["in_progress"] == 0


def test_a_backfill_never_removes_members_synced_by_a_newer_run(world: World, caplog) -> None:
    newer = world.sync(rows(range(500)), day=20)
    mark = world.mark()
    with caplog.at_level(logging.WARNING):
        old = world.sync(rows(list(range(100)) + [900, 901]), day=5)  # an older date, a smaller group
    assert old.backfill and any("backfill" in n for n in old.notes) and "backfill" in caplog.text
    reqs = world.member_requests(mark)
    assert [e for e in reqs if e["op"] != "add"] == []
    assert world.members(newer.audience_id) == expected(list(range(500)) + [900, 901])
    entry = world.store.get_registry("meta", world.account, "loyal_users")
    assert entry.last_logical_date == dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
    replace = world.sync(rows(range(10)), day=6, mode="replace")  # a late retry in replace mode
    assert replace.backfill
    assert len(world.members(newer.audience_id)) == 502


def test_exclusion_segments_and_consent_are_honoured_and_counted(world: World) -> None:
    week_one = world.sync(rows(range(0, 100)), segment="week_one_users")
    week_two = world.sync(rows(range(50, 200)), segment="week_two_users", exclude=("week_one_users",))
    assert week_two.counts["excluded"] == 50
    assert world.members(week_two.audience_id) == expected(range(100, 200))
    assert world.members(week_one.audience_id) == expected(range(100))
    # consent withdrawn for 10 members already sent: removed even in add_only mode
    revoked = [KEYS.member_id(k) for k in range(100, 110)]
    out = world.sync(
        rows(range(110, 200)),
        segment="week_two_users",
        mode="add_only",
        exclude=("week_one_users",),
        revoked=revoked,
    )
    assert world.members(out.audience_id) == expected(range(110, 200))
    assert out.counts["removed"] == 10


def test_plan_matches_what_the_next_run_sends(world: World) -> None:
    world.sync(rows(range(1000)))
    staged = rows(range(200, 1300), changed=range(200, 230))
    plan = plan_sync(world.dest(), world.store, world.req(), staged, retry=FAST)
    assert plan["audience"]["action"] == "reuse"
    assert (plan["group"], plan["adds"], plan["changed"], plan["removes"], plan["unchanged"]) == (
        1100,
        330,
        30,
        200,
        770,
    )
    mark = world.mark()
    world.sync(staged)
    reqs = world.member_requests(mark)
    assert sent_rows(reqs, "add") == plan["adds"]
    assert sent_rows(reqs, "remove") == plan["removes"] + plan["changed"]


def test_plan_before_the_first_run_says_would_create_and_warns(world: World) -> None:
    plan = plan_sync(
        world.dest(), world.store, world.req("diabetes_high_income_users"), rows(range(40)), retry=FAST
    )
    assert plan["audience"] == {"id": None, "action": "would create"}
    assert plan["adds"] == 40 and plan["removes"] == 0
    warnings = " ".join(plan["warnings"])
    assert "100" in warnings and "diabet" in warnings and "income" in warnings
    assert world.audiences("diabetes_high_income_users") == []  # nothing was created


def test_replace_mode_uses_one_session_and_leaves_the_ledger_equal_to_the_group(world: World) -> None:
    world.sync(rows(range(12_000)))
    mark = world.mark()
    out = world.sync(rows(range(5000, 16_000)), mode="replace")
    reqs = world.member_requests(mark)
    assert {e["op"] for e in reqs} == {"replace"}
    assert len({e["session"]["session_id"] for e in reqs}) == 1
    assert [e["session"]["last_batch_flag"] for e in reqs] == [False, True]
    assert world.members(out.audience_id) == expected(range(5000, 16_000))
    assert out.counts["sent"] == 11_000 and out.counts["removed"] == 5000


def test_a_deleted_audience_is_recreated_and_fully_resent(world: World, caplog) -> None:
    first = world.sync(rows(range(100)))
    world.dest().api.call("DELETE", (first.audience_id,))
    with caplog.at_level(logging.WARNING):
        out = world.sync(rows(range(100)))
    assert out.audience_action == "recreated" and out.audience_id != first.audience_id
    assert world.members(out.audience_id) == expected(range(100))
    assert "re-creat" in caplog.text or "deleted" in caplog.text


def test_transient_errors_retry_the_same_session_and_batch(world: World) -> None:
    world.srv.meta.add_fault(
        method="POST", path_regex="/users$", skip=1, times=2, action="error", code=17, subcode=2446079
    )
    mark = world.mark()
    out = world.sync(rows(range(15_000)))
    posts = [
        e for e in world.srv.meta.requests_log(mark) if e["method"] == "POST" and e["path"].endswith("/users")
    ]
    assert [e["status"] for e in posts] == [200, 400, 400, 200]
    assert posts[1].get("error_code") == 17
    tries = [(e["session"]["session_id"], e["session"]["batch_seq"]) for e in posts[1:]]
    assert len(set(tries)) == 1  # every retry re-sent the same session_id and batch_seq
    retried = [e for e in world.member_requests(mark) if e["op"] == "add"]
    assert [e["session"]["batch_seq"] for e in retried] == [1, 2]  # the batch went through once, as seq 2
    assert len({e["session"]["session_id"] for e in retried}) == 1
    assert world.members(out.audience_id) == expected(range(15_000))


def test_a_permanent_error_fails_fast_and_records_the_code(world: World) -> None:
    world.srv.meta.add_fault(method="POST", path_regex="/users$", times=None, action="error", code=2655)
    mark = world.mark()
    with pytest.raises(PermanentDestinationError) as err:
        world.sync(rows(range(50)))
    assert "customaudiences/app/tos" in str(err.value) and world.account.removeprefix("act_") in str(
        err.value
    )
    posts = [
        e for e in world.srv.meta.requests_log(mark) if e["method"] == "POST" and e["path"].endswith("/users")
    ]
    assert len(posts) == 1  # no retry
    entry = world.store.get_registry("meta", world.account, "loyal_users")
    assert world.store.ledger_counts(entry.id)["failed"] == 50
    world.srv.meta.clear_faults()
    out = world.sync(rows(range(50)))  # failed members are retried on the next run
    assert out.counts["sent"] == 50 and out.counts["failed"] == 0


def test_members_stay_in_progress_until_the_platform_processed_the_upload(world: World) -> None:
    world.srv.meta.processing_seconds = 3
    try:
        out = world.sync(rows(range(120)))
        # handed over, not processed yet: nothing is reported as sent
        assert out.counts["in_progress"] == 120 and out.counts["sent"] == 0 and out.waiting == 1
        assert any("still being processed" in n for n in out.notes)
        entry = world.store.get_registry("meta", world.account, "loyal_users")
        assert poll_processing(world.dest(), world.store, entry, FAST) == 1
        time.sleep(3.2)
        mark = world.mark()
        assert poll_processing(world.dest(), world.store, entry, FAST) == 0
        assert [e["path"].rsplit("/", 1)[-1] for e in world.srv.meta.requests_log(mark)] == ["sessions"]
        counts = world.store.ledger_counts(entry.id)
        assert counts["sent"] == 120 and counts["in_progress"] == 0
        # a rerun finds nothing to send and nothing to wait for
        again = world.sync(rows(range(120)))
        assert again.waiting == 0 and again.counts["sent"] == 120 and world.member_requests(mark) == []
    finally:
        world.srv.meta.processing_seconds = 0


def test_a_backfill_never_rolls_back_changed_identifiers(world: World) -> None:
    world.sync(rows(range(400)), day=10)
    changed = range(0, 200)
    newer = world.sync(rows(range(400), changed), day=20)  # 200 members changed their e-mail
    mark = world.mark()
    old = world.sync(rows(list(range(400)) + [700, 701]), day=15)  # the older group still has the old e-mails
    assert old.backfill
    reqs = world.member_requests(mark)
    assert [e for e in reqs if e["op"] != "add"] == []  # nothing removed or replaced
    assert sent_rows(reqs, "add") == 2  # only the members new to the audience
    assert world.members(newer.audience_id) == expected(list(range(400)) + [700, 701], changed)
    assert old.run == {"added": 2, "resent": 0, "removed": 0, "unchanged": 400, "rejected": 0}


def bad(k: int) -> tuple[str, str, str]:
    """A staged row the platform rejects (its e-mail is not a SHA-256)."""
    return KEYS.staged_row(KEYS.member_id(k), SCHEMA, [f"not-a-hash-{k}", *values(k)[1:]])


def test_platform_rejects_are_counted_and_never_reported_as_sent(world: World) -> None:
    # 15 bad rows in one batch: the sandbox (like Meta) names only a sample of 10 of them
    bad_keys = set(range(0, 45, 3))
    staged = [bad(k) if k in bad_keys else r for k, r in zip(range(45), rows(range(45)), strict=True)]
    first = world.sync(staged)
    assert first.run["rejected"] == 15
    entry = world.store.get_registry("meta", world.account, "loyal_users")
    ledger = world.store.ledger_members(entry.id, "sent")
    assert not set(ledger) & {KEYS.member_id(k) for k in bad_keys}  # no rejected member is reported as sent
    assert first.counts["sent"] + first.counts["failed"] == 45 and first.counts["failed"] >= 15
    # the next run re-sends the members the platform did not name, in batches small enough to name all
    mark = world.mark()
    second = world.sync(staged)
    adds = [e for e in world.member_requests(mark) if e["op"] == "add"]
    assert adds and max(e["num_rows"] for e in adds) <= 10
    assert second.counts["sent"] == 30 and second.counts["failed"] == 15
    sent = set(world.store.ledger_members(entry.id, "sent"))
    assert sent == {KEYS.member_id(k) for k in range(45) if k not in bad_keys}
    assert world.members(second.audience_id) == expected(k for k in range(45) if k not in bad_keys)


def test_a_run_killed_mid_removal_is_finished_by_the_next_run_in_the_same_upload(world: World) -> None:
    first = world.sync(rows(range(2000)))
    world.srv.meta.add_fault(
        method="DELETE", path_regex="/users$", skip=2, times=1, action="drop", apply=True
    )
    with pytest.raises(TransientDestinationError):
        world.sync(rows(range(1000, 2000), changed=range(1000, 1050)), retry=RetryPolicy(attempts=1))
    entry = world.store.get_registry("meta", world.account, "loyal_users")
    (open_upload,) = UploadLog(world.store).in_state(entry.id, "open")
    assert open_upload.op == "remove" and open_upload.confirmed_seq == 2 and open_upload.batches == 3
    mark = world.mark()
    # the next run (a new logical date, a new group) first finishes the open removal upload
    out = world.sync(rows(range(1500, 2000), changed=range(1500, 1510)), day=21)
    deletes = [e for e in world.member_requests(mark) if e["op"] == "remove"]
    assert deletes[0]["session"]["session_id"] == int(open_upload.handle)
    assert deletes[0]["session"]["batch_seq"] == 3  # the batch in flight, again, with its number
    assert world.members(out.audience_id) == expected(range(1500, 2000), changed=range(1500, 1510))
    assert out.counts["in_progress"] == out.counts["pending"] == 0 and out.counts["sent"] == 500
    assert first.audience_id == out.audience_id


def test_an_upload_whose_last_batch_failed_is_closed_by_the_next_run(world: World) -> None:
    world.srv.meta.add_fault(method="POST", path_regex="/users$", skip=1, times=1, action="error", code=2655)
    with pytest.raises(PermanentDestinationError):
        world.sync(rows(range(15_000)))
    entry = world.store.get_registry("meta", world.account, "loyal_users")
    (upload,) = UploadLog(world.store).in_state(entry.id, "open")
    assert (upload.confirmed_seq, upload.batches, upload.closed) == (1, 2, False)
    mark = world.mark()
    out = world.sync(rows(range(15_000)))
    reqs = world.member_requests(mark)
    # the platform is told the first upload ended (an empty last batch), then the failed batch goes again
    closing = reqs[0]
    assert closing["session"]["session_id"] == int(upload.handle) and closing["num_rows"] == 0
    assert closing["session"]["batch_seq"] == 3 and closing["session"]["last_batch_flag"] is True
    assert sent_rows(reqs[1:], "add") == 5_000
    assert out.waiting == 0 and out.counts["sent"] == 15_000
    assert world.members(out.audience_id) == expected(range(15_000))
