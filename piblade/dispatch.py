"""Submit runs, watch them, cancel and retry them. The controller side of RQ.

Parameters are validated and the whole fan-out is planned before anything
touches Redis; then the run record and every task go out in one pipeline, so a
run is either fully enqueued or not at all.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
from rq import Queue, Retry
from rq.exceptions import DeserializationError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.worker import BaseWorker

from piblade import redisconn, runs
from piblade.errors import BadParameter, NotFound, PibladeError
from piblade.registry import Registry, shown
from piblade.runs import RunRecord
from piblade.worker import RESULT_TTL, BladeJob

TERMINAL = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED}


def _queue(conn: redis.Redis, name: str) -> Queue:
    return Queue(name, connection=conn, job_class=BladeJob, serializer=JSONSerializer)


#: A queue name: what RQ keys and people can both handle.
QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_queue(name: str) -> str:
    """Refuse, before anything is enqueued, an empty or odd queue name."""
    if not QUEUE_NAME.fullmatch(name or ""):
        raise BadParameter(
            f"--queue {shown(name) if name else repr(name)} is not a valid queue name",
            hint="a queue name is 1-64 characters: letters, digits, '.', '_', '-', starting with a letter or digit",
        )
    return name


def submit(
    conn: redis.Redis,
    registry: Registry,
    job_name: str,
    raw_params: Mapping[str, Any],
    *,
    queue: str = "default",
    timeout: int | None = None,
    retries: int = 0,
) -> RunRecord:
    """Validate, plan and enqueue a run. Raises before enqueuing anything on bad input."""
    check_queue(queue)
    spec = registry.get(job_name)
    params = spec.validate(raw_params)
    plan = spec.plan(params)
    if timeout is not None and timeout <= 0:
        raise PibladeError(f"--timeout must be positive, not {timeout}")
    if retries < 0:
        raise PibladeError(f"--retries must be 0 or more, not {retries}")
    record = _new_record(spec, params, len(plan), queue, timeout, retries)
    _enqueue_run(conn, spec.task_path, spec.name, record, plan)
    return record


def _enqueue_run(conn: redis.Redis, task_path: str, name: str, record: RunRecord, plan: list[dict[str, Any]]) -> None:
    """The run record and every task in one transaction: a run is fully enqueued or not at all."""
    retry = Retry(max=record.retries) if record.retries else None
    datas = [
        Queue.prepare_data(
            task_path,
            kwargs=task,
            job_id=runs.task_id(record.id, index),
            timeout=record.timeout,
            result_ttl=RESULT_TTL,
            failure_ttl=RESULT_TTL,
            retry=retry,
            description=f"{name} {index + 1}/{record.total}",
            meta=_meta(record, index, "task"),
        )
        for index, task in enumerate(plan)
    ]
    with conn.pipeline(transaction=True) as pipe:
        runs.save_run(pipe, record)
        _queue(conn, record.queue).enqueue_many(datas, pipeline=pipe)
        pipe.execute()


def plan_over(registry: Registry, job_name: str, raw_params: Mapping[str, Any], paths: list[str]) -> list[dict[str, Any]]:
    """One task per file: the job's validated parameters with ``path`` set to that file. Pure, no I/O.

    Refuses, before anything is enqueued, a job without a ``path`` parameter,
    a ``path`` given as a parameter too, an empty file list, and a job whose
    split would turn one file into several tasks.
    """
    check_over(registry, job_name, raw_params)
    spec = registry.get(job_name)
    if not paths:
        raise BadParameter(f"{spec.name}: --over matched no files", hint="`piblade nas ls DIR` shows what is there")
    plan: list[dict[str, Any]] = []
    for path in paths:
        tasks = spec.plan(spec.validate({**raw_params, "path": path}))
        if len(tasks) != 1:
            raise BadParameter(
                f"{spec.name} splits each file into {len(tasks)} tasks; --over runs one task per file",
                hint="set the job's fan-out parameter to 1 (for summary: --param parts=1)",
            )
        plan.append(tasks[0])
    return plan


def check_over(registry: Registry, job_name: str, raw_params: Mapping[str, Any]) -> None:
    """The checks of :func:`plan_over` that need no file list: run before touching the NAS."""
    spec = registry.get(job_name)
    if not any(p.name == "path" for p in spec.params):
        over = sorted(s.name for s in registry if any(p.name == "path" for p in s.params))
        raise BadParameter(
            f"{spec.name} has no `path` parameter, so it cannot run --over files",
            hint="jobs that can: " + (", ".join(over) or "none registered"),
        )
    if "path" in raw_params:
        raise BadParameter(
            f"{spec.name}: give the files either with --over or with --param path=..., not both",
            hint="--over sets path to each matching file",
        )
    for name, value in raw_params.items():
        spec.param(name).parse(spec.name, value)


def submit_over(
    conn: redis.Redis,
    registry: Registry,
    job_name: str,
    raw_params: Mapping[str, Any],
    paths: list[str],
    *,
    pattern: str,
    queue: str = "default",
    timeout: int | None = None,
    retries: int = 0,
) -> RunRecord:
    """Fan a job out over files on the share: one task per path (share paths), one run record.

    The worker resolves each ``path`` under its data root (its mount of the
    share). The record's params are the common parameters plus ``over``
    (the pattern); the reduce, if the job has one, runs after every file.
    """
    check_queue(queue)
    spec = registry.get(job_name)
    plan = plan_over(registry, job_name, raw_params, paths)
    if timeout is not None and timeout <= 0:
        raise PibladeError(f"--timeout must be positive, not {timeout}")
    if retries < 0:
        raise PibladeError(f"--retries must be 0 or more, not {retries}")
    common = {k: v for k, v in spec.validate({**raw_params, "path": paths[0]}).items() if k != "path"}
    record = _new_record(spec, {**common, "over": pattern}, len(plan), queue, timeout, retries)
    _enqueue_run(conn, spec.task_path, spec.name, record, plan)
    return record


def _new_record(
    spec: Any, params: dict[str, Any], total: int, queue: str, timeout: int | None, retries: int
) -> RunRecord:
    """The record of a new run: its output directory (if the job writes one), timeout and retries."""
    run_id = runs.new_run_id()
    return RunRecord(
        id=run_id,
        job=spec.name,
        params=params,
        total=total,
        queue=queue,
        created=time.time(),
        output=f"runs/{run_id}" if spec.writes_output else "",
        has_reduce=spec.reduce is not None,
        timeout=timeout or spec.timeout,
        retries=retries,
    )


def _meta(record: RunRecord, index: int, phase: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"run": record.id, "index": index, "total": record.total, "phase": phase}
    if record.output:
        meta["output"] = record.output
    if record.has_reduce:
        meta["reduce"] = True
    return meta


def enqueue_reduce(conn: redis.Redis, run_id: str) -> None:
    """Enqueue a run's reduce step; called by the worker that finished the last task."""
    from piblade.registry import REGISTRY

    record = runs.load_run(conn, run_id)
    spec = REGISTRY.get(record.job)
    assert spec.reduce_path is not None
    retry = Retry(max=record.retries) if record.retries else None
    _queue(conn, record.queue).enqueue(
        spec.reduce_path,
        job_id=runs.reduce_id(run_id),
        job_timeout=record.timeout,
        result_ttl=RESULT_TTL,
        failure_ttl=RESULT_TTL,
        retry=retry,
        description=f"{spec.name} reduce",
        meta=_meta(record, record.total, "reduce"),
    )


def workers_on(conn: redis.Redis, queue: str) -> int:
    return BaseWorker.count(connection=conn, queue=_queue(conn, queue))


@dataclass(frozen=True, slots=True)
class TaskFailure:
    job_id: str
    summary: str
    traceback: str


@dataclass(frozen=True, slots=True)
class RunStatus:
    """A snapshot of a run: task counts by state, failures, and the result when there is one."""

    run: RunRecord
    counts: dict[str, int]
    reduce_state: str | None
    failures: tuple[TaskFailure, ...] = ()
    result: Any = None
    nodes: dict[str, int] = field(default_factory=dict)
    seconds: float | None = None

    @property
    def done(self) -> int:
        return self.counts.get("finished", 0)

    @property
    def failed(self) -> int:
        return sum(self.counts.get(s, 0) for s in ("failed", "stopped", "canceled", "missing"))

    @property
    def finished(self) -> bool:
        """True when nothing more will happen without a retry."""
        tasks_over = self.done + self.failed == self.run.total
        if not tasks_over:
            return False
        if self.run.has_reduce and self.failed == 0:
            return self.reduce_state in {"finished", "failed", "stopped", "canceled", "missing"}
        return True

    @property
    def state(self) -> str:
        if self.finished:
            if self.failed or self.reduce_state in {"failed", "stopped", "canceled", "missing"}:
                return "failed"
            return "finished"
        if self.counts.get("started") or self.done or self.failed:
            return "running"
        return "queued"

    @property
    def ok(self) -> bool:
        return self.state == "finished"

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run.id,
            "job": self.run.job,
            "params": self.run.params,
            "queue": self.run.queue,
            "state": self.state,
            "total": self.run.total,
            "counts": self.counts,
            "reduce": self.reduce_state,
            "output": self.run.output or None,
            "created": self.run.created,
            "seconds": self.seconds,
            "nodes": self.nodes,
            "result": self.result,
            "failures": [{"job": f.job_id, "error": f.summary, "traceback": f.traceback} for f in self.failures],
        }


def _statuses(conn: redis.Redis, ids: list[str]) -> list[str]:
    pipe = conn.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(Job.key_for(job_id), "status")
    return [s.decode() if s else "missing" for s in pipe.execute()]


def _failure(conn: redis.Redis, job_id: str) -> TaskFailure:
    job = BladeJob.fetch(job_id, connection=conn, serializer=JSONSerializer)
    result = job.latest_result()
    text = (result.exc_string if result and result.exc_string else "") or "no traceback recorded"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return TaskFailure(job_id=job_id, summary=lines[-1] if lines else text, traceback=text)


def run_status(conn: redis.Redis, run_id: str, *, details: bool = True) -> RunStatus:
    record = runs.load_run(conn, run_id)
    states = _statuses(conn, record.all_job_ids)
    return _build_status(conn, record, dict(zip(record.all_job_ids, states, strict=True)), details)


def _build_status(conn: redis.Redis, record: RunRecord, states: dict[str, str], details: bool) -> RunStatus:
    task_states = [states[i] for i in record.task_ids]
    reduce_state = states.get(runs.reduce_id(record.id)) if record.has_reduce else None
    if reduce_state == "missing":
        # Not enqueued yet (tasks still running) is not a failure.
        reduce_state = None
    counts = dict(Counter(task_states))
    failures: list[TaskFailure] = []
    result = None
    nodes: dict[str, int] = {}
    seconds = None
    if details:
        failed_ids = [jid for jid, s in states.items() if s in ("failed", "stopped")]
        failures = [_failure(conn, jid) for jid in failed_ids[:20]]
        finished = [jid for jid in record.task_ids if states[jid] == "finished"]
        finished_set = set(finished)
        ended = finished + [jid for jid in failed_ids if jid in states]
        jobs = BladeJob.fetch_many(ended, connection=conn, serializer=JSONSerializer) if ended else []
        last_end = None
        for job in jobs:
            if job is None:
                continue
            if job.id in finished_set:
                value = job.return_value()
                if isinstance(value, dict) and "node" in value:
                    nodes[value["node"]] = nodes.get(value["node"], 0) + 1
            if job.ended_at and (last_end is None or job.ended_at > last_end):
                last_end = job.ended_at
        final_id = runs.reduce_id(record.id) if record.has_reduce else (record.task_ids[0] if record.total == 1 else None)
        if final_id and states.get(final_id) == "finished":
            final = BladeJob.fetch(final_id, connection=conn, serializer=JSONSerializer)
            value = final.return_value()
            result = value.get("value") if isinstance(value, dict) else value
            last_end = final.ended_at or last_end
        if last_end is not None:
            seconds = max(0.0, last_end.timestamp() - record.created)
    return RunStatus(record, counts, reduce_state, tuple(failures), result, nodes, seconds)


ProgressFn = Callable[[RunStatus], None]


def wait(
    conn: redis.Redis,
    run_id: str,
    *,
    on_progress: ProgressFn | None = None,
    poll: float = 0.2,
    timeout: float | None = None,
) -> RunStatus:
    """Poll until the run is over, asking Redis only about the front of the pending list.

    Tasks are taken in FIFO order, so asking about all 2,000 pending tasks of a
    fan-out on every poll would mostly ask about tasks nobody started; that load
    lands on the same Redis the workers need. Each poll checks pending tasks in
    windows and stops at the first window that still has unfinished ones.
    The final answer is exact: the run is over only when nothing is pending.
    """
    record = runs.load_run(conn, run_id)
    states = dict.fromkeys(record.all_job_ids, "queued")
    pending = list(record.all_job_ids)
    deadline = None if timeout is None else time.monotonic() + timeout
    window = 256
    reduce_job = runs.reduce_id(record.id)
    while True:
        still: list[str] = []
        position = 0
        while position < len(pending):
            chunk = pending[position : position + window]
            position += window
            open_in_chunk = 0
            for job_id, state in zip(chunk, _statuses(conn, chunk), strict=True):
                states[job_id] = state
                # A task whose record is gone is over; the reduce is "missing" until it is enqueued.
                if state not in _OVER and (state != "missing" or job_id == reduce_job):
                    still.append(job_id)
                    open_in_chunk += 1
            if open_in_chunk:
                still.extend(pending[position:])
                break
        pending = still
        snapshot = _build_status(conn, record, states, details=False)
        if on_progress:
            on_progress(snapshot)
        if snapshot.finished or (deadline is not None and time.monotonic() > deadline):
            return _build_status(conn, record, states, details=True)
        time.sleep(poll)


_OVER = {"finished", "failed", "stopped", "canceled"}


def task_status(conn: redis.Redis, job_id: str) -> dict[str, Any]:
    """Details of one task (an RQ job id)."""
    try:
        return _task_info(conn, job_id)
    except DeserializationError:
        return _unreadable_task(conn, job_id)


def _task_info(conn: redis.Redis, job_id: str) -> dict[str, Any]:
    job = BladeJob.fetch_many([job_id], connection=conn, serializer=JSONSerializer)[0]
    if job is None:
        raise NotFound(f"no run or task {job_id!r}", hint="`piblade jobs status` lists recent runs")
    status = job.get_status()
    info: dict[str, Any] = {
        "task": job.id,
        "run": (job.meta or {}).get("run"),
        "function": job.func_name,
        "state": str(status.value if hasattr(status, "value") else status),
        "kwargs": job.kwargs,
        "enqueued_at": job.enqueued_at,
        "started_at": job.started_at,
        "ended_at": job.ended_at,
        "retries_left": job.retries_left,
        "worker": job.worker_name,
    }
    if info["state"] == "finished":
        info["result"] = job.return_value()
    elif info["state"] in ("failed", "stopped"):
        info["traceback"] = _failure(conn, job.id).traceback
    return info


def _unreadable_task(conn: redis.Redis, job_id: str) -> dict[str, Any]:
    """A job whose payload is not JSON: never piblade's, and refused by every worker.

    Someone wrote it into Redis directly (pickle is RQ's default). Show what
    can be read without deserialising it; its traceback is RQ's record of the refusal.
    """
    fields = {redisconn.text(k): v for k, v in conn.hgetall(Job.key_for(job_id)).items()}
    state = redisconn.text(fields.get("status") or b"") or "unknown"
    info: dict[str, Any] = {
        "task": job_id,
        "run": None,
        "function": "(unreadable: its payload is not JSON, so no piblade worker runs it)",
        "state": state,
        "worker": redisconn.text(fields.get("worker_name") or b"") or None,
        "refused": True,
    }
    if state in ("failed", "stopped"):
        info["traceback"] = _failure_text(conn, job_id) or "no traceback recorded"
    return info


def _failure_text(conn: redis.Redis, job_id: str) -> str:
    """The latest exception text RQ recorded for a job, read without deserialising the job."""
    from rq.results import Result

    entries: list[Any] = conn.xrevrange(Result.get_key(job_id), count=1) or []
    if not entries:
        return ""
    result_id, payload = entries[0]
    return Result.restore(job_id, redisconn.text(result_id), dict(payload), connection=conn).exc_string or ""


def cancel(conn: redis.Redis, run_id: str, *, running: bool = False) -> dict[str, int]:
    """Cancel every task that has not started; with ``running``, stop the started ones too.

    A started task is stopped with RQ's own stop-job command: its worker
    interrupts it at its next return to Python (between kernel chunks) and
    records it as stopped (``piblade.worker``). Without ``running`` it finishes.

    Workers keep dequeuing while this runs. A queued task is taken off the
    queue list first (LREM, atomic against a worker's dequeue) and canceled only
    if it was still there, so the counts returned are what really happened.
    """
    record = runs.load_run(conn, run_id)
    # First: a canceled task never finishes, so the reduce must not start, not
    # even from a last task that finishes while this runs.
    conn.set(runs.REDUCE_LOCK_KEY.format(run_id), 1, ex=runs.RUN_TTL)
    ids = record.all_job_ids
    states = _statuses(conn, ids)
    queue_key = _queue(conn, record.queue).key
    queued = [j for j, s in zip(ids, states, strict=True) if s == "queued"]
    pipe = conn.pipeline(transaction=False)
    for job_id in queued:
        pipe.lrem(queue_key, 0, job_id)
    taken = {j for j, removed in zip(queued, pipe.execute(), strict=True) if removed}
    waiting = taken | {j for j, s in zip(ids, states, strict=True) if s in ("deferred", "scheduled")}
    for job_id in waiting:
        BladeJob.fetch(job_id, connection=conn, serializer=JSONSerializer).cancel()
    # In a worker's hands: started, or dequeued and about to start ("queued" but no
    # longer on the queue list), which includes those dequeued after the snapshot.
    rest = [j for j in ids if j not in waiting]
    rest_states = _statuses(conn, rest)
    in_hand = sum(s in ("started", "queued") for s in rest_states)
    stopping = 0
    if running:
        from rq.command import send_stop_job_command
        from rq.exceptions import InvalidJobOperation, NoSuchJobError

        for job_id, state in zip(rest, rest_states, strict=True):
            if state != "started":
                continue
            try:
                send_stop_job_command(conn, job_id, serializer=JSONSerializer)
                stopping += 1
            except (InvalidJobOperation, NoSuchJobError):
                pass  # it ended meanwhile
    return {"canceled": len(waiting), "running": in_hand - stopping, "stopping": stopping}


def retry(conn: redis.Redis, run_id: str) -> int:
    """Re-queue the failed, stopped or canceled tasks of a run (and its reduce step)."""
    record = runs.load_run(conn, run_id)
    ids = record.all_job_ids
    again = [j for j, s in zip(ids, _statuses(conn, ids), strict=True) if s in ("failed", "stopped", "canceled")]
    if not again:
        return 0
    runs.reset_reduce_lock(conn, run_id)
    reduce_job = runs.reduce_id(run_id)
    for job_id in again:
        job = BladeJob.fetch(job_id, connection=conn, serializer=JSONSerializer)
        if job.get_status() == JobStatus.FAILED:
            job.requeue()
        else:
            job.retries_left = record.retries
            _queue(conn, record.queue).enqueue_job(job)
    if reduce_job in again:
        # The tasks are all done already; the reduce is what failed.
        conn.set(runs.REDUCE_LOCK_KEY.format(run_id), 1, ex=runs.RUN_TTL)
    return len(again)
