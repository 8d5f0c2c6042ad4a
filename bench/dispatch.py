"""Dispatch throughput: 2,000 no-op jobs through piblade vs plain `rq worker`, same Redis, same run.

Prints jobs/s for each, the ratio, the enqueue rate of a 2,000-task fan-out
(piblade's one pipeline vs RQ's single enqueues), and redis-benchmark as the ceiling.
Also where the CPU went per task while the jobs ran: the worker processes (with
their forked children), redis-server, and this process (enqueue and wait), from
/proc via psutil; on 2 cores shared by all of them, CPU per task is what sets
the rate. ``bench/roundtrips.py`` counts the round trips behind it.
Usage: python bench/dispatch.py [--jobs 2000] [--processes 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time

import psutil
from _servers import piblade_workers, plain_rq_workers, redis_server, stop, wait_workers
from rq import Queue
from rq.serializers import JSONSerializer

from piblade import dispatch
from piblade.redisconn import connect
from piblade.registry import load_registry


def drain(conn, queue: Queue, total: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while True:
        done = queue.finished_job_registry.count + queue.failed_job_registry.count
        if done >= total:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done}/{total} jobs done")
        time.sleep(0.01)


def cpu_seconds(pids: list[int]) -> float:
    """CPU (user + system) of these processes, their live descendants and their reaped children."""
    total = 0.0
    seen: set[int] = set()
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in procs:
            if proc.pid in seen:
                continue
            seen.add(proc.pid)
            try:
                t = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system + t.children_user + t.children_system
    return total


def redis_pid() -> int:
    return next(c.pid for c in psutil.Process().children() if "redis-server" in c.name())


class CpuWindow:
    """CPU per task of the workers, redis-server and this process over one timed window."""

    def __init__(self, workers: list[int]) -> None:
        self.workers = workers
        self.redis = redis_pid()
        self.start = self.sample()

    def sample(self) -> tuple[float, float, float]:
        own = sum(os.times()[:2])
        return cpu_seconds(self.workers), cpu_seconds([self.redis]), own

    def per_task(self, n: int) -> tuple[float, float, float]:
        end = self.sample()
        return tuple((b - a) / n * 1e3 for a, b in zip(self.start, end, strict=True))  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    n, procs = args.jobs, args.processes
    registry = load_registry()
    results: dict[str, float] = {}
    cpu: dict[str, tuple[float, float, float]] = {}
    with redis_server() as (target, password, tmp):
        conn = connect(target)
        queue = Queue("default", connection=conn, serializer=JSONSerializer)

        # Enqueue rate: single enqueues (the plain way) vs piblade's pipelined fan-out.
        started = time.perf_counter()
        for i in range(n):
            queue.enqueue("bench._plain.noop", i)
        results["enqueue_single"] = n / (time.perf_counter() - started)
        queue.empty()
        started = time.perf_counter()
        dispatch.submit(conn, registry, "noop", {"count": n})
        results["enqueue_piblade"] = n / (time.perf_counter() - started)
        queue.empty()

        # Plain RQ: default forking workers, warm and waiting, then 2,000 jobs.
        workers = plain_rq_workers(target, password, tmp, procs)
        try:
            wait_workers(conn, procs)
            before = queue.finished_job_registry.count
            window = CpuWindow([w.pid for w in workers])
            started = time.perf_counter()
            with conn.pipeline() as pipe:
                queue.enqueue_many([Queue.prepare_data("bench._plain.noop", (i,)) for i in range(n)], pipeline=pipe)
                pipe.execute()
            drain(conn, queue, n + before)
            results["plain_rq"] = n / (time.perf_counter() - started)
            cpu["plain_rq"] = window.per_task(n)
        finally:
            stop(workers)
        time.sleep(0.5)

        # piblade: warm workers, then `piblade submit noop --param count=2000`.
        pool = piblade_workers(target, tmp, procs)
        try:
            wait_workers(conn, procs)
            window = CpuWindow([pool.pid])
            started = time.perf_counter()
            record = dispatch.submit(conn, registry, "noop", {"count": n})
            status = dispatch.wait(conn, record.id)  # as `submit --wait`: woken by the run's end
            results["piblade"] = n / (time.perf_counter() - started)
            cpu["piblade"] = window.per_task(n)
            assert status.done == n, status.counts
        finally:
            stop([pool])

        ceiling = None
        if shutil.which("redis-benchmark"):
            out = subprocess.run(
                ["redis-benchmark", "-p", str(target.port), "--user", "piblade", "-a", password,
                 "-t", "lpush,lpop", "-n", "100000", "-q", "--csv"],
                capture_output=True, text=True, check=False,
            ).stdout
            rates = [float(line.split(",")[1].strip('"')) for line in out.splitlines()[1:] if line.count(",") >= 1]
            ceiling = min(rates) if rates else None

    print(f"jobs: {n}, worker processes: {procs}")
    print(f"plain rq worker (forking):  {results['plain_rq']:8.0f} jobs/s")
    print(f"piblade worker:             {results['piblade']:8.0f} jobs/s")
    print(f"ratio piblade / plain RQ:   {results['piblade'] / results['plain_rq']:8.1f}x")
    for name, label in (("plain_rq", "plain rq worker"), ("piblade", "piblade worker")):
        w, r, own = cpu[name]
        print(f"CPU per task, {label + ':':<17} workers {w:.3f} ms, redis-server {r:.3f} ms, "
              f"submitter {own:.3f} ms; total {w + r + own:.3f} ms")
    print(f"enqueue, single calls:      {results['enqueue_single']:8.0f} jobs/s")
    print(f"enqueue, piblade fan-out:   {results['enqueue_piblade']:8.0f} jobs/s "
          f"({results['enqueue_piblade'] / results['enqueue_single']:.1f}x)")
    if ceiling:
        print(f"redis-benchmark LPUSH/LPOP: {ceiling:8.0f} ops/s (ceiling)")


if __name__ == "__main__":
    main()
