"""The contract harness of ``file_drop``: the destination over a real Airflow ``ObjectStoragePath`` on the local
filesystem, the platform's view being the files a consumer reads (``tests/file_drop_reader.py``).

A local disk has no faults to ask for, so the path's filesystem is fsspec's ``LocalFileSystem`` with a thin
wrapper (:class:`DropFileSystem`, attached to Airflow's object storage under a connection id of its own):
it logs every call the destination makes (the request log), and injects what a remote store does
(S3, GCS, sftp, NFS): errno errors, a connection cut before or after the call took effect, a stalled
call, credentials the store refuses (``EACCES``) and a store nobody answers on (``ECONNREFUSED``).

What has no equivalent on a file drop is declared, not faked: no processing after a write
(``processes_synchronously``), one folder per name (no duplicate names), no paged listing (finding a
name reads its folder), no value sent unhashed.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from airflow.sdk import ObjectStoragePath
from airflow.sdk.io import attach
from fsspec.implementations.local import LocalFileSystem

from audience_sync.core.contract import Destination, Upload
from audience_sync.destinations.file_drop import COLUMNS, FileDropDestination
from audience_sync.destinations.file_drop_files import folder_name
from tests import file_drop_reader
from tests.contract.conftest import ErrorCase, Harness, Member, _accounts

_conn_ids = itertools.count()


class StoreLog:
    """What every filesystem of one harness shares: the faults to inject and the request log."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.faults: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []

    def next_fault(self) -> dict[str, Any] | None:
        with self.lock:
            for fault in self.faults:
                if fault["skip"]:
                    fault["skip"] -= 1
                    continue
                fault["times"] -= 1
                if not fault["times"]:
                    self.faults.remove(fault)
                return fault
        return None

    def record(self, method: str, path: str) -> dict[str, Any]:
        entry = {"method": method, "path": path, "status": None}
        with self.lock:
            self.requests.append(entry)
        return entry


class _ApplyThenDrop:
    """A file opened for writing whose close writes it, then loses the answer."""

    def __init__(self, f: Any) -> None:
        self.f = f

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)

    def __enter__(self) -> _ApplyThenDrop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.f.close()
        raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")


class DropFileSystem(LocalFileSystem):
    """``LocalFileSystem`` whose outermost calls are logged and may fail as a remote store's do."""

    cachable = False  # one instance per destination: its credentials and reachability are its own
    CALLS = ("open", "exists", "mkdir", "makedirs", "mv", "rm", "rm_file", "info", "ls", "isdir", "isfile")

    def __init__(self, log: StoreLog, *, token: str, expected: str, unreachable: bool = False) -> None:
        super().__init__()
        self.store_log, self.token, self.expected, self.unreachable = log, token, expected, unreachable
        self.local = threading.local()

    def _request(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        run = getattr(LocalFileSystem, method)
        if getattr(self.local, "inside", False):  # a call made by another call: not a request of its own
            return run(self, *args, **kwargs)
        fault = self.store_log.next_fault()
        if fault and fault["action"] == "delay":
            time.sleep(fault["delay"])  # the store holds the request, then handles it
        entry = self.store_log.record(method, str(args[0]) if args else "")
        if self.unreachable:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        if self.token != self.expected:
            entry["status"] = 403
            raise PermissionError(errno.EACCES, "Permission denied")
        if fault and fault["action"] == "error":
            entry["status"] = fault["code"]
            raise OSError(fault["code"], os.strerror(fault["code"]))
        if fault and fault["action"] == "drop" and not fault["apply"]:
            entry["fault"] = "drop"
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        self.local.inside = True
        try:
            result = run(self, *args, **kwargs)
        except OSError as exc:  # the store's answer: not there (404), or it failed
            entry["status"] = 404 if isinstance(exc, FileNotFoundError) else 500
            raise
        finally:
            self.local.inside = False
        if fault and fault["action"] == "drop":  # applied, and the answer is lost
            entry["fault"] = "drop"
            if method == "open" and "w" in str(kwargs.get("mode", args[1] if len(args) > 1 else "rb")):
                return _ApplyThenDrop(result)
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        entry["status"] = 200
        return result


def _watched(method: str) -> Any:
    def call(self: DropFileSystem, *args: Any, **kwargs: Any) -> Any:
        return self._request(method, args, kwargs)

    call.__name__ = method
    return call


for _method in DropFileSystem.CALLS:
    setattr(DropFileSystem, _method, _watched(_method))


class FileDropHarness(Harness):
    platform = "file_drop"
    max_batch_rows = 10_000
    list_page_size = 1  # no paged listing (lists_audiences_in_pages is False)
    lists_audiences_in_pages = False
    schema = ("email_sha256", "phone_sha256")
    hashed_keys = COLUMNS
    # code: the errno the store's call failed with
    transient_errors = (
        ErrorCase(errno.ECONNRESET, name="ECONNRESET"),
        ErrorCase(errno.ETIMEDOUT, name="ETIMEDOUT"),
        ErrorCase(errno.EIO, name="EIO"),
        ErrorCase(errno.EBUSY, name="EBUSY"),
        ErrorCase(errno.ESTALE, name="ESTALE"),
    )
    auth_error = ErrorCase(errno.EACCES, says=("permission", "file_drop_default"), name="EACCES")
    permanent_errors = (
        auth_error,
        ErrorCase(errno.EPERM, says=auth_error.says, name="EPERM"),
        ErrorCase(errno.ENOSPC, says=("no space", "file_drop_default"), name="ENOSPC"),
        ErrorCase(errno.EDQUOT, says=("quota",), name="EDQUOT"),
        ErrorCase(errno.EROFS, says=("read-only", "writable"), name="EROFS"),
    )
    processes_synchronously = True  # a written file is the hand-off; nothing processes it afterwards
    offline_calls = ("open_upload",)  # the handle comes from the key
    duplicate_names: ClassVar[bool] = False  # one folder per name
    unique_names: ClassVar[bool] = True

    def __init__(self, srv: Any, account: str) -> None:
        self.base = Path(os.environ["AIRFLOW_HOME"]) / "file_drop_contract" / secrets.token_hex(4)
        self.base.mkdir(parents=True)
        self.account = account
        self.other_account = f"act_{next(_accounts)}"
        self.token = "drop-" + secrets.token_hex(8)
        self.log = StoreLog()
        self.destination = self.make_destination()

    def make_destination(
        self, *, token: str | None = None, timeout: float = 10, unreachable: bool = False
    ) -> FileDropDestination:
        fs = DropFileSystem(self.log, token=token or self.token, expected=self.token, unreachable=unreachable)
        conn_id = f"file_drop_contract_{next(_conn_ids)}"
        attach("file", conn_id=conn_id, fs=fs)
        root = ObjectStoragePath(f"file://{self.base}", conn_id=conn_id)
        return FileDropDestination(root, self.account, timeout=timeout)

    def segment(self, audience_id: str, account: str | None = None) -> Path:
        return self.base / (account or self.account) / audience_id

    def members(self, audience_id: str) -> set[Member]:
        return file_drop_reader.membership(self.segment(audience_id))

    def delete_audience(self, audience_id: str) -> None:
        shutil.rmtree(self.segment(audience_id))

    def create_by_hand(
        self, name: str, *, created_time: int | None = None, other_account: bool = False
    ) -> str:
        audience_id = folder_name(name)
        segment = self.segment(audience_id, self.other_account if other_account else None)
        segment.mkdir(parents=True)
        about = {"name": name, "created_time": created_time or int(time.time())}
        (segment / "audience.json").write_text(json.dumps(about))
        return audience_id

    def _fault(self, action: str, *, skip: int = 0, times: int = 1, **what: Any) -> None:
        with self.log.lock:
            self.log.faults.append({"action": action, "skip": skip, "times": times, **what})

    def inject_error(self, case: ErrorCase, *, skip: int = 0, times: int = 1) -> None:
        self._fault("error", code=case.code, skip=skip, times=times)

    def inject_drop(self, *, apply: bool) -> None:
        self._fault("drop", apply=apply)

    def inject_delay(self, seconds: float) -> None:
        self._fault("delay", delay=seconds)

    def another_destination(self, *, token: str | None = None, timeout: float | None = None) -> Destination:
        return self.make_destination(token=token, timeout=timeout or 10)

    def unreachable(self) -> Destination:
        return self.make_destination(timeout=5, unreachable=True)

    def request_mark(self) -> int:
        return len(self.log.requests)

    def requests_since(self, mark: int) -> list[dict[str, Any]]:
        with self.log.lock:
            return [dict(r) for r in self.log.requests[mark:]]

    def upload_received(self, upload: Upload) -> int:
        run = upload.handle.split("/", 1)[0]
        manifest = file_drop_reader.read_json(
            self.segment(upload.audience_id) / "runs" / run / "manifest.json"
        )
        entry = [u for u in (manifest or {}).get("uploads", []) if u["upload"] == upload.handle]
        return int(entry[0]["rows"]) if entry else 0

    def set_processing_delay(self, seconds: float) -> None:
        """Nothing processes a written file: the suite checks it is done at once all the same."""

    def reset_faults(self) -> None:
        with self.log.lock:
            self.log.faults.clear()
