"""The destination contract: every platform's Destination passes these against its local sandbox.

Each test runs once per platform harness (see ``conftest.py``), through the platform's real SDK over
loopback HTTP, and checks the result on the sandbox side, not just what the destination reports.

Members go out through the upload lifecycle (``open_upload`` -> ``send_batch`` 1..n ->
``finish_upload`` -> ``upload_status``); sections 1-7 check audiences, batches, rows and errors
through it, section 8 the lifecycle itself.
"""

from __future__ import annotations

import itertools
import secrets
import time
import traceback
from collections.abc import Callable, Sequence

import pytest

from audience_sync.core.contract import (
    UPLOAD_OPS,
    Destination,
    PlatformAudience,
    ProcessingStatus,
    Upload,
    UploadResult,
)
from audience_sync.core.errors import PermanentDestinationError, TransientDestinationError
from tests.contract.conftest import ErrorCase, Harness, Member, Row, as_members

NAME = "contract vip"
#: upload keys must be unique across runs too: the session-wide sandbox may outlive one run's counter
_RUN = secrets.token_hex(4)
_keys = itertools.count()


def new_key(label: str = "upload") -> str:
    return f"contract|{_RUN}|{label}|{next(_keys)}"


def open_upload(dest: Destination, audience_id: str, op: str, *, total: int = 0) -> Upload:
    """A new upload with a unique key."""
    return dest.open_upload(audience_id, op, key=new_key(op), estimated_total=total)


def send(
    dest: Destination,
    audience_id: str,
    op: str,
    schema: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    seq: int = 1,
    last: bool = True,
    upload: Upload | None = None,
    total: int = 0,
) -> UploadResult:
    """Send ``rows`` as batch ``seq`` of ``upload`` (of a new upload when None); finish the upload
    after its last batch, as the engine does."""
    if upload is None:
        upload = open_upload(dest, audience_id, op, total=total)
    assert (upload.audience_id, upload.op) == (audience_id, op)
    res = dest.send_batch(upload, seq, schema, rows, last=last)
    if last:
        dest.finish_upload(upload, seq)
    return res


def send_all(
    dest: Destination, upload: Upload, schema: Sequence[str], batches: Sequence[Sequence[Row]]
) -> list[UploadResult]:
    """Send ``batches`` as batches 1..n of the upload, the last one flagged, then finish it."""
    results = []
    for seq, batch in enumerate(batches, start=1):
        last = seq == len(batches)
        results.append(
            send(dest, upload.audience_id, upload.op, schema, batch, seq=seq, last=last, upload=upload)
        )
    return results


def thirds(rows: Sequence[Row]) -> list[Sequence[Row]]:
    """Three batches of about a third each."""
    n = len(rows)
    return [rows[: n // 3], rows[n // 3 : 2 * n // 3], rows[2 * n // 3 :]]


def wait_done(
    dest: Destination, upload: Upload, within: float
) -> tuple[ProcessingStatus, list[ProcessingStatus]]:
    """Poll ``upload_status`` until done (at most ``within`` seconds); the last status and all seen."""
    seen = [dest.upload_status(upload)]
    deadline = time.monotonic() + within
    while not seen[-1].done and time.monotonic() < deadline:
        time.sleep(0.1)
        seen.append(dest.upload_status(upload))
    return seen[-1], seen


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


def scenario(harness: Harness, audience_id: str, op: str) -> tuple[tuple[Row, ...], set[Member]]:
    """Prepare the audience for an upload of ``op``: the rows that upload carries, and the members the
    audience must hold once it is processed.

    add: 30 new rows. remove: 15 of 25 members added before. replace: 25 members before; the new group
    keeps 5 of them, drops 20 and brings 25 new ones.
    """
    dest, schema = harness.destination, harness.schema
    if op == "add":
        rows = harness.rows(30, tag="add")
        return rows, as_members(schema, rows)
    old = harness.rows(25, tag="old")
    send(dest, audience_id, "add", schema, old)
    if op == "remove":
        return old[:15], as_members(schema, old[15:])
    new = old[:5] + harness.rows(25, tag="new")
    return new, as_members(schema, new)


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


@pytest.mark.harness_has("duplicate_names")
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


@pytest.mark.harness_has("unique_names")
def test_creating_a_taken_name_gives_the_audience_that_holds_it(harness: Harness) -> None:
    """A platform that refuses a second audience of one name: a run that lost the race to create it (or
    found nothing a moment before someone else created it) must end up with that audience, not fail."""
    winner = harness.create_by_hand(NAME)
    got = create(harness.destination)
    assert got.id == winner
    assert [a.id for a in harness.destination.find_audiences(NAME)] == [winner]


def test_find_matches_the_exact_name_only(harness: Harness) -> None:
    target = harness.create_by_hand("vip")
    others = {name: harness.create_by_hand(name) for name in ("vip2", "xvip", "VIP", "vi", "vip list")}
    assert [a.id for a in harness.destination.find_audiences("vip")] == [target]
    assert [a.id for a in harness.destination.find_audiences("vi")] == [others["vi"]]
    assert harness.destination.find_audiences("ip") == []


@pytest.mark.harness_has("lists_audiences_in_pages")
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


@pytest.mark.harness_has("lists_audiences_in_pages")
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
    assert got.created_time > 0 or not harness.reports_created_time
    harness.delete_audience(created.id)
    assert dest.get_audience(created.id) is None
    assert dest.find_audiences(NAME) == []


def test_get_audience_reports_the_size_the_platform_counts(harness: Harness) -> None:
    """What the wait task records after each run (metrics ``audience_size`` / ``match_rate``)."""
    dest, schema = harness.destination, harness.schema
    aud = create(dest)
    rows = harness.rows(40)
    send(dest, aud.id, "add", schema, rows, total=40)
    got = dest.get_audience(aud.id)
    assert got is not None
    assert got.size == len(harness.members(aud.id)) == 40
    if harness.reports_match_rate:
        assert got.match_rate is not None and 0 <= got.match_rate <= 100
    else:
        assert got.match_rate is None


# ------------------------------------------------------------------------------ 3. members


def test_add_then_remove_exactly_the_rows_sent(harness: Harness) -> None:
    dest, schema = harness.destination, harness.schema
    aud = create(dest)
    rows = harness.rows(60)
    res = send(dest, aud.id, "add", schema, rows, total=60)
    assert (res.received, res.invalid, res.invalid_rows) == (60, 0, [])
    assert harness.members(aud.id) == as_members(schema, rows)

    gone = rows[10:35]
    res = send(dest, aud.id, "remove", schema, gone, total=len(gone))
    assert (res.received, res.invalid) == (len(gone), 0)
    assert harness.members(aud.id) == as_members(schema, rows[:10] + rows[35:])


def test_replace_over_three_batches_leaves_exactly_the_new_rows(harness: Harness) -> None:
    dest, schema = harness.destination, harness.schema
    aud = create(dest)
    old = harness.rows(30, tag="old")
    send(dest, aud.id, "add", schema, old)
    new = old[:10] + harness.rows(50, tag="new")  # keeps 10, drops 20, adds 50
    upload = open_upload(dest, aud.id, "replace", total=len(new))
    batches = [new[:20], new[20:40], new[40:]]
    for batch, res in zip(batches, send_all(dest, upload, schema, batches), strict=True):
        assert (res.received, res.invalid) == (len(batch), 0)
    assert harness.members(aud.id) == as_members(schema, new)


# ----------------------------------------------------------------------------- 4. batching


def test_a_full_batch_of_max_batch_rows_is_accepted(harness: Harness) -> None:
    dest, schema = harness.destination, harness.schema
    assert dest.max_batch_rows == harness.max_batch_rows
    rows = harness.rows(dest.max_batch_rows)
    aud = create(dest)
    res = send(dest, aud.id, "add", schema, rows, total=len(rows))
    assert (res.received, res.invalid) == (len(rows), 0)
    assert harness.members(aud.id) == as_members(schema, rows)


@pytest.mark.parametrize("op", ["add", "replace"])
def test_an_oversized_batch_is_refused_before_sending(harness: Harness, op: str) -> None:
    dest, schema = harness.destination, harness.schema
    limit = dest.max_batch_rows
    rows = harness.rows(limit + 1)
    aud = create(dest)
    upload = open_upload(dest, aud.id, op, total=len(rows))
    mark, made = harness.request_mark(), dest.requests_made
    with pytest.raises(ValueError, match=str(limit)):
        dest.send_batch(upload, 1, schema, rows, last=True)
    assert harness.requests_since(mark) == []
    assert dest.requests_made == made
    assert harness.members(aud.id) == set()


def test_an_oversized_removal_is_refused_before_sending(harness: Harness, remove_mode: str) -> None:
    """A removal bigger than one request allows fails fast (ValueError), never as a retried transient error."""
    dest = harness.removal_destination(remove_mode)
    schema = harness.schema_of(8)
    rows = harness.rows(dest.max_remove_rows + 1, schema=schema, sparse=False)
    assert len(dest.split_removals(schema, rows)) > 1
    aud = create(dest)
    upload = open_upload(dest, aud.id, "remove", total=len(rows))
    mark, made = harness.request_mark(), dest.requests_made
    with pytest.raises(ValueError, match="split_removals|max|limit|budget"):
        dest.send_batch(upload, 1, schema, rows, last=True)
    assert harness.requests_since(mark) == []
    assert dest.requests_made == made


@pytest.mark.parametrize("n_keys", [1, 8, None], ids=["1-key", "8-keys", "all-keys"])
def test_one_full_removal_chunk_is_accepted(harness: Harness, remove_mode: str, n_keys: int | None) -> None:
    dest = harness.removal_destination(remove_mode)
    schema = harness.schema_of(n_keys)
    rows = harness.rows(dest.max_remove_rows * 2, schema=schema, sparse=False)  # every value set
    first = dest.split_removals(schema, rows)[0]
    assert 1 <= len(first) <= dest.max_remove_rows
    aud = create(dest)
    send(dest, aud.id, "add", schema, first)
    upload = open_upload(dest, aud.id, "remove", total=len(first))
    mark = harness.request_mark()
    res = dest.send_batch(upload, 1, schema, first, last=True)
    assert res.received == len(first)
    assert [r["status"] for r in harness.requests_since(mark)] == [200]  # one request, not refused
    dest.finish_upload(upload, 1)
    assert harness.members(aud.id) == set()


def test_thousands_of_removals_in_split_removals_chunks(harness: Harness, remove_mode: str) -> None:
    dest = harness.removal_destination(remove_mode)
    schema = harness.schema_of(8)
    rows = harness.rows(3000, schema=schema, sparse=False)
    aud = create(dest)
    send(dest, aud.id, "add", schema, rows)
    chunks = dest.split_removals(schema, rows)
    assert sum(len(c) for c in chunks) == len(rows)
    upload = open_upload(dest, aud.id, "remove", total=len(rows))
    mark = harness.request_mark()
    for chunk, res in zip(chunks, send_all(dest, upload, schema, chunks), strict=True):
        assert res.received == len(chunk)
    assert {r["status"] for r in harness.requests_since(mark)} == {200}
    assert harness.members(aud.id) == set()
    assert harness.upload_received(upload) == len(rows)


@pytest.mark.harness_has("unhashed_id_key")
def test_removal_chunks_of_long_unhashed_ids_are_accepted(harness: Harness, remove_mode: str) -> None:
    """``split_removals`` must hold for every valid row, not only for 64-hex hashes: ids sent as-is
    (Meta's EXTERN_ID) can be longer than a hash, and a removal request that is too long is lost."""
    assert harness.unhashed_id_key is not None
    dest = harness.removal_destination(remove_mode)
    schema = (harness.unhashed_id_key,)
    rows = harness.long_id_rows(dest.max_remove_rows, length=128)
    aud = create(dest)
    send(dest, aud.id, "add", schema, rows)
    assert len(harness.members(aud.id)) == len(rows)
    chunks = dest.split_removals(schema, rows)
    upload = open_upload(dest, aud.id, "remove", total=len(rows))
    mark = harness.request_mark()
    send_all(dest, upload, schema, chunks)
    sent = [{k: r.get(k) for k in ("status", "fault", "url_bytes")} for r in harness.requests_since(mark)]
    assert {r["status"] for r in sent} == {200}, sent
    assert harness.members(aud.id) == set()


# -------------------------------------------------------------------------- 5. invalid rows


@pytest.mark.parametrize("op", ["add", "replace"])
def test_bad_hash_rows_are_reported_and_not_stored(harness: Harness, op: str) -> None:
    dest, schema = harness.destination, harness.schema
    aud = create(dest)
    bad = [0, 5, 11]
    rows = [harness.bad_row(i) if i in bad else row for i, row in enumerate(harness.rows(12))]
    res = send(dest, aud.id, op, schema, rows, total=len(rows))
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
    res = send(dest, aud.id, "add", schema, rows)
    assert res.invalid == 15
    assert res.invalid_rows  # the platform may sample only some of them ...
    assert set(res.invalid_rows) <= bad  # ... but never names a good row
    assert harness.members(aud.id) == as_members(schema, [r for i, r in enumerate(rows) if i not in bad])


# ------------------------------------------------------------------------- 6. error mapping


def test_transient_platform_errors(harness: Harness, transient_case: ErrorCase) -> None:
    dest, schema = harness.destination, harness.schema
    aud = create(dest)
    rows = harness.rows(3)
    upload = open_upload(dest, aud.id, "add")
    harness.inject_error(transient_case)
    with pytest.raises(TransientDestinationError) as info:
        dest.send_batch(upload, 1, schema, rows, last=True)
    assert not isinstance(info.value, PermanentDestinationError)
    assert (info.value.code, info.value.subcode) == (transient_case.code, transient_case.subcode)
    assert_no_secret(info.value, harness.token)
    assert harness.members(aud.id) == set()
    send(dest, aud.id, "add", schema, rows, upload=upload)  # the fault was one-off: a retry works
    assert harness.members(aud.id) == as_members(schema, rows)


def test_permanent_platform_errors_say_what_to_do(harness: Harness, permanent_case: ErrorCase) -> None:
    dest = harness.destination
    aud = create(dest)
    upload = open_upload(dest, aud.id, "add")
    harness.inject_error(permanent_case)
    with pytest.raises(PermanentDestinationError) as info:
        dest.send_batch(upload, 1, harness.schema, harness.rows(3), last=True)
    assert not isinstance(info.value, TransientDestinationError)
    assert (info.value.code, info.value.subcode) == (permanent_case.code, permanent_case.subcode)
    assert_says(harness, info.value, permanent_case)
    assert_no_secret(info.value, harness.token)


def _finished_add(harness: Harness, audience_id: str) -> Upload:
    """An add upload of ``harness.rows(3)``, sent and finished."""
    upload = open_upload(harness.destination, audience_id, "add", total=3)
    send(harness.destination, audience_id, "add", harness.schema, harness.rows(3), upload=upload)
    return upload


def test_upload_status_transient_errors(harness: Harness, transient_case: ErrorCase) -> None:
    dest = harness.destination
    aud = create(dest)
    upload = _finished_add(harness, aud.id)
    harness.inject_error(transient_case)
    with pytest.raises(TransientDestinationError) as info:
        dest.upload_status(upload)
    assert not isinstance(info.value, PermanentDestinationError)
    assert (info.value.code, info.value.subcode) == (transient_case.code, transient_case.subcode)
    assert_no_secret(info.value, harness.token)
    assert dest.upload_status(upload).done  # a retry reads the status


def test_upload_status_permanent_errors_say_what_to_do(harness: Harness, permanent_case: ErrorCase) -> None:
    dest = harness.destination
    aud = create(dest)
    upload = _finished_add(harness, aud.id)
    harness.inject_error(permanent_case)
    with pytest.raises(PermanentDestinationError) as info:  # not a "done" or "not done" status
        dest.upload_status(upload)
    assert not isinstance(info.value, TransientDestinationError)
    assert (info.value.code, info.value.subcode) == (permanent_case.code, permanent_case.subcode)
    assert_says(harness, info.value, permanent_case)
    assert_no_secret(info.value, harness.token)


def _prepare_call(harness: Harness, audience_id: str, call: str) -> tuple[Callable[[], object], bool]:
    """``call`` (see ``conftest.CALLS``) set up to be made again and again, as a retry would; and whether
    it leaves ``harness.rows(3)`` on the audience once it went through."""
    dest, schema, rows = harness.destination, harness.schema, harness.rows(3)
    if call == "find_audiences":
        return lambda: dest.find_audiences(NAME), False
    if call == "get_audience":
        return lambda: dest.get_audience(audience_id), False
    if call == "create_audience":
        return lambda: dest.create_audience(NAME + " 2", ""), False
    if call == "open_upload":
        key = new_key()  # a retried open_upload comes with the same key
        return lambda: dest.open_upload(audience_id, "add", key=key, estimated_total=3), False
    if call.startswith("send_batch-"):
        op = call.removeprefix("send_batch-")
        upload = open_upload(dest, audience_id, op, total=3)
        # the batch alone changes members only where the last batch finishes the upload (Meta's flag);
        # where finish_upload is a request of its own (Google runs its job), not before it
        writes = op != "remove" and "finish_upload" in harness.offline_calls
        return lambda: dest.send_batch(upload, 1, schema, rows, last=True), writes
    upload = open_upload(dest, audience_id, "add", total=3)
    dest.send_batch(upload, 1, schema, rows, last=True)
    if call == "finish_upload":
        return lambda: dest.finish_upload(upload, 1), True
    assert call == "upload_status", call
    dest.finish_upload(upload, 1)
    return lambda: dest.upload_status(upload), True


def test_every_call_maps_errors_and_dropped_connections(harness: Harness, call: str) -> None:
    """Every call that reaches the platform (see ``offline_calls`` for those that do not)."""
    aud = create(harness.destination)
    make_call, writes = _prepare_call(harness, aud.id, call)

    harness.inject_error(harness.transient_errors[0])
    with pytest.raises(TransientDestinationError) as transient:
        make_call()
    harness.inject_error(harness.auth_error)
    with pytest.raises(PermanentDestinationError) as permanent:  # get_audience must not answer None
        make_call()
    assert permanent.value.code == harness.auth_error.code
    harness.inject_drop(apply=False)
    with pytest.raises(TransientDestinationError) as dropped:
        make_call()
    for exc in (transient.value, permanent.value, dropped.value):
        assert_no_secret(exc, harness.token)
    result = make_call()  # every fault was one-off: the same call now goes through
    if call == "upload_status":
        assert isinstance(result, ProcessingStatus) and result.done
    assert harness.members(aud.id) == (as_members(harness.schema, harness.rows(3)) if writes else set())


def test_offline_calls_make_no_request(harness: Harness, offline_call: str) -> None:
    """A call the harness declares offline has no error to map: it must not reach the platform."""
    dest = harness.destination
    aud = create(dest)
    make_call, _ = _prepare_call(harness, aud.id, offline_call)
    harness.inject_error(harness.transient_errors[0])  # would surface if the call made a request
    mark, made = harness.request_mark(), dest.requests_made
    first, again = make_call(), make_call()
    assert first == again  # and it is harmless to repeat
    assert harness.requests_since(mark) == []
    assert dest.requests_made == made


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
    upload = open_upload(dest, aud.id, "add", total=len(rows))
    mark = harness.request_mark()
    harness.inject_delay(1.0)  # the platform answers (and applies) only after the client gave up
    with pytest.raises(TransientDestinationError) as info:
        dest.send_batch(upload, 1, schema, rows, last=True)
    assert_no_secret(info.value, harness.token)
    assert dest.send_batch(upload, 1, schema, rows, last=True).received == len(rows)
    deadline = time.monotonic() + 5
    while len(harness.requests_since(mark)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # wait for the delayed first attempt to be handled too
    assert len(harness.requests_since(mark)) == 2
    dest.finish_upload(upload, 1)
    assert harness.members(aud.id) == as_members(schema, rows)
    assert harness.upload_received(upload) == len(rows)


# ---------------------------------------------------------------------- 7. retry idempotency


@pytest.mark.parametrize("apply", [True, False], ids=["applied-then-dropped", "dropped-before-apply"])
def test_add_retried_after_a_drop_counts_once(harness: Harness, apply: bool) -> None:
    dest, schema = harness.destination, harness.schema
    aud = create(dest)
    rows = harness.rows(40)
    upload = open_upload(dest, aud.id, "add", total=len(rows))
    harness.inject_drop(apply=apply)
    with pytest.raises(TransientDestinationError):
        dest.send_batch(upload, 1, schema, rows, last=True)
    # where the last batch finishes the upload (Meta) an applied batch shows at once; where
    # finish_upload is a request of its own (Google runs its job), members change only after it
    finished = apply and "finish_upload" in harness.offline_calls
    assert harness.members(aud.id) == (as_members(schema, rows) if finished else set())
    res = send(dest, aud.id, "add", schema, rows, upload=upload)  # the retry: same upload, same seq
    assert res.received == len(rows)
    assert harness.members(aud.id) == as_members(schema, rows)
    assert harness.upload_received(upload) == len(rows)


def test_remove_retried_after_a_drop_counts_once(harness: Harness) -> None:
    dest, schema = harness.destination, harness.schema
    aud = create(dest)
    rows = harness.rows(40)
    send(dest, aud.id, "add", schema, rows)
    gone = rows[:15]
    upload = open_upload(dest, aud.id, "remove", total=len(gone))
    harness.inject_drop(apply=True)
    with pytest.raises(TransientDestinationError):
        dest.send_batch(upload, 1, schema, gone, last=True)
    res = send(dest, aud.id, "remove", schema, gone, upload=upload)
    assert res.received == len(gone)
    assert harness.members(aud.id) == as_members(schema, rows[15:])
    assert harness.upload_received(upload) == len(gone)


def test_replace_batch_retried_after_a_drop_counts_once(harness: Harness) -> None:
    dest, schema = harness.destination, harness.schema
    aud = create(dest)
    send(dest, aud.id, "add", schema, harness.rows(25, tag="old"))
    new = harness.rows(60, tag="new")
    batches = [new[:20], new[20:40], new[40:]]
    upload = open_upload(dest, aud.id, "replace", total=len(new))
    for seq, batch in enumerate(batches, start=1):
        last = seq == 3
        if seq == 2:
            harness.inject_drop(apply=True)
            with pytest.raises(TransientDestinationError):
                dest.send_batch(upload, seq, schema, batch, last=last)
        res = send(dest, aud.id, "replace", schema, batch, seq=seq, last=last, upload=upload)
        assert res.received == len(batch)
    assert harness.members(aud.id) == as_members(schema, new)
    assert harness.upload_received(upload) == len(new)


# ------------------------------------------------------------------------ 8. upload lifecycle


def test_processes_synchronously_is_declared_as_the_platform_behaves(harness: Harness) -> None:
    """The engine settles members at once only when ``processes_synchronously``: a wrong flag either
    marks members sent that the platform has not processed, or waits for a status that never changes."""
    assert type(harness.destination).processes_synchronously is harness.processes_synchronously
    assert harness.destination.processes_synchronously is harness.processes_synchronously


def test_opening_with_the_same_key_gives_the_same_handle(harness: Harness) -> None:
    dest = harness.destination
    aud = create(dest)
    handles = set()
    for op in UPLOAD_OPS:
        key = new_key(op)
        first = dest.open_upload(aud.id, op, key=key, estimated_total=10)
        again = dest.open_upload(aud.id, op, key=key, estimated_total=10)  # a retried task resuming
        assert isinstance(first, Upload)
        assert (first.audience_id, first.op, first.estimated_total) == (aud.id, op, 10)
        assert isinstance(first.handle, str) and first.handle
        assert again.handle == first.handle
        other = dest.open_upload(aud.id, op, key=new_key(op), estimated_total=10)
        assert other.handle != first.handle
        handles |= {first.handle, other.handle}
    assert len(handles) == 2 * len(UPLOAD_OPS)  # no two keys share a handle, whatever the operation


def test_an_unknown_operation_is_refused_before_sending(harness: Harness) -> None:
    dest = harness.destination
    aud = create(dest)
    mark, made = harness.request_mark(), dest.requests_made
    with pytest.raises(ValueError, match="upsert"):
        dest.open_upload(aud.id, "upsert", key=new_key(), estimated_total=0)
    assert harness.requests_since(mark) == []
    assert dest.requests_made == made


def test_uploads_with_different_keys_are_separate_on_the_platform(harness: Harness) -> None:
    """Batch 1 of one upload must not be taken for a re-send of batch 1 of another."""
    dest, schema = harness.destination, harness.schema
    aud = create(dest)
    rows = harness.rows(30)
    first, second = open_upload(dest, aud.id, "add"), open_upload(dest, aud.id, "add")
    send(dest, aud.id, "add", schema, rows[:10], upload=first)
    send(dest, aud.id, "add", schema, rows[10:], upload=second)
    assert harness.members(aud.id) == as_members(schema, rows)
    assert (harness.upload_received(first), harness.upload_received(second)) == (10, 20)


@pytest.mark.parametrize("op", UPLOAD_OPS)
def test_a_reopened_upload_resumes_with_the_same_batch_numbers(harness: Harness, op: str) -> None:
    """What a retried task does: open the upload again with its key, re-send the batch whose answer it
    never recorded, go on with the next number. Every row counts once."""
    dest, schema = harness.destination, harness.schema
    aud = create(dest)
    rows, expected = scenario(harness, aud.id, op)
    batches = thirds(rows)
    key = new_key(op)
    upload = dest.open_upload(aud.id, op, key=key, estimated_total=len(rows))
    send(dest, aud.id, op, schema, batches[0], seq=1, last=False, upload=upload)
    send(dest, aud.id, op, schema, batches[1], seq=2, last=False, upload=upload)
    # the task dies before recording batch 2; its retry resumes the same upload
    resumed = dest.open_upload(aud.id, op, key=key, estimated_total=len(rows))
    assert resumed.handle == upload.handle
    send(dest, aud.id, op, schema, batches[1], seq=2, last=False, upload=resumed)
    send(dest, aud.id, op, schema, batches[2], seq=3, last=True, upload=resumed)
    assert harness.members(aud.id) == expected
    assert harness.upload_received(resumed) == len(rows)
    assert dest.upload_status(resumed).done


@pytest.mark.parametrize("op", UPLOAD_OPS)
def test_upload_status_is_done_after_the_last_batch(harness: Harness, op: str) -> None:
    dest, schema = harness.destination, harness.schema
    aud = create(dest)
    rows, expected = scenario(harness, aud.id, op)
    upload = open_upload(dest, aud.id, op, total=len(rows))
    send_all(dest, upload, schema, thirds(rows))
    status = dest.upload_status(upload)
    assert status.done, status
    assert not status.failed, status
    assert status.progress in (None, 100), status
    assert status.invalid == 0, status
    assert harness.members(aud.id) == expected


@pytest.mark.parametrize("op", UPLOAD_OPS)
def test_upload_status_waits_for_the_platform_to_process(harness: Harness, op: str) -> None:
    """With processing taking a while, a finished upload is reported not done (with a detail saying
    why) until the platform processed it; a synchronous platform is done at once all the same."""
    dest, schema = harness.destination, harness.schema
    aud = create(dest)
    rows, expected = scenario(harness, aud.id, op)
    # the sandboxes may keep whole-second timestamps: 2 s leaves at least 1 s of processing to see
    delay = 2.0
    harness.set_processing_delay(delay)
    upload = open_upload(dest, aud.id, op, total=len(rows))
    send_all(dest, upload, schema, thirds(rows))
    status = dest.upload_status(upload)
    if harness.processes_synchronously:
        assert status.done and not status.failed, status
        return
    assert not status.done, status
    assert not status.failed, status
    assert status.detail, status
    final, seen = wait_done(dest, upload, within=delay + 5)
    assert final.done, seen
    assert not final.failed, final
    assert final.progress in (None, 100), final
    assert harness.members(aud.id) == expected


@pytest.mark.parametrize("op", UPLOAD_OPS)
def test_an_upload_whose_last_batch_was_not_sent_is_not_done(harness: Harness, op: str) -> None:
    dest, schema = harness.destination, harness.schema
    aud = create(dest)
    rows, expected = scenario(harness, aud.id, op)
    first, rest = rows[: len(rows) // 2], rows[len(rows) // 2 :]
    upload = open_upload(dest, aud.id, op, total=len(rows))
    nothing_sent = dest.upload_status(upload)
    assert not nothing_sent.done and not nothing_sent.failed, nothing_sent
    send(dest, aud.id, op, schema, first, seq=1, last=False, upload=upload)
    half_sent = dest.upload_status(upload)
    assert not half_sent.done and not half_sent.failed, half_sent
    assert half_sent.detail, half_sent
    send(dest, aud.id, op, schema, rest, seq=2, last=True, upload=upload)
    done = dest.upload_status(upload)
    assert done.done and not done.failed, done
    assert harness.members(aud.id) == expected


@pytest.mark.harness_has("expires_open_uploads")
def test_an_expired_replace_reports_failed_and_leaves_the_audience_alone(harness: Harness) -> None:
    """A replace left open past the platform's limit is dropped by the platform: ``upload_status`` must
    say so (done, failed), or the engine would wait for it forever or count its members as sent."""
    dest, schema = harness.destination, harness.schema
    aud = create(dest)
    rows, _ = scenario(harness, aud.id, "replace")
    before = harness.members(aud.id)
    upload = open_upload(dest, aud.id, "replace", total=len(rows))
    send(dest, aud.id, "replace", schema, rows[:10], seq=1, last=False, upload=upload)
    harness.expire_open_uploads(aud.id)
    status = dest.upload_status(upload)
    assert status.done and status.failed, status
    assert status.detail, status
    assert harness.members(aud.id) == before


@pytest.mark.parametrize("op", UPLOAD_OPS)
def test_a_resent_batch_of_a_finished_upload_changes_nothing(harness: Harness, op: str) -> None:
    """A retry may re-send batches of an upload the platform already finished (the answers were lost).
    They must neither count again nor undo what later uploads changed."""
    dest, schema = harness.destination, harness.schema
    aud = create(dest)
    rows, expected = scenario(harness, aud.id, op)
    batches = thirds(rows)
    upload = open_upload(dest, aud.id, op, total=len(rows))
    send_all(dest, upload, schema, batches)
    assert harness.members(aud.id) == expected
    # a later upload touches members of the first batch, so a re-applied batch would show
    touched = batches[0][:5]
    if op == "remove":
        send(dest, aud.id, "add", schema, touched)
        expected |= as_members(schema, touched)
    else:
        send(dest, aud.id, "remove", schema, touched)
        expected -= as_members(schema, touched)
    assert harness.members(aud.id) == expected
    mark = harness.request_mark()
    for seq, (batch, res) in enumerate(zip(batches, send_all(dest, upload, schema, batches), strict=True), 1):
        assert res.received == len(batch), seq
    assert harness.requests_since(mark)  # the re-sends did reach the platform
    assert harness.members(aud.id) == expected
    assert harness.upload_received(upload) == len(rows)
    status = dest.upload_status(upload)
    assert status.done and not status.failed, status
