"""Submit runs, watch them, cancel and retry them: the controller's side of a run.

Parameters are validated and the whole fan-out is planned before anything
touches Redis; then the run record and every task go out in one pipeline, so a
run is either fully enqueued or not at all. What RQ keeps where is
:mod:`piblade.tasks`'s business; this module works with run records and task states.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from piblade import recordstream, runs, tasks
from piblade.errors import BadParameter, PibladeError
from piblade.registry import Registry, code_version, shown
from piblade.runs import RunRecord
from piblade.tasks import TaskFailure, TaskState

__all__ = ["RunStatus", "TaskFailure", "cancel", "check_over", "check_queue", "enqueue_reduce", "plan_over",
           "retry", "run_result", "run_status", "submit", "submit_over", "task_status", "wait", "workers_on"]


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
    """The run record and every task in one transaction: a run is fully enqueued or not at all.

    Refused first when the records waiting for the results database would pass
    their bound (the run's own record, its tasks and its reduce step count).
    """
    recordstream.check_room(conn, record.total + 2)
    with conn.pipeline(transaction=True) as pipe:
        runs.save_run(pipe, record)
        recordstream.add_run(pipe, record)
        tasks.enqueue_tasks(conn, pipe, record, task_path, name, plan)
        pipe.execute()


def plan_over(
    registry: Registry, job_name: str, raw_params: Mapping[str, Any], paths: list[str],
    sizes: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """One task per file: the job's validated parameters with ``path`` set to that file. Pure, no I/O.

    A job with a ``split_file`` gets its say on each file whose size is known
    (``sizes``, from the listing of the share): a large file may become several
    tasks. Refuses, before anything is enqueued, a job without a ``path``
    parameter, a ``path`` given as a parameter too, an empty file list, and a
    job whose split would turn one file into several tasks.
    """
    check_over(registry, job_name, raw_params)
    spec = registry.get(job_name)
    if not paths:
        raise BadParameter(f"{spec.name}: --over matched no files", hint="`piblade nas ls DIR` shows what is there")
    plan: list[dict[str, Any]] = []
    for path in paths:
        params = spec.validate({**raw_params, "path": path})
        if spec.split_file is not None and sizes is not None and path in sizes:
            plan.extend(dict(t) for t in spec.split_file(params, sizes[path]))
            continue
        tasks = spec.plan(params)
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
    sizes: Mapping[str, int] | None = None,
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
    plan = plan_over(registry, job_name, raw_params, paths, sizes)
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
        piblade=code_version(),
    )


def enqueue_reduce(conn: redis.Redis, run_id: str) -> None:
    """Enqueue a run's reduce step; called by the worker that finished the last task."""
    from piblade.registry import REGISTRY

    record = runs.load_run(conn, run_id)
    spec = REGISTRY.get(record.job)
    assert spec.reduce_path is not None
    tasks.enqueue_reduce(conn, record, spec.reduce_path, spec.name)


def workers_on(conn: redis.Redis, queue: str) -> int:
    return tasks.workers_on(conn, queue)


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
        return self.counts.get(TaskState.FINISHED, 0)

    @property
    def failed(self) -> int:
        return sum(n for s, n in self.counts.items() if TaskState(s).unsuccessful)

    @property
    def _reduce(self) -> TaskState | None:
        return TaskState(self.reduce_state) if self.reduce_state else None

    @property
    def finished(self) -> bool:
        """True when nothing more will happen without a retry."""
        tasks_over = self.done + self.failed == self.run.total
        if not tasks_over:
            return False
        if self.run.has_reduce and self.failed == 0:
            return self._reduce is not None and (self._reduce.over or self._reduce is TaskState.MISSING)
        return True

    @property
    def state(self) -> str:
        if self.finished:
            if self.failed or (self._reduce is not None and self._reduce.unsuccessful):
                return "failed"
            return "finished"
        if self.counts.get(TaskState.STARTED) or self.done or self.failed:
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
            "done": self.done,
            "failed": self.failed,
            "reduce": self.reduce_state,
            "output": self.run.output or None,
            "created": self.run.created,
            "seconds": self.seconds,
            "nodes": self.nodes,
            "result": self.result,
            "failures": [{"job": f.job_id, "error": f.summary, "traceback": f.traceback} for f in self.failures],
        }


def _statuses(conn: redis.Redis, ids: list[str]) -> list[TaskState]:
    return tasks.states(conn, ids)


def run_status(conn: redis.Redis, run_id: str, *, details: bool = True) -> RunStatus:
    record = runs.load_run(conn, run_id)
    states = _statuses(conn, record.all_job_ids)
    return _build_status(conn, record, dict(zip(record.all_job_ids, states, strict=True)), details)


def _build_status(conn: redis.Redis, record: RunRecord, states: dict[str, TaskState], details: bool) -> RunStatus:
    task_states = [states[i] for i in record.task_ids]
    reduce_state = states.get(runs.reduce_id(record.id)) if record.has_reduce else None
    if reduce_state is TaskState.MISSING:
        # Not enqueued yet (tasks still running) is not a failure.
        reduce_state = None
    counts = {str(s): n for s, n in Counter(task_states).items()}
    failures: list[TaskFailure] = []
    result = None
    nodes: dict[str, int] = {}
    seconds = None
    if details:
        failed_ids = [jid for jid, s in states.items() if s in (TaskState.FAILED, TaskState.STOPPED)]
        failures = [tasks.failure(conn, jid) for jid in failed_ids[:20]]
        stats = runs.end_stats(conn, record.id)
        last_end: float | None = None
        if stats is not None:
            nodes, last_end = stats
        else:  # a run whose tasks ended before workers counted ends on the run (or none ended yet)
            finished = [jid for jid in record.task_ids if states[jid] is TaskState.FINISHED]
            for done in tasks.fetch_results(conn, finished + failed_ids):
                if done is None:
                    continue
                if done.node is not None:
                    nodes[done.node] = nodes.get(done.node, 0) + 1
                if done.ended_at and (last_end is None or done.ended_at > last_end):
                    last_end = done.ended_at
        final_id = runs.reduce_id(record.id) if record.has_reduce else (record.task_ids[0] if record.total == 1 else None)
        if final_id and states.get(final_id) is TaskState.FINISHED:
            (final,) = tasks.fetch_results(conn, [final_id])
            if final is not None:
                value = final.value
                result = value.get("value") if isinstance(value, dict) else value
                last_end = final.ended_at or last_end
        if last_end is not None:
            seconds = max(0.0, last_end - record.created)
    return RunStatus(record, counts, str(reduce_state) if reduce_state else None, tuple(failures), result, nodes,
                     seconds)


def run_result(conn: redis.Redis, run_id: str) -> Any:
    """The run's result value (its reduce's, or its only task's), or None while there is none.

    Raises :class:`~piblade.errors.NotFound` once Redis no longer has the run.
    """
    record = runs.load_run(conn, run_id)
    final_id = runs.reduce_id(record.id) if record.has_reduce else (record.task_ids[0] if record.total == 1 else None)
    if final_id is None:
        return None
    (final,) = tasks.fetch_results(conn, [final_id])
    if final is None or final.value is None:
        return None
    return final.value.get("value") if isinstance(final.value, dict) else final.value


ProgressFn = Callable[[RunStatus], None]


def wait(
    conn: redis.Redis,
    run_id: str,
    *,
    on_progress: ProgressFn | None = None,
    poll: float = 0.2,
    timeout: float | None = None,
) -> RunStatus:
    """Wait until the run is over, asking Redis only about the front of the pending list.

    The worker that ends the run (its last task, or its reduce step) publishes on
    the run's channel, so the wait ends at once instead of at the next poll; the
    poll interval remains for progress and for ends nobody announces (failures).

    Tasks are taken in FIFO order, so asking about all 2,000 pending tasks of a
    fan-out on every poll would mostly ask about tasks nobody started; that load
    lands on the same Redis the workers need. Each poll checks pending tasks in
    windows and stops at the first window that still has unfinished ones.
    The final answer is exact: the run is over only when nothing is pending.
    """
    record = runs.load_run(conn, run_id)
    states = dict.fromkeys(record.all_job_ids, TaskState.QUEUED)
    pending = list(record.all_job_ids)
    deadline = None if timeout is None else time.monotonic() + timeout
    window = 256
    reduce_job = runs.reduce_id(record.id)
    # The worker that ends the run publishes on its channel: a waiter wakes at once
    # instead of at its next poll. Subscribed before the first look, so no end is missed.
    over = conn.pubsub(ignore_subscribe_messages=True)
    over.subscribe(runs.OVER_CHANNEL.format(run_id))
    try:
        return _wait_loop(conn, record, states, pending, window, reduce_job, over, on_progress, poll, deadline)
    finally:
        over.close()


def _wait_loop(
    conn: redis.Redis, record: RunRecord, states: dict[str, TaskState], pending: list[str], window: int,
    reduce_job: str, over: Any, on_progress: ProgressFn | None, poll: float, deadline: float | None,
) -> RunStatus:
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
                if not state.over and (state is not TaskState.MISSING or job_id == reduce_job):
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
        # Up to one poll interval, less if the run's end is announced (then drain the rest).
        if over.get_message(timeout=poll) is not None:
            while over.get_message(timeout=0) is not None:
                pass


def task_status(conn: redis.Redis, job_id: str) -> dict[str, Any]:
    """Details of one task (an RQ job id)."""
    return tasks.task_info(conn, job_id)


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
    queued = [j for j, s in zip(ids, states, strict=True) if s is TaskState.QUEUED]
    taken = tasks.take_off_queue(conn, record.queue, queued)
    waiting = taken | {j for j, s in zip(ids, states, strict=True) if s in (TaskState.DEFERRED, TaskState.SCHEDULED)}
    tasks.cancel_tasks(conn, sorted(waiting))
    # In a worker's hands: started, or dequeued and about to start ("queued" but no
    # longer on the queue list), which includes those dequeued after the snapshot.
    rest = [j for j in ids if j not in waiting]
    rest_states = _statuses(conn, rest)
    in_hand = sum(s in (TaskState.STARTED, TaskState.QUEUED) for s in rest_states)
    stopping = 0
    if running:
        started = [j for j, s in zip(rest, rest_states, strict=True) if s is TaskState.STARTED]
        stopping = tasks.stop_tasks(conn, started)
    return {"canceled": len(waiting), "running": in_hand - stopping, "stopping": stopping}


def retry(conn: redis.Redis, run_id: str) -> int:
    """Re-queue the failed, stopped or canceled tasks of a run (and its reduce step)."""
    record = runs.load_run(conn, run_id)
    ids = record.all_job_ids
    again = [j for j, s in zip(ids, _statuses(conn, ids), strict=True)
             if s in (TaskState.FAILED, TaskState.STOPPED, TaskState.CANCELED)]
    if not again:
        return 0
    runs.reset_reduce_lock(conn, run_id)
    tasks.requeue_tasks(conn, record.queue, again, record.retries)
    if runs.reduce_id(run_id) in again:
        # The tasks are all done already; the reduce is what failed.
        conn.set(runs.REDUCE_LOCK_KEY.format(run_id), 1, ex=runs.RUN_TTL)
    return len(again)
