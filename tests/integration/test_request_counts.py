"""How many member requests a sync makes, against the local Meta sandbox through the real SDK.

Adds of N changed rows go in exactly ceil(N / 10,000) requests. Removals go in as few requests as the
connection's ``remove_via`` allows: with the payload in the URL (the default) as many as packing the
rows under the URL budget needs, whatever the ledger's page size; with the payload in the body (a
DELETE with a multipart body, or a POST with ``method=delete``) exactly ceil(N / 10,000).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import math
import secrets
from collections.abc import Iterable

import pytest

from audience_sync.core.keys import StateKeys
from audience_sync.core.ledger import StateStore
from audience_sync.core.sync import REMOVE_LEDGER_BATCH, RetryPolicy, SyncRequest, sync_audience
from audience_sync.destinations.meta import REMOVE_VIA, MetaDestination, make_meta_api
from tests.conftest import SANDBOX_TOKEN

SCHEMA = ("EMAIL", "PHONE", "FN", "LN", "COUNTRY")  # a 5-key schema: ~30 rows per URL-budget DELETE
FAST = RetryPolicy(attempts=4, initial_wait=0.01, max_wait=0.05)
KEYS = StateKeys.generate()
_accounts = itertools.count(6 * 10**13 + secrets.randbelow(10**12))
_runs = itertools.count(1)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def values(k: int) -> list[str]:
    return [sha(f"e{k}"), sha(f"p{k}"), sha(f"fn{k}"), "" if k % 7 == 0 else sha(f"ln{k}"), sha("us")]


def rows(keys: Iterable[int]) -> list[tuple[str, str, str]]:
    return [KEYS.staged_row(KEYS.member_id(k), SCHEMA, values(k)) for k in keys]


class World:
    """One ad account on the sandbox and one state database; syncs with a chosen ``remove_via``."""

    def __init__(self, srv, url: str, remove_via: str) -> None:
        self.srv = srv
        self.account = f"act_{next(_accounts)}"
        self.store = StateStore(url, keys=KEYS)
        self.remove_via = remove_via

    def dest(self) -> MetaDestination:
        api = make_meta_api(SANDBOX_TOKEN, graph_url=self.srv.url)
        return MetaDestination(api, self.account, remove_via=self.remove_via)

    def sync(self, keys: Iterable[int]):
        req = SyncRequest(
            dag_id="dag_counts",
            run_id=f"run_{next(_runs)}",
            platform="meta",
            account=self.account,
            segment_name="loyal_users",
            schema=SCHEMA,
            mode="mirror",
            logical_date=dt.datetime(2026, 11, 20, tzinfo=dt.UTC),
        )
        return sync_audience(self.dest(), self.store, req, rows(keys), retry=FAST)

    def mark(self) -> int:
        return self.srv.meta.last_seq()

    def member_requests(self, since: int, op: str) -> list[dict]:
        return self.srv.meta.member_requests(since, (op,))

    def members(self, audience_id: str) -> int:
        return len(self.srv.meta.members(audience_id))


@pytest.fixture(params=list(REMOVE_VIA))
def world(request: pytest.FixtureRequest, fresh_sandbox, tmp_path) -> World:
    # SQLite only: the counts do not depend on the state engine (test_sync_semantics covers both)
    w = World(fresh_sandbox, f"sqlite:///{tmp_path}/state.db", request.param)
    yield w
    w.srv.meta.clear_faults()
    w.store.engine.dispose()


def test_adds_and_removals_go_in_as_few_requests_as_the_mode_allows(world: World) -> None:
    first_group = range(20_001)
    mark = world.mark()
    first = world.sync(first_group)
    adds = world.member_requests(mark, "add")
    assert [e["num_rows"] for e in adds] == [10_000, 10_000, 1]  # ceil(20,001 / 10,000) requests
    assert {(e["method"], e["status"]) for e in adds} == {("POST", 200)}
    assert world.member_requests(mark, "remove") == []

    # a delta: 10,001 join, 12,345 leave (more than one ledger page of removal work)
    group = range(12_345, 30_002)
    assert 12_345 > REMOVE_LEDGER_BATCH * 5
    mark = world.mark()
    out = world.sync(group)
    assert out.audience_id == first.audience_id
    adds = world.member_requests(mark, "add")
    assert [e["num_rows"] for e in adds] == [10_000, 1]
    removes = world.member_requests(mark, "remove")
    assert {e["status"] for e in removes} == {200}
    assert sum(e["num_rows"] for e in removes) == 12_345
    assert len({e["session"]["session_id"] for e in removes}) == 1
    assert [e["session"]["batch_seq"] for e in removes] == list(range(1, len(removes) + 1))
    assert [e["session"]["last_batch_flag"] for e in removes] == [False] * (len(removes) - 1) + [True]
    assert out.run["removed"] == 12_345 and out.run["added"] == 10_001
    assert world.members(out.audience_id) == len(group)

    if world.remove_via == "delete":
        # the SDK's DELETE, payload in the URL: as many requests as packing all the rows (in ledger
        # order) under the URL budget takes, never one more per ledger page
        assert {e["method"] for e in removes} == {"DELETE"}
        assert all(len(e["query"].get("payload", "")) > 0 for e in removes)
        ordered = sorted(range(12_345), key=KEYS.member_id)
        packed = world.dest().split_removals(list(SCHEMA), [values(k) for k in ordered])
        assert [e["num_rows"] for e in removes] == [len(c) for c in packed]
        assert len(removes) > math.ceil(12_345 / world.dest().max_remove_rows)  # ~30 rows a request
    else:
        assert [e["num_rows"] for e in removes] == [10_000, 2_345]  # ceil(12,345 / 10,000) requests
        wire = {"delete_body": ("DELETE", None), "post_override": ("POST", "DELETE")}[world.remove_via]
        assert {(e["method"], e.get("method_override")) for e in removes} == {wire}
        assert all("payload" not in e["query"] for e in removes)  # the payload rode in the body
