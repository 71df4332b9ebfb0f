"""Source readers: a PostgreSQL query streams through a server-side cursor; files and SQLite in chunks."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pandas as pd
import psycopg2
import pytest

from audience_sync.sources import read_group, read_sql


def test_postgres_query_streams_through_a_server_side_cursor(postgres) -> None:
    conn = psycopg2.connect(host="127.0.0.1", port=postgres.port, user=postgres.user, dbname="test")
    conn.autocommit = True  # as some hooks hand it out: the reader must still get its transaction
    # rows past the first 5,000 each sleep 50 ms: fetching the whole result would take over an hour
    sql = (
        "SELECT g AS customer_id, 'u' || g || '@example.com' AS email, "
        "CASE WHEN g > 5000 THEN pg_sleep(0.05)::text END AS slow "
        "FROM generate_series(1, 100000) AS g"
    )
    chunks = read_sql(conn, sql, chunk_rows=1000)
    t0 = time.monotonic()
    first = next(chunks)
    assert time.monotonic() - t0 < 10  # the first chunk came before the query could have completed
    assert len(first) == 1000 and first[0] == {"customer_id": 1, "email": "u1@example.com", "slow": None}
    with conn.cursor() as probe:  # same session: its cursors are listed in pg_cursors
        probe.execute("SELECT name, statement FROM pg_cursors")
        cursors = probe.fetchall()
    assert len(cursors) == 1 and cursors[0][0].startswith("audience_sync_")
    assert "generate_series" in cursors[0][1]
    second = next(chunks)
    assert [r["customer_id"] for r in second] == list(range(1001, 2001))
    chunks.close()  # the caller stops early: the cursor and its transaction end
    with conn.cursor() as probe:
        probe.execute("SELECT count(*) FROM pg_cursors")
        assert probe.fetchone()[0] == 0
    conn.close()


def test_postgres_group_is_complete_and_the_connection_closed(postgres) -> None:
    opened: list[psycopg2.extensions.connection] = []

    def connect() -> psycopg2.extensions.connection:
        opened.append(
            psycopg2.connect(host="127.0.0.1", port=postgres.port, user=postgres.user, dbname="test")
        )
        return opened[-1]

    chunks = list(read_group(None, "SELECT g AS k FROM generate_series(1, 2500) g ORDER BY g", connect, 1000))
    assert [len(c) for c in chunks] == [1000, 1000, 500]
    assert [r["k"] for c in chunks for r in c] == list(range(1, 2501))
    assert opened[0].closed


def test_sqlite_csv_and_parquet_read_in_chunks(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"customer_id": [str(i) for i in range(25)], "email": [f"u{i}@x.org" for i in range(25)]}
    )
    frame.loc[3, "email"] = ""
    frame.to_csv(tmp_path / "group.csv", index=False)
    frame.to_parquet(tmp_path / "group.parquet", index=False)
    db = tmp_path / "crm.db"
    with sqlite3.connect(db) as con:
        frame.to_sql("customers", con, index=False)
    for source, sql, connect in (
        (tmp_path / "group.csv", None, None),
        (tmp_path / "group.parquet", None, None),
        (None, "SELECT customer_id, email FROM customers ORDER BY rowid", lambda: sqlite3.connect(db)),
    ):
        chunks = list(read_group(source, sql, connect, chunk_rows=10))
        assert [len(c) for c in chunks] == [10, 10, 5], source
        flat = [r for c in chunks for r in (c.to_pylist() if hasattr(c, "to_pylist") else c)]
        assert flat[7] == {"customer_id": "7", "email": "u7@x.org"}
        assert flat[3]["email"] == ""  # empty stays empty, not NaN


def test_csv_cells_are_read_as_text_exactly(tmp_path: Path) -> None:
    """Leading zeros, the text NA, empty cells, quoted commas and newlines, and a BOM, as a CRM export has them."""
    path = tmp_path / "export.csv"
    path.write_bytes(
        b'\xef\xbb\xbfid,phone,email,name\n007,0044 7400 123456,NA,"Smith, Jr"\n8,,,"two\nlines"\n9, 1 , a@b.co ,"q""uote"\n'
    )
    (chunk,) = read_group(path, None, None, chunk_rows=10)
    assert chunk.to_pylist() == [
        {"id": "007", "phone": "0044 7400 123456", "email": "NA", "name": "Smith, Jr"},
        {"id": "8", "phone": "", "email": "", "name": "two\nlines"},
        {"id": "9", "phone": " 1 ", "email": " a@b.co ", "name": 'q"uote'},
    ]
    assert [len(c) for c in read_group(path, None, None, chunk_rows=2)] == [2, 1]


def test_sql_without_a_connection_is_refused() -> None:
    with pytest.raises(ValueError, match="connection"):
        list(read_group(None, "SELECT 1", None))
