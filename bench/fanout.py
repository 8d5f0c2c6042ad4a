"""The demo fan-out (Mandelbrot 3200×2000, 1,000 iterations, 128 tiles) against the one-process limit.

What the issue calls the limit is the same picture made by one process that uses
every core through the kernel's own ``prange`` loop: no queue, no tiles on disk,
no second process. Beside it, in one run and interleaved round by round:

* limit: one warm process (``NUMBA_NUM_THREADS`` = the machine's cores), the whole
  image through ``render_tile`` (the job's kernel), coloured and written as a PNG
  the way the job's reduce step writes it; the kernel alone is printed too;
* in the cluster: a throwaway local cluster (``piblade local up --workers 2``: Redis,
  PostgreSQL, the recorder, 2 warm worker processes) runs the job submitted from
  this process, ``dispatch.submit`` → ``dispatch.wait`` (the tiles, the reduce step
  and its PNG included);
* with the CLI: ``piblade submit mandelbrot … --wait`` as a whole process, which
  also starts Python, follows the run and writes the run's report;
* a plain process pool: ``multiprocessing`` with one process per core, each warm,
  one thread each, the 128 tiles sent to it and the counts sent back to be
  assembled and written in the parent (what a Dask ``LocalCluster`` of processes
  does, without a scheduler; Dask is not one of piblade's dependencies).

For the runs in the cluster it also prints where the time went: the tile phase from
RQ's own start and end times beside the tiles' own time over the cores, the reduce
step, and the CPU the cluster's other processes (Redis, PostgreSQL, the recorder)
took from the same cores during the run.

Medians over the rounds; ratios over the limit (image and PNG), and over the
faster of the limit and the pool. Targets: the cluster ≤ 1.05× the limit, the
CLI ≤ 1.15×.
Usage: python bench/fanout.py [--rounds 5] [--tiles 128]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _servers import local_cluster

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CORES = os.cpu_count() or 1
TARGETS = {"in the cluster": 1.05, "with the CLI": 1.15}

#: The limit's process: warm once, then one picture per line read, its times as JSON.
LIMIT = r"""
import json, sys, time
import numpy as np
from PIL import Image
from jobs.mandelbrot import render_tile, palette, warmup
w, h, it = (int(a) for a in sys.argv[1:4])
x_min, x_max, y_min, y_max = (float(a) for a in sys.argv[4:8])
threads, out = int(sys.argv[8]), sys.argv[9]
warmup()
print(json.dumps({"ready": True}), flush=True)
for _ in sys.stdin:
    t0 = time.perf_counter()
    counts = render_tile(0, 0, w, h, w, h, it, x_min, x_max, y_min, y_max, threads)
    t1 = time.perf_counter()
    Image.fromarray(palette(it)[counts]).save(out, format="PNG")
    t2 = time.perf_counter()
    print(json.dumps({"kernel": t1 - t0, "image": t2 - t0, "mean": float(counts.mean())}), flush=True)
"""


class Limit:
    """The one-process limit, kept warm between rounds like a worker."""

    def __init__(self, params: dict[str, Any], out: Path) -> None:
        env = dict(os.environ, NUMBA_NUM_THREADS=str(CORES), NUMBA_THREADING_LAYER="workqueue",
                   PYTHONPATH=str(ROOT))
        argv = [sys.executable, "-c", LIMIT] + [str(params[k]) for k in
                                                ("width", "height", "max_iter", "x_min", "x_max", "y_min", "y_max")]
        self.proc = subprocess.Popen(argv + [str(CORES), str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, cwd=ROOT)
        self._read()

    def _read(self) -> dict[str, float]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("the limit's process died")
        return json.loads(line)

    def once(self) -> dict[str, float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _pool_init() -> None:
    # One thread per process, set before the pool's process first imports Numba.
    os.environ.update(NUMBA_NUM_THREADS="1", NUMBA_THREADING_LAYER="workqueue")
    from jobs.mandelbrot import warmup

    warmup()


def _pool_tile(args: tuple[dict[str, Any], dict[str, Any]]) -> tuple[int, int, Any]:
    from jobs.mandelbrot import render_tile

    t, p = args
    counts = render_tile(t["x0"], t["y0"], t["x1"], t["y1"], p["width"], p["height"], p["max_iter"],
                         p["x_min"], p["x_max"], p["y_min"], p["y_max"])
    return t["x0"], t["y0"], counts.astype("uint16") if p["max_iter"] <= 65535 else counts


def pool_once(pool: Any, tiles: list[dict[str, Any]], params: dict[str, Any], out: Path) -> float:
    import numpy as np
    from PIL import Image

    from jobs.mandelbrot import palette

    started = time.perf_counter()
    counts = np.empty((params["height"], params["width"]), dtype=np.uint32)
    for x0, y0, tile in pool.imap_unordered(_pool_tile, [(t, params) for t in tiles]):
        counts[y0 : y0 + tile.shape[0], x0 : x0 + tile.shape[1]] = tile
    Image.fromarray(palette(params["max_iter"])[counts]).save(out, format="PNG")
    return time.perf_counter() - started


def run_phases(conn: Any, record: Any, wall_started: float) -> dict[str, float]:
    """A finished run's phases from RQ's records of its tasks and its reduce step."""
    from rq.job import Job
    from rq.serializers import JSONSerializer

    from piblade import runs

    jobs = Job.fetch_many(list(record.task_ids), connection=conn, serializer=JSONSerializer)
    tiles = [j for j in jobs if j is not None and j.started_at and j.ended_at]
    reduce = Job.fetch(runs.reduce_id(record.id), connection=conn, serializer=JSONSerializer)
    first = min(j.started_at.timestamp() for j in tiles)
    last = max(j.ended_at.timestamp() for j in tiles)
    busy = sum((j.ended_at - j.started_at).total_seconds() for j in tiles)
    assert reduce.started_at and reduce.ended_at
    return {
        "submit → first tile starts": first - wall_started,
        "tile phase (first start → last end)": last - first,
        f"  tiles' own time ÷ {CORES} cores": busy / CORES,
        "last tile ends → reduce starts": reduce.started_at.timestamp() - last,
        "reduce (load tiles, colour, PNG)": (reduce.ended_at - reduce.started_at).total_seconds(),
    }


def cluster_cpu(state: Path) -> dict[str, float]:
    """CPU seconds so far of the local cluster's processes, by what they are (workers, Redis, PostgreSQL, ...)."""
    import psutil

    totals: dict[str, float] = {}
    for proc in psutil.process_iter(["cmdline"]):
        if f"local run --root {state}" not in " ".join(proc.info["cmdline"] or []):
            continue
        for child in proc.children():
            try:
                argv = child.cmdline()
                kind = "redis-server" if "redis-server" in argv[0] else (
                    "postgres" if "postgres" in argv[0] else (argv[3] if len(argv) > 3 else argv[0]))
                subtree = [child, *child.children(recursive=True)]
                totals[kind] = totals.get(kind, 0.0) + sum(sum(p.cpu_times()[:2]) for p in subtree)
            except psutil.Error:
                continue
    return totals


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tiles", type=int, default=128)
    args = parser.parse_args()
    from piblade import dispatch
    from piblade.redisconn import connect
    from piblade.registry import load_registry

    registry = load_registry()
    raw = {"width": 3200, "height": 2000, "max_iter": 1000, "tiles": args.tiles}
    spec = registry.get("mandelbrot")
    params = dict(spec.validate(raw))
    tiles = spec.plan(params)
    cli = [str(BIN / "piblade"), "submit", "mandelbrot", "--json", "--wait"] + \
        [a for k, v in raw.items() for a in ("-p", f"{k}={v}")]
    with local_cluster("piblade-bench-fanout-") as (state, env, target):
        os.environ["PIBLADE_STATE_DIR"] = str(state)
        conn = connect(target)
        pool_out = state / "pool.png"
        pool = multiprocessing.get_context("forkserver").Pool(CORES, initializer=_pool_init)
        limit = Limit(params, state / "limit.png")
        try:
            phases: dict[str, list[float]] = {}

            def cluster_once(keep: bool = True) -> float:
                cpu_before = cluster_cpu(state)
                started, wall_started = time.perf_counter(), time.time()
                record = dispatch.submit(conn, registry, "mandelbrot", raw)
                status = dispatch.wait(conn, record.id, poll=0.05)
                elapsed = time.perf_counter() - started
                if not status.ok:
                    raise SystemExit(f"run {record.id} did not finish well: {status.to_dict()}")
                if keep:
                    time.sleep(0.3)  # the recorder's last rows
                    cpu = {f"CPU: {k}": v - cpu_before.get(k, 0.0) for k, v in cluster_cpu(state).items()}
                    for name, value in {**run_phases(conn, record, wall_started), **cpu}.items():
                        phases.setdefault(name, []).append(value)
                return elapsed

            def cli_once() -> float:
                started = time.perf_counter()
                done = subprocess.run(cli, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
                elapsed = time.perf_counter() - started
                if done.returncode:
                    raise SystemExit(f"piblade submit failed:\n{done.stdout}{done.stderr}")
                return elapsed

            kernel: list[float] = []
            times: dict[str, list[float]] = {"limit (one process, prange)": [], "in the cluster": [],
                                             "with the CLI": [], "process pool": []}
            # One warm-up of each: every worker's first tile, page cache, byte-code caches.
            limit.once(), cluster_once(keep=False), cli_once(), pool_once(pool, tiles, params, pool_out)
            for r in range(args.rounds):
                one = limit.once()
                kernel.append(one["kernel"])
                times["limit (one process, prange)"].append(one["image"])
                times["in the cluster"].append(cluster_once())
                times["with the CLI"].append(cli_once())
                times["process pool"].append(pool_once(pool, tiles, params, pool_out))
                print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()),
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
            base = statistics.median(times["limit (one process, prange)"])
            best = min(base, statistics.median(times["process pool"]))
            print(f"\n{params['width']}×{params['height']}, max_iter {params['max_iter']}, {len(tiles)} tiles, "
                  f"{CORES} cores; median of {args.rounds} rounds, interleaved\n")
            print(f"  {'kernel alone (limit process)':34} {statistics.median(kernel):7.3f} s")
            for name, values in times.items():
                med = statistics.median(values)
                goal = TARGETS.get(name)
                verdict = "" if goal is None else f"  target <= {goal:.2f}x: {'met' if med / base <= goal else 'NOT met'}"
                print(f"  {name:34} {med:7.3f} s  ({min(values):.3f}–{max(values):.3f})  {med / base:5.2f}x the limit, "
                      f"{med / best:5.2f}x the faster plain way{verdict}")
            print(f"\nwhere a run in the cluster goes (medians; RQ's own start and end times of each task; CPU seconds "
                  f"of the local cluster's processes during the run, {CORES} cores):")
            for name, values in phases.items():
                print(f"  {name:44} {statistics.median(values):7.3f} s")
        finally:
            limit.close()
            pool.terminate()
            pool.join()


if __name__ == "__main__":
    main()
