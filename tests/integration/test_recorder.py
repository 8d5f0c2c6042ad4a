"""Run history end to end: real workers, a real Redis stream, the recorder process, a real PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from piblade import dispatch, healthstore, recordstream, resultsdb, runs
from piblade.registry import load_registry
from tests.integration.conftest import (
    TEST_JOBS,
    PostgresServer,
    RedisServer,
    WorkerPool,
    start_workers,
    worker_env,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registry():
    return load_registry([TEST_JOBS])


def history_env(redis_server: RedisServer, results: PostgresServer, tmp: Path) -> dict[str, str]:
    return {
        **worker_env(redis_server, tmp / "state"),
        resultsdb.URL_ENV: results.target.display,
        resultsdb.PASSWORD_FILE_ENV: str(results.server.password_file),
    }


class Recorder:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "piblade", "recorder", "--batch", "50"],
                                         env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def wait_connected(self, results: PostgresServer, timeout: float = 60) -> None:
        """Until the recorder has connected to the database (it migrates the empty schema then)."""
        deadline = time.monotonic() + timeout
        with resultsdb.connect(results.target, migrate_schema=False) as db:
            while not resultsdb.schema_version(db):
                assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
                assert time.monotonic() < deadline, "the recorder did not connect"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


@pytest.fixture
def recorder(redis_server: RedisServer, results: PostgresServer, tmp_path: Path) -> Iterator[Recorder]:
    rec = Recorder(history_env(redis_server, results, tmp_path), tmp_path / "recorder.log")
    yield rec
    rec.stop()


def drained(conn: redis.Redis, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while recordstream.backlog(conn):
        assert time.monotonic() < deadline, f"{recordstream.backlog(conn)} records still wait after {timeout}s"
        time.sleep(0.1)


def test_every_attempt_is_recorded_with_its_node_health_and_failure(
    conn: redis.Redis, workers: WorkerPool, registry, results: PostgresServer, recorder: Recorder, tmp_path: Path
) -> None:
    recorder.start()
    # The node is hot and throttled while the tasks run (as its agent would report).
    now = time.time()
    for temp in (58.0, 71.5, 63.0):
        healthstore.publish(conn, "testnode", {"time": time.time(), "temp_c": temp, "throttled": 0x4},
                            interval=60, role="workers")
    fan = dispatch.submit(conn, registry, "test-sleep", {"count": "12"})
    flaky = dispatch.submit(conn, registry, "test-flaky", {"marker": str(tmp_path / "marker")}, retries=1)
    broken = dispatch.submit(conn, registry, "test-fail", {"message": "no disk"})
    for run in (fan, flaky, broken):
        dispatch.wait(conn, run.id, timeout=60)
    drained(conn)
    with resultsdb.connect(results.target) as db:
        listed = {r.id: r for r in resultsdb.list_runs(db)}
        fan_run, fan_attempts = resultsdb.show_run(db, fan.id) or pytest.fail("no fan-out run")
        _, flaky_attempts = resultsdb.show_run(db, flaky.id) or pytest.fail("no flaky run")
        _, broken_attempts = resultsdb.show_run(db, broken.id) or pytest.fail("no failed run")
    assert set(listed) == {fan.id, flaky.id, broken.id}
    assert (fan_run.state, fan_run.done, fan_run.expected, fan_run.nodes) == ("finished", 13, 13, ("testnode",))
    assert fan_run.params == {"count": 12, "seconds": 0.0}
    assert sorted(a.task_id for a in fan_attempts) == sorted([*fan.task_ids, f"{fan.id}-reduce"])
    assert all(a.max_temp_c == 71.5 and a.throttled == 0x4 for a in fan_attempts)
    assert all(a.worker.startswith("testnode.") and a.started and a.ended >= a.started >= now for a in fan_attempts)
    assert [(a.attempt, a.state) for a in flaky_attempts] == [(1, "retried"), (2, "finished")]
    assert flaky_attempts[0].error.endswith("RuntimeError: first attempt fails")
    assert listed[flaky.id].state == "finished"
    assert [(a.state, a.error.splitlines()[-1]) for a in broken_attempts] == [
        ("failed", "ValueError: test failure: no disk")]
    assert 'in fail_task' in broken_attempts[0].error
    assert listed[broken.id].state == "failed"


def test_records_wait_while_postgres_is_down_and_every_task_is_counted(
    conn: redis.Redis, workers: WorkerPool, registry, results: PostgresServer, recorder: Recorder
) -> None:
    recorder.start()
    recorder.wait_connected(results)  # so that its start-up, slow on a busy machine, is not the run's whole time
    run = dispatch.submit(conn, registry, "test-sleep", {"count": "120", "seconds": "0.1"})
    deadline = time.monotonic() + 60
    with resultsdb.connect(results.target) as db:  # some of the run is written before the server stops
        while not db.execute("SELECT count(*) FROM task_attempts").fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < deadline, "nothing was recorded"
            db.commit()
            time.sleep(0.05)
    results.stop()
    status = dispatch.wait(conn, run.id, timeout=120)
    assert status.state == "finished"
    waiting = recordstream.backlog(conn)
    assert waiting > 0  # the run ended while the database was down: its records wait in Redis
    results.start()
    drained(conn)
    with resultsdb.connect(results.target) as db:
        rows = db.execute("SELECT task_id, count(*) FROM task_attempts GROUP BY task_id").fetchall()
        (summary,) = resultsdb.list_runs(db)
    assert sorted(task for task, _ in rows) == sorted([*run.task_ids, f"{run.id}-reduce"])
    assert all(count == 1 for _, count in rows)  # nothing lost, nothing twice
    assert (summary.state, summary.done, summary.attempts) == ("finished", 121, 121)


def test_submits_are_refused_at_the_bound_and_no_record_is_dropped(
    conn: redis.Redis, registry, results: PostgresServer, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIBLADE_RECORDS_BOUND", "20")
    accepted = [dispatch.submit(conn, registry, "test-sleep", {"count": "4"}) for _ in range(3)]  # 3 records now
    with pytest.raises(recordstream.RecordsBacklogFull) as caught:
        dispatch.submit(conn, registry, "test-sleep", {"count": "16"})
    assert caught.value.message == (
        "3 run records are waiting for the results database (the bound is 20); "
        "new runs are refused until they are written, so that none is lost")
    assert "PIBLADE_RECORDS_BOUND" in (caught.value.hint or "")
    assert recordstream.backlog(conn) == 3  # the refused run left nothing behind
    recorder.start()
    drained(conn)
    refused_no_more = dispatch.submit(conn, registry, "test-sleep", {"count": "16"})
    drained(conn)
    with resultsdb.connect(results.target) as db:
        ids = {r.id for r in resultsdb.list_runs(db)}
    assert ids == {r.id for r in accepted} | {refused_no_more.id}


def test_runs_list_and_show_read_history_after_redis_forgot_the_run(
    redis_server: RedisServer, conn: redis.Redis, workers: WorkerPool, registry, results: PostgresServer,
    recorder: Recorder, tmp_path: Path,
) -> None:
    recorder.start()
    run = dispatch.submit(conn, registry, "test-sleep", {"count": "3"})
    dispatch.wait(conn, run.id, timeout=60)
    drained(conn)
    redis_server.admin.flushdb()  # as if the week's TTL had passed: Redis knows nothing of the run
    env = {**history_env(redis_server, results, tmp_path), "COLUMNS": "80"}
    env.pop("PIBLADE_INVENTORY", None)

    def piblade(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "piblade", *args], env=env, capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    listed = json.loads(piblade("runs", "list", "--json", "--job", "test-sleep", "--since", "1h"))
    assert [(r["id"], r["state"], r["done"]) for r in listed] == [(run.id, "finished", 4)]
    shown = json.loads(piblade("runs", "show", run.id, "--json"))
    assert sorted(a["task_id"] for a in shown["attempts"]) == sorted([*run.task_ids, f"{run.id}-reduce"])
    table = piblade("runs", "list")
    assert run.id in table and "finished" in table and "4/4" in table
    assert not json.loads(piblade("runs", "list", "--json", "--job", "mandelbrot"))
    missing = subprocess.run([sys.executable, "-m", "piblade", "runs", "show", "0000-nothing"], env=env,
                             capture_output=True, text=True, check=False)
    assert missing.returncode == 1
    assert "no run '0000-nothing' in the run history" in missing.stderr


def test_the_dashboard_lists_recorded_runs_after_redis_forgot_them(
    redis_server: RedisServer, conn: redis.Redis, workers: WorkerPool, registry, results: PostgresServer,
    recorder: Recorder,
) -> None:
    from piblade.dashboard.snapshot import SnapshotSource

    recorder.start()
    old = dispatch.submit(conn, registry, "test-sleep", {"count": "2"})
    dispatch.wait(conn, old.id, timeout=60)
    drained(conn)
    redis_server.admin.flushdb()
    live = dispatch.submit(conn, registry, "test-sleep", {"count": "1"})
    dispatch.wait(conn, live.id, timeout=60)
    drained(conn)
    jobs = SnapshotSource(conn, results=results.target).jobs()
    assert [(j["run"], j["state"], j["done"], j.get("recorded", False)) for j in jobs] == [
        (live.id, "finished", 1, False), (old.id, "finished", 2, True)]
    results.stop()  # the database gone: the page still lists what Redis knows
    try:
        assert [j["run"] for j in SnapshotSource(conn, results=results.target).jobs()] == [live.id]
    finally:
        results.start()


def test_the_attempt_of_a_node_that_died_is_recorded_and_so_is_its_retry(
    redis_server: RedisServer, conn: redis.Redis, registry, results: PostgresServer, recorder: Recorder,
    tmp_path: Path,
) -> None:
    recorder.start()
    doomed = start_workers(redis_server, tmp_path / "doomed", processes=1, node="doomed")
    run = dispatch.submit(conn, registry, "test-sleep", {"seconds": "8"}, retries=1)
    task = runs.task_id(run.id, 0)
    deadline = time.monotonic() + 30
    while conn.hget(f"rq:job:{task}", "status") != b"started":
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.05)
    os.killpg(doomed.proc.pid, signal.SIGKILL)  # power loss: nothing on the node records anything
    doomed.proc.wait()
    survivor = start_workers(redis_server, tmp_path / "survivor", processes=1, node="survivor")
    try:
        assert dispatch.wait(conn, run.id, timeout=90).state == "finished"
    finally:
        survivor.stop()
    drained(conn)
    with resultsdb.connect(results.target) as db:
        summary, attempts = resultsdb.show_run(db, run.id) or pytest.fail("the run was not recorded")
    assert [(a.attempt, a.state, a.worker.split(".")[0]) for a in attempts if a.task_id == task] == [
        (1, "retried", "doomed"), (2, "finished", "survivor")]
    assert attempts[0].error.startswith(f"AbandonedJobError: worker {attempts[0].worker} stopped beating")
    assert (summary.state, summary.done) == ("finished", 2)


def test_waiting_for_records_ends_when_one_arrives_and_reads_nothing_away(conn: redis.Redis) -> None:
    """The recorder's idle wait wakes on a new record (not at the end of its wait) and leaves it in the stream."""
    import threading

    def waiting() -> threading.Event:
        woke = threading.Event()
        client = redis.Redis(connection_pool=conn.connection_pool)
        threading.Thread(target=lambda: (recordstream.wait_for_records(client, 60.0), woke.set()), daemon=True).start()
        return woke

    woke = waiting()
    assert not woke.wait(0.3)  # an empty stream: it waits
    conn.xadd(recordstream.STREAM_KEY, {"task": "{}"})
    assert woke.wait(30.0)  # far less than the 60 s it would otherwise wait
    assert recordstream.backlog(conn) == 1
    # A record already there (added between the recorder's empty read and its wait): no wait at all.
    assert waiting().wait(30.0)
