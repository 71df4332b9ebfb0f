"""Per-person consent for Google Data Manager: the campaign's ``consent:`` columns, the rule that reads
them, and what extraction stages for each platform (only google_datamanager takes them)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from audience_sync.core.campaign import load_campaign
from audience_sync.core.errors import CampaignErrors
from audience_sync.core.extract import extract_and_stage, staged_parts
from audience_sync.core.keys import ENCRYPTED_KEYS, StateKeys
from audience_sync.core.normalize import normalize_field

CAMPAIGN = """\
campaign: Loyal customers
duration: {{start: 2026-08-01}}
schedule: "@daily"
segment_name: loyal_customers
audience_group:
  list: tests/fixtures/campaigns/data/existing_list.csv
  key: customer_id
  identifiers: {{email: email}}
  consent: {consent}
destinations:
  - platform: google_datamanager
    operating_account_id: "1234567890"
"""


@pytest.mark.parametrize(
    ("raw", "sent"),
    [
        ("yes", "GRANTED"),
        (" Granted ", "GRANTED"),
        ("1", "GRANTED"),
        (True, "GRANTED"),
        (1, "GRANTED"),
        ("no", "DENIED"),
        ("DENIED", "DENIED"),
        (False, "DENIED"),
        (0, "DENIED"),
        ("unspecified", "UNSPECIFIED"),
        ("unknown", "UNSPECIFIED"),
    ],
)
def test_consent_values_read_as_googles_statuses(raw: object, sent: str) -> None:
    result = normalize_field("google_datamanager", "ad_user_data", raw)
    assert result.sent == sent and result.error is None


def test_an_unreadable_consent_value_is_an_error_not_a_guess() -> None:
    result = normalize_field("google_datamanager", "ad_personalization", "maybe")
    assert result.sent is None and result.error


def test_consent_travels_unhashed_and_encrypted_at_rest() -> None:
    assert {"ad_user_data", "ad_personalization"} <= ENCRYPTED_KEYS


def test_the_campaign_maps_consent_columns(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CAMPAIGN.format(consent="{ad_user_data: data_ok, ad_personalization: pers_ok}"))
    group = load_campaign(path).audience_group
    assert group.consent.column is None  # no filter: every row is extracted
    assert group.extracted_fields == {
        "email": "email",
        "ad_user_data": "data_ok",
        "ad_personalization": "pers_ok",
    }


def test_a_consent_that_names_no_column_fails_with_the_fix(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CAMPAIGN.format(consent="{}"))
    with pytest.raises(CampaignErrors) as info:
        load_campaign(path)
    text = str(info.value)
    assert "consent" in text and "ad_user_data" in text and "c.yaml" in text


def test_only_google_datamanager_stages_the_consent(tmp_path) -> None:
    rows = [
        {"id": "a", "mail": "a@example.com", "data": "yes", "pers": "no"},
        {"id": "b", "mail": "b@example.com", "data": "", "pers": "yes"},
    ]
    keys = StateKeys.generate()
    counts = extract_and_stage(
        [rows],
        key="id",
        identifiers={"email": "mail", "ad_user_data": "data", "ad_personalization": "pers"},
        platforms=["meta", "google_datamanager"],
        staging_dir=tmp_path,
        keys=keys,
        workers=1,
    )
    assert counts.staged["meta"]["schema"] == ["EMAIL"]
    google = counts.staged["google_datamanager"]
    assert google["schema"] == ["email_address", "ad_user_data", "ad_personalization"]
    staged = [r for p in staged_parts(google["path"]) for r in pq.read_table(p).to_pylist()]
    assert len(staged) == 2
    assert all(r["ad_user_data"] != "GRANTED" for r in staged)  # sealed at rest, never the plain value
    opened = sorted(
        sorted(keys.open_payload({k: r[k] for k in ("ad_user_data", "ad_personalization")}).values())
        for r in staged
    )
    assert opened == [["", "GRANTED"], ["DENIED", "GRANTED"]]
