"""Submit → workers → results, through a real redis-server and real worker processes."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from rq import Callback, Queue
from rq.serializers import JSONSerializer
from rq.worker import BaseWorker

from piblade import dispatch, runs, tasks
from piblade.errors import BadParameter, NotFound, UnknownJob
from piblade.registry import load_registry
from piblade.worker import BladeJob
from tests.integration.conftest import (
    TEST_JOBS,
    RedisServer,
    WorkerPool,
    start_workers,
    worker_env,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registry():
    return load_registry([TEST_JOBS])


def test_fan_out_runs_every_task_and_the_reduce(conn: redis.Redis, workers: WorkerPool, registry) -> None:
    record = dispatch.submit(conn, registry, "test-sleep", {"count": "60"})
    status = dispatch.wait(conn, record.id, timeout=60)
    assert status.state == "finished", status.to_dict()
    assert status.done == 60
    assert status.result == {"tasks": 60, "sum": sum(range(60))}
    assert status.nodes == {"testnode": 60}


def _commands_run(admin: redis.Redis) -> int:
    return sum(int(stats["calls"]) for stats in admin.info("commandstats").values())


def test_a_finished_runs_summary_costs_the_same_few_commands_however_many_tasks_it_had(
    redis_server: RedisServer, conn: redis.Redis, registry, tmp_path: Path
) -> None:
    # Two nodes, so the per-node counts are not one number by accident.
    first = start_workers(redis_server, tmp_path / "a", processes=1, node="pi-a")
    second = start_workers(redis_server, tmp_path / "b", processes=1, node="pi-b")
    try:
        record = dispatch.submit(conn, registry, "test-sleep", {"count": "300"})
        status = dispatch.wait(conn, record.id, timeout=120)
    finally:
        first.stop()
        second.stop()
    assert status.state == "finished" and status.done == 300
    # The same summary from every task's own record and result, the way it used to be made.
    finished = [r for r in tasks.fetch_results(conn, record.task_ids) if r is not None]
    by_node = collections.Counter(r.node for r in finished)
    last_end = max(r.ended_at for r in [*finished, *tasks.fetch_results(conn, [runs.reduce_id(record.id)])] if r)
    assert status.nodes == dict(by_node) and sum(status.nodes.values()) == 300
    assert status.seconds == pytest.approx(last_end - record.created, abs=1e-3)
    # ... and it reads the run's own counts, not the 300 tasks: the details cost a few
    # commands over the task states (one read per task, pipelined), not hundreds.
    before = _commands_run(redis_server.admin)
    dispatch.run_status(conn, record.id, details=False)
    states_only = _commands_run(redis_server.admin) - before
    before = _commands_run(redis_server.admin)
    again = dispatch.run_status(conn, record.id)
    with_details = _commands_run(redis_server.admin) - before
    assert again.nodes == status.nodes and again.seconds == status.seconds
    assert with_details - states_only < 10, f"{with_details - states_only} commands for one run's details"


def test_a_task_that_ends_after_its_runs_record_expired_brings_no_broken_run_back(conn: redis.Redis) -> None:
    """A task can wait in a queue longer than its run's record lives (a paused cluster): its end must
    not make a run hash without the record's fields, which every reader of runs would trip over."""
    record = runs.RunRecord(id=runs.new_run_id(), job="noop", params={}, total=2, queue="default",
                            created=time.time(), output="", has_reduce=False, timeout=60, retries=0)
    with conn.pipeline() as pipe:
        runs.save_run(pipe, record)
        pipe.execute()
    conn.delete(runs.RUN_KEY.format(record.id))  # the record's TTL ran out
    with conn.pipeline() as pipe:  # what a worker's end adds (piblade.worker)
        runs.count_ended_commands(pipe, record.id)
        runs.count_end_commands(pipe, record.id, "pi-a", time.time(), finished=True)
        pipe.execute()
    assert [r.id for r in runs.recent_runs(conn)] == []
    with pytest.raises(NotFound):
        runs.load_run(conn, record.id)
    for key in (runs.NODES_KEY, runs.ENDS_KEY):  # what the end made lives no longer than a run
        assert 0 < conn.ttl(key.format(record.id)) <= runs.RUN_TTL


def test_failed_task_keeps_its_traceback(conn: redis.Redis, workers: WorkerPool, registry) -> None:
    record = dispatch.submit(conn, registry, "test-fail", {"message": "disk on fire"})
    status = dispatch.wait(conn, record.id, timeout=60)
    assert status.state == "failed"
    (failure,) = status.failures
    assert failure.summary == "ValueError: test failure: disk on fire"
    assert "testjobs.py" in failure.traceback and "Traceback" in failure.traceback


def test_timeout_is_enforced(conn: redis.Redis, workers: WorkerPool, registry) -> None:
    record = dispatch.submit(conn, registry, "test-sleep", {"seconds": "30"}, timeout=1)
    started = time.monotonic()
    status = dispatch.wait(conn, record.id, timeout=60)
    assert status.state == "failed"
    assert "JobTimeoutException" in status.failures[0].traceback
    assert time.monotonic() - started < 30  # it was interrupted, not run to the end


def test_retries_rerun_a_failed_task(conn: redis.Redis, workers: WorkerPool, registry, tmp_path: Path) -> None:
    marker = tmp_path / "flaky-marker"
    record = dispatch.submit(conn, registry, "test-flaky", {"marker": str(marker)}, retries=1)
    status = dispatch.wait(conn, record.id, timeout=60)
    assert status.state == "finished"
    assert status.result == "second attempt ok"

    marker2 = tmp_path / "flaky-marker-2"
    record = dispatch.submit(conn, registry, "test-flaky", {"marker": str(marker2)})
    assert dispatch.wait(conn, record.id, timeout=60).state == "failed"
    # `piblade jobs retry` re-queues the failed task; the second attempt succeeds.
    assert dispatch.retry(conn, record.id) == 1
    assert dispatch.wait(conn, record.id, timeout=60).state == "finished"


def test_bad_input_is_refused_before_anything_is_enqueued(
    redis_server: RedisServer, conn: redis.Redis, registry
) -> None:
    before = conn.dbsize()
    with pytest.raises(UnknownJob, match='did you mean "test-sleep"'):
        dispatch.submit(conn, registry, "test-slep", {})
    with pytest.raises(BadParameter, match="out of range"):
        dispatch.submit(conn, registry, "test-sleep", {"count": "0"})
    with pytest.raises(BadParameter, match="not a valid float"):
        dispatch.submit(conn, registry, "test-sleep", {"seconds": "soon"})
    with pytest.raises(BadParameter, match="unknown parameter"):
        dispatch.submit(conn, registry, "test-sleep", {"cuont": "3"})
    assert conn.dbsize() == before
    assert redis_server.admin.keys("rq:*") == []


def test_a_non_registered_callable_is_refused_and_recorded(
    conn: redis.Redis, workers: WorkerPool, tmp_path: Path
) -> None:
    evidence = tmp_path / "pwned"
    queue = Queue("default", connection=conn, serializer=JSONSerializer)
    job = queue.enqueue("os.system", f"touch {evidence}", job_id="evil-1")
    deadline = time.monotonic() + 30
    while job.get_status() not in ("failed", "finished") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job.get_status() == "failed"
    assert "refused to run 'os.system': it is not a registered piblade job" in job.latest_result().exc_string
    assert not evidence.exists()


def test_callbacks_stored_with_a_job_are_never_called(
    conn: redis.Redis, workers: WorkerPool, registry, tmp_path: Path
) -> None:
    spec = registry.get("test-sleep")
    queue = Queue("default", connection=conn, serializer=JSONSerializer, job_class=BladeJob)
    job = queue.enqueue(
        spec.task_path, i=1, seconds=0.0, job_id="cb-1",
        on_success=Callback("os.abort"), on_failure=Callback("os.abort"),
    )
    deadline = time.monotonic() + 30
    while job.get_status() not in ("failed", "finished") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job.get_status() == "finished"
    assert workers.proc.poll() is None  # os.abort would have killed a worker process


@pytest.mark.parametrize("retries", [1, 0])
def test_a_node_lost_mid_job_does_not_lose_the_job(
    redis_server: RedisServer, conn: redis.Redis, registry, tmp_path: Path, retries: int
) -> None:
    doomed = start_workers(redis_server, tmp_path / "doomed", processes=1, node="doomed")
    record = dispatch.submit(conn, registry, "test-sleep", {"seconds": "8"}, retries=retries)
    task = runs.task_id(record.id, 0)
    deadline = time.monotonic() + 30
    while conn.hget(f"rq:job:{task}", "status") != b"started":
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.05)
    # Power loss: the whole worker process group dies at once, nothing gets to clean up.
    os.killpg(doomed.proc.pid, signal.SIGKILL)
    doomed.proc.wait()
    killed_at = time.monotonic()
    survivor = start_workers(redis_server, tmp_path / "survivor", processes=1, node="survivor")
    try:
        status = dispatch.wait(conn, record.id, timeout=75)
    finally:
        survivor.stop()
    assert status.finished, f"still {status.counts} {time.monotonic() - killed_at:.0f}s after the node died"
    if retries:
        assert status.state == "finished"
        assert status.nodes == {"survivor": 1}
    else:
        assert status.state == "failed"
        assert "abandoned" in status.failures[0].traceback.lower()


@pytest.mark.parametrize("dies", ["process", "node"])
def test_a_worker_killed_holding_a_batch_loses_no_task_and_runs_none_twice(
    redis_server: RedisServer, conn: redis.Redis, registry, tmp_path: Path, dies: str
) -> None:
    """Tasks a worker took off the queue but had not started go back to the queue when it dies.

    "process": its supervisor gives them back at once and starts a new process;
    "node": the whole node dies, and another node's worker returns them once
    the dead worker's lease expires. Only the task in hand is run again (its
    retry); every task is recorded finished exactly once.
    """
    marks = tmp_path / "marks"
    marks.mkdir()
    # Hold up to 5 s of work: a batch of several 0.2 s tasks.
    doomed = start_workers(redis_server, tmp_path / "doomed", processes=1, node="doomed",
                           env={"PIBLADE_BATCH_SECONDS": "5"})
    total = 30
    record = dispatch.submit(conn, registry, "test-mark", {"count": total, "seconds": "0.2", "marks": str(marks)},
                             retries=1)
    deadline = time.monotonic() + 60
    held_lists: list[bytes] = []
    while not any(conn.llen(h) >= 2 for h in held_lists):
        assert time.monotonic() < deadline, "the worker never held a batch"
        held_lists = [h for h in conn.hkeys("piblade:held") if h.startswith(b"piblade:held:doomed.")]
        time.sleep(0.02)
    (worker,) = [w.name for w in BaseWorker.all(connection=conn) if w.name.startswith("doomed.")]
    # RQ's own CLI still reads the queue while tasks are held.
    target = redis_server.target
    password = Path(str(target.password_file)).read_text().strip()
    info = subprocess.run(
        [str(Path(sys.executable).with_name("rq")), "info", "--only-queues"],
        env={**os.environ, "RQ_REDIS_URL": f"redis://{target.username}:{password}@{target.host}:{target.port}/0"},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert info.returncode == 0 and "default" in info.stdout, info.stdout + info.stderr
    if dies == "process":
        os.kill(int(worker.rpartition(".")[2]), signal.SIGKILL)
        survivor = doomed
    else:
        os.killpg(doomed.proc.pid, signal.SIGKILL)  # power loss: nobody on the node gives anything back
        doomed.proc.wait()
        survivor = start_workers(redis_server, tmp_path / "survivor", processes=1, node="survivor")
    try:
        status = dispatch.wait(conn, record.id, timeout=120)
    finally:
        survivor.stop()
    assert status.state == "finished" and status.done == total, status.to_dict()
    starts = [len(list(marks.glob(f"{i}.*"))) for i in range(total)]
    # Each task's body began once, except the one in hand when the worker died (killed, then retried).
    assert all(n in (1, 2) for n in starts) and starts.count(2) <= 1, starts
    finished = collections.Counter(
        json.loads(fields[b"task"])["task_id"]
        for _id, fields in conn.xrange("piblade:records")
        if b"task" in fields and json.loads(fields[b"task"])["state"] == "finished"
    )
    assert finished == dict.fromkeys(record.task_ids, 1)
    assert not [h for h in conn.hkeys("piblade:held") if conn.llen(h)]


def test_sigterm_lets_the_current_job_finish(
    redis_server: RedisServer, conn: redis.Redis, registry, tmp_path: Path
) -> None:
    pool = start_workers(redis_server, tmp_path, processes=1, node="graceful")
    record = dispatch.submit(conn, registry, "test-sleep", {"count": "2", "seconds": "2"})
    first = runs.task_id(record.id, 0)
    deadline = time.monotonic() + 30
    while conn.hget(f"rq:job:{first}", "status") != b"started":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    pool.proc.send_signal(signal.SIGTERM)
    assert pool.proc.wait(timeout=30) == 0
    assert conn.hget(f"rq:job:{first}", "status") == b"finished"  # the job in hand finished
    second = runs.task_id(record.id, 1)
    assert conn.hget(f"rq:job:{second}", "status") == b"queued"  # and no new one was taken


def test_a_paused_node_takes_no_new_jobs_until_it_recovers(
    redis_server: RedisServer, conn: redis.Redis, registry, tmp_path: Path
) -> None:
    from piblade import healthstore

    pool = start_workers(redis_server, tmp_path, processes=1, node="hotnode")
    try:
        healthstore.publish(conn, "hotnode", {"node": "hotnode"}, interval=10, pause="hot")
        time.sleep(1.5)  # the worker looks at the flag once a second
        record = dispatch.submit(conn, registry, "test-sleep", {"count": "1"})
        task = runs.task_id(record.id, 0)
        time.sleep(3)
        assert conn.hget(f"rq:job:{task}", "status") == b"queued"
        (worker,) = [w for w in BaseWorker.all(connection=conn) if w.name.startswith("hotnode.")]
        assert worker.get_state() == "paused: hot"
        healthstore.publish(conn, "hotnode", {"node": "hotnode"}, interval=10, pause=None)
        assert dispatch.wait(conn, record.id, timeout=30).state == "finished"
    finally:
        pool.stop()


@pytest.mark.parametrize("retries", [0, 1])
def test_a_job_stuck_past_its_timeout_is_failed_and_its_worker_replaced(
    redis_server: RedisServer, conn: redis.Redis, registry, tmp_path: Path, retries: int
) -> None:
    pool = start_workers(redis_server, tmp_path, processes=1, node="stuck",
                         env={"PIBLADE_HARD_TIMEOUT_GRACE": "2"})
    (first,) = [w.name for w in BaseWorker.all(connection=conn) if w.name.startswith("stuck.")]
    try:
        record = dispatch.submit(conn, registry, "test-stuck", {"seconds": "60"}, timeout=1, retries=retries)
        task = runs.task_id(record.id, 0)
        started = time.monotonic()
        if retries:
            # The first attempt is failed and re-queued at once; the replacement worker gets stuck again.
            deadline = time.monotonic() + 30
            while int(conn.hget(f"rq:job:{task}", "retries_left") or 1) > 0:
                assert time.monotonic() < deadline, "the stuck attempt was not retried"
                time.sleep(0.2)
        status = dispatch.wait(conn, record.id, timeout=40)
        assert status.state == "failed"
        assert "HardTimeout" in status.failures[0].traceback
        assert time.monotonic() - started < 40  # far sooner than the 60 s the job wanted
        deadline = time.monotonic() + 30
        while not [w for w in BaseWorker.all(connection=conn) if w.name.startswith("stuck.") and w.name != first]:
            assert time.monotonic() < deadline, "the supervisor did not start a new worker process"
            time.sleep(0.2)
        assert pool.proc.poll() is None  # the supervisor itself lives on
    finally:
        pool.stop()


def test_cancel_stops_waiting_tasks_and_retry_brings_them_back(
    redis_server: RedisServer, conn: redis.Redis, registry, tmp_path: Path
) -> None:
    pool = start_workers(redis_server, tmp_path, processes=1, node="cancel")
    try:
        record = dispatch.submit(conn, registry, "test-sleep", {"count": "12", "seconds": "0.8"})
        first = runs.task_id(record.id, 0)
        deadline = time.monotonic() + 30
        while conn.hget(f"rq:job:{first}", "status") not in (b"started", b"finished"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        result = dispatch.cancel(conn, record.id)
        assert result["canceled"] >= 9 and result["running"] <= 1
        status = dispatch.wait(conn, record.id, timeout=30)
        assert status.state == "failed"  # a canceled run is over, and not a success
        assert status.counts.get("canceled") == result["canceled"]
        assert status.reduce_state is None  # the reduce never ran
        assert dispatch.retry(conn, record.id) == result["canceled"]
        final = dispatch.wait(conn, record.id, timeout=60)
        assert final.state == "finished", final.to_dict()
        assert final.result == {"tasks": 12, "sum": sum(range(12))}
    finally:
        pool.stop()


# A worker that swallowed its stop signal outlived its supervisor and took the
# next tests' jobs; this script stops it at the worst moment, inside a dequeue.
STOP_DURING_DEQUEUE = """
import os, signal, sys
from rq import Queue
from rq.serializers import JSONSerializer
from piblade.redisconn import connect, target_from_env
from piblade.registry import load_registry
from piblade.worker import BladeJob, BladeWorker

calls = 0

class SignalledWorker(BladeWorker):
    def _take(self):
        global calls
        calls += 1
        if calls == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGTERM)  # systemd stops the service right now
        return super()._take()

load_registry()
conn = connect(target_from_env())
queue = Queue("stop-test", connection=conn, job_class=BladeJob, serializer=JSONSerializer)
worker = SignalledWorker([queue], connection=conn, name="stop-test.1")
worker.work(burst=False, logging_level="WARNING", with_scheduler=False)
print("stopped cleanly")
"""


@pytest.mark.parametrize("after_a_job", [False, True], ids=["idle", "after-a-job"])
def test_a_stop_signal_during_a_dequeue_stops_the_worker(
    redis_server: RedisServer, conn: redis.Redis, registry, tmp_path: Path, after_a_job: bool
) -> None:
    if after_a_job:  # one task (no reduce) first: RQ still counts the worker busy after it
        record = dispatch.submit(conn, registry, "test-fail", {}, queue="stop-test")
    proc = subprocess.run(
        [sys.executable, "-c", STOP_DURING_DEQUEUE, "2" if after_a_job else "1"],
        env=worker_env(redis_server, tmp_path / "state"), capture_output=True, text=True, timeout=60, check=False,
    )
    # Swallowed, or only noted as "stop after this job", the signal left the
    # worker blocked on the empty queue for good (and this run hit its timeout).
    assert proc.returncode == 0, proc.stderr
    assert "stopped cleanly" in proc.stdout
    if after_a_job:
        assert dispatch.run_status(conn, record.id).counts == {"failed": 1}


def test_workers_stop_when_their_supervisor_is_killed_and_finish_the_job_in_hand(
    redis_server: RedisServer, conn: redis.Redis, registry, tmp_path: Path
) -> None:
    pool = start_workers(redis_server, tmp_path, processes=1, node="orphan")
    record = dispatch.submit(conn, registry, "test-sleep", {"seconds": "6"})
    task = runs.task_id(record.id, 0)
    deadline = time.monotonic() + 30
    while conn.hget(f"rq:job:{task}", "status") != b"started":
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.02)
    # The OOM killer takes the supervisor only; its worker must not live on unsupervised.
    pool.proc.kill()
    pool.proc.wait()
    left = pool.reap_group(timeout=20)
    assert not left, f"worker processes {left} outlived their supervisor"
    # The worker's warm shutdown finished the job it had started, and the
    # reduce step waits on the queue for the next worker: nothing is lost.
    assert conn.hget(f"rq:job:{task}", "status") == b"finished"
    status = dispatch.run_status(conn, record.id)
    assert status.done == 1 and status.reduce_state == "queued", status.to_dict()
