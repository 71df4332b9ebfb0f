"""A group applied to an audience's ledger the way a sync does it, for tests of the ledger's parts."""

from __future__ import annotations

from audience_sync.core.delta import Changes, StagedGroup, stage_changes
from audience_sync.core.ledger import StateStore

Rows = list[tuple[str, str, str]]


def stage_group(
    store: StateStore, registry_id: int, group: Rows, run_id: str, mode: str = "mirror"
) -> Changes:
    """The stage of changes a sync of ``group`` makes (not applied)."""
    return stage_changes(
        store,
        registry_id,
        StagedGroup(group),
        mode=mode,
        backfill=False,
        exclude=None,
        dag_id="d",
        run_id=run_id,
        lease=None,
    )


def apply_group(store: StateStore, registry_id: int, group: Rows, run_id: str, mode: str = "mirror") -> None:
    """Apply a group to an audience's ledger as a sync does: stage what changes, apply it, drop it."""
    changes = stage_group(store, registry_id, group, run_id, mode)
    try:
        store.apply_stage(registry_id, changes.key, run_id, mode=mode)
    finally:
        store.drop_stage(changes.key)
