"""Shows each invalid campaign file as an Airflow import error (file, field, fix); valid DAGs still load."""

from __future__ import annotations

from audience_sync.factory import raise_campaign_errors

raise_campaign_errors()
