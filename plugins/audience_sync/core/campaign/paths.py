"""Where campaign files and the files they name live: project root, campaign folder, path display."""

from __future__ import annotations

from pathlib import Path

from audience_sync.core.settings import settings

CAMPAIGNS_DIR_ENV = "AUDIENCE_SYNC_CAMPAIGNS_DIR"


def project_root() -> Path:
    """Return the project root: the parent of the ``plugins/`` folder holding this package."""
    return Path(__file__).resolve().parents[4]


def campaigns_dir() -> Path:
    """Return the campaign folder.

    ``$AUDIENCE_SYNC_CAMPAIGNS_DIR`` when set (a relative value is taken relative to the project root),
    else ``<project root>/include/campaigns``.
    """
    configured = settings().campaigns_dir
    if configured is not None:
        return resolve_path(configured)
    return project_root() / "include" / "campaigns"


def resolve_path(value: str | Path) -> Path:
    """Resolve ``value`` against the project root unless it is absolute (``~`` is expanded)."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = project_root() / path
    return path.resolve()


def display_path(path: Path) -> str:
    """Show ``path`` relative to the project root when it lies inside it, else absolute."""
    try:
        return path.resolve().relative_to(project_root()).as_posix()
    except ValueError:
        return str(path)
