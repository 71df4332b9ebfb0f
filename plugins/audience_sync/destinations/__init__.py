"""Destinations: build a registered platform's destination for one account (``build_destination``).

The platforms' own destination modules (``meta.py``, ...) import their SDKs; this package's root does
not, so the command line and the operators can import it cheaply.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from audience_sync.core.contract import Destination
from audience_sync.core.errors import AudienceSyncError
from audience_sync.core.platforms import get_platform


def build_destination(
    platform: str, conn_id: str, account: str, options: Mapping[str, Any] | None = None
) -> Destination:
    """The destination of one account on a registered platform, built by its registered factory.

    The factory is a dotted ``"module:callable"`` in the platform's registration, imported only now,
    when a task runs, so parsing DAGs never imports a platform SDK. It is called as
    ``factory(conn_id, account, **options)``, ``options`` being the campaign destination's own settings
    (``DestinationBase.options()``; a platform without any gets none).
    """
    spec = get_platform(platform)
    module, _, attr = spec.destination.partition(":")
    factory: Callable[..., Destination] = getattr(importlib.import_module(module), attr)
    dest = factory(conn_id, account, **dict(options or {}))
    if dest.platform != spec.name:
        raise AudienceSyncError(
            f"platform {spec.name!r}: its destination factory {spec.destination} built a destination of "
            f"platform {dest.platform!r}; fix the registration's destination"
        )
    return dest


def resolve_target(platform: str, conn_id: str | None) -> tuple[str, str]:
    """The registered platform's name and the connection to use (the platform's default when none is
    given); an unknown platform fails when the DAG is parsed."""
    registered = get_platform(platform)
    return registered.name, conn_id or registered.default_conn_id
