"""Column-wise hashing equals row-wise hashing, row for row, on every platform's rules."""

from __future__ import annotations

import datetime as dt
import math
import random

import pyarrow as pa
import pytest

from audience_sync.core.normalize import RULES, InvalidValue, RowHasher, sha256_hex
from audience_sync.core.normalize.columns import _MISSING, ChunkHasher
from audience_sync.core.normalize.values import coerce

IDENTIFIERS = {
    "email": "mail",
    "phone": "tel",
    "first_name": "fn",
    "last_name": "ln",
    "city": "city",
    "state": "st",
    "zip": "zip",
    "country": "cc",
    "gender": "sex",
    "date_of_birth": "dob",
    "madid": "maid",
    "external_id": "ext",
    # per-person consent: only google_datamanager takes it, every other platform ignores it
    "ad_user_data": "c_data",
    "ad_personalization": "c_pers",
}

# values of every kind a CRM column holds: valid, invalid, missing, numbers, dates, junk whitespace
POOLS: dict[str, list[object]] = {
    "mail": [
        "Ann.Lee+x@Gmail.com",
        " bob@example.org ",
        "no-at-sign",
        "a b@c.de",
        "",
        None,
        "x@y",
        "Zoë@exämple.de",
        # Google: gmail/googlemail rewrites, inner whitespace refused, edge debris
        "Jane Doe@gmail.com",
        "A.B+c@GoogleMail.com",
        "+tag@gmail.com",
        "\ufeffuser.name+NYC@Example.com",
    ],
    "tel": [
        "+44 7400 123456",
        "07400 123456",
        "(650) 253-0000",
        "6502530000",
        4.4207946e11,
        "12345",
        "",
        None,
        "00447400123456",
    ],
    "fn": [
        "José",
        "  ANNE-marie ",
        "O'Neil",
        "123",
        "",
        None,
        "Łukasz",
        "zoë",
        "Mary  Ann",
        "Jose\u0301",
        "Mrs. Jane",
    ],
    "ln": ["Müller", "van der Berg", "D'Angelo", "!!!", "", None, "Smith", "Smith Jr.", "St.\u00a0John"],
    "city": ["Menlo Park", "São Paulo", "", None, "42"],
    "st": ["California", "CA", "ny", "Bavaria", "", None, "ZZ"],
    "zip": [
        "94025-1234",
        "SW1A 1AA",
        "2134",
        "75008",
        "",
        None,
        94025.0,
        "sw1a",
        "94025 1234",
        " sw1a  1aa ",
        2134,
    ],
    "cc": ["US", "gb", "United Kingdom", "DEU", "826", "Atlantis", "", None, 1, True, "UK", "ZZ", "de"],
    "sex": ["M", "female", "x", "", None],
    "dob": ["1980-02-29", "19991231", "1899-01-01", "2001-13-01", dt.date(1975, 5, 17), "", None, math.nan],
    "maid": [
        "6D92078A-8246-4BA4-AE5B-76104861E7DC",
        "00000000-0000-0000-0000-000000000000",
        "not-a-maid",
        None,
    ],
    "ext": ["CRM-1", " 42 ", "", None, 7],
    "c_data": ["yes", "No", " GRANTED ", "denied", "1", "0", True, False, 1, 0, "maybe", "", None],
    "c_pers": ["true", "FALSE", "y", "n", "unspecified", "Unknown", "granted", "x", None],
}


def random_rows(n: int, seed: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        row = {col: rng.choice(pool) for col, pool in POOLS.items() if rng.random() < 0.9}
        rows.append(row)
    return rows


def as_arrow(columns: dict[str, list[object]]) -> dict[str, object]:
    """Text columns (only text and None) as Arrow string arrays, as a CSV or Parquet list gives them;
    the others stay Python lists."""
    return {
        name: pa.array(col, pa.string()) if all(v is None or isinstance(v, str) for v in col) else col
        for name, col in columns.items()
    }


@pytest.mark.parametrize("arrow", [False, True], ids=["python", "arrow"])
@pytest.mark.parametrize("default_country", [None, "US", "GB"])
@pytest.mark.parametrize("mapped", ["all", "some"])
def test_chunk_hasher_equals_row_hasher_on_every_platform(
    default_country: str | None, mapped: str, arrow: bool
) -> None:
    identifiers = (
        IDENTIFIERS
        if mapped == "all"
        else {k: IDENTIFIERS[k] for k in ("email", "phone", "first_name", "last_name", "country", "zip")}
    )
    rows = random_rows(3000, seed=hash((default_country, mapped)) & 0xFFFF)
    chunk = ChunkHasher(identifiers, RULES, default_country)
    columns = {col: [r.get(col) for r in rows] for col in POOLS}
    if arrow:  # the text-only columns (names, city, state, gender, e-mail, MADID) as Arrow arrays
        columns = {
            **columns,
            **as_arrow({k: columns[k] for k in ("mail", "fn", "ln", "city", "st", "sex", "maid", "c_pers")}),
        }
        assert sum(isinstance(c, pa.Array) for c in columns.values()) == 8
    result = chunk.hash_chunk(columns, len(rows))
    assert set(result) == set(RULES)
    for platform, rules in RULES.items():
        by_row = RowHasher(platform, identifiers, default_country, rules=rules)
        got = result[platform]
        assert got.schema == by_row.schema
        for i, row in enumerate(rows):
            want = by_row.hash_row(row)
            assert tuple(col[i] for col in got.values) == want.values, (platform, i)
            assert got.valid[i] == want.valid, (platform, i)
            assert got.reasons.get(i) == want.reason, (platform, i)
            assert got.field_errors.get(i, ()) == want.field_errors, (platform, i)


def test_a_missing_column_is_all_missing_values() -> None:
    chunk = ChunkHasher({"email": "mail", "phone": "tel"}, {"meta": RULES["meta"]})
    result = chunk.hash_chunk({"mail": ["a@b.co", None]}, 2)["meta"]
    assert result.valid == [True, False]
    assert result.values[1] == ["", ""]
    assert result.reasons == {1: "no_identifier"}


# characters that decide how an address is trimmed, lowercased, split and validated: every ASCII
# whitespace Python knows (including \x1c-\x1f, which RE2's \s does not), '@', '.', '+', both cases,
# and non-ASCII letters, spaces and zero-width characters (those rows take the row-by-row path)
EMAIL_ALPHABET = (
    list("aZ09.+@@-_'")
    + list("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f ")
    + ["é", "İ", "\xa0", "\u3000", "\u200b", "\ufeff"]
)


def adversarial_email(rng: random.Random) -> object:
    kind = rng.random()
    if kind < 0.05:
        return None
    if kind < 0.1:
        return rng.choice(["", " ", "\t\x1c", "\u200b"])
    if kind < 0.3:  # near the 254-character limit
        local = "a" * rng.randint(1, 64)
        domain = "b" * rng.randint(180, 200) + ".co"
        return f"{local}@{domain}"[: rng.randint(250, 258)]
    if kind < 0.6:  # a plausible address with junk around or inside
        pad = "".join(rng.choice(EMAIL_ALPHABET) for _ in range(rng.randint(0, 3)))
        inner = rng.choice(["", " ", "\t", "+tag", ".", "\x1f", "é"])
        return f"{pad}Ann{inner}.Lee@Ex{rng.choice(['', ' ', '.'])}ample.{rng.choice(['com', 'c', ''])}{pad}"
    return "".join(rng.choice(EMAIL_ALPHABET) for _ in range(rng.randint(1, 20)))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_arrow_email_path_equals_the_row_rules_on_adversarial_addresses(seed: int) -> None:
    rng = random.Random(seed)
    rows = [{"mail": adversarial_email(rng)} for _ in range(4000)]
    identifiers = {"email": "mail"}
    mail = pa.array([r["mail"] for r in rows], pa.string())
    result = ChunkHasher(identifiers, RULES).hash_chunk({"mail": mail}, len(rows))
    for platform, rules in RULES.items():
        by_row = RowHasher(platform, identifiers, rules=rules)
        got = result[platform]
        for i, row in enumerate(rows):
            want = by_row.hash_row(row)
            assert (tuple(col[i] for col in got.values), got.valid[i]) == (want.values, want.valid), (
                platform,
                repr(row["mail"]),
            )
            assert got.field_errors.get(i, ()) == want.field_errors, (platform, repr(row["mail"]))


def test_the_arrow_email_path_is_taken_and_agrees_with_the_rule_on_valid_and_invalid_rows() -> None:
    from audience_sync.core.normalize.columns import _email_results

    rule = RULES["meta"].fields["email"]
    raw = [" Ann.Lee@Example.COM\x1c", "a b@c.de", "\t", None, "Zoë@exämple.de", "x@y"]
    got = _email_results(rule, pa.array(raw, pa.string()), raw, [None] * len(raw))
    want = []
    for v in raw:
        coerced = coerce(v)
        if coerced is None:
            want.append("missing")
            continue
        try:
            want.append(rule.apply(coerced, None)[1])
        except InvalidValue:
            want.append("invalid")
    assert [x if type(x) is tuple else ("missing" if x is _MISSING else "invalid") for x in got] == want
    assert want[0] == (sha256_hex("ann.lee@example.com"),)
