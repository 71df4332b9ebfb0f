"""Hash a chunk of customer rows column by column, for several platforms at once (extraction's hot loop).

:class:`ChunkHasher` gives, row for row, exactly what :meth:`RowHasher.hash_row` gives (the tests hold
the two equal on random rows), but works on columns: every cell is coerced once for all platforms, the
row's region is looked up once, and each identifier is normalised for every platform while its value is
at hand, so a phone number is parsed once per row however many platforms take it (the phone parser
memoises its last numbers, see ``phones.py``). Per-row bookkeeping is a bit mask per platform instead
of sets and result objects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from audience_sync.core.normalize.api import NO_IDENTIFIER, RowHasher, reason_code
from audience_sync.core.normalize.platforms import PlatformRules
from audience_sync.core.normalize.values import InvalidValue, coerce, normalize_country


@dataclass
class PlatformColumns:
    """One platform's result for a chunk of ``n`` rows.

    :param schema: the platform keys, as :attr:`RowHasher.schema`.
    :param values: one list per schema key, ``n`` long: what is sent (hash or unhashed value), ``""``
        where missing or invalid.
    :param valid: per row, whether the platform can match it.
    :param reasons: row -> reason code, for invalid rows only.
    :param field_errors: row -> ``invalid_<field>`` codes in schema order, for rows with any.
    """

    schema: tuple[str, ...]
    values: list[list[str]]
    valid: list[bool]
    reasons: dict[int, str]
    field_errors: dict[int, tuple[str, ...]]


class _PlatformState:
    """Masks of one platform over a chunk, and how to read them."""

    def __init__(self, hasher: RowHasher, n: int) -> None:
        self.hasher = hasher
        order = [step[0] for step in hasher._plan]
        self.bits = {identifier: 1 << i for i, identifier in enumerate(order)}
        self.order = order
        self.values: list[list[str]] = [[""] * n for _ in hasher.schema]
        self.present = [0] * n
        self.errors: dict[int, int] = {}  # row -> bit mask of invalid identifiers

    def mask(self, identifiers: object) -> int:
        return sum(self.bits[i] for i in identifiers)  # type: ignore[attr-defined]


class ChunkHasher:
    """Normalise and hash chunks of rows for several platforms (one :class:`RowHasher` configuration each).

    :param identifiers: identifier type -> source column, as for :class:`RowHasher`.
    :param platforms: platform name -> its rules table.
    :param default_country: region when a row has no (valid) country.
    """

    def __init__(
        self,
        identifiers: Mapping[str, str],
        platforms: Mapping[str, PlatformRules],
        default_country: str | None = None,
    ) -> None:
        self.hashers = {
            name: RowHasher(name, identifiers, default_country, rules=rules)
            for name, rules in platforms.items()
        }
        self.default_country = next(iter(self.hashers.values())).default_country if self.hashers else None
        self.country_column = identifiers.get("country")
        # the source columns read, each coerced once per chunk for every platform
        self.columns = tuple(dict.fromkeys(step[1] for h in self.hashers.values() for step in h._plan))

    def hash_chunk(self, columns: Mapping[str, Sequence[object]], n: int) -> dict[str, PlatformColumns]:
        """Hash ``n`` rows given as columns (name -> values; a missing column is all missing values)."""
        coerced = {name: _coerced(columns.get(name), n) for name in self.columns}
        regions = self._regions(columns.get(self.country_column) if self.country_column else None, n)
        states = {name: _PlatformState(h, n) for name, h in self.hashers.items()}

        # identifier by identifier, every platform that takes it, row by row: a value is normalised for
        # each platform right after the other (the phone parser's memo hits for the second platform)
        targets: dict[str, list[tuple[Any, int, list[list[str]], list[int], dict[int, int]]]] = {}
        columns_of: dict[str, str] = {}
        for name, h in self.hashers.items():
            st = states[name]
            for identifier, column, apply, start, end in h._plan:
                columns_of[identifier] = column
                targets.setdefault(identifier, []).append(
                    (apply, st.bits[identifier], st.values[start:end], st.present, st.errors)
                )
        for identifier, slots in targets.items():
            col = coerced[columns_of[identifier]]
            for i, value in enumerate(col):
                if value is None:
                    continue
                region = regions[i]
                for apply, bit, outputs, present, errors in slots:
                    try:
                        sent = apply(value, region)[1]
                    except InvalidValue:
                        errors[i] = errors.get(i, 0) | bit
                        continue
                    for out, part in zip(outputs, sent):
                        out[i] = part
                    present[i] |= bit
        return {name: _finish(st, n) for name, st in states.items()}

    def _regions(self, raw: Sequence[object] | None, n: int) -> list[str | None]:
        default = self.default_country
        if raw is None:
            return [default] * n
        memo: dict[str, object] = {}
        out: list[str | None] = []
        for value in raw:
            if type(value) is not str:  # memo by text only: 1, 1.0 and True are equal keys
                out.append(normalize_country(value) or default)
                continue
            region = memo.get(value, _UNSEEN)
            if region is _UNSEEN:
                region = memo[value] = normalize_country(value) or default
            out.append(region)  # type: ignore[arg-type]
        return out


_UNSEEN = object()


def _coerced(values: Sequence[object] | None, n: int) -> list[object]:
    if values is None:
        return [None] * n
    return [coerce(v) for v in values]


def _finish(st: _PlatformState, n: int) -> PlatformColumns:
    """Apply all-or-nothing groups, decide validity, name reasons (as :meth:`RowHasher.hash_row`)."""
    h = st.hasher
    slots = {identifier: (start, end) for identifier, _c, _a, start, end in h._plan}
    standalone = st.mask(h._standalone)
    combos = [st.mask(c) for c in h._combos]
    relevant = st.mask(h._relevant)
    present, values = st.present, st.values
    for group in h._groups:
        gmask = st.mask(group)
        members = [(st.bits[i], slots[i]) for i in group]
        for i in range(n):
            partial = present[i] & gmask
            if partial and partial != gmask:
                for bit, (start, end) in members:
                    if partial & bit:
                        for j in range(start, end):
                            values[j][i] = ""
                present[i] &= ~gmask
    valid = [bool(p & standalone) or any(p & c == c for c in combos) for p in present]
    reasons: dict[int, str] = {}
    field_errors: dict[int, tuple[str, ...]] = {}
    for i, bits in st.errors.items():
        field_errors[i] = tuple(reason_code(x) for x in st.order if bits & st.bits[x])
    for i in range(n):
        if not valid[i]:
            bits = st.errors.get(i, 0) & relevant
            reasons[i] = next((reason_code(x) for x in st.order if bits & st.bits[x]), NO_IDENTIFIER)
    return PlatformColumns(h.schema, values, valid, reasons, field_errors)
