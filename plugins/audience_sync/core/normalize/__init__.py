"""Per-platform normalisation and SHA-256 hashing of customer identifiers. Pure: no Airflow, no I/O.

Layout:

- ``values.py``: coercion of raw cells (None/NaN/pandas NA → missing, integral floats → digits), hashing,
  country and US-state lookups (cached).
- ``normalizers.py``: one normaliser per identifier type, parameterised where platforms differ.
- ``phones.py``: phone parsing (``rphonenumbers`` when it passes a self-check, else ``phonenumbers``),
  memoised.
- ``platforms.py``: one :class:`PlatformRules` table per platform (keys, hashed or not, matchability).
- ``api.py``: :func:`normalize_field` for one value, :class:`RowHasher` for whole rows.

Rules per platform (sources: ``meta_tiktok.md`` §1.5/§2.5, ``google_ads.md`` §5 in the shared references;
for Google, Google's reference ``Formatter`` too, see below):

=============  ===============================  ===============================  ==========================
identifier     meta (key, SHA-256 unless noted)  google_ads / google_datamanager  tiktok
                                                 (Ads field / Data Manager field)
=============  ===============================  ===============================  ==========================
email          EMAIL: trim, lowercase, valid;    hashed_email / email_address:    EMAIL_SHA256: + remove
               inner whitespace is invalid       as Meta; gmail/googlemail: drop  spaces, drop ``+suffix``
                                                 dots and ``+suffix``             (any domain); dots kept
phone          PHONE: E.164 digits, no ``+``     hashed_phone_number /            PHONE_SHA256: as Meta
                                                 phone_number: E.164 with ``+``
first_name     FN: letters only, any script      hashed_first_name / given_name:  -
                                                 trim, lowercase (NFC); spaces
                                                 and punctuation kept
last_name      LN: as FN                         hashed_last_name / family_name:  -
                                                 as first_name
city           CT: as FN                         -                                -
state          ST: US → 2-letter code; else      -                                -
               letters only
zip            ZIP: US 5 digits; UK sector       postal_code (unhashed): as       -
               ``sw1a1``; else no spaces/dashes  given; US 5 or 5+4 digits
country        COUNTRY: alpha-2 lowercase        country_code / region_code       -
                                                 (unhashed): alpha-2
gender         GEN: m/f                          -                                -
date_of_birth  DOBY/DOBM/DOBD                    -                                -
madid          MADID (unhashed): lowercase UUID  mobile_id (unhashed, Ads only):  MAID_SHA256: lowercase
                                                 as given
external_id    EXTERN_ID (unhashed): trimmed     third_party_user_id (unhashed,   -
                                                 Ads only): trimmed
=============  ===============================  ===============================  ==========================

``file_drop`` (hand-off files for a third party) takes the standalone identifiers only, each SHA-256, the
files holding hashes only: ``email_sha256`` as Meta's EMAIL, ``phone_sha256`` as Google's (E.164 with ``+``),
``madid_sha256`` lowercase, ``external_id_sha256`` trimmed.

Per-person consent (``CONSENT_TYPES``: ``ad_user_data``, ``ad_personalization``) is taken by
google_datamanager only, unhashed: ``GRANTED`` / ``DENIED`` / ``UNSPECIFIED`` from yes/no, true/false, 1/0
or the status names; it changes no row's match (a campaign maps it with ``consent:``, not ``identifiers:``).

Phones are parsed with libphonenumber (``phones.py``) using the row's country (else the default) as region,
and must pass ``is_valid_number``; without any region a number must carry its country code (``+``, ``00``
or bare digits).

Google (both platforms share one table: they feed the same Customer Match lists). Google publishes a
reference ``Formatter`` (``google-ads-datamanager-util``) for its formatting guide; where it formats a value
(e-mail, phone given with its country code, given and family name, region code, postal code) we send what
it sends and never what it refuses, value for value over a generated corpus
(``tests/unit/test_google_formatting.py``), except for these, each listed there with its reason:

- we go further: national phone numbers are read with the row's country; a phone must be a valid number
  (libphonenumber), and its E.164 form drops a ``00`` prefix, a ``(0)`` trunk prefix and an extension, which
  the Formatter keeps as digits; country names, alpha-3 and numeric codes are mapped to alpha-2 (pycountry,
  English names); a US ZIP of 3-4 digits gets its lost leading zeros back;
- we are stricter: an e-mail needs a dotted domain and at most 254 characters; a region code must be one
  ISO 3166-1 assigns (``UK`` becomes ``GB``); a US postal code must be 5 or 5+4 digits;
- we clean more: zero-width characters and a BOM at a cell's edges are trimmed, and names are NFC.

Where Google's documents disagree, the Formatter decided: e-mails with inner whitespace are refused (the
guide says "trim ... intermediate whitespace"; the Formatter refuses them and removing the space would
guess an address), and names keep punctuation and inner spaces (the v26 docstrings say first names lose
extra spaces and last names punctuation, the Data Manager proto says "no punctuation" for both; the
Formatter, the guide and the Ads API's Customer Match page only trim and lowercase). Prefixes and suffixes
(``Mrs.``, ``Jr.``) are not removed: the guide asks not to include them, and the Formatter keeps them.
The ambiguous choices are listed in ``platforms.py``.
"""

from __future__ import annotations

from audience_sync.core.normalize.api import (
    NO_IDENTIFIER,
    FieldResult,
    RowHasher,
    RowResult,
    normalize_field,
    reason_code,
    supported_fields,
)
from audience_sync.core.normalize.platforms import (
    CONSENT_TYPES,
    IDENTIFIER_TYPES,
    PLATFORMS,
    RULES,
    FieldRule,
    PlatformRules,
    get_rules,
)
from audience_sync.core.normalize.values import InvalidValue, normalize_country, sha256_hex

__all__ = [
    "CONSENT_TYPES",
    "IDENTIFIER_TYPES",
    "NO_IDENTIFIER",
    "PLATFORMS",
    "RULES",
    "FieldResult",
    "FieldRule",
    "InvalidValue",
    "PlatformRules",
    "RowHasher",
    "RowResult",
    "get_rules",
    "normalize_country",
    "normalize_field",
    "reason_code",
    "sha256_hex",
    "supported_fields",
]
