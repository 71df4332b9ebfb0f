"""The destination contract: every platform's Destination passes these against its local sandbox.

Each test runs once per platform harness (see ``conftest.py``), through the platform's real SDK over
loopback HTTP, and checks the result on the sandbox side, not just what the destination reports.
"""

from __future__ import annotations

import itertools
import secrets
import time
import traceback
from collections.abc import Callable

import pytest

from audience_sync.core.contract import Destination, PlatformAudience, UploadSession
from audience_sync.core.errors import PermanentDestinationError, TransientDestinationError
from tests.contract.conftest import ErrorCase, Harness, as_members

NAME = "contract vip"
_session_ids = itertools.count(7_000_000_000 + secrets.randbelow(10**9))


def new_session(
    *, seq: int = 1, last: bool = True, total: int = 0, session_id: int | None = None
) -> UploadSession:
    sid = next(_session_ids) if session_id is None else session_id
    return UploadSession(session_id=sid, batch_seq=seq, last_batch=last, estimated_total=total)


def assert_no_secret(exc: BaseException, *secret_values: str) -> None:
    text = "\n".join([str(exc), repr(exc), *map(str, exc.args), *traceback.format_exception(exc)])
    for value in secret_values:
        assert value not in text


def assert_says(harness: Harness, exc: BaseException, case: ErrorCase) -> None:
    message = str(exc).lower()
    assert message
    for fragment in harness.says(case):
        assert fragment.lower() in message, f"{fragment!r} missing from: {exc}"


def create(dest: Destination, name: str = NAME) -> PlatformAudience:
    return dest.create_audience(name, "audience-sync contract test")


# ------------------------------------------------------------------------- 1. find_audiences


def test_find_unknown_name_is_empty(harness: Harness) -> None:
    harness.create_by_hand("someone else's audience")
    assert harness.destination.find_audiences(NAME) == []


def test_find_after_create_returns_exactly_it(harness: Harness) -> None:
    dest = harness.destination
    created = create(dest)
    assert isinstance(created, PlatformAudience)
    assert created.id
    assert created.name == NAME
    found = dest.find_audiences(NAME)
    assert [(a.id, a.name) for a in found] == [(created.id, NAME)]


def test_find_returns_all_duplicates_oldest_first(harness: Harness) -> None:
    dest = harness.destination
    ours = create(dest)
    later = harness.create_by_hand(NAME)
    # made by hand long ago: oldest although the platform gave it the highest id
    oldest = harness.create_by_hand(NAME, created_time=1_500_000_000)
    harness.create_by_hand(NAME, other_account=True)  # same name, another ad account: not ours
    found = dest.find_audiences(NAME)
    assert [a.id for a in found] == [oldest, ours.id, later]
    assert all(a.name == NAME for a in found)
    times = [a.created_time for a in found]
    assert times == sorted(times)
    assert times[0] == 1_500_000_000


def test_find_matches_the_exact_name_only(harness: Harness) -> None:
    target = harness.create_by_hand("vip")
    others = {name: harness.create_by_hand(name) for name in ("vip2", "xvip", "VIP", "vi", "vip list")}
    assert [a.id for a in harness.destination.find_audiences("vip")] == [target]
    assert [a.id for a in harness.destination.find_audiences("vi")] == [others["vi"]]
    assert harness.destination.find_audiences("ip") == []


def test_find_pages_through_every_audience(harness: Harness) -> None:
    page = harness.list_page_size
    n = 2 * page + 50  # three pages
    hits = {0, page - 1, page, 2 * page - 1, 2 * page, n - 1}  # on both sides of each page boundary
    wanted = []
    for i in range(n):
        aid = harness.create_by_hand(NAME if i in hits else f"filler {i}")
        if i in hits:
            wanted.append(aid)
    mark = harness.request_mark()
    found = harness.destination.find_audiences(NAME)
    assert [a.id for a in found] == wanted
    assert len(harness.requests_since(mark)) >= 3  # one request per page


def test_find_error_on_a_later_page_is_mapped(harness: Harness) -> None:
    for i in range(harness.list_page_size + 1):
        harness.create_by_hand(f"filler {i}")
    harness.inject_error(harness.transient_errors[0], skip=1)  # the first page answers, the second fails
    with pytest.raises(TransientDestinationError):
        harness.destination.find_audiences(NAME)


# --------------------------------------------------------------------------- 2. get_audience


def test_get_audience_then_none_after_platform_delete(harness: Harness) -> None:
    dest = harness.destination
    created = create(dest)
    got = dest.get_audience(created.id)
    assert got is not None
    assert (got.id, got.name) == (created.id, NAME)
    assert got.created_time > 0
    harness.delete_audience(created.id)
    assert dest.get_audience(created.id) is None
    assert dest.find_audiences(NAME) == []


# ------------------------------------------------------------------------------ 3. members


def test_add_then_remove_exactly_the_rows_sent(harness: Harness) -> None:
    dest, schema = harness.destination, harness.schema
    aud = create(dest)
    rows = harness.rows(60)
    res = dest.add_members(aud.id, schema, rows, new_session(total=60))
    assert (res.received, res.invalid, res.invalid_rows) == (60, 0, [])
    assert harness.members(aud.id) == as_members(schema, rows)

    gone = rows[10:35]
    res = dest.remove_members(aud.id, schema, gone, new_session(total=len(gone)))
    assert (res.received, res.invalid) == (len(gone), 0)
    assert harness.members(aud.id) == as_members(schema, rows[:10] + rows[35:])


def test_replace_over_three_batches_leaves_exactly_the_new_rows(harness: Harness) -> None:
    dest, schema = harness.destination, harness.schema
    aud = create(dest)
    old = harness.rows(30, tag="old")
    dest.add_members(aud.id, schema, old, new_session())
    new = old[:10] + harness.rows(50, tag="new")  # keeps 10, drops 20, adds 50
    batches = [new[:20], new[20:40], new[40:]]
    sid = next(_session_ids)
    for seq, batch in enumerate(batches, start=1):
        session = new_session(session_id=sid, seq=seq, last=seq == 3, total=len(new))
        res = dest.replace_members(aud.id, schema, batch, session)
        assert (res.received, res.invalid) == (len(batch), 0)
    assert harness.members(aud.id) == as_members(schema, new)


# ----------------------------------------------------------------------------- 4. batching


def test_a_full_batch_of_max_batch_rows_is_accepted(harness: Harness) -> None:
    dest, schema = harness.destination, harness.schema
    assert dest.max_batch_rows == harness.max_batch_rows
    rows = harness.rows(dest.max_batch_rows)
    aud = create(dest)
    res = dest.add_members(aud.id, schema, rows, new_session(total=len(rows)))
    assert (res.received, res.invalid) == (len(rows), 0)
    assert harness.members(aud.id) == as_members(schema, rows)


@pytest.mark.parametrize("op", ["add_members", "replace_members"])
def test_an_oversized_batch_is_refused_before_sending(harness: Harness, op: str) -> None:
    dest, schema = harness.destination, harness.schema
    limit = dest.max_batch_rows
    rows = harness.rows(limit + 1)
    aud = create(dest)
    mark, made = harness.request_mark(), dest.requests_made
    with pytest.raises(ValueError, match=str(limit)):
        getattr(dest, op)(aud.id, schema, rows, new_session(total=len(rows)))
    assert harness.requests_since(mark) == []
    assert dest.requests_made == made
    assert harness.members(aud.id) == set()


def test_an_oversized_removal_is_refused_before_sending(harness: Harness) -> None:
    """A removal bigger than one request allows fails fast (ValueError), never as a retried transient error."""
    dest = harness.destination
    schema = harness.schema_of(8)
    rows = harness.rows(dest.max_remove_rows + 1, schema=schema, sparse=False)
    assert len(dest.split_removals(schema, rows)) > 1
    aud = create(dest)
    mark, made = harness.request_mark(), dest.requests_made
    with pytest.raises(ValueError, match="split_removals|max|limit|budget"):
        dest.remove_members(aud.id, schema, rows, new_session(total=len(rows)))
    assert harness.requests_since(mark) == []
    assert dest.requests_made == made


@pytest.mark.parametrize("n_keys", [1, 8, None], ids=["1-key", "8-keys", "all-keys"])
def test_one_full_removal_chunk_is_accepted(harness: Harness, n_keys: int | None) -> None:
    dest = harness.destination
    schema = harness.schema_of(n_keys)
    rows = harness.rows(dest.max_remove_rows * 2, schema=schema, sparse=False)  # every value set
    first = dest.split_removals(schema, rows)[0]
    assert 1 <= len(first) <= dest.max_remove_rows
    aud = create(dest)
    dest.add_members(aud.id, schema, first, new_session())
    mark = harness.request_mark()
    res = dest.remove_members(aud.id, schema, first, new_session(total=len(first)))
    assert res.received == len(first)
    assert [r["status"] for r in harness.requests_since(mark)] == [200]
    assert harness.members(aud.id) == set()


def test_thousands_of_removals_in_split_removals_chunks(harness: Harness) -> None:
    dest = harness.destination
    schema = harness.schema_of(8)
    rows = harness.rows(3000, schema=schema, sparse=False)
    aud = create(dest)
    dest.add_members(aud.id, schema, rows, new_session())
    sid = next(_session_ids)
    chunks = dest.split_removals(schema, rows)
    assert sum(len(c) for c in chunks) == len(rows)
    mark = harness.request_mark()
    for seq, chunk in enumerate(chunks, start=1):
        session = new_session(session_id=sid, seq=seq, last=seq == len(chunks), total=len(rows))
        assert dest.remove_members(aud.id, schema, chunk, session).received == len(chunk)
    assert {r["status"] for r in harness.requests_since(mark)} == {200}
    assert harness.members(aud.id) == set()


def test_removal_chunks_of_long_unhashed_ids_are_accepted(harness: Harness) -> None:
    """``split_removals`` must hold for every valid row, not only for 64-hex hashes: ids sent as-is
    (Meta's EXTERN_ID) can be longer than a hash, and a removal request that is too long is lost."""
    if harness.unhashed_id_key is None:
        pytest.skip(f"{harness.platform} has no unhashed identifier key")
    dest = harness.destination
    schema = (harness.unhashed_id_key,)
    rows = harness.long_id_rows(dest.max_remove_rows, length=128)
    aud = create(dest)
    dest.add_members(aud.id, schema, rows, new_session())
    assert len(harness.members(aud.id)) == len(rows)
    chunks = dest.split_removals(schema, rows)
    mark = harness.request_mark()
    for seq, chunk in enumerate(chunks, start=1):
        dest.remove_members(
            aud.id, schema, chunk, new_session(seq=seq, last=seq == len(chunks), total=len(rows))
        )
    sent = [{k: r.get(k) for k in ("status", "fault", "url_bytes")} for r in harness.requests_since(mark)]
    assert {r["status"] for r in sent} == {200}, sent
    assert harness.members(aud.id) == set()


# -------------------------------------------------------------------------- 5. invalid rows


@pytest.mark.parametrize("op", ["add_members", "replace_members"])
def test_bad_hash_rows_are_reported_and_not_stored(harness: Harness, op: str) -> None:
    dest, schema = harness.destination, harness.schema
    aud = create(dest)
    bad = [0, 5, 11]
    rows = [harness.bad_row(i) if i in bad else row for i, row in enumerate(harness.rows(12))]
    res = getattr(dest, op)(aud.id, schema, rows, new_session(total=len(rows)))
    assert res.received == 12
    assert res.invalid == len(bad)
    assert res.invalid_rows == bad
    good = [row for i, row in enumerate(rows) if i not in bad]
    assert harness.members(aud.id) == as_members(schema, good)


def test_many_bad_rows_are_all_counted(harness: Harness) -> None:
    dest, schema = harness.destination, harness.schema
    aud = create(dest)
    rows = list(harness.rows(45))
    bad = set(range(1, 45, 3))  # 15 bad rows
    rows = [harness.bad_row(i) if i in bad else row for i, row in enumerate(rows)]
    res = dest.add_members(aud.id, schema, rows, new_session())
    assert res.invalid == 15
    assert res.invalid_rows  # the platform may sample only some of them ...
    assert set(res.invalid_rows) <= bad  # ... but never names a good row
    assert harness.members(aud.id) == as_members(schema, [r for i, r in enumerate(rows) if i not in bad])


# ------------------------------------------------------------------------- 6. error mapping


def test_transient_platform_errors(harness: Harness, transient_case: ErrorCase) -> None:
    dest, schema = harness.destination, harness.schema
    aud = create(dest)
    rows = harness.rows(3)
    harness.inject_error(transient_case)
    with pytest.raises(TransientDestinationError) as info:
        dest.add_members(aud.id, schema, rows, new_session())
    assert not isinstance(info.value, PermanentDestinationError)
    assert (info.value.code, info.value.subcode) == (transient_case.code, transient_case.subcode)
    assert_no_secret(info.value, harness.token)
    assert harness.members(aud.id) == set()
    dest.add_members(aud.id, schema, rows, new_session())  # the fault was one-off: a retry works
    assert harness.members(aud.id) == as_members(schema, rows)


def test_permanent_platform_errors_say_what_to_do(harness: Harness, permanent_case: ErrorCase) -> None:
    dest = harness.destination
    aud = create(dest)
    harness.inject_error(permanent_case)
    with pytest.raises(PermanentDestinationError) as info:
        dest.add_members(aud.id, harness.schema, harness.rows(3), new_session())
    assert not isinstance(info.value, TransientDestinationError)
    assert (info.value.code, info.value.subcode) == (permanent_case.code, permanent_case.subcode)
    assert_says(harness, info.value, permanent_case)
    assert_no_secret(info.value, harness.token)


def _operations(harness: Harness, audience_id: str) -> dict[str, Callable[[], object]]:
    dest, schema, rows = harness.destination, harness.schema, harness.rows(3)
    return {
        "find_audiences": lambda: dest.find_audiences(NAME),
        "get_audience": lambda: dest.get_audience(audience_id),
        "create_audience": lambda: dest.create_audience(NAME + " 2", ""),
        "add_members": lambda: dest.add_members(audience_id, schema, rows, new_session()),
        "remove_members": lambda: dest.remove_members(audience_id, schema, rows, new_session()),
        "replace_members": lambda: dest.replace_members(audience_id, schema, rows, new_session()),
    }


@pytest.mark.parametrize(
    "op",
    ["find_audiences", "get_audience", "create_audience", "add_members", "remove_members", "replace_members"],
)
def test_every_operation_maps_errors_and_dropped_connections(harness: Harness, op: str) -> None:
    aud = create(harness.destination)
    call = _operations(harness, aud.id)[op]

    harness.inject_error(harness.transient_errors[0])
    with pytest.raises(TransientDestinationError) as transient:
        call()
    harness.inject_error(harness.auth_error)
    with pytest.raises(PermanentDestinationError) as permanent:  # get_audience must not answer None
        call()
    assert permanent.value.code == harness.auth_error.code
    harness.inject_drop(apply=False)
    with pytest.raises(TransientDestinationError) as dropped:
        call()
    for exc in (transient.value, permanent.value, dropped.value):
        assert_no_secret(exc, harness.token)
    call()  # every fault was one-off: the same call now goes through
    written = op in ("add_members", "replace_members")
    assert harness.members(aud.id) == (as_members(harness.schema, harness.rows(3)) if written else set())


def test_wrong_token_is_a_permanent_auth_error(harness: Harness) -> None:
    bad_token = "wrong-" + secrets.token_hex(12)
    dest = harness.another_destination(token=bad_token)
    with pytest.raises(PermanentDestinationError) as info:
        dest.find_audiences(NAME)
    assert info.value.code == harness.auth_error.code
    assert_says(harness, info.value, harness.auth_error)
    assert_no_secret(info.value, bad_token, harness.token)


def test_unreachable_platform_is_transient_and_hides_the_token(harness: Harness) -> None:
    dest = harness.unreachable()
    with pytest.raises(TransientDestinationError) as info:
        dest.find_audiences(NAME)
    assert_no_secret(info.value, harness.token)


def test_timeout_is_transient_and_the_retry_counts_once(harness: Harness) -> None:
    dest, schema = harness.another_destination(timeout=0.3), harness.schema
    aud = create(dest)
    rows = harness.rows(20)
    session = new_session(total=len(rows))
    mark = harness.request_mark()
    harness.inject_delay(1.0)  # the platform answers (and applies) only after the client gave up
    with pytest.raises(TransientDestinationError) as info:
        dest.add_members(aud.id, schema, rows, session)
    assert_no_secret(info.value, harness.token)
    assert dest.add_members(aud.id, schema, rows, session).received == len(rows)
    deadline = time.monotonic() + 5
    while len(harness.requests_since(mark)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # wait for the delayed first attempt to be handled too
    assert len(harness.requests_since(mark)) == 2
    assert harness.members(aud.id) == as_members(schema, rows)
    assert harness.session_received(aud.id, session.session_id) == len(rows)


# ---------------------------------------------------------------------- 7. retry idempotency


@pytest.mark.parametrize("apply", [True, False], ids=["applied-then-dropped", "dropped-before-apply"])
def test_add_retried_after_a_drop_counts_once(harness: Harness, apply: bool) -> None:
    dest, schema = harness.destination, harness.schema
    aud = create(dest)
    rows = harness.rows(40)
    session = new_session(total=len(rows))
    harness.inject_drop(apply=apply)
    with pytest.raises(TransientDestinationError):
        dest.add_members(aud.id, schema, rows, session)
    assert harness.members(aud.id) == (as_members(schema, rows) if apply else set())
    res = dest.add_members(aud.id, schema, rows, session)  # the retry: same session_id and batch_seq
    assert res.received == len(rows)
    assert harness.members(aud.id) == as_members(schema, rows)
    assert harness.session_received(aud.id, session.session_id) == len(rows)


def test_remove_retried_after_a_drop_counts_once(harness: Harness) -> None:
    dest, schema = harness.destination, harness.schema
    aud = create(dest)
    rows = harness.rows(40)
    dest.add_members(aud.id, schema, rows, new_session())
    gone = rows[:15]
    session = new_session(total=len(gone))
    harness.inject_drop(apply=True)
    with pytest.raises(TransientDestinationError):
        dest.remove_members(aud.id, schema, gone, session)
    res = dest.remove_members(aud.id, schema, gone, session)
    assert res.received == len(gone)
    assert harness.members(aud.id) == as_members(schema, rows[15:])
    assert harness.session_received(aud.id, session.session_id) == len(gone)


def test_replace_batch_retried_after_a_drop_counts_once(harness: Harness) -> None:
    dest, schema = harness.destination, harness.schema
    aud = create(dest)
    dest.add_members(aud.id, schema, harness.rows(25, tag="old"), new_session())
    new = harness.rows(60, tag="new")
    batches = [new[:20], new[20:40], new[40:]]
    sid = next(_session_ids)
    for seq, batch in enumerate(batches, start=1):
        session = new_session(session_id=sid, seq=seq, last=seq == 3, total=len(new))
        if seq == 2:
            harness.inject_drop(apply=True)
            with pytest.raises(TransientDestinationError):
                dest.replace_members(aud.id, schema, batch, session)
        assert dest.replace_members(aud.id, schema, batch, session).received == len(batch)
    assert harness.members(aud.id) == as_members(schema, new)
    assert harness.session_received(aud.id, sid) == len(new)
