"""What an alert says, and the group-size rule that raises one (pure: counts and names, never members).

An alert's text carries the campaign, the run, the task and counts or an error message; error messages
of this package name fields and fixes, never identifiers (tests/integration/test_privacy_scan.py).
"""

from __future__ import annotations

from dataclasses import dataclass

#: one line per trigger: the subject's gist
_GIST = {
    "sync_failed": "sync failed",
    "available_by_missed": "missed its delivery promise",
    "approval_waiting": "waiting for approval",
    "group_size_moved": "audience group size moved",
}
_DETAIL_CHARS = 2_000


@dataclass(frozen=True)
class Alert:
    """One alert: its trigger and where it happened; :meth:`subject` and :meth:`text` render it."""

    trigger: str
    campaign: str
    dag_id: str
    run_id: str
    task_id: str
    detail: str

    def subject(self) -> str:
        return f"[audience-sync] {self.campaign}: {_GIST.get(self.trigger, self.trigger)}"

    def text(self) -> str:
        detail = self.detail if len(self.detail) <= _DETAIL_CHARS else self.detail[:_DETAIL_CHARS] + " [...]"
        return (
            f"{self.subject()}\n\n{detail}\n\n"
            f"DAG {self.dag_id}, run {self.run_id}, task {self.task_id}. "
            "The task's log in the Airflow UI has the details."
        )


@dataclass(frozen=True)
class SizeChange:
    """A group's size against the last run's, for one destination."""

    previous: int
    current: int

    @property
    def percent(self) -> float:
        """The change in percent of the previous size (+ grew, - shrank); 100 from an empty group."""
        if self.previous == 0:
            return 0.0 if self.current == 0 else 100.0
        return (self.current - self.previous) / self.previous * 100

    def beyond(self, limit_percent: float) -> bool:
        """Whether the size moved by more than ``limit_percent`` either way."""
        return abs(self.percent) > limit_percent

    def describe(self) -> str:
        return (
            f"group of {self.current:,} members, {self.percent:+.1f} % since the last run's {self.previous:,}"
        )


def size_change(previous: int | None, current: int) -> SizeChange | None:
    """The change against the last run's size; None on a first run (nothing to compare with)."""
    return None if previous is None else SizeChange(int(previous), int(current))


def hold_reason(change: SizeChange | None, limit_percent: float, mode: str, removes: int) -> str | None:
    """Why a run must stop before removing and ask for approval, or None.

    A mirror run removes whoever left the group: a query that suddenly returns little would empty the
    audience. So a shrink beyond the limit that would remove members waits for a person to confirm it.
    """
    if change is None or mode != "mirror" or removes <= 0 or change.percent >= 0:
        return None
    if not change.beyond(limit_percent):
        return None
    return (
        f"the group shrank by more than {limit_percent:g} % ({change.describe()}) and this mirror run "
        f"would remove {removes:,} members: it stops before removing until someone approves it"
    )
