"""Public entry points: one field (:func:`normalize_field`) and one row (:class:`RowHasher`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from audience_sync.core.normalize.platforms import FIELD_TYPES, PlatformRules, get_rules
from audience_sync.core.normalize.values import InvalidValue, coerce, normalize_country

NO_IDENTIFIER = "no_identifier"


def reason_code(identifier: str) -> str:
    """Reason code for a present but invalid identifier, e.g. ``invalid_phone``."""
    return f"invalid_{identifier}"


@dataclass(frozen=True)
class FieldResult:
    """The outcome of normalising one value for one platform.

    :param platform: platform id.
    :param field: identifier type.
    :param normalized: the normalised value; a dict for multi-key fields (Meta date of birth →
        ``{"DOBY": ..., "DOBM": ..., "DOBD": ...}``); ``None`` when missing or invalid.
    :param sent: exactly what goes to the platform: the SHA-256 lowercase hex of ``normalized``, or
        ``normalized`` itself for fields the platform takes unhashed (same shape as ``normalized``).
    :param error: ``None``, or a short reason the value was rejected. Never contains the value.
    """

    platform: str
    field: str
    normalized: str | dict[str, str] | None
    sent: str | dict[str, str] | None
    error: str | None

    def as_dict(self) -> dict[str, object]:
        """``{"platform", "field", "normalized", "sent", "error"}``, JSON-serialisable."""
        return {
            "platform": self.platform,
            "field": self.field,
            "normalized": self.normalized,
            "sent": self.sent,
            "error": self.error,
        }


def supported_fields(platform: str) -> tuple[str, ...]:
    """Identifier types ``platform`` uses, in its key order. :class:`ValueError` for an unknown platform."""
    return tuple(get_rules(platform).fields)


def normalize_field(platform: str, field: str, value: object, *, country: str | None = None) -> FieldResult:
    """Normalise (and hash where the platform wants a hash) one identifier value.

    :param platform: ``meta``, ``google_ads`` or ``tiktok``.
    :param field: an identifier type the platform supports (see :func:`supported_fields`).
    :param value: the raw value: text, number, ``date``/``datetime``, ``None``/NaN/pandas NA (→ missing).
    :param country: region for national phone numbers and US/UK state and ZIP rules; anything
        :func:`normalize_country` accepts.
    :raises ValueError: unknown platform, unknown or unsupported field, or unrecognised ``country``.
    """
    rule = get_rules(platform).rule(field)
    region = None
    if country is not None:
        region = normalize_country(country)
        if region is None:
            raise ValueError("the country argument is not a recognised country code or name")
    coerced = coerce(value)
    if coerced is None:
        return FieldResult(platform, field, None, None, None)
    try:
        normalized, sent = rule.apply(coerced, region)
    except InvalidValue as exc:
        return FieldResult(platform, field, None, None, str(exc))
    if len(rule.keys) == 1:
        return FieldResult(platform, field, normalized[0], sent[0], None)
    return FieldResult(platform, field, dict(zip(rule.keys, normalized)), dict(zip(rule.keys, sent)), None)


@dataclass(frozen=True)
class RowResult:
    """One customer row, hashed for one platform.

    :param values: aligned to :attr:`RowHasher.schema`; ``""`` where missing or invalid.
    :param valid: the row has at least one matchable identifier (see the platform's ``standalone`` and
        ``combos``); invalid rows should be skipped and counted, not sent.
    :param reason: when not valid, one reason code: ``invalid_<field>`` for the first invalid field that could
        have made the row matchable, else ``no_identifier``. ``None`` when valid.
    :param field_errors: ``invalid_<field>`` for every present but invalid field, in schema order, also on
        valid rows.
    """

    values: tuple[str, ...]
    valid: bool
    reason: str | None
    field_errors: tuple[str, ...]


class RowHasher:
    """Hash one customer row for one platform. Built once per (platform, campaign identifiers mapping).

    The row's own country column (the ``country`` identifier, if mapped) wins over ``default_country`` as the
    region for national phone numbers and for state/ZIP rules. It is used as the region even on platforms
    that do not take a country key (TikTok).

    :param platform: ``meta``, ``google_ads`` or ``tiktok``.
    :param identifiers: identifier type → source column name. Types the platform does not support are
        ignored; names that are not identifier types raise :class:`ValueError`.
    :param default_country: region when the row has no (valid) country; anything :func:`normalize_country`
        accepts.
    :param rules: the platform's rules table when it is not one of this package's (a registered
        platform's ``rules``, see :mod:`audience_sync.core.platforms`); default ``get_rules(platform)``.
    """

    def __init__(
        self,
        platform: str,
        identifiers: Mapping[str, str],
        default_country: str | None = None,
        *,
        rules: PlatformRules | None = None,
    ) -> None:
        rules = rules if rules is not None else get_rules(platform)
        unknown = sorted(set(identifiers) - set(FIELD_TYPES))
        if unknown:
            raise ValueError(f"unknown identifier types {unknown}; expected some of {', '.join(FIELD_TYPES)}")
        self.platform = platform
        self.default_country: str | None = None
        if default_country is not None:
            self.default_country = normalize_country(default_country)
            if self.default_country is None:
                raise ValueError("default_country is not a recognised country code or name")
        self._country_column = identifiers.get("country")

        plan = []
        schema: list[str] = []
        for identifier, rule in rules.fields.items():
            column = identifiers.get(identifier)
            if column is None:
                continue
            plan.append((identifier, column, rule.apply, len(schema), len(schema) + len(rule.keys)))
            schema.extend(rule.keys)
        self._plan = tuple(plan)
        self.fields: tuple[str, ...] = tuple(step[0] for step in plan)
        self.schema: tuple[str, ...] = tuple(schema)
        self._slots = {step[0]: (step[3], step[4]) for step in plan}

        mapped = set(self.fields)
        self._standalone = frozenset(rules.standalone & mapped)
        self._combos = tuple(combo for combo in rules.combos if combo <= mapped)
        relevant = set(self._standalone).union(*self._combos)
        self._relevant = frozenset(relevant)
        self._groups = tuple(group & mapped for group in rules.all_or_nothing if group & mapped)
        self._empty = ("",) * len(schema)

    def hash_row(self, row: Mapping[str, object]) -> RowResult:
        """Normalise and hash the mapped columns of ``row`` (missing columns count as missing values)."""
        region = self.default_country
        if self._country_column is not None:
            row_country = normalize_country(row.get(self._country_column))
            if row_country is not None:
                region = row_country

        values = list(self._empty)
        present: set[str] = set()
        errors: list[str] = []
        for identifier, column, apply, start, end in self._plan:
            value = coerce(row.get(column))
            if value is None:
                continue
            try:
                values[start:end] = apply(value, region)[1]
            except InvalidValue:
                errors.append(identifier)
                continue
            present.add(identifier)

        for group in self._groups:
            partial = group & present
            if partial and partial != group:
                for identifier in partial:
                    start, end = self._slots[identifier]
                    values[start:end] = self._empty[start:end]
                present -= partial

        valid = not present.isdisjoint(self._standalone) or any(combo <= present for combo in self._combos)
        reason = None
        if not valid:
            reason = next((reason_code(i) for i in errors if i in self._relevant), NO_IDENTIFIER)
        return RowResult(tuple(values), valid, reason, tuple(reason_code(i) for i in errors))
