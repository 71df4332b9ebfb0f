"""Airflow hook for the file drop: the base ``ObjectStoragePath`` from a connection."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook, ObjectStoragePath
from airflow.sdk.exceptions import AirflowException, AirflowNotFoundException

from audience_sync.destinations.file_drop import DEFAULT_TIMEOUT, FileDropDestination

#: extras a file drop connection may carry (documented on :class:`FileDropHook`)
EXTRAS = ("base_url", "storage_conn_id", "timeout")
_EXAMPLE = '{"conn_type": "generic", "extra": {"base_url": "s3://my-bucket/audiences", "storage_conn_id": "aws_default"}}'


class FileDropHook(BaseHook):
    """The storage the files go to, from an Airflow connection (default ``file_drop_default``).

    The connection may have any conn_type (env variable, secrets backend or UI):

    - extra ``base_url`` (or ``host``): where the recipients' folders go, as an ``ObjectStoragePath`` URL
      with its scheme: ``file:///<absolute folder>``, ``s3://<bucket>/<prefix>``, ``gs://<bucket>/<prefix>``,
      ``sftp://<host>/<folder>``. Required.
    - extra ``storage_conn_id``: the connection ``ObjectStoragePath`` authenticates with (``aws_default``,
      ``google_cloud_default``, an sftp connection); none for ``file://``. The provider of the scheme
      must be installed (``apache-airflow-providers-amazon``, ``-google``, ``-sftp``).
    - extra ``timeout``: seconds one call may take on the store before it fails as transient (default 600).

    .. code-block:: json

        {"base_url": "s3://my-bucket/audiences", "storage_conn_id": "aws_default", "timeout": 600}
    """

    conn_name_attr = "file_drop_conn_id"
    default_conn_name = "file_drop_default"
    conn_type = "generic"
    hook_name = "File drop (audience-sync)"

    def __init__(self, file_drop_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.file_drop_conn_id = file_drop_conn_id

    @cached_property
    def settings(self) -> dict[str, Any]:
        name = self.file_drop_conn_id
        try:
            conn = self.get_connection(name)
        except AirflowNotFoundException:
            raise AirflowException(
                f"Airflow connection '{name}' is not defined: define it with the base URL of the drop, "
                f"e.g. AIRFLOW_CONN_{name.upper()}='{_EXAMPLE}'."
            ) from None
        extras = conn.extra_dejson or {}
        unknown = set(extras) - set(EXTRAS)
        if unknown:
            raise AirflowException(
                f"Airflow connection '{name}' has unknown extras {sorted(unknown)}; allowed: {', '.join(EXTRAS)}."
            )
        base = str(extras.get("base_url") or conn.host or "").strip()
        if "://" not in base:
            raise AirflowException(
                f"Airflow connection '{name}' has no base URL with a scheme ({base or 'none'}): set its extra "
                "base_url to file:///<absolute folder>, s3://<bucket>/<prefix>, gs://<bucket>/<prefix> or "
                "sftp://<host>/<folder>."
            )
        try:
            timeout = float(extras.get("timeout") or DEFAULT_TIMEOUT)
        except (TypeError, ValueError):
            timeout = 0.0
        if timeout <= 0:
            raise AirflowException(
                f"Airflow connection '{name}' has extra timeout={extras.get('timeout')!r}; set it to a "
                f"number of seconds, or remove it for the default ({DEFAULT_TIMEOUT:g})."
            )
        return {
            "base_url": base,
            "storage_conn_id": extras.get("storage_conn_id") or None,
            "timeout": timeout,
        }

    def get_conn(self) -> ObjectStoragePath:
        """The base path, authenticated with the connection's ``storage_conn_id``."""
        return ObjectStoragePath(self.settings["base_url"], conn_id=self.settings["storage_conn_id"])

    def get_destination(self, recipient: str, **options: Any) -> FileDropDestination:
        """The destination for one recipient (``options``: the campaign's ``files`` and ``compression``)."""
        return FileDropDestination(
            self.get_conn(),
            recipient,
            conn_label=self.file_drop_conn_id,
            timeout=self.settings["timeout"],
            **options,
        )


def file_drop_destination(conn_id: str, account: str, **options: Any) -> FileDropDestination:
    """The destination factory the file drop's registration names (``audience_sync.platforms.file_drop``)."""
    return FileDropHook(conn_id).get_destination(account, **options)
