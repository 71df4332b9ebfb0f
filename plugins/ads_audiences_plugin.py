"""Airflow loads plugins from every ``.py`` file of this folder; ``.airflowignore`` keeps it out of the
``audience_sync`` package (importing each of its modules under its bare file name), so this file is the
only one it reads. The plugin itself lives in the package."""

from __future__ import annotations

from audience_sync.ui.plugin import AdsAudiencesPlugin

__all__ = ["AdsAudiencesPlugin"]
