"""A throwaway PostgreSQL server on loopback for the test suite (initdb + pg_ctl, PostgreSQL 15 binaries)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def find_pg_bin() -> Path | None:
    """The directory holding initdb and pg_ctl, or None."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for cand in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(cand, "initdb").exists():
            return Path(cand)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """Start with :meth:`start`, stop with :meth:`stop`; :attr:`url` is a SQLAlchemy URL to database ``test``."""

    def __init__(self) -> None:
        self.bin = find_pg_bin()
        if self.bin is None:
            raise RuntimeError(
                "PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's postgresql package "
                "(.ci/run does this)."
            )
        self.dir = Path(tempfile.mkdtemp(prefix="audience-sync-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.user = "audience_sync"
        self.as_postgres = os.geteuid() == 0  # initdb refuses to run as root

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def start(self) -> PostgresServer:
        if self.as_postgres:
            shutil.chown(self.dir, "postgres")
            os.chmod(self.dir, 0o755)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", self.user, "-E", "UTF8")
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.dir / "pg.log"), "-w", "start")
        import sqlalchemy as sa

        deadline = time.monotonic() + 30
        admin = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        while True:
            try:
                with admin.connect() as c:
                    c.execute(sa.text("CREATE DATABASE test"))
                break
            except sa.exc.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        admin.dispose()
        return self

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/postgres"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/test"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    @classmethod
    def stop_dir(cls, directory: Path) -> None:
        """Stop the server another process started in ``directory`` and remove it."""
        server = cls.__new__(cls)
        server.bin, server.dir, server.data = find_pg_bin(), directory, directory / "data"
        server.as_postgres = os.geteuid() == 0
        server.stop()
