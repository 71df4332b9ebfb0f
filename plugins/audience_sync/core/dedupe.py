"""Member keys seen so far in one extraction, as sorted runs of 64-bit ids (8 bytes a member).

A Python set of ten million ids costs about 700 MB; these runs cost 80 MB. New ids form a sorted run;
runs of similar size are merged (as in a log-structured merge tree), so there are at most about
log2(N) runs and every id is merged about log2(N) times in all.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Ids = npt.NDArray[np.uint64]


class SeenKeys:
    """Which member ids came before, chunk by chunk; the first occurrence of an id wins."""

    def __init__(self) -> None:
        self.runs: list[Ids] = []

    def __len__(self) -> int:
        return sum(len(r) for r in self.runs)

    def repeated(self, ids: Ids, present: npt.NDArray[np.bool_] | None = None) -> npt.NDArray[np.bool_]:
        """Mark the ids seen earlier (in an earlier chunk, or earlier in this one) and remember the rest.

        :param ids: one 64-bit id per row of the chunk.
        :param present: rows that have an id (others are never repeats); default all.
        :return: per row, whether it repeats an earlier id.
        """
        present = np.ones(len(ids), dtype=bool) if present is None else present
        repeated = np.zeros(len(ids), dtype=bool)
        rows = np.flatnonzero(present)
        if not len(rows):
            return repeated
        mine = ids[rows]
        order = np.argsort(mine, kind="stable")  # stable: among equal ids the first row sorts first
        ranked = mine[order]
        again = np.zeros(len(ranked), dtype=bool)
        again[1:] = ranked[1:] == ranked[:-1]
        for run in self.runs:
            at = np.searchsorted(run, ranked)
            again |= run[np.minimum(at, len(run) - 1)] == ranked
        repeated[rows[order]] = again
        self._remember(np.unique(ranked[~again]))
        return repeated

    def _remember(self, run: Ids) -> None:
        if not len(run):
            return
        self.runs.append(run)
        while len(self.runs) > 1 and len(self.runs[-2]) <= 2 * len(self.runs[-1]):
            last = self.runs.pop()
            merged = np.concatenate([self.runs.pop(), last])
            merged.sort(kind="stable")  # two sorted runs: a merge
            self.runs.append(merged)
