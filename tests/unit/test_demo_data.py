"""Tests for the synthetic customer database (audience_sync.demo_data)."""

from __future__ import annotations

import csv
import sqlite3
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import phonenumbers
import pycountry
import pytest

from audience_sync import demo_data
from audience_sync.demo_data import COLUMNS, generate_customers, write_demo_csv, write_demo_db

N = 3000


@pytest.fixture(scope="module")
def rows() -> list[dict[str, object]]:
    return generate_customers(N, seed=7)


def _region(country: object) -> str | None:
    if country is None:
        return None
    return pycountry.countries.lookup(str(country)).alpha_2


def _valid_email(value: object) -> bool:
    return isinstance(value, str) and "@" in value.strip()


def _valid_phone(value: object, country: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(value, _region(country)))
    except phonenumbers.NumberParseException:
        return False


def _is_invalid(row: dict[str, object]) -> bool:
    return not _valid_email(row["email"]) and not _valid_phone(row["mobile"], row["country"])


def test_deterministic_for_a_seed(rows: list[dict[str, object]]) -> None:
    assert generate_customers(N, seed=7) == rows
    assert generate_customers(N, seed=8) != rows


def test_smaller_n_is_a_prefix(rows: list[dict[str, object]]) -> None:
    assert generate_customers(250, seed=7) == rows[:250]


def test_columns_and_types(rows: list[dict[str, object]]) -> None:
    assert len(rows) == N
    for row in rows:
        assert tuple(row) == COLUMNS
        assert isinstance(row["customer_id"], int)
        assert row["ads_consent"] in (0, 1)
        datetime.fromisoformat(str(row["updated_at"]))
        for column in ("email", "mobile", "first_name", "last_name", "city", "state", "zip", "country"):
            assert row[column] is None or isinstance(row[column], str)
        if row["date_of_birth"] is not None:
            datetime.strptime(str(row["date_of_birth"]), "%Y-%m-%d")


def test_customer_ids_unique_and_stable(rows: list[dict[str, object]]) -> None:
    ids = [row["customer_id"] for row in rows]
    assert len(set(ids)) == N
    assert ids == sorted(ids)
    assert [r["customer_id"] for r in generate_customers(10, seed=7)] == ids[:10]


def test_invalid_fraction_about_five_percent(rows: list[dict[str, object]]) -> None:
    invalid = [row for row in rows if _is_invalid(row)]
    assert 0.03 <= len(invalid) / N <= 0.07
    # every kind of breakage is present
    assert any(r["email"] is not None and "@" not in str(r["email"]) for r in invalid)
    assert any(r["mobile"] is not None for r in invalid)
    assert any(r["email"] is None and r["mobile"] is None for r in invalid)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_invalid_fraction_other_seeds(seed: int) -> None:
    other = generate_customers(N, seed=seed)
    assert 0.03 <= sum(_is_invalid(r) for r in other) / N <= 0.07


def test_valid_rows_have_only_valid_identifiers(rows: list[dict[str, object]]) -> None:
    valid = [row for row in rows if not _is_invalid(row)]
    for row in valid:
        assert row["email"] is not None or row["mobile"] is not None
        if row["email"] is not None:
            assert _valid_email(row["email"]), row
        if row["mobile"] is not None:
            assert _valid_phone(row["mobile"], row["country"]), row


def test_phones_are_mobiles_of_the_row_country(rows: list[dict[str, object]]) -> None:
    mobile_types = {phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE}
    checked = 0
    for row in rows:
        if row["country"] is None or not _valid_phone(row["mobile"], row["country"]):
            continue
        number = phonenumbers.parse(str(row["mobile"]), _region(row["country"]))
        assert phonenumbers.region_code_for_number(number) == _region(row["country"])
        assert phonenumbers.number_type(number) in mobile_types
        checked += 1
    assert checked > N / 2


def test_emails_use_synthetic_domains(rows: list[dict[str, object]]) -> None:
    allowed = {"example.com", "example.org", "example.net", "gmail.com"}
    domains = {str(r["email"]).strip().lower().rsplit("@", 1)[1] for r in rows if _valid_email(r["email"])}
    assert domains <= allowed
    assert {"example.com", "example.org", "example.net"} <= domains
    normalised = [str(r["email"]).strip().lower() for r in rows if _valid_email(r["email"])]
    assert len(set(normalised)) == len(normalised)


def test_formats_are_messy(rows: list[dict[str, object]]) -> None:
    emails = [str(r["email"]) for r in rows if _valid_email(r["email"])]
    assert sum(e != e.strip() for e in emails) > 0.05 * len(emails)
    assert sum(e != e.lower() for e in emails) > 0.10 * len(emails)

    phones = [str(r["mobile"]) for r in rows if _valid_phone(r["mobile"], r["country"])]
    assert any(p.startswith("+") and " " in p for p in phones)  # international
    assert any(p.startswith("+") and p[1:].isdigit() for p in phones)  # E.164
    assert any("(0)" in p for p in phones)
    assert any(p.startswith("(") and ")" in p for p in phones)  # "(201) 555-0143"
    assert any(p.startswith("0") and " " in p for p in phones)  # "07400 123456"
    assert any("." in p for p in phones)
    assert any("-" in p and not p.startswith("+") for p in phones)
    assert any(p.isdigit() and not p.startswith("00") for p in phones)
    assert any(p.startswith("00") for p in phones)

    countries = {r["country"] for r in rows}
    assert {"GB", "gb", "United Kingdom", "USA", "US", "India", "IN", "FR", "DE", None} <= countries
    assert all(pycountry.countries.lookup(str(c)) for c in countries if c is not None)

    names = {str(r["first_name"]).strip() for r in rows} | {str(r["last_name"]).strip() for r in rows}
    assert {"José", "Zoë", "Łukasz", "Renée", "Müller", "O'Brien", "Jean-Luc"} <= names
    states = {r["state"] for r in rows}
    assert {"CA", "California", "NY", "New York"} <= states


def test_missing_values_spread(rows: list[dict[str, object]]) -> None:
    for column in COLUMNS:
        nulls = sum(1 for r in rows if r[column] is None)
        if column in ("customer_id", "ads_consent", "updated_at"):
            assert nulls == 0, column
        else:
            assert nulls > 0, column


def test_cart_abandoned_spread(rows: list[dict[str, object]]) -> None:
    carts = [datetime.fromisoformat(str(r["cart_abandoned_at"])) for r in rows if r["cart_abandoned_at"]]
    assert 0.35 <= len(carts) / N <= 0.45
    assert min(carts) >= demo_data.CART_WINDOW_START
    assert max(carts) < demo_data.CART_WINDOW_END
    months = {c.month for c in carts}
    assert months == {6, 7, 8, 9, 10, 11}
    for row in rows:
        if row["cart_abandoned_at"]:
            assert str(row["updated_at"]) >= str(row["cart_abandoned_at"])
            assert str(row["cart_abandoned_at"])[10] == "T"
            assert str(row["cart_abandoned_at"]).endswith("+00:00")


def test_write_demo_db(tmp_path: Path, rows: list[dict[str, object]]) -> None:
    path = tmp_path / "sub" / "customers.db"
    path.parent.mkdir()
    path.write_text("not a database")  # overwritten
    counts = write_demo_db(path, n=N, seed=7)
    assert counts["rows"] == N
    assert counts["with_email"] == sum(1 for r in rows if r["email"] is not None)
    assert counts["with_phone"] == sum(1 for r in rows if r["mobile"] is not None)
    assert counts["invalid"] == sum(1 for r in rows if _is_invalid(r))
    assert counts["cart_abandoned"] == sum(1 for r in rows if r["cart_abandoned_at"] is not None)
    assert counts["ads_consent"] == sum(1 for r in rows if r["ads_consent"] == 1)

    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        stored = [dict(r) for r in conn.execute("SELECT * FROM customers ORDER BY customer_id")]
        in_window = conn.execute(
            "SELECT count(*) FROM customers WHERE cart_abandoned_at >= ? AND cart_abandoned_at < ?",
            ("2026-11-01T00:00:00+00:00", "2026-11-02T00:00:00+00:00"),
        ).fetchone()[0]
    conn.close()
    assert stored == rows
    assert in_window == sum(1 for r in rows if str(r["cart_abandoned_at"]).startswith("2026-11-01"))
    assert not [p for p in path.parent.iterdir() if p.name != "customers.db"]  # no temp files left

    smaller = write_demo_db(path, n=10, seed=7)
    assert smaller["rows"] == 10
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM customers").fetchone()[0] == 10
    conn.close()


def test_write_demo_csv(tmp_path: Path, rows: list[dict[str, object]]) -> None:
    path = tmp_path / "customers.csv"
    counts = write_demo_csv(path, n=N, seed=7)
    assert counts == write_demo_db(tmp_path / "customers.db", n=N, seed=7)
    with path.open(encoding="utf-8", newline="") as handle:
        read = list(csv.DictReader(handle))
    assert tuple(read[0]) == COLUMNS
    assert len(read) == N
    for got, want in zip(read, rows, strict=True):
        assert got == {c: "" if want[c] is None else str(want[c]) for c in COLUMNS}


def test_rejects_negative_n() -> None:
    with pytest.raises(ValueError, match="n must be"):
        generate_customers(-1)


def test_module_is_pure() -> None:
    code = (
        "import sys, audience_sync.demo_data as d; d.generate_customers(5); "
        "bad = sorted(m for m in ('airflow', 'pandas', 'pyarrow', 'pycountry') if m in sys.modules); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    plugins = Path(demo_data.__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=plugins, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
