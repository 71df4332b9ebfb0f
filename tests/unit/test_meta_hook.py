"""The Meta hook reads its connection's extras, ``remove_via`` included, and fails naming the fix."""

from __future__ import annotations

import json

import pytest

CONN = "meta_removals"


@pytest.fixture
def conn(monkeypatch: pytest.MonkeyPatch):
    def set_extras(extra: dict) -> None:
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{CONN.upper()}",
            json.dumps({"conn_type": "generic", "password": "tok", "extra": extra}),
        )

    return set_extras


@pytest.mark.parametrize(
    ("extra", "via", "max_remove_rows"),
    [({}, "delete", 250), ({"remove_via": "delete_body"}, "delete_body", 10_000)]
    + [({"remove_via": "post_override"}, "post_override", 10_000)],
)
def test_remove_via_extra_sets_how_removals_travel(conn, extra: dict, via: str, max_remove_rows: int) -> None:
    from audience_sync.hooks.meta import MetaAudienceHook

    conn(extra)
    dest = MetaAudienceHook(CONN).get_destination("123")
    assert (dest.remove_via, dest.max_remove_rows, dest.max_batch_rows) == (via, max_remove_rows, 10_000)


def test_an_unknown_remove_via_names_the_connection_and_the_values(conn) -> None:
    from airflow.sdk.exceptions import AirflowException

    from audience_sync.hooks.meta import MetaAudienceHook

    conn({"remove_via": "post"})
    with pytest.raises(AirflowException) as exc:
        MetaAudienceHook(CONN).get_destination("123")
    message = str(exc.value)
    assert CONN in message and "remove_via='post'" in message
    assert all(v in message for v in ("delete", "delete_body", "post_override"))


def test_the_destination_refuses_an_unknown_remove_via_too() -> None:
    from audience_sync.destinations.meta import MetaDestination, make_meta_api

    with pytest.raises(ValueError, match="remove_via.*delete, delete_body, post_override"):
        MetaDestination(make_meta_api("tok"), "act_1", remove_via="DELETE")
