"""The platform registry: everything audience-sync knows about an ad platform, registered in one place.

Each platform registers one :class:`Platform` with :func:`register`. Campaign validation (the
``destinations`` models, account normalisation, duplicate detection, the supported list in error
messages), the DAG factory and operators (task ids, connection defaults, which destination class to
build), extraction (the normalisation rules), the dry-run plan (minimum size, warnings), the command
line and the destination contract suite all read this registry; nothing else lists platforms.

The built-in platforms live in the package :data:`BUILTINS_PACKAGE` (``audience_sync.platforms``),
imported by name on first use, so this pure module never imports a destination, a hook or an SDK.
A third-party platform calls :func:`register` from its own module, imported before campaigns load
(for example from a module in ``plugins/``).
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, get_args

from audience_sync.core.errors import AudienceSyncError
from audience_sync.core.normalize.platforms import PlatformRules

if TYPE_CHECKING:
    from audience_sync.core.campaign.destinations import DestinationBase

#: the package whose import registers the built-in platforms
BUILTINS_PACKAGE = "audience_sync.platforms"

_DOTTED_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class GroupShape:
    """What the dry-run plan knows of the group beside its size, for a platform's :attr:`Platform.warnings`.

    :param mode: the sync mode the run would use (``mirror``, ``add_only``, ``replace``; a backfill adds).
    :param identifiers: per payload key of the platform's schema, how many members of the group hold a
        value under it after normalisation (hashed this run, or reused from the ledger by fingerprint).
        Counted only for a platform that sets :attr:`Platform.count_identifiers`; empty otherwise.
    """

    mode: str = "mirror"
    identifiers: Mapping[str, int] = field(default_factory=dict)


def _no_warnings(segment_name: str, group_size: int, shape: GroupShape) -> list[str]:
    """The default: a platform without warnings of its own."""
    return []


@dataclass(frozen=True)
class Platform:
    """One ad platform, as every layer of audience-sync needs to know it.

    :param name: the id used in campaign files, task ids (``sync_<name>``) and the state database.
    :param title: the name people know it by (``Meta``), for messages.
    :param default_conn_id: the Airflow connection a destination uses when its campaign names none.
    :param account_field: the campaign key naming the account (Meta: ``ad_account_id``).
    :param normalise_account: raw value from a campaign file -> the account in its canonical form; raises
        :class:`ValueError` (or the campaign package's ``Invalid`` carrying a fix) when it is not one.
    :param account_example: a valid account as a campaign file would write it, for fixes and examples.
    :param rules: how identifiers are normalised and hashed for this platform, and which rows match.
    :param max_batch_rows: most member rows one add/replace batch may carry.
    :param max_remove_rows: most member rows one remove batch may carry.
    :param campaign_model: the pydantic model of one destination in a campaign file: a subclass of
        ``DestinationBase`` with ``platform: Literal["<name>"]`` and the ``account_field``.
    :param destination: ``"module:callable"``, a factory ``(conn_id, account) -> Destination`` that the
        Airflow side imports when a task runs (so this registry never imports a platform SDK).
    :param min_useful_size: below this many members an audience is unlikely to deliver (0: no minimum).
    :param warnings: ``(segment_name, group_size, shape) -> [warning]``, the platform's own dry-run
        warnings; ``shape`` is a :class:`GroupShape`.
    :param count_identifiers: the plan counts the group's values per payload key for ``warnings``
        (:attr:`GroupShape.identifiers`; it reads the staged values, so only platforms that use it ask).
    """

    name: str
    title: str
    default_conn_id: str
    account_field: str
    normalise_account: Callable[[Any], str]
    account_example: str
    rules: PlatformRules
    max_batch_rows: int
    max_remove_rows: int
    campaign_model: type[DestinationBase]
    destination: str
    min_useful_size: int = 0
    warnings: Callable[[str, int, GroupShape], list[str]] = field(default=_no_warnings)
    count_identifiers: bool = False

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(
                f"platform name {self.name!r} must be lowercase letters, digits and '_' (it forms task ids)"
            )
        if not _DOTTED_FACTORY.fullmatch(self.destination):
            raise ValueError(
                f"platform {self.name!r}: destination {self.destination!r} must be 'package.module:factory'"
            )
        if self.max_batch_rows < 1 or self.max_remove_rows < 1 or self.min_useful_size < 0:
            raise ValueError(f"platform {self.name!r}: batch limits must be positive, min_useful_size >= 0")
        fields = getattr(self.campaign_model, "model_fields", {})
        platform_field = fields.get("platform")
        if platform_field is None or get_args(platform_field.annotation) != (self.name,):
            raise ValueError(
                f"platform {self.name!r}: campaign_model {self.campaign_model.__name__} must declare "
                f'platform: Literal["{self.name}"]'
            )
        if self.account_field not in fields:
            raise ValueError(
                f"platform {self.name!r}: campaign_model {self.campaign_model.__name__} has no field "
                f"{self.account_field!r} (the account_field)"
            )
        self.normalise_account(self.account_example)  # the example must itself be valid

    def plan_warnings(self, segment_name: str, group_size: int, shape: GroupShape | None = None) -> list[str]:
        """What the dry-run plan warns about: a group below the useful minimum, then the platform's own."""
        found: list[str] = []
        if self.min_useful_size and group_size < self.min_useful_size:
            found.append(
                f"group of {group_size} is below {self.title}'s useful minimum (~{self.min_useful_size} "
                "matched members); the audience may be too small to deliver"
            )
        return found + list(self.warnings(segment_name, group_size, shape or GroupShape()))


class UnknownPlatformError(AudienceSyncError, ValueError):
    """A platform name nobody registered."""


_registry: dict[str, Platform] = {}
_builtins_loaded = False


def _load_builtins() -> None:
    """Import the built-in platforms' package once (it calls :func:`register` for each)."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True  # set first: the package's own register() calls come back here
    try:
        importlib.import_module(BUILTINS_PACKAGE)
    except BaseException:
        _builtins_loaded = False
        raise


def register(platform: Platform, *, replace: bool = False) -> Platform:
    """Register ``platform``; registering the same spec again is harmless.

    :param replace: allow replacing a different spec registered under the same name.
    :raises ValueError: another spec already has this name and ``replace`` is false.
    """
    _load_builtins()  # built-ins first, so they keep their place in listings
    current = _registry.get(platform.name)
    if current is not None and current != platform and not replace:
        raise ValueError(f"platform {platform.name!r} is already registered; pass replace=True to replace it")
    _registry[platform.name] = platform
    return platform


def is_builtin(name: str) -> bool:
    """Whether ``name`` is registered as the built-ins package registers it (its ``BUILTINS``), so that
    a fresh process (an extraction worker) gets the same platform by importing that package."""
    _load_builtins()
    spec = _registry.get(name)
    package = importlib.import_module(BUILTINS_PACKAGE)
    return spec is not None and any(spec is builtin for builtin in getattr(package, "BUILTINS", ()))


def unregister(name: str) -> None:
    """Remove a registered platform (tests that register a throwaway platform clean up with it)."""
    _registry.pop(name, None)


def platforms() -> Mapping[str, Platform]:
    """Every registered platform by name, in registration order (built-ins first)."""
    _load_builtins()
    return MappingProxyType(dict(_registry))


def platform_names() -> tuple[str, ...]:
    """The registered platform names, in registration order."""
    return tuple(platforms())


def get_platform(name: str) -> Platform:
    """The registered platform called ``name``.

    :raises UnknownPlatformError: no such platform; the message proposes the closest name and lists
        the supported ones.
    """
    known = platforms()
    spec = known.get(name)
    if spec is None:
        names = list(known)
        lowered = {n.lower(): n for n in names}
        close = [lowered[name.lower()]] if str(name).lower() in lowered else []
        close = close or difflib.get_close_matches(str(name), names, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UnknownPlatformError(
            f"unknown platform {name!r}; {hint}supported platforms: {', '.join(names) or '(none)'}"
        )
    return spec
