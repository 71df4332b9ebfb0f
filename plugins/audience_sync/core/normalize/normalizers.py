"""Per-identifier normalisers, parameterised where platforms differ.

A normaliser is ``fn(value, region) -> str | tuple[str, ...]``:

- ``value`` is already coerced by :func:`~audience_sync.core.normalize.values.coerce`: non-empty trimmed text,
  or a :class:`~datetime.date` (only date of birth uses that).
- ``region`` is the ISO alpha-2 country (uppercase) of the row, or the default, or ``None``. It is the region
  for national phone numbers and picks the US/UK rules for state and ZIP.
- It returns the normalised value (a tuple for multi-key identifiers such as Meta's DOBY/DOBM/DOBD) or raises
  :class:`~audience_sync.core.normalize.values.InvalidValue` with a reason that never contains the value.

Platform tables (``platforms.py``) pick and configure these; nothing here knows a platform name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date

from audience_sync.core.normalize.phones import e164_parts
from audience_sync.core.normalize.values import (
    InvalidValue,
    letters_only,
    nfc_lower,
    normalize_country,
    us_state_code,
)

Normalizer = Callable[[object, "str | None"], "str | tuple[str, ...]"]

_UK_REGIONS = frozenset({"GB", "GG", "JE", "IM"})  # Crown Dependencies use Royal Mail postcodes


def _text(value: object) -> str:
    # Dates only make sense for date of birth; anywhere else treat them as their ISO text (which then fails).
    return value if isinstance(value, str) else str(value)


# --------------------------------------------------------------------------------------------- email

# One '@', a non-empty local part, a dotted domain with non-empty labels, no whitespace anywhere.
_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+")
EMAIL_MAX_LENGTH = 254
_GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})


class EmailNormalizer:
    """Email normaliser: trim, lowercase, validate, then the platform's optional rewrites.

    A class rather than a closure so that column-wise hashing (``columns.py``) can read its options.

    :param remove_inner_whitespace: delete whitespace inside the address before validating (TikTok);
        when false an address with inner whitespace is invalid (Meta; Google, whose reference ``Formatter``
        rejects it: deleting the space would guess at an address the person never gave).
    :param gmail_canonical: for ``gmail.com``/``googlemail.com`` only, drop every ``.`` and any ``+suffix`` in
        the local part (Google's formatting guide and ``Formatter``; the Ads API accepts it too).
    :param drop_plus_suffix: drop ``+suffix`` from the local part for every domain (TikTok).
    """

    __slots__ = ("drop_plus_suffix", "gmail_canonical", "remove_inner_whitespace")

    def __init__(
        self, *, remove_inner_whitespace: bool, gmail_canonical: bool, drop_plus_suffix: bool
    ) -> None:
        self.remove_inner_whitespace = remove_inner_whitespace
        self.gmail_canonical = gmail_canonical
        self.drop_plus_suffix = drop_plus_suffix

    def __call__(self, value: object, region: str | None) -> str:
        text = _text(value).lower()
        if self.remove_inner_whitespace:
            text = "".join(text.split())
        if len(text) > EMAIL_MAX_LENGTH or _EMAIL_RE.fullmatch(text) is None:
            raise InvalidValue("not a valid email address")
        local, _, domain = text.partition("@")
        if self.gmail_canonical and domain in _GMAIL_DOMAINS:
            local = local.split("+", 1)[0].replace(".", "")
        elif self.drop_plus_suffix:
            local = local.split("+", 1)[0]
        if not local:
            raise InvalidValue("email local part is empty after normalisation")
        return f"{local}@{domain}"


def make_email(*, remove_inner_whitespace: bool, gmail_canonical: bool, drop_plus_suffix: bool) -> Normalizer:
    """Email normaliser, see :class:`EmailNormalizer`."""
    return EmailNormalizer(
        remove_inner_whitespace=remove_inner_whitespace,
        gmail_canonical=gmail_canonical,
        drop_plus_suffix=drop_plus_suffix,
    )


# --------------------------------------------------------------------------------------------- phone


class PhoneNormalizer:
    """Phone normaliser: parse with libphonenumber (row/default region, or the number's own ``+CC``).

    Requires ``is_valid_number``. The result is the E.164 number (country code + national significant
    number, trunk ``0`` removed, Italian leading zero kept), with or without the leading ``+``. Extensions
    are dropped. Parsing is :func:`~audience_sync.core.normalize.phones.e164_parts` (``rphonenumbers`` or
    ``phonenumbers``, memoised). A class rather than a closure so that column-wise hashing
    (``columns.py``) can parse a phone once for every platform and format it with :meth:`format`.

    :param plus: keep the ``+`` (Google: E.164) or not (Meta, TikTok: digits only).
    """

    __slots__ = ("plus", "prefix")

    def __init__(self, *, plus: bool) -> None:
        self.plus = plus
        self.prefix = "+" if plus else ""

    def format(self, country_code: int, national: str) -> str:
        """The normalised number from :func:`e164_parts`' result."""
        return f"{self.prefix}{country_code}{national}"

    def __call__(self, value: object, region: str | None) -> str:
        return self.format(*e164_parts(_text(value), region))


def make_phone(*, plus: bool) -> Normalizer:
    """Phone normaliser, see :class:`PhoneNormalizer`."""
    return PhoneNormalizer(plus=plus)


# --------------------------------------------------------------------------------------------- names, places


def letters_name(value: object, region: str | None) -> str:
    """Meta FN/LN/CT: lowercase letters of any script only (NFC); no digits, punctuation or whitespace."""
    result = letters_only(_text(value))
    if not result:
        raise InvalidValue("contains no letters")
    return result


def google_name(value: object, region: str | None) -> str:
    """Google given/family name (``given_name``/``family_name``, ``hashed_first_name``/``hashed_last_name``).

    Trimmed (by ``coerce``) and lowercased, nothing else: punctuation, accents and inner spacing are kept,
    as Google's reference ``Formatter`` (google-ads-datamanager-util) does for both names. We add NFC, so
    that a decomposed ``José`` (as some exports write it) hashes like the composed one users type.
    Prefixes and suffixes (``Mrs.``, ``Jr.``) are not removed: the formatting guide asks not to *include*
    them, and a heuristic that drops words from a name would also change real names.
    """
    result = nfc_lower(_text(value))
    if not result:
        raise InvalidValue("empty name")
    return result


def meta_state(value: object, region: str | None) -> str:
    """Meta ST: US → 2-letter code, lowercase (``California``/``CA`` → ``ca``); elsewhere letters only."""
    text = _text(value)
    if region == "US":
        code = us_state_code(text)
        if code is None:
            raise InvalidValue("not a US state name or code")
        return code.lower()
    return letters_name(text, region)


def make_country(*, upper: bool) -> Normalizer:
    """ISO 3166-1 alpha-2 country, from a code, alpha-3, numeric code or English name."""

    def normalize_country_field(value: object, region: str | None) -> str:
        code = normalize_country(_text(value))
        if code is None:
            raise InvalidValue("not a recognised country")
        return code if upper else code.lower()

    return normalize_country_field


# --------------------------------------------------------------------------------------------- zip

_US_ZIP_RE = re.compile(r"(\d{5})(?:[-\s]?\d{4})?")
_US_ZIP4_RE = re.compile(r"(\d{5})[-\s]?\d{4}")
# Outward code (area + district), then optionally the sector digit and the two unit letters.
_UK_POSTCODE_RE = re.compile(r"([A-Z]{1,2}\d[A-Z\d]?)(?:\s*(\d)([A-Z]{2})?)?")
_UK_FULL_POSTCODE_RE = re.compile(r"([A-Z]{1,2}\d[A-Z\d]?)\s*(\d)([A-Z]{2})")
_ZIP_STRIP_RE = re.compile(r"[\s\-]+")


def _us_zip5(text: str) -> str:
    match = _US_ZIP_RE.fullmatch(text)
    if match is not None:
        return match.group(1)
    if text.isdigit() and 3 <= len(text) < 5:
        return text.zfill(5)  # leading zeros lost by a spreadsheet or an integer column (02134 -> 2134)
    raise InvalidValue("not a US ZIP code")


def meta_zip(value: object, region: str | None) -> str:
    """Meta ZIP: lowercase, no spaces. US: first 5 digits. UK: area+district+sector (``SW1A 1AA``→``sw1a1``).

    Without a region, a ZIP+4 (``94025-1234``) is read as US and a full UK postcode as UK. Elsewhere spaces
    and dashes are removed.
    """
    text = _text(value)
    if region == "US":
        return _us_zip5(text)
    upper = text.upper()
    if region in _UK_REGIONS:
        match = _UK_POSTCODE_RE.fullmatch(upper)
        if match is None:
            raise InvalidValue("not a UK postcode")
        return (match.group(1) + (match.group(2) or "")).lower()
    if region is None:
        match = _US_ZIP4_RE.fullmatch(text)
        if match is not None:
            return match.group(1)
        match = _UK_FULL_POSTCODE_RE.fullmatch(upper)
        if match is not None:
            return (match.group(1) + match.group(2)).lower()
    result = _ZIP_STRIP_RE.sub("", text).lower()
    if not result:
        raise InvalidValue("empty postal code")
    return result


_US_ZIP_OR_ZIP4_RE = re.compile(r"\d{5}(?:[- ]?\d{4})?", re.ASCII)


def google_postal_code(value: object, region: str | None) -> str:
    """Google ``postal_code`` (sent unhashed): the trimmed value as given, as Google's ``Formatter`` sends it.

    For the US (row or default country) it must be 5 digits, or 5 digits and the 4-digit extension (kept:
    Google's formatting guide says the extension "may improve your match rate"); 3 or 4 digits are a ZIP
    code that lost its leading zeros in a spreadsheet or an integer column and get them back.
    """
    text = _text(value)
    if region == "US":
        if text.isascii() and text.isdigit() and 3 <= len(text) < 5:
            return text.zfill(5)
        if _US_ZIP_OR_ZIP4_RE.fullmatch(text) is None:
            raise InvalidValue("not a US ZIP code")
    return text


# --------------------------------------------------------------------------------------------- consent

_CONSENT = {
    **dict.fromkeys(("granted", "true", "t", "yes", "y", "1"), "GRANTED"),
    **dict.fromkeys(("denied", "false", "f", "no", "n", "0"), "DENIED"),
    **dict.fromkeys(("unspecified", "unknown"), "UNSPECIFIED"),
}


def consent_status(value: object, region: str | None) -> str:
    """A consent purpose of one person for Google (sent unhashed): ``GRANTED``, ``DENIED`` or
    ``UNSPECIFIED``, from yes/no, true/false, 1/0 or the status names (any case)."""
    if isinstance(value, bool | int | float):
        return "GRANTED" if value else "DENIED"
    result = _CONSENT.get(_text(value).strip().lower())
    if result is None:
        raise InvalidValue("consent must be granted/denied, yes/no, true/false or 1/0")
    return result


# --------------------------------------------------------------------------------------------- gender, dob

_GENDERS = {"m": "m", "male": "m", "f": "f", "female": "f"}


def meta_gender(value: object, region: str | None) -> str:
    """Meta GEN: ``m``/``f`` from m, male, f, female (any case). Anything else is invalid."""
    result = _GENDERS.get(_text(value).lower())
    if result is None:
        raise InvalidValue("gender must be one of m, male, f, female")
    return result


_ISO_DATE_RE = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})(?:[T ].*)?")
_COMPACT_DATE_RE = re.compile(r"(\d{4})(\d{2})(\d{2})")


def meta_date_of_birth(value: object, region: str | None) -> tuple[str, str, str]:
    """Meta DOBY/DOBM/DOBD from a ``date``/``datetime``, ``YYYY-MM-DD`` (time part ignored) or ``YYYYMMDD``.

    The year must be 1900..current year; the date must exist.
    """
    if isinstance(value, date):
        year, month, day = value.year, value.month, value.day
    else:
        text = _text(value)
        match = _ISO_DATE_RE.fullmatch(text) or _COMPACT_DATE_RE.fullmatch(text)
        if match is None:
            raise InvalidValue("date of birth must be YYYY-MM-DD or YYYYMMDD")
        year, month, day = (int(part) for part in match.groups())
        try:
            date(year, month, day)
        except ValueError:
            raise InvalidValue("date of birth is not a real calendar date") from None
    this_year = date.today().year
    if not 1900 <= year <= this_year:
        raise InvalidValue(f"birth year must be between 1900 and {this_year}")
    return f"{year:04d}", f"{month:02d}", f"{day:02d}"


# --------------------------------------------------------------------------------------------- ids

_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")


def make_madid(*, lower: bool) -> Normalizer:
    """Mobile advertising ID (IDFA/AAID): a UUID, returned in hyphenated 8-4-4-4-12 form.

    The all-zero ID (what devices report when ad tracking is limited) is invalid.

    :param lower: lowercase it (Meta, TikTok); otherwise keep the case as given (Google wants the raw ID).
    """

    def normalize_madid(value: object, region: str | None) -> str:
        text = _text(value)
        if _UUID_RE.fullmatch(text) is None:
            raise InvalidValue("not a mobile advertising ID (expected an IDFA/AAID UUID)")
        hex_digits = text.replace("-", "")
        if hex_digits.count("0") == 32:
            raise InvalidValue("all-zero mobile advertising ID (ad tracking limited)")
        h = hex_digits.lower() if lower else hex_digits
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    return normalize_madid


def external_id(value: object, region: str | None) -> str:
    """Advertiser's own customer ID: trimmed, otherwise unchanged (no case change)."""
    return _text(value)
