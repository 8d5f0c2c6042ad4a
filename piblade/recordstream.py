"""The records on their way to the results database: one Redis stream, drained by the recorder.

``piblade:records`` holds a run's record (added in the pipeline that enqueues
the run) and one record per task attempt that ended (added in the pipeline in
which the worker records the end in RQ), as JSON in a ``run`` or ``task``
field. The recorder reads from the front, writes a batch to PostgreSQL, and
only after the commit trims what it wrote (``XTRIM MINID``): whatever is in
the stream is not in the database yet, or was written by a recorder that died
before trimming (the database skips it the second time).

Nothing is ever trimmed unwritten, so while PostgreSQL is down the stream
grows. Its bound (:data:`piblade.envvars.RECORDS_BOUND`) is checked by
``submit``: a run whose records would pass it is refused with a clear error.
Runs already accepted still record everything; the stream may exceed the
bound by their tasks, never drop them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from piblade import envvars
from piblade.errors import ClusterError
from piblade.history import TaskAttempt
from piblade.redisconn import text
from piblade.runs import RunRecord

STREAM_KEY = "piblade:records"
#: ≥ 24 h of records at the demo's pace (129 tasks in ≈ 12 s on two workers, ≈ 11 records/s,
#: ≈ 930,000 a day), at ≈ 200 bytes each in Redis (measured: docs/benchmarks.md).
DEFAULT_BOUND = 1_000_000


class RecordsBacklogFull(ClusterError):
    """Too many records wait for the results database: new runs are refused, none is dropped."""


def bound() -> int:
    raw = envvars.RECORDS_BOUND.get()
    if raw is None:
        return DEFAULT_BOUND
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ClusterError(
            f"{envvars.RECORDS_BOUND.name}={raw!r} is not a positive number of records",
            hint=f"unset it for the default ({DEFAULT_BOUND:,}) or give a whole number such as 1000000",
        )
    return value


def add_run(pipe: Any, run: RunRecord) -> None:
    """Queue a run's record on ``pipe`` (the pipeline that enqueues the run)."""
    pipe.xadd(STREAM_KEY, {"run": run.to_json()})


def add_attempt(pipe: Any, attempt: TaskAttempt) -> None:
    """Queue a task attempt's record on ``pipe`` (the pipeline that records the task's end)."""
    pipe.xadd(STREAM_KEY, {"task": attempt.to_json()})


def backlog(conn: redis.Redis) -> int:
    """Records not yet written to the results database (or written, not yet trimmed)."""
    return int(conn.xlen(STREAM_KEY))


def check_room(conn: redis.Redis, adding: int, limit: int | None = None) -> None:
    """Refuse a run whose records would take the stream past its bound."""
    limit = bound() if limit is None else limit
    waiting = backlog(conn)
    if waiting + adding > limit:
        raise RecordsBacklogFull(
            f"{waiting:,} run records are waiting for the results database (the bound is {limit:,}); "
            "new runs are refused until they are written, so that none is lost",
            hint="check that PostgreSQL and the recorder run (`piblade runs list` says whether the database "
            f"answers); raise {envvars.RECORDS_BOUND.name} if Redis has the memory",
        )


@dataclass(frozen=True, slots=True)
class Batch:
    """Records read from the front of the stream, up to the entry ``last_id``."""

    last_id: str
    runs: tuple[RunRecord, ...]
    attempts: tuple[TaskAttempt, ...]

    @property
    def size(self) -> int:
        return len(self.runs) + len(self.attempts)


def read_batch(conn: redis.Redis, count: int) -> Batch | None:
    """Up to ``count`` records from the front of the stream, or None when it is empty."""
    found = conn.xrange(STREAM_KEY, min="-", max="+", count=count)
    if not found:
        return None
    runs: list[RunRecord] = []
    attempts: list[TaskAttempt] = []
    last = ""
    for entry_id, fields in found:
        last = text(entry_id or b"")
        data = {text(k): v for k, v in (fields or {}).items()}
        if "run" in data:
            runs.append(RunRecord.from_json(data["run"]))
        elif "task" in data:
            attempts.append(TaskAttempt.from_json(data["task"]))
    return Batch(last, tuple(runs), tuple(attempts))


def wait_for_records(conn: redis.Redis, seconds: float) -> None:
    """Return as soon as the stream holds a record (at once if it already does), or after ``seconds``.

    One blocking read from the stream's start, so a record added between the
    caller's empty read and this call wakes it too. It reads, it does not take:
    the caller drains as usual. A run's history is in the database a moment
    after its last task ends, so `submit --wait` makes the report without
    waiting for a poll interval.
    """
    conn.xread({STREAM_KEY: "0-0"}, count=1, block=max(1, round(seconds * 1000)))


def trim_through(conn: redis.Redis, last_id: str) -> int:
    """Drop every entry up to and including ``last_id`` (written and committed). Returns how many."""
    ms, seq = last_id.split("-")
    return int(conn.xtrim(STREAM_KEY, minid=f"{ms}-{int(seq) + 1}"))
