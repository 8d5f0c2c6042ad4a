"""Escape-time kernel for the ``mandelbrot`` job.

The arithmetic (pixel centres, the order of every multiplication and addition)
is mirrored exactly by :func:`jobs.mandelbrot.render_reference`, so the kernel
and the NumPy reference produce identical counts.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, nogil=True, parallel=True)
def escape_counts(out, x0, y0, width, height, x_min, x_max, y_min, y_max, max_iter):  # pragma: no cover - compiled
    """Fill ``out`` (rows × cols, uint32) with escape counts for pixels starting at (x0, y0).

    Pixel (px, py) of a ``width`` × ``height`` image maps to the point at its
    centre: ``x_min + (px + 0.5) * dx`` and ``y_max - (py + 0.5) * dy`` (row 0
    is the top of the image). A point that does not escape within ``max_iter``
    iterations gets ``max_iter``.
    """
    dx = (x_max - x_min) / width
    dy = (y_max - y_min) / height
    rows, cols = out.shape
    for r in prange(rows):
        ci = y_max - ((y0 + r) + 0.5) * dy
        for c in range(cols):
            cr = x_min + ((x0 + c) + 0.5) * dx
            zr = 0.0
            zi = 0.0
            n = 0
            while n < max_iter:
                zr2 = zr * zr
                zi2 = zi * zi
                if zr2 + zi2 > 4.0:
                    break
                zi = 2.0 * zr * zi + ci
                zr = zr2 - zi2 + cr
                n += 1
            out[r, c] = n
    return out


def warmup() -> None:
    """Compile (or load from cache) on a tiny input."""
    escape_counts(np.zeros((2, 2), dtype=np.uint32), 0, 0, 2, 2, -2.0, 1.0, -1.0, 1.0, 4)
