"""The first task of every campaign DAG: stop the run while audience syncing is disabled (the default)."""

from __future__ import annotations

import logging
from typing import Any

from airflow.providers.standard.operators.python import ShortCircuitOperator

from audience_sync.core.settings import settings

log = logging.getLogger(__name__)

#: what a disabled run logs: that nothing happened, and exactly how to turn syncing on
DISABLED_MESSAGE = (
    "audience-sync is disabled on this deployment (AUDIENCE_SYNC_ENABLED is not set): this run stops "
    "here, before any data is read or sent, and every later task is skipped. To enable ads audience "
    "syncing, set AUDIENCE_SYNC_ENABLED=1 in the environment of every Airflow component (scheduler, "
    "dag-processor, workers, api-server), restart them, and trigger the DAG again."
)


def sync_enabled() -> bool:
    """True when the deployment enabled syncing; otherwise log how to enable it and return False.

    Read when the task runs, from the worker's environment: the worker is where data would be read
    and sent, and the setting needs no database (see ``core/settings.py``).
    """
    if settings().enabled:
        log.info("audience-sync is enabled (AUDIENCE_SYNC_ENABLED)")
        return True
    log.warning(DISABLED_MESSAGE)
    return False


class SyncEnabledOperator(ShortCircuitOperator):
    """Short-circuit the whole run when syncing is disabled.

    A disabled deployment is a deliberate state, not an error: the task skips every downstream task
    (``ignore_downstream_trigger_rules``, so ``record_metrics`` is skipped too and the state database is
    never opened) instead of failing, so no retries run and no failure alert fires for every scheduled
    run of every campaign. The run ends with every task but this one skipped.
    """

    ui_color = "#f0f0f0"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("task_id", "enabled")
        super().__init__(python_callable=sync_enabled, ignore_downstream_trigger_rules=True, **kwargs)
