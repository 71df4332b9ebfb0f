"""The TikTok sandbox refuses what TikTok refuses (reference §2): a wrong token (40105, HTTP 200), a file
whose MD5 or header row is wrong, a list page over 100, more than 100 ids, an update that leaves fewer
than 1,000 members; it pages the list, reports shared audiences with ``is_creator`` false, allows
duplicate names, and answers injected rate limits in the envelope. Plain ``requests`` over HTTP."""

from __future__ import annotations

import hashlib
import itertools
import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.conftest import SANDBOX_TOKEN

_accounts = itertools.count(7_400_000_000_000_000_000 + secrets.randbelow(10**12) * 10)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Api:
    def __init__(self, srv: Any) -> None:
        self.base = f"{srv.url}/open_api/v1.3/dmp/custom_audience"
        self.app = srv.app("tiktok")
        self.adv = str(next(_accounts))

    def call(self, method: str, path: str, token: str = SANDBOX_TOKEN, **kw: Any) -> dict[str, Any]:
        r = requests.request(method, f"{self.base}/{path}", headers={"Access-Token": token}, timeout=10, **kw)
        assert r.status_code == 200, r.text  # TikTok answers errors with HTTP 200 too
        return r.json()

    def upload(
        self, hashes: list[str], ctype: str = "EMAIL_SHA256", *, header: str = "Email_SHA256", **form: str
    ):
        content = ("\n".join([header, *hashes]) + "\n").encode()
        data = {
            "advertiser_id": self.adv,
            "calculate_type": ctype,
            "file_signature": hashlib.md5(content).hexdigest(),  # noqa: S324
            **form,
        }
        return self.call("POST", "file/upload/", data=data, files={"file": ("f.csv", content, "text/csv")})

    def create(self, name: str, n: int, tag: str = "m") -> str:
        path = self.upload([sha(f"{tag}{i}") for i in range(n)])["data"]["file_path"]
        body = {
            "advertiser_id": self.adv,
            "custom_audience_name": name,
            "file_paths": [path],
            "calculate_type": "EMAIL_SHA256",
        }
        answer = self.call("POST", "create/", json=body)
        assert answer["code"] == 0, answer
        return answer["data"]["custom_audience_id"]

    def update(self, audience_id: str, action: str, hashes: list[str]) -> dict[str, Any]:
        path = self.upload(hashes)["data"]["file_path"]
        body = {
            "advertiser_id": self.adv,
            "custom_audience_id": audience_id,
            "action": action,
            "file_paths": [path],
        }
        return self.call("POST", "update/", json=body)


@pytest.fixture
def api(sandbox: Any) -> Iterator[Api]:
    a = Api(sandbox)
    yield a
    a.app.clear_faults()


def test_a_wrong_or_missing_token_is_40105_in_an_http_200_envelope(api: Api) -> None:
    for token in ("wrong", ""):
        answer = api.call("GET", "list/", token=token, params={"advertiser_id": api.adv})
        assert answer["code"] == 40105 and answer["request_id"], answer


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"file_signature": "0" * 32}, "MD5"),
        ({"header": "Phone_SHA256"}, "header row"),
        ({"calculate_type": "EMAIL_MD5"}, "calculate_type"),
    ],
)
def test_a_bad_file_upload_is_refused(api: Api, change: dict[str, str], says: str) -> None:
    header = change.pop("header", "Email_SHA256")
    ctype = change.pop("calculate_type", "EMAIL_SHA256")
    answer = api.upload([sha("a")], ctype, header=header, **change)
    assert answer["code"] == 40002 and says in answer["message"], answer


def test_a_file_line_that_is_not_a_lowercase_sha256_is_refused(api: Api) -> None:
    answer = api.upload([sha("a"), sha("b").upper()])
    assert answer["code"] == 40002 and "line 3" in answer["message"], answer


def test_updates_that_leave_fewer_than_1000_members_are_refused_and_change_nothing(api: Api) -> None:
    assert api.app.min_audience_size == 1_000
    aid = api.create("big enough", 1_000)
    for action, hashes in (("REMOVE", [sha("m0")]), ("REPLACE", [sha(f"x{i}") for i in range(999)])):
        answer = api.update(aid, action, hashes)
        assert answer["code"] == 40002 and "less than 1,000" in answer["message"], answer
    assert len(api.app.members(aid)) == 1_000
    assert api.update(aid, "APPEND", [sha("new")])["code"] == 0
    assert api.update(aid, "REMOVE", [sha("m0")])["code"] == 0  # leaves exactly 1,000
    assert len(api.app.members(aid)) == 1_000
    small = api.create("small", 3)  # creating is not an update: a small file makes a small audience
    assert api.update(small, "APPEND", [sha("y")])["code"] == 40002


def test_list_pages_by_at_most_100_and_marks_shared_audiences(api: Api) -> None:
    for i in range(105):
        api.app.create_audience(api.adv, "same name" if i % 50 == 0 else f"a{i}")
    api.app.create_audience(api.adv, "same name", is_creator=False)
    refused = api.call("GET", "list/", params={"advertiser_id": api.adv, "page_size": 101})
    assert refused["code"] == 40002
    pages = [
        api.call("GET", "list/", params={"advertiser_id": api.adv, "page": p, "page_size": 100})["data"]
        for p in (1, 2)
    ]
    assert [len(p["list"]) for p in pages] == [100, 6]
    assert pages[0]["page_info"] == {"page": 1, "page_size": 100, "total_number": 106, "total_page": 2}
    named = [i for p in pages for i in p["list"] if i["name"] == "same name"]
    assert [i["is_creator"] for i in named] == [True, True, True, False]  # duplicate names are allowed


def test_get_takes_1_to_100_ids_and_reports_is_valid_while_processing(api: Api) -> None:
    api.app.processing_seconds = 60
    try:
        aid = api.create("processing", 2)
    finally:
        api.app.processing_seconds = 0
    got = api.call("GET", "get/", params={"advertiser_id": api.adv, "custom_audience_ids": json.dumps([aid])})
    assert got["data"]["list"][0]["audience_details"]["is_valid"] is False
    ids = json.dumps([str(i) for i in range(101)])
    assert (
        api.call("GET", "get/", params={"advertiser_id": api.adv, "custom_audience_ids": ids})["code"]
        == 40002
    )


def test_a_shared_audience_cannot_be_updated(api: Api) -> None:
    shared = api.app.create_audience(api.adv, "theirs", is_creator=False)
    assert api.app.min_audience_size == 1_000
    answer = api.update(shared, "APPEND", [sha("z")])
    assert answer["code"] == 40002 and "shared" in answer["message"]


def test_injected_rate_limits_answer_40100_in_the_envelope(api: Api) -> None:
    api.app.add_fault(code=40100, times=2)
    codes = [api.call("GET", "list/", params={"advertiser_id": api.adv})["code"] for _ in range(3)]
    assert codes == [40100, 40100, 0]
