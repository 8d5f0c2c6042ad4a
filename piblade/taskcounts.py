"""How many tasks each node has finished and failed, per queue: counters for /metrics that never go down.

RQ keeps per-worker counts, but a worker's record goes with the worker (a
restart, a lost process), and its registries expire: neither can back a
Prometheus counter. So each worker adds one to a field of one Redis hash in the
same pipeline in which RQ records the task's end (``piblade.worker``), and the
dashboard reads the hash. The counts live as long as Redis's data (AOF), so
they are monotonic across dashboard restarts; a failed attempt that is retried
counts as failed, its retry as finished or failed again.
"""

from __future__ import annotations

import json
from typing import Any

import redis

#: Hash: field ``["<node>", "<queue>", "finished"|"failed"]`` (JSON) -> count.
COUNTS_KEY = "piblade:tasks:counts"
OUTCOMES = ("finished", "failed")


def count(pipeline: Any, node: str, queue: str, outcome: str) -> None:
    """Add one ``outcome`` for ``node`` and ``queue``, as part of the caller's pipeline."""
    assert outcome in OUTCOMES, outcome
    pipeline.hincrby(COUNTS_KEY, json.dumps([node, queue, outcome]), 1)


def read(conn: redis.Redis) -> dict[tuple[str, str, str], int]:
    """Every (node, queue, outcome) count; fields that are not ours are skipped."""
    out: dict[tuple[str, str, str], int] = {}
    for raw, value in conn.hgetall(COUNTS_KEY).items():
        try:
            node, queue, outcome = json.loads(raw)
        except (ValueError, TypeError):
            continue
        if outcome in OUTCOMES:
            out[(str(node), str(queue), str(outcome))] = int(value)
    return out
