"""The local Meta Graph sandbox, driven with plain ``requests`` and the real facebook-business SDK."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from facebook_business.adobjects.adaccount import AdAccount
from facebook_business.adobjects.customaudience import CustomAudience
from facebook_business.api import FacebookAdsApi
from facebook_business.exceptions import FacebookRequestError
from facebook_business.session import FacebookSession

from audience_sync.sandbox import SandboxServer, start_sandbox

TOKEN = "unit-sandbox-token"
ACCOUNT = "act_123"
ROOT = Path(__file__).resolve().parents[2]


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def emails(n: int, prefix: str = "user") -> list[str]:
    return [sha(f"{prefix}{i}@example.com") for i in range(n)]


def make_api(url: str, token: str = TOKEN) -> FacebookAdsApi:
    """Reference 1.7 recipe: no FacebookAdsApi.init(), GRAPH overridden on the session instance."""
    session = FacebookSession(access_token=token, app_secret=None, timeout=10)
    session.GRAPH = url
    return FacebookAdsApi(session, api_version="v26.0")


def sess(session_id: int, seq: int = 1, last: bool = True) -> dict[str, Any]:
    return {"session_id": session_id, "batch_seq": seq, "last_batch_flag": last}


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    with start_sandbox(port=0, access_token=TOKEN) as srv:
        yield srv


@pytest.fixture
def srv(server: SandboxServer) -> SandboxServer:
    server.meta.reset()
    server.journal.faults.clear()
    return server


@pytest.fixture
def api(srv: SandboxServer) -> FacebookAdsApi:
    return make_api(srv.url)


def create(api: FacebookAdsApi, name: str, account: str = ACCOUNT) -> str:
    ca = AdAccount(account, api=api).create_custom_audience(
        params={
            "name": name,
            "subtype": "CUSTOM",
            "description": "d",
            "customer_file_source": "USER_PROVIDED_ONLY",
        }
    )
    return ca["id"]


def graph_error(exc_info: pytest.ExceptionInfo[FacebookRequestError]) -> tuple[int, int | None]:
    return exc_info.value.api_error_code(), exc_info.value.api_error_subcode()


# -------------------------------------------------------------------------------- audiences


def test_sdk_list_pages_through_duplicates_in_creation_order(srv: SandboxServer, api: FacebookAdsApi) -> None:
    names = ["vip", "churn", "vip", "lapsed", "new"]
    ids = [create(api, n) for n in names]
    create(api, "other account", account="act_999")
    assert ids == sorted(ids, key=int)
    assert len(set(ids)) == 5
    assert ids[0].isdigit()
    assert int(ids[0]) >= 23850000000000001

    since = srv.journal.log.last_seq
    cursor = AdAccount(ACCOUNT, api=api).get_custom_audiences(
        fields=["id", "name", "approximate_count_lower_bound", "operation_status"], params={"limit": 2}
    )
    got = list(cursor)
    assert [a["id"] for a in got] == ids
    assert [a["name"] for a in got] == names  # duplicate names are allowed and both listed
    assert got[0]["operation_status"].export_all_data() == {"code": 200, "description": "Normal"}
    assert got[0]["approximate_count_lower_bound"] == 0
    assert "subtype" not in got[0].export_all_data()  # only requested fields (+id)
    assert cursor.total() == 5
    gets = [e for e in srv.meta.requests_log(since=since) if e["method"] == "GET"]
    assert len(gets) == 3  # pages of 2, 2, 1; no 4th request because the last page has no paging.next
    assert "after" not in gets[0]["query"]
    assert "after" in gets[2]["query"]

    CustomAudience(ids[1], api=api).api_delete()
    assert [a["id"] for a in AdAccount(ACCOUNT, api=api).get_custom_audiences(fields=["name"])] == [
        ids[0],
        ids[2],
        ids[3],
        ids[4],
    ]


def test_paging_next_only_when_more_pages(srv: SandboxServer, api: FacebookAdsApi) -> None:
    for name in ("a", "b", "c"):
        create(api, name)
    url = f"{srv.url}/v26.0/{ACCOUNT}/customaudiences"
    first = requests.get(url, params={"access_token": TOKEN, "limit": 2, "fields": "name"}, timeout=5).json()
    assert len(first["data"]) == 2
    assert "next" in first["paging"]
    assert first["paging"]["next"].startswith(srv.url + "/v26.0/")
    second = requests.get(first["paging"]["next"], timeout=5).json()
    assert [a["name"] for a in second["data"]] == ["c"]
    assert "next" not in second["paging"]
    bad_field = requests.get(url, params={"access_token": TOKEN, "fields": "approximate_count"}, timeout=5)
    assert bad_field.status_code == 400
    assert bad_field.json()["error"]["code"] == 100


def test_create_requires_name_and_custom_subtype(api: FacebookAdsApi) -> None:
    account = AdAccount(ACCOUNT, api=api)
    with pytest.raises(FacebookRequestError) as exc:
        account.create_custom_audience(params={"subtype": "CUSTOM"})
    assert graph_error(exc) == (100, None)
    with pytest.raises(FacebookRequestError) as exc:
        account.create_custom_audience(params={"name": "x", "subtype": "LOOKALIKE"})
    assert graph_error(exc) == (100, None)


def test_api_get_and_unknown_or_deleted_audience(srv: SandboxServer, api: FacebookAdsApi) -> None:
    aid = create(api, "vip")
    aud = CustomAudience(aid, api=api).api_get(
        fields=["name", "subtype", "customer_file_source", "data_source"]
    )
    assert aud["name"] == "vip"
    assert aud["subtype"] == "CUSTOM"
    assert aud["customer_file_source"] == "USER_PROVIDED_ONLY"
    with pytest.raises(FacebookRequestError) as exc:
        CustomAudience("23859999999999999", api=api).api_get(fields=["name"])
    assert graph_error(exc) == (100, 33)
    assert exc.value.http_status() == 400
    CustomAudience(aid, api=api).api_delete()  # returns the object; the wire answer is {"success": true}
    assert srv.meta.requests_log()[-1]["path"] == f"/v26.0/{aid}/"
    with pytest.raises(FacebookRequestError) as exc:
        CustomAudience(aid, api=api).api_get(fields=["name"])
    assert graph_error(exc) == (100, 33)
    assert srv.meta.audiences() == []


def test_bad_or_missing_token_is_190(srv: SandboxServer) -> None:
    with pytest.raises(FacebookRequestError) as exc:
        list(AdAccount(ACCOUNT, api=make_api(srv.url, token="wrong")).get_custom_audiences(fields=["name"]))
    assert graph_error(exc)[0] == 190
    assert exc.value.body()["error"]["type"] == "OAuthException"
    r = requests.get(f"{srv.url}/v26.0/{ACCOUNT}/customaudiences", timeout=5)
    err = r.json()["error"]
    assert r.status_code == 400
    assert err["code"] == 190
    assert err["fbtrace_id"]
    assert "wrong" not in json.dumps(srv.meta.requests_log())


# -------------------------------------------------------------------------------- members


def test_add_and_remove_members_with_sdk(srv: SandboxServer, api: FacebookAdsApi) -> None:
    aid = create(api, "vip")
    aud = CustomAudience(aid, api=api)
    rows = [[e, sha(f"4477009{i:05d}")] for i, e in enumerate(emails(5))]
    resp = aud.create_user(
        params={"payload": {"schema": ["EMAIL", "PHONE"], "data": rows}, "session": sess(11)}
    )
    assert resp["num_received"] == 5
    assert resp["num_invalid_entries"] == 0
    assert resp["audience_id"] == aid
    assert len(srv.meta.members(aid)) == 5
    assert {"EMAIL": rows[0][0], "PHONE": rows[0][1]} in srv.meta.members(aid)

    aud.delete_users(
        params={"payload": {"schema": ["EMAIL", "PHONE"], "data": rows[:2]}, "session": sess(12)}
    )
    assert sorted(m["EMAIL"] for m in srv.meta.members(aid)) == sorted(r[0] for r in rows[2:])
    # removing with other keys than the add matches nobody (as on Meta)
    aud.delete_users(params={"payload": {"schema": ["EMAIL"], "data": [[rows[2][0]]]}, "session": sess(13)})
    assert len(srv.meta.members(aid)) == 3

    fetched = aud.api_get(fields=["approximate_count_lower_bound", "approximate_count_upper_bound"])
    assert fetched["approximate_count_lower_bound"] == fetched["approximate_count_upper_bound"] == 3
    log = srv.meta.requests_log()
    delete = next(e for e in log if e["method"] == "DELETE")
    assert delete["num_rows"] == 2
    assert delete["session"]["session_id"] == 12
    assert delete["query"]["access_token"] == "***"
    assert TOKEN not in json.dumps(log)

    inspected = requests.get(f"{srv.url}/_sandbox/meta/audiences/{aid}/members", timeout=5).json()
    assert inspected["count"] == 3
    assert inspected["schema"] == ["EMAIL", "PHONE"]
    listed = requests.get(f"{srv.url}/_sandbox/meta/audiences", params={"account": ACCOUNT}, timeout=5).json()
    assert [(a["id"], a["count"]) for a in listed["data"]] == [(aid, 3)]


def test_retried_batch_is_idempotent(srv: SandboxServer, api: FacebookAdsApi) -> None:
    aid = create(api, "vip")
    aud = CustomAudience(aid, api=api)
    params = {"payload": {"schema": "EMAIL_SHA256", "data": emails(3)}, "session": sess(21, 1, False)}
    aud.create_user(params=params)
    aud.create_user(params=params)  # a retry of the same (session_id, batch_seq)
    aud.create_user(
        params={"payload": {"schema": "EMAIL_SHA256", "data": emails(2, "b")}, "session": sess(21, 2, True)}
    )
    (session,) = aud.get_sessions(params={"session_id": 21})
    assert session["num_received"] == "5"
    assert session["stage"] == "processed"
    assert len(srv.meta.members(aid)) == 5


def test_payload_validation_errors(api: FacebookAdsApi) -> None:
    aud = CustomAudience(create(api, "vip"), api=api)
    too_many = {"payload": {"schema": "EMAIL_SHA256", "data": emails(10_001)}, "session": sess(1)}
    with pytest.raises(FacebookRequestError) as exc:
        aud.create_user(params=too_many)
    assert graph_error(exc) == (100, None)
    assert "10000" in exc.value.api_error_message()
    mismatch = {
        "payload": {"schema": ["EMAIL", "PHONE"], "data": [[sha("a"), sha("b")], [sha("c")]]},
        "session": sess(2),
    }
    with pytest.raises(FacebookRequestError) as exc:
        aud.create_user(params=mismatch)
    assert graph_error(exc) == (100, None)
    with pytest.raises(FacebookRequestError) as exc:
        aud.create_user(
            params={
                "payload": {"schema": ["EMAIL", "NAME"], "data": [[sha("a"), sha("b")]]},
                "session": sess(3),
            }
        )
    assert graph_error(exc) == (100, None)
    with pytest.raises(FacebookRequestError) as exc:  # session is required
        aud.create_user(params={"payload": {"schema": "EMAIL_SHA256", "data": emails(1)}})
    assert graph_error(exc) == (100, None)
    with pytest.raises(FacebookRequestError) as exc:
        aud.create_user(
            params={
                "payload": {"schema": "EMAIL_SHA256", "data": emails(1)},
                "session": {"session_id": 1, "batch_seq": 0, "last_batch_flag": True},
            }
        )
    assert graph_error(exc) == (100, None)


def test_bad_hashes_are_counted_not_stored(srv: SandboxServer, api: FacebookAdsApi) -> None:
    aid = create(api, "vip")
    good = emails(2)
    data = [
        [good[0], "", "cust-1"],
        ["jane@example.com", "", ""],
        [good[1].upper(), "", ""],
        ["", "", ""],
        [good[1], sha("447700900000"), ""],
    ]
    resp = CustomAudience(aid, api=api).create_user(
        params={"payload": {"schema": ["EMAIL", "PHONE", "EXTERN_ID"], "data": data}, "session": sess(5)}
    )
    assert resp["num_received"] == 5
    assert resp["num_invalid_entries"] == 3
    assert set(resp["invalid_entry_samples"]) == {"1", "2", "3"}
    assert sorted(srv.meta.members(aid), key=len) == [
        {"EMAIL": good[0], "EXTERN_ID": "cust-1"},
        {"EMAIL": good[1], "PHONE": sha("447700900000")},
    ]


def test_schema_form_mismatch_is_2650(api: FacebookAdsApi) -> None:
    aud = CustomAudience(create(api, "vip"), api=api)
    aud.create_user(
        params={"payload": {"schema": ["EMAIL"], "data": [[e] for e in emails(2)]}, "session": sess(1)}
    )
    with pytest.raises(FacebookRequestError) as exc:
        aud.create_user(params={"payload": {"schema": "EMAIL_SHA256", "data": emails(2)}, "session": sess(2)})
    assert graph_error(exc) == (2650, None)
    assert "FILE_IMPORTED.MULTI_HASHES" in exc.value.api_error_message()


def test_replace_accumulates_batches_and_blocks_users(srv: SandboxServer, api: FacebookAdsApi) -> None:
    aid = create(api, "vip")
    aud = CustomAudience(aid, api=api)
    old = [[e] for e in emails(4, "old")]
    aud.create_user(params={"payload": {"schema": ["EMAIL"], "data": old}, "session": sess(1)})
    new = [[e] for e in emails(6, "new")]
    aud.create_users_replace(
        params={"payload": {"schema": ["EMAIL"], "data": new[:3]}, "session": sess(77, 1, False)}
    )
    assert len(srv.meta.members(aid)) == 4  # nothing changes before the last batch
    assert aud.api_get(fields=["operation_status"])["operation_status"]["code"] == 414
    with pytest.raises(FacebookRequestError) as exc:
        aud.create_user(params={"payload": {"schema": ["EMAIL"], "data": new[:1]}, "session": sess(2)})
    assert graph_error(exc) == (2650, 1870145)
    with pytest.raises(FacebookRequestError) as exc:
        aud.delete_users(params={"payload": {"schema": ["EMAIL"], "data": old[:1]}, "session": sess(3)})
    assert graph_error(exc) == (2650, 1870145)
    (open_session,) = aud.get_sessions(params={"session_id": 77})
    assert open_session["stage"] == "uploading"
    assert open_session["num_received"] == "3"

    aud.create_users_replace(
        params={"payload": {"schema": ["EMAIL"], "data": new[3:]}, "session": sess(77, 2, True)}
    )
    assert sorted(m["EMAIL"] for m in srv.meta.members(aid)) == sorted(r[0] for r in new)
    (done,) = aud.get_sessions(params={"session_id": 77})
    assert done["stage"] == "processed"
    assert done["num_received"] == "6"
    assert "end_time" in done
    aud.create_user(params={"payload": {"schema": ["EMAIL"], "data": old[:1]}, "session": sess(4)})
    assert len(srv.meta.members(aid)) == 7


def test_open_replace_session_expires(srv: SandboxServer, api: FacebookAdsApi) -> None:
    now = [1_800_000_000.0]
    srv.meta.clock = lambda: now[0]
    try:
        aud = CustomAudience(create(api, "vip"), api=api)
        aud.create_users_replace(
            params={"payload": {"schema": ["EMAIL"], "data": [[sha("a")]]}, "session": sess(5, 1, False)}
        )
        now[0] += srv.meta.replace_timeout_seconds + 1
        aud.create_user(params={"payload": {"schema": ["EMAIL"], "data": [[sha("b")]]}, "session": sess(6)})
        assert srv.meta.members(aud["id"]) == [{"EMAIL": sha("b")}]
        assert aud.get_sessions(params={"session_id": 5})[0]["stage"] == "expired"
    finally:
        srv.meta.clock = __import__("time").time


def test_flagged_audience_rejects_uploads(srv: SandboxServer, api: FacebookAdsApi) -> None:
    aid = srv.meta.create_audience(ACCOUNT, "diabetes care", flagged=True)  # as if made in Ads Manager
    aud = CustomAudience(aid, api=api)
    assert aud.api_get(fields=["operation_status"])["operation_status"]["code"] == 471
    with pytest.raises(FacebookRequestError) as exc:
        aud.create_user(params={"payload": {"schema": ["EMAIL"], "data": [[sha("a")]]}, "session": sess(1)})
    assert graph_error(exc) == (100, 1713230)


# -------------------------------------------------------------------------------- URL length, faults


def test_long_delete_url_is_dropped_but_200_rows_work(srv: SandboxServer, api: FacebookAdsApi) -> None:
    aid = create(api, "vip")
    aud = CustomAudience(aid, api=api)
    hashes = emails(2000)
    aud.create_user(params={"payload": {"schema": "EMAIL_SHA256", "data": hashes}, "session": sess(1)})
    with pytest.raises(requests.exceptions.ConnectionError):
        aud.delete_users(
            params={"payload": {"schema": "EMAIL_SHA256", "data": hashes[:1000]}, "session": sess(2)}
        )
    assert len(srv.meta.members(aid)) == 2000
    assert srv.meta.requests_log()[-1]["fault"] == "url_too_long"
    resp = aud.delete_users(
        params={"payload": {"schema": "EMAIL_SHA256", "data": hashes[:200]}, "session": sess(3)}
    )
    assert resp["num_received"] == 200
    assert len(srv.meta.members(aid)) == 1800


def test_injected_errors_skip_and_times(srv: SandboxServer, api: FacebookAdsApi) -> None:
    aud = CustomAudience(create(api, "vip"), api=api)
    srv.meta.add_fault(method="POST", path_regex=r"/users$", skip=1, times=1, code=17, subcode=2446079)
    body = {"payload": {"schema": ["EMAIL"], "data": [[sha("a")]]}}
    aud.create_user(params={**body, "session": sess(1)})  # skipped
    with pytest.raises(FacebookRequestError) as exc:
        aud.create_user(params={**body, "session": sess(2)})
    assert graph_error(exc) == (17, 2446079)
    assert exc.value.api_transient_error() is True
    aud.create_user(params={**body, "session": sess(2)})  # the fault fired once; the retry works

    rule = requests.post(
        f"{srv.url}/_sandbox/faults",
        timeout=5,
        json={"method": "GET", "path_regex": "/customaudiences$", "code": 80003, "http_status": 400},
    )
    assert rule.status_code == 200
    assert rule.json()["code"] == 80003
    with pytest.raises(FacebookRequestError) as exc:
        list(AdAccount(ACCOUNT, api=api).get_custom_audiences(fields=["name"]))
    assert graph_error(exc) == (80003, None)
    srv.meta.add_fault(path_regex="/usersreplace$", times=None, code=2)
    with pytest.raises(FacebookRequestError) as exc:
        aud.create_users_replace(params={**body, "session": sess(3)})
    assert exc.value.http_status() == 500
    assert graph_error(exc) == (2, None)
    fired = {
        r["code"]: r["fired"] for r in requests.get(f"{srv.url}/_sandbox/faults", timeout=5).json()["data"]
    }
    assert fired == {17: 1, 80003: 1, 2: 1}
    assert requests.delete(f"{srv.url}/_sandbox/faults", timeout=5).json()["cleared"] == 3
    aud.create_users_replace(params={**body, "session": sess(3)})


@pytest.mark.parametrize("apply", [False, True])
def test_drop_cuts_connection(srv: SandboxServer, api: FacebookAdsApi, apply: bool) -> None:
    aid = create(api, "vip")
    aud = CustomAudience(aid, api=api)
    srv.meta.add_fault(method="POST", path_regex=r"/users$", action="drop", apply=apply)
    params = {"payload": {"schema": ["EMAIL"], "data": [[sha("a")], [sha("b")]]}, "session": sess(9)}
    with pytest.raises(requests.exceptions.ConnectionError):
        aud.create_user(params=params)
    assert len(srv.meta.members(aid)) == (2 if apply else 0)
    assert srv.meta.requests_log()[-1]["fault"] == "drop"
    resp = aud.create_user(params=params)  # the client's retry, same session and batch_seq
    assert resp["num_received"] == 2
    assert aud.get_sessions(params={"session_id": 9})[0]["num_received"] == "2"  # not double counted
    assert len(srv.meta.members(aid)) == 2


def test_control_endpoints(srv: SandboxServer, api: FacebookAdsApi) -> None:
    create(api, "vip")
    log = requests.get(f"{srv.url}/_sandbox/requests", timeout=5).json()
    assert log["data"]
    assert log["data"][-1]["method"] == "POST"
    assert log["data"][-1]["platform"] == "meta"
    assert (
        requests.get(f"{srv.url}/_sandbox/requests", params={"since": log["last_seq"]}, timeout=5).json()[
            "data"
        ]
        == []
    )
    bad = requests.post(f"{srv.url}/_sandbox/faults", json={"action": "explode"}, timeout=5)
    assert bad.status_code == 400
    created = requests.post(
        f"{srv.url}/_sandbox/meta/audiences", json={"account": ACCOUNT, "name": "manual"}, timeout=5
    ).json()
    assert created["id"] in [a["id"] for a in srv.meta.audiences(ACCOUNT)]
    assert requests.post(f"{srv.url}/_sandbox/reset", timeout=5).json() == {"success": True}
    assert srv.meta.audiences() == []
    assert requests.get(f"{srv.url}/_sandbox/meta/audiences", timeout=5).json() == {"data": []}


# -------------------------------------------------------------------------------- persistence, CLI


def test_state_persists_across_server_instances(tmp_path: Path) -> None:
    state = tmp_path / "sandbox.json"
    with start_sandbox(state_file=state, access_token=TOKEN) as first:
        api = make_api(first.url)
        aid = create(api, "vip")
        CustomAudience(aid, api=api).create_user(
            params={"payload": {"schema": ["EMAIL"], "data": [[e] for e in emails(3)]}, "session": sess(1)}
        )
        CustomAudience(aid, api=api).create_users_replace(
            params={"payload": {"schema": ["EMAIL"], "data": [[sha("z")]]}, "session": sess(2, 1, False)}
        )
    assert state.exists()
    assert not list(tmp_path.glob("*.tmp"))
    with start_sandbox(state_file=state, access_token=TOKEN) as second:
        api = make_api(second.url)
        (aud,) = list(AdAccount(ACCOUNT, api=api).get_custom_audiences(fields=["name"]))
        assert aud["id"] == aid
        assert aud["name"] == "vip"
        assert len(second.meta.members(aid)) == 3
        with pytest.raises(FacebookRequestError) as exc:  # the open replace session survived too
            CustomAudience(aid, api=api).create_user(
                params={"payload": {"schema": ["EMAIL"], "data": [[sha("y")]]}, "session": sess(3)}
            )
        assert graph_error(exc) == (2650, 1870145)
        assert int(create(api, "second")) > int(aid)


def test_serve_forever_prints_url_and_stops_on_sigterm(tmp_path: Path) -> None:
    code = (
        "from audience_sync.sandbox import serve_forever; "
        f"serve_forever('127.0.0.1', 0, {str(tmp_path / 's.json')!r}, 'tok')"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "plugins")}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        url = line.strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:")
        assert requests.get(f"{url}/_sandbox/health", timeout=5).json()["status"] == "ok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_appsecret_proof_is_verified_when_configured() -> None:
    with start_sandbox(access_token=TOKEN, app_secret="s3cret") as srv:

        def api_with(secret: str) -> FacebookAdsApi:
            session = FacebookSession(access_token=TOKEN, app_secret=secret, timeout=10)
            session.GRAPH = srv.url
            return FacebookAdsApi(session, api_version="v26.0")

        assert create(api_with("s3cret"), "vip").isdigit()
        with pytest.raises(FacebookRequestError) as exc:
            create(api_with("other"), "vip")
        assert graph_error(exc) == (100, None)
        assert "s3cret" not in json.dumps(srv.meta.requests_log())
        assert all(e["query"]["appsecret_proof"] == "***" for e in srv.meta.requests_log())


def test_unknown_edges_and_method_override_values_are_rejected(
    srv: SandboxServer, api: FacebookAdsApi
) -> None:
    aid = create(api, "vip")
    base = f"{srv.url}/v26.0/{aid}"
    unknown = requests.get(f"{base}/adsets", params={"access_token": TOKEN}, timeout=5)
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == 2500
    override = requests.post(
        f"{base}/users",
        timeout=5,
        data={
            "access_token": TOKEN,
            "method": "patch",
            "payload": json.dumps({"schema": "EMAIL_SHA256", "data": []}),
            "session": json.dumps(sess(1)),
        },
    )
    assert override.json()["error"]["code"] == 100
    assert "get, post or delete" in override.json()["error"]["message"]
    assert requests.get(
        f"{srv.url}/v99.0/{aid}", params={"access_token": TOKEN, "fields": "name"}, timeout=5
    ).json() == {"name": "vip", "id": aid}


def _users_form(rows: list[str], session_id: int, **extra: str) -> dict[str, str]:
    return {
        "access_token": TOKEN,
        "payload": json.dumps({"schema": "EMAIL_SHA256", "data": rows}),
        "session": json.dumps(sess(session_id)),
        **extra,
    }


@pytest.mark.parametrize("spelling", ["delete", "DELETE"])
def test_post_with_method_delete_removes_like_a_delete(
    srv: SandboxServer, api: FacebookAdsApi, spelling: str
) -> None:
    """The Graph method override on /users: a POST with method=delete is the DELETE, with its session
    semantics (a replayed batch is not applied twice); a POST without it stays an add."""
    aid = create(api, "vip")
    users = f"{srv.url}/v26.0/{aid}/users"
    added = requests.post(users, data=_users_form(emails(5), 41), timeout=5)
    assert added.status_code == 200 and len(srv.meta.members(aid)) == 5
    form = _users_form(emails(3), 42, method=spelling)
    removed = requests.post(users, data=form, timeout=5)
    assert removed.status_code == 200 and removed.json()["num_received"] == 3
    assert sorted(v for m in srv.meta.members(aid) for v in m.values()) == sorted(emails(5)[3:])
    entry = srv.meta.requests_log()[-1]
    assert (entry["method"], entry["method_override"], entry["op"]) == ("POST", "DELETE", "remove")
    assert requests.post(users, data=form, timeout=5).json() == removed.json()  # the same batch again
    assert entry["session"]["session_id"] == 42 and srv.meta.requests_log()[-1]["replayed"] is True
    (session,) = CustomAudience(aid, api=api).get_sessions(params={"session_id": 42})
    assert session["num_received"] == "3"


def test_ten_thousand_removals_fit_in_a_body_but_not_in_a_url(
    srv: SandboxServer, api: FacebookAdsApi
) -> None:
    """A DELETE whose payload is in the URL is cut off by the URL limit; in a multipart body (Meta's
    Java SDK) or a POST with method=delete the same 10,000 rows go in one request."""
    aid = create(api, "vip")
    aud = CustomAudience(aid, api=api)
    rows = emails(10_000)
    aud.create_user(params={"payload": {"schema": "EMAIL_SHA256", "data": rows}, "session": sess(51)})
    half = len(rows) // 2
    with pytest.raises(requests.ConnectionError):
        aud.delete_users(
            params={"payload": {"schema": "EMAIL_SHA256", "data": rows[:half]}, "session": sess(52)}
        )
    assert srv.meta.requests_log()[-1]["fault"] == "url_too_long"
    users = f"{srv.url}/v26.0/{aid}/users"
    form = _users_form(rows[:half], 53)
    in_body = requests.delete(
        users,
        params={"access_token": form.pop("access_token")},
        files={k: (None, v) for k, v in form.items()},
        timeout=10,
    )
    assert in_body.status_code == 200 and in_body.json()["num_received"] == half
    assert srv.meta.requests_log()[-1]["method"] == "DELETE"
    overridden = requests.post(users, data=_users_form(rows[half:], 54, method="delete"), timeout=10)
    assert overridden.status_code == 200 and overridden.json()["num_received"] == len(rows) - half
    assert srv.meta.members(aid) == []
