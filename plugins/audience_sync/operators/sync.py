"""Plan and sync tasks: upsert each platform audience by segment name and send the membership delta."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from audience_sync.core.alerts import Alert, hold_reason, size_change
from audience_sync.core.campaign.delivery import Alerts
from audience_sync.core.delta import StagedGroup
from audience_sync.core.errors import AudienceSyncError
from audience_sync.core.extract import read_member_ids
from audience_sync.core.ledger import utcnow
from audience_sync.core.sync import RetryPolicy, SyncRequest, format_plan, plan_sync, sync_audience
from audience_sync.destinations import build_destination, resolve_target
from audience_sync.hooks.state import DEFAULT_CONN_ID, AudienceSyncStateHook
from audience_sync.operators.alerts import RunHeld, send_alert
from audience_sync.operators.context import run_date
from audience_sync.operators.staging import location, merge_extracts, open_staged, require_urls
from audience_sync.outcome import as_airflow_error

if TYPE_CHECKING:
    from airflow.sdk import Context


#: what to do about a run held by the group-size guard
HOLD_FIX = (
    "If the smaller group is intended, raise the campaign's alerts.group_change_percent above the change "
    "for one run (or fix the audience group's query if it is not), then trigger the DAG again"
)


def require_staged(extracted: Any, platform: str) -> Mapping[str, Any]:
    """This platform's staged files (``urls``, ``rows``, ``schema``) from the extract XCom (one task's,
    a mapped task's list, or merged); fail clearly when they are gone from the staging store.

    The next run's extract task deletes the staged files of finished runs, so clearing only the sync
    task of an old run finds nothing to read.
    """
    merged = (
        extracted if isinstance(extracted, Mapping) and extracted.get("merged") else merge_extracts(extracted)
    )
    for url in require_urls(merged, platform):
        if not location(url).exists():
            raise AirflowFailException(
                f"staged file missing: {url}. A later run removed this run's staged files; "
                "clear the extract task of that run too (with its downstream tasks), not only the sync task."
            )
    return merged["staged"][platform]


def staged_group(staged: Mapping[str, Any]) -> StagedGroup:
    """The staged group of one platform, over every partition's folder."""
    fs, paths = open_staged(staged["urls"])
    return StagedGroup(paths, filesystem=fs)


def revoked_members(extracted: Mapping[str, Any]) -> list[str]:
    """Member ids staged as without consent, over every partition."""
    fs, paths = open_staged(extracted.get("no_consent_urls", []))
    return [mid for path in paths for mid in read_member_ids(path, fs)]


def build_request(
    context: Context, *, platform: str, account: str, segment_name: str, schema: Sequence[str], **kw: Any
) -> SyncRequest:
    return SyncRequest(
        dag_id=context["dag"].dag_id,
        run_id=context["run_id"],
        platform=platform,
        account=account,
        segment_name=segment_name,
        schema=tuple(schema),
        logical_date=run_date(context),
        task_id=context["ti"].task_id,
        try_number=int(getattr(context["ti"], "try_number", None) or 1),
        **kw,
    )


class SyncAudienceOperator(BaseOperator):
    """Upsert the audience named ``segment_name`` on one platform account and sync its members.

    Reads the hashes staged by the extract task, reconciles them with the member ledger and sends
    only what changed, batch by batch. Transient platform errors are retried with backoff inside the
    task; permanent ones fail the task at once with an actionable message.

    :param platform: a registered platform (``meta``).
    :param account: the platform account (the campaign's normalised account, Meta ``act_<digits>``).
    :param conn_id: the platform connection (default: the platform's, e.g. ``meta_default``).
    :param segment_name: the audience name on the platform (templated).
    :param sync_mode: ``mirror`` | ``add_only`` | ``replace``.
    :param exclude_segments: members currently in these segments' audiences are left out.
    :return: counts ``{total, sent, in_progress, pending, failed, removed, invalid, excluded}`` and the
        audience id, read back from the ledger.
    """

    template_fields: Sequence[str] = ("segment_name", "description")
    ui_color = "#e7eefa"

    def __init__(
        self,
        *,
        platform: str,
        account: str,
        segment_name: str,
        conn_id: str | None = None,
        options: Mapping[str, Any] | None = None,
        sync_mode: str = "mirror",
        exclude_segments: Sequence[str] = (),
        description: str = "",
        extract_task_id: str = "extract",
        plan_task_id: str = "plan",
        state_conn_id: str = DEFAULT_CONN_ID,
        retry_policy: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.plan_task_id = plan_task_id
        self.platform, self.conn_id = resolve_target(platform, conn_id)
        self.account = account
        #: the campaign destination's own settings, for the platform's destination factory
        self.options = dict(options or {})
        self.segment_name = segment_name
        self.sync_mode = sync_mode
        self.exclude_segments = tuple(exclude_segments)
        self.description = description
        self.extract_task_id = extract_task_id
        self.state_conn_id = state_conn_id
        self.retry_policy = retry_policy

    def execute(self, context: Context) -> dict[str, Any]:
        started = utcnow()
        held = ((context["ti"].xcom_pull(task_ids=self.plan_task_id) or {}).get(self.task_id) or {}).get(
            "hold"
        )
        if held:
            raise RunHeld(f"not sent: {held}. {HOLD_FIX}")
        extracted = merge_extracts(context["ti"].xcom_pull(task_ids=self.extract_task_id))
        staged = require_staged(extracted, self.platform)
        dest = build_destination(self.platform, self.conn_id, self.account, self.options)
        store = AudienceSyncStateHook(self.state_conn_id).store
        req = build_request(
            context,
            platform=self.platform,
            account=dest.account,
            segment_name=self.segment_name,
            schema=staged["schema"],
            mode=self.sync_mode,
            description=self.description,
            exclude_segments=self.exclude_segments,
        )
        try:
            outcome = sync_audience(
                dest,
                store,
                req,
                staged_group(staged),
                revoked=revoked_members(extracted),
                retry=self.retry_policy or RetryPolicy.from_env(),
                progress=self._progress,
            )
        except AudienceSyncError as exc:
            raise as_airflow_error(exc) from None
        result = outcome.as_xcom()
        result["invalid"] = int(extracted.get("invalid", 0))
        result["excluded_no_consent"] = int(extracted.get("excluded_no_consent", 0))
        result["excluded"] = result["excluded"] + result["excluded_no_consent"]
        result.update(
            started_at=started.isoformat(),
            finished_at=utcnow().isoformat(),
            platform=self.platform,
            account=dest.account,
            segment_name=self.segment_name,
            mode=self.sync_mode,
        )
        run = outcome.run
        self.log.info(
            "this run: added %s, removed %s, re-sent %s (changed identifiers), unchanged %s, "
            "rejected by %s %s",
            run["added"],
            run["removed"],
            run["resent"],
            run["unchanged"],
            self.platform,
            run["rejected"],
        )
        self.log.info(
            "%s %s audience %s (%s): total %s, sent %s, in progress %s, pending %s, failed %s, removed %s, "
            "invalid %s, excluded %s; %s requests",
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
            result["excluded"],
            result["requests"],
        )
        for note in outcome.notes:
            self.log.info("%s", note)
        if outcome.refused:  # not an error to retry: the run's outcome, recorded by record_metrics
            self.log.warning(
                "%s refused the change (%s), not retried; the members stay failed until it can apply them",
                self.platform,
                outcome.refused,
            )
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


class PlanAudienceOperator(BaseOperator):
    """Compute, without sending anything, what each destination's sync would do (the dry-run plan).

    Also compares each destination's group with the size the last run recorded: a move beyond the
    campaign's ``alerts.group_change_percent`` is a warning and a ``group_size_moved`` alert, and a mirror
    run that would then remove members is held (``plan["hold"]``): its sync stops before sending.

    :param destinations: one dict per sync task: ``task_id``, ``platform``, ``account``, ``conn_id``.
    :param campaign: the campaign's name, for alerts.
    :param alerts: the campaign's alerts section (its thresholds apply even when nobody is told).
    :return: ``{sync task id: plan}`` with the audience it would use, adds, removes, unchanged, warnings.
    """

    template_fields: Sequence[str] = ("segment_name",)
    ui_color = "#fdf3e1"

    def __init__(
        self,
        *,
        destinations: Sequence[Mapping[str, str]],
        segment_name: str,
        sync_mode: str = "mirror",
        exclude_segments: Sequence[str] = (),
        extract_task_id: str = "extract",
        state_conn_id: str = DEFAULT_CONN_ID,
        campaign: str = "",
        alerts: Alerts | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.campaign = campaign
        self.alerts = alerts or Alerts()
        self.destinations = [dict(d) for d in destinations]
        self.segment_name = segment_name
        self.sync_mode = sync_mode
        self.exclude_segments = tuple(exclude_segments)
        self.extract_task_id = extract_task_id
        self.state_conn_id = state_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        extracted = merge_extracts(context["ti"].xcom_pull(task_ids=self.extract_task_id))
        store = AudienceSyncStateHook(self.state_conn_id).store
        revoked = revoked_members(extracted)
        plans: dict[str, Any] = {}
        for d in self.destinations:
            staged = require_staged(extracted, d["platform"])
            dest = build_destination(d["platform"], d["conn_id"], d["account"], d.get("options"))
            req = build_request(
                context,
                platform=d["platform"],
                account=dest.account,
                segment_name=self.segment_name,
                schema=staged["schema"],
                mode=self.sync_mode,
                exclude_segments=self.exclude_segments,
            )
            try:
                plan = plan_sync(dest, store, req, staged_group(staged), revoked=revoked)
            except AudienceSyncError as exc:
                raise as_airflow_error(exc) from None
            plan["invalid"] = int(extracted.get("invalid", 0))
            plan["excluded_no_consent"] = int(extracted.get("excluded_no_consent", 0))
            self._guard_size(context, store, plan)
            plans[d["task_id"]] = plan
            self.log.info("plan %s: %s", d["task_id"], format_plan(plan))
        return plans

    def _guard_size(self, context: Context, store: Any, plan: dict[str, Any]) -> None:
        """Compare the group with the last run's: warn, alert and, for a collapsing mirror run, hold."""
        destination = f"{plan['platform']}:{plan['account']}"
        previous = store.last_group_size(self.dag_id, destination, context["run_id"])
        change = size_change(previous, plan["group"])
        limit = self.alerts.group_change_percent
        if change is None or not change.beyond(limit):
            return
        plan["warnings"].append(f"group size moved by more than {limit:g} %: {change.describe()}")
        hold = hold_reason(change, limit, plan["mode"], plan["removes"])
        if hold:
            plan["hold"] = hold
        detail = f"{destination} segment {plan['segment_name']}: {change.describe()}." + (
            f" The run is held: {hold}." if hold else ""
        )
        alert = Alert("group_size_moved", self.campaign, self.dag_id, context["run_id"], self.task_id, detail)
        send_alert(self.alerts, alert, context)
