"""TikTok custom audiences from customer files (Business API v1.3), over :mod:`.tiktok_client`.

**One audience per identifier type.** A TikTok audience holds one ``calculate_type`` (reference §2.2,
§2.8), so a segment is a *family* of three audiences, ``EMAIL_SHA256``, ``PHONE_SHA256`` and
``MAID_SHA256``, each named exactly the segment name. The family is the engine's audience: its id lists
the three TikTok ids (``<e-mail id>-<phone id>-<MAID id>``, see :func:`family_id`).
:meth:`TikTokDestination.find_audiences` lists every page, keeps the advertiser's own audiences
(``is_creator``) of exactly that name and pairs them by age per type: the oldest of each type form the
first family, and so on (TikTok allows duplicate names; duplicates are logged). A member with an e-mail
and a phone is in two of the family's audiences; an ad group targets all three.

How the upload lifecycle maps onto customer files:

- **create**: TikTok creates an audience from uploaded files only, so each audience of a new family is
  created from a file holding just the header row; members arrive with the first upload.
- **handle**: derived from the engine's key (no request: TikTok has no upload sessions).
- **send_batch**: one CSV file per identifier type in the batch (``Email_SHA256`` header row, one hash a
  line, MD5 ``file_signature``), named ``<handle>-<batch>-<type>.csv``; the answer's ``file_path`` of
  each goes into the batch's *receipt*, which the engine stores and hands back in ``Upload.receipts``.
  A row with a value that is not a lowercase SHA-256 hex is left out and named in ``invalid_rows``.
  Uploading a file changes no audience, so re-sending a batch is harmless: the latest file of each
  batch number is the one used.
- **finish_upload**: one ``update`` per audience with ``action`` APPEND (add), REMOVE (remove) or
  REPLACE (replace) and the files of every batch (at most 50 a call, the API's recommendation; a replace
  goes on with APPEND). A replace also replaces the audiences of types the group has no values of,
  with a header-only file. An update is made once per upload in a process; making it again from
  another process (a task that died before recording it) is harmless, because the audience's lease
  keeps any other upload from coming in between and the same files give the same members.
- **the 1,000 rule**: TikTok refuses an update that leaves an audience under 1,000 members, audience by
  audience. The refusal is not retried, and the other types' updates still go through. The upload is
  reported done with ``refused="segment_too_small"`` (the run's outcome; the log and the metrics note
  name each refused audience with TikTok's message): failed when every audience it touched refused;
  otherwise with ``keys_applied`` saying which types took it, and the engine counts each member by what
  it carries. A member whose identifiers reached an audience that took the update is **sent** (it is on
  TikTok through that audience), even if another of its identifiers was refused: e.g. an e-mail in the
  updated e-mail audience and a phone in the refused phone audience. Only members that carry nothing
  but refused types fail (``segment_too_small``) and are sent again next run. The refused identifiers of
  the members counted sent are not sent again by later runs unless the member's identifiers change or
  the segment is synced with ``replace``; a removal is kept owed (``pending``) while a refused audience
  still holds the member's identifier. These refusals are reported at once, without waiting for TikTok
  to process the audiences that took the update (see :func:`_refusal`).
- **status**: ``get`` of the family's audiences until every one the upload touched reports
  ``is_valid`` (TikTok takes up to 24-48 h to refresh an audience).
"""

from __future__ import annotations

import calendar
import hashlib
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from audience_sync.core.contract import (
    UPLOAD_OPS,
    Destination,
    PlatformAudience,
    ProcessingStatus,
    Upload,
    UploadResult,
)
from audience_sync.core.errors import PermanentDestinationError
from audience_sync.destinations.tiktok_client import TikTokApiError, TikTokClient
from audience_sync.platforms.tiktok import AUDIENCE_TITLES, MIN_AUDIENCE_SIZE, TIKTOK, normalise_advertiser_id

log = logging.getLogger(__name__)

#: the family's audiences, by calculate_type, with the header row TikTok's customer-file template uses
FILE_HEADERS = {"EMAIL_SHA256": "Email_SHA256", "PHONE_SHA256": "Phone_SHA256", "MAID_SHA256": "MAID_SHA256"}
TYPES = tuple(FILE_HEADERS)
ACTIONS = {"add": "APPEND", "remove": "REMOVE", "replace": "REPLACE"}
#: file_paths per create/update ("<50 recommended", reference §2.3)
MAX_FILES_PER_UPDATE = 50
LIST_PAGE_SIZE = 100
#: the outcome a refusal by the 1,000-member rule is reported as
SEGMENT_TOO_SMALL = "segment_too_small"
# [U] TikTok's message for the size refusal (its code is not documented): "... less than 1,000 ..."
_TOO_SMALL = re.compile(r"(less than|fewer than|at least|under)\s*1,?000", re.IGNORECASE)
_HEX64 = re.compile(r"[0-9a-f]{64}")

BASE = "dmp/custom_audience"


def family_id(parts: Mapping[str, str]) -> str:
    """``{calculate_type: TikTok id}`` -> the family's id: the ids in :data:`TYPES` order joined by ``-``,
    empty for a type the family lacks (59 characters for 19-digit ids: the state keeps 64)."""
    return "-".join(parts.get(t, "") for t in TYPES)


def family_parts(audience_id: str) -> dict[str, str]:
    """The family's id -> ``{calculate_type: TikTok id}``."""
    ids = str(audience_id).split("-")
    if len(ids) != len(TYPES) or not any(ids) or not all(i.isdigit() for i in ids if i):
        raise ValueError(
            f"{audience_id!r} is not a TikTok audience family id: expected the e-mail, phone and MAID "
            "audience ids joined by '-', e.g. '7123-7124-7125'"
        )
    return {t: i for t, i in zip(TYPES, ids, strict=True) if i}


@dataclass
class Receipt:
    """What one batch left behind: its files by type, the rows left out, whether it was the last."""

    files: dict[str, str] = field(default_factory=dict)
    bad: list[int] = field(default_factory=list)
    last: bool = False

    def text(self) -> str:
        return json.dumps({"files": self.files, "bad": self.bad, "last": self.last}, separators=(",", ":"))

    @classmethod
    def parse(cls, text: str) -> Receipt:
        data = json.loads(text)
        return cls(dict(data.get("files", {})), list(data.get("bad", [])), bool(data.get("last")))


class TikTokDestination(Destination):
    """One TikTok advertiser.

    :param client: a :class:`TikTokClient` (see ``hooks/tiktok.py``).
    :param advertiser_id: the advertiser's digits.
    """

    platform = TIKTOK.name
    max_batch_rows = TIKTOK.max_batch_rows
    max_remove_rows = TIKTOK.max_remove_rows
    processes_synchronously = False

    def __init__(self, client: TikTokClient, advertiser_id: str) -> None:
        self.client = client
        self.account = normalise_advertiser_id(advertiser_id)
        self._receipts: dict[tuple[str, int], Receipt] = {}  # batches answered in this process
        self._updated: dict[str, set[str]] = {}  # handle -> types whose update went through
        self._finished: set[str] = set()
        # handle -> the types its update touched, and TikTok's message for each it refused
        self._refused: dict[str, tuple[list[str], dict[str, str]]] = {}
        self._empty: dict[str, str] = {}  # type -> a header-only file's path
        self._creating: dict[str, dict[str, str]] = {}  # name -> types created so far, while creating
        self._uploading: dict[
            tuple[str, int], dict[str, str]
        ] = {}  # batch -> its files so far, while sending

    @property
    def requests_made(self) -> int:  # type: ignore[override]
        return self.client.requests_made

    # ------------------------------------------------------------------ audiences
    def find_audiences(self, name: str) -> list[PlatformAudience]:
        by_type: dict[str, list[dict[str, Any]]] = {}
        page, pages = 1, 1
        while page <= pages:
            params = {"advertiser_id": self.account, "page": page, "page_size": LIST_PAGE_SIZE}
            data = self.client.get(f"{BASE}/list/", params, f"list custom audiences (page {page})")
            for item in data.get("list") or []:
                if (
                    item.get("is_creator")
                    and item.get("name") == name
                    and item.get("calculate_type") in TYPES
                ):
                    by_type.setdefault(item["calculate_type"], []).append(item)
            pages = int((data.get("page_info") or {}).get("total_page") or 0)
            page += 1
        for ctype, items in by_type.items():
            items.sort(key=lambda i: (_epoch(i.get("create_time")), int(i["audience_id"])))
            if len(items) > 1:
                log.warning(
                    "%d TikTok %s audiences are named %r on advertiser %s: %s; paired oldest first",
                    len(items),
                    ctype,
                    name,
                    self.account,
                    ", ".join(str(i["audience_id"]) for i in items),
                )
        families = [
            _family({t: items[i] for t, items in by_type.items() if i < len(items)}, name)
            for i in range(max((len(v) for v in by_type.values()), default=0))
        ]
        return sorted(families, key=lambda a: (a.created_time, a.id))

    def get_audience(self, audience_id: str) -> PlatformAudience | None:
        parts = family_parts(audience_id)
        details = self._details(parts.values(), f"read audience {audience_id}")
        if any(i not in details for i in parts.values()):
            return None  # one of the family was deleted: the engine re-creates the family
        return _family({t: details[i] for t, i in parts.items()}, details[next(iter(parts.values()))]["name"])

    def create_audience(self, name: str, description: str) -> PlatformAudience:
        """One audience per identifier type, each created from a file holding only the header row
        (TikTok audiences have no description). A retry after a failure goes on with the types not yet
        created, instead of creating a second audience of a type."""
        parts = self._creating.setdefault(name, {})
        for ctype in (t for t in TYPES if t not in parts):
            path = self._empty_file(ctype)
            body = {
                "advertiser_id": self.account,
                "custom_audience_name": name,
                "file_paths": [path],
                "calculate_type": ctype,
            }
            data = self.client.post(f"{BASE}/create/", body, f"create {ctype} audience")
            parts[ctype] = str(data["custom_audience_id"])
        del self._creating[name]
        return PlatformAudience(id=family_id(parts), name=name, created_time=int(time.time()))

    # ------------------------------------------------------------------ the upload lifecycle
    def open_upload(self, audience_id: str, op: str, *, key: str, estimated_total: int) -> Upload:
        """No request: TikTok has no upload sessions; the handle comes from the key."""
        if op not in UPLOAD_OPS:
            raise ValueError(f"unknown upload operation {op!r}; use one of {', '.join(UPLOAD_OPS)}")
        return Upload(audience_id, op, "tt-" + hashlib.sha256(key.encode()).hexdigest()[:24], estimated_total)

    def send_batch(
        self, upload: Upload, seq: int, schema: Sequence[str], rows: Sequence[Sequence[str]], *, last: bool
    ) -> UploadResult:
        limit = self.max_remove_rows if upload.op == "remove" else self.max_batch_rows
        if len(rows) > limit:
            raise ValueError(f"batch of {len(rows)} rows exceeds the limit of {limit}")
        unknown = [k for k in schema if k not in FILE_HEADERS]
        if unknown:
            raise ValueError(f"TikTok has no identifier {unknown}; expected {', '.join(TYPES)}")
        bad = [i for i, row in enumerate(rows) if any(v and not _HEX64.fullmatch(v) for v in row)]
        skip = set(bad)
        # the files of this batch uploaded so far: a retry after a failure uploads only the rest
        files = self._uploading.setdefault((upload.handle, seq), {})
        for j, ctype in enumerate(schema):
            hashes = [row[j] for i, row in enumerate(rows) if row[j] and i not in skip]
            if hashes and ctype not in files:
                name = f"{upload.handle}-{seq}-{ctype.lower()}.csv"
                files[ctype] = self._upload_file(ctype, hashes, name)
        receipt = Receipt(files=self._uploading.pop((upload.handle, seq)), bad=bad, last=last)
        self._receipts[(upload.handle, seq)] = receipt
        return UploadResult(len(rows), len(bad), list(bad), receipt.text())

    def finish_upload(self, upload: Upload, batches: int) -> None:
        """One update per audience of the family with the files of every batch (see the module doc)."""
        if upload.handle in self._finished:
            return  # updated already: again would undo what later uploads changed
        parts = family_parts(upload.audience_id)
        files: dict[str, list[str]] = {}
        for _, receipt in sorted(self._all_receipts(upload).items()):
            for ctype, path in receipt.files.items():
                files.setdefault(ctype, []).append(path)
        missing = sorted(set(files) - set(parts))
        if missing:
            raise PermanentDestinationError(
                f"TikTok audience family {upload.audience_id} has no {', '.join(missing)} audience (made by "
                "hand?); give that audience the segment's name, or rename the family's audiences so a new "
                "family is created."
            )
        touched = list(parts) if upload.op == "replace" else [t for t in TYPES if t in files]
        done = self._updated.setdefault(upload.handle, set())
        refusals: dict[str, str] = {}
        for ctype in touched:
            if ctype in done:
                continue
            # a replace empties the audience of a type the group has no value of
            paths = files.get(ctype) or [self._empty_file(ctype)]
            refused = self._update(parts[ctype], ctype, ACTIONS[upload.op], paths)
            if refused:
                refusals[ctype] = f"{_title(ctype)} audience ({ctype} {parts[ctype]}): {refused}"
            done.add(ctype)
        self._finished.add(upload.handle)
        if refusals:
            self._refused[upload.handle] = (touched, refusals)
            applied = [_title(t) for t in touched if t not in refusals]
            log.warning(
                "segment too small: TikTok refused the %s upload %s for the %s (an audience must keep %s "
                "members); %s",
                upload.op,
                upload.handle,
                "; the ".join(refusals.values()),
                f"{MIN_AUDIENCE_SIZE:,}",
                f"the {', '.join(applied)} audience(s) took it" if applied else "no audience took it",
            )

    def upload_status(self, upload: Upload) -> ProcessingStatus:
        if upload.handle in self._refused:
            return _refusal(*self._refused[upload.handle])
        receipts = self._all_receipts(upload)
        lasts = [seq for seq, r in receipts.items() if r.last]
        handed_over = upload.handle in self._finished or any(
            (upload.handle, seq) not in self._receipts for seq in lasts
        )  # a receipt the engine kept: the upload was finished by an earlier process
        if not lasts or not handed_over:
            sent = len(receipts)
            detail = f"{sent} batch(es) sent, the last one not yet" if sent else "no batch sent yet"
            if lasts:
                detail = "every batch sent; the update is not made yet"
            return ProcessingStatus(done=False, detail=detail)
        parts = family_parts(upload.audience_id)
        types = {t for r in receipts.values() for t in r.files}
        wanted = {t: i for t, i in parts.items() if upload.op == "replace" or t in types}
        if not wanted:
            return ProcessingStatus(done=True, progress=100, detail="no valid rows: nothing to update")
        details = self._details(wanted.values(), f"read status of upload {upload.handle}")
        gone = [i for i in wanted.values() if i not in details]
        if gone:
            return ProcessingStatus(
                done=True,
                failed=True,
                detail=f"TikTok audience(s) {', '.join(gone)} deleted before processing",
            )
        busy = [f"{t} {i}" for t, i in wanted.items() if not details[i].get("is_valid")]
        if busy:
            return ProcessingStatus(
                done=False,
                progress=100 * (len(wanted) - len(busy)) // len(wanted),
                detail=f"TikTok is processing audience(s) {', '.join(busy)}",
            )
        sizes = ", ".join(f"{t} {details[i].get('cover_num')}" for t, i in wanted.items())
        return ProcessingStatus(done=True, progress=100, detail=f"TikTok audiences ready: {sizes}")

    # ------------------------------------------------------------------ requests
    def _upload_file(self, ctype: str, hashes: Sequence[str], name: str) -> str:
        """Upload one customer file (header row, then one hash a line); its ``file_path``."""
        content = ("\n".join([FILE_HEADERS[ctype], *hashes]) + "\n").encode()
        form = {
            "advertiser_id": self.account,
            "calculate_type": ctype,
            "file_signature": hashlib.md5(content).hexdigest(),  # noqa: S324 - TikTok's checksum, not security
            "file_name": name,
        }
        data = self.client.upload(f"{BASE}/file/upload/", form, name, content, f"upload {ctype} file")
        return str(data["file_path"])

    def _empty_file(self, ctype: str) -> str:
        """A file holding only the header row, uploaded once per type (TikTok uses a file path again)."""
        if ctype not in self._empty:
            self._empty[ctype] = self._upload_file(ctype, [], f"empty-{ctype.lower()}.csv")
        return self._empty[ctype]

    def _update(self, audience_id: str, ctype: str, action: str, paths: list[str]) -> str:
        """Update one audience with ``paths`` (in calls of at most 50 files); TikTok's message when it
        refused the update under the 1,000-member rule, else ''."""
        for start in range(0, len(paths), MAX_FILES_PER_UPDATE):
            body = {
                "advertiser_id": self.account,
                "custom_audience_id": audience_id,
                "action": action if start == 0 or action != "REPLACE" else "APPEND",
                "file_paths": paths[start : start + MAX_FILES_PER_UPDATE],
            }
            try:
                self.client.post(f"{BASE}/update/", body, f"{body['action']} {ctype} audience {audience_id}")
            except TikTokApiError as exc:
                if _TOO_SMALL.search(exc.api_message):
                    return exc.api_message
                raise
        return ""

    def _details(self, ids: Any, what: str) -> dict[str, dict[str, Any]]:
        """``audience_details`` of the audiences that exist, by id."""
        params = {"advertiser_id": self.account, "custom_audience_ids": json.dumps([str(i) for i in ids])}
        data = self.client.get(f"{BASE}/get/", params, what)
        out = {}
        for entry in data.get("list") or []:
            d = entry.get("audience_details") or {}
            out[str(d.get("audience_id"))] = d
        return out

    def _all_receipts(self, upload: Upload) -> dict[int, Receipt]:
        """Batch number -> receipt: the engine's (``upload.receipts``) and this process's own (newer)."""
        out = {seq: Receipt.parse(text) for seq, text in upload.receipts}
        out.update({seq: r for (handle, seq), r in self._receipts.items() if handle == upload.handle})
        return out


def _refusal(touched: Sequence[str], refused: Mapping[str, str]) -> ProcessingStatus:
    """The status of an upload whose update TikTok refused for some (or all) of the family's audiences.

    Reported done at once, also when other audiences took their update: only the process that made the
    update saw the refusal, so it reports it before a later process would read the upload as a plain
    one. Members of the audiences that took it count as sent without waiting for TikTok's processing.
    """
    applied = [t for t in touched if t not in refused]
    detail = f"segment too small: TikTok refused the update of the {'; the '.join(refused.values())}"
    if not applied:
        return ProcessingStatus(done=True, failed=True, refused=SEGMENT_TOO_SMALL, detail=detail)
    took = ", ".join(f"{_title(t)} ({t})" for t in applied)
    return ProcessingStatus(
        done=True,
        progress=100,
        refused=SEGMENT_TOO_SMALL,
        detail=f"{detail}; the {took} audience(s) took it",
        keys_applied={t: t not in refused for t in touched},
    )


def _title(ctype: str) -> str:
    return AUDIENCE_TITLES.get(ctype, ctype)


def _epoch(value: Any) -> int:
    """TikTok's ``create_time`` ("2026-07-01 12:00:00", UTC) in seconds; 0 when absent."""
    if isinstance(value, int | float):
        return int(value)
    try:
        return calendar.timegm(time.strptime(str(value), "%Y-%m-%d %H:%M:%S"))
    except ValueError:
        return 0


def _family(items: Mapping[str, Mapping[str, Any]], name: str) -> PlatformAudience:
    """A family from its audiences' list/get items, by type."""
    sizes = [int(i.get("cover_num") or 0) for i in items.values()]
    return PlatformAudience(
        id=family_id({t: str(i["audience_id"]) for t, i in items.items()}),
        name=name,
        created_time=min(_epoch(i.get("create_time")) for i in items.values()),
        size=max(sizes, default=0),
        status="ready" if all(i.get("is_valid") for i in items.values()) else "processing",
    )
