"""Equivalence and speed of ``rphonenumbers`` against ``phonenumbers`` on a large synthetic phone corpus.

Usage (see ``bench/README.md``)::

    .venv/bin/python bench/phone_equivalence.py --numbers 100000
    .venv/bin/python bench/phone_equivalence.py --out phones.json       # 1,000,000 numbers (default)

The corpus is generated deterministically from ``--seed`` (and the installed ``phonenumbers``, which lays
the numbers out), chunk by chunk: for each of :data:`REGIONS`, the ``phonenumbers`` example mobile and
fixed-line numbers with their trailing digits (or everything after the first few) replaced by random ones
and sometimes a digit dropped or added, so many are valid and some are not; each written in one of
:data:`FORMATS` (national, international, E.164, digits only, ``00``-prefixed, odd punctuation, with an
extension, ...), read with the row's region or, for about one in ten, with no region; plus clearly invalid
strings. Both libraries read every number through
:func:`~audience_sync.core.normalize.phones.parts_with`, the exact rules of ``e164_parts``, and their
results (valid or not, country code and national significant number, i.e. the E.164 number) must be equal.

Prints totals, per region and per format counts, the mismatches (all counted, the first 50 shown), the parse
seconds of each library (wall and process CPU: the machine may be shared) and the speed ratios. Exit code
1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from audience_sync.core.normalize.phones import Library, parts_with

#: 24 regions: the 20 the adoption rule asks for, plus four large ones with their own numbering quirks.
REGIONS = (
    "US", "GB", "IN", "FR", "DE", "IT", "ES", "BR", "MX", "JP", "AU", "CA", "NL", "SE", "PL", "ZA", "NG",
    "KR", "TR", "AR", "CN", "RU", "ID", "CH",
)  # fmt: skip
TYPES = {"mobile": PhoneNumberType.MOBILE, "fixed": PhoneNumberType.FIXED_LINE}
FORMATS = (
    "national",  # phonenumbers' NATIONAL format: trunk prefix, national grouping
    "international",  # +CC with international grouping
    "e164",  # +CCNSN
    "national_digits",  # the national format's digits only (trunk prefix kept)
    "cc_digits",  # CCNSN, no '+': how integer columns store numbers
    "double_zero",  # 00CC NSN
    "punctuated",  # national format with dots, slashes or parentheses instead of its separators
    "plus_trunk",  # +CC (0)NSN, a common British/European way of writing numbers
    "extension",  # international format plus an extension
)
NO_REGION_SHARE = 0.1  # rows read without a region (the country code must come from the digits)
GARBAGE_SHARE = 0.03  # rows that are not phone numbers at all


@dataclass(frozen=True)
class Base:
    """An example number of one region and type: country code, national significant number, trunk."""

    region: str
    kind: str
    country_code: int
    nsn: str


def bases() -> list[Base]:
    result = []
    for region in REGIONS:
        for kind, number_type in TYPES.items():
            example = phonenumbers.example_number_for_type(region, number_type)
            if example is None:
                raise SystemExit(f"phonenumbers has no example {kind} number for {region}")
            nsn = phonenumbers.national_significant_number(example)
            result.append(Base(region, kind, example.country_code, nsn))
    return result


def _vary(rng: random.Random, nsn: str) -> str:
    """Random digits in place of the tail (or of all but the first 1-3 digits); sometimes one more/less."""
    roll = rng.random()
    keep = len(nsn) - rng.randint(1, 4) if roll < 0.6 else rng.randint(1, 3)
    keep = max(1, min(keep, len(nsn) - 1))
    digits = nsn[:keep] + "".join(rng.choice("0123456789") for _ in range(len(nsn) - keep))
    change = rng.random()
    if change < 0.05:
        digits = digits[:-1]
    elif change < 0.10:
        digits += rng.choice("0123456789")
    return digits


def _write(rng: random.Random, base: Base, nsn: str, style: str) -> str:
    cc = str(base.country_code)
    if style == "e164":
        return f"+{cc}{nsn}"
    if style == "cc_digits":
        return cc + nsn
    if style == "double_zero":
        return f"00{cc} {nsn}"
    if style == "plus_trunk":
        return f"+{cc} (0){nsn}"
    # Parsing with phonenumbers only to lay the number out; the strings are what both libraries read.
    try:
        number = phonenumbers.parse(f"+{cc}{nsn}", None)
    except phonenumbers.NumberParseException:
        return f"+{cc}{nsn}"
    if style == "international":
        return phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)
    if style == "extension":
        ext = rng.choice((" ext. ", " x", " #", ";ext="))
        return (
            phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)
            + ext
            + str(rng.randint(1, 9999))
        )
    national = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
    if style == "national_digits":
        return "".join(ch for ch in national if ch.isdigit())
    if style == "punctuated":
        sep = rng.choice((".", "/", "-", "  ", " - "))
        text = national.replace(" ", sep).replace("-", sep)
        return f"({text[:3]}) {text[3:]}" if rng.random() < 0.3 else text
    return national


def _garbage(rng: random.Random) -> str:
    kind = rng.randrange(8)
    if kind == 0:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(rng.randint(1, 12)))
    if kind == 1:
        return str(rng.randint(0, 99_999))  # too short anywhere
    if kind == 2:
        return "+" + "".join(rng.choice("0123456789") for _ in range(rng.randint(16, 24)))  # too long
    if kind == 3:
        return f"+{rng.choice((999, 888, 0, 42, 210))} {rng.randint(10**6, 10**9)}"  # unknown country codes
    if kind == 4:
        return rng.choice(("+", "++44", "--", "()", "n/a", "NULL", "0", "00", "+0", "#"))
    if kind == 5:
        return f"{rng.randint(100, 999)}-CALL-{rng.choice(('NOW', 'ME', 'US'))}"  # vanity numbers
    if kind == 6:
        return "0" * rng.randint(6, 14)
    return "".join(rng.choice("0123456789-+() .") for _ in range(rng.randint(3, 20)))


def corpus(seed: int, total: int, chunk: int) -> Iterator[list[tuple[str, str | None, str, str]]]:
    """Chunks of (text, region, row region, format) rows; row region is the region even when read without."""
    pool = bases()
    for start in range(0, total, chunk):
        rng = random.Random(f"{seed}:{start}")  # each chunk on its own: reproducible at any --numbers
        rows = []
        for _ in range(min(chunk, total - start)):
            base = rng.choice(pool)
            region: str | None = None if rng.random() < NO_REGION_SHARE else base.region
            if rng.random() < GARBAGE_SHARE:
                rows.append((_garbage(rng), region, base.region, "garbage"))
                continue
            style = rng.choice(FORMATS)
            rows.append((_write(rng, base, _vary(rng, base.nsn), style), region, base.region, style))
        yield rows


@dataclass
class Tally:
    """Counts of one slice of the corpus (a region, a format, or all)."""

    numbers: int = 0
    valid: int = 0
    mismatches: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"numbers": self.numbers, "valid": self.valid, "mismatches": self.mismatches}


@dataclass
class Report:
    total: Tally = field(default_factory=Tally)
    regions: dict[str, Tally] = field(default_factory=dict)
    formats: dict[str, Tally] = field(default_factory=dict)
    no_region: Tally = field(default_factory=Tally)
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    seconds: Counter[str] = field(default_factory=Counter)
    cpu_seconds: Counter[str] = field(default_factory=Counter)


def _timed(
    lib: Library, rows: list[tuple[str, str | None, str, str]], report: Report
) -> list[tuple[int, str] | str]:
    results: list[tuple[int, str] | str] = []
    append = results.append
    wall, cpu = time.perf_counter(), time.process_time()
    for text, region, _, _ in rows:
        try:
            append(parts_with(lib, text, region))
        except Exception as exc:  # an exception is a result too: it differs from the other library's
            append(f"raised {type(exc).__name__}")
    report.seconds[lib.name] += time.perf_counter() - wall
    report.cpu_seconds[lib.name] += time.process_time() - cpu
    return results


def run(numbers: int, seed: int, chunk: int, progress: Callable[[str], None]) -> Report:
    reference, fast = Library.load("phonenumbers"), Library.load("rphonenumbers")
    report = Report()
    for index, rows in enumerate(corpus(seed, numbers, chunk)):
        # Alternate which library goes first, so neither always runs on a warm cache.
        order = (reference, fast) if index % 2 == 0 else (fast, reference)
        got = {lib.name: _timed(lib, rows, report) for lib in order}
        for row, expected, result in zip(rows, got[reference.name], got[fast.name], strict=True):
            text, region, row_region, style = row
            valid = not isinstance(expected, str)
            slices = [report.total, report.regions.setdefault(row_region, Tally())]
            slices.append(report.formats.setdefault(style, Tally()))
            if region is None:
                slices.append(report.no_region)
            same = result == expected
            for tally in slices:
                tally.numbers += 1
                tally.valid += valid
                tally.mismatches += not same
            if not same:
                report.mismatches.append(
                    {"text": text, "region": region, "row_region": row_region, "format": style,
                     reference.name: _show(expected), fast.name: _show(result)}
                )  # fmt: skip
        progress(f"{report.total.numbers:,} numbers, {report.total.mismatches} mismatches")
    return report


def _show(result: tuple[int, str] | str) -> str:
    return result if isinstance(result, str) else f"+{result[0]}{result[1]}"


def summary(report: Report, numbers: int, seed: int) -> dict[str, Any]:
    fast, ref = report.seconds["rphonenumbers"], report.seconds["phonenumbers"]
    fast_cpu, ref_cpu = report.cpu_seconds["rphonenumbers"], report.cpu_seconds["phonenumbers"]
    import rphonenumbers  # noqa: PLC0415 - only for its version strings

    return {
        "numbers": report.total.numbers,
        "requested": numbers,
        "seed": seed,
        "regions": len(report.regions),
        "valid": report.total.valid,
        "mismatches": report.total.mismatches,
        "no_region": report.no_region.as_dict(),
        "per_region": {name: t.as_dict() for name, t in sorted(report.regions.items())},
        "per_format": {name: t.as_dict() for name, t in sorted(report.formats.items())},
        "seconds": {"phonenumbers": round(ref, 2), "rphonenumbers": round(fast, 2)},
        "cpu_seconds": {k: round(v, 2) for k, v in sorted(report.cpu_seconds.items())},
        "us_per_number": {
            "phonenumbers": round(ref / max(report.total.numbers, 1) * 1e6, 2),
            "rphonenumbers": round(fast / max(report.total.numbers, 1) * 1e6, 2),
        },
        "speed_ratio": round(ref / fast, 2) if fast else None,
        "speed_ratio_cpu": round(ref_cpu / fast_cpu, 2) if fast_cpu else None,
        "versions": {
            "phonenumbers": phonenumbers.__version__,
            "rphonenumbers": rphonenumbers.__version__,
            "rphonenumbers_metadata": getattr(rphonenumbers, "__phonenumbers_version__", "?"),
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "mismatch_examples": report.mismatches[:50],
    }


def print_summary(figures: dict[str, Any]) -> None:
    print(f"\n{figures['numbers']:,} numbers from {figures['regions']} regions, {figures['valid']:,} valid")
    print(f"  read without a region: {figures['no_region']['numbers']:,}")
    print(f"  versions: {json.dumps(figures['versions'])}")
    print(f"\n{'region':<8}{'numbers':>10}{'valid':>10}{'mismatches':>12}")
    for name, t in figures["per_region"].items():
        print(f"{name:<8}{t['numbers']:>10,}{t['valid']:>10,}{t['mismatches']:>12,}")
    print(f"\n{'format':<16}{'numbers':>10}{'valid':>10}{'mismatches':>12}")
    for name, t in figures["per_format"].items():
        print(f"{name:<16}{t['numbers']:>10,}{t['valid']:>10,}{t['mismatches']:>12,}")
    for library in ("phonenumbers", "rphonenumbers"):
        print(
            f"\n{library:<14} {figures['seconds'][library]:>8.2f} s wall, "
            f"{figures['cpu_seconds'].get(library, 0):>8.2f} s CPU, "
            f"{figures['us_per_number'][library]:>6.2f} µs a number",
            end="",
        )
    print(
        f"\nspeed ratio (phonenumbers / rphonenumbers): {figures['speed_ratio']}x wall, "
        f"{figures['speed_ratio_cpu']}x CPU"
    )
    for example in figures["mismatch_examples"]:
        print(f"MISMATCH {json.dumps(example, ensure_ascii=False)}")
    print(
        f"\nmismatches: {figures['mismatches']}  ->  {'MISMATCH' if figures['mismatches'] else 'IDENTICAL'}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--numbers", type=int, default=1_000_000, help="corpus size (1,000,000)")
    parser.add_argument("--out", help="also write the figures to this JSON file")
    parser.add_argument("--seed", type=int, default=20260101)
    parser.add_argument("--chunk", type=int, default=50_000, help="numbers generated and compared at a time")
    args = parser.parse_args(argv)

    def progress(line: str) -> None:
        print(f"  {line}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    report = run(args.numbers, args.seed, args.chunk, progress)
    figures = summary(report, args.numbers, args.seed)
    figures["total_seconds"] = round(time.perf_counter() - started, 1)
    print_summary(figures)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as out:
            json.dump(figures, out, indent=2, ensure_ascii=False)
    return 1 if figures["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
