"""``montecarlo-pi``: estimate pi by throwing random points at a quarter circle.

The samples are spread over ``tasks`` tasks, each with its own seed derived
deterministically from ``(seed, task index)``; a task counts hits in chunks of
at most 2**22 samples (one Numba call each, so RQ's timeout can fire between
chunks), each chunk seeded from ``(task seed, chunk index)``. The same
parameters always give the same estimate, whatever the number of threads.

This module must not import Numba at module level; the kernel lives in
:mod:`jobs.kernels.montecarlo`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from piblade.lazymodule import lazy_module
from piblade.registry import Param, TaskContext, job

if TYPE_CHECKING:
    import numpy as np
else:  # numpy loads in the worker, on first use: `piblade submit` only reads the job's parameters
    np = lazy_module("numpy")

#: Most samples drawn by one kernel call.
CHUNK = 1 << 22

PARAMS = (
    Param("samples", int, 20_000_000, min=1000, max=10**12, help="total number of random points"),
    Param("tasks", int, 8, min=1, max=10_000, help="number of tasks to spread the samples over"),
    Param("seed", int, 1, min=0, max=2**31 - 1, help="seed; the same seed gives the same estimate"),
)


def derive_seed(*keys: int) -> int:
    """A 32-bit seed derived deterministically from integers (NumPy's SeedSequence)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint32)[0])


def split_samples(samples: int, tasks: int) -> list[int]:
    """Spread ``samples`` over at most ``tasks`` parts (no empty part); sizes differ by at most 1."""
    tasks = max(1, min(tasks, samples))
    base, extra = divmod(samples, tasks)
    return [base + (1 if i < extra else 0) for i in range(tasks)]


def split(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One task per share of the samples, each with its own derived seed."""
    return [
        {"index": i, "samples": n, "seed": derive_seed(params["seed"], i)}
        for i, n in enumerate(split_samples(params["samples"], params["tasks"]))
    ]


def chunks(samples: int, seed: int) -> list[tuple[int, int]]:
    """(chunk seed, chunk samples) pairs covering ``samples``."""
    return [(derive_seed(seed, j), min(CHUNK, samples - start)) for j, start in enumerate(range(0, samples, CHUNK))]


def warmup() -> None:
    """Compile the kernel (or load it from Numba's cache) on a tiny input."""
    from jobs.kernels import montecarlo as kernels

    kernels.warmup()


def reduce(ctx: TaskContext, params: Mapping[str, Any], results: list[Any]) -> dict[str, Any]:
    """Sum the hits: ``{"pi", "samples", "error"}``."""
    hits = sum(int(r["hits"]) for r in results)
    samples = sum(int(r["samples"]) for r in results)
    pi = 4.0 * hits / samples
    return {"pi": pi, "samples": samples, "error": abs(pi - math.pi)}


@job(
    "montecarlo-pi",
    summary="Estimate pi with random points (Numba); deterministic for a given seed",
    params=PARAMS,
    split=split,
    reduce=reduce,
    warmup=warmup,
    timeout=1800,
)
def task(ctx: TaskContext, *, index: int, samples: int, seed: int) -> dict[str, int]:
    """Count hits among ``samples`` points; chunks run on up to ``ctx.threads`` threads."""
    from jobs.kernels.montecarlo import count_hits

    work = chunks(samples, seed)
    threads = max(1, min(ctx.threads, len(work)))
    if threads == 1:
        hits = sum(int(count_hits(s, n)) for s, n in work)
    else:
        # The kernel releases the GIL. Do not wait for queued chunks if the
        # task is interrupted (RQ's timeout raises in the main thread).
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="montecarlo")
        try:
            hits = sum(int(f.result()) for f in [pool.submit(count_hits, s, n) for s, n in work])
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
    return {"hits": hits, "samples": samples}
