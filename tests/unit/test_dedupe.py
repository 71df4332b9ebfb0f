"""The record of member keys seen during an extraction: first occurrence wins, across chunks."""

from __future__ import annotations

import random

import numpy as np

from audience_sync.core.dedupe import SeenKeys


def test_repeats_are_found_within_and_across_chunks_like_a_set_would() -> None:
    rng = random.Random(5)
    seen, reference = SeenKeys(), set()
    for _ in range(60):
        size = rng.randrange(0, 400)
        ids = [rng.randrange(0, 3000) * 0x9E3779B97F4A7C15 % 2**64 for _ in range(size)]
        present = [rng.random() > 0.05 for _ in range(size)]
        got = seen.repeated(np.array(ids, dtype=np.uint64), np.array(present, dtype=bool))
        want = []
        for i, ok in zip(ids, present, strict=True):
            want.append(ok and i in reference)
            if ok:
                reference.add(i)
        assert got.tolist() == want
    assert len(seen) == len(reference)
    assert len(seen.runs) <= 2 * len(reference).bit_length()  # runs are merged as they grow
    assert all(np.all(r[1:] > r[:-1]) for r in seen.runs)  # each run sorted, no repeats
