"""Synthetic, deliberately messy customer database for demos, the sandbox and tests.

Everything here is fake: names are drawn from small lists, e-mail addresses use reserved example
domains (plus a few synthetic ``gmail.com`` ones), and phone numbers are the ``phonenumbers``
example mobile number of each region with varied trailing digits (kept only when valid).

The rows imitate a real CRM export so the normaliser has work to do:

* e-mails in mixed case and with leading/trailing whitespace;
* phones in national (``(201) 555-0143``, ``07400 123456``), international (``+44 7400 123456``),
  ``+44 (0)7400 123456``, dotted, dashed, digits-only and ``00``-prefixed forms;
* countries as ``GB``, ``gb``, ``United Kingdom``, ``USA``, ``US``, ``India``, ``IN``, ...;
* accented names (José, Zoë, Łukasz, Müller, O'Brien, Jean-Luc);
* US states as names, codes and lower-case codes; postcodes with and without spaces;
* NULLs spread over every optional column;
* about 5 % deliberately invalid rows that carry no usable identifier: an e-mail without ``@``,
  a phone number that is too short, or neither.

In every other ("valid") row at least one of ``email``/``mobile`` is present, every present e-mail
contains ``@`` and every present mobile number parses and validates with ``phonenumbers`` using the
row's country as the default region. If ``country`` is NULL the number is in international form.

Timestamps are ISO 8601 in UTC with a ``T`` separator (``2026-07-14T13:05:22+00:00``), the same
shape as Airflow's ``{{ ts }}`` macro, so plain string comparison works against ``ts``/``ds``; in
SQLite ``datetime(cart_abandoned_at)`` also normalises it for comparison with other forms.

Pure module: standard library + ``phonenumbers`` (+ ``pycountry`` not needed at runtime).
Generation is deterministic for a seed and sequential, so ``generate_customers(100, s)`` is the
prefix of ``generate_customers(3000, s)``.
"""

from __future__ import annotations

import csv
import os
import random
import sqlite3
import tempfile
import unicodedata
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path

import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType

__all__ = [
    "CART_WINDOW_END",
    "CART_WINDOW_START",
    "COLUMNS",
    "generate_customers",
    "summarise",
    "write_demo_csv",
    "write_demo_db",
]

COLUMNS: tuple[str, ...] = (
    "customer_id",
    "email",
    "mobile",
    "first_name",
    "last_name",
    "city",
    "state",
    "zip",
    "country",
    "gender",
    "date_of_birth",
    "ads_consent",
    "cart_abandoned_at",
    "updated_at",
)

#: ``cart_abandoned_at`` values fall in [CART_WINDOW_START, CART_WINDOW_END).
CART_WINDOW_START = datetime(2026, 6, 1, tzinfo=UTC)
CART_WINDOW_END = datetime(2026, 11, 29, tzinfo=UTC)
_UPDATED_START = datetime(2025, 1, 1, tzinfo=UTC)

_FIRST_BASE_ID = 100_001

# Target fractions (per row, independent draws).
_P_INVALID = 0.05
_P_CART = 0.40
_P_CONSENT = 0.82

_DDL = """
CREATE TABLE customers (
    customer_id       INTEGER PRIMARY KEY,
    email             TEXT,
    mobile            TEXT,
    first_name        TEXT,
    last_name         TEXT,
    city              TEXT,
    state             TEXT,
    zip               TEXT,
    country           TEXT,
    gender            TEXT,
    date_of_birth     TEXT,
    ads_consent       INTEGER NOT NULL,
    cart_abandoned_at TEXT,
    updated_at        TEXT NOT NULL
)
"""
_INDEXES = (
    "CREATE INDEX ix_customers_cart_abandoned_at ON customers (cart_abandoned_at)",
    "CREATE INDEX ix_customers_updated_at ON customers (updated_at)",
)

_FIRST_NAMES = (
    "José|Zoë|Łukasz|Renée|Jean-Luc|François|Chloé|Björn|Søren|Siobhán|Aoife|Maria|James|"
    "Olivia|Liam|Emma|Noah|Ava|Priya|Arjun|Ananya|Rahul|Sophie|Lukas|Hannah|Felix|Léa|Hugo|"
    "Camille|Mohammed|Fatima|Oliver|Amelia|George|Isla|Ethan|Mia|Daniel|Grace|Anne-Marie"
).split("|")
_LAST_NAMES = (
    "Müller|O'Brien|García|Núñez|Kowalski|Smith|Jones|Patel|Sharma|Singh|Dubois|Lefèvre|"
    "Martin|Schmidt|Schröder|Weiß|Johnson|Williams|Brown|Taylor|Davies|Evans|Nguyen|Rossi|"
    "D'Angelo|McDonald|Van der Berg|Iyer|Reddy|Fischer|Bernard|Moreau|Wilson|Thomas|Okafor|"
    "Walsh"
).split("|")
_ASCII_FOLD = str.maketrans({"Ł": "L", "ł": "l", "Ø": "O", "ø": "o", "ß": "ss", "Æ": "AE", "æ": "ae"})

# region -> (weight, spellings of the country, [(city, state spellings, postcode spellings)])
_REGIONS: dict[str, tuple[int, tuple[str, ...], tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]]] = {
    "US": (
        35,
        ("US", "USA", "us", "United States"),
        (
            ("New York", ("NY", "New York", "ny"), ("10001", "10001-2334")),
            ("Los Angeles", ("CA", "California", "ca"), ("90012",)),
            ("Chicago", ("IL", "Illinois"), ("60601",)),
            ("Houston", ("TX", "Texas", "tx"), ("77002",)),
            ("Seattle", ("WA", "Washington"), ("98101",)),
            ("Boston", ("MA", "Massachusetts"), ("02108", "2108")),
            ("Miami", ("FL", "Florida"), ("33130",)),
            ("Denver", ("CO", "Colorado"), ("80202",)),
        ),
    ),
    "GB": (
        25,
        ("GB", "gb", "United Kingdom"),
        (
            ("London", ("England", "Greater London"), ("SW1A 1AA", "sw1a1aa", "EC1A 1BB")),
            ("Manchester", ("England",), ("M1 1AE", "m11ae")),
            ("Edinburgh", ("Scotland",), ("EH1 1YZ",)),
            ("Cardiff", ("Wales",), ("CF10 1EP",)),
            ("Belfast", ("Northern Ireland",), ("BT1 5GS",)),
        ),
    ),
    "IN": (
        15,
        ("IN", "India"),
        (
            ("Mumbai", ("Maharashtra", "MH"), ("400001",)),
            ("New Delhi", ("Delhi", "DL"), ("110001",)),
            ("Bengaluru", ("Karnataka", "KA"), ("560001",)),
            ("Chennai", ("Tamil Nadu", "TN"), ("600001",)),
        ),
    ),
    "FR": (
        12,
        ("FR", "fr", "France"),
        (
            ("Paris", ("Île-de-France",), ("75001", "75 001")),
            ("Lyon", ("Auvergne-Rhône-Alpes",), ("69001",)),
            ("Marseille", ("Provence-Alpes-Côte d'Azur",), ("13001",)),
        ),
    ),
    "DE": (
        13,
        ("DE", "de", "Germany"),
        (
            ("Berlin", ("Berlin", "BE"), ("10115",)),
            ("München", ("Bayern", "BY"), ("80331",)),
            ("Köln", ("Nordrhein-Westfalen", "NW"), ("50667",)),
            ("Hamburg", ("Hamburg", "HH"), ("20095",)),
        ),
    ),
}
_REGION_CODES = tuple(_REGIONS)
_REGION_WEIGHTS = tuple(v[0] for v in _REGIONS.values())

_EXAMPLE_DOMAINS = ("example.com", "example.org", "example.net")
_GENDERS = ("f", "m", "F", "M", "female", "male", "Female", "Male")

# Phone formatting styles; the first two need no default region.
_INTL_STYLES = ("e164", "international", "intl_trunk_zero")
_ALL_STYLES = (*_INTL_STYLES, "national", "national", "national_digits", "dots", "dashes", "idd")

# Invalid in every region used here (checked by the tests; random short digit strings are not:
# Germany has valid 5-digit numbers).
_TOO_SHORT_PHONES = ("12345", "555-01", "+44 7400", "0", "123", "1234", "99", "0151")

# Validity cache for candidate numbers: (region, national significant number) -> valid?
_VALID_CACHE: dict[tuple[str, str], bool] = {}


@cache
def _example_mobile(region: str) -> tuple[int, str]:
    """(country code, national significant number) of the region's example mobile number."""
    example = phonenumbers.example_number_for_type(region, PhoneNumberType.MOBILE)
    if example is None:  # pragma: no cover - all regions used here have one
        raise ValueError(f"phonenumbers has no example mobile number for {region}")
    return example.country_code, phonenumbers.national_significant_number(example)


def _is_valid(region: str, national: str) -> bool:
    key = (region, national)
    cached = _VALID_CACHE.get(key)
    if cached is None:
        try:
            cached = phonenumbers.is_valid_number(phonenumbers.parse(national, region))
        except phonenumbers.NumberParseException:
            cached = False
        _VALID_CACHE[key] = cached
    return cached


def _valid_phone(rng: random.Random, region: str, used: set[str]) -> phonenumbers.PhoneNumber:
    """A valid mobile number for ``region``: the example number with varied trailing digits.

    The US keeps its fictional ``555`` exchange (only the last 4 digits vary). Numbers already used
    are avoided for a few attempts, then accepted (duplicates are realistic anyway).
    """
    country_code, example = _example_mobile(region)
    vary = 4 if region == "US" else 5
    chosen = example
    for attempt in range(40):
        candidate = example[:-vary] + f"{rng.randrange(10**vary):0{vary}d}"
        if not _is_valid(region, candidate):
            continue
        chosen = candidate
        if f"{region}:{candidate}" not in used or attempt >= 20:
            break
    used.add(f"{region}:{chosen}")
    return phonenumbers.PhoneNumber(country_code=country_code, national_number=int(chosen))


def _format_phone(number: phonenumbers.PhoneNumber, region: str, style: str) -> str:
    national = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
    national_digits = "".join(ch for ch in national if ch.isdigit())
    significant = phonenumbers.national_significant_number(number)
    cc = number.country_code
    if style == "e164":
        return phonenumbers.format_number(number, PhoneNumberFormat.E164)
    if style == "international":
        return phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)
    if style == "intl_trunk_zero":
        if national.startswith("0"):  # "+44 (0)7400 123456"
            return f"+{cc} (0){national[1:]}"
        return f"+{cc} {national}"  # "+1 (201) 555-0143"
    if style == "national":
        return national
    if style == "national_digits":
        return national_digits
    if style in ("dots", "dashes"):
        sep = "." if style == "dots" else "-"
        groups = national.replace("(", " ").replace(")", " ").replace("-", " ").split()
        return sep.join(groups)
    if style == "idd":  # dialled from abroad: "00 44 7400 123456" / "1-201-555-0143"
        if region == "US":
            return f"1-{significant[:3]}-{significant[3:6]}-{significant[6:]}"
        return f"00{cc}{significant}"
    raise ValueError(f"unknown phone style {style!r}")


def _ascii(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text.translate(_ASCII_FOLD))
    return "".join(ch for ch in folded if ch.isascii() and ch.isalnum()).lower()


def _email(rng: random.Random, first: str, last: str, used: set[str]) -> str:
    f, lname = _ascii(first) or "customer", _ascii(last) or "x"
    local = rng.choice((f"{f}.{lname}", f"{f}{lname}", f"{f[0]}.{lname}", f"{f}_{lname}", f"{lname}.{f}"))
    domain = "gmail.com" if rng.random() < 0.10 else rng.choice(_EXAMPLE_DOMAINS)
    address = f"{local}@{domain}"
    while address in used:
        address = f"{local}{rng.randrange(1, 1000)}@{domain}"
    used.add(address)
    return address


def _messy_email(rng: random.Random, address: str) -> str:
    roll = rng.random()
    if roll < 0.12:
        local, domain = address.split("@")
        address = f"{local.title()}@{domain.capitalize()}"
    elif roll < 0.18:
        address = address.upper()
    roll = rng.random()
    if roll < 0.06:
        address = f"  {address}"
    elif roll < 0.12:
        address = f"{address} "
    elif roll < 0.14:
        address = f"\t{address}  "
    return address


def _messy_name(rng: random.Random, name: str) -> str:
    roll = rng.random()
    if roll < 0.05:
        return name.upper()
    if roll < 0.08:
        return name.lower()
    if roll < 0.12:
        return f" {name} "
    return name


def _iso(moment: datetime) -> str:
    return moment.replace(microsecond=0).isoformat()


def _random_moment(rng: random.Random, start: datetime, end: datetime) -> datetime:
    return start + timedelta(seconds=rng.randrange(int((end - start).total_seconds())))


def _generate(n: int, seed: int) -> tuple[list[dict[str, object]], set[int]]:
    """Rows plus the ids of the deliberately invalid ones."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    invalid: set[int] = set()
    used_emails: set[str] = set()
    used_phones: set[str] = set()
    customer_id = _FIRST_BASE_ID + rng.randrange(1000)
    for _ in range(n):
        customer_id += rng.randint(1, 7)  # gaps like a real sequence with deletions
        region = rng.choices(_REGION_CODES, weights=_REGION_WEIGHTS)[0]
        _, country_spellings, places = _REGIONS[region]
        city, states, postcodes = rng.choice(places)
        first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
        country = None if rng.random() < 0.05 else rng.choice(country_spellings)

        email: str | None = None
        mobile: str | None = None
        if rng.random() < _P_INVALID:
            invalid.add(customer_id)
            kind = rng.choice(("email_no_at", "phone_too_short", "both_missing", "both_bad"))
            if kind in ("email_no_at", "both_bad"):
                good = _email(rng, first, last, used_emails)
                email = rng.choice((good.replace("@", "."), good.replace("@", "(at)"), good.split("@")[0]))
            if kind in ("phone_too_short", "both_bad"):
                mobile = rng.choice(_TOO_SHORT_PHONES)
        else:
            has_email, has_phone = True, True
            roll = rng.random()
            if roll < 0.15:
                has_email = False
            elif roll < 0.40:
                has_phone = False
            if has_email:
                email = _messy_email(rng, _email(rng, first, last, used_emails))
            if has_phone:
                number = _valid_phone(rng, region, used_phones)
                style = rng.choice(_ALL_STYLES if country else _INTL_STYLES)
                mobile = _format_phone(number, region, style)

        dob = date(1950, 1, 1) + timedelta(days=rng.randrange(365 * 55))
        cart = _random_moment(rng, CART_WINDOW_START, CART_WINDOW_END) if rng.random() < _P_CART else None
        updated = _random_moment(rng, _UPDATED_START, CART_WINDOW_END)
        if cart is not None and updated < cart:
            updated = cart + timedelta(seconds=rng.randrange(1, 3600))
            updated = min(updated, CART_WINDOW_END - timedelta(seconds=1))

        rows.append(
            {
                "customer_id": customer_id,
                "email": email,
                "mobile": mobile,
                "first_name": None if rng.random() < 0.03 else _messy_name(rng, first),
                "last_name": None if rng.random() < 0.03 else _messy_name(rng, last),
                "city": None if rng.random() < 0.08 else city,
                "state": None if rng.random() < 0.15 else rng.choice(states),
                "zip": None if rng.random() < 0.08 else rng.choice(postcodes),
                "country": country,
                "gender": None if rng.random() < 0.20 else rng.choice(_GENDERS),
                "date_of_birth": None if rng.random() < 0.25 else dob.isoformat(),
                "ads_consent": 1 if rng.random() < _P_CONSENT else 0,
                "cart_abandoned_at": _iso(cart) if cart else None,
                "updated_at": _iso(updated),
            }
        )
    return rows, invalid


def generate_customers(n: int = 3000, seed: int = 7) -> list[dict[str, object]]:
    """``n`` synthetic customer rows (dicts keyed by :data:`COLUMNS`), deterministic for ``seed``."""
    return _generate(n, seed)[0]


def summarise(rows: list[dict[str, object]], invalid: int | None = None) -> dict[str, int]:
    """Counts describing ``rows`` (``invalid`` is only included when given)."""
    counts = {
        "rows": len(rows),
        "with_email": sum(1 for r in rows if r["email"] is not None),
        "with_phone": sum(1 for r in rows if r["mobile"] is not None),
        "with_email_and_phone": sum(1 for r in rows if r["email"] is not None and r["mobile"] is not None),
        "ads_consent": sum(1 for r in rows if r["ads_consent"] == 1),
        "cart_abandoned": sum(1 for r in rows if r["cart_abandoned_at"] is not None),
    }
    if invalid is not None:
        counts["invalid"] = invalid
    return counts


def write_demo_db(path: str | Path, n: int = 3000, seed: int = 7) -> dict[str, int]:
    """Create (or atomically replace) a SQLite file with one table ``customers``.

    Returns counts: ``rows``, ``with_email``, ``with_phone``, ``with_email_and_phone``,
    ``ads_consent``, ``cart_abandoned`` and ``invalid`` (rows with no usable identifier).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    rows, invalid = _generate(n, seed)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        with sqlite3.connect(tmp_name) as conn:
            conn.execute(_DDL)
            for statement in _INDEXES:
                conn.execute(statement)
            placeholders = ", ".join("?" for _ in COLUMNS)
            conn.executemany(
                f"INSERT INTO customers ({', '.join(COLUMNS)}) VALUES ({placeholders})",
                [tuple(row[c] for c in COLUMNS) for row in rows],
            )
        conn.close()
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return summarise(rows, len(invalid))


def write_demo_csv(path: str | Path, n: int = 3000, seed: int = 7) -> dict[str, int]:
    """Write the same rows as :func:`write_demo_db` to a UTF-8 CSV with a header (NULL -> empty)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    rows, invalid = _generate(n, seed)
    with target.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows({c: ("" if row[c] is None else row[c]) for c in COLUMNS} for row in rows)
    return summarise(rows, len(invalid))
