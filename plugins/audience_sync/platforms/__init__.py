"""The built-in ad platforms: importing this package registers each one (see :mod:`audience_sync.core.platforms`).

A platform is one light module here (no SDK import) defining its
:class:`~audience_sync.core.platforms.Platform`; it is registered below, not in its own module, because
Airflow's plugin loader also executes every ``.py`` file under ``plugins/`` on its own, and a module
that registered on import would then register a second, different copy of the platform.
"""

from __future__ import annotations

from audience_sync.core.platforms import register
from audience_sync.platforms import file_drop, google_ads, google_datamanager, meta, tiktok

#: the platforms this package registers, in order (``core.platforms.is_builtin`` reads it)
BUILTINS = (
    meta.META,
    google_datamanager.GOOGLE_DATAMANAGER,
    google_ads.GOOGLE_ADS,
    tiktok.TIKTOK,
    file_drop.FILE_DROP,
)

for _platform in BUILTINS:
    register(_platform)

__all__ = ["file_drop", "google_ads", "google_datamanager", "meta", "tiktok"]
