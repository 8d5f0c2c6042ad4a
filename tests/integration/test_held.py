"""Held batches against RQ's own controls and the node's pause, through a real redis-server and real workers."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from rq.job import Job
from rq.suspension import resume, suspend
from rq.worker import BaseWorker

from piblade import dispatch, healthstore, held, tasks
from piblade.registry import load_registry
from tests.integration.conftest import TEST_JOBS, RedisServer, start_workers, worker_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registry():
    return load_registry([TEST_JOBS])


def _worker_state(conn: redis.Redis, name: str) -> str | None:
    found = [w for w in BaseWorker.all(connection=conn) if w.name == name]
    return found[0].get_state() if found else None


def _starts(marks: Path, total: int) -> list[int]:
    return [len(list(marks.glob(f"{i}.*"))) for i in range(total)]


# Takes every task of a run into its held list before it works, so the test can
# act on a task that is held and certainly not started.
HOLD_THEN_WORK = """
import json, sys
from piblade import tasks
from piblade.redisconn import connect, target_from_env
from piblade.registry import load_registry
from piblade.worker import BladeJob, BladeWorker

load_registry()
conn = connect(target_from_env())
queue = tasks.queue(conn, "cancel-test", job_class=BladeJob)
worker = BladeWorker([queue], connection=conn, name="cancelnode.1")
worker._pace = (sys.argv[1], 0.001)  # quick tasks: the whole run in one batch
worker._take()
print(json.dumps([job_id for job_id, _queue, _list in worker._held]), flush=True)
sys.stdin.readline()  # the test cancels one of them meanwhile
worker.work(burst=True, logging_level="WARNING", with_scheduler=False)
"""


def test_a_held_task_canceled_with_rqs_own_api_does_not_run(
    redis_server: RedisServer, conn: redis.Redis, registry, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    record = dispatch.submit(conn, registry, "test-mark", {"count": 4, "marks": str(marks)}, queue="cancel-test")
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_THEN_WORK, record.id], env=worker_env(redis_server, tmp_path / "state"),
        cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        assert json.loads(line) == record.task_ids  # all held, none started
        Job.fetch(record.task_ids[1], connection=conn, serializer=tasks.SERIALIZER).cancel()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert _starts(marks, 4) == [1, 0, 1, 1]
    statuses = [conn.hget(f"rq:job:{t}", "status") for t in record.task_ids]
    assert statuses == [b"finished", b"canceled", b"finished", b"finished"]
    assert conn.llen(held.held_key("cancelnode.1", "rq:queue:cancel-test")) == 0


def test_rq_suspend_during_a_run_runs_every_task_once_after_resume(
    redis_server: RedisServer, conn: redis.Redis, registry, tmp_path: Path
) -> None:
    """A suspension that comes while a batch is held lets the task already started run first.

    That task used to sit "started" with no heartbeat for the whole suspension
    (failed as abandoned after 20 s by another worker, and run anyway on resume).
    """
    marks = tmp_path / "marks"
    marks.mkdir()
    pool = start_workers(redis_server, tmp_path, processes=1, node="suspended",
                         env={"PIBLADE_BATCH_SECONDS": "2"})
    try:
        (name,) = [w.name for w in BaseWorker.all(connection=conn) if w.name.startswith("suspended.")]
        total = 16
        record = dispatch.submit(conn, registry, "test-mark", {"count": total, "seconds": "0.2", "marks": str(marks)})
        held_list = held.held_key(name, "rq:queue:default")
        deadline = time.monotonic() + 60
        while conn.llen(held_list) < 2:
            assert time.monotonic() < deadline, "the worker never held a batch"
            time.sleep(0.02)
        suspend(conn)
        deadline = time.monotonic() + 60
        while _worker_state(conn, name) != "suspended":
            assert time.monotonic() < deadline, "the worker never suspended"
            time.sleep(0.05)
        statuses = [conn.hget(f"rq:job:{t}", "status") for t in record.task_ids]
        assert b"started" not in statuses, statuses  # nothing left started while the worker waits
        assert conn.llen(held_list) == 0
        resume(conn)
        status = dispatch.wait(conn, record.id, timeout=120)
    finally:
        resume(conn)
        pool.stop()
    assert status.state == "finished" and status.done == total, status.to_dict()
    assert _starts(marks, total) == [1] * total
    ended = collections.Counter(
        (json.loads(fields[b"task"])["task_id"], json.loads(fields[b"task"])["state"])
        for _id, fields in conn.xrange("piblade:records") if b"task" in fields
    )
    assert ended == {(t, "finished"): 1 for t in record.task_ids}


# The node's health agent pauses it right after the worker took tasks, and the
# worker's next look at the pause flag sees it: the worst moment, inside the
# loop that takes and starts tasks.
PAUSE_AFTER_TAKE = """
import sys
from pathlib import Path
from piblade import healthstore, tasks
from piblade.redisconn import connect, target_from_env
from piblade.registry import load_registry
from piblade.worker import BladeJob, BladeWorker, Runtime, configure_runtime

class PausedAfterTake(BladeWorker):
    paused = False

    def _take(self):
        took = super()._take()
        if took and not self.paused:
            self.paused = True
            healthstore.publish(self.connection, "spinnode", {"node": "spinnode"}, interval=10, pause="hot")
            self._last_pause_check = 0.0
        return took

load_registry()
configure_runtime(Runtime(node="spinnode", data_root=Path(sys.argv[1]), threads=1))
conn = connect(target_from_env())
queue = tasks.queue(conn, "spin-test", job_class=BladeJob)
worker = PausedAfterTake([queue], connection=conn, name="spinnode.1")
worker.work(burst=False, logging_level="WARNING", with_scheduler=False)
print("stopped cleanly")
"""


def test_a_pause_that_begins_after_a_take_gives_the_tasks_back_and_waits(
    redis_server: RedisServer, conn: redis.Redis, registry, tmp_path: Path
) -> None:
    record = dispatch.submit(conn, registry, "test-sleep", {"count": "3"}, queue="spin-test")
    proc = subprocess.Popen(
        [sys.executable, "-c", PAUSE_AFTER_TAKE, str(tmp_path / "data")],
        env=worker_env(redis_server, tmp_path / "state"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        # It used to spin on its held tasks at full speed instead, never pausing.
        while _worker_state(conn, "spinnode.1") != "paused: hot":
            assert proc.poll() is None and time.monotonic() < deadline, "the worker never paused"
            time.sleep(0.05)
        assert conn.llen(held.held_key("spinnode.1", "rq:queue:spin-test")) == 0  # it gave them back
        assert [conn.hget(f"rq:job:{t}", "status") for t in record.task_ids] == [b"queued"] * 3
        healthstore.publish(conn, "spinnode", {"node": "spinnode"}, interval=10, pause=None)
        assert dispatch.wait(conn, record.id, timeout=60).state == "finished"
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    assert "stopped cleanly" in out, err


def test_a_take_or_a_wait_first_returns_ids_left_in_the_held_list(conn: redis.Redis) -> None:
    """Ids a take or a wait moved whose reply the worker never got (a Redis error) are not held for ever."""
    queue_key = "rq:queue:leftover"
    held_list = held.held_key("leftover.1", queue_key)
    conn.rpush(queue_key, "r-00002", "r-00003")
    conn.rpush(held_list, "r-00000", "r-00001")
    taken = held.take(conn, [queue_key], "leftover.1", 32, 20_000, "r")
    assert taken == (queue_key, ["r-00000", "r-00001", "r-00002", "r-00003"])
    conn.delete(held_list)
    conn.rpush(held_list, "r-00004")
    assert held.wait(conn, queue_key, "leftover.1", 1, 20_000) == "r-00004"
    assert conn.lrange(held_list, 0, -1) == [b"r-00004"]
    assert conn.llen(queue_key) == 0
