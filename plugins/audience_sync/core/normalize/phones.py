"""Phone parsing for the normalisers: ``rphonenumbers`` when it is usable and verified, else ``phonenumbers``.

``rphonenumbers`` binds a Rust port of libphonenumber behind the ``phonenumbers`` API and parses about eight
times faster, but it is young and carries its own copy of the metadata (number ranges), which may be of
another release than the installed ``phonenumbers``. So the library is chosen once, at the first phone
parsed, by the ``AUDIENCE_SYNC_PHONE_LIBRARY`` setting:

- ``auto`` (default): ``rphonenumbers`` if it imports, gives the same result as ``phonenumbers`` on every
  number of :data:`SELF_CHECK` (validity, country code, national number) and carries the metadata release
  of the installed ``phonenumbers``; otherwise ``phonenumbers``, with one warning saying why.
- ``rphonenumbers``: an import or self-check failure is an error (:class:`PhoneLibraryError`); another
  metadata release only a warning.
- ``phonenumbers``: always ``phonenumbers``.

``bench/phone_equivalence.py`` compares the two libraries on a million numbers; the self-check is the quick
guard at run time against a broken or different build. Pure: no Airflow, no I/O.
"""

from __future__ import annotations

import importlib
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType
from typing import Any

from audience_sync.core.errors import AudienceSyncError
from audience_sync.core.normalize.values import InvalidValue
from audience_sync.core.settings import settings

__all__ = [
    "SELF_CHECK",
    "Library",
    "PhoneLibraryError",
    "e164_parts",
    "parts_column",
    "parts_with",
    "phone_library",
]

log = logging.getLogger(__name__)

_SETTING = "AUDIENCE_SYNC_PHONE_LIBRARY"
_FAST = "rphonenumbers"
_REFERENCE = "phonenumbers"

#: (text, region) pairs both libraries must agree on: mobile and fixed-line numbers of 18 regions written
#: national, international, E.164, "00"-prefixed, as bare digits and with odd punctuation, plus numbers
#: that are too short, too long, of an unassigned range, or not numbers at all. Region ``None`` takes the
#: country code from the digits, as :func:`e164_parts` does.
SELF_CHECK: tuple[tuple[str, str | None], ...] = (
    # US / CA (NANPA): 555-01xx is fictional but valid; 1xx area codes do not exist
    ("(201) 555-0123", "US"), ("+1 201-555-0123", "US"), ("12015550123", None), ("201.555.0123 x12", "US"),
    ("(101) 555-0123", "US"), ("555-0123", "US"), ("+1 (613) 555-0156", "CA"), ("613 555 0156", "CA"),
    # GB: mobile, Birmingham fixed line, "0044", bare digits, a digit short, a digit too many
    ("07400 123456", "GB"), ("+44 7400 123456", "GB"), ("0044 7400 123456", "GB"), ("447400123456", None),
    ("0121 234 5678", "GB"), ("+44 (0)121 234 5678", "GB"), ("07400 12345", "GB"), ("07400 1234567", "GB"),
    # IN
    ("081234 56789", "IN"), ("+91 81234 56789", "IN"), ("918123456789", None), ("074104 10123", "IN"),
    ("+91 12345 67890", "IN"), ("8123456789", "IN"),
    # FR
    ("06 12 34 56 78", "FR"), ("+33 6 12 34 56 78", "FR"), ("0033612345678", None), ("01 23 45 67 89", "FR"),
    ("06 12 34 56", "FR"), ("+33 (0)6 12 34 56 78", "FR"),
    # DE
    ("01512 3456789", "DE"), ("+49 1512 3456789", "DE"), ("030 123456", "DE"), ("+49 30 123456", "DE"),
    ("4915123456789", None), ("0151 2", "DE"),
    # IT: the leading 0 of fixed lines belongs to the number
    ("312 345 6789", "IT"), ("+39 312 345 6789", "IT"), ("02 1234 5678", "IT"), ("+39 02 1234 5678", "IT"),
    ("390212345678", None), ("0039 312 345 6789", "IT"),
    # ES
    ("612 34 56 78", "ES"), ("+34 612 34 56 78", "ES"), ("810 12 34 56", "ES"), ("512 34 56 78", "ES"),
    # BR: nine-digit mobiles; eight-digit ones (old format) are invalid
    ("(11) 96123-4567", "BR"), ("+55 11 96123-4567", "BR"), ("(11) 2345-6789", "BR"), ("+551199999999", "BR"),
    ("5511961234567", None), ("011 96123-4567", "BR"),
    # MX
    ("222 123 4567", "MX"), ("+52 222 123 4567", "MX"), ("+52 1 222 123 4567", "MX"), ("200 123 4567", "MX"),
    # JP
    ("090-1234-5678", "JP"), ("+81 90-1234-5678", "JP"), ("03-1234-5678", "JP"), ("+81 3-1234-5678", "JP"),
    ("0120-123-456", "JP"), ("090-1234-567", "JP"),
    # AU
    ("0412 345 678", "AU"), ("+61 412 345 678", "AU"), ("(02) 1234 5678", "AU"), ("61412345678", None),
    # NG, ZA, KR
    ("0802 123 4567", "NG"), ("+234 802 123 4567", "NG"), ("071 123 4567", "ZA"), ("+27 71 123 4567", "ZA"),
    ("010-2000-0000", "KR"), ("+82 10-2000-0000", "KR"), ("02-212-3456", "KR"), ("821020000000", None),
    # AR: the mobile "9" and the national "15"; SE
    ("011 15-2345-6789", "AR"), ("+54 9 11 2345-6789", "AR"), ("011 2345-6789", "AR"),
    ("+54 11 2345-6789", "AR"),
    ("070-123 45 67", "SE"), ("+46 70 123 45 67", "SE"), ("08-12 34 56", "SE"), ("0046 8 12 34 56", "SE"),
    # another region's number under a row region; unknown or missing country codes; not numbers at all
    ("+44 7400 123456", "US"), ("+33 6 12 34 56 78", None), ("+999 1234 5678", "GB"), ("999123456", None),
    ("07400 123456", None), ("", "GB"), ("+", "US"), ("abc", "US"), ("1-800-FLOWERS", "US"), ("123", None),
    ("not a number", None), ("12", "FR"), ("+1 201 555 0123 456789012345", "US"), ("0000000000", "US"),
    ("tel:+1-201-555-0123", "US"), ("+44 20 7946 096", "GB"), ("06 12 34 56 78 90", "FR"),
    ("+49 0 30 123456", "DE"), ("+81 00-0000-0000", "JP"), ("+61 0412 345 678", "AU"),
    ("+7 912 345-67-89", "RU"),
)  # fmt: skip

_NON_DIGITS_RE = re.compile(r"\D")


class PhoneLibraryError(AudienceSyncError):
    """``AUDIENCE_SYNC_PHONE_LIBRARY`` asks for a phone library that cannot be used here."""


@dataclass(frozen=True)
class Library:
    """One phone library (``phonenumbers`` or ``rphonenumbers``): the functions :func:`parts_with` calls."""

    name: str
    version: str
    metadata: str  # the phonenumbers release whose metadata (number ranges) it carries
    parse: Callable[[str, str | None], Any]
    is_valid_number: Callable[[Any], bool]
    national_significant_number: Callable[[Any], str]
    parse_error: type[Exception]

    @classmethod
    def load(cls, name: str) -> Library:
        """Import the library ``name``; raises ImportError (or the native loader's error) if it cannot."""
        module: ModuleType = importlib.import_module(name)
        return cls(
            name=name,
            version=str(module.__version__),
            metadata=str(getattr(module, "__phonenumbers_version__", module.__version__)),
            parse=module.parse,
            is_valid_number=module.is_valid_number,
            national_significant_number=module.national_significant_number,
            parse_error=module.NumberParseException,
        )


_lock = threading.Lock()
_chosen: Library | None = None
_reference: Library | None = None


def parts_with(lib: Library, text: str, region: str | None) -> tuple[int, str] | str:
    """(country code, national significant number) of ``text`` read with ``lib``, or why it is invalid.

    The rules of :func:`e164_parts`, unmemoised and for a given library (the self-check and
    ``bench/phone_equivalence.py`` compare two libraries through it).
    """
    if region is None and not text.startswith("+"):
        # No region to read a national number with: the digits must already start with the country code
        # (typical for numbers stored as integers). "00" is the common international call prefix.
        digits = _NON_DIGITS_RE.sub("", text)
        text = "+" + (digits[2:] if digits.startswith("00") else digits)
    try:
        number = lib.parse(text, region)
    except lib.parse_error:
        number = None
    if number is None or not lib.is_valid_number(number):
        if region is None:
            return "not a valid phone number (no country code, and no country to read it with)"
        return f"not a valid phone number for region {region}"
    return number.country_code, lib.national_significant_number(number)


def _self_check(fast: Library, reference: Library) -> str | None:
    """Why ``fast`` cannot stand in for ``reference`` (the first disagreement on SELF_CHECK), or None."""
    for text, region in SELF_CHECK:
        expected = parts_with(reference, text, region)
        try:
            got = parts_with(fast, text, region)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a Rust panic surfaces as pyo3's PanicException, a BaseException
            return f"it raised {type(exc).__name__} on '{text}' (region {region})"
        if got != expected:
            return f"it reads '{text}' (region {region}) as {got!r}, {reference.name} as {expected!r}"
    return None


def _fast_or_why(reference: Library) -> tuple[Library | None, str]:
    """``rphonenumbers`` if it imports and passes the self-check; else None and why not."""
    try:
        fast = Library.load(_FAST)
    except Exception as exc:  # not installed, or a wheel whose native part fails to load
        return None, f"it cannot be imported ({type(exc).__name__}: {exc})"
    problem = _self_check(fast, reference)
    return (None, problem) if problem else (fast, "")


def _choose() -> Library:
    global _chosen, _reference
    with _lock:
        if _chosen is not None:
            return _chosen
        wanted = settings().phone_library
        reference = _reference = Library.load(_REFERENCE)
        if wanted == _REFERENCE:
            _chosen = reference
            return _chosen
        fast, problem = _fast_or_why(reference)
        if fast is None and wanted == _FAST:
            raise PhoneLibraryError(
                f"{_SETTING} is '{_FAST}' but {_FAST} cannot be used: {problem}. Fix: install the version "
                f"pinned in requirements.txt, or set {_SETTING}=auto to fall back to {_REFERENCE}."
            )
        if fast is not None and fast.metadata != reference.metadata:
            # The self-check covers long-assigned ranges only; numbers in ranges added or withdrawn between
            # two metadata releases read differently (bench/README.md lists the ones found), so "auto"
            # wants the same release. Asked for by name, rphonenumbers is used anyway, with this warning.
            problem = (
                f"it carries the metadata of phonenumbers {fast.metadata}, not {reference.metadata} as "
                f"installed (ranges changed in between would be read differently)"
            )
            if wanted == _FAST:
                log.warning(
                    "Phone numbers: %s %s as %s asks, although %s", fast.name, fast.version, _SETTING, problem
                )
                _chosen = fast
                return _chosen
            fast = None
        if fast is None:
            log.warning(
                "Phone numbers: using %s %s, not %s, because %s. Set %s=%s to skip this check.",
                reference.name,
                reference.version,
                _FAST,
                problem,
                _SETTING,
                _REFERENCE,
            )
            _chosen = reference
            return _chosen
        log.info("Phone numbers: %s %s (self-check passed, same metadata)", fast.name, fast.version)
        _chosen = fast
        return _chosen


def _library() -> Library:
    return _chosen if _chosen is not None else _choose()


def phone_library() -> str:
    """The name of the phone library in use (choosing it now if no phone was parsed yet)."""
    return _library().name


def _parts(text: str, region: str | None) -> tuple[int, str] | str:
    lib = _library()
    try:
        return parts_with(lib, text, region)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:
        if _reference is None or lib is _reference:
            raise
        # The fast library failed on an input the self-check did not cover: this value goes through the
        # reference library instead of failing the whole extract.
        log.warning("Phone numbers: %s raised on one value; parsed it with %s", lib.name, _reference.name)
        return parts_with(_reference, text, region)


# Cached with the reason for invalid numbers too, so that a bad number repeated for several platforms of
# one row is also parsed once (lru_cache does not cache exceptions).
_cached_parts = lru_cache(maxsize=1024)(_parts)


def parts_column(
    texts: Sequence[str | None], regions: Sequence[str | None]
) -> list[tuple[int, str] | str | None]:
    """:func:`e164_parts` of a column, unmemoised (each value is parsed once, by the caller's design):
    per text its (country code, national number), the reason it is invalid (a ``str``), or ``None``
    for ``None``."""
    lib = _library()
    out: list[tuple[int, str] | str | None] = []
    append = out.append
    for t, r in zip(texts, regions, strict=True):
        if t is None:
            append(None)
            continue
        try:
            append(parts_with(lib, t, r))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            append(_parts(t, r))  # the library failed on this value: _parts falls back, with its warning
    return out


def e164_parts(text: str, region: str | None) -> tuple[int, str]:
    """Country code and national significant number of the phone ``text`` (memoised).

    ``region`` (ISO alpha-2, uppercase) reads national numbers; without it the number must carry its
    country code (``+``, ``00`` or bare digits). The number must pass ``is_valid_number``; otherwise
    :class:`InvalidValue` is raised with a reason that never contains the number.
    """
    result = _cached_parts(text, region)
    if isinstance(result, str):
        raise InvalidValue(result)
    return result


def _reset() -> None:
    """Forget the chosen library and the memoised results (tests; a changed setting)."""
    global _chosen, _reference
    with _lock:
        _chosen = None
        _reference = None
        _cached_parts.cache_clear()
