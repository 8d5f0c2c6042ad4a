"""Dispatch throughput: 2,000 no-op jobs through piblade vs plain `rq worker`, same Redis, same run.

Prints jobs/s for each, the ratio, the enqueue rate of a 2,000-task fan-out
(piblade's one pipeline vs RQ's single enqueues), and redis-benchmark as the ceiling.
Usage: python bench/dispatch.py [--jobs 2000] [--processes 2]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    n, procs = args.jobs, args.processes
    registry = load_registry()
    results: dict[str, float] = {}
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
            started = time.perf_counter()
            with conn.pipeline() as pipe:
                queue.enqueue_many([Queue.prepare_data("bench._plain.noop", (i,)) for i in range(n)], pipeline=pipe)
                pipe.execute()
            drain(conn, queue, n + before)
            results["plain_rq"] = n / (time.perf_counter() - started)
        finally:
            stop(workers)
        time.sleep(0.5)

        # piblade: warm workers, then `piblade submit noop --param count=2000`.
        pool = piblade_workers(target, tmp, procs)
        try:
            wait_workers(conn, procs)
            started = time.perf_counter()
            record = dispatch.submit(conn, registry, "noop", {"count": n})
            status = dispatch.wait(conn, record.id, poll=0.01)
            results["piblade"] = n / (time.perf_counter() - started)
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
    print(f"enqueue, single calls:      {results['enqueue_single']:8.0f} jobs/s")
    print(f"enqueue, piblade fan-out:   {results['enqueue_piblade']:8.0f} jobs/s "
          f"({results['enqueue_piblade'] / results['enqueue_single']:.1f}x)")
    if ceiling:
        print(f"redis-benchmark LPUSH/LPOP: {ceiling:8.0f} ops/s (ceiling)")


if __name__ == "__main__":
    main()
