"""Value primitives shared by every platform: coercion, hashing, country and US-state lookups.

Everything here is pure and cheap to call millions of times. Lookups that go through ``pycountry`` are
memoised with :func:`functools.lru_cache`; the regular expressions are compiled once at import.

Privacy rule for the whole package: an exception or error string may describe *what* is wrong with a value
("not a valid email address") but must never contain the value itself.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from datetime import date
from functools import lru_cache

__all__ = [
    "InvalidValue",
    "coerce",
    "letters_only",
    "nfc_lower",
    "normalize_country",
    "sha256_hex",
    "us_state_code",
]


class InvalidValue(ValueError):
    """A present value that cannot be normalised for a platform.

    The message is a short human reason and never contains the raw value.
    """


# Zero-width characters and the BOM are not ``str.isspace`` but turn up at the edges of exported CSV cells.
_EDGE_JUNK = "\u200b\u200c\u200d\u2060\ufeff"
_EDGE_JUNK_RE = re.compile(r"^[\s\u200b\u200c\u200d\u2060\ufeff]+|[\s\u200b\u200c\u200d\u2060\ufeff]+$")
_MISSING_TYPE_NAMES = frozenset({"NAType", "NaTType"})


def _clean_str(text: str) -> str | None:
    text = text.strip()
    if text and (text[0] in _EDGE_JUNK or text[-1] in _EDGE_JUNK):
        text = _EDGE_JUNK_RE.sub("", text)
    return text or None


def coerce(value: object) -> str | date | None:
    """Turn one raw cell into trimmed text, a :class:`~datetime.date`, or ``None`` when it is missing.

    Missing means ``None``, NaN/inf floats, pandas ``NA``/``NaT``, or a string that is empty after trimming
    whitespace (including zero-width characters and a BOM). Integral floats lose their ``.0`` so that a phone
    number or ZIP code read as a float (``4.4207946e11``, ``94025.0``) comes back as its digits. ``date`` and
    ``datetime`` (and ``pandas.Timestamp``) objects are returned unchanged for date-of-birth handling.
    """
    if value is None:
        return None
    if type(value) is str:
        return _clean_str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, date):
        return None if value != value else value  # pandas NaT subclasses datetime and is != itself
    if isinstance(value, str):
        return _clean_str(str(value))
    if isinstance(value, (bytes, bytearray)):
        return _clean_str(bytes(value).decode("utf-8", errors="replace"))
    if type(value).__name__ in _MISSING_TYPE_NAMES:
        return None
    try:
        if value != value:  # numpy NaT, Decimal('NaN'), ...
            return None
    except (TypeError, ValueError):
        pass
    return _clean_str(str(value))


def sha256_hex(text: str) -> str:
    """SHA-256 of the UTF-8 bytes of ``text`` as 64 lowercase hex characters (no salt)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@lru_cache(maxsize=65536)
def letters_only(text: str) -> str:
    """Lowercase, NFC-normalise and keep only letters (any script) and their combining marks.

    ``"José"`` → ``"josé"``, ``"Mary-Ann O'Neil"`` → ``"maryannoneil"``, ``"Menlo Park"`` →
    ``"menlopark"``.
    Digits, punctuation, symbols and whitespace are dropped.
    """
    text = nfc_lower(text)
    if text.isascii():
        return text if text.isalpha() else "".join(ch for ch in text if ch.isalpha())
    return "".join(ch for ch in text if unicodedata.category(ch)[0] in "LM")


@lru_cache(maxsize=65536)
def nfc_lower(text: str) -> str:
    """Lowercase and NFC-normalise (so a decomposed ``José`` hashes like a composed one)."""
    return unicodedata.normalize("NFC", text.lower())


# --------------------------------------------------------------------------------------------- countries

# Names people write that pycountry does not know. Keys are uppercase letters only.
_COUNTRY_ALIASES = {
    "UK": "GB",
    "GREATBRITAIN": "GB",
    "BRITAIN": "GB",
    "ENGLAND": "GB",
    "SCOTLAND": "GB",
    "WALES": "GB",
    "NORTHERNIRELAND": "GB",
    "UNITEDKINGDOM": "GB",
    "US": "US",
    "USA": "US",
    "AMERICA": "US",
    "UNITEDSTATESOFAMERICA": "US",
    "RUSSIA": "RU",
    "TURKEY": "TR",
    "MACEDONIA": "MK",
    "IVORYCOAST": "CI",
    "HOLLAND": "NL",
    "UAE": "AE",
    "SOUTHKOREA": "KR",
    "NORTHKOREA": "KP",
    "CZECHIA": "CZ",
}
_NON_LETTERS_RE = re.compile(r"[^A-Z]")


@lru_cache(maxsize=4096)
def _country_from_text(text: str) -> str | None:
    import pycountry  # local: a few ms of import only paid by processes that look a country up

    try:
        return pycountry.countries.lookup(text).alpha_2
    except LookupError:
        pass
    key = _NON_LETTERS_RE.sub("", text.upper())
    if key in _COUNTRY_ALIASES:
        return _COUNTRY_ALIASES[key]
    if key and key != text.upper():
        try:
            return pycountry.countries.lookup(key).alpha_2
        except LookupError:
            return None
    return None


def normalize_country(value: object) -> str | None:
    """ISO 3166-1 alpha-2 code (uppercase) for a country code, alpha-3 code, numeric code or name.

    ``"GB"``, ``"gb"``, ``"GBR"``, ``"826"``, ``"United Kingdom"``, ``"UK"`` → ``"GB"``. Unknown or missing
    values give ``None``. Results are cached.
    """
    text = coerce(value)
    if not isinstance(text, str):
        return None
    return _country_from_text(text)


# --------------------------------------------------------------------------------------------- US states

_STATE_ALIASES = {"washingtondc": "DC", "dc": "DC"}


@lru_cache(maxsize=1)
def _us_state_table() -> dict[str, str]:
    import pycountry

    table: dict[str, str] = dict(_STATE_ALIASES)
    for sub in pycountry.subdivisions.get(country_code="US"):
        code = sub.code.split("-", 1)[1]
        table[code.lower()] = code
        table[letters_only(sub.name)] = code
    return table


@lru_cache(maxsize=4096)
def us_state_code(text: str) -> str | None:
    """Two-letter USPS/ANSI code (uppercase) for a US state, DC or territory name or code; else ``None``.

    ``"California"``, ``"CA"``, ``"ca"``, ``"US-CA"`` → ``"CA"``; ``"New York"`` → ``"NY"``.
    """
    text = text.strip()
    if text[:3].upper() == "US-":
        text = text[3:]
    return _us_state_table().get(letters_only(text))
