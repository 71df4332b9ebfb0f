"""The contract harness of ``tiktok``: the destination's real ``requests`` client over HTTP to the session
sandbox's TikTok app (``sandbox/tiktok.py``).

The 1,000-member rule: the suite adds a few dozen rows per test, far below TikTok's minimum, so the
harness lowers the sandbox's minimum to 0 for its tests (and puts it back after each); the rule itself is
tested at 1,000 in ``tests/integration/test_tiktok_sync.py``.

One audience per identifier type: a batch makes one file upload per identifier type it carries, while
the suite counts requests per batch (one removal chunk = one request). So ``hashed_keys`` holds the
e-mail type only, and batches spanning several types (several audiences, several files) are tested in
``tests/unit/test_tiktok_destination.py``.
"""

from __future__ import annotations

from typing import Any

import requests

from audience_sync.core.contract import Destination, Upload
from audience_sync.destinations.tiktok import TYPES, TikTokDestination, family_id, family_parts
from audience_sync.destinations.tiktok_client import TikTokClient
from audience_sync.platforms.tiktok import MIN_AUDIENCE_SIZE
from tests.conftest import SANDBOX_TOKEN
from tests.contract.conftest import ErrorCase, Harness, Member, _accounts, _closed_port

API = "/open_api/v1.3"


class TikTokHarness(Harness):
    platform = "tiktok"
    max_batch_rows = 50_000
    list_page_size = 100  # TikTokDestination.find_audiences lists with page_size=100, the API's maximum
    schema = ("EMAIL_SHA256",)
    hashed_keys = ("EMAIL_SHA256",)
    transient_errors = (
        ErrorCase(40100),  # QPS limit, HTTP 200
        ErrorCase(50000),  # internal error in the envelope, HTTP 200
        ErrorCase(50002, http_status=503),
    )
    auth_error = ErrorCase(40105, says=("access token", "tiktok_default", "password"))
    permanent_errors = (
        auth_error,
        ErrorCase(40001, says=("Audience Management", "tiktok_default", "{digits}")),
        ErrorCase(40102, says=("access token", "tiktok_default")),
        ErrorCase(40002, says=("retrying will not help",)),
    )
    processes_synchronously = False  # TikTok refreshes an audience for hours after an update
    offline_calls = ("open_upload",)  # the handle comes from the key; no upload sessions

    def __init__(self, srv: Any, account: str) -> None:
        self.srv = srv
        self.app = srv.app(self.platform)
        self.account = "".join(c for c in account if c.isdigit())
        self.other_account = str(next(_accounts))
        self.token = SANDBOX_TOKEN
        self.destination = self.make_destination(self.token, timeout=10)
        self.app.min_audience_size = 0

    def make_destination(self, token: str, timeout: float, url: str | None = None) -> Destination:
        client = TikTokClient(
            token, base_url=(url or self.srv.url) + API, timeout=timeout, account=self.account
        )
        return TikTokDestination(client, self.account)

    def members(self, audience_id: str) -> set[Member]:
        parts = family_parts(audience_id)
        return {frozenset({(t, h)}) for t, i in parts.items() for h in self.app.members(i)}

    def delete_audience(self, audience_id: str) -> None:
        # the delete endpoint over HTTP, as TikTok Ads Manager would remove them
        ids = list(family_parts(audience_id).values())
        answer = requests.post(
            f"{self.srv.url}{API}/dmp/custom_audience/delete/",
            json={"advertiser_id": self.account, "custom_audience_ids": ids},
            headers={"Access-Token": self.token},
            timeout=10,
        ).json()
        assert answer["code"] == 0, answer

    def create_by_hand(
        self, name: str, *, created_time: int | None = None, other_account: bool = False
    ) -> str:
        account = self.other_account if other_account else self.account
        parts = {t: self.app.create_audience(account, name, t, create_time=created_time) for t in TYPES}
        return family_id(parts)

    def inject_error(self, case: ErrorCase, *, skip: int = 0, times: int = 1) -> None:
        self.app.add_fault(code=case.code, http_status=case.http_status, skip=skip, times=times)

    def inject_drop(self, *, apply: bool) -> None:
        self.app.add_fault(action="drop", apply=apply, times=1)

    def inject_delay(self, seconds: float) -> None:
        self.app.add_fault(action="delay", delay_seconds=seconds, times=1)

    def another_destination(self, *, token: str | None = None, timeout: float | None = None) -> Destination:
        return self.make_destination(token or self.token, timeout=timeout or 10)

    def unreachable(self) -> Destination:
        return self.make_destination(self.token, timeout=5, url=f"http://127.0.0.1:{_closed_port()}")

    def request_mark(self) -> int:
        return int(self.srv.journal.log.last_seq)

    def requests_since(self, mark: int) -> list[dict[str, Any]]:
        return list(self.app.requests_log(since=mark))

    def upload_received(self, upload: Upload) -> int:
        # the rows of the upload's files, named "<handle>-<batch>-<type>.csv": a batch uploaded again (a
        # retry) counts once, and a batch counts its rows once across its types' files
        prefix = f"{upload.handle}-"
        per_batch: dict[str, int] = {}
        for f in self.app.files():
            if f["name"].startswith(prefix):
                seq = f["name"][len(prefix) :].split("-", 1)[0]
                per_batch[seq] = max(per_batch.get(seq, 0), int(f["rows"]))
        return sum(per_batch.values())

    def set_processing_delay(self, seconds: float) -> None:
        self.app.processing_seconds = float(seconds)

    def reset_faults(self) -> None:
        self.app.clear_faults()

    def close(self) -> None:
        self.app.min_audience_size = MIN_AUDIENCE_SIZE  # the real rule again, for the tests that follow
