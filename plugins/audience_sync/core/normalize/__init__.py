"""Per-platform normalisation and SHA-256 hashing of customer identifiers. Pure: no Airflow, no I/O.

Layout:

- ``values.py``: coercion of raw cells (None/NaN/pandas NA → missing, integral floats → digits), hashing,
  country and US-state lookups (cached).
- ``normalizers.py``: one normaliser per identifier type, parameterised where platforms differ.
- ``phones.py``: phone parsing (``rphonenumbers`` when it passes a self-check, else ``phonenumbers``),
  memoised.
- ``platforms.py``: one :class:`PlatformRules` table per platform (keys, hashed or not, matchability).
- ``api.py``: :func:`normalize_field` for one value, :class:`RowHasher` for whole rows.

Rules per platform (sources: ``meta_tiktok.md`` §1.5/§2.5, ``google_ads.md`` §5 in the shared references):

=============  ===============================  ===============================  ==========================
identifier     meta (key, SHA-256 unless noted)  google_ads (field)               tiktok
=============  ===============================  ===============================  ==========================
email          EMAIL: trim, lowercase, valid     hashed_email: + remove inner     EMAIL_SHA256: + remove
                                                 whitespace; gmail/googlemail:    spaces, drop ``+suffix``
                                                 drop dots and ``+suffix``        (any domain); dots kept
phone          PHONE: E.164 digits, no ``+``     hashed_phone_number: E.164       PHONE_SHA256: as Meta
                                                 with ``+``
first_name     FN: letters only, any script      hashed_first_name: lowercase,    -
                                                 extra spaces removed
last_name      LN: as FN                         hashed_last_name: + no           -
                                                 punctuation
city           CT: as FN                         -                                -
state          ST: US → 2-letter code; else      -                                -
               letters only
zip            ZIP: US 5 digits; UK sector       postal_code (unhashed): US 5     -
               ``sw1a1``; else no spaces/dashes  digits, UK ``SW1A 1AA``
country        COUNTRY: alpha-2 lowercase        country_code (unhashed): alpha-2 -
gender         GEN: m/f                          -                                -
date_of_birth  DOBY/DOBM/DOBD                    -                                -
madid          MADID (unhashed): lowercase UUID  mobile_id (unhashed): as given   MAID_SHA256: lowercase
external_id    EXTERN_ID (unhashed): trimmed     third_party_user_id (unhashed):  -
                                                 trimmed
=============  ===============================  ===============================  ==========================

Phones are parsed with libphonenumber (``phones.py``) using the row's country (else the default) as region,
and must pass ``is_valid_number``; without any region a number must carry its country code (``+``, ``00``
or bare digits).
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
    IDENTIFIER_TYPES,
    PLATFORMS,
    RULES,
    FieldRule,
    PlatformRules,
    get_rules,
)
from audience_sync.core.normalize.values import InvalidValue, normalize_country, sha256_hex

__all__ = [
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
