"""Airflow hook that opens the audience-sync state database with its keys."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowNotFoundException

from audience_sync.core.keys import KEY_FIELDS, StateKeyError, StateKeys, load_key_file
from audience_sync.core.ledger import StateStore
from audience_sync.core.settings import settings

DEFAULT_CONN_ID = "audience_sync_db"


def airflow_home() -> Path:
    return settings().airflow_home


def default_sqlite_path() -> Path:
    return settings().state_dir / "state.db"


def key_file_beside(database: str | Path) -> Path:
    """The generated key file of a SQLite state: ``<database>.keys``, mode 0600."""
    p = Path(database)
    return p.with_name(p.name + ".keys")


class AudienceSyncStateHook(BaseHook):
    """The registry, member ledger and metrics database, and the keys its member ids are made with.

    Connection ``audience_sync_db`` (any source: env variable, secrets backend, UI):

    - conn_type ``sqlite``: ``host`` is the database file path.
    - conn_type ``postgres``/``postgresql``: host, port, login, password and ``schema`` (the database name).
      Extras: ``{"driver": "psycopg2"}`` (default) or ``"psycopg"``.

    When the connection does not exist, a SQLite file ``$AIRFLOW_HOME/audience_sync/state.db`` is used.
    Tables are created on first use.

    Keys (see ``core/keys.py``), first match wins:

    1. extras ``member_id_key`` and ``encryption_key``: each 32 random bytes as URL-safe base64 (e.g.
       ``Fernet.generate_key()``); keep the connection in a secrets backend.
    2. extra ``key_file``: a JSON key file with those two fields, generated (mode 0600) on first use;
       every worker must see the same file (e.g. a shared config volume).
    3. neither, SQLite state: ``<database file>.keys`` beside the database, generated on first use.
       PostgreSQL state without keys fails: a key generated on one worker would not be on the others.

    A malformed key, or a key the database was not created with, fails the task at once (no retries)
    with the connection, the field and the fix. Keys are never logged.
    """

    conn_name_attr = "state_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = "generic"
    hook_name = "audience-sync state database"

    def __init__(self, state_conn_id: str = DEFAULT_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state_conn_id = state_conn_id

    @cached_property
    def _conn(self) -> Any:
        """The connection, or None when it does not exist (embedded SQLite default)."""
        try:
            return self.get_connection(self.state_conn_id)
        except AirflowNotFoundException:
            return None

    def url(self) -> sa.URL:
        conn = self._conn
        if conn is None:
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
    def keys(self) -> StateKeys:
        """The state's keys (see the class docstring for where they come from)."""
        try:
            return self._load_keys()
        except StateKeyError as exc:
            raise AirflowFailException(str(exc)) from None

    def _load_keys(self) -> StateKeys:
        extras = (self._conn.extra_dejson or {}) if self._conn is not None else {}
        if any(extras.get(f) for f in KEY_FIELDS):
            return StateKeys.from_text(extras, f"Airflow connection '{self.state_conn_id}' extra")
        if extras.get("key_file"):
            return load_key_file(extras["key_file"])
        url = self.url()
        if url.get_backend_name() == "sqlite" and url.database:
            return load_key_file(key_file_beside(url.database))
        raise StateKeyError(
            f"Airflow connection '{self.state_conn_id}' ({url.get_backend_name()}) has no state keys. Fix: set "
            "its extras member_id_key and encryption_key (32 random bytes each as URL-safe base64, e.g. "
            "Fernet.generate_key()), or key_file (a path every worker shares; generated on first use)."
        )

    @cached_property
    def store(self) -> StateStore:
        keys = self.keys
        try:
            return StateStore(self.url(), keys=keys)
        except StateKeyError as exc:
            raise AirflowFailException(f"Airflow connection '{self.state_conn_id}': {exc}") from None

    def get_conn(self) -> StateStore:
        return self.store
