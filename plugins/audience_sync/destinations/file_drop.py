"""The file drop: per run and segment, CSV files of hashed identifiers and a manifest, on any storage path.

The storage is an Airflow ``ObjectStoragePath`` (``file://``, ``s3://``, ``gs://``, ``sftp://``...) built by
the hook; this module only uses its path API, so it imports no Airflow. Layout under the base URL::

    <recipient>/<segment>/audience.json              the "audience": its name and creation time
    <recipient>/<segment>/current.json               the newest commit: sequence, run, membership file
    <recipient>/<segment>/runs/<run>/manifest.json   what the run wrote: files, checksums, counts
    <recipient>/<segment>/runs/<run>/members.csv.gz  (files: membership) the membership after the run
    <recipient>/<segment>/runs/<run>/adds.csv.gz     (files: changes) the run's adds, removes.csv.gz its
                                                     removes, members.csv.gz a replace's whole group
    <recipient>/<segment>/.staging/                  batches of uploads not finished yet

Folder names are :func:`~audience_sync.destinations.file_drop_files.folder_name` of the segment name and
the run id. An upload (one operation of one run) sends its batches as staged part files; ``finish_upload``
commits it: the data file and then the manifest are written to a temporary name and renamed over the old
one, so a re-run of a run overwrites its own files atomically and never touches another run's. A committed
upload is applied (``processes_synchronously``): the ledger counts a written file as sent.

"Full membership" (``files: membership``) is the segment's membership on the drop: the newest commit's
members file (``current.json`` names it) with the upload's rows added, removed or (replace) substituted.
The engine sends a mirror's removes and adds of a run as two uploads, so the run's members file and
manifest are written twice, the second time with both applied.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import errno
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from audience_sync.core.contract import (
    UPLOAD_OPS,
    Destination,
    PlatformAudience,
    ProcessingStatus,
    Upload,
    UploadResult,
    key_run,
)
from audience_sync.core.errors import DestinationError, PermanentDestinationError, TransientDestinationError
from audience_sync.destinations import file_drop_files as ff
from audience_sync.platforms.file_drop import COMPRESSIONS, FILE_DROP, FILE_LAYOUTS

log = logging.getLogger(__name__)

T = TypeVar("T")

#: the file columns, in the rules' key order (every value a SHA-256)
COLUMNS: tuple[str, ...] = tuple(k for rule in FILE_DROP.rules.fields.values() for k in rule.keys)
#: column -> the identifier it hashes (the manifest's ``hashing``)
IDENTIFIER_OF = {k: ident for ident, rule in FILE_DROP.rules.fields.items() for k in rule.keys}
DEFAULT_TIMEOUT = 600.0

#: errors a retry can fix: the store is busy, unreachable or the connection broke (NFS, sftp, S3 5xx)
TRANSIENT_ERRNOS = {
    errno.EAGAIN,
    errno.EBUSY,
    errno.EIO,
    errno.ETIMEDOUT,
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.EPIPE,
    errno.ENETUNREACH,
    errno.EHOSTUNREACH,
    errno.ESTALE,
}

# storage calls run in these threads so that a hung store (a stalled sftp session, an unreachable mount)
# fails the call after ``timeout`` as a transient error instead of holding the task forever
_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="file-drop")


class FileDropDestination(Destination):
    """One recipient's folder under a storage path.

    :param root: the base ``ObjectStoragePath`` (from the connection); the recipient's folder is under it.
    :param recipient: the folder name (the campaign's ``recipient``), the destination's account.
    :param files: ``membership`` or ``changes`` (see the module docstring).
    :param compression: ``gzip`` or ``none``.
    :param conn_label: the Airflow connection, named in error messages so operators know what to fix.
    :param timeout: seconds one call may take on the store before it fails as transient.
    """

    platform = FILE_DROP.name
    max_batch_rows = FILE_DROP.max_batch_rows
    max_remove_rows = FILE_DROP.max_remove_rows
    processes_synchronously = True

    def __init__(
        self,
        root: Any,
        recipient: str,
        *,
        files: str = "membership",
        compression: str = "gzip",
        conn_label: str = "file_drop_default",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if files not in FILE_LAYOUTS or compression not in COMPRESSIONS:
            raise ValueError(
                f"file drop: files={files!r}, compression={compression!r}; use files one of "
                f"{', '.join(FILE_LAYOUTS)} and compression one of {', '.join(COMPRESSIONS)}"
            )
        self.root = root
        self.account = FILE_DROP.normalise_account(recipient)
        self.folder = root / self.account
        self.files = files
        self.compression = compression
        self.conn_label = conn_label
        self.timeout = timeout
        self.requests_made = 0

    # ------------------------------------------------------------ audiences
    def find_audiences(self, name: str) -> list[PlatformAudience]:
        """The segment's folder, if it exists: a name has one folder, so never duplicates."""
        found = self._io("find audience", lambda: self._read_audience(ff.folder_name(name)))
        return [found] if found is not None and found.name == name else []

    def get_audience(self, audience_id: str) -> PlatformAudience | None:
        return self._io(f"read audience {audience_id}", lambda: self._read_audience(audience_id))

    def create_audience(self, name: str, description: str) -> PlatformAudience:
        """Write the segment's ``audience.json``; a segment that has one already keeps it (one folder per name)."""
        audience_id = ff.folder_name(name)

        def create() -> PlatformAudience:
            existing = self._read_audience(audience_id)
            if existing is not None:
                return existing
            segment = self.folder / audience_id
            (segment / ff.STAGING_DIR).mkdir(parents=True, exist_ok=True)
            created = int(time.time())
            about = {"format": ff.FORMAT, "name": name, "description": description, "created_time": created}
            self._write_atomic(segment / ff.AUDIENCE_FILE, _json(about))
            return PlatformAudience(id=audience_id, name=name, created_time=created, size=0)

        return self._io(f"create audience {audience_id}", create)

    # ------------------------------------------------------------ the upload lifecycle
    def open_upload(self, audience_id: str, op: str, *, key: str, estimated_total: int) -> Upload:
        """The handle is ``<run folder>/<op>-<digest of key>``, from the key alone: nothing to ask the store."""
        if op not in UPLOAD_OPS:
            raise ValueError(f"unknown upload operation {op!r}; use one of {', '.join(UPLOAD_OPS)}")
        run = ff.folder_name(key_run(key) or key)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return Upload(audience_id, op, f"{run}/{op}-{digest}", estimated_total)

    def send_batch(
        self, upload: Upload, seq: int, schema: Sequence[str], rows: Sequence[Sequence[str]], *, last: bool
    ) -> UploadResult:
        """Stage the batch's valid rows as one part file (one write; a re-sent batch overwrites its part).

        A part is read only once its batch was answered, and the engine re-sends every unanswered batch
        before it finishes the upload, so a part cut short by a failed write is always rewritten.
        """
        limit = self.max_remove_rows if upload.op == "remove" else self.max_batch_rows
        if len(rows) > limit:
            raise ValueError(f"batch of {len(rows)} rows exceeds the limit of {limit}")
        unknown = [k for k in schema if k not in COLUMNS]
        if unknown:
            raise ValueError(f"file drop columns {unknown} unknown; the files have {', '.join(COLUMNS)}")
        bad = ff.invalid_rows(schema, rows)
        skip = set(bad)
        data = ff.encode_csv(schema, (r for i, r in enumerate(rows) if i not in skip), compressed=False)
        part = self._part(upload, seq)
        self._io(f"{upload.op} batch {seq}", lambda: self._write_part(part, data))
        return UploadResult(received=len(rows), invalid=len(bad), invalid_rows=bad)

    def finish_upload(self, upload: Upload, batches: int) -> None:
        """Commit the upload: its data file, ``current.json``, then the run's manifest (the commit mark)."""
        self._io(f"write {upload.op} files", lambda: self._commit(upload, batches))

    def upload_status(self, upload: Upload) -> ProcessingStatus:
        """Done once the run's manifest lists the upload."""
        run_dir = self._run_dir(upload)
        manifest = self._io("read manifest", lambda: self._read_json(run_dir / ff.MANIFEST_FILE))
        entry = _entry(manifest, upload.handle)
        if entry is None:
            return ProcessingStatus(
                done=False, detail=f"upload {upload.handle}: batches staged, its files not written yet"
            )
        return ProcessingStatus(done=True, progress=100, detail=f"written to {entry['file']}")

    def current_members(self, audience_id: str) -> set[ff.Member] | None:
        """The segment's membership on the drop (``files: membership``), read back from its files; None
        for a ``changes`` drop (the consumer's replay of the changes files is its membership)."""
        segment = self.folder / audience_id
        return self._io("read membership", lambda: self._read_members(segment))

    # ------------------------------------------------------------ commit
    def _commit(self, upload: Upload, batches: int) -> None:
        segment, run_dir = self.folder / upload.audience_id, self._run_dir(upload)
        manifest = self._read_json(run_dir / ff.MANIFEST_FILE)
        if _entry(manifest, upload.handle) is None:
            rows = [m for seq in range(1, batches + 1) for m in self._read_part(upload, seq)]
            run_dir.mkdir(parents=True, exist_ok=True)
            self._write_files(segment, run_dir, upload, rows, manifest)
        for seq in range(1, batches + 1):
            part = self._part(upload, seq)
            if part.exists():
                part.unlink()

    def _write_files(
        self, segment: Any, run_dir: Any, upload: Upload, rows: list[ff.Member], manifest: dict | None
    ) -> None:
        current = self._read_json(segment / ff.CURRENT_FILE) or {"sequence": 0}
        sequence = int(current["sequence"]) + 1
        ext, run = ff.extension(self.compression), run_dir.name
        if self.files == "membership":
            before = self._read_members(segment, current) or set()
            members = ff.apply(before, upload.op, rows)
            name, content, out = "members" + ext, "members", sorted(members)
        else:
            content = ff.CONTENT_OF_OP[upload.op]
            taken = {u["file"] for u in (manifest or {}).get("uploads", []) if u["upload"] != upload.handle}
            name = content + ext
            if name in taken:  # a second upload of one operation in a run (e.g. after rejected rows)
                name = f"{content}-{upload.handle.rsplit('-', 1)[1][:8]}{ext}"
            members, out = None, sorted(set(rows))
        data = ff.encode_csv(COLUMNS, out, compressed=self.compression == "gzip")
        self._write_atomic(run_dir / name, data)
        pointer: dict[str, Any] = {"sequence": sequence, "run": run}
        if members is not None:
            pointer.update(file=f"runs/{run}/{name}", members=len(members))
        # current.json before the manifest: if the manifest is lost, re-committing applies the same rows
        # again, which changes nothing (add, remove and replace are idempotent on a set)
        self._write_atomic(segment / ff.CURRENT_FILE, _json(pointer))
        file = {
            "name": name,
            "content": content,
            "rows": len(out),
            "bytes": len(data),
            "sha256": ff.sha256_hex(data),
        }
        entry = {
            "upload": upload.handle,
            "op": upload.op,
            "rows": len(rows),
            "sequence": sequence,
            "file": name,
        }
        self._write_atomic(
            run_dir / ff.MANIFEST_FILE, _json(self._manifest(segment, run, manifest, file, entry, members))
        )
        log.info(
            "file drop %s: %s %s rows of upload %s, %s", run_dir.name, content, len(out), upload.handle, name
        )

    def _manifest(
        self, segment: Any, run: str, old: dict | None, file: dict, entry: dict, members: set | None
    ) -> dict[str, Any]:
        uploads = [u for u in (old or {}).get("uploads", []) if u["upload"] != entry["upload"]] + [entry]
        files = [f for f in (old or {}).get("files", []) if f["name"] != file["name"]] + [file]
        counts = {c: sum(u["rows"] for u in uploads if u["op"] == op) for op, c in _COUNTED.items()}
        if members is not None:
            counts["members"] = len(members)
        return {
            "format": ff.FORMAT,
            "segment_name": ff.text_of_folder(segment.name),
            "recipient": self.account,
            "run": ff.text_of_folder(run),
            "files_layout": self.files,
            "compression": self.compression,
            "columns": list(COLUMNS),
            "hashing": {"algorithm": "sha256", "rules": FILE_DROP.rules.name, "identifiers": IDENTIFIER_OF},
            "files": files,
            "uploads": uploads,
            "counts": counts,
            "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }

    # ------------------------------------------------------------ storage
    def _io(self, what: str, fn: Callable[[], T]) -> T:
        """One call on the store, in a worker thread with the timeout; its errors mapped for the engine."""
        self.requests_made += 1
        future = _POOL.submit(fn)
        try:
            return future.result(timeout=self.timeout)
        except DestinationError:
            raise
        except OSError as exc:
            if isinstance(exc, TimeoutError) and not future.done():  # ours, not the store's ETIMEDOUT
                raise TransientDestinationError(
                    f"file drop {what}: no answer from the store of connection '{self.conn_label}' within "
                    f"{self.timeout:g} s; will retry"
                ) from None
            raise self._classify(exc, what) from None

    def _classify(self, exc: OSError, what: str) -> DestinationError:
        code = exc.errno
        detail = f"file drop {what} failed: {type(exc).__name__} {exc.strerror or exc} (errno {code})"
        where = f"the base URL of connection '{self.conn_label}'"
        if code in TRANSIENT_ERRNOS or isinstance(exc, (ConnectionError, TimeoutError)) or code is None:
            return TransientDestinationError(detail + "; will retry with backoff", code=code)
        if code in (errno.EACCES, errno.EPERM):
            fix = (
                f"No permission to write under {where}. Grant the credentials of its storage_conn_id "
                "(or the worker's user, for file://) write access to the folder, or fix those credentials."
            )
        elif code in (errno.ENOSPC, errno.EDQUOT):
            fix = f"No space left (or quota exceeded) on the store of {where}: free space, then re-run."
        elif code == errno.EROFS:
            fix = f"The store of {where} is read-only: point the connection at a writable location."
        else:
            fix = "Check the connection's base URL and the store; retrying will not help."
        return PermanentDestinationError(f"{detail}. {fix}", code=code)

    def _read_audience(self, audience_id: str) -> PlatformAudience | None:
        segment = self.folder / audience_id
        about = self._read_json(segment / ff.AUDIENCE_FILE)
        if about is None:
            return None
        current = self._read_json(segment / ff.CURRENT_FILE) or {}
        return PlatformAudience(
            id=audience_id,
            name=str(about.get("name", "")),
            created_time=int(about.get("created_time") or 0),
            size=current.get("members", 0 if not current else None),
        )

    def _read_members(self, segment: Any, current: dict | None = None) -> set[ff.Member] | None:
        current = current if current is not None else (self._read_json(segment / ff.CURRENT_FILE) or {})
        if not current.get("file"):
            return set() if self.files == "membership" and not current.get("run") else None
        path = segment / current["file"]
        try:
            header, rows = ff.decode_csv(_read(path), compressed=path.name.endswith(".gz"))
        except FileNotFoundError:
            raise PermanentDestinationError(
                f"file drop: {path} (the segment's membership, named by {ff.CURRENT_FILE}) is gone. Delete the "
                f"segment's folder {segment}: the next run re-creates it and writes the whole membership."
            ) from None
        return set(ff.align(header, rows, COLUMNS))

    def _run_dir(self, upload: Upload) -> Any:
        return self.folder / upload.audience_id / "runs" / upload.handle.split("/", 1)[0]

    def _part(self, upload: Upload, seq: int) -> Any:
        run, name = upload.handle.split("/", 1)
        return self.folder / upload.audience_id / ff.STAGING_DIR / f"{run}.{name}.{seq:06d}.csv"

    def _write_part(self, part: Any, data: bytes) -> None:
        try:
            _write(part, data)
        except FileNotFoundError:  # a segment made by hand has no staging folder yet
            part.parent.mkdir(parents=True, exist_ok=True)
            _write(part, data)

    def _read_part(self, upload: Upload, seq: int) -> list[ff.Member]:
        part = self._part(upload, seq)
        try:
            header, rows = ff.decode_csv(_read(part), compressed=False)
        except FileNotFoundError:
            raise PermanentDestinationError(
                f"file drop: batch {seq} of upload {upload.handle} is missing from {part.parent} (staged "
                "files were deleted while the upload was open). Clear the sync task to start it again."
            ) from None
        return ff.align(header, rows, COLUMNS)

    def _read_json(self, path: Any) -> dict[str, Any] | None:
        if not path.exists():
            return None
        try:  # deleted since
            return json.loads(_read(path))
        except FileNotFoundError:
            return None

    def _write_atomic(self, path: Any, data: bytes) -> None:
        """Write to a temporary name beside ``path``, then rename over it: readers see the old file or the
        new one, never part of one. Consumers skip names starting with a dot."""
        tmp = path.parent / f".{path.name}.tmp-{secrets.token_hex(4)}"
        _write(tmp, data)
        try:
            tmp.rename(path)
        except BaseException:
            if tmp.exists():
                tmp.unlink()
            raise


_COUNTED = {"add": "added", "remove": "removed", "replace": "replaced"}


# through ``open`` (not ``read_bytes``/``write_bytes``), which uses the connection's filesystem
def _read(path: Any) -> bytes:
    with path.open("rb") as f:
        return bytes(f.read())


def _write(path: Any, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True).encode()


def _entry(manifest: dict[str, Any] | None, handle: str) -> dict[str, Any] | None:
    return next((u for u in (manifest or {}).get("uploads", []) if u["upload"] == handle), None)
