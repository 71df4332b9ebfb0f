"""Source readers: the audience group in bounded chunks from CSV, Parquet or a SQL query (no Airflow import)."""

from __future__ import annotations

import csv
import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from audience_sync.core.settings import settings

log = logging.getLogger(__name__)


Chunk = list[dict[str, Any]]


def read_group(
    source_path: str | Path | None,
    sql: str | None,
    connect: Callable[[], Any] | None = None,
    chunk_rows: int | None = None,
) -> Iterator[Any]:
    """Yield the audience group in chunks, from a CSV/Parquet list (Arrow record batches) or a SQL query
    (lists of row dicts).

    :param connect: for ``sql``: returns a new DB-API connection (e.g. an Airflow hook's ``get_conn``);
        it is closed when the group has been read, or when the caller stops early.
    :param chunk_rows: rows per chunk (default: the ``AUDIENCE_SYNC_CHUNK_ROWS`` setting).
    """
    chunk_rows = chunk_rows or settings().chunk_rows
    if sql is not None:
        if connect is None:
            raise ValueError("a SQL source needs a connection")
        conn = connect()
        try:
            yield from read_sql(conn, sql, chunk_rows)
        finally:
            conn.close()
        return
    yield from read_file(Path(str(source_path)), chunk_rows)


def read_file(path: Path, chunk_rows: int) -> Iterator[Any]:
    """Arrow record batches of at most ``chunk_rows`` rows from a ``.parquet`` or CSV file.

    CSV is read by Arrow's streaming reader (in C++, on its own threads) with every column as text and
    nothing read as missing: an empty cell is ``""``, ``NA`` is the text ``NA``, leading zeros stay.
    """
    import pyarrow.parquet as pq

    if path.suffix.lower() == ".parquet":
        yield from pq.ParquetFile(path).iter_batches(batch_size=chunk_rows)
        return
    yield from _rebatch(_csv_batches(path), chunk_rows)


def _csv_batches(path: Path) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    with path.open(newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), [])
    reader = pcsv.open_csv(
        path,
        read_options=pcsv.ReadOptions(block_size=4 << 20),
        parse_options=pcsv.ParseOptions(newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(
            column_types={name: pa.string() for name in header},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    with reader:
        yield from reader


def _rebatch(batches: Iterator[Any], rows: int) -> Iterator[Any]:
    """Batches of exactly ``rows`` rows (the last one shorter), from batches of any size."""
    import pyarrow as pa

    held: list[Any] = []
    count = 0
    for batch in batches:
        held.append(batch)
        count += batch.num_rows
        while count >= rows:
            table = pa.Table.from_batches(held)
            yield table.slice(0, rows).combine_chunks().to_batches()[0]
            rest = table.slice(rows)
            held, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(held).combine_chunks().to_batches()[0]


def is_postgres(conn: Any) -> bool:
    """Whether a DB-API connection is psycopg2's or psycopg 3's (PostgreSQL)."""
    module = type(conn).__module__
    return module.split(".")[0] in ("psycopg2", "psycopg")


def read_sql(conn: Any, sql: str, chunk_rows: int) -> Iterator[Chunk]:
    """Run ``sql`` on an open DB-API connection and yield its rows in chunks of at most ``chunk_rows``.

    On PostgreSQL a plain cursor downloads the whole result at ``execute`` (libpq buffers it all), so a
    group of millions would sit in memory at once. There the query runs in a server-side (named)
    cursor instead, and each ``fetchmany`` is one ``FETCH`` of ``chunk_rows`` rows. Other drivers
    (SQLite, MySQL, ...) keep their cursor's ``fetchmany``. The caller owns (and closes) ``conn``.
    """
    if is_postgres(conn):
        yield from _pg_chunks(conn, sql, chunk_rows)
        return
    cur = conn.cursor()
    try:
        cur.execute(sql)
        names = [d[0] for d in cur.description]
        while rows := cur.fetchmany(chunk_rows):
            yield [dict(zip(names, r, strict=True)) for r in rows]
    finally:
        cur.close()


def _pg_chunks(conn: Any, sql: str, chunk_rows: int) -> Iterator[Chunk]:
    # a named cursor lives in a transaction (DECLARE ... CURSOR WITHOUT HOLD): leave autocommit for it
    if getattr(conn, "autocommit", False):
        conn.autocommit = False
    cur = conn.cursor(name=f"audience_sync_{uuid.uuid4().hex[:12]}")
    try:
        cur.itersize = chunk_rows  # psycopg2: rows per FETCH when iterated; fetchmany below says it too
        cur.execute(sql)
        names: list[str] | None = None
        while rows := cur.fetchmany(chunk_rows):
            if names is None:  # psycopg2 describes a named cursor's columns only after the first FETCH
                names = [d[0] for d in cur.description]
            yield [dict(zip(names, r, strict=True)) for r in rows]
    finally:
        try:
            cur.close()
        finally:
            conn.rollback()  # read only: end the cursor's transaction
