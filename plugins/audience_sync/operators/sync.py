"""Sync task: upsert one platform audience by segment name and send the membership delta."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from audience_sync.core.errors import PermanentDestinationError, TransientDestinationError
from audience_sync.core.extract import read_staged
from audience_sync.core.ledger import utcnow
from audience_sync.core.sync import RetryPolicy, SyncRequest, staged_row, sync_audience
from audience_sync.destinations.base import Destination
from audience_sync.hooks.state import DEFAULT_CONN_ID, AudienceSyncStateHook

if TYPE_CHECKING:
    from airflow.sdk import Context


def _meta(conn_id: str, account: str) -> Destination:
    from audience_sync.hooks.meta import MetaAudienceHook

    return MetaAudienceHook(conn_id).get_destination(account)


#: platform -> factory(conn_id, account) of its destination (each built by the platform's hook)
DESTINATIONS: dict[str, Callable[[str, str], Destination]] = {"meta": _meta}


class SyncAudienceOperator(BaseOperator):
    """Upsert the audience named ``segment_name`` on one platform account and sync its members.

    Reads the hashes staged by the extract task, reconciles them with the member ledger and sends
    only what changed, batch by batch. Transient platform errors are retried with backoff inside the
    task; permanent ones fail the task at once with an actionable message.

    :param platform: ``meta``.
    :param ad_account_id: the platform account.
    :param conn_id: the platform connection (default per platform, e.g. ``meta_default``).
    :param segment_name: the audience name on the platform (templated).
    :param sync_mode: ``mirror`` | ``add_only`` | ``replace``.
    :return: counts ``{total, sent, in_progress, pending, failed, removed, invalid, excluded}`` and the
        audience id, read back from the ledger.
    """

    template_fields: Sequence[str] = ("segment_name", "description")
    ui_color = "#e7eefa"

    def __init__(
        self,
        *,
        platform: str,
        ad_account_id: str,
        segment_name: str,
        conn_id: str | None = None,
        sync_mode: str = "mirror",
        description: str = "",
        extract_task_id: str = "extract",
        state_conn_id: str = DEFAULT_CONN_ID,
        retry_policy: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if platform not in DESTINATIONS:
            raise ValueError(f"unknown platform {platform!r}; supported: {', '.join(DESTINATIONS)}")
        self.platform = platform
        self.ad_account_id = ad_account_id
        self.conn_id = conn_id or f"{platform}_default"
        self.segment_name = segment_name
        self.sync_mode = sync_mode
        self.description = description
        self.extract_task_id = extract_task_id
        self.state_conn_id = state_conn_id
        self.retry_policy = retry_policy or RetryPolicy()

    def execute(self, context: Context) -> dict[str, Any]:
        started = utcnow()
        ti = context["ti"]
        extracted = ti.xcom_pull(task_ids=self.extract_task_id)
        staged = extracted["staged"][self.platform]
        dest = DESTINATIONS[self.platform](self.conn_id, self.ad_account_id)
        store = AudienceSyncStateHook(self.state_conn_id).store
        req = SyncRequest(
            dag_id=self.dag_id,
            run_id=context["run_id"],
            platform=self.platform,
            account=dest.account,
            segment_name=self.segment_name,
            schema=tuple(staged["schema"]),
            mode=self.sync_mode,
            description=self.description,
            logical_date=context.get("logical_date"),
        )
        rows = (staged_row(mid, schema, values) for mid, schema, values in read_staged(staged["path"]))
        try:
            outcome = sync_audience(dest, store, req, rows, retry=self.retry_policy, progress=self._progress)
        except PermanentDestinationError as exc:
            raise AirflowFailException(str(exc)) from None
        except TransientDestinationError as exc:
            raise AirflowException(
                f"{exc} (retries inside the task exhausted; Airflow will retry the task)"
            ) from None
        result = outcome.as_xcom()
        result["invalid"] = int(extracted.get("invalid", 0))
        result["excluded"] = int(extracted.get("excluded_no_consent", 0)) + int(extracted.get("excluded", 0))
        result["started_at"] = started.isoformat()
        result["finished_at"] = utcnow().isoformat()
        result["account"] = dest.account
        result["segment_name"] = self.segment_name
        self.log.info(
            "%s %s audience %s (%s): total %s, sent %s, in progress %s, pending %s, failed %s, removed %s, "
            "invalid %s; %s requests",
            self.platform,
            dest.account,
            outcome.audience_id,
            outcome.audience_action,
            result["total"],
            result["sent"],
            result["in_progress"],
            result["pending"],
            result["failed"],
            result["removed"],
            result["invalid"],
            result["requests"],
        )
        for note in outcome.notes:
            self.log.info("%s", note)
        return result

    def _progress(self, counts: dict[str, int]) -> None:
        self.log.info(
            "progress: sent %s, in progress %s, pending %s, failed %s, removing %s",
            counts["sent"],
            counts["in_progress"],
            counts["pending"],
            counts["failed"],
            counts["removing"],
        )
