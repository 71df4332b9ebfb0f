"""file_drop as a campaign file and an Airflow connection see it: the destination model (recipient, options,
malformed fields named with their fix), the hook (base URL from the connection, fails fast with the fix),
the folder names and the files' rules (hashes only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audience_sync.core.campaign import load_campaign
from audience_sync.core.errors import CampaignErrors
from audience_sync.core.normalize import RowHasher
from audience_sync.destinations.file_drop_files import folder_name, text_of_folder
from tests.campaign_files import one_destination

CONN = "file_drop_test"


def write(folder: Path, destination: str) -> Path:
    return one_destination(folder, "file_drop", destination, identifiers="{email: email, phone: phone}")


def test_defaults_and_options_reach_the_factory(tmp_path: Path) -> None:
    (dest,) = load_campaign(write(tmp_path, "recipient: acme_onboarding\n")).destinations
    assert (dest.account, dest.conn_id) == ("acme_onboarding", "file_drop_default")
    assert dest.options() == {"files": "membership", "compression": "gzip"}
    (dest,) = load_campaign(
        write(tmp_path, "recipient: acme\nfiles: changes\ncompression: none\n")
    ).destinations
    assert dest.options() == {"files": "changes", "compression": "none"}


@pytest.mark.parametrize(
    ("destination", "field", "in_message", "in_fix"),
    [
        ("recipient: ../etc\n", "destinations[0].recipient", "'../etc'", "folder name"),
        ("recipient: Acme Corp\n", "destinations[0].recipient", "'Acme Corp'", "lowercase"),
        ("recipient: acme\nfiles: full\n", "destinations[0].files", "'full'", "membership, changes"),
        ("recipient: acme\ncompression: zip\n", "destinations[0].compression", "'zip'", "gzip, none"),
    ],
)
def test_a_malformed_field_names_file_field_and_fix(
    tmp_path: Path, destination: str, field: str, in_message: str, in_fix: str
) -> None:
    path = write(tmp_path, destination)
    with pytest.raises(CampaignErrors) as info:
        load_campaign(path)
    (error,) = [e for e in info.value.errors if e.field == field]
    assert in_message in error.message
    assert in_fix in error.fix
    assert path.name in str(error)


def test_the_files_rules_send_hashes_only() -> None:
    hasher = RowHasher(
        "file_drop", {"email": "mail", "phone": "tel", "madid": "maid", "external_id": "cid"}, "US"
    )
    row = hasher.hash_row(
        {
            "mail": " Jane.Doe+x@Example.com ",
            "tel": "(650) 253-0000",
            "maid": "AB" * 4 + "-1234-1234-1234-" + "C" * 12,
            "cid": " 42 ",
        }
    )
    assert hasher.schema == ("email_sha256", "phone_sha256", "madid_sha256", "external_id_sha256")
    assert row.valid and all(len(v) == 64 and int(v, 16) >= 0 for v in row.values)
    meta = RowHasher("meta", {"email": "mail"}, "US").hash_row({"mail": " Jane.Doe+x@Example.com "})
    google = RowHasher("google_ads", {"phone": "tel"}, "US").hash_row({"tel": "(650) 253-0000"})
    assert row.values[0] == meta.values[0]  # e-mail as Meta normalises it (trim, lowercase)
    assert row.values[1] == google.values[0]  # phone as Google: E.164 with '+'


@pytest.mark.parametrize(
    "name", ["abandoned_cart_users", "contract vip", "VIP", "vip list", "Ünïcode/..", "a~b"]
)
def test_folder_names_are_safe_and_reversible(name: str) -> None:
    folder = folder_name(name)
    assert all(c.isascii() and (c.islower() or c.isdigit() or c in "_-~") for c in folder)
    assert text_of_folder(folder) == name
    assert folder != folder_name(name.swapcase()) or name == name.swapcase()


# ------------------------------------------------------------------------------------------ the hook


@pytest.fixture
def conn(monkeypatch: pytest.MonkeyPatch):
    def set_conn(extra: dict, **fields: object) -> None:
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{CONN.upper()}", json.dumps({"conn_type": "generic", **fields, "extra": extra})
        )

    return set_conn


def test_the_base_url_and_options_reach_the_destination(conn, tmp_path: Path) -> None:
    from audience_sync.destinations import build_destination

    conn({"base_url": tmp_path.as_uri(), "timeout": 30})
    dest = build_destination("file_drop", CONN, "acme", {"files": "changes", "compression": "none"})
    assert (dest.account, dest.files, dest.compression, dest.timeout) == ("acme", "changes", "none", 30.0)
    assert str(dest.folder.path).endswith(f"{tmp_path.name}/acme")
    assert dest.find_audiences("loyal_customers") == []  # reads the store, finds nothing


@pytest.mark.parametrize(
    ("extra", "fields", "says"),
    [
        ({}, {}, "no base URL"),
        ({"base_url": "drops/local"}, {}, "file:///"),
        ({"base_url": "file:///x", "bucket": "b"}, {}, "unknown extras ['bucket']"),
        ({"base_url": "file:///x", "timeout": "soon"}, {}, "number of seconds"),
    ],
)
def test_a_bad_connection_fails_fast_with_the_fix(conn, extra: dict, fields: dict, says: str) -> None:
    from airflow.sdk.exceptions import AirflowException

    from audience_sync.hooks.file_drop import FileDropHook

    conn(extra, **fields)
    with pytest.raises(AirflowException, match=CONN) as info:
        FileDropHook(CONN).get_destination("acme")
    assert says in str(info.value)


def test_a_missing_connection_says_how_to_define_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.exceptions import AirflowException

    from audience_sync.hooks.file_drop import FileDropHook

    monkeypatch.delenv("AIRFLOW_CONN_FILE_DROP_MISSING", raising=False)
    with pytest.raises(AirflowException, match="AIRFLOW_CONN_FILE_DROP_MISSING=.*base_url"):
        FileDropHook("file_drop_missing").get_destination("acme")


def test_the_host_may_carry_the_base_url(conn, tmp_path: Path) -> None:
    from audience_sync.hooks.file_drop import FileDropHook

    conn({}, host=tmp_path.as_uri())
    assert FileDropHook(CONN).settings["base_url"] == tmp_path.as_uri()
