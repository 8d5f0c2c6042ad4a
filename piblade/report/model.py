"""What a run report shows, as values: the page and the notebook are both drawn from a :class:`RunReport`. Pure.

A report is made once, after the run, from three places: the run history in
PostgreSQL (the run and every task attempt), the nodes' health during the run,
and the job's own output (its result value, the image it wrote). Collecting
is :mod:`piblade.report.collect`'s business; this module only says what a
report *is*, so the HTML page, the notebook and the tests agree on it, and a
report can be built by hand in a test without any server.

Times are epoch seconds here; the charts show seconds since the run was submitted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from piblade.healthmodel import decode_throttled
from piblade.history import RunSummary

#: Attempt states as history records them (piblade.history.ATTEMPT_STATES), and how the page colours them.
STATE_COLOURS = {
    "finished": "#2f9e6b",
    "retried": "#e0a030",
    "failed": "#d64545",
    "stopped": "#8a8f98",
}
#: At most this many tracebacks are shown in full: a run where every task failed the same way
#: needs a few of them, not 2,048.
FAILURES_SHOWN = 20


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of one task: a bar on the timeline."""

    task: str
    attempt: int
    state: str
    node: str
    worker: str
    started: float | None
    ended: float
    max_temp_c: float | None = None
    throttled: int | None = None
    error: str = ""
    #: "task" (one of the fan-out) or "reduce" (the step that combines them).
    phase: str = "task"

    @property
    def seconds(self) -> float | None:
        return None if self.started is None else max(0.0, self.ended - self.started)

    @property
    def lane(self) -> str:
        """The timeline's row: one per worker process; its name starts with its node's (``pi-a.1234``)."""
        if not self.worker or self.worker == self.node:
            return self.node
        return self.worker if self.worker.startswith(self.node + ".") else f"{self.node} · {self.worker}"


@dataclass(frozen=True, slots=True)
class HealthSeries:
    """One node's samples during the run (and one interval either side), oldest first."""

    node: str
    times: tuple[float, ...]
    temp_c: tuple[float | None, ...]
    cpu_percent: tuple[float | None, ...]
    throttled: tuple[int | None, ...]
    max_temp: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "times": list(self.times), "temp_c": list(self.temp_c),
                "cpu_percent": list(self.cpu_percent), "throttled": list(self.throttled),
                "max_temp": self.max_temp}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HealthSeries:
        return cls(node=str(data["node"]), times=tuple(data["times"]), temp_c=tuple(data["temp_c"]),
                   cpu_percent=tuple(data["cpu_percent"]), throttled=tuple(data["throttled"]),
                   max_temp=data.get("max_temp"))

    @classmethod
    def from_samples(cls, node: str, samples: Sequence[Mapping[str, Any]]) -> HealthSeries:
        """From agent samples as healthstore keeps them (``HealthSample.to_dict()``)."""
        ordered = sorted((s for s in samples if s.get("time") is not None), key=lambda s: float(s["time"]))
        max_temps = [float(v) for s in ordered if (v := s.get("max_temp")) is not None]
        return cls(
            node=node,
            times=tuple(round(float(s["time"]), 3) for s in ordered),
            temp_c=tuple(_num(s.get("temp_c")) for s in ordered),
            cpu_percent=tuple(_num(s.get("cpu_percent")) for s in ordered),
            throttled=tuple(None if s.get("throttled") is None else int(s["throttled"]) for s in ordered),
            max_temp=max_temps[-1] if max_temps else None,
        )

    def flag_labels(self) -> tuple[str, ...]:
        """Every throttle flag that was on *now* in some sample of the run, for people."""
        seen: list[str] = []
        for bits in self.throttled:
            if not bits:
                continue
            for label in decode_throttled(bits & 0xF).labels():
                if label not in seen:
                    seen.append(label)
        return tuple(seen)


def _num(value: Any) -> float | None:
    return None if value is None else round(float(value), 2)


@dataclass(frozen=True, slots=True)
class Histogram:
    """Counts between edges (``len(edges) == len(counts) + 1``)."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class JobResult:
    """What the job itself produced: its result value, and what of it is worth a picture.

    ``image`` is a preview (a JPEG, at most :data:`piblade.report.collect.PREVIEW_PX` wide) of an
    image the job wrote, not the image: a 3200x2000 PNG would be most of the page.
    """

    value: Any = None
    image: bytes | None = None
    image_name: str = ""
    image_size: tuple[int, int] | None = None
    histogram: Histogram | None = None
    rows: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class RunReport:
    """Everything the report page shows about one run."""

    run: RunSummary  # the same record `piblade runs show` prints
    attempts: tuple[Attempt, ...]
    health: tuple[HealthSeries, ...] = ()
    result: JobResult = field(default_factory=JobResult)
    #: Things the reader should know that the charts cannot say ("health history has expired").
    notes: tuple[str, ...] = ()
    generated: float = 0.0

    @property
    def failures(self) -> tuple[Attempt, ...]:
        """Attempts that did not finish, newest first (a retried attempt counts: it failed too)."""
        bad = [a for a in self.attempts if a.state != "finished"]
        return tuple(sorted(bad, key=lambda a: a.ended, reverse=True))

    @property
    def lanes(self) -> tuple[str, ...]:
        """Timeline rows: every worker that ran an attempt, by node then worker."""
        return tuple(sorted({a.lane for a in self.attempts}))

    def durations(self) -> list[float]:
        """Seconds each finished task took (the reduce is one step of another kind, left out)."""
        return [s for a in self.attempts
                if a.state == "finished" and a.phase == "task" and (s := a.seconds) is not None]

    @property
    def tasks_done(self) -> int:
        """Tasks of the fan-out with a finished attempt (history's ``done`` also counts the reduce)."""
        return len({a.task for a in self.attempts if a.state == "finished" and a.phase == "task"})


def duration_histogram(seconds: Sequence[float], max_bins: int = 40) -> Histogram:
    """Bins for a duration histogram: Freedman-Diaconis width, at most ``max_bins``, at least 1.

    Computed here (not by the chart) because the smallest plotly.js bundle has no
    histogram trace, and the notebook should show the same bins as the page.
    """
    if not seconds:
        return Histogram((), ())
    ordered = sorted(seconds)
    lo, hi = ordered[0], ordered[-1]
    if hi - lo < 1e-9:
        pad = max(abs(lo) * 0.05, 0.001)
        return Histogram((lo - pad, hi + pad), (len(ordered),))
    q1, q3 = _quantile(ordered, 0.25), _quantile(ordered, 0.75)
    width = 2 * (q3 - q1) / len(ordered) ** (1 / 3)
    bins = max_bins if width <= 0 else min(max_bins, max(1, math.ceil((hi - lo) / width)))
    step = (hi - lo) / bins
    edges = tuple(lo + i * step for i in range(bins)) + (hi,)
    counts = [0] * bins
    for value in ordered:
        counts[min(bins - 1, int((value - lo) / step))] += 1
    return Histogram(edges, tuple(counts))


def _quantile(ordered: Sequence[float], q: float) -> float:
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def percentile(seconds: Sequence[float], q: float) -> float | None:
    return _quantile(sorted(seconds), q) if seconds else None
