"""Hash a chunk of customer rows column by column, for several platforms at once (extraction's hot loop).

:class:`ChunkHasher` gives, row for row, exactly what :meth:`RowHasher.hash_row` gives (the tests hold
the two equal on random rows, Python lists and Arrow arrays), but works on columns, with one kernel per
kind of rule:

- low-cardinality fields (``FieldRule.cached``: names, country, ...): coerced, normalised and hashed once
  per distinct (text, region), the distinct pairs found in Arrow for a text column;
- e-mails without local-part rewrites (Meta's rule): trimmed, lowercased and validated in Arrow for
  ASCII text, where each step is exactly Python's; other text goes through the rule row by row;
- phones: parsed once per row for every platform that takes them (``phones.parts_column``), then
  formatted and hashed per platform;
- anything else: the rule's normaliser row by row, hashing inlined (``FieldRule.apply``'s steps).

Per-row bookkeeping is a bit mask per platform instead of sets and result objects.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from audience_sync.core.normalize.api import NO_IDENTIFIER, RowHasher, reason_code
from audience_sync.core.normalize.normalizers import EMAIL_MAX_LENGTH, EmailNormalizer, PhoneNormalizer
from audience_sync.core.normalize.phones import parts_column
from audience_sync.core.normalize.platforms import FieldRule, PlatformRules
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
    """One platform's values and masks over a chunk: bit ``i`` of a row's mask is its ``i``-th identifier."""

    def __init__(self, hasher: RowHasher, n: int) -> None:
        self.hasher = hasher
        order = [step[0] for step in hasher._plan]
        self.bits = {identifier: 1 << i for i, identifier in enumerate(order)}
        self.order = order
        self.values: list[list[str]] = [[""] * n for _ in hasher.schema]
        self.present = [0] * n
        self.errors: dict[int, int] = {}  # row -> bit mask of invalid identifiers

    def mask(self, identifiers: Iterable[str]) -> int:
        return sum(self.bits[i] for i in identifiers)

    def record(self, identifier: str, start: int, end: int, results: list[Any]) -> None:
        """Store one identifier's results (sent parts, :data:`_MISSING` or :data:`_INVALID` per row)."""
        if end - start == 1:
            self.values[start] = [x[0] if type(x) is tuple else "" for x in results]
        else:
            for j in range(end - start):
                self.values[start + j] = [x[j] if type(x) is tuple else "" for x in results]
        bit = self.bits[identifier]
        self.present = [
            p | bit if type(x) is tuple else p for p, x in zip(self.present, results, strict=True)
        ]
        for i in [i for i, x in enumerate(results) if x is _INVALID]:
            self.errors[i] = self.errors.get(i, 0) | bit


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
        # identifier -> (column, [(platform, rule, start, end)]): who takes each identifier, and where
        self.targets: dict[str, tuple[str, list[tuple[str, FieldRule, int, int]]]] = {}
        for name, h in self.hashers.items():
            for identifier, column, _apply, start, end in h._plan:
                rule = platforms[name].fields[identifier]
                self.targets.setdefault(identifier, (column, []))[1].append((name, rule, start, end))

    def hash_chunk(
        self, columns: Mapping[str, Sequence[object] | pa.Array | pa.ChunkedArray], n: int
    ) -> dict[str, PlatformColumns]:
        """Hash ``n`` rows given as columns (name -> values; a missing column is all missing values).

        A column may be an Arrow array: a text one is then read in Arrow where a rule allows (e-mails,
        low-cardinality fields), without turning it into Python objects first.
        """
        listed: dict[str, list[object]] = {}

        def values_of(name: str) -> list[object]:
            col = columns[name]
            if isinstance(col, list):
                return col
            if name not in listed:
                listed[name] = col.to_pylist() if isinstance(col, pa.Array | pa.ChunkedArray) else list(col)
            return listed[name]

        country = self.country_column
        regions = self._regions(
            values_of(country) if country and columns.get(country) is not None else None, n
        )
        places: tuple[np.ndarray, list[str | None]] | None = None
        states = {name: _PlatformState(h, n) for name, h in self.hashers.items()}
        for identifier, (column, targets) in self.targets.items():
            if columns.get(column) is None:
                continue  # all missing: nothing to record
            text = _text_array(columns[column])
            coerced: list[object] | None = None
            phones: list[Any] | None = None
            for platform, rule, start, end in targets:
                if rule.cached and text is not None:
                    places = _region_codes(regions) if places is None else places
                    results = _distinct_results(rule, text, places)
                elif rule.cached:
                    results = _cached_results(rule, values_of(column), regions)
                elif text is not None and _vector_email(rule):
                    results = _email_results(rule, text, values_of(column), regions)
                elif isinstance(rule.normalize, PhoneNormalizer):
                    if phones is None:  # parsed once for every platform that takes the phone
                        coerced = _coerced(values_of(column)) if coerced is None else coerced
                        phones = parts_column([_as_text(v) for v in coerced], regions)
                    results = _phone_results(rule, rule.normalize, phones)
                else:
                    coerced = _coerced(values_of(column)) if coerced is None else coerced
                    results = _direct_results(rule, coerced, regions)
                states[platform].record(identifier, start, end, results)
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
#: per-row results besides the sent parts (a tuple): no value, or a value the platform cannot use
_MISSING = object()
_INVALID = object()


def _attempt(apply: Callable[[object, str | None], Any], value: object, region: str | None) -> Any:
    try:
        return apply(value, region)[1]
    except InvalidValue:
        return _INVALID


def _text_array(column: object) -> pa.Array | None:
    """An Arrow text column as one string array; None for anything else (Python values, numbers)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not isinstance(column, pa.Array):
        return None
    if pa.types.is_string(column.type):
        return column
    return column.cast(pa.string()) if pa.types.is_large_string(column.type) else None


def _region_codes(regions: list[str | None]) -> tuple[np.ndarray, list[str | None]]:
    """Per row the index of its region among the distinct regions, and those regions."""
    codes: dict[str | None, int] = {}
    places = np.fromiter((codes.setdefault(r, len(codes)) for r in regions), np.int64, len(regions))
    return places, list(codes)


def _codes(values: pa.Array) -> tuple[np.ndarray, list[Any]]:
    """Per row the index of its value among the distinct values (-1 for null), and those values."""
    encoded = pc.dictionary_encode(values)
    indices = encoded.indices  # int32; read from its buffer (a fill value would be an Arrow scalar,
    # whose construction imports pandas: ~0.5 s in every worker process)
    codes = np.frombuffer(indices.buffers()[1], np.int32, len(indices), indices.offset * 4).astype(np.int64)
    if indices.null_count:
        codes[pc.is_null(indices).to_numpy(zero_copy_only=False)] = -1
    return codes, encoded.dictionary.to_pylist()


def _distinct_results(
    rule: FieldRule, values: pa.Array, places: tuple[np.ndarray, list[str | None]]
) -> list[Any]:
    """:func:`_cached_results` of an Arrow text column: the distinct (text, region) pairs, each coerced,
    normalised and hashed once, then spread back to the rows (``places``: :func:`_region_codes`)."""
    texts, distinct_texts = _codes(values)
    regions, distinct_regions = places
    width = len(distinct_regions)
    pairs, rows = np.unique(texts.astype(np.int64) * width + regions, return_inverse=True)
    apply = rule.apply
    table: list[Any] = []
    for pair in pairs.tolist():
        text, place = divmod(pair, width)
        c = coerce(distinct_texts[text]) if text >= 0 else None
        table.append(_MISSING if c is None else _attempt(apply, c, distinct_regions[place]))
    return [table[i] for i in rows.reshape(-1).tolist()]


def _cached_results(rule: FieldRule, raw: Sequence[object], regions: list[str | None]) -> list[Any]:
    """A low-cardinality rule over a column of Python values: coerced, normalised and hashed once per
    distinct (text, region); other cells (numbers, dates: 1, 1.0 and True are equal keys) one by one."""
    apply = rule.apply
    table: dict[tuple[str, str | None], Any] = {}
    out: list[Any] = []
    for v, r in zip(raw, regions, strict=True):
        if type(v) is str:
            result = table.get((v, r), _UNSEEN)
            if result is _UNSEEN:
                c = coerce(v)
                result = table[v, r] = _MISSING if c is None else _attempt(apply, c, r)
        else:
            c = coerce(v)
            result = _MISSING if c is None else _attempt(apply, c, r)
        out.append(result)
    return out


def _direct_results(rule: FieldRule, values: list[object], regions: list[str | None]) -> list[Any]:
    """A rule over a coerced column, row by row: ``rule.apply``'s steps inlined (normalise, then hash
    every part unless the rule sends it unhashed)."""
    normalize = rule.normalize
    hashed = rule.hashed
    sha = hashlib.sha256
    out: list[Any] = []
    append = out.append
    for v, r in zip(values, regions, strict=True):
        if v is None:
            append(_MISSING)
            continue
        try:
            result = normalize(v, r)
        except InvalidValue:
            append(_INVALID)
            continue
        if type(result) is str:
            append((sha(result.encode("utf-8")).hexdigest(),) if hashed else (result,))
        else:
            parts = result if isinstance(result, tuple) else (result,)
            append(tuple(sha(p.encode("utf-8")).hexdigest() for p in parts) if hashed else parts)
    return out


def _phone_results(rule: FieldRule, phone: PhoneNormalizer, parsed: list[Any]) -> list[Any]:
    """A phone rule over a parsed column (:func:`parts_column`: parts, the reason it is invalid, or None)."""
    sha = hashlib.sha256
    fmt = phone.format
    out: list[Any] = []
    append = out.append
    for p in parsed:
        if p is None:
            append(_MISSING)
        elif type(p) is str:
            append(_INVALID)
        else:
            text = fmt(*p)
            append((sha(text.encode("utf-8")).hexdigest(),) if rule.hashed else (text,))
    return out


# Python's whitespace (``str.isspace``) among ASCII characters, as an RE2 class body
_ASCII_SPACE = r"\t\n\x0b\x0c\r\x1c-\x1f "
_EDGE_SPACE_RE2 = f"^[{_ASCII_SPACE}]+|[{_ASCII_SPACE}]+$"
_INNER_SPACE_RE2 = f"[{_ASCII_SPACE}]+"
# normalizers._EMAIL_RE on ASCII text (where Python's \s is exactly the class above), anchored
_EMAIL_RE2 = f"^[^@{_ASCII_SPACE}]+@[^@{_ASCII_SPACE}.]+(?:\\.[^@{_ASCII_SPACE}.]+)+$"


def _vector_email(rule: FieldRule) -> bool:
    """Whether ``rule`` is an email rule :func:`_email_results` reproduces (no local-part rewrites)."""
    email = rule.normalize
    return isinstance(email, EmailNormalizer) and not (email.gmail_canonical or email.drop_plus_suffix)


def _email_results(
    rule: FieldRule, arr: pa.Array, raw: Sequence[object], regions: list[str | None]
) -> list[Any]:
    """An email rule without local-part rewrites over an Arrow text column (``raw``: its values), in
    Arrow for ASCII text: trim (``coerce``), lowercase, drop inner whitespace if the rule does, check
    the length and the pattern. On ASCII text each step is exactly the Python one (the tests hold the
    two equal); other cells go through the rule row by row."""
    email = rule.normalize
    assert isinstance(email, EmailNormalizer)  # noqa: S101 - checked by _vector_email
    trimmed = pc.replace_substring_regex(arr, _EDGE_SPACE_RE2, "")
    text = pc.ascii_lower(trimmed)
    if email.remove_inner_whitespace:
        text = pc.replace_substring_regex(text, _INNER_SPACE_RE2, "")
    # (no Arrow scalars here: building one imports pandas)
    matched = pc.match_substring_regex(text, _EMAIL_RE2).to_pylist()
    ascii_ = pc.string_is_ascii(arr).to_pylist()
    sha = hashlib.sha256
    hashed = rule.hashed
    out: list[Any] = []
    append = out.append
    for v, r, a, good, t in zip(raw, regions, ascii_, matched, text.to_pylist(), strict=True):
        if v is None or (a and not t):  # ASCII text is empty after trimming iff it is after both steps
            append(_MISSING)
        elif not a:
            c = coerce(v)
            append(_MISSING if c is None else _attempt(rule.apply, c, r))
        elif not good or len(t) > EMAIL_MAX_LENGTH:
            append(_INVALID)
        else:
            append((sha(t.encode("utf-8")).hexdigest(),) if hashed else (t,))
    return out


# zero-width characters and the BOM that ``coerce`` trims besides whitespace (all non-ASCII)
_EDGE_JUNK = frozenset("\u200b\u200c\u200d\u2060\ufeff")


def _coerced(values: Sequence[object]) -> list[object]:
    """``coerce`` of every cell; text (every cell of an Arrow string column) without a call per cell."""
    junk = _EDGE_JUNK
    return [
        (s if (s := v.strip()) and s[0] not in junk and s[-1] not in junk else coerce(s))
        if type(v) is str
        else coerce(v)
        for v in values
    ]


def _as_text(value: object) -> str | None:
    """A coerced cell as the text normalisers read (``None`` stays ``None``; a date is its ISO text)."""
    return value if value is None or type(value) is str else str(value)


def _finish(st: _PlatformState, n: int) -> PlatformColumns:
    """Apply all-or-nothing groups, decide validity, name reasons (as :meth:`RowHasher.hash_row`)."""
    h = st.hasher
    slots = {identifier: (start, end) for identifier, _c, _a, start, end in h._plan}
    present, values = st.present, st.values
    for group in h._groups:
        gmask = st.mask(group)
        members = [(st.bits[i], slots[i]) for i in group]
        for i in [i for i, p in enumerate(present) if p & gmask and p & gmask != gmask]:
            for bit, (start, end) in members:
                if present[i] & bit:
                    for j in range(start, end):
                        values[j][i] = ""
            present[i] &= ~gmask
    valid_mask = _validity(st)
    valid = [valid_mask[p] for p in present]
    relevant = st.mask(h._relevant)
    reasons: dict[int, str] = {}
    field_errors: dict[int, tuple[str, ...]] = {}
    for i, bits in st.errors.items():
        field_errors[i] = tuple(reason_code(x) for x in st.order if bits & st.bits[x])
    for i in [i for i, ok in enumerate(valid) if not ok]:
        bits = st.errors.get(i, 0) & relevant
        reasons[i] = next((reason_code(x) for x in st.order if bits & st.bits[x]), NO_IDENTIFIER)
    return PlatformColumns(h.schema, values, valid, reasons, field_errors)


def _validity(st: _PlatformState) -> list[bool]:
    """For every mask of present identifiers, whether the platform can match the row (a lookup table:
    at most 2**12 masks, cheaper than testing the combinations row by row)."""
    h = st.hasher
    standalone = st.mask(h._standalone)
    combos = [st.mask(c) for c in h._combos]
    return [bool(m & standalone) or any(m & c == c for c in combos) for m in range(1 << len(st.order))]
