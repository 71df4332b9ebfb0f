"""Airflow hook that opens the audience-sync state database."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException, AirflowNotFoundException

from audience_sync.core.ledger import StateStore
from audience_sync.core.settings import settings

DEFAULT_CONN_ID = "audience_sync_db"


def airflow_home() -> Path:
    return settings().airflow_home


def default_sqlite_path() -> Path:
    return settings().state_dir / "state.db"


class AudienceSyncStateHook(BaseHook):
    """The registry, member ledger and metrics database.

    Connection ``audience_sync_db`` (any source: env variable, secrets backend, UI):

    - conn_type ``sqlite``: ``host`` is the database file path.
    - conn_type ``postgres``/``postgresql``: host, port, login, password and ``schema`` (the database name).
      Extras: ``{"driver": "psycopg2"}`` (default) or ``"psycopg"``.

    When the connection does not exist, a SQLite file ``$AIRFLOW_HOME/audience_sync/state.db`` is used.
    Tables are created on first use.
    """

    conn_name_attr = "state_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = "generic"
    hook_name = "audience-sync state database"

    def __init__(self, state_conn_id: str = DEFAULT_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state_conn_id = state_conn_id

    def url(self) -> sa.URL:
        try:
            conn = self.get_connection(self.state_conn_id)
        except AirflowNotFoundException:
            path = default_sqlite_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            return sa.URL.create("sqlite", database=str(path))
        kind = (conn.conn_type or "").lower()
        if kind == "sqlite":
            if not conn.host:
                raise AirflowException(
                    f"Connection '{self.state_conn_id}' (sqlite) needs the file path as host."
                )
            Path(conn.host).parent.mkdir(parents=True, exist_ok=True)
            return sa.URL.create("sqlite", database=conn.host)
        if kind in ("postgres", "postgresql"):
            driver = (conn.extra_dejson or {}).get("driver", "psycopg2")
            return sa.URL.create(
                f"postgresql+{driver}",
                username=conn.login or None,
                password=conn.password or None,
                host=conn.host or None,
                port=conn.port or None,
                database=conn.schema or None,
            )
        raise AirflowException(
            f"Connection '{self.state_conn_id}' has conn_type {conn.conn_type!r}; use 'sqlite' or 'postgres'."
        )

    @cached_property
    def store(self) -> StateStore:
        return StateStore(self.url())

    def get_conn(self) -> StateStore:
        return self.store
