"""Run real Airflow components (api-server, scheduler) as subprocesses for integration tests.

:class:`AirflowStack` prepares its own ``AIRFLOW_HOME`` with a SQLite metadata database, serializes the
DAGs (``airflow dags reserialize``; no dag-processor), starts ``airflow api-server`` (which also serves
the Execution API that task processes talk to) and ``airflow scheduler`` (LocalExecutor, low
parallelism), each in its own process group, and stops them again — SIGTERM to the whole group,
SIGKILL after a grace period (the scheduler and its LocalExecutor workers may ignore SIGTERM). Every
wait is bounded. The public REST API is open (``simple_auth_manager_all_admins``): test use only.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import requests

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW = Path(sys.executable).parent / "airflow"

T = TypeVar("T")

#: variables of the pytest process that must not leak into the components
_DROP = ("AIRFLOW__CORE__UNIT_TEST_MODE", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW_HOME")


class ApiError(AssertionError):
    """The REST API answered with an HTTP error."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def free_port() -> int:
    """A currently free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], T | None], timeout: float, interval: float = 1.0) -> T:
    """Call ``check`` until it returns something other than ``None``; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = check()
        except (requests.RequestException, ValueError, ApiError) as exc:  # not up yet, DB busy, ...
            value, last_error = None, exc
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error})"
            )
        time.sleep(interval)


def stop_process_group(proc: subprocess.Popen[bytes], grace: float = 8.0) -> None:
    """SIGTERM the process group led by ``proc``; SIGKILL whatever is left after ``grace`` seconds."""
    pgid = proc.pid  # started with start_new_session=True: its own session and process group

    def group_alive() -> bool:
        proc.poll()  # reap the leader so a zombie does not count
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # pragma: no cover - pgid reused by someone else's process
            return False
        return True

    if not group_alive():
        return
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and group_alive():
        time.sleep(0.2)
    if group_alive():
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        pass


class AirflowStack:
    """api-server + scheduler on a throwaway SQLite metadata DB; use as a context manager.

    :param home: the ``AIRFLOW_HOME`` to create (logs, ``airflow.db``, component output ``*.out``).
    :param extra_env: added to the components' environment (connections, campaign folder, ...).
    :param parallelism: ``[core] parallelism`` of the LocalExecutor (task processes at once).
    :param scheduler: start the scheduler too (without it: the api-server alone, e.g. to serve a plugin).
    """

    def __init__(
        self,
        home: Path,
        extra_env: Mapping[str, str] | None = None,
        parallelism: int = 2,
        *,
        scheduler: bool = True,
    ) -> None:
        self.home = Path(home)
        self.scheduler = scheduler
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in _DROP}
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home}/airflow.db",
                "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": str(parallelism),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API_AUTH__JWT_SECRET": os.environ.get("AIRFLOW__API_AUTH__JWT_SECRET")
                or secrets.token_hex(64),
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            }
        )
        env.update(extra_env or {})
        self.env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    # ------------------------------------------------------------------ commands
    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``airflow <args>`` against this stack's metadata DB (stdout and stderr captured)."""
        return subprocess.run(
            [str(AIRFLOW), *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def cli_ok(self, *args: str, timeout: float = 120) -> str:
        r = self.cli(*args, timeout=timeout)
        assert r.returncode == 0, f"airflow {' '.join(args)} -> {r.returncode}\n{_tail(r.stdout + r.stderr)}"
        return r.stdout

    def _start(self, name: str, *args: str) -> None:
        out = (self.home / f"{name}.out").open("wb")
        try:
            self.procs[name] = subprocess.Popen(
                [str(AIRFLOW), *args],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # own process group: stopped as a whole
            )
        finally:
            out.close()  # the child holds its own descriptor

    # ----------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 120) -> AirflowStack:
        """Migrate the DB, start api-server and (unless left out) scheduler, serialize the DAGs, wait until
        healthy."""
        try:
            self.cli_ok("db", "migrate", timeout=timeout)
            self._start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(self.port))
            if self.scheduler:
                self._start("scheduler", "scheduler")
            self.cli_ok("dags", "reserialize", timeout=timeout)  # meanwhile the servers boot
            wait_for(f"{' and '.join(self.procs)} to be healthy", self._healthy, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _healthy(self) -> bool | None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"airflow {name} exited with {proc.returncode}:\n{self.output(name)}")
        r = requests.get(f"{self.url}/api/v2/monitor/health", timeout=5)
        if r.status_code != 200:
            return None
        body = r.json()
        ok = body["metadatabase"]["status"] == "healthy" and (
            not self.scheduler or body["scheduler"]["status"] == "healthy"
        )
        return True if ok else None

    def stop(self) -> None:
        for proc in self.procs.values():
            stop_process_group(proc)

    def __enter__(self) -> AirflowStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def output(self, name: str, chars: int = 4000) -> str:
        path = self.home / f"{name}.out"
        return _tail(path.read_text(errors="replace"), chars) if path.exists() else ""

    def outputs(self) -> str:
        return "\n".join(f"--- {n} ---\n{self.output(n)}" for n in self.procs)

    # ------------------------------------------------------------------ REST API
    def api(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        """Call the public REST API (``/api/v2`` + path); JSON in and out; raise on an HTTP error."""
        r = requests.request(method, f"{self.url}/api/v2{path}", json=body, params=params or None, timeout=30)
        if r.status_code >= 400:
            raise ApiError(f"{method} {path} -> {r.status_code}: {r.text[:2000]}", r.status_code)
        return r.json() if r.content else None

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.api("GET", f"/dags/{q(dag_id)}/dagRuns", limit=100, order_by="logical_date")["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        tis = self.api("GET", f"/dags/{q(dag_id)}/dagRuns/{q(run_id)}/taskInstances")["task_instances"]
        return {t["task_id"]: t["state"] for t in tis}

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        value = self.api(
            "GET", f"/dags/{q(dag_id)}/dagRuns/{q(run_id)}/taskInstances/{q(task_id)}/xcomEntries/{q(key)}"
        )["value"]
        return json.loads(value) if isinstance(value, str) else value

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        """The task's log file as written by the worker under ``$AIRFLOW_HOME/logs``."""
        path = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        return (path / f"attempt={try_number}.log").read_text(errors="replace")


def q(part: str) -> str:
    return quote(part, safe="")


def _tail(text: str, chars: int = 4000) -> str:
    return text if len(text) <= chars else "…" + text[-chars:]
