"""Jobs that exist only for the tests: they fail, sleep, or record where they ran.

Loaded into workers through PIBLADE_JOB_MODULES, the same way users add their own jobs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from piblade.registry import Param, TaskContext, job


def _split(params):
    return [{"i": i, "seconds": params["seconds"]} for i in range(params["count"])]


def _reduce(ctx: TaskContext, params, results):
    return {"tasks": len(results), "sum": sum(r["i"] for r in results)}


@job(
    "test-sleep",
    summary="sleep per task (tests)",
    params=[Param("count", int, 1, min=1, max=10000), Param("seconds", float, 0.0, min=0.0, max=600.0)],
    split=_split,
    reduce=_reduce,
)
def sleep_task(ctx: TaskContext, i: int, seconds: float) -> dict:
    # Sleep in small steps: Python code, so RQ's timeout can interrupt it.
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.05)
    return {"i": i, "pid": os.getpid(), "node": ctx.node}


@job(
    "test-fail",
    summary="raise an error (tests)",
    params=[Param("message", str, "boom")],
)
def fail_task(ctx: TaskContext, message: str) -> None:
    raise ValueError(f"test failure: {message}")


@job(
    "test-flaky",
    summary="fail on the first attempt, succeed on the next (tests)",
    params=[Param("marker", str)],
)
def flaky_task(ctx: TaskContext, marker: str) -> str:
    path = Path(marker)
    if not path.exists():
        path.write_text("attempted")
        raise RuntimeError("first attempt fails")
    return "second attempt ok"


@job(
    "test-stuck",
    summary="block SIGALRM and sleep: like a long nopython kernel (tests)",
    params=[Param("seconds", float, 60.0, min=0.0, max=600.0)],
)
def stuck_task(ctx: TaskContext, seconds: float) -> None:
    import signal as _signal

    _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGALRM})
    try:
        time.sleep(seconds)
    finally:
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, {_signal.SIGALRM})


def _mark_split(params):
    return [{"i": i, "seconds": params["seconds"], "marks": params["marks"]} for i in range(params["count"])]


@job(
    "test-mark",
    summary="leave a file per start of each task, then sleep (tests)",
    params=[Param("count", int, 1, min=1, max=10000), Param("seconds", float, 0.0, min=0.0, max=600.0),
            Param("marks", str)],
    split=_mark_split,
)
def mark_task(ctx: TaskContext, i: int, seconds: float, marks: str) -> dict:
    # One file per start, so a test can count how often each task's body began.
    (Path(marks) / f"{i}.{os.getpid()}.{time.monotonic_ns()}").touch()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.02)
    return {"i": i}
