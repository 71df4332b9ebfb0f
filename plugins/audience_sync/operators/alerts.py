"""Send a campaign's alerts through Airflow notifiers: e-mail over an SMTP connection, or any notifier class.

The campaign's ``alerts`` section names the targets (core/campaign/delivery.py); :func:`send_alert` builds
one notifier per target with the alert's text and calls it. A target that cannot be reached is logged
and skipped: an alert never fails the task that raised it, nor stops the other targets.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from audience_sync.core.alerts import Alert
from audience_sync.core.campaign.delivery import Alerts

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.bases.notifier import BaseNotifier

log = logging.getLogger(__name__)


class DeliveryMissed(AirflowFailException):  # noqa: N818 - reads as what happened
    """The platform had not processed the uploads by the delivery window's ``available_by`` (not retried:
    the promise is past; the members stay ``in_progress`` and the next run asks the platform again)."""


class RunHeld(AirflowFailException):  # noqa: N818 - reads as what happened
    """The size guard held the sync before sending; the plan task already alerted ``group_size_moved``."""


def notifiers(alerts: Alerts, alert: Alert) -> list[BaseNotifier]:
    """One notifier per target, carrying ``alert``'s text."""
    out: list[BaseNotifier] = []
    if alerts.email:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        html = "<pre>" + _escape(alert.text()) + "</pre>"
        out.append(
            SmtpNotifier(
                to=list(alerts.email),
                from_email=alerts.from_email,
                subject=alert.subject(),
                html_content=html,
                smtp_conn_id=alerts.smtp_conn_id,
            )
        )
    for spec in alerts.notifiers:
        module, _, name = spec.class_path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        out.append(cls(**{**spec.params, spec.message_param: alert.text()}))
    return out


def send_alert(alerts: Alerts, alert: Alert, context: Mapping[str, Any]) -> int:
    """Tell every target of ``alerts`` about ``alert`` if it wants this trigger; return how many heard it."""
    if not alerts.wants(alert.trigger):
        return 0
    told = 0
    for notifier in notifiers(alerts, alert):
        try:
            # notify(), not the notifier's __call__: the text is final, and rendering it as a Jinja
            # template would choke on braces in an error message
            notifier.notify(context)  # type: ignore[arg-type]
            told += 1
        except Exception as exc:  # noqa: BLE001 - an unreachable target must not hide the others
            log.error("alert %s: %s could not send it: %s", alert.trigger, type(notifier).__name__, exc)
    log.info("alert %s sent to %d of %d target(s)", alert.trigger, told, alerts.targets)
    return told


class FailureAlert:
    """A task's ``on_failure_callback``: alerts ``sync_failed`` (``available_by_missed`` when the wait
    task failed on the delivery promise)."""

    def __init__(self, campaign: str, alerts: Alerts) -> None:
        self.campaign = campaign
        self.alerts = alerts

    def __call__(self, context: Context) -> None:
        exc = context.get("exception")
        if isinstance(exc, RunHeld):
            return  # told once, by the plan task, with the sizes
        trigger = "available_by_missed" if isinstance(exc, DeliveryMissed) else "sync_failed"
        ti = context["ti"]
        alert = Alert(
            trigger=trigger,
            campaign=self.campaign,
            dag_id=ti.dag_id,
            run_id=context["run_id"],
            task_id=ti.task_id,
            detail=f"{type(exc).__name__}: {exc}" if exc is not None else "the task failed",
        )
        send_alert(self.alerts, alert, context)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
