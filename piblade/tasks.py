"""The RQ seam: everything that knows how RQ keeps jobs, queues and workers in Redis.

piblade's controller (submit, status, cancel, the dashboard, the local cluster)
reads and writes RQ's data through this module only; the worker process keeps
its own loop in :mod:`piblade.worker`, which subclasses RQ's worker and job.
An RQ upgrade is checked here: key layout (``rq:job:<id>`` hashes, queue lists),
status names, how results and failures are stored, the stop-job command.

What it offers, all with an explicit ``conn`` (no global client):

* :class:`TaskState` — RQ's job statuses as a typed value, plus ``missing``
  (the record expired or never existed);
* :func:`enqueue_tasks` / :func:`enqueue_reduce` — a run's tasks in the
  caller's pipeline, the reduce step on its own;
* :func:`states`, :func:`fetch_results`, :func:`failure`, :func:`task_info` —
  reads that never run RQ's cleanup as a side effect;
* :func:`take_off_queue`, :func:`cancel_tasks`, :func:`stop_tasks`,
  :func:`requeue_tasks` — what `jobs cancel|retry` do;
* :func:`workers`, :func:`workers_on`, :func:`queue_counts` — what status shows.

Payloads are JSON (RQ's default is pickle, which would let anyone who can write
to Redis run code on every worker).
"""

from __future__ import annotations

import enum
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.client import Pipeline
from rq import Queue, Retry
from rq.command import send_stop_job_command
from rq.exceptions import DeserializationError, InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.worker import BaseWorker

from piblade import held, redisconn, runs
from piblade.errors import NotFound
from piblade.runs import RunRecord

#: Results and failures are kept as long as the run record.
RESULT_TTL = runs.RUN_TTL
SERIALIZER = JSONSerializer


class TaskState(enum.StrEnum):
    """A task's state as RQ records it, plus ``missing`` for a record that is gone."""

    QUEUED = "queued"
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"
    CANCELED = "canceled"
    DEFERRED = "deferred"
    SCHEDULED = "scheduled"
    MISSING = "missing"

    @classmethod
    def parse(cls, raw: bytes | str | None) -> TaskState:
        if not raw:
            return cls.MISSING
        try:
            return cls(redisconn.text(raw))
        except ValueError:
            return cls.MISSING

    @property
    def over(self) -> bool:
        """Nothing more happens to the task without a retry."""
        return self in _OVER

    @property
    def unsuccessful(self) -> bool:
        """Over, and not a success: what a run counts as failed."""
        return self in _UNSUCCESSFUL


_OVER = frozenset({TaskState.FINISHED, TaskState.FAILED, TaskState.STOPPED, TaskState.CANCELED})
_UNSUCCESSFUL = frozenset({TaskState.FAILED, TaskState.STOPPED, TaskState.CANCELED, TaskState.MISSING})


def queue(conn: redis.Redis, name: str, job_class: type[Job] = Job) -> Queue:
    """An RQ queue speaking JSON. The worker passes its own job class; readers need none."""
    return Queue(name, connection=conn, job_class=job_class, serializer=SERIALIZER)


def task_meta(record: RunRecord, index: int, phase: str) -> dict[str, Any]:
    """What a task carries besides its kwargs: its run, place in the run, output dir, reduce."""
    meta: dict[str, Any] = {"run": record.id, "index": index, "total": record.total, "phase": phase}
    if record.output:
        meta["output"] = record.output
    if record.has_reduce:
        meta["reduce"] = True
    if record.piblade:
        meta["piblade"] = record.piblade  # so a worker running other code can say which
    return meta


#: Task ids pushed onto the queue list per RPUSH (a bound on one command's size).
PUSH_CHUNK = 1000


def enqueue_tasks(
    conn: redis.Redis, pipe: Pipeline, record: RunRecord, task_path: str, name: str,
    plan: Sequence[Mapping[str, Any]],
) -> None:
    """Every task of ``record`` into ``pipe`` (the caller's transaction, with the run record).

    RQ's ``enqueue_many`` builds a Job object per task and writes three commands
    for each (the status, the record, the push): for a 2,000-task fan-out that was
    most of `submit`'s time. Here RQ builds the first task's record (its own
    ``Job.create`` and ``to_dict``, so the fields and their encoding stay RQ's) and
    every task gets a copy with its own id, call data, description and meta: one
    HSET per task, and the ids pushed in a few RPUSHes. The records are those
    ``enqueue_many`` writes, less the per-task instant of ``created_at`` and
    ``enqueued_at`` (one instant for the run); an integration test compares the two
    field by field, so an RQ upgrade that changes the record is caught there.
    """
    from rq.utils import now

    retry = Retry(max=record.retries) if record.retries else None
    first = Job.create(
        task_path, kwargs=dict(plan[0]) if plan else {}, connection=conn, id=runs.task_id(record.id, 0),
        timeout=record.timeout, result_ttl=RESULT_TTL, failure_ttl=RESULT_TTL, retry=retry,
        description=f"{name} 1/{record.total}", meta=task_meta(record, 0, "task"), status=JobStatus.QUEUED,
        serializer=SERIALIZER,
    )
    # What Queue._prepare_for_queue sets before RQ saves a job it enqueues.
    first.origin = record.queue
    first.enqueued_at = now()
    template = first.to_dict()
    dumps = first.serializer.dumps
    ids: list[str] = []
    for index, task in enumerate(plan):
        job_id = runs.task_id(record.id, index)
        mapping = dict(template)
        mapping["data"] = zlib.compress(dumps((task_path, None, (), dict(task))))
        mapping["description"] = f"{name} {index + 1}/{record.total}"
        mapping["meta"] = dumps(task_meta(record, index, "task"))
        pipe.hset(Job.key_for(job_id), mapping=mapping)
        ids.append(job_id)
    queue_key = queue(conn, record.queue).key
    pipe.sadd(Queue.redis_queues_keys, queue_key)
    for start in range(0, len(ids), PUSH_CHUNK):
        pipe.rpush(queue_key, *ids[start : start + PUSH_CHUNK])


def enqueue_reduce(conn: redis.Redis, record: RunRecord, reduce_path: str, name: str) -> None:
    """The reduce step of ``record``: enqueued once, by the worker that finished the last task."""
    retry = Retry(max=record.retries) if record.retries else None
    queue(conn, record.queue).enqueue(
        reduce_path,
        job_id=runs.reduce_id(record.id),
        job_timeout=record.timeout,
        result_ttl=RESULT_TTL,
        failure_ttl=RESULT_TTL,
        retry=retry,
        description=f"{name} reduce",
        meta=task_meta(record, record.total, "reduce"),
    )


def states(conn: redis.Redis, ids: Sequence[str]) -> list[TaskState]:
    """The state of each task, in one round trip."""
    pipe = conn.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(Job.key_for(job_id), "status")
    return [TaskState.parse(s) for s in pipe.execute()]


@dataclass(frozen=True, slots=True)
class TaskResult:
    """What a finished (or failed) task left: its value, where it ran, when it ended."""

    id: str
    value: Any
    node: str | None
    ended_at: float | None


def fetch_results(conn: redis.Redis, ids: Sequence[str]) -> list[TaskResult | None]:
    """Return values and end times of ``ids`` (None where the record is gone)."""
    jobs = Job.fetch_many(list(ids), connection=conn, serializer=SERIALIZER) if ids else []
    results: list[TaskResult | None] = []
    for job in jobs:
        if job is None:
            results.append(None)
            continue
        value = job.return_value() if job.get_status(refresh=False) == JobStatus.FINISHED else None
        node = value.get("node") if isinstance(value, dict) else None
        results.append(TaskResult(job.id, value, node, job.ended_at.timestamp() if job.ended_at else None))
    return results


@dataclass(frozen=True, slots=True)
class TaskFailure:
    job_id: str
    summary: str
    traceback: str


def failure_text(conn: redis.Redis, job_id: str) -> str:
    """The latest exception text RQ recorded for a job, read without deserialising the job."""
    entries: list[Any] = conn.xrevrange(Result.get_key(job_id), count=1) or []
    if not entries:
        return ""
    result_id, payload = entries[0]
    return Result.restore(job_id, redisconn.text(result_id), dict(payload), connection=conn).exc_string or ""


def failure(conn: redis.Redis, job_id: str) -> TaskFailure:
    """A failed task's traceback and its last line, the one-line reason people read first."""
    text = failure_text(conn, job_id) or "no traceback recorded"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return TaskFailure(job_id=job_id, summary=lines[-1] if lines else text, traceback=text)


def task_info(conn: redis.Redis, job_id: str) -> dict[str, Any]:
    """Details of one task (an RQ job id); a job whose payload is not JSON is shown as refused."""
    try:
        return _task_info(conn, job_id)
    except DeserializationError:
        return _unreadable_task(conn, job_id)


def _task_info(conn: redis.Redis, job_id: str) -> dict[str, Any]:
    job = Job.fetch_many([job_id], connection=conn, serializer=SERIALIZER)[0]
    if job is None:
        raise NotFound(f"no run or task {job_id!r}", hint="`piblade jobs status` lists recent runs")
    state = TaskState.parse(job.get_status(refresh=False))
    info: dict[str, Any] = {
        "task": job.id,
        "run": (job.meta or {}).get("run"),
        "function": job.func_name,
        "state": str(state),
        "kwargs": job.kwargs,
        "enqueued_at": job.enqueued_at,
        "started_at": job.started_at,
        "ended_at": job.ended_at,
        "retries_left": job.retries_left,
        "worker": job.worker_name,
    }
    if state is TaskState.FINISHED:
        info["result"] = job.return_value()
    elif state in (TaskState.FAILED, TaskState.STOPPED):
        info["traceback"] = failure(conn, job.id).traceback
    return info


def _unreadable_task(conn: redis.Redis, job_id: str) -> dict[str, Any]:
    """A job whose payload is not JSON: never piblade's, and refused by every worker.

    Someone wrote it into Redis directly (pickle is RQ's default). Show what
    can be read without deserialising it; its traceback is RQ's record of the refusal.
    """
    fields = {redisconn.text(k): v for k, v in conn.hgetall(Job.key_for(job_id)).items()}
    state = TaskState.parse(fields.get("status"))
    info: dict[str, Any] = {
        "task": job_id,
        "run": None,
        "function": "(unreadable: its payload is not JSON, so no piblade worker runs it)",
        "state": str(state),
        "worker": redisconn.text(fields.get("worker_name") or b"") or None,
        "refused": True,
    }
    if state in (TaskState.FAILED, TaskState.STOPPED):
        info["traceback"] = failure_text(conn, job_id) or "no traceback recorded"
    return info


def take_off_queue(conn: redis.Redis, queue_name: str, ids: Sequence[str]) -> set[str]:
    """Remove ``ids`` from the queue list and from workers' held batches; return those removed.

    One transaction, atomic against a worker's dequeue and against the script
    that starts a held task (:mod:`piblade.held`), so a task is either taken
    here or by a worker, never both; a worker whose held task was taken gives
    the rest of its batch back to the queue.
    """
    key = queue(conn, queue_name).key
    lists = [key, *held.lists_of(conn, key)]
    pipe = conn.pipeline(transaction=True)
    for job_id in ids:
        for list_key in lists:
            pipe.lrem(list_key, 0, job_id)
    replies = pipe.execute()
    width = len(lists)
    return {j for n, j in enumerate(ids) if any(replies[n * width : (n + 1) * width])}


def cancel_tasks(conn: redis.Redis, ids: Sequence[str]) -> None:
    """Mark tasks canceled (RQ moves them to its canceled registry)."""
    for job_id in ids:
        Job.fetch(job_id, connection=conn, serializer=SERIALIZER).cancel()


def stop_tasks(conn: redis.Redis, ids: Sequence[str]) -> int:
    """Send RQ's stop-job command for each running task; return how many were told."""
    told = 0
    for job_id in ids:
        try:
            send_stop_job_command(conn, job_id, serializer=SERIALIZER)
            told += 1
        except (InvalidJobOperation, NoSuchJobError):
            pass  # it ended meanwhile
    return told


def requeue_tasks(conn: redis.Redis, queue_name: str, ids: Sequence[str], retries: int) -> None:
    """Put failed, stopped or canceled tasks back on their queue, with their retries restored."""
    q = queue(conn, queue_name)
    for job_id in ids:
        job = Job.fetch(job_id, connection=conn, serializer=SERIALIZER)
        if job.get_status() == JobStatus.FAILED:
            job.requeue()
        else:
            job.retries_left = retries
            q.enqueue_job(job)


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One RQ worker as status shows it."""

    name: str
    queues: tuple[str, ...]
    state: str
    job: str | None
    #: The piblade code it runs (``registry.code_version()``), as it wrote it into its RQ
    #: worker record; None for a worker that did not (not piblade's, or older).
    version: str | None = None


#: The field of RQ's worker hash where a piblade worker writes the code it runs.
WORKER_VERSION_FIELD = "piblade_version"


def publish_worker_version(conn: redis.Redis, worker_key: str, version: str) -> None:
    """Write the code a worker runs into its RQ worker hash (which expires with the worker)."""
    conn.hset(worker_key, WORKER_VERSION_FIELD, version)


def workers(conn: redis.Redis) -> list[WorkerInfo]:
    """Every worker RQ has registered (a dead one stays until its key's TTL runs out)."""
    found = list(BaseWorker.all(connection=conn))
    pipe = conn.pipeline(transaction=False)
    for w in found:
        pipe.hget(w.key, WORKER_VERSION_FIELD)
    versions = pipe.execute() if found else []
    return [
        WorkerInfo(w.name, tuple(w.queue_names()), str(w.get_state()), w.get_current_job_id(),
                   redisconn.text(v) if v else None)
        for w, v in zip(found, versions, strict=True)
    ]


def workers_on(conn: redis.Redis, queue_name: str) -> int:
    return BaseWorker.count(connection=conn, queue=queue(conn, queue_name))


@dataclass(frozen=True, slots=True)
class QueueCounts:
    name: str
    queued: int
    started: int
    failed: int


def queue_names(conn: redis.Redis) -> set[str]:
    return {q.name for q in Queue.all(connection=conn)}


def queue_counts(conn: redis.Redis, name: str) -> QueueCounts:
    """Depths of one queue; reading never runs RQ's cleanup (which re-queues as a side effect)."""
    q = queue(conn, name)
    return QueueCounts(
        name=name,
        queued=q.count,
        started=q.started_job_registry.get_job_count(cleanup=False),
        failed=q.failed_job_registry.get_job_count(cleanup=False),
    )
