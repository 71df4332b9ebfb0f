"""The engine over google_datamanager: a sync whose requests Google is still processing leaves members in
progress, and the wait task's poll, with a destination that never saw the batches (another process),
settles them from the stored receipts; replace ends exact; a sync that dies mid-upload is finished by the
next one with exact membership; on SQLite and PostgreSQL. Drives :func:`sync_audience` directly against the sandbox (no Airflow)."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import secrets
import time
from collections.abc import Iterable, Iterator

import pytest
import sqlalchemy as sa
from google.oauth2.credentials import Credentials

from audience_sync.core.errors import TransientDestinationError
from audience_sync.core.keys import StateKeys
from audience_sync.core.ledger import StateStore, upload_receipts
from audience_sync.core.sync import RetryPolicy, SyncRequest, poll_processing, sync_audience
from audience_sync.destinations.google_datamanager import GoogleDataManagerDestination, make_clients
from tests.conftest import SANDBOX_TOKEN

SCHEMA = ("email_address", "phone_number")
FAST = RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.05)
KEYS = StateKeys.generate()
_accounts = itertools.count(5_000_000_000 + secrets.randbelow(10**8) * 10)
_runs = itertools.count(1)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def rows(keys: Iterable[int]) -> list[tuple[str, str, str]]:
    return [KEYS.staged_row(KEYS.member_id(k), SCHEMA, [sha(f"e{k}"), sha(f"p{k}")]) for k in keys]


def expected(keys: Iterable[int]) -> set[frozenset[tuple[str, str]]]:
    return {frozenset({("email_address", sha(f"e{k}")), ("phone_number", sha(f"p{k}"))}) for k in keys}


class World:
    def __init__(self, srv, url: str) -> None:
        self.srv = srv
        self.app = srv.app("google_datamanager")
        self.account = str(next(_accounts))
        self.store = StateStore(url, keys=KEYS)

    def dest(self) -> GoogleDataManagerDestination:
        """A new destination each time: nothing in memory from an earlier one (as in a new task process)."""
        return GoogleDataManagerDestination(
            *make_clients(Credentials(token=SANDBOX_TOKEN), self.srv.grpc_target), self.account, timeout=10
        )

    def req(self, mode: str = "mirror") -> SyncRequest:
        return SyncRequest(
            dag_id="dag_gdm",
            run_id=f"run_{next(_runs)}",
            platform="google_datamanager",
            account=self.account,
            segment_name="loyal_users",
            schema=SCHEMA,
            mode=mode,
            logical_date=dt.datetime(2026, 11, 20, tzinfo=dt.UTC),
        )

    def sync(self, group: list[tuple[str, str, str]], mode: str = "mirror", retry: RetryPolicy = FAST):
        return sync_audience(self.dest(), self.store, self.req(mode), group, retry=retry)

    def members(self, audience_id: str) -> set[frozenset[tuple[str, str]]]:
        return {frozenset(m) for m in self.app.members(audience_id)}

    def entry(self):
        return self.store.get_registry("google_datamanager", self.account, "loyal_users")


@pytest.fixture
def world(fresh_sandbox, state_url: str) -> Iterator[World]:
    w = World(fresh_sandbox, state_url)
    yield w
    w.app.clear_faults()
    w.app.processing_seconds = 0
    w.store.engine.dispose()


def test_members_stay_in_progress_until_google_processed_the_requests(world: World) -> None:
    world.app.processing_seconds = 2
    out = world.sync(rows(range(300)))
    assert out.audience_action == "created"
    assert out.waiting == 1
    assert (out.counts["in_progress"], out.counts["sent"]) == (300, 0)
    with world.store.engine.connect() as conn:  # the request ids the wait task will need
        assert conn.execute(sa.select(sa.func.count()).select_from(upload_receipts)).scalar_one() == 1
    assert poll_processing(world.dest(), world.store, world.entry(), retry=FAST) == 1  # still processing
    time.sleep(2.1)
    assert poll_processing(world.dest(), world.store, world.entry(), retry=FAST) == 0
    counts = world.store.ledger_counts(world.entry().id)
    assert (counts["sent"], counts["in_progress"]) == (300, 0)
    assert world.members(out.audience_id) == expected(range(300))


def test_replace_ends_with_exactly_the_new_group(world: World) -> None:
    first = world.sync(rows(range(0, 200)), mode="replace")
    mark = world.app.last_seq()
    out = world.sync(rows(range(150, 400)), mode="replace")
    assert out.audience_id == first.audience_id
    assert world.members(out.audience_id) == expected(range(150, 400))
    ops = [e["op"] for e in world.app.member_requests(mark, ops=("add", "remove", "remove_all"))]
    assert ops == ["add", "remove_all"]  # the new group, then everyone not (re-)added by it


def test_a_sync_that_fails_mid_upload_is_finished_by_the_next_run_exactly(world: World) -> None:
    group = rows(range(25_000))  # three batches of at most 10,000
    mark = world.app.last_seq()
    world.app.add_fault(
        action="error",
        method="RPC",
        path_regex="/IngestAudienceMembers$",
        code=14,
        skip=1,
        times=FAST.attempts,
    )
    with pytest.raises(TransientDestinationError):
        world.sync(group)
    audience_id = world.entry().audience_id
    assert len(world.app.members(audience_id)) == 10_000  # the first batch got there
    out = world.sync(group)  # the next run resumes the open upload with its batch numbers
    assert any("resumed" in n for n in out.notes)
    assert world.members(audience_id) == expected(range(25_000))
    assert (out.counts["sent"], out.counts["in_progress"], out.counts["pending"]) == (25_000, 0, 0)
    added = [e["rows"] for e in world.app.member_requests(mark, ops=("add",)) if e["status"] == "OK"]
    assert sum(added) == 25_000  # every member sent once


CONSENT_SCHEMA = (*SCHEMA, "ad_user_data", "ad_personalization")


def consent_rows(consents: dict[int, tuple[str, str]]) -> list[tuple[str, str, str]]:
    """Rows with each person's own consent (``""``: the row says nothing, the destination's applies)."""
    return [
        KEYS.staged_row(KEYS.member_id(k), CONSENT_SCHEMA, [sha(f"e{k}"), sha(f"p{k}"), *c])
        for k, c in consents.items()
    ]


def test_each_members_own_consent_goes_with_it_and_a_denied_member_leaves(world: World) -> None:
    """Per-row consent travels as each member's own consent (Data Manager: it overrides the request's);
    a person who denies is not added, and one who withdraws later is removed from the list."""
    dest = GoogleDataManagerDestination(
        *make_clients(Credentials(token=SANDBOX_TOKEN), world.srv.grpc_target),
        world.account,
        ad_user_data="GRANTED",
        ad_personalization="UNSPECIFIED",
        timeout=10,
    )
    consents = {
        **dict.fromkeys(range(0, 40), ("GRANTED", "GRANTED")),
        **dict.fromkeys(range(40, 60), ("", "GRANTED")),  # ad_user_data from the destination
        **dict.fromkeys(range(60, 70), ("GRANTED", "UNSPECIFIED")),
        **dict.fromkeys(range(70, 75), ("DENIED", "GRANTED")),
    }
    mark = world.app.last_seq()
    req = world.req()
    req = SyncRequest(**{**req.__dict__, "schema": CONSENT_SCHEMA})
    out = sync_audience(dest, world.store, req, consent_rows(consents), retry=FAST)
    (sent,) = [e for e in world.app.member_requests(mark, ops=("add",)) if e["status"] == "OK"]
    assert sent["consent"] == {"GRANTED/GRANTED": 60, "GRANTED/UNSPECIFIED": 10}  # the denied never went
    assert world.members(out.audience_id) == expected(range(70))
    assert out.counts["sent"] == 70 and out.counts["failed"] == 5  # rejected, with Google's reason

    consents.update(dict.fromkeys(range(0, 10), ("DENIED", "DENIED")))  # ten people withdraw
    req = SyncRequest(**{**world.req().__dict__, "schema": CONSENT_SCHEMA})
    out = sync_audience(dest, world.store, req, consent_rows(consents), retry=FAST)
    assert world.members(out.audience_id) == expected(range(10, 70))
    assert out.counts["sent"] == 60
