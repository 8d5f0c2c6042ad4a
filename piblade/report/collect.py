"""Gather one run's report: history from PostgreSQL, health and result from Redis, the image from the share.

The run and its task attempts come from the results database (so a report can
be made, or made again, long after Redis forgot the run). Two things the
report shows are not in the run history: the nodes' health samples during the
run and the job's result value. Both live in Redis for a while (health for
24 hours, results for a week); the first report of a run copies what it shows
of them into the results database (``report_extras``), so later reports and
the notebook read them from there once Redis has let them go.

This module orchestrates; the outside systems are reached through their seams
(:mod:`piblade.resultsdb`, :mod:`piblade.healthstore`, :mod:`piblade.tasks`
via :mod:`piblade.dispatch`, :mod:`piblade.nas`).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from piblade.errors import NotFound, PibladeError
from piblade.report.model import Attempt, HealthSeries, Histogram, JobResult, RunReport

if TYPE_CHECKING:
    import psycopg
    import redis

    from piblade.history import AttemptRow, RunSummary
    from piblade.nas.share import Share

#: Widest preview of a job's image in the page (a 3200x2000 PNG would be most of the page).
PREVIEW_PX = 800
#: The report page of a run, relative to the share (beside the run's output).
REPORT_NAME = "report.html"
#: Health samples more than this many seconds before the submit or after the end are left out.
HEALTH_MARGIN = 10.0
#: How long to wait for a run the history does not know at all (its record comes before any task's).
UNKNOWN_RUN_WAIT = 5.0
#: A job's image larger than this is not read for the preview.
IMAGE_MAX_BYTES = 64 * 2**20


def report_path(run_id: str) -> str:
    """Where a run's report goes on the share: ``runs/<id>/report.html``."""
    return f"runs/{run_id}/{REPORT_NAME}"


@dataclass(frozen=True, slots=True)
class Extras:
    """What a report shows beyond the run history, as saved in the results database."""

    health: tuple[HealthSeries, ...]
    result: Any

    def to_json(self) -> dict[str, Any]:
        return {"health": [h.to_dict() for h in self.health], "result": self.result}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Extras:
        return cls(tuple(HealthSeries.from_dict(h) for h in data.get("health") or ()), data.get("result"))


def attempts(rows: Sequence[AttemptRow]) -> tuple[Attempt, ...]:
    return tuple(
        Attempt(task=r.task_id, attempt=r.attempt, state=r.state, node=r.node, worker=r.worker, started=r.started,
                ended=r.ended, max_temp_c=r.max_temp_c, throttled=r.throttled, error=r.error,
                phase="reduce" if r.task_id.endswith("-reduce") else "task")
        for r in rows
    )


def read_history(
    db: psycopg.Connection[Any], run_id: str, *, wait: float = 0.0, sleep: Callable[[float], None] = time.sleep
) -> tuple[RunSummary, list[AttemptRow]]:
    """The run and its attempts from the results database; with ``wait``, until the recorder has them all.

    Task records reach PostgreSQL through the recorder, a moment after the
    tasks end: ``submit --wait`` waits (a bounded time) for the history to show
    the run as over before it makes the report.
    """
    from piblade import resultsdb

    started = time.monotonic()
    pause = 0.02  # the recorder writes a run's last records a moment after they appear: look again soon
    while True:
        found = resultsdb.show_run(db, run_id)
        waited = time.monotonic() - started
        if found is not None and (found[0].state in ("finished", "failed") or waited >= wait):
            return found
        # A run the history has not even heard of after a few seconds is not coming (no recorder).
        if found is None and waited >= min(wait, UNKNOWN_RUN_WAIT):
            raise NotFound(f"no run {run_id!r} in the run history",
                           hint="`piblade runs list` shows the runs the results database has")
        sleep(pause)
        pause = min(pause * 2, 0.25)


def health_from_redis(
    conn: redis.Redis, start: float, end: float
) -> tuple[HealthSeries, ...]:
    """Every node's samples in [start - margin, end + margin], from the agents' history in Redis."""
    from piblade import healthstore

    series = []
    for node in sorted(healthstore.nodes(conn)):
        samples = healthstore.window(conn, node, start - HEALTH_MARGIN, end + HEALTH_MARGIN)
        if samples:
            series.append(HealthSeries.from_samples(node, samples))
    return tuple(series)


def preview(image: bytes, width: int = PREVIEW_PX) -> tuple[bytes, tuple[int, int]]:
    """A JPEG of ``image`` at most ``width`` pixels wide, and the original's size."""
    from PIL import Image

    with Image.open(io.BytesIO(image)) as original:
        size = original.size
        picture = original.convert("RGB")
    if picture.width > width:
        picture = picture.resize((width, max(1, round(picture.height * width / picture.width))),
                                 Image.Resampling.LANCZOS)
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=82, optimize=True, progressive=True)
    return out.getvalue(), size


def image_name(value: Any) -> str:
    """The image a job's result names (mandelbrot: ``{"image": "mandelbrot.png"}``), or ""."""
    if isinstance(value, Mapping):
        name = value.get("image")
        if isinstance(name, str) and name.lower().endswith((".png", ".jpg", ".jpeg")) and "/" not in name \
                and not name.startswith("."):
            return name
    return ""


def histogram_of(value: Any) -> Histogram | None:
    """The summary job's ``histogram`` (edges and counts), when the result has one."""
    hist = value.get("histogram") if isinstance(value, Mapping) else None
    if not isinstance(hist, Mapping):
        return None
    edges, counts = hist.get("edges"), hist.get("counts")
    if not isinstance(edges, list) or not isinstance(counts, list) or len(edges) != len(counts) + 1:
        return None
    return Histogram(tuple(float(e) for e in edges), tuple(int(c) for c in counts))


def rows_of(value: Any) -> tuple[tuple[str, int], ...]:
    """Rows loaded per table, from a result's ``tables`` (``{name: rows}``) or ``rows`` (a number or that map)."""
    if not isinstance(value, Mapping):
        return ()
    for key in ("tables", "rows"):
        found = value.get(key)
        if isinstance(found, Mapping):
            return tuple((str(k), int(v)) for k, v in found.items() if isinstance(v, int | float))
    rows = value.get("rows")
    if isinstance(rows, int | float) and not isinstance(rows, bool):
        return ((str(value.get("table") or "rows"), int(rows)),)
    return ()


def job_result(value: Any, image: bytes | None, name: str) -> JobResult:
    picture, size = preview(image) if image else (None, None)
    return JobResult(value=value, image=picture, image_name=name if picture else "", image_size=size,
                     histogram=histogram_of(value), rows=rows_of(value))


def read_image(share: Share, output: str, name: str) -> bytes | None:
    """The job's image from the run's output directory on the share, or None if it is not there."""
    from piblade.nas.paths import join

    path = join(output, name)
    entry = share.stat(path)
    if entry is None or entry.size > IMAGE_MAX_BYTES:
        return None
    sink = io.BytesIO()
    share.read_file(path, sink, lambda _n: None, entry.size)
    return sink.getvalue()


def build(
    summary: RunSummary, rows: Sequence[AttemptRow], extras: Extras, image: bytes | None, notes: Sequence[str] = ()
) -> RunReport:
    name = image_name(extras.result)
    return RunReport(run=summary, attempts=attempts(rows), health=extras.health,
                     result=job_result(extras.result, image, name), notes=tuple(notes), generated=time.time())


def gather_extras(
    db: psycopg.Connection[Any], redis_conn: redis.Redis | None, summary: RunSummary
) -> tuple[Extras, list[str]]:
    """Health and result: from Redis while it has them (and then saved), else as saved before."""
    from piblade import dispatch, resultsdb

    notes: list[str] = []
    saved_raw = resultsdb.load_report_extras(db, summary.id)
    saved = Extras.from_json(saved_raw) if saved_raw is not None else None
    fresh: Extras | None = None
    if redis_conn is not None:
        end = summary.ended if summary.ended is not None else time.time()
        health = health_from_redis(redis_conn, summary.submitted, end)
        try:
            result = dispatch.run_result(redis_conn, summary.id)
        except NotFound:
            result = None
        if health or result is not None:
            fresh = Extras(health or (saved.health if saved else ()),
                           result if result is not None else (saved.result if saved else None))
    if fresh is not None:
        if fresh != saved:
            resultsdb.save_report_extras(db, summary.id, fresh.to_json())
        extras = fresh
    elif saved is not None:
        extras = saved
    else:
        extras = Extras((), None)
        notes.append("the nodes' health and the job's result were no longer in Redis when this report was "
                      "first made (health is kept 24 hours, results a week)")
    if not extras.health and not notes:
        notes.append("no health samples were recorded during this run")
    return extras, notes


def load_report(
    db: psycopg.Connection[Any], redis_conn: redis.Redis | None, share: Share | None, run_id: str,
    *, wait: float = 0.0,
) -> RunReport:
    """The report of ``run_id``: history from ``db``, health and result from ``redis_conn`` (or as saved),
    the job's image from ``share``. ``redis_conn`` and ``share`` may be None (unreachable)."""
    summary, rows = read_history(db, run_id, wait=wait)
    extras, notes = gather_extras(db, redis_conn, summary)
    image = None
    name = image_name(extras.result)
    if name and summary.output and share is not None:
        try:
            image = read_image(share, summary.output, name)
        except PibladeError as exc:
            notes.append(f"the image {name} could not be read from the share ({exc.message})")
    if share is None and name:
        notes.append(f"the share could not be reached, so {name} is not shown")
    return build(summary, rows, extras, image, notes)
