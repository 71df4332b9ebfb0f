"""Per-platform harnesses for the destination contract suite (``test_destination_contract.py``).

A *harness* wires one platform's :class:`~audience_sync.core.contract.Destination` to that
platform's local sandbox through the real SDK, and gives the tests what they need to look behind the
destination's back: the audience's members as the sandbox stores them, what the platform counted for
one upload, deleting or creating audiences "by hand", injecting faults, slowing down the platform's
processing of finished uploads, and reading the sandbox's request log. It also carries the platform's
facts the tests check against (batch limit, list page size, error codes and what their messages must
say, which lifecycle calls make no request, whether batches are applied synchronously) and a factory
of valid hashed rows.

The suite runs against every platform of the registry (:mod:`audience_sync.core.platforms`): tests
are parametrized over the registered platforms, and a registered platform without a harness in
:data:`HARNESSES` fails ``test_registry.py`` by name instead of being skipped. To add a platform: register
it, subclass :class:`Harness` and add it to :data:`HARNESSES`. A test that needs an
optional platform feature carries ``@pytest.mark.harness_has("attr")`` and runs only against the
harnesses whose ``attr`` is truthy (it is not collected for the others, rather than skipped).

The sandbox processes a finished upload at once unless a test sets a delay
(:meth:`Harness.set_processing_delay`), so the members of a finished upload are visible right away.

Each test gets a fresh, unique ad account, so tests never see each other's audiences, and the
platform's fault rules are cleared before and after each test.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import itertools
import secrets
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from facebook_business.adobjects.customaudience import CustomAudience

from audience_sync.core.contract import Destination, Upload
from audience_sync.core.platforms import platforms
from audience_sync.destinations.meta import REMOVE_VIA, MetaDestination, make_meta_api
from tests.conftest import SANDBOX_TOKEN

Member = frozenset[tuple[str, str]]
Row = tuple[str, ...]

_accounts = itertools.count(10**14 + secrets.randbelow(10**13) * 10)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def as_members(schema: Sequence[str], rows: Sequence[Sequence[str]]) -> set[Member]:
    """What the platform should hold after these rows were added: each row's non-empty (key, value) pairs."""
    return {frozenset((k, v) for k, v in zip(schema, row, strict=True) if v) for row in rows}


@functools.lru_cache(maxsize=64)
def _rows(schema: tuple[str, ...], n: int, start: int, tag: str, sparse: bool) -> tuple[Row, ...]:
    out = []
    for i in range(start, start + n):
        row = [sha(f"{tag}:{key}:{i}") for key in schema]
        if sparse and len(schema) > 1 and i % 5 == 4:
            row[-1] = ""  # some customers lack the last identifier
        out.append(tuple(row))
    return tuple(out)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ErrorCase:
    """A platform error to inject, and what the destination must make of it.

    ``says``: fragments the exception message must contain (case-insensitive); ``{account}`` and
    ``{digits}`` are replaced by the test's ad account (``act_123``) and its digits (``123``).
    """

    code: int
    subcode: int | None = None
    http_status: int | None = None
    says: tuple[str, ...] = ()
    #: the platform's own name for the error (a gRPC platform: e.g. ``database_error.CONCURRENT_MODIFICATION``),
    #: used as the test id when set; the harness decides what code and subcode mean for its platform
    name: str | None = None

    @property
    def label(self) -> str:
        if self.name is not None:
            return self.name
        text = str(self.code) if self.subcode is None else f"{self.code}/{self.subcode}"
        return text if self.http_status is None else f"{text}-http{self.http_status}"


class Harness(abc.ABC):
    """One platform's destination wired to its sandbox, plus the tools to inspect and disturb it."""

    platform: ClassVar[str]
    #: what the destination's ``max_batch_rows`` must be (the platform's documented limit)
    max_batch_rows: ClassVar[int]
    #: page size the destination lists audiences with (tests create more than two pages' worth)
    list_page_size: ClassVar[int]
    #: the sample schema most tests use
    schema: ClassVar[tuple[str, ...]]
    #: every hashed identifier key of the platform, for multi-key schemas
    hashed_keys: ClassVar[tuple[str, ...]]
    #: errors a retry can fix -> TransientDestinationError
    transient_errors: ClassVar[tuple[ErrorCase, ...]]
    #: errors a retry cannot fix -> PermanentDestinationError, with what the message must say
    permanent_errors: ClassVar[tuple[ErrorCase, ...]]
    #: the error a wrong/expired token yields
    auth_error: ClassVar[ErrorCase]
    #: an identifier key sent as-is (not hashed), so its values can be longer than a hash; None if none
    unhashed_id_key: ClassVar[str | None] = None
    #: what the destination's ``processes_synchronously`` must be: True when the platform has applied a
    #: batch once it accepted it (no processing to wait for after the last batch)
    processes_synchronously: ClassVar[bool]
    #: lifecycle calls that never make a platform request on this platform (Meta picks its session ids
    #: itself and closes a session with the last batch's flag); every other call must map errors
    offline_calls: ClassVar[tuple[str, ...]] = ()
    #: the platform gives up on an upload left open too long (see :meth:`expire_open_uploads`)
    expires_open_uploads: ClassVar[bool] = False
    #: the ways the destination can be configured to send removals; the removal tests run once per mode
    #: against :meth:`removal_destination`
    remove_modes: ClassVar[tuple[str, ...]] = ("default",)
    #: the platform lets an account hold several audiences of one name (Meta); when it refuses a taken
    #: name instead (``unique_names``), creating a taken name must give the audience that holds it
    duplicate_names: ClassVar[bool] = True
    unique_names: ClassVar[bool] = False
    #: the platform reports when an audience was created (``PlatformAudience.created_time``)
    reports_created_time: ClassVar[bool] = True
    #: the platform reports how many of the uploaded identifiers it matched (``PlatformAudience.match_rate``)
    reports_match_rate: ClassVar[bool] = False
    #: finding a name lists the account's audiences page by page (a file drop reads the name's folder
    #: instead, so the paging tests do not apply to it)
    lists_audiences_in_pages: ClassVar[bool] = True

    destination: Destination
    account: str
    token: str

    @property
    def account_digits(self) -> str:
        return "".join(c for c in self.account if c.isdigit())

    def says(self, case: ErrorCase) -> list[str]:
        return [s.format(account=self.account, digits=self.account_digits) for s in case.says]

    # ---------------------------------------------------------------- rows
    def schema_of(self, n_keys: int | None) -> tuple[str, ...]:
        """A schema of the first ``n_keys`` hashed keys (all of them for None)."""
        return self.hashed_keys if n_keys is None else self.hashed_keys[:n_keys]

    def rows(
        self,
        n: int,
        *,
        start: int = 0,
        schema: Sequence[str] | None = None,
        tag: str = "row",
        sparse: bool = True,
    ) -> tuple[Row, ...]:
        """``n`` valid hashed rows (64-hex sha256 of synthetic strings), aligned to ``schema``.

        With ``sparse`` every fifth row leaves its last value empty. Rows are cached (immutable)."""
        return _rows(tuple(schema or self.schema), n, start, tag, sparse)

    def long_id_rows(self, n: int, length: int) -> tuple[Row, ...]:
        """``n`` one-value rows for the schema ``(unhashed_id_key,)``, each id ``length`` ASCII chars."""
        return tuple((f"{i:06d}-" + "x" * (length - 7),) for i in range(n))

    def bad_row(self, i: int, schema: Sequence[str] | None = None) -> Row:
        """A row whose first value is not a valid hash (the rest are valid)."""
        schema = tuple(schema or self.schema)
        bad = (f"not-a-hash-{i}", sha(f"bad:{i}")[:63], sha(f"bad:{i}").upper())[i % 3]
        return (bad, *(sha(f"bad:{k}:{i}") for k in schema[1:]))

    # ---------------------------------------------------------------- platform side
    def removal_destination(self, mode: str) -> Destination:
        """The destination under test, configured to send removals in ``mode`` (one of ``remove_modes``)."""
        return self.destination

    @abc.abstractmethod
    def members(self, audience_id: str) -> set[Member]:
        """The audience's members on the platform, each as its non-empty (key, value) pairs."""

    @abc.abstractmethod
    def delete_audience(self, audience_id: str) -> None:
        """Delete the audience on the platform, behind the destination's back."""

    @abc.abstractmethod
    def create_by_hand(
        self, name: str, *, created_time: int | None = None, other_account: bool = False
    ) -> str:
        """Create an audience outside our code (as in the platform's UI); returns its id."""

    @abc.abstractmethod
    def inject_error(self, case: ErrorCase, *, skip: int = 0, times: int = 1) -> None:
        """Make the next ``times`` platform requests (after ``skip``) answer with this error."""

    @abc.abstractmethod
    def inject_drop(self, *, apply: bool) -> None:
        """Cut the connection of the next platform request without an answer; with ``apply`` the
        platform applies the request first (the answer is lost on the way back)."""

    @abc.abstractmethod
    def inject_delay(self, seconds: float) -> None:
        """Hold the next platform request this long before the platform handles it."""

    @abc.abstractmethod
    def another_destination(self, *, token: str | None = None, timeout: float | None = None) -> Destination:
        """Another destination on the same account (optionally another token or client timeout)."""

    @abc.abstractmethod
    def unreachable(self) -> Destination:
        """A destination whose platform endpoint refuses connections."""

    @abc.abstractmethod
    def request_mark(self) -> int:
        """A position in the sandbox's request log (see :meth:`requests_since`)."""

    @abc.abstractmethod
    def requests_since(self, mark: int) -> list[dict[str, Any]]:
        """Platform requests the sandbox received after ``mark``; each has ``method``, ``path`` and
        ``status`` (None when the connection was cut without an answer)."""

    @abc.abstractmethod
    def upload_received(self, upload: Upload) -> int:
        """How many rows the platform counted for this upload (0 when it knows nothing of it)."""

    @abc.abstractmethod
    def set_processing_delay(self, seconds: float) -> None:
        """From now on the platform takes this long to process an upload after its last batch (0: at
        once). The delay is reset to 0 before and after every test."""

    def expire_open_uploads(self, audience_id: str) -> None:
        """Let the platform's time limit for open uploads of the audience pass, so it gives up on them.

        Only for harnesses with ``expires_open_uploads``."""
        raise NotImplementedError(f"{self.platform} uploads do not expire")

    @abc.abstractmethod
    def reset_faults(self) -> None:
        """Remove every injected fault of this platform."""

    def close(self) -> None:  # noqa: B027 - optional step
        """Undo what the harness changed on the session's sandbox beyond faults and delays (after each test)."""


class MetaHarness(Harness):
    platform = "meta"
    max_batch_rows = 10_000
    list_page_size = 200  # MetaDestination.find_audiences lists with limit=200 (sandbox caps at 500)
    schema = ("EMAIL", "PHONE")
    hashed_keys = (
        "EMAIL",
        "PHONE",
        "FN",
        "LN",
        "CT",
        "ST",
        "ZIP",
        "COUNTRY",
        "GEN",
        "DOBY",
        "DOBM",
        "DOBD",
        "FI",
    )
    transient_errors = (
        ErrorCase(1),
        ErrorCase(2),
        ErrorCase(4),
        ErrorCase(17),
        ErrorCase(17, 2446079),
        ErrorCase(341),
        ErrorCase(613),
        ErrorCase(80003),
        ErrorCase(2650, 1870145),
        ErrorCase(2650, 1870158),
        ErrorCase(131000, http_status=503),  # any 5xx
    )
    _permission = ("permission", "ads_management", "Admin", "{account}")
    _tos = ("https://www.facebook.com/customaudiences/app/tos/?act={digits}",)
    auth_error = ErrorCase(190, says=("access token", "meta_default"))
    permanent_errors = (
        auth_error,
        ErrorCase(190, 460, says=auth_error.says),
        ErrorCase(200, says=_permission),
        ErrorCase(10, says=_permission),
        ErrorCase(2655, says=_tos),
        ErrorCase(2663, says=_tos),
        ErrorCase(100, 1713230, says=("flagged", "neutral")),
        ErrorCase(100, 33, says=("does not exist", "meta_default")),
        ErrorCase(2650, says=("2650",)),  # "failed to update" without a busy subcode: not retryable
    )
    unhashed_id_key = "EXTERN_ID"
    processes_synchronously = False  # a session closed by its last batch is processed afterwards
    offline_calls = ("open_upload", "finish_upload")
    expires_open_uploads = True  # an open replace session expires after replace_timeout_seconds
    remove_modes = tuple(REMOVE_VIA)  # the connection extra remove_via

    def __init__(self, srv: Any, account: str) -> None:
        self.srv = srv
        self.account = account
        self.other_account = f"act_{next(_accounts)}"
        self.token = SANDBOX_TOKEN
        self.destination = self.make_destination(make_meta_api(SANDBOX_TOKEN, graph_url=srv.url, timeout=10))
        self._admin = make_meta_api(SANDBOX_TOKEN, graph_url=srv.url, timeout=10)

    def make_destination(self, api: Any) -> Destination:
        """The destination under test on this harness's account, talking through ``api``."""
        return MetaDestination(api, self.account)

    def removal_destination(self, mode: str) -> Destination:
        return MetaDestination(
            make_meta_api(SANDBOX_TOKEN, graph_url=self.srv.url, timeout=10), self.account, remove_via=mode
        )

    def members(self, audience_id: str) -> set[Member]:
        return {frozenset((k, v) for k, v in m.items() if v) for m in self.srv.meta.members(audience_id)}

    def delete_audience(self, audience_id: str) -> None:
        CustomAudience(audience_id, api=self._admin).api_delete()  # DELETE /{id}/ over HTTP, like Ads Manager

    def create_by_hand(
        self, name: str, *, created_time: int | None = None, other_account: bool = False
    ) -> str:
        meta = self.srv.meta
        account = self.other_account if other_account else self.account
        if created_time is None:
            return meta.create_audience(account, name)
        clock = meta.clock
        meta.clock = lambda: float(created_time)
        try:
            return meta.create_audience(account, name)
        finally:
            meta.clock = clock

    def inject_error(self, case: ErrorCase, *, skip: int = 0, times: int = 1) -> None:
        self.srv.meta.add_fault(
            code=case.code, subcode=case.subcode, http_status=case.http_status, skip=skip, times=times
        )

    def inject_drop(self, *, apply: bool) -> None:
        self.srv.meta.add_fault(action="drop", apply=apply, times=1)

    def inject_delay(self, seconds: float) -> None:
        self.srv.meta.add_fault(action="delay", delay_seconds=seconds, times=1)

    def another_destination(self, *, token: str | None = None, timeout: float | None = None) -> Destination:
        api = make_meta_api(token or self.token, graph_url=self.srv.url, timeout=timeout or 10)
        return self.make_destination(api)

    def unreachable(self) -> Destination:
        url = f"http://127.0.0.1:{_closed_port()}"
        return self.make_destination(make_meta_api(self.token, graph_url=url, timeout=5))

    def request_mark(self) -> int:
        return int(self.srv.journal.log.last_seq)

    def requests_since(self, mark: int) -> list[dict[str, Any]]:
        return list(self.srv.meta.requests_log(since=mark))

    def upload_received(self, upload: Upload) -> int:
        for s in self.srv.meta.audience(upload.audience_id)["sessions"]:
            if s["session_id"] == upload.handle:  # Meta's handle is the session id
                return int(s["num_received"])
        return 0

    def set_processing_delay(self, seconds: float) -> None:
        self.srv.meta.processing_seconds = float(seconds)

    def expire_open_uploads(self, audience_id: str) -> None:
        # The sandbox expires an open replace session lazily, on the audience's next request: let
        # that request arrive "after" the timeout, then restore the clock.
        meta = self.srv.meta
        clock = meta.clock
        meta.clock = lambda: clock() + meta.replace_timeout_seconds + 60
        try:
            CustomAudience(audience_id, api=self._admin).api_get(fields=["id"])
        finally:
            meta.clock = clock

    def reset_faults(self) -> None:
        self.srv.meta.clear_faults()


from tests.contract.harness_file_drop import FileDropHarness  # noqa: E402
from tests.contract.harness_google_ads import GoogleAdsHarness  # noqa: E402
from tests.contract.harness_google_datamanager import GoogleDataManagerHarness  # noqa: E402
from tests.contract.harness_tiktok import TikTokHarness  # noqa: E402

#: registered platform -> harness class
HARNESSES: dict[str, type[Harness]] = {
    "meta": MetaHarness,
    "google_datamanager": GoogleDataManagerHarness,
    "google_ads": GoogleAdsHarness,
    "tiktok": TikTokHarness,
    "file_drop": FileDropHarness,
}


#: every call of the contract, for the error-mapping tests; ``send_batch-<op>`` sends one batch of an
#: upload of that operation
CALLS = (
    "find_audiences",
    "get_audience",
    "create_audience",
    "open_upload",
    "send_batch-add",
    "send_batch-remove",
    "send_batch-replace",
    "finish_upload",
    "upload_status",
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "harness_has(attr): run only against the harnesses whose attribute attr is truthy"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``registered_platform`` over every registered platform; ``platform`` over the
    registered platforms that have a harness in :data:`HARNESSES` (one without a harness fails
    ``test_every_registered_platform_has_a_harness``); ``transient_case`` / ``permanent_case`` over
    each platform's own error cases; ``call`` over the calls of :data:`CALLS` that make requests on
    the platform and ``offline_call`` over those that make none; ``remove_mode`` over the platform's
    ways of sending removals."""
    if "registered_platform" in metafunc.fixturenames:
        metafunc.parametrize("registered_platform", list(platforms()))
        return
    if "platform" not in metafunc.fixturenames:
        return
    harnesses = {p: HARNESSES[p] for p in platforms() if p in HARNESSES}
    for mark in metafunc.definition.iter_markers("harness_has"):
        harnesses = {p: h for p, h in harnesses.items() if getattr(h, mark.args[0])}
    per_platform: dict[str, tuple[Callable[[type[Harness]], Sequence[Any]], Callable[[Any], str]]] = {
        "transient_case": (lambda h: h.transient_errors, lambda c: c.label),
        "permanent_case": (lambda h: h.permanent_errors, lambda c: c.label),
        "call": (lambda h: [c for c in CALLS if c not in h.offline_calls], str),
        "offline_call": (lambda h: h.offline_calls, str),
        "remove_mode": (lambda h: h.remove_modes, str),
    }
    for argname, (values, label) in per_platform.items():
        if argname in metafunc.fixturenames:
            pairs = [(p, v) for p, h in harnesses.items() for v in values(h)]
            ids = [f"{p}-{label(v)}" for p, v in pairs]
            metafunc.parametrize(("platform", argname), pairs, ids=ids)
            return
    metafunc.parametrize("platform", list(harnesses))


@pytest.fixture
def harness(platform: str, sandbox: Any) -> Iterator[Harness]:
    h = HARNESSES[platform](sandbox, f"act_{next(_accounts)}")
    # the sandbox is shared by the whole session: leave no fault or delay behind for other tests
    h.reset_faults()
    h.set_processing_delay(0)
    yield h
    h.reset_faults()
    h.set_processing_delay(0)
    h.close()
