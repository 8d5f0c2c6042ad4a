"""Per-job latency of a Numba job: piblade's warm worker vs the bare kernel vs plain `rq worker`.

The job: one 600×400, 200-iteration mandelbrot tile. piblade warms the kernel
once before serving; plain RQ forks a work horse per job and each horse compiles
(or loads from cache) the kernel again. Latency is RQ's own record of each task,
enqueued → ended, for tasks sent one at a time to one worker process; the bare
kernel is timed in this process between the jobs (bare, job, bare, job, ...), so
both see the same machine, and each job's whole run (its tile and the PNG the
reduce step writes) is over before the next kernel starts. The median of the
jobs over the median of the kernels is the ratio. Also: the job's own task
function in this process (kernel plus saving the tile), the time until
`dispatch.wait` returns for the whole run, and an idle worker's memory.
Usage: python bench/numba_latency.py [--jobs 100] [--plain-jobs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import psutil
from _servers import piblade_workers, plain_rq_workers, redis_server, stop, wait_workers
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from piblade import dispatch, runs
from piblade.redisconn import connect
from piblade.registry import load_registry

PARAMS = {"width": 600, "height": 400, "max_iter": 200, "tiles": 1}
# The bare kernel runs with the threading layer a worker uses (piblade.worker.numba_environment):
# with the default OpenMP layer its threads spin while they wait, which on a busy machine
# made the bare kernel slower than the same kernel in a worker.
os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")


def bare_kernel(repeats: int, warm: bool = True) -> list[float]:
    from jobs.mandelbrot import render_tile

    if warm:
        render_tile(0, 0, 600, 400, 600, 400, 200, -2.0, 1.0, -1.0, 1.0)  # compile / load cache
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        render_tile(0, 0, 600, 400, 600, 400, 200, -2.0, 1.0, -1.0, 1.0)
        times.append(time.perf_counter() - started)
    return times


def task_in_process(registry: Any, repeats: int) -> list[float]:
    """The mandelbrot task function itself, in this process: the kernel plus writing the tile."""
    import tempfile
    from pathlib import Path

    from piblade.registry import TaskContext

    spec = registry.get("mandelbrot")
    (kwargs,) = spec.plan(spec.validate(PARAMS))
    root = Path(tempfile.mkdtemp(prefix="piblade-bench-task-"))
    ctx = TaskContext(run_id="bench", index=0, total=1, node="bench", data_root=root, output_dir=root / "out",
                      threads=int(os.environ.get("NUMBA_NUM_THREADS", os.cpu_count() or 1)))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        spec.task(ctx, **kwargs)
        times.append(time.perf_counter() - started)
    return times


def quartiles(values: list[float]) -> str:
    q = statistics.quantiles(values, n=4)
    return f"{q[0] * 1000:.1f}-{q[2] * 1000:.1f} ms"


def latency(job: Job) -> float:
    return (job.ended_at - job.enqueued_at).total_seconds()


def wait_job(job: Job, timeout: float = 120) -> Job:
    deadline = time.monotonic() + timeout
    while job.get_status() not in ("finished", "failed"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job.id} did not finish")
        time.sleep(0.005)
    job.refresh()
    if job.get_status() != "finished":
        raise RuntimeError(f"job {job.id} failed: {job.latest_result().exc_string}")
    return job


def rss_mib(pid: int) -> list[float]:
    proc = psutil.Process(pid)
    return [p.memory_info().rss / 2**20 for p in [proc, *proc.children(recursive=True)]]


def pss_mib(pid: int) -> list[tuple[float, float]]:
    proc = psutil.Process(pid)
    out = []
    for p in [proc, *proc.children(recursive=True)]:
        info = p.memory_full_info()
        out.append((info.rss / 2**20, info.pss / 2**20))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--plain-jobs", type=int, default=5)
    args = parser.parse_args()
    registry = load_registry()
    bare_kernel(1)  # compile or load the cache before anything is timed
    task_fn = task_in_process(registry, 3)
    with redis_server() as (target, password, tmp):
        conn = connect(target)
        queue = Queue("default", connection=conn, serializer=JSONSerializer)

        workers = plain_rq_workers(target, password, tmp, 1)
        try:
            wait_workers(conn, 1)
            plain = [latency(wait_job(queue.enqueue("bench._plain.mandelbrot_600x400")))
                     for _ in range(args.plain_jobs)]
        finally:
            stop(workers)
        time.sleep(0.5)

        pool = piblade_workers(target, tmp, 1)
        try:
            wait_workers(conn, 1)
            idle_rss = rss_mib(pool.pid)
            blade, bare, whole, overhead = [], [], [], []
            for _ in range(args.jobs):
                bare.extend(bare_kernel(1, warm=False))
                started = time.perf_counter()
                record = dispatch.submit(conn, registry, "mandelbrot", PARAMS)
                # Wait for the whole run (the PNG step too) before the next kernel: nothing overlaps.
                status = dispatch.wait(conn, record.id, poll=0.2)
                whole.append(time.perf_counter() - started)
                assert status.state == "finished", status.to_dict()
                task = Job.fetch(runs.task_id(record.id, 0), connection=conn, serializer=JSONSerializer)
                blade.append(latency(task))
                # What the worker spent inside the task function; the rest of enqueue -> ended is dispatch.
                overhead.append(latency(task) - float(task.return_value()["seconds"]))
            task_fn.extend(task_in_process(registry, 3))
        finally:
            stop([pool])
        time.sleep(0.5)
        pool = piblade_workers(target, tmp, 2)
        try:
            wait_workers(conn, 2)
            time.sleep(1)
            shared = pss_mib(pool.pid)
        finally:
            stop([pool])

    kernel = statistics.median(bare)
    print(f"job: mandelbrot 600x400, 200 iterations, one tile; {args.jobs} jobs one at a time, each after "
          "a bare kernel call (interleaved)")
    print(f"bare kernel (in-process, warm):   median {kernel * 1000:7.1f} ms "
          f"(quartiles {quartiles(bare)})")
    print(f"the job's task function, in-process (kernel + saving the tile): median "
          f"{statistics.median(task_fn) * 1000:7.1f} ms")
    print(f"plain rq worker (forking):        median {statistics.median(plain) * 1000:7.1f} ms, "
          f"first {plain[0] * 1000:7.1f} ms")
    print(f"piblade worker (warm):            median {statistics.median(blade) * 1000:7.1f} ms, "
          f"first {blade[0] * 1000:7.1f} ms, worst {max(blade) * 1000:7.1f} ms (quartiles {quartiles(blade)})")
    print(f"dispatch overhead (enqueue -> ended minus the task function's own time): median "
          f"{statistics.median(overhead) * 1000:7.2f} ms (quartiles {quartiles(overhead)})")
    print(f"submit -> dispatch.wait returns, whole run (tile + PNG step): median "
          f"{statistics.median(whole) * 1000:7.1f} ms")
    print(f"ratio piblade / bare kernel:      {statistics.median(blade) / kernel:7.2f}x (worst {max(blade) / kernel:.2f}x)")
    print(f"ratio plain RQ / piblade:         {statistics.median(plain) / statistics.median(blade):7.1f}x")
    print("idle piblade worker RSS:          " + ", ".join(f"{r:.0f} MiB" for r in idle_rss)
          + " (--processes 1: one process)")
    print("--processes 2, RSS / PSS:          " + ", ".join(f"{r:.0f}/{p:.0f} MiB" for r, p in shared)
          + f" (supervisor, then workers); total PSS {sum(p for _, p in shared):.0f} MiB")


if __name__ == "__main__":
    main()
