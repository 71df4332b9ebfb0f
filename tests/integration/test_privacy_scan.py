"""The privacy promise, checked end to end: a campaign with every identifier type runs through Airflow's
``dag.test()`` against the Meta sandbox (a failed run that keeps its staged files, a successful run, a run
where a member leaves), on a SQLite and a PostgreSQL state. Then the staged files, every table of the state
database (metrics included), every XCom value and the task logs are searched for each raw identifier value,
its normalised form, each raw member key and the plain SHA-256 of each member key: none may appear.

MADID and EXTERN_ID go to Meta unhashed, so they are kept to resend on removal: they must appear only as
Fernet tokens that decrypt, with the state's key, to exactly what was sent. Country and gender are one- or
two-letter codes that cannot be searched for in free text; the structural check covers them (every other
stored value is a 64-hex hash or empty).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import textwrap
import uuid
from pathlib import Path

import pendulum
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from audience_sync.core.extract import META_COLUMNS
from audience_sync.core.keys import ENCRYPTED_KEYS, StateKeys, load_key_file
from audience_sync.core.normalize import IDENTIFIER_TYPES, RowHasher
from audience_sync.hooks.state import key_file_beside
from tests.conftest import state_connection

STEM = "privacy_scan"
DAG_ID = f"ads_audience__{STEM}"
ACCOUNT = "act_5550001"
SEGMENT = "privacy_scan_users"
N = 36
HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX32 = re.compile(r"^[0-9a-f]{32}$")
UK = [
    ("SY23 1PL", "Aberystwyth", "Ceredigion"),
    ("LL30 2RP", "Llandudno", "Conwy"),
    ("DG6 4JD", "Kirkcudbright", "Dumfriesshire"),
]


def customer(i: int) -> dict[str, str]:
    uk = i % 2 == 0
    postcode, city, county = UK[i % 3]
    return {
        "customer_id": f"cust-7f3a-{i:04d}",
        "email": f" Quinn.Tester{i}@Example.org",
        "phone": f"020 7946 {i:04d}" if uk else f"(650) 253-{i:04d}",
        "first_name": ["Quintessa", "Barnaby", "Evangeline", "Thaddeus"][i % 4],
        "last_name": ["Fairweather", "Thistlewood", "Brightwater"][i % 3],
        "city": city if uk else "Menlo Park",
        "state": county if uk else "California",
        "zip": postcode if uk else f"9402{i % 10}-{i:04d}",
        "country": "GB" if uk else "US",
        "gender": "female" if i % 2 else "male",
        "date_of_birth": f"19{60 + i % 40}-{1 + i % 12:02d}-{1 + i % 28:02d}",
        "madid": str(uuid.UUID(int=(i + 1) * 104729)).upper() if i % 3 else "",
        "external_id": f"CRM-{i:05d}-ZQ" if i % 4 else "",
    }


FIELDS = list(customer(0))
HASHER = RowHasher("meta", {t: t for t in IDENTIFIER_TYPES})


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write_csv(path: Path, ids: list[int]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        w.writerows(customer(i) for i in ids)


def write_campaign(folder: Path, csv_path: Path) -> None:
    folder.mkdir()
    identifiers = "\n".join(f"    {t}: {t}" for t in IDENTIFIER_TYPES)
    (folder / f"{STEM}.yaml").write_text(
        textwrap.dedent(
            f"""\
            campaign: Privacy scan
            duration: {{start: 2026-11-01}}
            schedule: "@daily"
            timezone: UTC
            segment_name: {SEGMENT}
            retries: 0
            audience_group:
              list: {csv_path}
              key: customer_id
              identifiers:
            """
        )
        + identifiers
        + f'\ndestinations:\n  - platform: meta\n    ad_account_id: "{ACCOUNT}"\n'
    )


def sent_values(i: int) -> dict[str, str]:
    r = HASHER.hash_row(customer(i))
    assert r.valid, (i, r.reason)
    return dict(zip(HASHER.schema, r.values, strict=True))


def searchable(i: int) -> set[str]:
    """Every raw identifier value and normalised form of one customer long enough to search free text for."""
    c = customer(i)
    out = {c["customer_id"], sha(c["customer_id"])}
    # a country code or a gender is too short or too common a word to search free text for
    for field in (t for t in IDENTIFIER_TYPES if t not in ("country", "gender")):
        if c[field]:
            out.add(c[field].strip())
    out.add(re.sub(r"\D", "", c["phone"]))
    out.add(c["city"].replace(" ", ""))
    plain = sent_values(i)
    out |= {plain[k] for k in ENCRYPTED_KEYS & set(plain) if plain[k]}
    return {v.lower() for v in out if len(v) >= 5}


def run_dag(day: int):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).dags[DAG_ID]
    return dag.test(logical_date=pendulum.datetime(2026, 12, day, tz="UTC"))


def all_xcoms() -> list[object]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as s:
        return [r.value for r in s.query(XComModel).filter_by(dag_id=DAG_ID).all()]


def xcom(run_id: str, task_id: str) -> dict:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as s:
        return s.query(XComModel).filter_by(dag_id=DAG_ID, run_id=run_id, task_id=task_id).one().value


def check_sealed(payload: dict[str, str], i: int, keys: StateKeys, where: str) -> None:
    """Stored values: hashes or empty, and the unhashed identifiers only as tokens of the exact values sent."""
    plain = sent_values(i)
    assert list(payload) == list(HASHER.schema), where
    for k, v in payload.items():
        if k in ENCRYPTED_KEYS and plain[k]:
            assert v != plain[k] and v.startswith("gAAAA"), (where, k)
        else:
            assert v == plain[k] and (v == "" or HEX64.match(v)), (where, k)
    assert keys.open_payload(payload) == plain, where


@pytest.mark.timeout(300)
def test_no_raw_identifier_or_plain_key_hash_anywhere_after_runs_with_every_identifier_type(
    airflow_db,
    fresh_sandbox,
    state_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    sandbox = fresh_sandbox
    group = list(range(N))
    csv_path = tmp_path / "group.csv"
    write_csv(csv_path, group)
    write_campaign(tmp_path / "campaigns", csv_path)
    monkeypatch.setenv("AUDIENCE_SYNC_CAMPAIGNS_DIR", str(tmp_path / "campaigns"))
    conn, configured = state_connection(state_url)
    monkeypatch.setenv("AIRFLOW_CONN_AUDIENCE_SYNC_DB", json.dumps(conn))
    assert {c for c in FIELDS if c != "customer_id"} == set(IDENTIFIER_TYPES)  # every identifier type

    # run 1: the platform refuses uploads (terms not accepted): the run fails and keeps its staged files
    sandbox.meta.add_fault(method="POST", path_regex="/users$", times=None, action="error", code=2655)
    failed = run_dag(1)
    assert failed.state == "failed"
    staged_path = Path(xcom(failed.run_id, "extract")["staged"]["meta"]["path"])
    assert staged_path.exists()
    staged_files = sorted(staged_path.parent.rglob("*.parquet"))
    staged_tables = {str(p.relative_to(staged_path.parent)): pq.read_table(p) for p in staged_files}
    staged_bytes = b"".join(p.read_bytes() for p in staged_files)
    sandbox.meta.clear_faults()

    # run 2 succeeds and sends exactly the group; run 3: a member with a MADID and an external id leaves
    ok = run_dag(2)
    assert ok.state == "success"
    (aud,) = sandbox.meta.audiences(ACCOUNT)
    expected = {frozenset((k, v) for k, v in sent_values(i).items() if v) for i in group}
    assert {frozenset(m.items()) for m in sandbox.meta.members(aud["id"])} == expected
    leaver = next(i for i in group if customer(i)["madid"] and customer(i)["external_id"])
    write_csv(csv_path, [i for i in group if i != leaver])
    assert run_dag(3).state == "success"
    expected.discard(frozenset((k, v) for k, v in sent_values(leaver).items() if v))
    assert {frozenset(m.items()) for m in sandbox.meta.members(aud["id"])} == expected  # exact values removed

    # the keys: configured on the connection, or generated once beside the SQLite state (mode 0600)
    if configured is None:
        key_file = key_file_beside(sa.make_url(state_url).database)
        assert key_file.stat().st_mode & 0o777 == 0o600
        keys = load_key_file(key_file, create=False)
    else:
        keys = configured
    ids = {keys.member_id(customer(i)["customer_id"]): i for i in group}

    # structure: staged files and ledger hold keyed ids, hashes, and tokens of the unhashed values only
    meta_table = pa.concat_tables(t for name, t in staged_tables.items() if name.startswith("meta/"))
    assert set(META_COLUMNS) <= set(meta_table.column_names)
    for row in meta_table.to_pylist():
        i = ids[row.pop("member_id")]
        row.pop("row_hash")
        assert HEX32.match(row.pop("fingerprint"))  # a keyed fingerprint of the raw row, nothing else
        check_sealed({k: v or "" for k, v in row.items()}, i, keys, "staged file")
    engine = sa.create_engine(state_url)
    with engine.connect() as c:
        ledger_rows = c.execute(
            sa.text("SELECT member_id, payload, sent_payload, fingerprint FROM as_member_ledger")
        ).all()
        tables = sa.inspect(engine).get_table_names()
        db_dump = "\n".join(str(tuple(r)) for t in tables for r in c.execute(sa.text(f"SELECT * FROM {t}")))
        metrics = c.execute(sa.text("SELECT COUNT(*) FROM as_run_metrics")).scalar()
    engine.dispose()
    assert metrics == 3 and {"as_member_ledger", "as_run_metrics", "as_stage"} <= set(tables)
    assert {r.member_id for r in ledger_rows} == set(ids)
    for r in ledger_rows:
        assert r.fingerprint is None or HEX32.match(r.fingerprint), "ledger fingerprint"
        check_sealed(json.loads(r.payload), ids[r.member_id], keys, "ledger payload")
        if r.sent_payload:
            check_sealed(json.loads(r.sent_payload), ids[r.member_id], keys, "ledger sent_payload")

    # search everything for raw values, normalised values, member keys, plain key hashes and the keys
    secrets_ = set().union(*(searchable(i) for i in group)) | {v.lower() for v in keys.as_text().values()}
    assert len(secrets_) > 8 * N
    out, err = capfd.readouterr()
    logs = out + err
    assert "audience group:" in logs.lower()  # the task logs were captured
    logs_dir = Path(os.environ["AIRFLOW_HOME"]) / "logs"
    if logs_dir.exists():
        logs += "\n".join(p.read_text(errors="replace") for p in logs_dir.rglob("*") if p.is_file())
    haystacks = {
        "task logs": logs,
        "xcom": json.dumps(all_xcoms(), default=str),
        "state database (every table, metrics included)": db_dump,
        "staged files (values)": json.dumps({n: t.to_pylist() for n, t in staged_tables.items()}),
        "staged files (bytes)": staged_bytes.decode("latin-1"),
    }
    for where, text in haystacks.items():
        text = text.lower()
        leaked = sorted(v for v in secrets_ if v in text)
        assert not leaked, f"{len(leaked)} identifier value(s) or key(s) found in {where}"
