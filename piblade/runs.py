"""Run records: one submission of a job, its fan-out of tasks and its reduce step.

A *run* is what the user submitted (``piblade submit mandelbrot``); its *tasks*
are the RQ jobs it fanned out to. Task ids derive from the run id
(``<run>-00042``, ``<run>-reduce``), so a run record stays a few hundred bytes
however many tasks it has — Redis on a Pi has little memory to spare.

Keys (all under ``piblade:``), module constants in the style of RQ:
``piblade:run:<id>`` hash, ``piblade:run:<id>:done`` set of finished task
indexes (drives the reduce), ``piblade:run:<id>:nodes`` hash of tasks finished
per node and ``piblade:run:<id>:ends`` sorted set of the latest task end per
node, ``piblade:runs`` sorted set of run ids by time.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis
from redis.typing import EncodableT

from piblade.errors import NotFound
from piblade.redisconn import text

RUN_KEY = "piblade:run:{}"
DONE_KEY = "piblade:run:{}:done"
REDUCE_LOCK_KEY = "piblade:run:{}:reduce-enqueued"
RUNS_INDEX = "piblade:runs"
#: Published (no payload that matters) when a worker may have ended a run: its last
#: task, or its reduce step. Only a hint to whoever waits: they check the run's state.
OVER_CHANNEL = "piblade:run:{}:over"
#: Field of the run's hash counting task ends recorded by workers (a hint, see above).
ENDED_FIELD = "ended"
#: Hash: node -> how many of the run's tasks it finished (kept beside the run's hash, not in it:
#: a task that ends after the run's record expired must not bring back a record without its fields).
NODES_KEY = "piblade:run:{}:nodes"
#: Sorted set: member a node, score the latest end of any of the run's tasks there.
ENDS_KEY = "piblade:run:{}:ends"
#: How long run records (and task results) are kept.
RUN_TTL = 7 * 24 * 3600
#: How many runs the index remembers.
RUNS_KEPT = 1000


def new_run_id() -> str:
    """Short, unique, safe as part of an RQ job id."""
    return time.strftime("%m%d") + "-" + secrets.token_hex(4)


def task_id(run_id: str, index: int) -> str:
    return f"{run_id}-{index:05d}"


def reduce_id(run_id: str) -> str:
    return f"{run_id}-reduce"


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: str
    job: str
    params: dict[str, Any]
    total: int
    queue: str
    created: float
    output: str
    has_reduce: bool
    timeout: int
    retries: int
    #: The piblade code that submitted the run (``registry.code_version()``); "" for runs
    #: submitted before piblade recorded it. A worker that runs other code names both
    #: versions when it refuses a task whose job changed.
    piblade: str = ""

    @property
    def task_ids(self) -> list[str]:
        return [task_id(self.id, i) for i in range(self.total)]

    @property
    def all_job_ids(self) -> list[str]:
        ids = self.task_ids
        if self.has_reduce:
            ids.append(reduce_id(self.id))
        return ids

    def to_hash(self) -> dict[str, str]:
        return {
            "job": self.job,
            "params": json.dumps(self.params, sort_keys=True),
            "total": str(self.total),
            "queue": self.queue,
            "created": repr(self.created),
            "output": self.output,
            "reduce": "1" if self.has_reduce else "0",
            "timeout": str(self.timeout),
            "retries": str(self.retries),
            "piblade": self.piblade,
        }

    def to_json(self) -> str:
        """The record as one JSON text (the history stream's run record)."""
        return json.dumps({"id": self.id, **self.to_hash()}, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> RunRecord:
        data = json.loads(raw)
        return cls.from_hash(data.pop("id"), data)

    @classmethod
    def from_hash(cls, run_id: str, raw: Mapping[bytes | str, bytes | str]) -> RunRecord:
        data = {text(k): text(v) for k, v in raw.items()}
        return cls(
            id=run_id,
            job=data["job"],
            params=json.loads(data["params"]),
            total=int(data["total"]),
            queue=data["queue"],
            created=float(data["created"]),
            output=data.get("output", ""),
            has_reduce=data.get("reduce") == "1",
            timeout=int(data.get("timeout", "0")),
            retries=int(data.get("retries", "0")),
            piblade=data.get("piblade", ""),
        )


def save_run(pipe: redis.client.Pipeline, run: RunRecord) -> None:
    """Queue the writes of a run record on ``pipe`` (the caller executes it with the tasks)."""
    key = RUN_KEY.format(run.id)
    mapping: dict[EncodableT, EncodableT] = dict(run.to_hash().items())
    pipe.hset(key, mapping=mapping)
    pipe.expire(key, RUN_TTL)
    pipe.zadd(RUNS_INDEX, {run.id: run.created})
    pipe.zremrangebyrank(RUNS_INDEX, 0, -RUNS_KEPT - 1)


def is_record(raw: Mapping[bytes | str, bytes | str]) -> bool:
    """A run hash holds a run's record: not empty, and not only the end count a late task's worker
    added after the record itself expired (HINCRBY would have made the hash anew)."""
    return any(text(k) == "job" for k in raw)


def load_run(conn: redis.Redis, run_id: str) -> RunRecord:
    raw = conn.hgetall(RUN_KEY.format(run_id))
    if not is_record(raw):
        raise NotFound(f"no run {run_id!r}", hint="`piblade jobs status` lists recent runs")
    return RunRecord.from_hash(run_id, raw)


def recent_runs(conn: redis.Redis, limit: int = 20) -> list[RunRecord]:
    ids = [text(i) for i in conn.zrevrange(RUNS_INDEX, 0, limit - 1) if isinstance(i, bytes | str)]
    pipe = conn.pipeline(transaction=False)
    for run_id in ids:
        pipe.hgetall(RUN_KEY.format(run_id))
    return [RunRecord.from_hash(i, raw) for i, raw in zip(ids, pipe.execute(), strict=True) if is_record(raw)]


def mark_task_done(conn: redis.Redis, run_id: str, index: int, total: int) -> bool:
    """Record a finished task; True exactly once, for whoever completes the set.

    At-least-once delivery means a task can finish twice; a set of indexes
    (not a counter) and a NX lock make the reduce step start exactly once.
    """
    done_key = DONE_KEY.format(run_id)
    pipe = conn.pipeline(transaction=True)
    pipe.sadd(done_key, index)
    pipe.expire(done_key, RUN_TTL)
    pipe.scard(done_key)
    _, _, finished = pipe.execute()
    if finished < total:
        return False
    return bool(conn.set(REDUCE_LOCK_KEY.format(run_id), 1, nx=True, ex=RUN_TTL))


def mark_task_done_commands(pipe: Any, run_id: str, index: int) -> None:
    """:func:`mark_task_done`'s writes, in the caller's pipeline; the third reply is the count finished."""
    done_key = DONE_KEY.format(run_id)
    pipe.sadd(done_key, index)
    pipe.expire(done_key, RUN_TTL)
    pipe.scard(done_key)


def count_ended_commands(pipe: Any, run_id: str) -> None:
    """Count a task's end on the run's hash, in the caller's pipeline (the reply is the count so far).

    Delivery is at least once, so the count may run ahead of the truth: it only
    decides when to publish :data:`OVER_CHANNEL`, and waiters check the run itself.
    """
    pipe.hincrby(RUN_KEY.format(run_id), ENDED_FIELD, 1)


def count_end_commands(pipe: Any, run_id: str, node: str, ended: float, *, finished: bool) -> None:
    """Keep a run's per-node task count and its latest end as tasks end, in the caller's pipeline.

    What a finished run reports (which nodes ran how many tasks, when the last one
    ended) then costs two reads, not a fetch of every task's record and result: for a
    2,000-task fan-out that was 2,000 round trips after the run had ended. Every
    attempt's end moves the latest end (``ZADD GT``); only a finished task counts
    for its node, as its result did. Delivery is at least once, so a task
    that finished twice (its lease ran out mid-run) counts twice.
    """
    if finished:
        nodes = NODES_KEY.format(run_id)
        pipe.hincrby(nodes, node, 1)
        pipe.expire(nodes, RUN_TTL)
    ends = ENDS_KEY.format(run_id)
    pipe.zadd(ends, {node: ended}, gt=True)
    pipe.expire(ends, RUN_TTL)


def end_stats(conn: redis.Redis, run_id: str) -> tuple[dict[str, int], float] | None:
    """Tasks finished per node and the latest end of a run, or None when no end was counted."""
    pipe = conn.pipeline(transaction=False)
    pipe.hgetall(NODES_KEY.format(run_id))
    pipe.zrevrange(ENDS_KEY.format(run_id), 0, 0, withscores=True)
    counts, latest = pipe.execute()
    if not latest:
        return None
    return {text(k): int(v) for k, v in counts.items()}, float(latest[0][1])


def reduce_due(conn: redis.Redis, run_id: str, finished: int, total: int) -> bool:
    """True exactly once, for whoever completed the set (``finished`` from :func:`mark_task_done_commands`)."""
    if finished < total:
        return False
    return bool(conn.set(REDUCE_LOCK_KEY.format(run_id), 1, nx=True, ex=RUN_TTL))


def reset_reduce_lock(conn: redis.Redis, run_id: str) -> None:
    """Allow the reduce step to be enqueued again (after a retry of failed tasks)."""
    conn.delete(REDUCE_LOCK_KEY.format(run_id))
