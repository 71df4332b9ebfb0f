"""The campaign's ``delivery`` and ``alerts`` sections, and the group-size rule (core/alerts.py)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from audience_sync.core.alerts import Alert, hold_reason, size_change
from audience_sync.core.campaign import load_campaign
from tests.unit.test_campaign import MINIMAL, only_error, write


def test_defaults_promise_19_00_and_01_00_and_guard_at_50_percent(tmp_path: Path) -> None:
    c = load_campaign(write(tmp_path, MINIMAL))
    assert (c.delivery.cutoff, c.delivery.available_by) == (dt.time(19, 0), dt.time(1, 0))
    assert c.alerts.group_change_percent == 50 and c.alerts.targets == 0
    assert not c.alerts.wants("sync_failed")  # nobody to tell
    assert c.processing_timeout_minutes is None  # the wait lasts until the promise


def test_delivery_and_alerts_load(tmp_path: Path) -> None:
    text = MINIMAL + (
        'delivery: {cutoff: "17:30", available_by: "23:00:30"}\n'
        "alerts:\n"
        "  email: [ops@example.com, ads@example.com]\n"
        "  from_email: airflow@example.com\n"
        "  notifiers:\n"
        "    - class: airflow.providers.smtp.notifications.smtp.SmtpNotifier\n"
        "      params: {to: other@example.com}\n"
        "      message_param: html_content\n"
        "  triggers: [sync_failed, group_size_moved]\n"
        "  group_change_percent: 20\n"
    )
    c = load_campaign(write(tmp_path, text))
    assert (c.delivery.cutoff, c.delivery.available_by) == (dt.time(17, 30), dt.time(23, 0, 30))
    assert c.alerts.email == ("ops@example.com", "ads@example.com") and c.alerts.targets == 2
    assert c.alerts.wants("group_size_moved") and not c.alerts.wants("available_by_missed")
    assert c.alerts.notifiers[0].message_param == "html_content"


def test_an_unquoted_time_says_to_quote_it(tmp_path: Path) -> None:
    error = only_error(write(tmp_path, MINIMAL + "delivery: {cutoff: 19:00}\n"), "delivery.cutoff")
    assert "base-60" in error.message and '"19:00"' in error.fix


@pytest.mark.parametrize("value", ['"7 PM"', '"24:00"', '"19:60"'])
def test_a_time_that_is_not_hh_mm_is_refused(tmp_path: Path, value: str) -> None:
    error = only_error(
        write(tmp_path, MINIMAL + f"delivery: {{available_by: {value}}}\n"), "delivery.available_by"
    )
    assert "not a time of day" in error.message and "HH:MM" in error.fix


def test_a_notifier_class_that_does_not_import_fails_the_campaign(tmp_path: Path) -> None:
    text = MINIMAL + "alerts:\n  notifiers:\n    - class: airflow.providers.nothere.notifications.Nope\n"
    error = only_error(write(tmp_path, text), "alerts.notifiers[0].class")
    assert "cannot import 'airflow.providers.nothere.notifications'" in error.message
    assert "install its provider" in error.fix


def test_a_bad_address_or_trigger_is_refused(tmp_path: Path) -> None:
    error = only_error(write(tmp_path, MINIMAL + "alerts: {email: [ops-at-example]}\n"), "alerts.email")
    assert "not an e-mail address" in error.message
    errors = only_error(write(tmp_path, MINIMAL + "alerts: {triggers: [sync_faild]}\n"), "alerts.triggers[0]")
    assert "sync_failed" in f"{errors.message} {errors.fix}"


def test_size_change_and_the_hold_of_a_collapsing_mirror_run() -> None:
    assert size_change(None, 10) is None  # a first run has nothing to compare with
    shrink = size_change(1_000, 100)
    assert shrink is not None and shrink.percent == -90 and shrink.beyond(50) and not shrink.beyond(95)
    reason = hold_reason(shrink, 50, "mirror", removes=900)
    assert reason is not None and "would remove 900 members" in reason
    assert hold_reason(shrink, 50, "add_only", removes=0) is None  # nothing would be removed
    assert hold_reason(shrink, 50, "mirror", removes=0) is None
    assert hold_reason(shrink, 95, "mirror", removes=900) is None  # within the limit
    grow = size_change(100, 1_000)
    assert grow is not None and grow.beyond(50) and hold_reason(grow, 50, "mirror", removes=3) is None
    assert size_change(0, 5).percent == 100  # type: ignore[union-attr]


def test_an_alert_names_the_campaign_run_and_task_and_cuts_long_details() -> None:
    alert = Alert("sync_failed", "Loyal", "ads_audience__loyal", "run1", "sync_meta", "x" * 5_000)
    assert alert.subject() == "[audience-sync] Loyal: sync failed"
    text = alert.text()
    assert "DAG ads_audience__loyal, run run1, task sync_meta" in text and text.count("x") == 2_000
