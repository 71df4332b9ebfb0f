"""The engine over tiktok, at TikTok's real 1,000-member minimum: a first sync creates the segment's
family of audiences and fills them; a storm of 40100 (QPS limit) answers still ends with exact membership;
an update that would leave an audience under 1,000 members is refused, reported as ``segment_too_small``
(outcome, notes, metrics row, plan warning) without a retry, and changes nothing on TikTok; the members
go out once the group is big enough. Drives :func:`sync_audience` against the sandbox over HTTP (no
Airflow), on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import secrets
from collections.abc import Iterable, Iterator

import pytest

from audience_sync.core.errors import TransientDestinationError
from audience_sync.core.keys import StateKeys
from audience_sync.core.ledger import StateStore
from audience_sync.core.sync import RetryPolicy, SyncOutcome, SyncRequest, plan_sync, sync_audience
from audience_sync.destinations.tiktok import SEGMENT_TOO_SMALL, TikTokDestination, family_parts
from audience_sync.destinations.tiktok_client import TikTokClient
from audience_sync.outcome import metrics_row
from tests.conftest import SANDBOX_TOKEN

SCHEMA = ("EMAIL_SHA256", "PHONE_SHA256")
FAST = RetryPolicy(attempts=5, initial_wait=0.01, max_wait=0.05)
KEYS = StateKeys.generate()
_accounts = itertools.count(7_200_000_000_000_000_000 + secrets.randbelow(10**12) * 10)
_runs = itertools.count(1)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def rows(keys: Iterable[int]) -> list[tuple[str, str, str]]:
    return [KEYS.staged_row(KEYS.member_id(k), SCHEMA, [sha(f"e{k}"), sha(f"p{k}")]) for k in keys]


class World:
    def __init__(self, srv, url: str) -> None:
        self.srv = srv
        self.app = srv.app("tiktok")
        assert self.app.min_audience_size == 1_000  # TikTok's rule, not a harness's lowered minimum
        self.account = str(next(_accounts))
        self.store = StateStore(url, keys=KEYS)

    def dest(self) -> TikTokDestination:
        """A new destination each time, as in a new task process."""
        client = TikTokClient(SANDBOX_TOKEN, base_url=f"{self.srv.url}/open_api/v1.3", account=self.account)
        return TikTokDestination(client, self.account)

    def req(self, mode: str = "mirror") -> SyncRequest:
        return SyncRequest(
            dag_id="dag_tiktok",
            run_id=f"run_{next(_runs)}",
            platform="tiktok",
            account=self.account,
            segment_name="cart_users",
            schema=SCHEMA,
            mode=mode,
            logical_date=dt.datetime(2026, 11, 20, tzinfo=dt.UTC),
        )

    def sync(self, keys: Iterable[int], mode: str = "mirror", retry: RetryPolicy = FAST) -> SyncOutcome:
        return sync_audience(self.dest(), self.store, self.req(mode), rows(keys), retry=retry)

    def members(self, audience_id: str) -> dict[str, set[str]]:
        return {t: self.app.members(i) for t, i in family_parts(audience_id).items()}

    def codes(self, since: int) -> list[int]:
        return [e.get("code") for e in self.app.requests_log(since)]


def hashes(keys: Iterable[int]) -> dict[str, set[str]]:
    keys = list(keys)
    return {
        "EMAIL_SHA256": {sha(f"e{k}") for k in keys},
        "PHONE_SHA256": {sha(f"p{k}") for k in keys},
        "MAID_SHA256": set(),
    }


@pytest.fixture
def world(fresh_sandbox, state_url: str) -> Iterator[World]:
    w = World(fresh_sandbox, state_url)
    yield w
    w.app.clear_faults()
    w.store.engine.dispose()


def test_a_first_sync_creates_one_audience_per_identifier_type_named_by_the_segment(world: World) -> None:
    out = world.sync(range(1_200))
    assert out.audience_action == "created"
    assert (out.refused, out.waiting, out.counts["sent"]) == ("", 0, 1_200)
    assert world.members(out.audience_id) == hashes(range(1_200))
    names = {(a["name"], a["calculate_type"]) for a in world.app.audiences(world.account)}
    assert names == {("cart_users", t) for t in ("EMAIL_SHA256", "PHONE_SHA256", "MAID_SHA256")}
    again = world.sync(range(1_200))  # found again through the registry; nothing to send
    assert (again.audience_id, again.audience_action, again.run["added"]) == (out.audience_id, "reused", 0)


def test_a_storm_of_rate_limit_answers_still_ends_with_exact_membership(world: World) -> None:
    # 40100 (HTTP 200 with the code in the envelope) on runs of three consecutive requests every twelve,
    # plus single ones between: each platform call (creating the family alone takes six requests) retries
    # with backoff and gets through on a later attempt
    for skip in range(0, 60, 12):
        world.app.add_fault(code=40100, skip=skip, times=3)
    for skip in range(7, 60, 12):
        world.app.add_fault(code=40100, skip=skip, times=1)
    mark = world.app.last_seq()
    first = world.sync(range(1_500))
    assert world.codes(mark).count(40100) >= 7
    assert world.members(first.audience_id) == hashes(range(1_500))
    world.app.clear_faults()
    for skip in range(1, 30, 8):
        world.app.add_fault(code=40100, skip=skip, times=3)
    mark = world.app.last_seq()
    second = world.sync(range(300, 1_800))  # 300 leave, 300 join
    assert world.codes(mark).count(40100) >= 6
    assert (second.run["added"], second.run["removed"], second.refused) == (300, 300, "")
    assert world.members(first.audience_id) == hashes(range(300, 1_800))
    counts = world.store.ledger_counts(world.store.get_registry("tiktok", world.account, "cart_users").id)
    assert (counts["sent"], counts["in_progress"], counts["pending"], counts["failed"]) == (1_500, 0, 0, 0)


def test_a_storm_longer_than_the_retries_fails_the_try_and_the_next_run_ends_exact(world: World) -> None:
    world.sync(range(1_200))
    world.app.add_fault(code=40100, path_regex="update/$", times=None)  # every update is rate limited
    with pytest.raises(TransientDestinationError) as info:
        world.sync(range(100, 1_300))
    assert info.value.code == 40100
    world.app.clear_faults()
    out = world.sync(range(100, 1_300))
    assert world.members(out.audience_id) == hashes(range(100, 1_300))
    assert out.counts["sent"] == 1_200


def test_an_update_leaving_fewer_than_1000_members_is_refused_as_segment_too_small(world: World) -> None:
    first = world.sync(range(1_200))
    mark = world.app.last_seq()
    out = world.sync(range(900))  # removing 300 would leave 900 members in each audience
    assert out.refused == SEGMENT_TOO_SMALL
    assert any(n.startswith("segment too small") for n in out.notes), out.notes
    updates = [e for e in world.app.requests_log(mark) if e["path"].endswith("update/")]
    assert [e["code"] for e in updates] == [40002, 40002]  # one refusal per audience, none retried
    assert world.members(first.audience_id) == hashes(range(1_200))  # TikTok changed nothing
    # what the run did: nothing reached TikTok; the 300 leavers are still to be removed
    assert (out.run["removed"], out.counts["sent"], out.counts["removing"]) == (0, 900, 300)
    row = metrics_row({"destination": "tiktok"}, out.as_xcom(), out.counts, None, extract_invalid=0)
    assert row["outcome"] == SEGMENT_TOO_SMALL
    assert "segment too small" in row["note"]
    plan = plan_sync(world.dest(), world.store, world.req(), rows(range(900)), retry=FAST)
    assert any("segment too small" in w for w in plan["warnings"]), plan["warnings"]
    assert plan["removes"] == 300  # the removals are still owed, and tried again next run


def test_a_new_small_segment_is_refused_then_sent_once_it_reaches_1000(world: World) -> None:
    out = world.sync(range(400))
    assert out.audience_action == "created"  # creating from a header-only file is not an update
    assert out.refused == SEGMENT_TOO_SMALL
    assert (out.counts["failed"], out.counts["sent"], out.run["added"]) == (400, 0, 0)
    assert world.members(out.audience_id) == hashes([])
    grown = world.sync(range(1_100))
    assert grown.refused == ""
    assert (grown.counts["sent"], grown.counts["failed"]) == (1_100, 0)
    assert world.members(out.audience_id) == hashes(range(1_100))
