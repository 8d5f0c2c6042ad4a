"""What RQ's own tools and people do to running piblade workers: read them back, stop a task, kill one.

A real redis-server and real worker processes (``piblade worker``), as in test_dispatch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.command import send_stop_job_command
from rq.serializers import JSONSerializer
from rq.worker import BaseWorker

from piblade import dispatch, healthstore, runs
from piblade.clusterstatus import gather
from piblade.registry import load_registry
from piblade.worker import BladeWorker
from tests.integration.conftest import TEST_JOBS, RedisServer, WorkerPool, start_workers

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registry():
    return load_registry([TEST_JOBS])


def wait_for_state(conn: redis.Redis, job_id: str, wanted: set[bytes], timeout: float = 30) -> bytes:
    deadline = time.monotonic() + timeout
    while (state := conn.hget(f"rq:job:{job_id}", "status") or b"") not in wanted:
        assert time.monotonic() < deadline, f"{job_id} is {state!r}, never {wanted}"
        time.sleep(0.05)
    return state


def own_workers(conn: redis.Redis, node: str) -> list[str]:
    return sorted(w.name for w in BaseWorker.all(connection=conn) if w.name.startswith(f"{node}."))


def test_rq_reads_piblade_workers_back(redis_server: RedisServer, conn: redis.Redis, workers: WorkerPool) -> None:
    names = own_workers(conn, "testnode")
    # RQ hydrates workers as cls([], name, ...): a positional name, job_class and serializer None.
    found = BladeWorker.all(connection=conn)
    assert sorted(w.name for w in found) == names
    assert all(isinstance(w, BladeWorker) for w in found)
    one = BladeWorker.find_by_key(f"rq:worker:{names[0]}", connection=conn)
    assert one is not None and one.name == names[0] and one.queue_names() == ["default"]
    # RQ's own CLI, told to use piblade's worker class.
    rq = Path(sys.executable).with_name("rq")
    target = redis_server.target
    password = Path(str(target.password_file)).read_text().strip()
    env = {**os.environ, "RQ_REDIS_URL": f"redis://{target.username}:{password}@{target.host}:{target.port}/0"}
    info = subprocess.run(
        [str(rq), "info", "-w", "piblade.worker.BladeWorker", "--only-workers"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert info.returncode == 0, info.stderr
    assert all(name in info.stdout for name in names), info.stdout


def test_rq_stop_job_stops_a_running_task_and_the_worker_goes_on(
    conn: redis.Redis, workers: WorkerPool, registry
) -> None:
    record = dispatch.submit(conn, registry, "test-sleep", {"seconds": "120"})
    task = runs.task_id(record.id, 0)
    wait_for_state(conn, task, {b"started"})
    before = own_workers(conn, "testnode")
    send_stop_job_command(conn, task, serializer=JSONSerializer)
    # The task sleeps in 50 ms steps (Python between each, like kernel chunks):
    # it stops at the next one, not after its 120 s.
    assert wait_for_state(conn, task, {b"stopped", b"failed", b"finished"}, timeout=30) == b"stopped"
    info = dispatch.task_status(conn, task)
    assert "stopped on request" in info["traceback"]
    status = dispatch.run_status(conn, record.id)
    assert status.state == "failed" and status.counts == {"stopped": 1}
    # The same worker processes take the next task.
    again = dispatch.submit(conn, registry, "test-sleep", {"count": "4"})
    assert dispatch.wait(conn, again.id, timeout=60).state == "finished"
    assert own_workers(conn, "testnode") == before


def test_cancel_running_stops_started_tasks_and_cancels_the_rest(
    conn: redis.Redis, workers: WorkerPool, registry
) -> None:
    record = dispatch.submit(conn, registry, "test-sleep", {"count": "5", "seconds": "120"})
    for index in (0, 1):  # two worker processes: two tasks start, three wait
        wait_for_state(conn, runs.task_id(record.id, index), {b"started"})
    result = dispatch.cancel(conn, record.id, running=True)
    assert result == {"canceled": 3, "running": 0, "stopping": 2}
    status = dispatch.wait(conn, record.id, timeout=30)
    assert status.state == "failed"
    assert status.counts == {"stopped": 2, "canceled": 3}
    assert status.reduce_state is None


def test_jobs_status_shows_a_refused_non_json_job(conn: redis.Redis, workers: WorkerPool, tmp_path: Path) -> None:
    evidence = tmp_path / "ran"
    # RQ's default serializer is pickle: a job written straight into Redis by someone else.
    queue = Queue("default", connection=conn)
    queue.enqueue("pathlib.Path.touch", evidence, job_id="pickled-1")
    wait_for_state(conn, "pickled-1", {b"failed", b"finished"})
    info = dispatch.task_status(conn, "pickled-1")
    assert info["state"] == "failed"
    assert info["refused"] is True and "not JSON" in info["function"]
    assert info["traceback"] and info["traceback"] != "no traceback recorded"
    assert not evidence.exists()


def test_a_killed_worker_process_is_shown_as_lost_before_its_key_expires(
    redis_server: RedisServer, conn: redis.Redis, tmp_path: Path
) -> None:
    start_workers(redis_server, tmp_path, processes=2, node="lossy")
    victim, survivor = own_workers(conn, "lossy")
    os.kill(int(victim.rpartition(".")[2]), signal.SIGKILL)
    deadline = time.monotonic() + 15
    while victim not in healthstore.lost_workers(conn, [victim]):
        assert time.monotonic() < deadline, "the supervisor did not report its dead worker"
        time.sleep(0.1)
    # RQ still lists it (its key lives until its TTL), but status knows better. Wait for the
    # replacement the supervisor starts, so the counts below are not taken mid-registration.
    while len(own_workers(conn, "lossy")) < 3:
        assert time.monotonic() < deadline + 60, "the supervisor did not replace its dead worker"
        time.sleep(0.1)
    assert victim in own_workers(conn, "lossy") and survivor in own_workers(conn, "lossy")
    status = gather(conn)
    assert status.lost_workers == (f"{victim} (killed by SIGKILL)",)
    queue = next(q for q in status.queues if q.name == "default")
    assert queue.workers == 2  # the survivor and the replacement; the dead one does not count
