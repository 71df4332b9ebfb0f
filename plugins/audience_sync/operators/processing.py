"""Wait task: poll the platform until it has processed the sync's uploads, without holding a worker slot."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from airflow.sdk import BaseSensorOperator
from airflow.sdk.bases.sensor import PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException

from audience_sync.core.delivery import DeliveryWindow, delivery_window
from audience_sync.core.errors import PermanentDestinationError, TransientDestinationError
from audience_sync.core.ledger import utcnow
from audience_sync.core.sync import poll_processing
from audience_sync.destinations import build_destination, resolve_target
from audience_sync.hooks.state import DEFAULT_CONN_ID, AudienceSyncStateHook
from audience_sync.operators.alerts import DeliveryMissed

if TYPE_CHECKING:
    from airflow.sdk import Context

#: the default for how long a campaign waits for a platform to process its uploads
DEFAULT_PROCESSING_TIMEOUT = dt.timedelta(hours=6)
#: Airflow's own limit when the delivery promise bounds the wait: a release just after the cut-off is
#: promised about 30 hours later, and this only catches a promise the task could not read
PROMISE_TIMEOUT = dt.timedelta(days=3)


class AwaitProcessingSensor(BaseSensorOperator):
    """Wait until the platform has processed every finished upload of the audience.

    Runs in ``reschedule`` mode: between pokes the task gives its worker slot back. Each poke asks the
    platform about the audience's finished uploads (Meta: the upload session's stage) and moves the
    members of processed ones from ``in_progress`` to ``sent`` / ``removed``. When the platform takes
    longer than ``timeout`` the task fails; the members stay ``in_progress`` and the next run asks again.

    With ``delivery`` (the campaign's cut-off, ``available_by`` and time zone), the task also fails, with
    :class:`DeliveryMissed`, once the promise of the window the sync was released in has passed
    (core/delivery.py; the release is the sync task's start, read from its result).

    :param platform: the destination platform.
    :param account: the platform account.
    :param conn_id: the platform connection.
    :param segment_name: the audience's segment name (templated).
    :param delivery: ``{"cutoff": "HH:MM", "available_by": "HH:MM", "timezone": IANA name}``, or None.
    :param sync_task_id: the sync task whose start is the release (with ``delivery``).
    :return: the ledger's counts once everything is processed.
    """

    template_fields: Sequence[str] = ("segment_name",)
    ui_color = "#f3eefa"

    def __init__(
        self,
        *,
        platform: str,
        account: str,
        segment_name: str,
        conn_id: str | None = None,
        options: Mapping[str, Any] | None = None,
        state_conn_id: str = DEFAULT_CONN_ID,
        timeout: dt.timedelta | float = DEFAULT_PROCESSING_TIMEOUT,
        delivery: Mapping[str, str] | None = None,
        sync_task_id: str | None = None,
        poke_interval: dt.timedelta | float = dt.timedelta(minutes=2),
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("mode", "reschedule")
        super().__init__(timeout=timeout, poke_interval=poke_interval, **kwargs)
        self.platform, self.conn_id = resolve_target(platform, conn_id)
        self.account = account
        #: the campaign destination's own settings, for the platform's destination factory
        self.options = dict(options or {})
        self.segment_name = segment_name
        self.state_conn_id = state_conn_id
        self.delivery = dict(delivery) if delivery else None
        self.sync_task_id = sync_task_id

    def window(self, context: Context) -> DeliveryWindow | None:
        """The delivery window the sync was released in (None without ``delivery`` or a sync result)."""
        if not self.delivery or not self.sync_task_id:
            return None
        result = context["ti"].xcom_pull(task_ids=self.sync_task_id) or {}
        if not result.get("started_at"):
            return None
        d = self.delivery
        return delivery_window(
            dt.datetime.fromisoformat(result["started_at"]),
            ZoneInfo(d["timezone"]),
            dt.time.fromisoformat(d["cutoff"]),
            dt.time.fromisoformat(d["available_by"]),
        )

    def poke(self, context: Context) -> PokeReturnValue | bool:
        dest = build_destination(self.platform, self.conn_id, self.account, self.options)
        store = AudienceSyncStateHook(self.state_conn_id).store
        entry = store.get_registry(self.platform, dest.account, self.segment_name)
        if entry is None:  # the sync task never got as far as the audience: nothing to wait for
            return PokeReturnValue(is_done=True, xcom_value={})
        try:
            waiting = poll_processing(dest, store, entry)
        except PermanentDestinationError as exc:
            raise AirflowFailException(str(exc)) from None
        except TransientDestinationError as exc:  # the platform will answer at a later poke
            self.log.warning("could not read the processing status (%s); asking again later", exc)
            return False
        counts = store.ledger_counts(entry.id)
        if waiting:
            window = self.window(context)
            if window is not None and window.missed(utcnow()):
                raise DeliveryMissed(
                    f"{self.platform} had not processed {waiting} upload(s) by the promise of the "
                    f"{window.describe()}: sent {counts['sent']}, in progress {counts['in_progress']}, "
                    f"pending {counts['pending']}. The members stay in progress; the next run asks the "
                    "platform again."
                )
            self.log.info(
                "%s is still processing %d upload(s): sent %s, in progress %s, pending %s",
                self.platform,
                waiting,
                counts["sent"],
                counts["in_progress"],
                counts["pending"],
            )
            return False
        self.log.info(
            "%s processed every upload: sent %s, removed %s", self.platform, counts["sent"], counts["removed"]
        )
        return PokeReturnValue(is_done=True, xcom_value=counts)
