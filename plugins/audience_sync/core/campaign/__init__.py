"""The campaign model: one YAML file per campaign in ``include/campaigns/`` becomes one DAG.

Pure Python (no Airflow import), so it can be unit-tested and reused by the CLI. The package:

* :mod:`.paths` - the project root, the campaign folder, how paths are resolved and shown;
* :mod:`.segment_name` - the segment-name rules, their error and compliant-name suggestions;
* :mod:`.destinations` - the destination base; each platform's own model is registered with the platform
  (:mod:`audience_sync.core.platforms`);
* :mod:`.models` - Duration, Consent, AudienceGroup, Campaign (and :func:`campaign_model`, the campaign
  with the registered platforms' destinations);
* :mod:`.problems` - pydantic errors turned into (field, message, fix);
* :mod:`.yaml_reader` and :mod:`.loading` - reading files (duplicate keys, line numbers) and folders;
* :mod:`.base` - what the others share (the validation error with its fix, cross-field rules).

A campaign file looks like this (``include/campaigns/abandoned_cart.yaml`` -> DAG id
``ads_audience__abandoned_cart``)::

    campaign: Abandoned cart July
    ads_campaign_name: Abandoned cart ads          # optional, defaults to ``campaign``
    duration: {start: 2026-07-01, end: 2026-07-31}  # end optional
    schedule: "@daily"                             # @once|@hourly|@daily|@weekly|@monthly|5-field cron
    timezone: Asia/Kolkata                         # optional, default UTC
    segment_name: abandoned_cart_users
    sync_mode: mirror                              # mirror (default) | add_only | replace
    audience_group:
      sql: include/sql/abandoned_cart.sql          # or  list: <.csv|.parquet file>  (exactly one)
      conn_id: crm_db                              # required with sql, rejected with list
      key: customer_id
      identifiers: {email: email, phone: mobile, country: country}
      default_country: US
      exclude_segments: [week_one_users]
      consent: {column: ads_consent}
    destinations:
      - platform: meta
        ad_account_id: "act_1234567890"
        conn_id: meta_default

:func:`load_campaign` validates a file and raises :class:`~audience_sync.core.errors.CampaignErrors`
listing *every* problem it found, each as a :class:`~audience_sync.core.errors.CampaignError` naming the
dotted field (``destinations[0].platform``, ``audience_group.identifiers.emial``) and a fix.
"""

from __future__ import annotations

from audience_sync.core.campaign.base import FILE_FIELD, FILE_NAME_FIELD
from audience_sync.core.campaign.destinations import (
    DestinationBase,
    destination_models,
    supported_platforms,
)
from audience_sync.core.campaign.loading import campaign_from_mapping, load_campaign, load_campaigns
from audience_sync.core.campaign.models import (
    DAG_ID_PREFIX,
    SCHEDULE_PRESETS,
    SYNC_MODES,
    AudienceGroup,
    Campaign,
    Consent,
    Duration,
    campaign_model,
)
from audience_sync.core.campaign.paths import CAMPAIGNS_DIR_ENV, campaigns_dir, project_root
from audience_sync.core.campaign.segment_name import (
    SEGMENT_NAME_RULE_ENV,
    SegmentNameError,
    check_segment_name,
    segment_name_rule,
    suggest_segment_name,
)
from audience_sync.core.normalize import IDENTIFIER_TYPES
from audience_sync.core.settings import SEGMENT_NAME_RULES

__all__ = [
    "CAMPAIGNS_DIR_ENV",
    "DAG_ID_PREFIX",
    "FILE_FIELD",
    "FILE_NAME_FIELD",
    "IDENTIFIER_TYPES",
    "SCHEDULE_PRESETS",
    "SEGMENT_NAME_RULES",
    "SEGMENT_NAME_RULE_ENV",
    "SYNC_MODES",
    "AudienceGroup",
    "Campaign",
    "Consent",
    "DestinationBase",
    "Duration",
    "SegmentNameError",
    "campaign_from_mapping",
    "campaign_model",
    "campaigns_dir",
    "check_segment_name",
    "destination_models",
    "load_campaign",
    "load_campaigns",
    "project_root",
    "segment_name_rule",
    "suggest_segment_name",
    "supported_platforms",
]
