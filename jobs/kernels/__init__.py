"""Numba kernels of the bundled jobs.

Each submodule imports Numba at module level; this package's ``__init__`` does
not, so importing ``jobs.kernels`` alone stays cheap. Import a kernel module
only inside a task, warm-up or reduce function (on a worker).

Kernels are ``@njit(cache=True, nogil=True)``; only the Mandelbrot rows use
``parallel=True``. Every kernel call is bounded (a block of rows, a chunk of
samples, a chunk of a file) because RQ's SIGALRM timeout cannot interrupt
nopython code: callers loop over chunks from Python.
"""
