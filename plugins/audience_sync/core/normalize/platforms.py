"""One rules table per platform, all behind :class:`PlatformRules`.

To add a platform, build one more :class:`PlatformRules` from the normalisers in ``normalizers.py`` (add a
normaliser there only if no existing one fits), list it in :data:`RULES` (what ``audience-sync hash`` and
the normaliser's tests read) and hand it to the platform's registration (``core/platforms.py``), which is
what extraction reads.

Choices where the platforms' documents are ambiguous (see ``docs`` in each table and the package docstring):

- Meta ZIP for the UK: postcode *sector* (area + district + sector digit), ``SW1A 1AA`` → ``sw1a1``.
- Meta row validity: email, phone, MADID or external ID on its own, or first+last name together with
  ZIP, city+state, city+country, or date of birth.
- Google ``third_party_user_id`` and ``mobile_id``: sent unhashed (the proto names every hashed field
  ``hashed_*``); external ID trimmed only.
- Google address (first name, last name, country, ZIP) is all-or-nothing: a partial address is blanked.
- Google names: Google's ``Formatter`` (trim, lowercase) over the field docstrings that differ from it
  (v26 ``hashed_last_name`` and the Data Manager ``AddressInfo`` say "no punctuation", v26
  ``hashed_first_name`` says extra inner spaces are removed); the package docstring says why.
- TikTok email: ``+suffix`` removed for every domain, dots kept.
- File drop (a hand-off to a third party whose own rules are unknown): a generic rule set of the rules the
  platforms agree on, every value SHA-256 (the files hold hashes only): e-mail trimmed and lowercased (as
  Meta, no provider-specific rewriting), phone E.164 with ``+`` (the ITU form, as Google), MADID lowercase,
  external ID trimmed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from audience_sync.core.normalize import normalizers as n
from audience_sync.core.normalize.values import sha256_hex

IDENTIFIER_TYPES: tuple[str, ...] = (
    "email",
    "phone",
    "first_name",
    "last_name",
    "city",
    "state",
    "zip",
    "country",
    "gender",
    "date_of_birth",
    "madid",
    "external_id",
)

#: per-row consent a platform may take besides identifiers (Google's consent purposes): they change no
#: row's match, travel unhashed with its identifiers, and are mapped by a campaign's ``consent:``
CONSENT_TYPES: tuple[str, ...] = ("ad_user_data", "ad_personalization")
#: everything a rules table may name
FIELD_TYPES: tuple[str, ...] = IDENTIFIER_TYPES + CONSENT_TYPES

Applied = tuple[tuple[str, ...], tuple[str, ...]]  # (normalised parts, sent parts), aligned to FieldRule.keys


@dataclass(frozen=True)
class FieldRule:
    """How one identifier type becomes one or more platform keys.

    :param keys: platform key names this identifier fills, in order (Meta date of birth → DOBY, DOBM, DOBD).
    :param normalize: the normaliser (``fn(value, region)``), see ``normalizers.py``.
    :param hashed: send the SHA-256 hex of the normalised value (else the normalised value itself).
    :param cached: memoise normalise+hash; worth it for low-cardinality fields (names, city, country, ...).
    """

    keys: tuple[str, ...]
    normalize: n.Normalizer
    hashed: bool = True
    cached: bool = False
    apply: Callable[[object, str | None], Applied] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        normalize, hashed = self.normalize, self.hashed

        def apply(value: object, region: str | None) -> Applied:
            result = normalize(value, region)
            parts = result if isinstance(result, tuple) else (result,)
            return parts, (tuple(sha256_hex(part) for part in parts) if hashed else parts)

        object.__setattr__(self, "apply", lru_cache(maxsize=65536)(apply) if self.cached else apply)


@dataclass(frozen=True)
class PlatformRules:
    """Everything that differs between platforms, as data.

    :param name: platform id used in campaign files (``meta``, ``google_ads``, ``tiktok``).
    :param fields: identifier type → rule, in the platform's key order (this order is the row schema order).
    :param standalone: identifier types that make a row matchable on their own.
    :param combos: alternative sets of identifier types that together make a row matchable.
    :param all_or_nothing: groups of identifier types the platform only accepts complete (Google's address);
        when a row has only part of a group, that part is blanked (not an error).
    """

    name: str
    fields: Mapping[str, FieldRule]
    standalone: frozenset[str]
    combos: tuple[frozenset[str], ...] = ()
    all_or_nothing: tuple[frozenset[str], ...] = ()

    def __post_init__(self) -> None:
        unknown = set(self.fields) - set(FIELD_TYPES)
        if unknown:
            raise ValueError(f"platform {self.name!r}: unknown identifier types {sorted(unknown)}")

    def rule(self, identifier: str) -> FieldRule:
        """The rule for ``identifier``; :class:`ValueError` if unknown or unsupported on this platform."""
        rule = self.fields.get(identifier)
        if rule is None:
            if identifier not in FIELD_TYPES:
                raise ValueError(
                    f"unknown identifier type {identifier!r}; expected one of {', '.join(FIELD_TYPES)}"
                )
            raise ValueError(
                f"identifier type {identifier!r} is not supported by platform {self.name!r}; "
                f"supported: {', '.join(self.fields)}"
            )
        return rule


META = PlatformRules(
    name="meta",
    # Meta multi-key schema. MADID and EXTERN_ID are sent unhashed; everything else SHA-256.
    fields={
        "email": FieldRule(
            ("EMAIL",),
            n.make_email(remove_inner_whitespace=False, gmail_canonical=False, drop_plus_suffix=False),
        ),
        "phone": FieldRule(("PHONE",), n.make_phone(plus=False)),
        "first_name": FieldRule(("FN",), n.letters_name, cached=True),
        "last_name": FieldRule(("LN",), n.letters_name, cached=True),
        "city": FieldRule(("CT",), n.letters_name, cached=True),
        "state": FieldRule(("ST",), n.meta_state, cached=True),
        "zip": FieldRule(("ZIP",), n.meta_zip, cached=True),
        "country": FieldRule(("COUNTRY",), n.make_country(upper=False), cached=True),
        "gender": FieldRule(("GEN",), n.meta_gender, cached=True),
        "date_of_birth": FieldRule(("DOBY", "DOBM", "DOBD"), n.meta_date_of_birth, cached=True),
        "madid": FieldRule(("MADID",), n.make_madid(lower=True), hashed=False),
        "external_id": FieldRule(("EXTERN_ID",), n.external_id, hashed=False),
    },
    standalone=frozenset({"email", "phone", "madid", "external_id"}),
    combos=(
        frozenset({"first_name", "last_name", "zip"}),
        frozenset({"first_name", "last_name", "city", "state"}),
        frozenset({"first_name", "last_name", "city", "country"}),
        frozenset({"first_name", "last_name", "date_of_birth"}),
    ),
)

# Google: one rule per identifier for both APIs. They feed the same Customer Match lists (Google's upgrade
# guide maps an Ads API UserList onto its Data Manager equivalent), so a member must hash alike through
# either. The rules are Google's reference Formatter's (google-ads-datamanager-util, checked value for value
# in tests/unit/test_google_formatting.py), which also fits the Ads API's Customer Match page ("trim leading
# and trailing whitespace and lowercase"); see the package docstring for the sources and where we go further.
_GOOGLE_EMAIL = n.make_email(remove_inner_whitespace=False, gmail_canonical=True, drop_plus_suffix=False)
_GOOGLE_PHONE = n.make_phone(plus=True)
_GOOGLE_COUNTRY = n.make_country(upper=True)

GOOGLE_ADS = PlatformRules(
    name="google_ads",
    # Keys are the v26 UserIdentifier / OfflineUserAddressInfo field names.
    fields={
        "email": FieldRule(("hashed_email",), _GOOGLE_EMAIL),
        "phone": FieldRule(("hashed_phone_number",), _GOOGLE_PHONE),
        "first_name": FieldRule(("hashed_first_name",), n.google_name, cached=True),
        "last_name": FieldRule(("hashed_last_name",), n.google_name, cached=True),
        "country": FieldRule(("country_code",), _GOOGLE_COUNTRY, hashed=False, cached=True),
        "zip": FieldRule(("postal_code",), n.google_postal_code, hashed=False, cached=True),
        "madid": FieldRule(("mobile_id",), n.make_madid(lower=False), hashed=False),
        "external_id": FieldRule(("third_party_user_id",), n.external_id, hashed=False),
    },
    standalone=frozenset({"email", "phone", "madid", "external_id"}),
    combos=(frozenset({"first_name", "last_name", "country", "zip"}),),
    all_or_nothing=(frozenset({"first_name", "last_name", "country", "zip"}),),
)

GOOGLE_DATAMANAGER = PlatformRules(
    name="google_datamanager",
    # Keys are the Data Manager v1 UserIdentifier / AddressInfo field names. The same rules as google_ads.
    fields={
        "email": FieldRule(("email_address",), _GOOGLE_EMAIL),
        "phone": FieldRule(("phone_number",), _GOOGLE_PHONE),
        "first_name": FieldRule(("given_name",), n.google_name, cached=True),
        "last_name": FieldRule(("family_name",), n.google_name, cached=True),
        "country": FieldRule(("region_code",), _GOOGLE_COUNTRY, hashed=False, cached=True),
        "zip": FieldRule(("postal_code",), n.google_postal_code, hashed=False, cached=True),
        # per-row consent (Data Manager's AudienceMember.consent, which overrides the request's)
        "ad_user_data": FieldRule(("ad_user_data",), n.consent_status, hashed=False, cached=True),
        "ad_personalization": FieldRule(("ad_personalization",), n.consent_status, hashed=False, cached=True),
    },
    standalone=frozenset({"email", "phone"}),
    combos=(frozenset({"first_name", "last_name", "country", "zip"}),),
    all_or_nothing=(frozenset({"first_name", "last_name", "country", "zip"}),),
)

TIKTOK = PlatformRules(
    name="tiktok",
    # Keys are the customer-file / calculate_type names.
    fields={
        "email": FieldRule(
            ("EMAIL_SHA256",),
            n.make_email(remove_inner_whitespace=True, gmail_canonical=False, drop_plus_suffix=True),
        ),
        "phone": FieldRule(("PHONE_SHA256",), n.make_phone(plus=False)),
        "madid": FieldRule(("MAID_SHA256",), n.make_madid(lower=True)),
    },
    standalone=frozenset({"email", "phone", "madid"}),
)

FILE_DROP = PlatformRules(
    name="file_drop",
    # Keys are the CSV column names of the hand-off files; every one a SHA-256 (the files hold hashes only).
    fields={
        "email": FieldRule(("email_sha256",), META.fields["email"].normalize),
        "phone": FieldRule(("phone_sha256",), _GOOGLE_PHONE),
        "madid": FieldRule(("madid_sha256",), n.make_madid(lower=True)),
        "external_id": FieldRule(("external_id_sha256",), n.external_id),
    },
    standalone=frozenset({"email", "phone", "madid", "external_id"}),
)

RULES: Mapping[str, PlatformRules] = {
    rules.name: rules for rules in (META, GOOGLE_ADS, GOOGLE_DATAMANAGER, TIKTOK, FILE_DROP)
}
PLATFORMS: tuple[str, ...] = tuple(RULES)


def get_rules(platform: str) -> PlatformRules:
    """The rules table for ``platform``; :class:`ValueError` if unknown."""
    rules = RULES.get(platform)
    if rules is None:
        raise ValueError(f"unknown platform {platform!r}; expected one of {', '.join(PLATFORMS)}")
    return rules
