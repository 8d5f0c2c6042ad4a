"""Run reports built by hand, shaped like real runs: for the page's tests without any server.

``sample_report`` lays ``tasks`` attempts over ``nodes`` nodes of two workers
each, the way a FIFO queue hands them out (each worker takes the next task when
it is free), with a chosen number of failures and a retried attempt, and a
health sample every ``interval`` seconds per node. Deterministic for a seed.
"""

from __future__ import annotations

import io
import random

from piblade.history import RunSummary
from piblade.report.model import Attempt, HealthSeries, Histogram, JobResult, RunReport

T0 = 1_764_800_000.0
TRACEBACK = """Traceback (most recent call last):
  File "/opt/piblade/jobs/mandelbrot.py", line 142, in render_tile
    counts = kernels.escape_counts(x0, x1, y0, y1, max_iter)
ValueError: tile {index} <script>alert(1)</script> out of range"""


def png_image(width: int = 320, height: int = 200) -> bytes:
    from PIL import Image

    image = Image.new("RGB", (width, height))
    for x in range(width):
        for y in range(0, height, 4):
            image.putpixel((x, y), (x % 256, y % 256, (x * y) % 256))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=80)
    return out.getvalue()


def sample_report(
    tasks: int = 128, nodes: int = 3, failures: int = 2, *, seed: int = 7, interval: float = 1.0,
    temps: bool = True, image: bool = True, histogram: bool = False, rows: bool = False,
) -> RunReport:
    rng = random.Random(seed)
    names = [f"pi-{chr(ord('a') + i)}" for i in range(nodes)]
    workers = [(n, f"{n}.{1000 + 7 * i + w}") for i, n in enumerate(names) for w in range(2)]
    free_at = dict.fromkeys(workers, T0 + 0.05)
    attempts: list[Attempt] = []
    failed_ids = set(rng.sample(range(tasks), failures)) if failures else set()
    retried = next(iter(sorted(set(range(tasks)) - failed_ids)), None)
    run_id = "1204-5a3c9e01"
    for index in range(tasks):
        rounds = 2 if index == retried else 1
        for attempt in range(1, rounds + 1):
            worker = min(workers, key=lambda w: free_at[w])
            start = free_at[worker] + rng.uniform(0.001, 0.01)
            seconds = rng.lognormvariate(-1.2, 0.35) * (1.3 if worker[0] == names[-1] else 1.0)
            end = start + seconds
            free_at[worker] = end
            if index in failed_ids:
                state, error = "failed", TRACEBACK.format(index=index)
            elif attempt < rounds:
                state, error = "retried", "ConnectionError: the share went away"
            else:
                state, error = "finished", ""
            attempts.append(Attempt(task=f"{run_id}-{index:05d}", attempt=attempt, state=state, node=worker[0],
                                    worker=worker[1], started=start, ended=end, error=error))
    ended = max(a.ended for a in attempts)
    health = []
    for i, node in enumerate(names):
        times = [T0 - interval + k * interval for k in range(int((ended - T0) / interval) + 3)]
        health.append(HealthSeries(
            node=node, times=tuple(times),
            temp_c=tuple((52.0 + 6 * i + 12 * min(1.0, (t - T0) / 6) + rng.uniform(-0.5, 0.5)) if temps else None
                         for t in times),
            cpu_percent=tuple(min(100.0, 20 + 75 * (T0 <= t <= ended) + rng.uniform(0, 5)) for t in times),
            throttled=tuple((0x50005 if i == nodes - 1 and k % 3 == 1 else 0) if temps else None
                            for k, _ in enumerate(times)),
            max_temp=80.0 if temps else None,
        ))
    done = tasks - failures
    result = JobResult(
        value={"width": 3200, "height": 2000, "tiles": tasks, "mean_iter": 257.76, "image": "mandelbrot.png"},
        image=png_image() if image else None, image_name="mandelbrot.png" if image else "",
        image_size=(3200, 2000) if image else None,
        histogram=Histogram(tuple(float(e) for e in range(33)), tuple(int(900 * 2.718 ** (-((k - 14) / 5) ** 2))
                                                                      for k in range(32))) if histogram else None,
        rows=(("readings", 1_250_000), ("stations", 412)) if rows else (),
    )
    run = RunSummary(
        id=run_id, job="mandelbrot", params={"width": 3200, "height": 2000, "max_iter": 1000, "tiles": tasks},
        queue="default", tasks=tasks, has_reduce=False,
        submitted=T0, started=min(a.started for a in attempts if a.started), ended=ended, done=done,
        failed=failures, attempts=len(attempts), nodes=tuple(names), max_temp_c=None, piblade="0.1.0+3add8bb60c786e19",
        output=f"runs/{run_id}",
    )
    return RunReport(run=run, attempts=tuple(attempts), health=tuple(health), result=result,
                     notes=("a sample report, built by hand",), generated=ended + 2)
