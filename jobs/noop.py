"""``noop``: tasks that do nothing, to measure dispatch overhead.

``count`` tasks each return ``None`` immediately, so the time a run takes is
the cost of enqueueing, dispatching, running and recording jobs (queue round
trips, forking a work horse, result storage), not of any computation. Compare
worker classes or node counts with it. There is no reduce step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from piblade.registry import Param, TaskContext, job


def split(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``count`` tasks, each told only its index."""
    return [{"i": i} for i in range(params["count"])]


@job(
    "noop",
    summary="Do nothing COUNT times: measures dispatch overhead",
    params=(Param("count", int, 1, min=1, max=1_000_000, help="number of empty tasks"),),
    split=split,
    timeout=60,
)
def task(ctx: TaskContext, *, i: int) -> None:
    """Return immediately."""
