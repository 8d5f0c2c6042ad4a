"""Hit counting kernel for the ``montecarlo-pi`` job."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def count_hits(seed, samples):  # pragma: no cover - compiled
    """Draw ``samples`` points in the unit square; count those inside the quarter circle.

    Seeds Numba's own generator, which is per thread, so calls running in
    different threads (the kernel releases the GIL) do not disturb each other
    and each call is deterministic for its seed. ``seed`` must fit in 32 bits.
    """
    np.random.seed(seed)
    hits = 0
    for _ in range(samples):
        x = np.random.random()
        y = np.random.random()
        if x * x + y * y < 1.0:
            hits += 1
    return hits


def warmup() -> None:
    """Compile (or load from cache) on a tiny input."""
    count_hits(1, 16)
