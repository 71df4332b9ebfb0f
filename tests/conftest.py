"""Test setup: Airflow on a throwaway SQLite metadata DB, the local sandbox, a PostgreSQL server.

Environment variables must be set before Airflow is imported, so this runs at collection time.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from audience_sync.core.keys import StateKeys

ROOT = Path(__file__).resolve().parents[1]
_HOME = Path(tempfile.mkdtemp(prefix="audience-sync-airflow-"))
_OWNER = os.getpid()


@atexit.register
def _remove_home() -> None:
    """The session's Airflow home (metadata DB, logs, staged files) goes when the test process exits;
    not when a child forked from it does (a forked process inherits this handler)."""
    if os.getpid() == _OWNER:
        shutil.rmtree(_HOME, ignore_errors=True)


os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_HOME}/airflow.db"
os.environ["AIRFLOW__API_AUTH__JWT_SECRET"] = secrets.token_hex(64)
os.environ["AUDIENCE_SYNC_STRICT"] = "1"  # any broken campaign file fails the suite
# syncing is off by default: the suite's DAG runs enable it here (tests of a disabled deployment unset it);
# the approval step passes without asking (the approval tests turn it back on)
os.environ["AUDIENCE_SYNC_ENABLED"] = "1"
os.environ["AUDIENCE_SYNC_APPROVAL_REQUIRED"] = "0"
os.environ["AUDIENCE_SYNC_CAMPAIGNS_DIR"] = str(ROOT / "include" / "demo" / "campaigns")  # the suite's DAGs
os.environ.pop("AIRFLOW_CONN_AUDIENCE_SYNC_DB", None)
# the demo campaign's file drop writes under the session's Airflow home (tests that read it set their own)
os.environ["AIRFLOW_CONN_FILE_DROP_DEFAULT"] = json.dumps(
    {"conn_type": "generic", "extra": {"base_url": (_HOME / "file_drop").as_uri()}}
)

SANDBOX_TOKEN = "test-" + secrets.token_hex(8)


@pytest.fixture(scope="session")
def airflow_db() -> Iterator[None]:
    """A fresh Airflow metadata database for the whole session."""
    from airflow.utils import db

    db.resetdb(skip_init=False)
    yield


@pytest.fixture(scope="session")
def sandbox() -> Iterator[object]:
    """The local platform sandbox on loopback, and the platforms' default connections pointing at it."""
    from audience_sync.sandbox import start_sandbox

    with start_sandbox(port=0, access_token=SANDBOX_TOKEN) as srv:
        os.environ["AIRFLOW_CONN_META_DEFAULT"] = json.dumps(
            {"conn_type": "generic", "host": srv.url, "password": SANDBOX_TOKEN}
        )
        os.environ["AIRFLOW_CONN_GOOGLE_DATAMANAGER_DEFAULT"] = json.dumps(
            {"conn_type": "generic", "host": srv.grpc_target, "password": SANDBOX_TOKEN}
        )
        os.environ["AIRFLOW_CONN_GOOGLE_ADS_DEFAULT"] = json.dumps(
            {"conn_type": "generic", "host": srv.grpc_target, "password": SANDBOX_TOKEN}
        )
        os.environ["AIRFLOW_CONN_TIKTOK_DEFAULT"] = json.dumps(
            {"conn_type": "generic", "host": srv.url, "password": SANDBOX_TOKEN}
        )
        yield srv


@pytest.fixture
def drop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``file_drop_default`` pointing at a folder of the test's own (a file drop, e.g. the demo campaign's)."""
    base = tmp_path / "file_drop"
    monkeypatch.setenv(
        "AIRFLOW_CONN_FILE_DROP_DEFAULT",
        json.dumps({"conn_type": "generic", "extra": {"base_url": base.as_uri()}}),
    )
    return base


@pytest.fixture
def fresh_sandbox(sandbox: object) -> object:
    for app in sandbox.apps:  # type: ignore[attr-defined]
        app.reset()
    return sandbox


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}: the test session stops and its fixtures tear down")


def _keep_sigterm(set_handler: Callable[..., Any]) -> Callable[..., Any]:
    """``signal.signal`` that leaves SIGTERM to :func:`_interrupt`: Airflow's in-process task runs
    (``dag.test()``) install a SIGTERM handler that swallows the signal and leave it in place, and a
    SIGTERM arriving while it is installed would be lost."""

    def guarded(signum: int, handler: Any) -> Any:
        if signum == signal.SIGTERM and threading.current_thread() is threading.main_thread():
            return set_handler(signum, _interrupt)
        return set_handler(signum, handler)

    return guarded


# SIGTERM ends the session as Ctrl-C does, so the session's fixtures (PostgreSQL, the sandbox) are torn down
signal.signal(signal.SIGTERM, _interrupt)
signal.signal = _keep_sigterm(signal.signal)  # type: ignore[assignment]


@pytest.fixture(scope="session")
def postgres() -> Iterator[object]:
    """A throwaway PostgreSQL 15 server on loopback (started once per session)."""
    from tests.pg import PostgresServer

    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A clean state database URL on each engine."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/state.db"
        return
    import sqlalchemy as sa

    server = request.getfixturevalue("postgres")
    name = "s_" + secrets.token_hex(6)
    admin = sa.create_engine(server.admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f"CREATE DATABASE {name}"))
    yield server.url.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as c:
        c.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


def state_connection(state_url: str) -> tuple[dict[str, object], StateKeys | None]:
    """The ``audience_sync_db`` connection for a test state URL, and the keys configured on it.

    A PostgreSQL state needs configured keys; a SQLite state generates a key file beside itself (None).
    """
    import sqlalchemy as sa

    u = sa.make_url(state_url)
    if u.get_backend_name() == "sqlite":
        return {"conn_type": "sqlite", "host": u.database}, None
    keys = StateKeys.generate()
    conn = {
        "conn_type": "postgres",
        "host": u.host,
        "port": u.port,
        "login": u.username,
        "schema": u.database,
        "extra": keys.as_text(),
    }
    return conn, keys
