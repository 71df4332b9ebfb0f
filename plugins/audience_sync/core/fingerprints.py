"""Keyed fingerprints of raw rows, so a rerun normalises and hashes only the rows that changed.

A row's fingerprint (per platform) is keyed BLAKE2b-128 over the raw values extraction reads for it: the
member key and every identifier column, each with its type and length. The key is derived from the
state's member-id key (:meth:`StateKeys.derive_key`) and from everything else that shapes the staged
row: the platform, its normalisation rules (:func:`rules_version`), the identifier -> column mapping
and the default country. Change any of them and every fingerprint changes, so every row is hashed again.

The ledger keeps, per member, the fingerprint of the raw row its ``row_hash`` and ``payload`` were built
from (written together, always). On a rerun, extraction looks each row's fingerprint up among the
fingerprints of ledger rows that need nothing (:func:`known_prints`); a row found there is staged
with its member id and fingerprint only (``row_hash`` null): it is the ledger's row, unchanged.

Why it reveals nothing: without the state's key nobody can compute the fingerprint of a guessed value,
so fingerprints cannot be matched against a list of e-mails or phone numbers the way plain hashes can.
The key never leaves :class:`StateKeys`; BLAKE2b in keyed mode is a PRF, and 128 bits make an accidental
match of a changed row with an unchanged one (which would skip its hashing) negligible. The member key is
part of each fingerprint, so equal identifiers of two members give different fingerprints.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import phonenumbers
import sqlalchemy as sa

from audience_sync.core.keys import StateKeys
from audience_sync.core.ledger import StateStore, fetch_columns, ledger
from audience_sync.core.normalize.platforms import PlatformRules

#: bump when a normaliser's output changes without its name, keys or match rules changing
RULES_VERSION = 1

#: bytes of a fingerprint (stored as hex: twice as many characters)
PRINT_BYTES = 16

_U64 = np.dtype("<u8")


def rules_version(rules: PlatformRules) -> str:
    """A description of what a platform's rules do to a row: any change to it re-hashes every row."""
    fields = [
        [identifier, list(rule.keys), _name(rule.normalize), rule.hashed]
        for identifier, rule in rules.fields.items()
    ]
    described = {
        "version": RULES_VERSION,
        "platform": rules.name,
        "fields": fields,
        "standalone": sorted(rules.standalone),
        "combos": [sorted(c) for c in rules.combos],
        "all_or_nothing": [sorted(c) for c in rules.all_or_nothing],
        # which numbers are valid, and their E.164 form, change with libphonenumber's metadata
        "phone_metadata": phonenumbers.__version__,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def _name(fn: object) -> str:
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


class RowPrinter:
    """Fingerprints of raw rows for one platform.

    :param version: the platform's :func:`rules_version`.
    :param key: the member key column; ``identifiers``: identifier type -> column.
    """

    def __init__(
        self,
        keys: StateKeys,
        platform: str,
        version: str,
        key: str,
        identifiers: Mapping[str, str],
        default_country: str | None,
    ) -> None:
        self.columns = [key, *(identifiers[t] for t in sorted(identifiers))]
        label = json.dumps(
            ["row fingerprint v1", platform, version, key, sorted(identifiers.items()), default_country]
        )
        self._hash = functools.partial(
            hashlib.blake2b, key=keys.derive_key(label.encode()), digest_size=PRINT_BYTES
        )

    def prints(self, columns: Mapping[str, Sequence[Any]], rows: Sequence[int]) -> list[bytes]:
        """The fingerprint of each of ``rows`` (indexes into the chunk's ``columns``), built column by
        column (one pass per column, then one keyed hash per row)."""
        encoded = [_encoded(columns.get(c), rows) for c in self.columns]
        new = self._hash
        return [new(text.encode("utf-8", "surrogatepass")).digest() for text in map("".join, zip(*encoded))]


def _encoded(column: Sequence[Any] | None, rows: Sequence[int]) -> list[str]:
    """One column's raw values at ``rows``, each unambiguous among a row's parts: type, length, text."""
    if column is None:
        return ["\x00-"] * len(rows)
    return [f"s{len(v)}:{v}" if type(v) is str else _part(v) for v in map(column.__getitem__, rows)]


def _part(value: Any) -> str:
    if value is None:
        return "n;"
    if type(value) is int:
        return f"i{value};"  # digits and a sign only: the ';' ends it
    text = repr(value)
    return f"{type(value).__name__}{len(text)}:{text}"


@dataclass(frozen=True)
class KnownPrints:
    """Fingerprints of ledger rows a rerun may reuse: first halves sorted, second halves aligned."""

    high: np.ndarray
    low: np.ndarray

    @classmethod
    def of(cls, prints: bytes) -> KnownPrints:
        """From concatenated fingerprints (``PRINT_BYTES`` each)."""
        pairs = np.frombuffer(prints, dtype=_U64).reshape(-1, 2)
        order = np.argsort(pairs[:, 0], kind="stable")
        return cls(np.ascontiguousarray(pairs[order, 0]), np.ascontiguousarray(pairs[order, 1]))

    def __len__(self) -> int:
        return len(self.high)

    def contains(self, prints: Sequence[bytes]) -> np.ndarray:
        """Per fingerprint, whether it is known (a rare repeated first half may miss: then the row is
        simply hashed again)."""
        if not prints or not len(self.high):
            return np.zeros(len(prints), dtype=bool)
        pairs = np.frombuffer(b"".join(prints), dtype=_U64).reshape(-1, 2)
        at = np.searchsorted(self.high, pairs[:, 0])
        inside = at < len(self.high)
        at = np.where(inside, at, 0)
        return inside & (self.high[at] == pairs[:, 0]) & (self.low[at] == pairs[:, 1])


def reusable() -> list[sa.ColumnElement[bool]]:
    """Ledger rows a rerun with the same raw row leaves alone (see ``delta.stage_changes``): on the
    platform or on their way there, not waiting for removal, with a fingerprint."""
    return [
        sa.or_(ledger.c.status == "sent", ledger.c.status == "in_progress"),  # no IN: a plain cursor runs it
        sa.or_(ledger.c.op.is_(None), ledger.c.op != "remove"),
        ledger.c.fingerprint.is_not(None),
    ]


def known_prints(store: StateStore, registry_id: int) -> KnownPrints:
    """The fingerprints of one audience's reusable ledger rows."""
    q = sa.select(ledger.c.fingerprint).where(ledger.c.registry_id == registry_id, *reusable())
    (hexes,) = fetch_columns(store.engine, q, 1)
    return KnownPrints.of(bytes.fromhex("".join(hexes)))


def known_for(store: StateStore, platform: str, account: str, segment_name: str) -> KnownPrints | None:
    """The reusable fingerprints of the audience registered for (platform, account, segment), found
    without a platform call; None before its first sync."""
    entry = store.get_registry(platform, account, segment_name)
    return known_prints(store, entry.id) if entry is not None else None


def known_for_targets(
    store: StateStore, targets: Iterable[tuple[str, str, str]]
) -> dict[str, KnownPrints | None]:
    """Per platform, the reusable fingerprints of its one destination ``(platform, account, segment)``.

    A platform synced to several audiences gets none: its staged rows serve every one of them, so a row
    may be staged unchanged only if it is unchanged in each; one set keeps that simple and safe.
    """
    by_platform: dict[str, list[tuple[str, str]]] = {}
    for platform, account, segment in targets:
        by_platform.setdefault(platform, []).append((account, segment))
    return {
        p: known_for(store, p, *dests[0]) if len(dests) == 1 and "{{" not in dests[0][1] else None
        for p, dests in by_platform.items()
    }
