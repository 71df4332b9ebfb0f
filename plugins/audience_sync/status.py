"""The progress of the configured campaigns, read where Airflow runs: the campaign folder and the state
database of the ``audience_sync_db`` connection. The Ads Audiences page (``ui/``) and ``audience-sync
status`` both call :func:`read_progress`, so they show the same numbers (``core/progress.py``)."""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass, field
from typing import Any

from audience_sync.core.campaign import Campaign, load_campaigns
from audience_sync.core.ledger import StateStore, utcnow
from audience_sync.core.progress import CampaignProgress, as_json, campaign_progress


@dataclass(frozen=True)
class Progress:
    """What :func:`read_progress` found: the campaigns' progress and the campaign files that are broken."""

    campaigns: list[CampaignProgress]
    generated_at: dt.datetime
    broken: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The document the page's endpoint serves and ``audience-sync status --json`` prints."""
        return {**as_json(self.campaigns, self.generated_at), "broken": self.broken}


class UnknownCampaign(LookupError):
    """No valid campaign file has this name."""


def read_progress(campaign: str | None = None) -> Progress:
    """Every valid campaign's progress, or one campaign's (by file stem or DAG id).

    :raises UnknownCampaign: ``campaign`` names no valid campaign file.
    """
    campaigns, broken = load_campaigns()
    chosen = select(campaigns, campaign)
    now = utcnow()
    progress = campaign_progress(state_store(), chosen, now)
    return Progress(
        progress, now, {path: str(err) for path, err in broken.items()} if campaign is None else {}
    )


def select(campaigns: list[Campaign], name: str | None) -> list[Campaign]:
    """The campaigns ``name`` (a file stem or DAG id) picks: all of them for None."""
    if name is None:
        return campaigns
    chosen = [c for c in campaigns if name in (c.stem, c.dag_id)]
    if not chosen:
        known = ", ".join(c.stem for c in campaigns) or "none"
        raise UnknownCampaign(f"no valid campaign file '{name}.yaml' (campaigns: {known})")
    return chosen


def state_store() -> StateStore:
    """The state database, opened for reading counts (no keys needed), once per database per process."""
    from audience_sync.hooks.state import AudienceSyncStateHook

    return _store(AudienceSyncStateHook().url().render_as_string(hide_password=False))


@functools.cache
def _store(url: str) -> StateStore:
    return StateStore(url)
