"""Per-chunk statistics kernel for the ``summary`` job."""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def chunk_stats(values, edges, hist):  # pragma: no cover - compiled
    """Statistics of one chunk of float64 ``values``; non-finite values are left out.

    Returns ``(count, sum, min, max, m2, nonfinite, below, above)`` where
    ``m2`` is the sum of squared deviations from the chunk mean (two passes).
    When ``hist`` is not empty, the finite values in ``[edges[0], edges[-1]]``
    are counted into it in place, with the same bin assignment as
    ``numpy.histogram`` for these ``edges`` (last bin closed); ``below`` and
    ``above`` count the finite values outside that range.
    """
    nbins = hist.shape[0]
    lo = 0.0
    hi = 0.0
    if nbins > 0:
        lo = edges[0]
        hi = edges[nbins]
    count = 0
    total = 0.0
    vmin = math.inf
    vmax = -math.inf
    nonfinite = 0
    below = 0
    above = 0
    for v in values:
        if not math.isfinite(v):
            nonfinite += 1
            continue
        count += 1
        total += v
        vmin = min(vmin, v)
        vmax = max(vmax, v)
        if nbins > 0:
            if v < lo:
                below += 1
            elif v > hi:
                above += 1
            else:
                i = int((v - lo) / (hi - lo) * nbins)
                if i >= nbins:
                    i = nbins - 1
                if v < edges[i]:
                    i -= 1
                elif i != nbins - 1 and v >= edges[i + 1]:
                    i += 1
                hist[i] += 1
    m2 = 0.0
    if count > 0:
        mean = total / count
        for v in values:
            if math.isfinite(v):
                d = v - mean
                m2 += d * d
    return count, total, vmin, vmax, m2, nonfinite, below, above


def warmup() -> None:
    """Compile (or load from cache) on tiny inputs, with and without a histogram."""
    values = np.array([0.5, 1.5, np.nan, -3.0])
    chunk_stats(values, np.linspace(0.0, 2.0, 3), np.zeros(2, dtype=np.int64))
    chunk_stats(values, np.empty(0), np.zeros(0, dtype=np.int64))
