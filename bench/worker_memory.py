"""Worker memory: an idle piblade worker's PSS, USS and RSS for 1, 2 and 4 processes, beside plain `rq worker`.

A node runs one supervisor (it warms the kernels, then forks) and N worker
processes that share its pages copy-on-write, so RSS counts the shared pages
once per process and overstates what N processes cost. PSS (proportional set
size, from /proc/PID/smaps_rollup) splits every shared page among the
processes that map it: the PSS of the supervisor plus its workers is what the
whole tree takes from the node. USS (private pages) is what a process alone
holds.

Three states, each measured with the workers idle on an empty queue:

* cold: ``--warm noop`` (no kernel compiled, Numba not imported);
* warm: the default warm set (every job's kernels, loaded from the Numba cache
  a throwaway first start filled, as on every start of a node after its first);
* worked: warm, after every worker process ran tasks of every kernel job
  (mandelbrot, montecarlo-pi, summary, image): a worker's own pages grow as
  it runs, which is what a node holds after a day of work.

The alternative: N plain ``rq worker`` processes (RQ's default forking
``Worker``, JSON serializer), idle. Each is independent (no shared heap), and
it imports neither Numba nor the jobs until a forked work horse runs one.

Prints per state and N: the tree's total PSS and its share per worker process
(total / N), the supervisor's PSS, one worker's PSS/USS/RSS, and the ratios to
plain RQ. ``--warm-sets`` adds one process warming each kernel job alone.
Usage: python bench/worker_memory.py [--processes 1,2,4] [--warm-sets] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _servers import env_for, plain_rq_workers, redis_server, stop, wait_workers

from piblade import dispatch
from piblade.redisconn import connect
from piblade.registry import load_registry

MIB = 1024 * 1024


def memory(pid: int) -> dict[str, float]:
    """PSS, USS (private clean + private dirty) and RSS of one process, in MiB, from smaps_rollup."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name] = int(parts[0])
    peak = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1])
    return {
        "pss": fields["Pss"] / 1024,
        "uss": (fields["Private_Clean"] + fields["Private_Dirty"]) / 1024,
        "rss": fields["Rss"] / 1024,
        "peak_rss": peak / 1024,
        "pss_anon": fields.get("Pss_Anon", 0) / 1024,
        "pss_file": fields.get("Pss_File", 0) / 1024,
    }


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()]


def start_workers(target: Any, tmp: Path, processes: int, warm: str | None) -> subprocess.Popen[bytes]:
    """`python -m piblade worker`, as the local cluster and the worker unit start it."""
    argv = [sys.executable, "-m", "piblade", "worker", "--processes", str(processes),
            "--data-dir", str(tmp / "data")]
    if warm:
        argv += ["--warm", warm]
    return subprocess.Popen(argv, env=env_for(target, tmp), cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def settle(conn: Any, count: int) -> None:
    """Workers registered and idle: wait for them, then a moment for their threads to start."""
    wait_workers(conn, count, timeout=600)
    time.sleep(2.0)


def prepare_inputs(data: Path) -> None:
    """A data file for summary and a picture for image, on the "share" (the data directory)."""
    from PIL import Image

    (data / "bench").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    rng.standard_normal(2_000_000).astype("<f8").tofile(data / "bench" / "values.f8")
    pixels = rng.integers(0, 256, size=(768, 1024, 3), dtype=np.uint8)
    for i in range(16):
        Image.fromarray(pixels, "RGB").save(data / "bench" / f"picture-{i:02d}.png")


def work(conn: Any, registry: Any, processes: int) -> None:
    """Run tasks of every kernel job until each worker process has run at least one task of each."""
    from rq.job import Job

    from piblade import tasks

    n = 2 * processes
    jobs = {
        "mandelbrot": lambda: dispatch.submit(conn, registry, "mandelbrot",
                                              {"width": 800, "height": 600, "max_iter": 200, "tiles": n}),
        "montecarlo-pi": lambda: dispatch.submit(conn, registry, "montecarlo-pi",
                                                 {"samples": 2_000_000 * n, "tasks": n}),
        "summary": lambda: dispatch.submit(conn, registry, "summary",
                                           {"path": "bench/values.f8", "parts": n, "bins": 32, "lo": -4.0, "hi": 4.0}),
        "image": lambda: dispatch.submit_over(conn, registry, "image", {"op": "blur"},
                                              [f"bench/picture-{i:02d}.png" for i in range(n)],
                                              pattern="bench/picture-*.png"),
    }
    for name, submit in jobs.items():
        ran_on: set[str] = set()
        for _ in range(20):
            record = submit()
            status = dispatch.wait(conn, record.id, poll=0.05, timeout=600)
            if status.failed:
                raise RuntimeError(f"{name}: {status.failed} task(s) failed")
            done = Job.fetch_many(list(record.task_ids), connection=conn, serializer=tasks.SERIALIZER)
            ran_on |= {job.worker_name for job in done if job is not None and job.worker_name}
            if len(ran_on) >= processes:
                break
        else:
            raise RuntimeError(f"{name}: tasks ran on {len(ran_on)} of {processes} worker processes")


def measure_piblade(target: Any, tmp: Path, conn: Any, registry: Any, processes: int,
                    state: str) -> dict[str, Any]:
    warm = "noop" if state == "cold" else state.removeprefix("warm ") if state.startswith("warm ") else None
    pool = start_workers(target, tmp, processes, warm)
    try:
        settle(conn, processes)
        if state == "worked":
            work(conn, registry, processes)
            time.sleep(2.0)
        workers = children(pool.pid)
        if len(workers) != processes:
            raise RuntimeError(f"expected {processes} worker processes, found {len(workers)}")
        supervisor = memory(pool.pid)
        each = [memory(pid) for pid in workers]
    finally:
        stop([pool])
    total = supervisor["pss"] + sum(w["pss"] for w in each)
    return {
        "state": state,
        "processes": processes,
        "total_pss": total,
        "per_process_pss": total / processes,
        "supervisor": supervisor,
        "worker_pss": sum(w["pss"] for w in each) / processes,
        "worker_uss": sum(w["uss"] for w in each) / processes,
        "worker_rss": sum(w["rss"] for w in each) / processes,
    }


def measure_plain(target: Any, password: str, tmp: Path, conn: Any, processes: int) -> dict[str, Any]:
    workers = plain_rq_workers(target, password, tmp, processes)
    try:
        settle(conn, processes)
        each = [memory(p.pid) for p in workers]
    finally:
        stop(workers)
    total = sum(w["pss"] for w in each)
    return {
        "state": "plain rq worker",
        "processes": processes,
        "total_pss": total,
        "per_process_pss": total / processes,
        "worker_pss": total / processes,
        "worker_uss": sum(w["uss"] for w in each) / processes,
        "worker_rss": sum(w["rss"] for w in each) / processes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--processes", default="1,2,4", help="comma-separated process counts (default 1,2,4)")
    parser.add_argument("--warm-sets", action="store_true",
                        help="also measure one process warming each kernel job alone (--warm JOB)")
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON")
    args = parser.parse_args()
    counts = [int(c) for c in args.processes.split(",")]
    registry = load_registry()
    rows: list[dict[str, Any]] = []
    with redis_server() as (target, password, tmp):
        conn = connect(target)
        prepare_inputs(tmp / "data")
        # A first start fills the Numba cache (as a node's first start does); its
        # supervisor's peak while compiling everything is worth knowing too.
        first = start_workers(target, tmp, 1, None)
        try:
            settle(conn, 1)
            compile_peak = memory(first.pid)["peak_rss"]
        finally:
            stop([first])
        for n in counts:
            rows.append(measure_plain(target, password, tmp, conn, n))
            for state in ("cold", "warm", "worked"):
                rows.append(measure_piblade(target, tmp, conn, registry, n, state))
        if args.warm_sets:
            for spec in registry:
                if spec.warmup is not None:
                    rows.append(measure_piblade(target, tmp, conn, registry, 1, f"warm {spec.name}"))
    if args.json:
        print(json.dumps({"compile_peak_rss": compile_peak, "rows": rows}, indent=2))
        return
    print(f"supervisor peak RSS on a first start (compiling every kernel): {compile_peak:.0f} MiB")
    print(f"{'state':<20} {'N':>2} {'total PSS':>10} {'PSS/proc':>9} {'superv PSS':>10} "
          f"{'worker PSS':>10} {'USS':>6} {'RSS':>6} {'vs rq':>6}")
    for n in sorted({r["processes"] for r in rows}):
        plain = next(r for r in rows if r["processes"] == n and r["state"] == "plain rq worker")
        for r in (r for r in rows if r["processes"] == n):
            sup = f"{r['supervisor']['pss']:10.1f}" if "supervisor" in r else f"{'-':>10}"
            ratio = r["per_process_pss"] / plain["per_process_pss"]
            print(f"{r['state']:<20} {n:>2} {r['total_pss']:10.1f} {r['per_process_pss']:9.1f} {sup} "
                  f"{r['worker_pss']:10.1f} {r['worker_uss']:6.1f} {r['worker_rss']:6.1f} {ratio:5.2f}x")
    print("MiB; total PSS = supervisor + workers (piblade) or the N processes (plain rq);"
          " PSS/proc = total / N; 'vs rq' = PSS/proc over plain rq's")


if __name__ == "__main__":
    main()
