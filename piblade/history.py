"""Run history as records: what a worker writes when a task ends, and what the database reports. Pure.

A task attempt's record is made by the worker that ran it and travels in the
pipeline that records the task's end in RQ (no extra round trip), through a
Redis stream (:mod:`piblade.recordstream`), to the recorder
(:mod:`piblade.recorder`), which adds the node's health during the attempt and
bulk-loads batches into PostgreSQL (:mod:`piblade.resultsdb`). The record's
``key`` is made once, by the worker: loading a record twice is a no-op.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any

from piblade.errors import BadParameter

#: The longest traceback summary kept (a few frames and the message).
SUMMARY_CHARS = 2000
#: States of one attempt: it finished; it failed (no retry left); it failed and RQ retries it;
#: it was stopped on request.
ATTEMPT_STATES = ("finished", "failed", "retried", "stopped")


def new_key() -> str:
    """The unique key of one attempt's record, made by the worker before it is sent."""
    return secrets.token_hex(10)


def traceback_summary(exc_string: str, chars: int = SUMMARY_CHARS) -> str:
    """The innermost frame and the exception line of a traceback: what someone reading history needs.

    RQ hands over the whole formatted traceback; history keeps where it failed
    (the last ``File ..., line N, in f`` line and its source line) and why (the
    last line), bounded to ``chars``.
    """
    lines = [line for line in exc_string.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    frame = max((i for i, line in enumerate(lines) if line.lstrip().startswith('File "')), default=-1)
    picked = lines[frame:frame + 2] if frame >= 0 else []
    if lines[-1] not in picked:
        picked.append(lines[-1])
    text = "\n".join(line.strip() for line in picked)
    return text if len(text) <= chars else text[: chars - 1] + "…"


@dataclass(frozen=True, slots=True)
class TaskAttempt:
    """One attempt of one task that ended: who ran it, when, how it ended, how hot its node was."""

    key: str
    run_id: str
    task_id: str
    phase: str  # "task" | "reduce"
    index: int
    state: str  # one of ATTEMPT_STATES
    node: str
    worker: str
    enqueued: float | None
    started: float | None
    ended: float
    error: str = ""
    #: Filled by the recorder from the node's health history: the highest temperature sampled
    #: in [started - interval, ended], and the throttle bits (OR) seen then.
    max_temp_c: float | None = None
    throttled: int | None = None

    @property
    def seconds(self) -> float | None:
        return None if self.started is None else max(0.0, self.ended - self.started)

    def to_json(self) -> str:
        data = asdict(self)
        for name in ("max_temp_c", "throttled"):
            if data[name] is None:
                del data[name]
        if not data["error"]:
            del data["error"]
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> TaskAttempt:
        data = json.loads(text)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def with_health(self, max_temp_c: float | None, throttled: int | None) -> TaskAttempt:
        return replace(self, max_temp_c=max_temp_c, throttled=throttled)


def health_during(
    attempt: TaskAttempt, samples: Iterable[tuple[float, float | None, int | None]], interval: float
) -> tuple[float | None, int | None]:
    """The highest temperature and the OR of throttle bits among ``(time, temp_c, throttled)`` samples
    taken in [started - interval, ended]: a sample up to one interval before the start still
    describes the node while the attempt ran."""
    start = (attempt.started if attempt.started is not None else attempt.ended) - interval
    temps: list[float] = []
    bits: int | None = None
    for when, temp, throttled in samples:
        if start <= when <= attempt.ended:
            if temp is not None:
                temps.append(temp)
            if throttled is not None:
                bits = (bits or 0) | throttled
    return (max(temps) if temps else None), bits


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One run as history reports it, however long ago Redis forgot it."""

    id: str
    job: str
    params: Mapping[str, Any]
    queue: str
    tasks: int
    has_reduce: bool
    submitted: float
    started: float | None
    ended: float | None
    done: int
    failed: int
    attempts: int
    nodes: tuple[str, ...]
    max_temp_c: float | None
    piblade: str = ""
    output: str = ""

    @property
    def expected(self) -> int:
        """Tasks the run must finish: its fan-out, plus the reduce step if it has one."""
        return self.tasks + (1 if self.has_reduce else 0)

    @property
    def state(self) -> str:
        return run_state(self.expected, self.tasks, self.done, self.failed, self.attempts)

    @property
    def seconds(self) -> float | None:
        """Submit to last task's end, once the run is over."""
        if self.ended is None or self.state not in ("finished", "failed"):
            return None
        return max(0.0, self.ended - self.submitted)

    def to_dict(self) -> dict[str, Any]:
        out = {f: getattr(self, f) for f in self.__dataclass_fields__}
        out["params"] = dict(self.params)
        out["nodes"] = list(self.nodes)
        out.update(state=self.state, seconds=self.seconds)
        return out


def run_state(expected: int, tasks: int, done: int, failed: int, attempts: int) -> str:
    """finished (every task and the reduce), failed (a task failed for good and nothing else is
    pending), running (some attempt ended), queued (none yet)."""
    if done >= expected:
        return "finished"
    if failed and done + failed >= tasks:
        return "failed"
    return "running" if attempts else "queued"


@dataclass(frozen=True, slots=True)
class AttemptRow:
    """One attempt as ``runs show`` lists it, numbered per task in the order attempts ended."""

    task_id: str
    attempt: int
    state: str
    node: str
    worker: str
    enqueued: float | None
    started: float | None
    ended: float
    seconds: float | None
    max_temp_c: float | None
    throttled: int | None
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


_SINCE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(value: str, now: float) -> float:
    """``--since``: an age (``90m``, ``12h``, ``7d``, ``2w``) or a date or time (``2026-12-01``,
    ``2026-12-01T08:00``, local time unless it names its zone). Returns epoch seconds."""
    text = value.strip().lower()
    match = _SINCE.fullmatch(text)
    if match:
        return now - float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise BadParameter(
            f"--since {value!r} is neither an age nor a date",
            hint="give an age such as 90m, 12h, 7d, 2w, or a date such as 2026-12-01 or 2026-12-01T08:00",
        ) from None
    return when.timestamp() if when.tzinfo else when.astimezone().timestamp()
