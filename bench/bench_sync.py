"""Benchmark: extract -> plan -> upload -> delta rerun of a synthetic audience against the Meta sandbox.

Prints figures; asserts nothing about speed. Usage (see ``bench/README.md``)::

    .venv/bin/python bench/bench_sync.py --members 200000
    .venv/bin/python bench/bench_sync.py --members 1000000 --out results.json
    .venv/bin/python bench/bench_sync.py --state postgresql+psycopg2://user:pw@host/db --members 100000

Stages:

1. **extract**: ``extract_and_stage`` over synthetic CRM rows generated chunk by chunk (never all N
   raw rows in memory), hashing for Meta into a staged Parquet file.
2. **plan**: register the audience (``resolve_audience``, the sync's own path), then
   ``plan_sync``: the staged group compared with the ledger in Arrow (the dry-run plan a DAG shows).
3. **upload**: ``sync_audience`` against the in-process sandbox, with a per-call time breakdown of
   the state store (stage/apply/iter_work/mark) and of the destination (HTTP round trips).
4. **delta rerun**: ``--churn`` x N membership events: a third of them members leaving, a third members
   changing e-mail, a third new members joining; extract again, plan, and sync in mirror mode.

The synthetic members are deterministic for ``--seed``: member ``i`` is derived from ``(seed, i)``
only, so the second population is the first one with the churn applied. All valid rows have a unique
e-mail (so no two members collapse into one on the platform); about 2 % carry no usable identifier.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import hashlib
import inspect
import io
import json
import os
import platform
import pstats
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import types
import unicodedata
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from audience_sync.core.contract import ProcessingStatus, Upload, UploadResult
from audience_sync.core.delta import StagedGroup
from audience_sync.core.extract import ExtractCounts, extract_and_stage, read_staged, staged_parts
from audience_sync.core.fingerprints import known_in_background
from audience_sync.core.keys import StateKeys
from audience_sync.core.ledger import StateStore, ledger, registry
from audience_sync.core.sync import (
    RetryPolicy,
    SyncOutcome,
    SyncRequest,
    plan_sync,
    resolve_audience,
    sync_audience,
)
from audience_sync.destinations.meta import DEFAULT_REMOVE_VIA, REMOVE_VIA, MetaDestination, make_meta_api
from audience_sync.sandbox import SandboxServer, start_sandbox
from audience_sync.sources import read_file

T = TypeVar("T")

TOKEN = "bench-token"
KEYS = StateKeys.generate()  # one throwaway state per benchmark run
ACCOUNT = "act_1"
KEY = "customer_id"
IDENTIFIERS = {
    "email": "email",
    "phone": "mobile",
    "first_name": "first_name",
    "last_name": "last_name",
    "country": "country",
}
FIRST_CUSTOMER_ID = 10_000_000
RETRY = RetryPolicy(attempts=3, initial_wait=0.1)

# --------------------------------------------------------------------------------------------
# Synthetic members

_FIRST_NAMES = (
    "José|Zoë|Łukasz|Renée|Jean-Luc|François|Chloé|Björn|Søren|Siobhán|Aoife|Maria|James|Olivia|Liam|"
    "Emma|Noah|Ava|Priya|Arjun|Ananya|Rahul|Sophie|Lukas|Hannah|Felix|Léa|Hugo|Camille|Mohammed|"
    "Fatima|Oliver|Amelia|George|Isla|Ethan|Mia|Daniel|Grace|Anne-Marie"
).split("|")
_LAST_NAMES = (
    "Müller|O'Brien|García|Núñez|Kowalski|Smith|Jones|Patel|Sharma|Singh|Dubois|Lefèvre|Martin|"
    "Schmidt|Schröder|Weiß|Johnson|Williams|Brown|Taylor|Davies|Evans|Nguyen|Rossi|D'Angelo|McDonald|"
    "Van der Berg|Iyer|Reddy|Fischer|Bernard|Moreau|Wilson|Thomas|Okafor|Walsh"
).split("|")
#: region -> (weight, spellings of the country column)
_REGIONS: dict[str, tuple[int, tuple[str, ...]]] = {
    "US": (35, ("US", "USA", "us", "United States")),
    "GB": (25, ("GB", "gb", "United Kingdom")),
    "IN": (15, ("IN", "India")),
    "FR": (12, ("FR", "fr", "France")),
    "DE": (13, ("DE", "de", "Germany")),
}
_REGION_CODES = tuple(_REGIONS)
_REGION_WEIGHTS = tuple(w for w, _ in _REGIONS.values())
_DOMAINS = ("example.com", "example.org", "example.net", "gmail.com")
_INTL_STYLES = ("e164", "international")  # parse without a region ("00" IDD needs the row's country)
_ALL_STYLES = (*_INTL_STYLES, "idd", "national", "national", "national_digits", "dashes")
_BAD_PHONES = ("12345", "555-01", "+44 7400", "0", "123", "99")
_P_INVALID = 0.02  # no usable identifier: bad e-mail and bad or no phone
_P_BAD_PHONE = 0.01  # valid e-mail, unparseable phone (a field error on a valid row)
_P_PHONE = 0.85
_P_NO_COUNTRY = 0.08
_ASCII_FOLD = str.maketrans({"Ł": "L", "ł": "l", "Ø": "O", "ø": "o", "ß": "ss", "Æ": "AE", "æ": "ae"})


def _ascii(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text.translate(_ASCII_FOLD))
    return "".join(ch for ch in folded if ch.isascii() and ch.isalnum()).lower()


class PhoneBook:
    """Per region, a distinct valid mobile number for every member index.

    Real CRMs hold one number per customer, so a pool of reused numbers would flatter any cache the
    product keeps. Member ``i`` gets the region's example mobile with its last 8 digits replaced: 4
    "middle" digits picked per block of ``TAIL`` indexes and 4 tail digits from ``i`` itself, so two
    indexes never share a number. A middle is used only when ``is_valid_number`` accepts it with several
    tails (the metadata patterns end in free digits); ``phone`` re-checks a sample against
    ``phonenumbers`` (validity and formatting) and raises on any difference.
    """

    TAIL = 10_000
    _CHECK_TAILS = ("0000", "9999", "5050", "1234", "8765")
    _SPOT_CHECK_EVERY = 1024

    def __init__(self, seed: int) -> None:
        self._examples: dict[str, tuple[int, str]] = {}
        self._candidates: dict[str, list[int]] = {}
        self._next: dict[str, int] = {}
        self._middles: dict[str, list[str]] = {}
        for region in _REGION_CODES:
            example = phonenumbers.example_number_for_type(region, PhoneNumberType.MOBILE)
            if example is None:  # pragma: no cover - every region used has one
                raise ValueError(f"no example mobile number for {region}")
            national = phonenumbers.national_significant_number(example)
            self._examples[region] = (example.country_code, national[:-8])
            order = list(range(10_000))
            random.Random(f"{seed}:{region}").shuffle(order)  # str seeds are stable across processes
            self._candidates[region] = order
            self._next[region] = 0
            self._middles[region] = []
        self._templates: dict[tuple[str, int, str], str] = {}

    def number(self, region: str, index: int) -> phonenumbers.PhoneNumber:
        block, tail = self._split(index)
        return self._number(region, self._middle(region, block), f"{tail:04d}")

    def phone(self, region: str, index: int, style: str) -> str:
        block, tail = self._split(index)
        key = (region, block, style)
        template = self._templates.get(key)
        if template is None:
            template = self._template(region, block, style)
            self._templates[key] = template
        text = template.format(*f"{tail:04d}")
        if index % self._SPOT_CHECK_EVERY == 0:
            number = self.number(region, index)
            expected = self._format(number, region, style)
            if text != expected or not phonenumbers.is_valid_number(number):
                raise AssertionError(f"phone {index} of {region} ({style}): {text!r} vs {expected!r}")
        return text

    def _split(self, index: int) -> tuple[int, int]:
        block, slot = divmod(index, self.TAIL)
        # a fixed bijection of the slot, so neighbouring members do not get consecutive numbers
        return block, (slot * 7919) % self.TAIL

    def _number(self, region: str, middle: str, tail: str) -> phonenumbers.PhoneNumber:
        code, head = self._examples[region]
        return phonenumbers.PhoneNumber(country_code=code, national_number=int(head + middle + tail))

    def _middle(self, region: str, block: int) -> str:
        middles = self._middles[region]
        candidates = self._candidates[region]
        while len(middles) <= block:
            if self._next[region] >= len(candidates):
                raise ValueError(f"more than {len(middles) * self.TAIL:,} members in {region}")
            middle = f"{candidates[self._next[region]]:04d}"
            self._next[region] += 1
            if all(phonenumbers.is_valid_number(self._number(region, middle, t)) for t in self._CHECK_TAILS):
                middles.append(middle)
        return middles[block]

    def _template(self, region: str, block: int, style: str) -> str:
        """The formatted number of ``block`` with its last 4 digits as ``{}`` (they are the tail)."""
        text = self._format(self._number(region, self._middle(region, block), "0000"), region, style)
        chars = list(text)
        left = 4
        for pos in range(len(chars) - 1, -1, -1):
            if left and chars[pos].isdigit():
                chars[pos] = "{}"
                left -= 1
        return "".join(chars)

    @staticmethod
    def _format(number: phonenumbers.PhoneNumber, region: str, style: str) -> str:
        national = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
        significant = phonenumbers.national_significant_number(number)
        if style == "e164":
            return phonenumbers.format_number(number, PhoneNumberFormat.E164)
        if style == "international":
            return phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)
        if style == "idd":
            if region == "US":
                return f"1-{significant[:3]}-{significant[3:6]}-{significant[6:]}"
            return f"00{number.country_code}{significant}"
        if style == "national":
            return national
        if style == "national_digits":
            return "".join(ch for ch in national if ch.isdigit())
        if style == "dashes":
            return "-".join(national.replace("(", " ").replace(")", " ").replace("-", " ").split())
        raise ValueError(f"unknown phone style {style!r}")


@dataclass
class Population:
    """What the generator produced (filled in while the chunks are consumed)."""

    rows: int = 0
    valid: int = 0
    invalid: int = 0
    left: int = 0
    left_valid: int = 0
    joined: int = 0
    joined_valid: int = 0
    changed_valid: int = 0
    generate_seconds: float = 0.0


class MemberFactory:
    """Member ``i`` of a population, derived from ``(seed, i)`` only (plus its e-mail version)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.phones = PhoneBook(seed)
        self._first = [(n, _ascii(n) or "customer") for n in _FIRST_NAMES]
        self._last = [(n, _ascii(n) or "x") for n in _LAST_NAMES]

    def rng(self, i: int, salt: int = 0) -> random.Random:
        return random.Random((self.seed << 40) ^ (salt << 36) ^ i)

    def member(self, i: int, email_version: int = 1) -> tuple[dict[str, object], bool]:
        """(raw row, valid by construction)."""
        r = self.rng(i)
        region = r.choices(_REGION_CODES, weights=_REGION_WEIGHTS)[0]
        spellings = _REGIONS[region][1]
        country = None if r.random() < _P_NO_COUNTRY else r.choice(spellings)
        first, first_ascii = r.choice(self._first)
        last, last_ascii = r.choice(self._last)
        roll = r.random()
        invalid = roll < _P_INVALID
        bad_phone = _P_INVALID <= roll < _P_INVALID + _P_BAD_PHONE
        local = r.choice(
            (f"{first_ascii}.{last_ascii}", f"{first_ascii}{last_ascii}", f"{first_ascii[0]}.{last_ascii}")
        )
        suffix = "" if email_version == 1 else f".v{email_version}"
        email = f"{local}{i}{suffix}@{r.choice(_DOMAINS)}"
        case = r.random()
        if case < 0.12:
            email = email.title()
        elif case < 0.18:
            email = email.upper()
        space = r.random()
        if space < 0.06:
            email = f"  {email}"
        elif space < 0.12:
            email = f"{email} "
        if r.random() < 0.05:
            first = first.upper()
        if r.random() < 0.04:
            last = f" {last} "
        phone: str | None = None
        if invalid:
            email = email.replace("@", " at ")
            phone = r.choice(_BAD_PHONES) if r.random() < 0.6 else None
        elif bad_phone:
            phone = r.choice(_BAD_PHONES)
        elif r.random() < _P_PHONE:
            styles = _INTL_STYLES if country is None else _ALL_STYLES
            phone = self.phones.phone(region, i, r.choice(styles))
        row: dict[str, object] = {
            KEY: FIRST_CUSTOMER_ID + i,
            "email": email,
            "mobile": phone,
            "first_name": first,
            "last_name": last,
            "country": country,
        }
        return row, not invalid

    def churn_kind(self, i: int, churn: float, changes: bool = True) -> str | None:
        """``leave``, ``change`` (new e-mail) or None for member ``i`` of the first population.

        With ``changes`` a third of the churn leaves and a third changes e-mail; without, half leaves.
        """
        r = self.rng(i, salt=7)
        if not changes:
            return "leave" if r.random() < churn / 2 else None
        if r.random() >= churn * 2 / 3:
            return None
        return "leave" if r.random() < 0.5 else "change"

    def chunks(
        self,
        n: int,
        chunk_rows: int,
        pop: Population,
        *,
        churn: float | None = None,
        changes: bool = True,
    ) -> Iterator[list[dict[str, object]]]:
        """The first population (``churn=None``), or the second: leavers out, changers with a new
        e-mail, and ``round(n * churn / 3)`` new members appended (indexes ``n..``)."""
        joiners = 0 if churn is None else round(n * churn / (3 if changes else 2))
        chunk: list[dict[str, object]] = []
        started = time.perf_counter()
        for i in range(n + joiners):
            version = 1
            if churn is not None and i < n:
                kind = self.churn_kind(i, churn, changes)
                if kind == "leave":
                    _, was_valid = self.member(i)
                    pop.left += 1
                    pop.left_valid += was_valid
                    continue
                if kind == "change":
                    version = 2
            row, valid = self.member(i, version)
            pop.rows += 1
            pop.valid += valid
            pop.invalid += not valid
            if i >= n:
                pop.joined += 1
                pop.joined_valid += valid
            elif version == 2 and valid:
                pop.changed_valid += 1
            chunk.append(row)
            if len(chunk) >= chunk_rows:
                pop.generate_seconds += time.perf_counter() - started
                yield chunk
                chunk = []
                started = time.perf_counter()
        pop.generate_seconds += time.perf_counter() - started
        if chunk:
            yield chunk


# --------------------------------------------------------------------------------------------
# Instrumentation


class Timings:
    """Accumulated seconds and call counts per label."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, label: str, seconds: float, calls: int = 1) -> None:
        with self._lock:
            self.seconds[label] += seconds
            self.calls[label] += calls

    def timed(self, label: str, fn: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self.add(label, time.perf_counter() - start)

    def iterate(self, label: str, items: Iterable[T]) -> Iterator[T]:
        """Re-yield ``items``, counting the time spent producing them (not the consumer's)."""
        it = iter(items)
        while True:
            start = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                self.add(label, time.perf_counter() - start, 0)
                return
            self.add(label, time.perf_counter() - start)
            yield item

    def snapshot(self) -> tuple[Counter[str], Counter[str]]:
        with self._lock:
            return Counter(self.seconds), Counter(self.calls)


class TimedStore(StateStore):
    """A StateStore that records the time of every public method (labels ``db.<method>``).

    The methods are wrapped below the class, so new StateStore methods are timed too; generators
    (``iter_work``) count the time spent producing each batch.
    """

    def __init__(self, url: str, timings: Timings) -> None:
        self.timings = timings
        super().__init__(url, keys=KEYS)

    def stage_members(self, rows: Iterable[tuple[str, str, str]], chunk: int = 5000, **kwargs: Any) -> str:
        # keyword options (dag_id, run_id, lease) pass through untouched, so new ones need no change here
        source = self.timings.iterate("src.read_staged+staged_row", rows)
        return self.timings.timed(
            "db.stage_members", lambda: super(TimedStore, self).stage_members(source, chunk, **kwargs)
        )


def _timed_method(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    label = f"db.{name}"
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(self: TimedStore, *args: Any, **kwargs: Any) -> Iterator[Any]:
            return self.timings.iterate(label, fn(self, *args, **kwargs))

        return generator

    @functools.wraps(fn)
    def method(self: TimedStore, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(self, *args, **kwargs)
        finally:
            self.timings.add(label, time.perf_counter() - start)

    return method


for _name, _fn in vars(StateStore).items():
    if isinstance(_fn, types.FunctionType) and not _name.startswith("_") and _name not in vars(TimedStore):
        setattr(TimedStore, _name, _timed_method(_name, _fn))


class TimedMeta(MetaDestination):
    """MetaDestination that records the wall time of its upload lifecycle calls (SDK + HTTP + sandbox).

    Batches are labelled by operation (``http.send_batch.add`` / ``.remove`` / ``.replace``), so the
    delta rerun still shows its additions and removals apart; ``http.upload_status`` is the polling
    of finished uploads (``GET /{audience}/sessions``) and ``http.open_upload`` / ``http.finish_upload``
    the rest of the lifecycle (Meta makes no request for those two: near-zero time, calls counted).
    """

    def __init__(self, *args: Any, timings: Timings, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timings = timings

    def open_upload(self, audience_id: str, op: str, *, key: str, estimated_total: int) -> Upload:
        return self.timings.timed(
            "http.open_upload",
            lambda: super(TimedMeta, self).open_upload(
                audience_id, op, key=key, estimated_total=estimated_total
            ),
        )

    def send_batch(
        self, upload: Upload, seq: int, schema: Sequence[str], rows: Sequence[Sequence[str]], *, last: bool
    ) -> UploadResult:
        return self.timings.timed(
            f"http.send_batch.{upload.op}",
            lambda: super(TimedMeta, self).send_batch(upload, seq, schema, rows, last=last),
        )

    def finish_upload(self, upload: Upload, batches: int) -> None:
        self.timings.timed(
            "http.finish_upload", lambda: super(TimedMeta, self).finish_upload(upload, batches)
        )

    def upload_status(self, upload: Upload) -> ProcessingStatus:
        return self.timings.timed("http.upload_status", lambda: super(TimedMeta, self).upload_status(upload))


def instrument_sandbox(srv: SandboxServer, timings: Timings) -> None:
    """Time the Meta app's request handler (runs in the sandbox thread; label ``sandbox.handle``)."""
    app = srv.meta
    original = app.handle

    def handle(request: Any) -> Any:
        return timings.timed("sandbox.handle", lambda: original(request))

    app.handle = handle


# --------------------------------------------------------------------------------------------
# Figures


def code_revision() -> str:
    """``git describe --always --dirty`` of the checkout (best effort; the code changes between runs)."""
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


def cpu_seconds() -> float:
    """User + system CPU time of the whole process (all threads, so the sandbox's too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mib() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def request_kind(entry: dict[str, Any]) -> str:
    parts = [p for p in str(entry.get("path", "")).split("/") if p][1:]  # drop the version
    if not parts:
        kind = "?"
    elif parts[0].startswith("act_"):
        kind = "/act/" + "/".join(parts[1:])
    else:
        kind = "/{audience}" + "".join(f"/{p}" for p in parts[1:])
    override = entry.get("method_override")  # a POST with method=delete shows as "POST(DELETE)"
    return f"{entry.get('method')}{f'({override})' if override else ''} {kind}"


@dataclass
class Stage:
    name: str
    rows: int
    seconds: float
    requests: dict[str, int] = field(default_factory=dict)
    request_rows: dict[str, int] = field(default_factory=dict)
    breakdown: dict[str, tuple[float, int]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    cpu_seconds: float = 0.0
    peak_rss_mib: float = 0.0
    rss_mib: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rows": self.rows,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows / self.seconds) if self.seconds else None,
            "cpu_seconds": round(self.cpu_seconds, 3),
            "requests": self.requests,
            "request_rows": self.request_rows,
            "breakdown": {k: {"seconds": round(s, 3), "calls": c} for k, (s, c) in self.breakdown.items()},
            "facts": self.facts,
            "peak_rss_mib": round(self.peak_rss_mib, 1),
            "rss_mib": round(self.rss_mib, 1),
        }

    def print(self) -> None:
        rate = f"{self.rows / self.seconds:,.0f}" if self.seconds else "-"
        print(
            f"\n== {self.name}: {self.rows:,} rows in {self.seconds:,.2f} s = {rate} rows/s"
            f" (process CPU {self.cpu_seconds:,.2f} s)"
            f" | peak RSS {self.peak_rss_mib:,.0f} MiB (now {self.rss_mib:,.0f} MiB)"
        )
        if self.requests:
            total = sum(self.requests.values())
            shown = ", ".join(
                f"{k} x{n}" + (f" ({self.request_rows[k]:,} rows)" if self.request_rows.get(k) else "")
                for k, n in sorted(self.requests.items())
            )
            print(f"   requests: {total:,} -- {shown}")
        else:
            print("   requests: 0")
        if self.breakdown:
            print(
                "   time by part (nested: db.stage_members includes src.*, http.* includes sandbox.handle):"
            )
        for label, (secs, calls) in sorted(self.breakdown.items(), key=lambda kv: -kv[1][0]):
            print(f"     {label:<30} {secs:9.2f} s  {calls:>8,} calls")
        for key, value in self.facts.items():
            print(f"   {key}: {value}")


class Bench:
    def __init__(self, srv: SandboxServer, timings: Timings) -> None:
        self.srv = srv
        self.timings = timings
        self.stages: list[Stage] = []

    def run(self, name: str, fn: Callable[[], T], rows: Callable[[T], int]) -> tuple[T, Stage]:
        seq = self.srv.journal.log.last_seq
        secs0, calls0 = self.timings.snapshot()
        cpu0 = cpu_seconds()
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
        cpu = cpu_seconds() - cpu0
        secs1, calls1 = self.timings.snapshot()
        entries = self.srv.meta.requests_log(since=seq)
        made = self.srv.journal.log.last_seq - seq
        requests: Counter[str] = Counter()
        request_rows: Counter[str] = Counter()
        for e in entries:
            kind = request_kind(e)
            requests[kind] += 1
            request_rows[kind] += int(e.get("num_rows") or 0)
        stage = Stage(
            name=name,
            rows=rows(result),
            seconds=seconds,
            cpu_seconds=cpu,
            requests=dict(requests),
            request_rows={k: v for k, v in request_rows.items() if v},
            breakdown={
                k: (secs1[k] - secs0[k], calls1[k] - calls0[k])
                for k in secs1
                if secs1[k] - secs0[k] > 0.0005 or calls1[k] != calls0[k]
            },
            peak_rss_mib=peak_rss_mib(),
            rss_mib=current_rss_mib(),
        )
        if made != len(entries):
            stage.facts["request_log_note"] = f"{made} requests, only {len(entries)} still in the sandbox log"
        self.stages.append(stage)
        return result, stage


# --------------------------------------------------------------------------------------------
# The run


def staged_digest(path: str | Path, store: StateStore, registry_id: int) -> tuple[int, int]:
    """(rows, order-independent digest) of the members a staged file should put on the platform: the
    staged values of rows extraction hashed, the ledger's payload of rows it found unchanged."""
    total = n = 0
    unchanged: set[str] = set()
    for part in staged_parts(path):
        table = pq.read_table(part, columns=["member_id", "row_hash"])
        unchanged.update(table.filter(pc.is_null(table["row_hash"]))["member_id"].to_pylist())
    for mid, schema, values in read_staged(path):
        if mid in unchanged:
            continue
        total = (total + _member_hash({k: v for k, v in zip(schema, values, strict=True) if v})) % (1 << 64)
        n += 1
    q = sa.select(ledger.c.member_id, ledger.c.payload).where(ledger.c.registry_id == registry_id)
    with store.engine.connect() as conn:
        for mid, payload in conn.execute(q):
            if mid in unchanged:
                opened = store.open_payload(payload)
                total = (total + _member_hash({k: v for k, v in opened.items() if v})) % (1 << 64)
                n += 1
    return n, total


def sandbox_digest(members: Iterable[dict[str, str]]) -> tuple[int, int]:
    total = n = 0
    for m in members:
        total = (total + _member_hash(m)) % (1 << 64)
        n += 1
    return n, total


def _member_hash(member: dict[str, str]) -> int:
    text = json.dumps(sorted(member.items()), separators=(",", ":"))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


#: the generated list's columns (a Parquet file, read back by the product's own reader)
LIST_SCHEMA = pa.schema(
    [(KEY, pa.int64())]
    + [(c, pa.string()) for c in ("email", "mobile", "first_name", "last_name", "country")]
)


def population(
    factory: MemberFactory,
    n: int,
    chunk_rows: int,
    path: Path,
    churn: float | None,
    changes: bool = True,
) -> Population:
    """Write a population to a Parquet list, not timed: a real group is read from its source, and
    generating rows in this process would compete with the extraction workers for the cores."""
    pop = Population()
    with pq.ParquetWriter(path, LIST_SCHEMA) as writer:
        for chunk in factory.chunks(n, chunk_rows, pop, churn=churn, changes=changes):
            writer.write_table(pa.Table.from_pylist(chunk, schema=LIST_SCHEMA))
    return pop


def extract(
    path: Path, chunk_rows: int, staging: Path, store: StateStore | None = None, segment: str = ""
) -> ExtractCounts:
    """The product's extraction of a list file (what the extract task does); given the store, a rerun
    skips the rows whose fingerprint the audience's ledger holds (``core/fingerprints.py``)."""
    # as the extract task: the ledger's fingerprints are read while the worker processes start
    known = known_in_background(store, [("meta", ACCOUNT, segment)]) if store is not None else None
    return extract_and_stage(
        read_file(path, chunk_rows),
        key=KEY,
        identifiers=IDENTIFIERS,
        platforms=["meta"],
        staging_dir=staging,
        keys=KEYS,
        default_country="US",
        known=known,
    )


def plan(dest: MetaDestination, store: StateStore, req: SyncRequest, path: str | Path) -> dict[str, Any]:
    """The product's dry-run plan (``plan_sync``: the staged group against the ledger, in Arrow)."""
    result = plan_sync(dest, store, req, StagedGroup(path), retry=RETRY)
    keys = ("group", "adds", "changed", "removes", "unchanged", "warnings")
    return {"audience": result["audience"]["action"], **{k: result[k] for k in keys if k in result}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--members", type=int, default=1_000_000, help="synthetic members (default 1,000,000)"
    )
    parser.add_argument(
        "--state", default="sqlite", help="'sqlite' (a file in a temp dir) or a SQLAlchemy PostgreSQL URL"
    )
    parser.add_argument("--churn", type=float, default=0.05, help="fraction of members that change (0.05)")
    parser.add_argument(
        "--leave-join",
        action="store_true",
        help="churn is half members leaving, half joining (the P2 target's mix); default: thirds "
        "leaving, changing e-mail, joining",
    )
    parser.add_argument("--out", help="also write the figures to this JSON file")
    parser.add_argument("--seed", type=int, default=20260101)
    parser.add_argument(
        "--remove-via",
        choices=list(REMOVE_VIA),
        default=DEFAULT_REMOVE_VIA,
        help=f"how removals travel, as the Meta connection extra remove_via ({DEFAULT_REMOVE_VIA})",
    )
    parser.add_argument("--chunk-rows", type=int, default=50_000, help="rows per generated chunk (50,000)")
    parser.add_argument(
        "--workdir", help="keep staging files and the SQLite state here (default: temp, removed)"
    )
    parser.add_argument(
        "--profile", help="write a cProfile of the main thread to this file and print the top"
    )
    parser.add_argument("--keep-state", action="store_true", help="PostgreSQL: keep the bench's rows")
    args = parser.parse_args(argv)
    if args.members < 1 or not 0 <= args.churn <= 1:
        parser.error("--members must be >= 1 and --churn in [0, 1]")

    profiler = cProfile.Profile() if args.profile else None
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_sync_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if profiler:
            profiler.enable()
        result = _run(args, workdir)
        if profiler:
            profiler.disable()
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    if profiler and args.profile:
        profiler.dump_stats(args.profile)
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        print("\n== cProfile (main thread, by own time)\n" + out.getvalue())
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"\nfigures written to {args.out}")
    return 0 if result["verification"]["ok"] else 1


def _run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    n, churn = args.members, args.churn
    timings = Timings()
    url = f"sqlite:///{workdir / 'state.db'}" if args.state == "sqlite" else args.state
    shown_url = "sqlite (temp file)" if args.state == "sqlite" else sa.make_url(url).render_as_string()
    print(
        f"bench_sync: {n:,} members, churn {churn:.1%}, state {shown_url}, seed {args.seed}, "
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, code {code_revision()}"
    )
    started = time.perf_counter()
    factory = MemberFactory(args.seed)
    store = TimedStore(url, timings)
    segment = f"bench_sync_{n}_{uuid.uuid4().hex[:8]}"
    registry_id: int | None = None
    srv = start_sandbox(port=0, access_token=TOKEN)
    try:
        instrument_sandbox(srv, timings)
        dest = TimedMeta(
            make_meta_api(TOKEN, graph_url=srv.url), ACCOUNT, timings=timings, remove_via=args.remove_via
        )
        retry = RETRY
        bench = Bench(srv, timings)

        # 1. extract (each population is written to a list file first, not timed)
        pop1 = population(factory, n, args.chunk_rows, workdir / "list1.parquet", None)
        counts1, st = bench.run(
            "1 extract",
            lambda: extract(workdir / "list1.parquet", args.chunk_rows, workdir / "run1", store, segment),
            lambda r: r.rows,
        )
        st.facts["list generated in (not timed) s"] = round(pop1.generate_seconds, 1)
        st.facts["extract"] = _extract_facts(counts1)
        st.facts["expected valid (generator)"] = pop1.valid
        parts = staged_parts(counts1.staged["meta"]["path"])
        st.facts["staged MiB"] = round(sum(p.stat().st_size for p in parts) / 2**20, 1)
        st.print()
        path1 = counts1.staged["meta"]["path"]
        schema = tuple(counts1.staged["meta"]["schema"])

        def request(run: int) -> SyncRequest:
            return SyncRequest(
                dag_id="bench_sync",
                run_id=f"bench_{run}",
                platform="meta",
                account=ACCOUNT,
                segment_name=segment,
                schema=schema,
                mode="mirror",
            )

        # 2. plan (register the audience the sync's own way, then the dry-run plan of the group)
        def stage2() -> dict[str, Any]:
            nonlocal registry_id
            entry, action = resolve_audience(dest, store, request(1), retry)
            registry_id = entry.id
            return {"registered": f"{action} {entry.audience_id}", **plan(dest, store, request(1), path1)}

        plan1, st = bench.run("2 plan", stage2, lambda r: r["group"])
        st.facts["plan"] = plan1
        st.print()
        assert registry_id is not None

        # 3. upload
        out1, st = bench.run(
            "3 upload",
            lambda: sync_audience(dest, store, request(1), StagedGroup(path1), retry=retry),
            _group,
        )
        st.facts["outcome"] = _outcome_facts(out1)
        st.print()
        audience_id = out1.audience_id
        count1 = srv.meta.audience(audience_id)["count"]

        # 4. the same group again: nothing to send (run 2), then the churned group (run 3)
        counts_same, st = bench.run(
            "4a same-group extract",
            lambda: extract(workdir / "list1.parquet", args.chunk_rows, workdir / "run_same", store, segment),
            lambda r: r.rows,
        )
        st.facts["extract"] = _extract_facts(counts_same)
        st.print()
        out_same, st = bench.run(
            "4b same-group sync",
            lambda: sync_audience(
                dest, store, request(2), StagedGroup(counts_same.staged["meta"]["path"]), retry=retry
            ),
            _group,
        )
        st.facts["outcome"] = _outcome_facts(out_same)
        st.print()
        same_requests = sum(v for k, v in bench.stages[-1].requests.items() if "/{audience}/users" in k)

        # 5. delta rerun: extract the churned population, plan, sync (mirror)
        pop2 = population(factory, n, args.chunk_rows, workdir / "list2.parquet", churn, not args.leave_join)
        counts2, st = bench.run(
            "5a delta extract",
            lambda: extract(workdir / "list2.parquet", args.chunk_rows, workdir / "run2", store, segment),
            lambda r: r.rows,
        )
        st.facts["list generated in (not timed) s"] = round(pop2.generate_seconds, 1)
        st.facts["extract"] = _extract_facts(counts2)
        st.facts["churn (generator)"] = {
            "left": pop2.left,
            "left_valid": pop2.left_valid,
            "joined": pop2.joined,
            "joined_valid": pop2.joined_valid,
            "changed_email_valid": pop2.changed_valid,
            "expected_valid": pop2.valid,
        }
        st.print()
        path2 = counts2.staged["meta"]["path"]
        plan2, st = bench.run(
            "5b delta plan", lambda: plan(dest, store, request(3), path2), lambda r: r["group"]
        )
        st.facts["plan"] = plan2
        st.facts["expected"] = {
            "adds": pop2.joined_valid + pop2.changed_valid,
            "removes": pop2.left_valid,
            "changed": pop2.changed_valid,
            "unchanged": pop2.valid - pop2.joined_valid - pop2.changed_valid,
        }
        st.print()
        out2, st = bench.run(
            "5c delta upload",
            lambda: sync_audience(dest, store, request(3), StagedGroup(path2), retry=retry),
            _group,
        )
        st.facts["outcome"] = _outcome_facts(out2)
        adds = sum(v for k, v in st.request_rows.items() if k.startswith("POST /{audience}/users"))
        removes = sum(
            v for k, v in st.request_rows.items() if k.endswith("/{audience}/users") and "DELETE" in k
        )
        st.facts["rows sent"] = {
            "added": adds,
            "removed": removes,
            "expected_added": pop2.joined_valid + pop2.changed_valid,
            "expected_removed (leavers + old e-mails of changers)": pop2.left_valid + pop2.changed_valid,
        }
        st.print()
        delta_seconds = sum(s.seconds for s in bench.stages if s.name in ("5b delta plan", "5c delta upload"))
        print(
            f"\n   delta plan+upload: {delta_seconds:,.2f} s for {plan2['adds'] + plan2['removes']:,} changes"
        )
        p2 = incremental_summary(bench.stages, same_requests, churn)

        # verification (printed, not asserted)
        print("\n== verification")
        checks: dict[str, tuple[Any, Any]] = {
            "run 1: sandbox audience count == expected valid": (count1, pop1.valid),
            "run 1: extract valid == expected valid": (counts1.valid, pop1.valid),
            "run 2: extract valid == expected valid": (counts2.valid, pop2.valid),
        }
        final_count = srv.meta.audience(audience_id)["count"]
        checks["run 2: sandbox audience count == expected valid"] = (final_count, pop2.valid)
        checks["run 2: ledger sent == expected valid"] = (
            store.ledger_counts(registry_id)["sent"],
            pop2.valid,
        )
        staged = staged_digest(path2, store, registry_id)
        live = sandbox_digest(srv.meta.members(audience_id))
        checks["run 2: sandbox members == staged hashes (count, digest)"] = (live, staged)
        ok = True
        for label, (got, want) in checks.items():
            good = got == want
            ok &= good
            print(f"   {'OK      ' if good else 'MISMATCH'} {label}: {got} vs {want}")
        print(f"   overall: {'OK' if ok else 'MISMATCH'}")
        total = time.perf_counter() - started
        print(
            f"\ntotal wall time {total:,.1f} s, process CPU {cpu_seconds():,.1f} s, "
            f"peak RSS {peak_rss_mib():,.0f} MiB"
        )
        return {
            "args": {k: v for k, v in vars(args).items() if k != "state"} | {"state": shown_url},
            "stages": [s.as_dict() for s in bench.stages],
            "verification": {
                "ok": ok,
                "checks": {k: {"got": g, "expected": w, "ok": g == w} for k, (g, w) in checks.items()},
            },
            "code": code_revision(),
            "total_seconds": round(total, 2),
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "incremental": p2,
        }
    finally:
        srv.stop()
        if args.state != "sqlite" and not args.keep_state and registry_id is not None:
            with store.engine.begin() as conn:
                conn.execute(ledger.delete().where(ledger.c.registry_id == registry_id))
                conn.execute(registry.delete().where(registry.c.id == registry_id))
        store.engine.dispose()


def incremental_summary(stages: Sequence[Stage], same_requests: int, churn: float) -> dict[str, Any]:
    """P2: a rerun's cost against the first full run's (wall seconds of the stages)."""

    def cost(prefix: str) -> float:
        return sum(st.seconds for st in stages if st.name.startswith(prefix))

    first = cost("1") + cost("3")  # extract + upload (the plan is a dry run a sync does not need)
    same, churned = cost("4"), cost("5a") + cost("5c")
    out = {
        "first_run_s": round(first, 2),
        "same_group_rerun_s": round(same, 2),
        "same_group_member_requests": same_requests,
        "churn_rerun_s": round(churned, 2),
        "churn": churn,
    }
    print(
        "\n== P2 incremental (wall seconds; lists generated beforehand, not timed; plan stages not counted)"
    )
    print(f"   first full run (extract + sync)           {first:9,.2f}")
    print(
        f"   rerun, same group                         {same:9,.2f} = {same / first:6.1%} of the first "
        f"(target <= 5%: {'MET' if same <= 0.05 * first else 'NOT MET'}); member requests: {same_requests} "
        f"(target 0: {'MET' if same_requests == 0 else 'NOT MET'})"
    )
    print(
        f"   rerun, {churn:.1%} churn                         {churned:9,.2f} = {churned / first:6.1%} of the "
        f"first (target <= 10% at 1% churn: {'MET' if churned <= 0.10 * first else 'NOT MET'})"
    )
    return out


def _group(outcome: SyncOutcome) -> int:
    return outcome.counts.get("total", 0)


def _extract_facts(counts: ExtractCounts) -> dict[str, Any]:
    d = counts.as_dict()
    keys = ("rows", "valid", "invalid", "duplicates", "hashed", "reused", "invalid_by_reason", "field_errors")
    return {k: d[k] for k in keys}


def _outcome_facts(outcome: SyncOutcome) -> dict[str, Any]:
    return {
        "audience": f"{outcome.audience_action} {outcome.audience_id}",
        "counts": outcome.counts,
        "sdk_requests": outcome.requests,
    }


if __name__ == "__main__":
    sys.exit(main())
