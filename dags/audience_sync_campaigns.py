"""Airflow DAGs: one per campaign file in include/campaigns/ (or $AUDIENCE_SYNC_CAMPAIGNS_DIR)."""

from __future__ import annotations

from audience_sync.factory import build_dags

build_dags(globals())
