"""piblade workers: RQ workers that keep Numba warm and run registered jobs only.

Why not ``rq worker``? Its default worker forks a fresh child for every job,
and each child compiles the Numba kernels again (≈ 0.5 s for a mandelbrot tile
whose kernel runs in ≈ 30 ms). A piblade worker process compiles (or loads from
``cache=True``) every registered kernel once, *before* forking its worker
processes, and then runs many jobs per process without forking again.

Running jobs in the worker process itself (RQ's ``SimpleWorker`` model) changes
what protects us, so this module adds it back:

* **Only registered jobs run.** :class:`BladeJob` never imports the function
  named in Redis; it looks the name up in the registry and refuses the rest.
  Callbacks and webhooks stored with a job are ignored (they name code/URLs too).
* **A dead node does not lose its job.** While a job runs, a keep-alive thread
  extends its entry in RQ's started registry every few seconds with a short TTL,
  and every worker runs RQ's registry maintenance every 15 s instead of every
  10 minutes: a job whose worker vanished is re-queued (retries left) or marked
  failed within about 40 s, instead of RQ's ≈ 11 minutes.
* **Timeouts hold even in nopython code.** RQ's SIGALRM timeout cannot interrupt
  a running kernel, so job kernels work in chunks; as a backstop the keep-alive
  thread kills the process if a job overruns its timeout by a grace period, and
  the supervisor starts a fresh, already-warm process.
* **A stopped task stops.** RQ's stop-job command kills a forked work horse;
  here the task runs in the worker process itself, so the command interrupts
  it instead at its next return to Python (between kernel chunks), and it is
  recorded as stopped, not retried. The worker goes on with the next task.
* **A dead worker process is reported at once.** Its supervisor marks it lost
  in Redis, so `piblade status` does not show it as alive for the 35 s its
  RQ worker key outlives it.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from rq import Queue
from rq.job import Job
from rq.worker import SimpleWorker, WorkerStatus

from piblade import envvars, held, recordstream, runs, taskcounts, tasks

# Imported now, not when the first reduce is due: an upgrade reinstalls piblade
# under a running worker, and a module imported after that would be the new
# code inside the old process.
from piblade.dispatch import enqueue_reduce
from piblade.errors import PibladeError, TaskStopped, UnregisteredCallable
from piblade.history import TaskAttempt, new_key, traceback_summary
from piblade.registry import REGISTRY, JobChanged, JobSpec, Registry, TaskContext, code_version, load_registry

if TYPE_CHECKING:
    from piblade.resultsdb import ResultsTarget

log = logging.getLogger("piblade.worker")

#: Seconds between keep-alive beats of a running job.
JOB_HEARTBEAT_INTERVAL = 5
#: A job whose worker stopped beating for this long counts as abandoned.
JOB_HEARTBEAT_TTL = 20
#: How often a worker runs RQ's registry maintenance (RQ's default is 600 s).
MAINTENANCE_INTERVAL = 15
#: Worker liveness key TTL; idle workers block on the queue for TTL - 15 s.
WORKER_TTL = 35
#: A job overrunning its timeout by this much gets its process killed.
HARD_TIMEOUT_GRACE = float(envvars.HARD_TIMEOUT_GRACE.get() or envvars.HARD_TIMEOUT_GRACE.default)
#: Whether task attempts are recorded for the run history (PIBLADE_RECORD_TASKS=0: not).
RECORD_TASKS = (envvars.RECORD_TASKS.get() or envvars.RECORD_TASKS.default) != "0"
#: How often a worker asks whether its node is paused (hot, under-voltage).
PAUSE_CHECK_INTERVAL = 1.0
#: An idle worker blocks on the queue at most this long before it looks around
#: again (pause flag, maintenance); RQ's default is the worker TTL minus 15 s.
DEQUEUE_BLOCK_SECONDS = 5
#: How much work, by the run's measured time per task, a worker takes off the queue
#: in one round trip (PIBLADE_BATCH_SECONDS; 0: one task at a time), and at most how many tasks.
BATCH_SECONDS = float(envvars.BATCH_SECONDS.get() or envvars.BATCH_SECONDS.default)
BATCH_MAX = 32
#: A held batch's lease: a worker that stops renewing it for this long is taken for dead.
HELD_LEASE_MS = JOB_HEARTBEAT_TTL * 1000
_TASK_ID = re.compile(r"(.+)-\d+")


@dataclass(frozen=True, slots=True)
class Runtime:
    """What every task in this process shares: where it runs and where data lives."""

    node: str
    data_root: Path
    threads: int
    results: ResultsTarget | None = None


_runtime = Runtime(node=socket.gethostname(), data_root=Path.cwd(), threads=1)

#: The signal that interrupts a running task for RQ's stop-job command.
STOP_TASK_SIGNAL = signal.SIGUSR1
#: The task this process is inside right now (its RQ id), and the one asked to stop.
_running_task: str | None = None
_stop_target: str | None = None


def _interrupt_task(signum: int, frame: Any) -> None:
    """Raise in the task, if it is still the one that was asked to stop.

    Python runs this in the main thread at its next bytecode, so a task stops
    between kernel calls, never inside nopython code; a signal that arrives
    after the task ended does nothing.
    """
    target = _stop_target
    if target is not None and target == _running_task:
        raise TaskStopped(f"task {target} was stopped on request (`piblade jobs cancel --running` or RQ's stop-job)")


def _epoch(value: datetime | None) -> float | None:
    """An RQ timestamp as epoch seconds (RQ's are UTC, some without tzinfo)."""
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _record_abandoned(job: Job, exc_type: Any, exc_value: Any, tb: Any) -> bool:
    """Record the attempt of a task whose worker died (RQ's maintenance found it abandoned).

    RQ's registry cleanup retries or fails such a task in its own pipeline,
    which no piblade code sees; without this the attempt would never reach the
    history and its run would look unfinished there. Rare, so one XADD of its
    own. The key derives from the attempt, so two workers cleaning at once
    record it once. Other failures are recorded where they end.
    """
    from rq.exceptions import AbandonedJobError

    meta = job.meta or {}
    if exc_type is not AbandonedJobError or "run" not in meta:
        return True
    worker = job.worker_name or ""
    node = worker.rsplit(".", 1)[0] if "." in worker else worker
    try:  # the run's latest end moves, as for any other end (no task finished: no node count)
        runs.count_end_commands(job.connection, str(meta["run"]), node, time.time(), finished=False)
    except (RedisError, OSError):
        log.warning("could not count the abandoned end of %s on its run", job.id, exc_info=True)
    if not RECORD_TASKS:
        return True
    started = _epoch(job.started_at)
    attempt = TaskAttempt(
        key=f"{job.id}:abandoned:{started}", run_id=str(meta["run"]), task_id=job.id,
        phase=str(meta.get("phase", "task")), index=int(meta.get("index", 0)),
        state="retried" if job.retries_left and job.retries_left > 0 else "failed",
        node=node, worker=worker,
        enqueued=_epoch(job.enqueued_at), started=started, ended=time.time(),
        error=f"AbandonedJobError: worker {worker or '?'} stopped beating while it ran this task "
              "(its node or process died)",
    )
    try:
        recordstream.add_attempt(job.connection, attempt)
    except (RedisError, OSError):
        log.warning("could not record the abandoned attempt of %s", job.id, exc_info=True)
    return True


#: The output directory this process made last (data root, run output), made once per run.
_made_output: tuple[Path, str] | None = None


def _remember_output(data_root: Path, output: str) -> None:
    global _made_output
    _made_output = (data_root, output)


def configure_runtime(runtime: Runtime) -> None:
    global _runtime
    _runtime = runtime


class BladeJob(Job):
    """An RQ job that can only run functions from the piblade registry."""

    registry: Registry = REGISTRY

    # RQ would import these names and call them; piblade never sets them, so a
    # job that carries them was written by someone else and they are ignored.
    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None

    def send_webhooks(self, status: Any, *, exc_string: str | None = None) -> None:
        """Never call out to URLs found in a job: that would let Redis writers make us fetch anything."""
        return

    def _changed(self, detail: str) -> JobChanged:
        """The refusal of a task whose job changed between the submit and now, naming both versions."""
        meta = self.meta or {}
        submitted = str(meta.get("piblade") or "an older piblade")
        return JobChanged(
            f"job changed since this run was submitted (run {meta.get('run', self.id)} by piblade {submitted}, "
            f"this worker runs {code_version()}): {detail}",
            hint="submit the run again: its parameters are checked against the new code then",
        )

    def _lookup(self) -> tuple[JobSpec, str]:
        try:
            return self.registry.by_callable(self.func_name or "")
        except UnregisteredCallable:
            meta = self.meta or {}
            if meta.get("run") and meta.get("piblade") and meta["piblade"] != code_version():
                raise self._changed(f"{self.func_name} is no longer a registered job") from None
            raise

    def _execute(self) -> Any:
        spec, phase = self._lookup()
        if self.args:
            raise UnregisteredCallable(f"refused {self.func_name}: piblade jobs take keyword arguments only")
        if phase == "task":
            # Checked before the call: a task enqueued by other code must not end in
            # a TypeError from deep inside the job (or in a wrong result).
            try:
                spec.check_task_kwargs(self.kwargs)
            except JobChanged as exc:
                raise self._changed(exc.message) from None
        meta = self.meta or {}
        run_id = str(meta.get("run", self.id))
        output = str(meta.get("output", ""))
        data_root = _runtime.data_root
        ctx = TaskContext(
            run_id=run_id,
            index=int(meta.get("index", 0)),
            total=int(meta.get("total", 1)),
            node=_runtime.node,
            data_root=data_root,
            output_dir=data_root / output if output else data_root,
            threads=_runtime.threads,
            results=_runtime.results,
        )
        if output and _made_output != (data_root, output):
            # Once per run, not per task: resolving and making it is a few system calls each time.
            ctx.resolve(output).mkdir(parents=True, exist_ok=True)
            _remember_output(data_root, output)
        started = time.perf_counter()
        global _running_task
        _running_task = self.id
        try:
            if _stop_target == self.id:  # stopped after it was started, before it ran
                raise TaskStopped(f"task {self.id} was stopped on request (`piblade jobs cancel --running` or "
                                  "RQ's stop-job)")
            if phase == "task":
                value = spec.task(ctx, **self.kwargs)
            else:
                value = self._run_reduce(spec, ctx, run_id)
        finally:
            _running_task = None
        return {"node": ctx.node, "seconds": round(time.perf_counter() - started, 6), "value": value,
                "piblade": code_version()}

    def _run_reduce(self, spec: JobSpec, ctx: TaskContext, run_id: str) -> Any:
        record = runs.load_run(self.connection, run_id)
        try:
            spec.check_run_params(record.params)
        except JobChanged as exc:
            raise self._changed(exc.message) from None
        assert spec.reduce is not None
        tasks = Job.fetch_many(record.task_ids, connection=self.connection, serializer=self.serializer)
        results = []
        for task_job in tasks:
            if task_job is None:
                raise RuntimeError(f"run {run_id}: a task's record expired before the reduce step")
            value = task_job.return_value()
            results.append(value["value"] if isinstance(value, dict) else value)
        return spec.reduce(ctx, record.params, results)


class _KeepAlive(threading.Thread):
    """One long-lived thread per worker process that beats for the job in hand.

    A thread per job would cost a start and a join (≈ 1 ms) on every job; this
    one just waits on a condition until a job is being watched.
    """

    def __init__(self, worker: BladeWorker) -> None:
        super().__init__(name="piblade-keepalive", daemon=True)
        self.worker = worker
        self.cond = threading.Condition()
        self.current: tuple[Job, Any, float, Queue] | None = None

    def watch(self, job: Job, execution: Any, queue: Queue) -> None:
        with self.cond:
            self.current = (job, execution, time.monotonic(), queue)
            self.cond.notify()

    def clear(self) -> None:
        with self.cond:
            self.current = None
            self.cond.notify()

    def run(self) -> None:
        while True:
            with self.cond:
                while self.current is None:
                    self.cond.wait()
                watched = self.current
                self.cond.wait(JOB_HEARTBEAT_INTERVAL)
                if self.current is not watched:
                    continue
            job, execution, started, queue = watched
            timeout = job.timeout or 0
            if timeout > 0 and time.monotonic() - started > timeout + HARD_TIMEOUT_GRACE:
                self._give_up(job, execution, queue, timeout)
            try:
                self.worker.maintain_heartbeats(job, execution)
                if self.worker._held:  # tasks held behind a long one keep their lease
                    held.renew(self.worker.connection, self.worker.name,
                               [q.key for q in self.worker._ordered_queues], HELD_LEASE_MS)
            except Exception:
                log.warning("heartbeat for job %s failed", job.id, exc_info=True)

    def _give_up(self, job: Job, execution: Any, queue: Queue, timeout: float) -> None:
        """The job is stuck where SIGALRM cannot reach (nopython code): record it, then end the process.

        Recording through RQ's own failure handler applies the job's retries at
        once, instead of waiting for its heartbeat to expire. The main thread is
        inside the kernel and holds no Redis connection, so writing from here is
        safe; the supervisor then starts a fresh, already warm process.
        """
        message = (
            f"piblade.worker.HardTimeout: job {job.id} ran {timeout}s + {HARD_TIMEOUT_GRACE:g}s grace "
            "without returning to Python (a kernel that does not work in chunks?); its worker process was restarted"
        )
        log.critical(message)
        try:
            from rq.utils import now

            job.ended_at = now()
            self.worker.handle_job_failure(job, queue, exc_string=message, execution=execution)
        except Exception:
            log.exception("could not record the hard timeout of job %s", job.id)
        os.kill(os.getpid(), signal.SIGKILL)


class BladeWorker(SimpleWorker):
    """A SimpleWorker with short heartbeats, frequent maintenance and fewer round trips.

    RQ's loop talks to Redis about twenty times per job (several unpipelined
    heartbeats, a suspension check, idle/busy writes). On a Pi every round trip
    is CPU the jobs do not get, so this worker beats at most every few seconds,
    checks for suspension once a second, and tries a non-blocking dequeue before
    RQ's idle path (which marks the worker idle and blocks).
    """

    _next: tuple[Job, Queue, Any] | None = None
    _stop_flag = False

    def __init__(self, queues: Sequence[Queue], name: str | None = None, *args: Any, **kwargs: Any) -> None:
        # RQ itself builds workers as cls([], name, job_class=None, serializer=None, ...)
        # when it reads them back from Redis (Worker.all, find_by_key, `rq info -w`).
        if kwargs.get("job_class") is None:
            kwargs["job_class"] = BladeJob
        if kwargs.get("serializer") is None:
            kwargs["serializer"] = tasks.SERIALIZER
        kwargs.setdefault("maintenance_interval", MAINTENANCE_INTERVAL)
        kwargs.setdefault("job_monitoring_interval", JOB_HEARTBEAT_INTERVAL)
        kwargs.setdefault("worker_ttl", WORKER_TTL)
        super().__init__(queues, name, *args, **kwargs)
        self._last_beat = 0.0
        self._last_suspension_check = 0.0
        self._keeper: _KeepAlive | None = None
        self._pending_pipe: Any = None
        self._last_pause_check = 0.0
        self._pause: str | None = None
        self._ending_attempt: TaskAttempt | None = None
        # The run of the task whose end is being recorded, its phase and end time (see _run_of).
        self._ending_run: tuple[str, str, float] | None = None
        self._trim_due = False
        # Tasks taken off the queue, not started: (job id, queue, held list), in order.
        self._held: deque[tuple[str, Queue, str]] = deque()
        # The next task, already started by the script that recorded the previous one's end.
        self._next: tuple[Job, Queue, Any] | None = None
        self._claimed: dict[str, Any] = {}  # job id -> its execution, for execute_job
        # The run of the last task and the seconds it took (a moving average), for the batch size.
        self._pace: tuple[str, float] | None = None
        # RQ's registry maintenance calls exception handlers for each abandoned task.
        self.push_exc_handler(_record_abandoned)

    # A stop request waits for the task in hand, and a task already started by the
    # end of the previous one is in hand: RQ's loop must not leave it started and unrun.
    @property
    def _stop_requested(self) -> bool:
        return self._stop_flag and self._next is None

    @_stop_requested.setter
    def _stop_requested(self, value: bool) -> None:
        self._stop_flag = value

    @property
    def dequeue_timeout(self) -> int:
        return DEQUEUE_BLOCK_SECONDS

    def node_pause(self) -> str | None:
        """Why this node must not take new jobs now (set by its health agent), at most one GET a second."""
        if time.monotonic() - self._last_pause_check >= PAUSE_CHECK_INTERVAL:
            from piblade.healthstore import read_pause

            self._last_pause_check = time.monotonic()
            try:
                self._pause = read_pause(self.connection, _runtime.node)
            except (RedisError, OSError):  # Redis trouble is handled (and logged) by the dequeue path
                self._pause = None
        return self._pause

    def _wait_while_paused(self, reason: str) -> None:
        """Take no new jobs while the node is hot or under-powered; keep beating and cleaning."""
        log.warning("node %s paused (%s): not taking new jobs", _runtime.node, reason)
        self.set_state(f"paused: {reason}")
        self.procline(f"paused: {reason}")
        while reason and not self._stop_requested:
            time.sleep(PAUSE_CHECK_INTERVAL)
            self.heartbeat()
            if self.should_run_maintenance_tasks:
                self.run_maintenance_tasks()
            reason = self.node_pause() or ""
        log.warning("node %s resumed: taking jobs again", _runtime.node)

    def register_birth(self) -> None:
        """RQ's birth record, plus the piblade code this worker runs (status shows a half-upgraded cluster)."""
        super().register_birth()
        tasks.publish_worker_version(self.connection, self.key, code_version())

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return JOB_HEARTBEAT_TTL

    def kill_horse(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """RQ's stop-job and stop-execution commands end here (from its pubsub thread).

        RQ kills the forked work horse; a piblade task runs in this process, so
        it is interrupted instead (:func:`_interrupt_task`). RQ has already set
        ``_stopped_job_id``, so the failure is recorded as "stopped" and not retried.
        """
        global _stop_target
        job_id = self._stopped_job_id
        if not job_id:
            return
        # RQ checked that it is this worker's current task: running, or started by the end
        # of the one before and about to run (then BladeJob._execute refuses to begin it).
        _stop_target = job_id
        if job_id == _running_task:
            signal.pthread_kill(threading.main_thread().ident or 0, STOP_TASK_SIGNAL)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None:
            super().heartbeat(timeout, pipeline=pipeline)
            return
        if time.monotonic() - self._last_beat < JOB_HEARTBEAT_INTERVAL:
            return
        with self.connection.pipeline() as pipe:
            super().heartbeat(timeout, pipeline=pipe)
            pipe.execute()
        self._last_beat = time.monotonic()

    def get_state(self) -> str:
        """Busy while a task started by the end of the one before waits to run: a stop lets it run first."""
        return WorkerStatus.BUSY if self._next is not None else self._state

    def check_for_suspension(self, burst: bool) -> None:
        # A task already started (by the end of the one before) runs first: suspended
        # here, it would sit "started" with no heartbeat and be failed as abandoned.
        if self._next is not None or time.monotonic() - self._last_suspension_check < 1.0:
            return
        super().check_for_suspension(burst)
        self._last_suspension_check = time.monotonic()

    def _batch(self) -> tuple[str, int]:
        """The run whose tasks to take several of, and how many: ``BATCH_SECONDS`` of its measured work."""
        if self._pace is None or BATCH_SECONDS <= 0:
            return "", 1
        run, seconds = self._pace
        return run, max(1, min(BATCH_MAX, int(BATCH_SECONDS / max(seconds, 1e-6))))

    def _take(self) -> bool:
        """Move queued tasks to this worker's held list (one round trip); False when every queue is empty."""
        run, count = self._batch()
        found = held.take(self.connection, [q.key for q in self._ordered_queues], self.name, count, HELD_LEASE_MS, run)
        if found is None:
            return False
        queue_key, ids = found
        queue = next(q for q in self._ordered_queues if q.key == queue_key)
        held_list = held.held_key(self.name, queue_key)
        self._held.extend((job_id, queue, held_list) for job_id in ids)
        return True

    def _start_commands(self, job: Job) -> tuple[list[Any], Any]:
        """RQ's writes that start a job (execution record, busy, started), collected, not sent."""
        from rq.executions import Execution

        pipe = self.connection.pipeline()
        ttl = self.get_heartbeat_ttl(job)
        execution = Execution.create(job, ttl, pipeline=pipe, worker_name=self.name)
        self.set_state("busy", pipeline=pipe)
        if time.monotonic() - self._last_beat >= JOB_HEARTBEAT_INTERVAL:
            super().heartbeat(ttl, pipeline=pipe)
            self._last_beat = time.monotonic()
        job.prepare_for_execution(self.name, pipeline=pipe)
        pipe.persist(job.key)
        commands = [args for args, _options in pipe.command_stack]
        pipe.reset()
        return commands, execution

    def _end_and_claim(self, first: list[Any]) -> list[Any]:
        """Send ``first`` (a task's end, or nothing) and start the next held task, in one round trip.

        The next task starts only if it is still in this worker's held list: a
        worker whose lease ran out (stalled, or taken for dead) finds its batch
        back on the queue, forgets it and takes again. Sets ``_next``.
        """
        replies: list[Any] | None = None
        ending = bool(first)  # a task's end: its worker stays busy until that is handled
        while self._held and self._next is None and not self._stop_flag and not self.node_pause():
            job_id, queue, held_list = self._held.popleft()
            job = self.job_class(job_id, connection=self.connection, serializer=self.serializer)
            job.origin = queue.name
            commands, execution = self._start_commands(job)
            claimed, got, raw = held.run_then_claim(self.connection, first, held_list, job_id, job.key, commands,
                                                    HELD_LEASE_MS)
            if replies is None:
                replies = got
            first = []
            if claimed == 1:
                job.restore(raw)
                job.redis_server_version = self.get_redis_server_version()
                self.executions[execution.id] = execution
                self._next = (job, queue, execution)
                break
            if not ending:
                self._state = WorkerStatus.IDLE
            if claimed == 0:
                # Not held any more: taken back with the rest of the batch (this worker's
                # lease ran out), or canceled. What is left of the batch goes back too.
                self._give_back()
        if replies is None:
            replies = held.run_then_claim(self.connection, first)[1] if first else []
        return replies

    def _give_back(self) -> None:
        """Return this worker's held tasks to the front of their queue (stopping, or paused)."""
        self._held.clear()
        try:
            held.give_back_worker(self.connection, self.name)
        except (RedisError, OSError):
            log.warning("could not give back the tasks %s held; they return when its lease runs out", self.name,
                        exc_info=True)

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        """The next task: already started, held, taken in a batch, or waited for on the queue."""
        while not self._stop_flag and self._next is None:
            # Looked at on every turn: a pause that begins after a take stops the claims
            # (see _end_and_claim), and the held tasks must go back, not be claimed again forever.
            reason = self.node_pause()
            if reason:
                self._give_back()
                self._wait_while_paused(reason)
                continue
            if not self._held:
                try:
                    if not self._take():
                        break
                except (RedisError, OSError):
                    # RQ's own path below retries and logs. Catch nothing wider: a
                    # stop signal arrives here as RQ's StopRequested (an Exception),
                    # and swallowing it left a worker running after its supervisor.
                    break
            self._end_and_claim([])
        if self._next is not None:
            job, queue, execution = self._next
            self._next = None
            self._claimed[job.id] = execution
            self.reorder_queues(reference_queue=queue)
            return job, queue
        if self._trim_due:
            # Going idle after work: hand back what tasks freed (see release_free_memory).
            self._trim_due = False
            release_free_memory()
        if self._stop_flag:
            # A stop that arrived while RQ still thought this worker busy only set
            # the flag; a blocking dequeue would never look at it.
            return None
        if timeout is not None and max_idle_time is None and len(self._ordered_queues) == 1:
            return self._wait_for_task(timeout)
        return self._rq_dequeue(timeout, max_idle_time)

    def _wait_for_task(self, timeout: int) -> Any:
        """Block on the one queue until a task arrives, straight into the held list, then start it.

        RQ's blocking dequeue (BLMOVE to its intermediate list, then HGETALL,
        then the start) is three round trips; this is the wait plus one.
        """
        queue = self._ordered_queues[0]
        self.set_state(WorkerStatus.IDLE)
        self.procline(f"Listening on {queue.name}")
        wait = 1.0
        while True:
            self.heartbeat()
            if self.should_run_maintenance_tasks:
                self.run_maintenance_tasks()
            self._held.clear()  # the wait returns whatever is still held to the queue
            try:
                job_id = held.wait(self.connection, queue.key, self.name, timeout, HELD_LEASE_MS)
            except (ConnectionError, TimeoutError, OSError, RedisError) as exc:
                log.error("worker %s: could not reach Redis (%s); retrying in %.0f s", self.name, exc, wait)
                time.sleep(wait)
                wait = min(wait * self.exponential_backoff_factor, self.max_connection_wait_time)
                continue
            wait = 1.0
            if job_id is not None:
                self._held.append((job_id, queue, held.held_key(self.name, queue.key)))
            if self._stop_flag:
                return None  # the stop came during the wait; teardown gives back what is held
            if self.node_pause():
                # The node became hot while this worker waited: hand the task back and wait.
                return self.dequeue_job_and_maintain_ttl(timeout)
            if job_id is None:
                continue
            self._end_and_claim([])
            if self._next is not None:
                return self.dequeue_job_and_maintain_ttl(timeout)

    def _rq_dequeue(self, timeout: int | None, max_idle_time: int | None) -> Any:
        """RQ's dequeue (several queues, or burst): LMOVE/BLPOP, then the job; started by perform_job."""
        result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        if result is not None and self.node_pause():
            # The node became hot while this worker was blocked on the queue:
            # hand the untouched job back (it is still "queued") and wait.
            job, queue = result
            with self.connection.pipeline() as pipe:
                queue.push_job_id(job.id, pipeline=pipe, at_front=True)
                pipe.lrem(queue.intermediate_queue_key, 1, job.id)
                pipe.execute()
            return self.dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        return result

    def run_maintenance_tasks(self) -> None:
        """RQ's registry maintenance, then the held batches of workers that died (lease expired)."""
        super().run_maintenance_tasks()
        try:
            if moved := held.recover_expired(self.connection):
                log.warning("returned %d held task(s) of dead workers to their queues", moved)
        except (RedisError, OSError):
            log.warning("could not look for held tasks of dead workers", exc_info=True)

    def teardown(self) -> None:
        self._give_back()
        self._undo_next()
        super().teardown()

    def _undo_next(self) -> None:
        """Put a task that was started but never ran back at the front of its queue, "queued" again.

        Only a cold shutdown or an error leaves the loop with one in hand; left
        as it is, it would be failed as abandoned without having run.
        """
        if self._next is None:
            return
        from rq.executions import cleanup_execution
        from rq.job import JobStatus

        job, queue, execution = self._next
        self._next = None
        self._claimed.pop(job.id, None)
        try:
            with self.connection.pipeline() as pipe:
                cleanup_execution(self, job, pipeline=pipe, execution=execution)
                job.set_status(JobStatus.QUEUED, pipeline=pipe)
                queue.push_job_id(job.id, pipeline=pipe, at_front=True)
                pipe.execute()
        except (RedisError, OSError):
            log.warning("could not put back task %s, started and not run; it is retried or failed as abandoned",
                        job.id, exc_info=True)

    def prepare_execution(self, job: Job) -> Any:
        """Create the execution record, but send it with the job's own preparation.

        RQ sends these two groups of writes as two pipelines back to back; one
        is enough. :meth:`prepare_job_execution` executes the pipeline.
        """
        from rq.executions import Execution

        pipe = self.connection.pipeline()
        execution = Execution.create(job, self.get_heartbeat_ttl(job), pipeline=pipe, worker_name=self.name)
        self.executions[execution.id] = execution
        self.set_state("busy", pipeline=pipe)
        self._pending_pipe = pipe
        return execution

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        from rq.utils import now

        pipe = self._pending_pipe or self.connection.pipeline()
        self._pending_pipe = None
        with pipe:
            ttl = self.get_heartbeat_ttl(job)
            self.heartbeat(ttl, pipeline=pipe)
            job.heartbeat(now(), ttl, pipeline=pipe)
            job.prepare_for_execution(self.name, pipeline=pipe)
            pipe.persist(job.key)
            if remove_from_intermediate_queue:
                pipe.lrem(Queue(job.origin, connection=self.connection).intermediate_queue_key, 1, job.id)
            pipe.execute()

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        # RQ also writes a job heartbeat here, one round trip just before the
        # success/failure pipeline records the end anyway.
        from rq.utils import now

        job.ended_at = now()

    def execute_job(self, job: Job, queue: Queue) -> None:
        global _stop_target
        if self._keeper is None:
            self._keeper = _KeepAlive(self)
            self._keeper.start()
        execution = self._claimed.pop(job.id, None)
        if execution is None:  # RQ's dequeue: not started yet
            execution = self.prepare_execution(job)
        self._keeper.watch(job, execution, queue)
        began = time.monotonic()
        try:
            self.perform_job(job, queue, execution)
        finally:
            # A stop for the next task (already started by this one's end) stands.
            if _stop_target == job.id:
                _stop_target = None
            if self._stopped_job_id == job.id:
                self._stopped_job_id = None
            self._ending_attempt = None
            self._ending_run = None
            self._keeper.clear()
            self._trim_due = True
            self._pace_of(job.id, time.monotonic() - began)
            # Idle again for RQ's stop handling (a SIGTERM now must stop at once), unless
            # the next task is already started; the Redis copy is written on the next idle wait.
            self._state = WorkerStatus.BUSY if self._next is not None else WorkerStatus.IDLE

    def _pace_of(self, job_id: str, seconds: float) -> None:
        """Keep the run's time per task (a moving average), which sizes the next batch of its tasks."""
        match = _TASK_ID.fullmatch(job_id)
        run = match.group(1) if match else ""
        if self._pace is not None and self._pace[0] == run:
            seconds = 0.7 * self._pace[1] + 0.3 * seconds
        self._pace = (run, seconds)

    def perform_job(self, job: Job, queue: Queue, execution: Any) -> bool:
        """RQ's perform_job, except that a task claimed from the held list is already started."""
        from rq.timeouts import JobTimeoutException
        from rq.utils import now

        try:
            if self._pending_pipe is not None:  # RQ's dequeue: start it now
                self.prepare_job_execution(job, len(self.queues) == 1)
            job.started_at = now()
            timeout = job.timeout or self.queue_class.DEFAULT_TIMEOUT
            with self.death_penalty_class(timeout, JobTimeoutException, job_id=job.id):
                return_value = job.perform()
            self._finalize_success(job, queue, execution, return_value)
        except:  # noqa: E722 - as RQ: every exception, even a stop, ends as the task's failure
            self._finalize_failure(job, queue, execution, sys.exc_info())
            return False
        return True

    @staticmethod
    def _run_of(job: Job) -> tuple[str, str, float] | None:
        """The run a task belongs to, its phase and its end (None: a task of no run)."""
        meta = job.meta or {}
        if "run" not in meta:
            return None
        return str(meta["run"]), str(meta.get("phase", "task")), _epoch(job.ended_at) or time.time()

    def _note_end(self, job: Job, queue: Queue, state: str, exc_string: str = "") -> None:
        """What RQ's pipeline for this end also carries, made once before it: the run's end
        counts and (when recorded) the attempt's history record, with the same end time."""
        self._ending_queue = queue.name
        self._ending_run = run = self._run_of(job)
        self._ending_attempt = None
        if run is None or not RECORD_TASKS:
            return
        run_id, phase, ended = run
        self._ending_attempt = TaskAttempt(
            key=new_key(), run_id=run_id, task_id=job.id, phase=phase,
            index=int((job.meta or {}).get("index", 0)), state=state, node=_runtime.node, worker=self.name,
            enqueued=_epoch(job.enqueued_at), started=_epoch(job.started_at),
            ended=ended, error=traceback_summary(exc_string) if exc_string else "",
        )

    def _count_run_end(self, pipeline: Any, finished: bool) -> None:
        """The run's per-node count and latest end (piblade.runs.count_end_commands), in RQ's pipeline."""
        if self._ending_run is None:
            return
        run_id, phase, ended = self._ending_run
        runs.count_end_commands(pipeline if pipeline is not None else self.connection, run_id, _runtime.node,
                                ended, finished=finished and phase == "task")

    def _record(self, pipeline: Any) -> None:
        """Add the ending attempt's record to the pipeline that records the end in RQ.

        RQ may build that pipeline again (a WatchError on the success path): the
        record goes into each, only the executed one counts, and its key is the same.
        """
        if self._ending_attempt is not None:
            recordstream.add_attempt(pipeline if pipeline is not None else self.connection, self._ending_attempt)

    def handle_job_success(self, job: Job, queue: Queue, *args: Any, **kwargs: Any) -> None:
        """Record the end as RQ does, and start the next held task, in one round trip.

        RQ's own success path is three round trips: a WATCH on the job's
        dependents key, their SMEMBERS, then the transaction. piblade's tasks have
        no dependents; the SMEMBERS runs inside the script instead, atomically with
        the end, so a dependent added by someone else is still found (and enqueued
        by RQ's code afterwards), and one added later sees the job finished.
        A run with a reduce step counts its finished tasks in the same script.
        """
        from rq.executions import cleanup_execution
        from rq.job import JobStatus
        from rq.rate_limit import release_slot

        execution = kwargs.get("execution") or (args[1] if len(args) > 1 else None)
        if job.repeats_left or execution is None:
            self._note_end(job, queue, "finished")
            super().handle_job_success(job, queue, *args, **kwargs)
            self._after_success(job, None)
            return
        self._note_end(job, queue, "finished")
        pipe = self.connection.pipeline()
        pipe.smembers(job.dependents_key)
        self.increment_successful_job_count(pipeline=pipe)
        assert job.ended_at is not None and job.started_at is not None
        self.increment_total_working_time(job.ended_at - job.started_at, pipe)
        result_ttl = job.get_result_ttl(self.default_result_ttl)
        if result_ttl != 0:
            job._handle_success(result_ttl, pipeline=pipe, worker_name=self.name, execution_id=execution.id,
                                execution_started_at=execution.created_at, execution_ended_at=job.ended_at)
        job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
        job._status = JobStatus.FINISHED
        cleanup_execution(self, job, pipeline=pipe, execution=execution)
        done_at = ended_at = None
        meta = job.meta or {}
        run_id, total, phase = str(meta.get("run", "")), int(meta.get("total", 0) or 0), meta.get("phase")
        if run_id and meta.get("reduce") and phase == "task":
            done_at = len(pipe.command_stack)
            runs.mark_task_done_commands(pipe, run_id, int(meta["index"]))
        elif run_id and phase == "task" and total > 1:
            ended_at = len(pipe.command_stack)
            runs.count_ended_commands(pipe, run_id)
        if run_id and (phase == "reduce" or (phase == "task" and total == 1 and not meta.get("reduce"))):
            pipe.publish(runs.OVER_CHANNEL.format(run_id), job.id)  # whoever waits on the run wakes now
        commands = [a for a, _options in pipe.command_stack]
        pipe.reset()
        replies = self._end_and_claim(commands)
        if replies and replies[0]:
            ready = queue.move_dependents_to_ready(job)
            queue.enqueue_ready_jobs_by_queue(ready)
        release_slot(job)
        if ended_at is not None and int(replies[ended_at] or 0) == total:
            self.connection.publish(runs.OVER_CHANNEL.format(run_id), job.id)
        self._after_success(job, None if done_at is None else int(replies[done_at + 2] or 0))

    def _after_success(self, job: Job, finished: int | None) -> None:
        """The reduce step of a run, enqueued by whoever finished its last task."""
        meta = job.meta or {}
        if not (meta.get("reduce") and meta.get("phase") == "task"):
            return
        run_id, total = str(meta["run"]), int(meta["total"])
        if finished is None:
            due = runs.mark_task_done(self.connection, run_id, int(meta["index"]), total)
        else:
            due = runs.reduce_due(self.connection, run_id, finished, total)
        if due:
            enqueue_reduce(self.connection, run_id)

    def handle_job_failure(self, job: Job, queue: Queue, *args: Any, **kwargs: Any) -> None:
        # As RQ decides inside: a stopped task is never retried.
        stopped = self._stopped_job_id == job.id
        state = "stopped" if stopped else "retried" if job.should_retry else "failed"
        exc_string = kwargs.get("exc_string") or (args[1] if len(args) > 1 else "")
        self._note_end(job, queue, state, str(exc_string or ""))
        super().handle_job_failure(job, queue, *args, **kwargs)

    # RQ calls these two inside the pipeline that records a task's end: piblade's per-node,
    # per-queue counters (piblade.taskcounts, for /metrics), the attempt's history record
    # (piblade.recordstream) and the run's end counts (piblade.runs) ride along, no extra round trip.
    def increment_successful_job_count(self, pipeline: Any = None) -> None:
        super().increment_successful_job_count(pipeline=pipeline)
        self._record(pipeline)
        self._count_run_end(pipeline, finished=True)
        taskcounts.count(pipeline if pipeline is not None else self.connection, _runtime.node,
                         getattr(self, "_ending_queue", ""), "finished")

    def increment_failed_job_count(self, pipeline: Any = None) -> None:
        super().increment_failed_job_count(pipeline)
        self._record(pipeline)
        self._count_run_end(pipeline, finished=False)
        taskcounts.count(pipeline if pipeline is not None else self.connection, _runtime.node,
                         getattr(self, "_ending_queue", ""), "failed")


def warm_up(registry: Registry, only: tuple[str, ...] | None = None) -> dict[str, float]:
    """Compile (or load from cache) every registered kernel, or those of the jobs ``only`` names.

    Returns seconds per job. On a slow node (an emulated one compiles ≈10× slower)
    warming only the jobs it will run lets it take tasks minutes earlier.
    """
    if only is not None:
        known = {spec.name for spec in registry}
        if unknown := sorted(set(only) - known):
            raise PibladeError(f"--warm names jobs that do not exist: {', '.join(unknown)}",
                               hint=f"registered jobs: {', '.join(sorted(known))}")
    timings: dict[str, float] = {}
    for spec in registry:
        if spec.warmup is None or (only is not None and spec.name not in only):
            continue
        started = time.perf_counter()
        spec.warmup()
        timings[spec.name] = time.perf_counter() - started
        log.info("warmed %s in %.3fs", spec.name, timings[spec.name])
    return timings


def default_processes() -> int:
    """This node's default worker count: its cores, capped by its memory (:mod:`piblade.workersize`)."""
    from piblade.workersize import default_worker_processes, parse_mem_total_mib

    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        meminfo = ""
    return default_worker_processes(os.cpu_count() or 1, parse_mem_total_mib(meminfo))


def numba_environment(processes: int, threads: int | None, cache_dir: Path) -> dict[str, str]:
    """The Numba settings a worker process needs, decided before Numba is imported.

    ``workqueue`` is the threading layer that survives fork after a parallel
    kernel ran in the parent (the default ``omp`` kills forked children), and
    processes × threads is kept within the machine's cores.
    """
    cores = os.cpu_count() or 1
    per_process = threads if threads else max(1, cores // max(1, processes))
    return {
        "NUMBA_THREADING_LAYER": "workqueue",
        "NUMBA_NUM_THREADS": str(per_process),
        "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", str(cache_dir)),
    }


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    queues: tuple[str, ...]
    processes: int
    data_root: Path
    node: str
    threads: int
    burst: bool = False
    #: Jobs to warm before serving; None warms every job (the others compile on first use).
    warm: tuple[str, ...] | None = None


def _serve(config: WorkerConfig, target: Any) -> int:
    """Run one worker loop in this process until it is told to stop."""
    from piblade.redisconn import connect

    conn = connect(target)
    queues = [tasks.queue(conn, name, job_class=BladeJob) for name in config.queues]
    name = f"{config.node}.{os.getpid()}"
    worker = BladeWorker(queues, connection=conn, name=name, log_job_description=False)
    signal.signal(STOP_TASK_SIGNAL, _interrupt_task)
    worker.work(burst=config.burst, logging_level="WARNING", with_scheduler=False)
    return 0


@functools.cache
def _libc() -> Any:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def release_free_memory() -> None:
    """Give the memory tasks freed back to the node (glibc's ``malloc_trim``), once a worker goes idle.

    glibc raises its mmap threshold when a large block is freed, so after a
    task that made big arrays (a picture, a chunk of a file) the next ones come
    from the heap, and freed heap stays with the process (a worker that blurred
    pictures kept it). Trimming runs only when the queue is empty, never
    between tasks.
    """
    if sys.platform.startswith("linux"):
        try:
            _libc().malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
            pass


_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
_PR_SET_PDEATHSIG = 1


def _stop_with_parent(parent: int) -> None:
    """Ask the kernel for a SIGTERM when the supervisor dies, however it dies.

    Without it a worker outlives a supervisor killed with SIGKILL (by the OOM
    killer, say) and keeps taking jobs under a service that systemd believes
    stopped. SIGTERM is RQ's warm shutdown: the job in hand still finishes.
    """
    if sys.platform.startswith("linux"):
        _libc().prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(0)


class Supervisor:
    """Forks N warm worker processes and restarts any that dies.

    SIGTERM/SIGINT is passed on to the children, which finish the job in hand
    (RQ's warm shutdown); a second signal makes them stop at once.
    """

    def __init__(self, config: WorkerConfig, target: Any) -> None:
        self.config = config
        self.target = target
        self.children: dict[int, int] = {}  # pid -> slot
        self.stopping = False
        self.restarts: list[float] = []

    def _spawn(self, slot: int) -> None:
        # A stop signal between fork() and the bookkeeping below would reach a
        # supervisor that does not know its new child yet, and the child would
        # never be told to stop: hold the signals until both sides are set up.
        parent = os.getpid()
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
            code = 1
            try:
                _stop_with_parent(parent)
                code = _serve(self.config, self.target)
            except Exception:
                log.exception("worker process crashed")
            finally:
                os._exit(code)
        self.children[pid] = slot
        if self.stopping:
            # The mask holds only for this thread: after a parallel kernel warmed
            # up, Numba's pool threads can take the signal, and Python then runs
            # _forward here before this child was in self.children.
            os.kill(pid, signal.SIGTERM)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)

    def _report_lost(self, pid: int, how: str) -> None:
        """Mark the dead process's RQ worker lost: its key stays in Redis until its TTL runs out.

        A short-lived connection: nothing of it may be inherited by the next fork.
        """
        from piblade import healthstore
        from piblade.redisconn import connect

        name = f"{self.config.node}.{pid}"
        try:
            conn = connect(self.target, timeout=2.0)
            try:
                healthstore.report_lost_worker(conn, name, how, ttl=WORKER_TTL + 30)
                # Tasks it had taken and not started go back to the front of the queue now.
                held.give_back_worker(conn, name)
            finally:
                conn.close()
        except (PibladeError, RedisError, OSError) as exc:
            log.warning("could not report worker %s as lost: %s", name, exc)

    def _forward(self, signum: int, frame: Any) -> None:
        self.stopping = True
        for pid in list(self.children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGINT, self._forward)
        # Everything alive now (the warm kernels, the imported modules) is shared
        # with the workers copy-on-write; a collection in a worker would write to
        # every object's GC header and so copy every page that holds one
        # (bench/worker_memory.py, "worked"). Frozen objects are never collected.
        gc.collect()
        gc.freeze()
        for slot in range(self.config.processes):
            self._spawn(slot)
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid not in self.children or self.stopping:
                self.children.pop(pid, 0)
                continue
            slot = self.children.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            if self.config.burst and code == 0:
                continue
            how = exit_description(code)
            self._report_lost(pid, how)
            now = time.monotonic()
            self.restarts = [t for t in self.restarts if now - t < 60] + [now]
            log.warning("worker process %s %s; starting a new one", pid, how)
            if len(self.restarts) > 5:
                time.sleep(5)  # crash loop: do not spin
            if not self.stopping:
                self._spawn(slot)
        return 0


def exit_description(code: int) -> str:
    """``os.waitstatus_to_exitcode`` in words: "killed by SIGKILL", "exited with code 1"."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def results_target() -> ResultsTarget | None:
    """The results database tasks write to: ``$PIBLADE_RESULTS_URL``, else the local cluster's, else none."""
    from piblade import local, resultsdb

    return resultsdb.target_from_env() or local.results_target()


def run_workers(config: WorkerConfig, target: Any) -> int:
    """Entry point of `piblade worker`: set up Numba, warm every job, then serve."""
    from piblade.state import state_dir

    os.environ.update(numba_environment(config.processes, config.threads, state_dir() / "numba-cache"))
    threads = int(os.environ["NUMBA_NUM_THREADS"])
    configure_runtime(Runtime(node=config.node, data_root=config.data_root, threads=threads,
                              results=results_target()))
    config.data_root.mkdir(parents=True, exist_ok=True)
    registry = load_registry()
    # Which code this is, decided once before anything can reinstall it under us.
    log.info("piblade %s", code_version())
    warm_up(registry, config.warm)
    sys.stdout.flush()
    # Even one process runs under the supervisor: a process killed by a hard
    # timeout or a crash is replaced by a warm fork within a second.
    return Supervisor(config, target).run()
