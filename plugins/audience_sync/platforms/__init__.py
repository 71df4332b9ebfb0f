"""The built-in ad platforms: importing this package registers each one (see :mod:`audience_sync.core.platforms`).

A platform is one light module here (no SDK import) that builds a
:class:`~audience_sync.core.platforms.Platform` and calls
:func:`~audience_sync.core.platforms.register`; add its import below.
"""

from __future__ import annotations

from audience_sync.platforms import meta

__all__ = ["meta"]
