"""Per-job latency of a Numba job: piblade's warm worker vs plain `rq worker` vs the bare kernel.

The job: one 600×400, 200-iteration mandelbrot tile. Plain RQ forks a work horse
per job and each horse compiles (or loads from cache) the kernel again. piblade
warms the kernel once before serving. Latency is RQ's own record of each job,
enqueued → ended, for jobs sent one at a time to a freshly started worker (so the
first job on a fresh worker is included). Also reports an idle worker's RSS.
Usage: python bench/numba_latency.py [--jobs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import psutil
from _servers import piblade_workers, plain_rq_workers, redis_server, stop, wait_workers
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from piblade import dispatch, runs
from piblade.redisconn import connect
from piblade.registry import load_registry

PARAMS = {"width": 600, "height": 400, "max_iter": 200, "tiles": 1}


def bare_kernel(repeats: int) -> list[float]:
    from jobs.mandelbrot import render_tile

    render_tile(0, 0, 600, 400, 600, 400, 200, -2.0, 1.0, -1.0, 1.0)  # compile / load cache
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        render_tile(0, 0, 600, 400, 600, 400, 200, -2.0, 1.0, -1.0, 1.0)
        times.append(time.perf_counter() - started)
    return times


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
    parser.add_argument("--jobs", type=int, default=5)
    args = parser.parse_args()
    registry = load_registry()
    bare = bare_kernel(args.jobs)
    with redis_server() as (target, password, tmp):
        conn = connect(target)
        queue = Queue("default", connection=conn, serializer=JSONSerializer)

        workers = plain_rq_workers(target, password, tmp, 1)
        try:
            wait_workers(conn, 1)
            plain = [latency(wait_job(queue.enqueue("bench._plain.mandelbrot_600x400"))) for _ in range(args.jobs)]
        finally:
            stop(workers)
        time.sleep(0.5)

        pool = piblade_workers(target, tmp, 1)
        try:
            wait_workers(conn, 1)
            idle_rss = rss_mib(pool.pid)
            blade = []
            for _ in range(args.jobs):
                record = dispatch.submit(conn, registry, "mandelbrot", PARAMS)
                task = Job.fetch(runs.task_id(record.id, 0), connection=conn, serializer=JSONSerializer)
                blade.append(latency(wait_job(task)))
                dispatch.wait(conn, record.id, poll=0.01)  # let the PNG step finish before the next job
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
    print(f"job: mandelbrot 600x400, 200 iterations, one tile; {args.jobs} jobs, one at a time, fresh worker")
    print(f"bare kernel (in-process, warm):   median {kernel * 1000:7.1f} ms")
    print(f"plain rq worker (forking):        median {statistics.median(plain) * 1000:7.1f} ms, "
          f"first {plain[0] * 1000:7.1f} ms")
    print(f"piblade worker (warm):            median {statistics.median(blade) * 1000:7.1f} ms, "
          f"first {blade[0] * 1000:7.1f} ms, worst {max(blade) * 1000:7.1f} ms")
    print(f"ratio piblade / bare kernel:      {statistics.median(blade) / kernel:7.2f}x (worst {max(blade) / kernel:.2f}x)")
    print(f"ratio plain RQ / piblade:         {statistics.median(plain) / statistics.median(blade):7.1f}x")
    print("idle piblade worker RSS:          " + ", ".join(f"{r:.0f} MiB" for r in idle_rss)
          + " (--processes 1: one process)")
    print("--processes 2, RSS / PSS:          " + ", ".join(f"{r:.0f}/{p:.0f} MiB" for r, p in shared)
          + f" (supervisor, then workers); total PSS {sum(p for _, p in shared):.0f} MiB")


if __name__ == "__main__":
    main()
