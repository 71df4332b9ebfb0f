"""Approval decisions in the state database (table ``as_approvals``, schema v5).

One row per decision: approved, rejected, or timed out (nobody answered in time), with who decided,
when, from where (the Airflow approval step or the campaign file's ``approval:`` block), the run that
asked and the dry-run plan's summary. A version is approved for a campaign once any approval of it is
recorded; rejections and time-outs count for their own run only.
"""

from __future__ import annotations

import dataclasses
import json

import sqlalchemy as sa

from audience_sync.core.approval import APPROVED, DECISIONS, Decision
from audience_sync.core.ledger import StateStore, approvals


class ApprovalLog:
    """Record and read approval decisions on a :class:`StateStore`'s database."""

    def __init__(self, store: StateStore) -> None:
        self.engine = store.engine

    def record(self, decision: Decision) -> None:
        if decision.decision not in DECISIONS:
            raise ValueError(f"unknown decision {decision.decision!r}; one of {', '.join(DECISIONS)}")
        values = dataclasses.asdict(decision)
        values["plan_summary"] = json.dumps(decision.plan_summary, sort_keys=True, default=str)
        with self.engine.begin() as conn:
            conn.execute(approvals.insert().values(**values))

    def approval(self, dag_id: str, version: str) -> Decision | None:
        """The first recorded approval of ``version`` for this campaign, or None."""
        rows = self._select(
            sa.and_(
                approvals.c.dag_id == dag_id,
                approvals.c.version == version,
                approvals.c.decision == APPROVED,
            ),
            newest_first=False,
            limit=1,
        )
        return rows[0] if rows else None

    def history(self, dag_id: str, limit: int = 10) -> list[Decision]:
        """This campaign's latest decisions, newest first."""
        return self._select(approvals.c.dag_id == dag_id, newest_first=True, limit=limit)

    def _select(self, where: sa.ColumnElement[bool], *, newest_first: bool, limit: int) -> list[Decision]:
        order = approvals.c.id.desc() if newest_first else approvals.c.id.asc()
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(approvals).where(where).order_by(order).limit(limit)).all()
        fields = [f.name for f in dataclasses.fields(Decision)]
        out = []
        for row in rows:
            values = {name: row._mapping[name] for name in fields}
            values["plan_summary"] = json.loads(values["plan_summary"]) if values["plan_summary"] else {}
            out.append(Decision(**values))
        return out
