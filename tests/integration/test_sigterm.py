"""SIGTERM stops a test session and the services it started (PostgreSQL), even while a test has a
SIGTERM handler of its own installed (as Airflow's ``dag.test()`` leaves one)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pg import PostgresServer

ROOT = Path(__file__).resolve().parents[2]


def _postgres_running(data_dir: str) -> bool:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return any(
        line.startswith(("postgres", "/usr/lib/postgresql")) and data_dir in line for line in out.splitlines()
    )


@pytest.mark.timeout(240)
def test_sigterm_stops_the_session_and_its_postgres(tmp_path: Path) -> None:
    probe = tmp_path / "probe.txt"
    env = {**os.environ, "SIGTERM_PROBE_FILE": str(probe)}
    for k in ("AIRFLOW_HOME", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
        env.pop(k, None)  # the session makes its own, as any pytest run does
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/fixtures/sigterm_probe.py"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    pg_dir = ""
    try:
        deadline = time.monotonic() + 120
        while not probe.exists():
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the probe never started PostgreSQL"
            time.sleep(0.2)
        pg_dir = probe.read_text()
        assert _postgres_running(pg_dir)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        if pg_dir and _postgres_running(pg_dir):  # the session failed to stop it: do not leave it behind
            PostgresServer.stop_dir(Path(pg_dir))
    assert proc.returncode != 0, out[-3000:]  # interrupted, not passed
    assert not Path(pg_dir).exists()  # the fixture's teardown ran
    assert not _postgres_running(pg_dir)
