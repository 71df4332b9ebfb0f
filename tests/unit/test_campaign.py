"""Tests of the campaign model: loading, defaults, and every kind of invalid campaign file."""

from __future__ import annotations

import textwrap
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo

import pydantic
import pytest

from audience_sync.core.campaign import (
    CAMPAIGNS_DIR_ENV,
    IDENTIFIER_TYPES,
    SEGMENT_NAME_RULE_ENV,
    SYNC_MODES,
    Campaign,
    SegmentNameError,
    campaign_from_mapping,
    campaigns_dir,
    check_segment_name,
    load_campaign,
    load_campaigns,
    project_root,
    suggest_segment_name,
    supported_platforms,
)
from audience_sync.core.errors import CampaignError, CampaignErrors
from audience_sync.platforms import BUILTINS
from audience_sync.platforms.meta import MetaCampaignDestination

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "campaigns"
GOOD = FIXTURES / "good"
BAD = FIXTURES / "bad"
DATA = FIXTURES / "data"
SQL_FILE = "tests/fixtures/campaigns/data/abandoned_cart.sql"
LIST_FILE = "tests/fixtures/campaigns/data/existing_list.csv"

MINIMAL = f"""\
campaign: Loyal customers
duration: {{start: 2026-08-01}}
schedule: "@daily"
segment_name: loyal_customers
audience_group:
  list: {LIST_FILE}
  key: customer_id
  identifiers: {{email: email}}
destinations:
  - platform: meta
    ad_account_id: "act_1234567890"
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test with the default configuration."""
    monkeypatch.delenv(SEGMENT_NAME_RULE_ENV, raising=False)
    monkeypatch.delenv(CAMPAIGNS_DIR_ENV, raising=False)


def write(folder: Path, text: str, name: str = "campaign.yaml") -> Path:
    """Write a campaign file and return its path."""
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def errors_of(path: Path) -> list[CampaignError]:
    """Load ``path``, expecting it to fail, and return its problems."""
    with pytest.raises(CampaignErrors) as info:
        load_campaign(path)
    assert info.value.errors, "CampaignErrors without any CampaignError"
    return info.value.errors


def only_error(path: Path, field: str) -> CampaignError:
    """The single problem reported for ``field``."""
    matching = [e for e in errors_of(path) if e.field == field]
    assert len(matching) == 1, [str(e) for e in errors_of(path)]
    return matching[0]


# --------------------------------------------------------------------------------------------------
# Good files
# --------------------------------------------------------------------------------------------------


def test_full_file_loads_with_every_field() -> None:
    campaign = load_campaign(GOOD / "abandoned_cart.yaml")

    assert isinstance(campaign, Campaign)
    assert campaign.path == (GOOD / "abandoned_cart.yaml").resolve()
    assert campaign.stem == "abandoned_cart"
    assert campaign.dag_id == "ads_audience__abandoned_cart"
    assert campaign.campaign == campaign.name == "Abandoned cart July"
    assert campaign.ads_campaign_name == "Abandoned cart ads"
    assert campaign.description == "Win back shoppers who left items in their cart."
    assert campaign.owner == "growth-team"
    assert campaign.tags == ("retention", "cart")
    assert campaign.duration.start == date(2026, 7, 1)
    assert campaign.duration.end == date(2026, 7, 31)
    assert campaign.schedule == "@daily"
    assert campaign.timezone == "Asia/Kolkata"
    assert campaign.tzinfo == ZoneInfo("Asia/Kolkata")
    assert campaign.segment_name == "abandoned_cart_users"
    assert campaign.sync_mode == "mirror"
    assert campaign.retries == 2
    assert campaign.retry_delay_minutes == 10

    group = campaign.audience_group
    assert group.source == "sql"
    assert group.list_file is None
    assert group.sql == SQL_FILE
    assert group.sql_file == group.source_path == DATA / "abandoned_cart.sql"
    assert group.sql_query().startswith("-- Customers who left items")
    assert "FROM customers AS c" in group.sql_query()
    assert group.conn_id == "crm_db"
    assert group.key == "customer_id"
    assert group.identifiers == {
        "email": "email",
        "phone": "mobile",
        "first_name": "first_name",
        "last_name": "last_name",
        "country": "country",
    }
    assert group.default_country == "GB"  # normalised from "gb"
    assert group.exclude_segments == ("week_one_users",)
    assert group.consent is not None
    assert group.consent.column == "ads_consent"

    (destination,) = campaign.destinations
    assert isinstance(destination, MetaCampaignDestination)
    assert destination.platform == "meta"
    assert destination.ad_account_id == destination.account == "act_1234567890"
    assert destination.conn_id == "meta_default"
    assert destination.identity() == ("meta", "act_1234567890")


def test_minimal_file_gets_defaults() -> None:
    campaign = load_campaign(GOOD / "minimal.yaml")

    assert campaign.dag_id == "ads_audience__minimal"
    assert campaign.ads_campaign_name == "Loyal customers"
    assert campaign.description is None
    assert campaign.owner == "audience-sync"
    assert campaign.tags == ()
    assert campaign.duration.end is None
    assert campaign.timezone == "UTC"
    assert campaign.tzinfo == ZoneInfo("UTC")
    assert campaign.sync_mode == "mirror"
    assert campaign.retries == 3
    assert campaign.retry_delay_minutes == 5
    group = campaign.audience_group
    assert group.source == "list"
    assert group.list_file == group.source_path == DATA / "existing_list.csv"
    assert group.sql is None
    assert group.sql_file is None
    assert group.conn_id is None
    assert group.default_country is None
    assert group.exclude_segments == ()
    assert group.consent is None
    assert campaign.destinations[0].ad_account_id == "act_1234567890"  # plain int in the file
    assert campaign.destinations[0].conn_id == "meta_default"
    with pytest.raises(ValueError, match="no SQL query"):
        group.sql_query()


def test_inline_sql_and_cron_schedule() -> None:
    campaign = load_campaign(GOOD / "inline_sql_cron.yaml")

    assert campaign.schedule == "30 6 * * 1"
    assert campaign.sync_mode == "add_only"
    assert campaign.audience_group.sql_file is None
    assert campaign.audience_group.source_path is None
    assert campaign.audience_group.sql_query().startswith("SELECT customer_id, email FROM customers")


def test_campaign_is_immutable() -> None:
    campaign = load_campaign(GOOD / "minimal.yaml")
    with pytest.raises(pydantic.ValidationError):
        campaign.segment_name = "other_name"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        campaign.audience_group.key = "other"  # type: ignore[misc]


def test_constants() -> None:
    assert supported_platforms() == tuple(p.name for p in BUILTINS)
    assert SYNC_MODES == ("mirror", "add_only", "replace")
    assert set(IDENTIFIER_TYPES) == {
        "email", "phone", "first_name", "last_name", "city", "state", "zip", "country", "gender",
        "date_of_birth", "madid", "external_id",
    }  # fmt: skip


def test_duration_contains() -> None:
    duration = load_campaign(GOOD / "abandoned_cart.yaml").duration
    assert duration.contains(date(2026, 7, 1))
    assert duration.contains(date(2026, 7, 31))
    assert not duration.contains(date(2026, 6, 30))
    assert not duration.contains(date(2026, 8, 1))
    assert load_campaign(GOOD / "minimal.yaml").duration.contains(date(2099, 1, 1))


def test_absolute_paths_and_other_presets(tmp_path: Path) -> None:
    query = tmp_path / "q.sql"
    query.write_text("SELECT 1 AS customer_id\n", encoding="utf-8")
    path = write(
        tmp_path,
        f"""\
        campaign: Absolute
        duration: {{start: "2026-07-01", end: "2026-07-01"}}
        schedule: "@hourly"
        segment_name: absolute_paths
        audience_group:
          sql: {query}
          conn_id: crm_db
          key: customer_id
          identifiers: {{external_id: customer_id}}
        destinations:
          - {{platform: meta, ad_account_id: "555"}}
        """,
    )
    campaign = load_campaign(path)
    assert campaign.audience_group.sql_file == query
    assert campaign.audience_group.sql_query() == "SELECT 1 AS customer_id"
    assert campaign.duration.start == campaign.duration.end == date(2026, 7, 1)


def test_from_mapping() -> None:
    campaign = campaign_from_mapping(
        {
            "campaign": "From a dict",
            "duration": {"start": date(2026, 7, 1)},
            "schedule": "@weekly",
            "segment_name": "from_a_dict",
            "audience_group": {"list": LIST_FILE, "key": "customer_id", "identifiers": {"email": "email"}},
            "destinations": [{"platform": "meta", "ad_account_id": "1"}],
        },
        "include/campaigns/from_dict.yaml",
    )
    assert campaign.dag_id == "ads_audience__from_dict"


# --------------------------------------------------------------------------------------------------
# Bad fixtures: one problem each, with the field and useful words in message and fix
# --------------------------------------------------------------------------------------------------

BAD_CASES = {
    # fixture: (field, words in the message, words in the fix)
    "unknown_key": ("descripton", "unknown key 'descripton'", "did you mean 'description'?"),
    "unknown_nested_key": ("destinations[0].conn", "unknown key 'conn'", "did you mean 'conn_id'?"),
    "both_list_and_sql": ("audience_group", "both 'list' and 'sql'", "exactly one of"),
    "neither_list_nor_sql": ("audience_group", "neither 'list' nor 'sql'", "exactly one of"),
    "sql_without_conn_id": ("audience_group.conn_id", "required when 'sql' is used", "conn_id:"),
    "list_with_conn_id": ("audience_group.conn_id", "only applies to 'sql'", "remove 'conn_id'"),
    "list_not_csv_or_parquet": ("audience_group.list", "not a .csv or .parquet file", ".csv or .parquet"),
    "missing_list_file": (
        "audience_group.list",
        "'tests/fixtures/campaigns/data/no_such_list.csv' does not exist",
        "correct the path",
    ),
    "missing_sql_file": (
        "audience_group.sql",
        "'include/sql/no_such_query.sql' does not exist",
        "correct the path",
    ),
    "unknown_platform": (
        "destinations[0].platform",
        "unsupported platform 'snapchat'",
        "supported platforms: meta",
    ),
    "missing_platform": ("destinations[0].platform", "required", "supported platforms: meta"),
    "bad_schedule": (
        "schedule",
        "'every day' is not a valid schedule",
        "@once, @hourly, @daily, @weekly, @monthly",
    ),
    "bad_cron": ("schedule", "'61 6 * * *' is not a valid cron expression", "5-field cron expression"),
    "end_before_start": ("duration.end", "end 2026-07-31 is before start 2026-08-01", "on or after 'start'"),
    "bad_timezone": ("timezone", "unknown timezone 'Asia/Kolkatta'", "did you mean 'Asia/Kolkata'?"),
    "bad_segment_name": (
        "segment_name",
        "capital letters 'I', 'U', 'J', 'W'; contains numbers '1'",
        "rename it to 'inactive_users_july_week_one'",
    ),
    "unknown_identifier": (
        "audience_group.identifiers.emial",
        "unknown identifier type 'emial'",
        "did you mean 'email'?",
    ),
    "empty_identifiers": ("audience_group.identifiers", "at least one identifier", "email: email"),
    "bad_ad_account_id": (
        "destinations[0].ad_account_id",
        "'act_12ab34' is not a valid ad account id",
        "act_",
    ),
    "bad_sync_mode": ("sync_mode", "not a known sync mode", "mirror, add_only, replace"),
    "missing_required": ("segment_name", "required but missing", "segment_name:"),
    "duplicate_key": (
        "(file)",
        "duplicate key 'schedule' (first defined on line 4) and again on line 5",
        "only one",
    ),
    "yaml_syntax_error": ("(file)", "YAML syntax error at line 9", "indentation"),
    "not_a_mapping": ("(file)", "top level must be a mapping", "campaign: <name>"),
    "bad-file-name": ("(file name)", "cannot form a DAG id", "rename the file to 'bad_file_name.yaml'"),
}


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_fixture(name: str) -> None:
    field, in_message, in_fix = BAD_CASES[name]
    errors = errors_of(BAD / f"{name}.yaml")
    assert [e.field for e in errors] == [field], [str(e) for e in errors]
    (error,) = errors
    assert in_message in error.message
    assert in_fix in error.fix
    assert error.path == f"tests/fixtures/campaigns/bad/{name}.yaml"
    assert field in str(error)
    assert error.fix in str(error)


def test_every_bad_fixture_is_covered() -> None:
    assert {p.stem for p in BAD.glob("*.yaml")} == set(BAD_CASES)


def test_line_numbers_are_reported() -> None:
    error = only_error(BAD / "unknown_platform.yaml", "destinations[0].platform")
    assert "(line 11)" in error.message


# --------------------------------------------------------------------------------------------------
# Bad inline files
# --------------------------------------------------------------------------------------------------


def test_all_problems_of_a_file_are_collected(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""\
        campaign: Everything wrong
        duration: {{start: 2026-08-01, end: 2026-07-01}}
        schedule: sometimes
        timezone: Mars/Olympus
        segment_name: Promo 2026!
        audience_group:
          list: {LIST_FILE}
          sql: SELECT 1 FROM t
          key: customer_id
          identifiers: {{emial: email}}
        destinations:
          - platform: snapchat
            ad_account_id: "1"
        """,
    )
    fields = {e.field for e in errors_of(path)}
    assert fields == {
        "duration.end",
        "schedule",
        "timezone",
        "segment_name",
        "audience_group",
        "audience_group.identifiers.emial",
        "destinations[0].platform",
    }


def test_errors_are_sorted_by_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('"@daily"', "never").replace("loyal_customers", "Loyal"))
    assert [e.field for e in errors_of(path)] == ["schedule", "segment_name"]


def test_unknown_key_without_close_match_lists_allowed_keys(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "zzz: 1\n")
    error = only_error(path, "zzz")
    assert "did you mean" not in error.fix
    assert "allowed keys here: campaign, ads_campaign_name" in error.fix


def test_unknown_key_in_duration(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("{start: 2026-08-01}", "{start: 2026-08-01, ned: 2026-09-01}"))
    error = only_error(path, "duration.ned")
    assert "did you mean 'end'?" in error.fix


def test_unknown_platform_close_to_meta(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("platform: meta", "platform: Meta"))
    error = only_error(path, "destinations[0].platform")
    assert error.message.startswith("unsupported platform 'Meta'")
    assert "did you mean 'meta'?" in error.fix


def test_no_destinations(tmp_path: Path) -> None:
    text = MINIMAL.split("destinations:")[0] + "destinations: []\n"
    error = only_error(write(tmp_path, text), "destinations")
    assert "at least one destination" in error.message


def test_destinations_must_be_a_list(tmp_path: Path) -> None:
    text = MINIMAL.split("destinations:")[0] + "destinations: {platform: meta, ad_account_id: '1'}\n"
    error = only_error(write(tmp_path, text), "destinations")
    assert error.message == "must be a list (line 9)"


def test_duplicate_destination(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '  - platform: meta\n    ad_account_id: "1234567890"\n')
    error = only_error(path, "destinations[1]")
    assert "duplicates destinations[0]" in error.message


@pytest.mark.parametrize(
    ("written", "normalised"),
    [
        ('"act_1234567890"', "act_1234567890"),
        ('"1234567890"', "act_1234567890"),
        ("1234567890", "act_1234567890"),
    ],
)
def test_ad_account_id_is_normalised(tmp_path: Path, written: str, normalised: str) -> None:
    path = write(tmp_path, MINIMAL.replace('"act_1234567890"', written))
    assert load_campaign(path).destinations[0].ad_account_id == normalised


@pytest.mark.parametrize("written", ['"act_"', '"abc"', '"act_12-34"', "true", '""'])
def test_ad_account_id_must_be_numeric(tmp_path: Path, written: str) -> None:
    path = write(tmp_path, MINIMAL.replace('"act_1234567890"', written))
    error = only_error(path, "destinations[0].ad_account_id")
    assert "act_1234567890" in error.fix


def test_sql_needs_a_sql_file_or_a_query(tmp_path: Path) -> None:
    text = MINIMAL.replace(f"list: {LIST_FILE}", "sql: customers\n  conn_id: crm_db")
    error = only_error(write(tmp_path, text), "audience_group.sql")
    assert "neither a .sql file nor a query" in error.message


def test_empty_sql_file(tmp_path: Path) -> None:
    (tmp_path / "empty.sql").write_text("  \n", encoding="utf-8")
    text = MINIMAL.replace(f"list: {LIST_FILE}", f"sql: {tmp_path / 'empty.sql'}\n  conn_id: crm_db")
    error = only_error(write(tmp_path, text), "audience_group.sql")
    assert "is empty" in error.message


def test_missing_file_names_resolved_path(tmp_path: Path) -> None:
    text = MINIMAL.replace(LIST_FILE, "include/../include/nothing.parquet")
    error = only_error(write(tmp_path, text), "audience_group.list")
    assert (
        "'include/../include/nothing.parquet' does not exist (looked for include/nothing.parquet)"
        in error.message
    )


def test_default_country(tmp_path: Path) -> None:
    ok = write(tmp_path, MINIMAL.replace("  key:", "  default_country: in\n  key:"))
    assert load_campaign(ok).audience_group.default_country == "IN"
    bad = write(tmp_path, MINIMAL.replace("  key:", "  default_country: USA\n  key:"), "bad.yaml")
    assert "2-letter country code" in only_error(bad, "audience_group.default_country").message


def test_excluding_own_segment(tmp_path: Path) -> None:
    path = write(
        tmp_path, MINIMAL.replace("  key:", "  exclude_segments: [other_users, loyal_customers]\n  key:")
    )
    error = only_error(path, "audience_group.exclude_segments[1]")
    assert "own segment" in error.message


def test_excluded_segment_names_follow_the_rule(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("  key:", "  exclude_segments: [Week1]\n  key:"))
    error = only_error(path, "audience_group.exclude_segments[0]")
    assert "rename it to 'week_one'" in error.fix


@pytest.mark.parametrize(
    ("value", "field", "message"),
    [
        ("retries: -1", "retries", "must be 0 or more"),
        ('retries: "3"', "retries", "whole number"),
        ("retry_delay_minutes: 1.5", "retry_delay_minutes", "whole number"),
        ("tags: marketing", "tags", "must be a list"),
        ("owner: 42", "owner", "must be text"),
        ("description: [a]", "description", "must be text"),
        ("ads_campaign_name: ''", "ads_campaign_name", "must not be empty"),
    ],
)
def test_optional_field_types(tmp_path: Path, value: str, field: str, message: str) -> None:
    error = only_error(write(tmp_path, MINIMAL + value + "\n"), field)
    assert message in error.message


@pytest.mark.parametrize(
    ("duration", "field", "message"),
    [
        ("{start: 20260701}", "duration.start", "must be a date"),
        ("{start: 2026-07-01 10:00:00}", "duration.start", "without a time"),
        ("{start: soon}", "duration.start", "must be a date"),
        ("{end: 2026-07-01}", "duration.start", "required but missing"),
        ("2026-07-01", "duration", "must be a mapping"),
    ],
)
def test_bad_durations(tmp_path: Path, duration: str, field: str, message: str) -> None:
    path = write(tmp_path, MINIMAL.replace("{start: 2026-08-01}", duration))
    assert message in only_error(path, field).message


def test_cross_field_rule_reported_with_other_errors_of_the_section(tmp_path: Path) -> None:
    """Cross-field rules are reported even when other fields of the same section fail."""
    text = MINIMAL.replace("  key: customer_id\n", "  key: ''\n  sql: SELECT 1 FROM t\n")
    fields = {e.field for e in errors_of(write(tmp_path, text))}
    assert fields == {"audience_group", "audience_group.key"}


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    (error,) = errors_of(write(tmp_path, text))
    assert (error.field, error.message) == ("(file)", "file is empty")


def test_missing_campaign_file(tmp_path: Path) -> None:
    (error,) = errors_of(tmp_path / "nope.yaml")
    assert (error.field, error.message) == ("(file)", "file does not exist")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("campaign: caf\xe9\n".encode("latin-1"))
    (error,) = errors_of(path)
    assert "UTF-8" in error.message


def test_bad_file_name_and_bad_yaml_both_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "campaign: [unclosed\n", "my campaign.yaml")
    assert [e.field for e in errors_of(path)] == ["(file name)", "(file)"]


# --------------------------------------------------------------------------------------------------
# Segment names
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("Inactive_Users_July_Week1", "inactive_users_july_week_one"),
        ("Promo 2026!", "promo_two_zero_two_six"),
        ("week12", "week_one_two"),
        ("week21", "week_two_one"),
        ("VIPCustomers", "vip_customers"),
        ("abandonedCart", "abandoned_cart"),
        ("  __café--crème__ ", "cafe_creme"),
        ("ab", "ab_segment"),
        ("!!!", "segment"),
        ("7", "seven"),
        ("x" * 200, "x" * 128),
    ],
)
def test_suggest_segment_name(name: str, suggestion: str) -> None:
    assert suggest_segment_name(name) == suggestion
    check_segment_name(suggestion, strict=True)


@pytest.mark.parametrize("name", ["abc", "abandoned_cart_users", "a_b_c", "x" * 128])
def test_valid_strict_segment_names(name: str) -> None:
    check_segment_name(name)
    check_segment_name(name, strict=True)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("Inactive_Users_July_Week1", "contains capital letters 'I', 'U', 'J', 'W'; contains numbers '1'"),
        ("Promo 2026!", "contains numbers '2', '0', '6'; contains special characters ' ' (space), '!'"),
        ("ab", "is too short (2 characters, at least 3)"),
        ("x" * 129, "is too long (129 characters, at most 128)"),
        ("cart-users", "contains special characters '-'"),
        ("_cart", "leading, trailing or doubled underscore"),
        ("cart__users", "leading, trailing or doubled underscore"),
        ("cart_", "leading, trailing or doubled underscore"),
        ("café", "contains special characters 'é'"),
    ],
)
def test_invalid_strict_segment_names(name: str, reason: str) -> None:
    with pytest.raises(SegmentNameError) as info:
        check_segment_name(name)
    assert isinstance(info.value, ValueError)
    assert reason in info.value.reason
    assert f"Suggested name: '{suggest_segment_name(name)}'" in str(info.value)


def test_segment_name_error_message() -> None:
    with pytest.raises(ValueError, match="Suggested name: 'inactive_users_july_week_one'") as info:
        check_segment_name("Inactive_Users_July_Week1")
    assert "'Inactive_Users_July_Week1'" in str(info.value)
    assert "capital letters 'I', 'U', 'J', 'W'" in str(info.value)


def test_relaxed_rule(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(SEGMENT_NAME_RULE_ENV, "relaxed")
    for name in ["Inactive_Users_July_Week1", "Promo 2026", "ab", "x", "Summer-Sale 2026"]:
        check_segment_name(name)
    with pytest.raises(SegmentNameError, match="Suggested name: 'Promo 2026'") as info:
        check_segment_name("Promo 2026!")
    assert "'!'" in info.value.reason
    for bad in ["", " padded", "x" * 129, "a/b"]:
        with pytest.raises(SegmentNameError):
            check_segment_name(bad)
    # an explicit argument wins over the environment
    with pytest.raises(SegmentNameError):
        check_segment_name("Promo 2026", strict=True)

    path = write(tmp_path, MINIMAL.replace("loyal_customers", "Loyal Customers 2026"))
    assert load_campaign(path).segment_name == "Loyal Customers 2026"
    bad = write(tmp_path, MINIMAL.replace("loyal_customers", "Loyal/Customers"), "bad.yaml")
    error = only_error(bad, "segment_name")
    assert "special characters '/'" in error.message
    assert "rename it to 'Loyal_Customers'" in error.fix


def test_relaxed_mode_is_not_the_default() -> None:
    with pytest.raises(SegmentNameError):
        check_segment_name("Promo 2026")
    check_segment_name("Promo 2026", strict=False)


def test_invalid_rule_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(SEGMENT_NAME_RULE_ENV, "lenient")
    with pytest.raises(ValueError, match="must be 'strict' or 'relaxed'"):
        check_segment_name("abc")
    error = only_error(write(tmp_path, MINIMAL), "segment_name")
    assert SEGMENT_NAME_RULE_ENV in error.message


# --------------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------------


def test_project_root_and_default_campaigns_dir() -> None:
    assert (project_root() / "plugins" / "audience_sync" / "core" / "campaign" / "__init__.py").is_file()
    assert campaigns_dir() == project_root() / "include" / "campaigns"


def test_campaigns_dir_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CAMPAIGNS_DIR_ENV, "tests/fixtures/campaigns/good")
    assert campaigns_dir() == GOOD
    campaigns, broken = load_campaigns()
    assert [c.dag_id for c in campaigns] == [
        "ads_audience__abandoned_cart",
        "ads_audience__inline_sql_cron",
        "ads_audience__minimal",
    ]
    assert broken == {}

    monkeypatch.setenv(CAMPAIGNS_DIR_ENV, str(tmp_path))
    assert campaigns_dir() == tmp_path
    assert load_campaigns() == ([], {})


def test_load_campaigns_keeps_good_files_when_one_is_broken(tmp_path: Path) -> None:
    write(tmp_path, MINIMAL, "good_one.yaml")
    write(tmp_path, MINIMAL.replace('"@daily"', '"@sometimes"'), "broken_one.yml")
    write(tmp_path, "not: [valid", "_draft.yaml")  # ignored: leading underscore
    write(tmp_path, "not: [valid", ".hidden.yaml")  # ignored: leading dot
    write(tmp_path, "not: [valid", "notes.txt")  # ignored: not YAML

    campaigns, broken = load_campaigns(tmp_path)

    assert [c.dag_id for c in campaigns] == ["ads_audience__good_one"]
    assert list(broken) == [str(tmp_path / "broken_one.yml")]
    (error,) = broken[str(tmp_path / "broken_one.yml")].errors
    assert error.field == "schedule"


def test_load_campaigns_strict_names_every_broken_file(tmp_path: Path) -> None:
    write(tmp_path, MINIMAL, "good_one.yaml")
    write(tmp_path, MINIMAL.replace('"@daily"', '"@sometimes"'), "broken_a.yaml")

    with pytest.raises(CampaignErrors) as info:
        load_campaigns(tmp_path, strict=True)
    assert info.value.path == str(tmp_path / "broken_a.yaml")
    assert "broken_a.yaml" in str(info.value)
    assert "schedule" in str(info.value)

    write(tmp_path, "campaign: [", "broken_b.yaml")
    with pytest.raises(CampaignErrors) as info:
        load_campaigns(tmp_path, strict=True)
    assert info.value.path == str(tmp_path / "broken_a.yaml")  # the first broken file
    assert "2 broken campaign files" in str(info.value)
    assert "broken_a.yaml" in str(info.value)
    assert "broken_b.yaml" in str(info.value)


def test_load_campaigns_same_stem_twice(tmp_path: Path) -> None:
    write(tmp_path, MINIMAL, "same.yaml")
    write(tmp_path, MINIMAL, "same.yml")
    campaigns, broken = load_campaigns(tmp_path)
    assert [c.path.name for c in campaigns] == ["same.yaml"]
    (error,) = broken[str(tmp_path / "same.yml")].errors
    assert "DAG id 'ads_audience__same' is already used by 'same.yaml'" in error.message


def test_load_campaigns_relative_folder_and_bad_fixtures() -> None:
    campaigns, broken = load_campaigns("tests/fixtures/campaigns/bad")
    assert campaigns == []
    assert set(broken) == {f"tests/fixtures/campaigns/bad/{name}.yaml" for name in BAD_CASES}


def test_load_campaigns_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_campaigns(tmp_path / "missing")


# --------------------------------------------------------------------------------------------------
# partitions (scale-out of extraction)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [(None, 1), ("1", 1), ("3", 3), ("64", 64), ("auto", "auto")])
def test_partitions(tmp_path: Path, value: str | None, expected: int | str) -> None:
    text = MINIMAL + (f"partitions: {value}\n" if value is not None else "")
    assert load_campaign(write(tmp_path, text)).partitions == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "0 partitions is not between 1 and 64"),
        ("65", "65 partitions is not between 1 and 64"),
        ("-2", "-2 partitions is not between 1 and 64"),
        ('"3"', "'3' is not a number of partitions"),
        ("2.5", "'2.5' is not a number of partitions"),
        ("true", "'True' is not a number of partitions"),
        ("many", "'many' is not a number of partitions"),
    ],
)
def test_bad_partitions_name_file_field_and_fix(tmp_path: Path, value: str, message: str) -> None:
    path = write(tmp_path, MINIMAL + f"partitions: {value}\n")
    error = only_error(path, "partitions")
    assert message in error.message
    assert "partitions: auto" in error.fix and "whole number from 1 to 64" in error.fix
    assert str(path) in str(error) and "line 12" in str(error)
