"""The settings object: every AUDIENCE_SYNC_* variable parsed in one place, documented once in the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from audience_sync.core import settings as settings_module
from audience_sync.core.campaign import campaigns_dir, check_segment_name, project_root
from audience_sync.core.settings import VARIABLES, Settings, SettingsError, override, reload, settings
from audience_sync.core.sync import RetryPolicy

ROOT = Path(__file__).resolve().parents[2]
READS = (
    r"environ\.get\(\s*[\"']AUDIENCE_SYNC_",
    r"getenv\(\s*[\"']AUDIENCE_SYNC_",
    r"environ\[[\"']AUDIENCE_SYNC_\w+[\"']\](?!\s*=)",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in VARIABLES:
        monkeypatch.delenv(var.name, raising=False)


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s == Settings()
    assert s.campaigns_dir is None and s.segment_name_rule == "strict" and s.strict is False
    assert (s.retry_attempts, s.retry_initial_wait, s.retry_max_wait) == (5, 2.0, 120.0)
    assert s.sandbox_token == "sandbox-token"
    assert s.airflow_home == Path.home() / "airflow"
    assert RetryPolicy.from_env({}) == RetryPolicy()


def test_every_variable_is_parsed_into_its_typed_field() -> None:
    s = Settings.from_env(
        {
            "AUDIENCE_SYNC_CAMPAIGNS_DIR": " ~/campaigns ",
            "AUDIENCE_SYNC_SEGMENT_NAME_RULE": "Relaxed",
            "AUDIENCE_SYNC_STRICT": "yes",
            "AUDIENCE_SYNC_RETRY_ATTEMPTS": "1",
            "AUDIENCE_SYNC_RETRY_INITIAL_WAIT": "0.5",
            "AUDIENCE_SYNC_RETRY_MAX_WAIT": "30",
            "AUDIENCE_SYNC_SANDBOX_TOKEN": "local",
            "AIRFLOW_HOME": "/srv/airflow",
        }
    )
    assert s.campaigns_dir == Path.home() / "campaigns"
    assert s.segment_name_rule == "relaxed" and s.strict is True
    assert (s.retry_attempts, s.retry_initial_wait, s.retry_max_wait) == (1, 0.5, 30.0)
    assert s.sandbox_token == "local"
    assert s.state_dir == Path("/srv/airflow/audience_sync")
    assert Settings.from_env({"AUDIENCE_SYNC_STRICT": "0"}).strict is False


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("AUDIENCE_SYNC_SEGMENT_NAME_RULE", "lenient", "must be 'strict' or 'relaxed'"),
        ("AUDIENCE_SYNC_STRICT", "maybe", "must be a yes/no flag"),
        ("AUDIENCE_SYNC_RETRY_ATTEMPTS", "0", "whole number of at least 1"),
        ("AUDIENCE_SYNC_RETRY_ATTEMPTS", "three", "whole number of at least 1"),
        ("AUDIENCE_SYNC_RETRY_INITIAL_WAIT", "-1", "number of seconds, 0 or more"),
        ("AUDIENCE_SYNC_RETRY_MAX_WAIT", "nan", "number of seconds, 0 or more"),
    ],
)
def test_a_bad_value_names_the_variable_and_the_fix(variable: str, value: str, expected: str) -> None:
    with pytest.raises(SettingsError, match=expected) as info:
        Settings.from_env({variable: value})
    message = str(info.value)
    assert message.startswith(f"{variable} is '{value}'")
    assert f"Fix: set {variable}=" in message
    assert isinstance(info.value, ValueError)


def test_a_bad_retry_setting_fails_the_retry_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIENCE_SYNC_RETRY_ATTEMPTS", "-2")
    with pytest.raises(SettingsError, match="AUDIENCE_SYNC_RETRY_ATTEMPTS"):
        RetryPolicy.from_env()
    monkeypatch.setenv("AUDIENCE_SYNC_RETRY_ATTEMPTS", "2")
    assert RetryPolicy.from_env().attempts == 2


def test_settings_follow_the_environment_and_are_parsed_once_per_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = settings()
    assert settings() is first  # unchanged environment: the cached object
    monkeypatch.setenv("AUDIENCE_SYNC_CAMPAIGNS_DIR", "tests/fixtures/campaigns/good")
    assert settings() is not first
    assert campaigns_dir() == ROOT / "tests" / "fixtures" / "campaigns" / "good"
    assert reload() == settings()


def test_override_replaces_fields_for_a_block_only() -> None:
    with pytest.raises(ValueError, match="Suggested name"):
        check_segment_name("Promo 2026")
    with override(segment_name_rule="relaxed", campaigns_dir=Path("elsewhere")) as s:
        assert settings() is s
        check_segment_name("Promo 2026")
        assert campaigns_dir() == project_root() / "elsewhere"
    assert settings().segment_name_rule == "strict"
    assert campaigns_dir() == project_root() / "include" / "campaigns"


def test_no_other_module_reads_an_audience_sync_variable() -> None:
    """The settings module is the one reader; others go through :func:`settings`."""
    offenders = []
    for path in (ROOT / "plugins" / "audience_sync").rglob("*.py"):
        if path == Path(settings_module.__file__):
            continue
        text = path.read_text(encoding="utf-8")
        # reads only: the demo writes AUDIENCE_SYNC_CAMPAIGNS_DIR to point its DAG folder at its campaign
        if any(re.search(pattern, text) for pattern in READS):
            offenders.append(path.relative_to(ROOT).as_posix())
    assert offenders == []


def test_the_readme_documents_every_variable_in_one_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    documented = {m.group(1) for line in rows if (m := re.match(r"\| `([A-Z_]+)` \|", line))}
    assert {v.name for v in VARIABLES} <= documented
    for var in VARIABLES:
        (row,) = [line for line in rows if line.startswith(f"| `{var.name}` |")]
        assert var.default in row and var.type in row
    # every AUDIENCE_SYNC_* name the README mentions is either a setting or compose-only
    mentioned = set(re.findall(r"(?<![A-Z_])AUDIENCE_SYNC_[A-Z_]+", readme))
    assert mentioned <= {v.name for v in VARIABLES} | {"AUDIENCE_SYNC_IMAGE"}


def test_staging_url_and_partition_settings() -> None:
    s = Settings.from_env({"AIRFLOW_HOME": "/srv/airflow"})
    assert s.staging == "file:///srv/airflow/audience_sync/staging"
    assert (s.staging_conn_id, s.partition_rows, s.max_partitions) == (None, 1_000_000, 16)
    s = Settings.from_env(
        {
            "AUDIENCE_SYNC_STAGING_URL": "s3://bucket/audience-sync/",
            "AUDIENCE_SYNC_STAGING_CONN_ID": "aws_staging",
            "AUDIENCE_SYNC_PARTITION_ROWS": "5000",
            "AUDIENCE_SYNC_MAX_PARTITIONS": "4",
        }
    )
    assert (s.staging, s.staging_conn_id, s.partition_rows, s.max_partitions) == (
        "s3://bucket/audience-sync",
        "aws_staging",
        5000,
        4,
    )
    assert Settings.from_env({"AUDIENCE_SYNC_STAGING_URL": "/mnt/shared/"}).staging == "file:///mnt/shared"
    for bad in ("bucket/prefix", "s3://", "not a url://x"):
        with pytest.raises(SettingsError, match="AUDIENCE_SYNC_STAGING_URL.*s3://my-bucket"):
            Settings.from_env({"AUDIENCE_SYNC_STAGING_URL": bad})
    with pytest.raises(
        SettingsError, match="AUDIENCE_SYNC_PARTITION_ROWS is '10' but must be a whole number"
    ):
        Settings.from_env({"AUDIENCE_SYNC_PARTITION_ROWS": "10"})
