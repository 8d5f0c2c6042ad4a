"""piblade writes a run's task records itself; they must be the records RQ's own enqueue writes."""

from __future__ import annotations

import time

import pytest
import redis
from rq import Queue, Retry
from rq.job import Job

from piblade import runs, tasks
from piblade.runs import RunRecord

pytestmark = pytest.mark.integration


def _record(retries: int) -> RunRecord:
    return RunRecord(
        id=runs.new_run_id(), job="summary", params={"parts": 3}, total=3, queue="photos", created=time.time(),
        output="runs/x", has_reduce=True, timeout=90, retries=retries, piblade="0.9.0+abc",
    )


PLAN = [{"part": 0, "name": "ä.jpg"}, {"part": 1, "name": "b c"}, {"part": 2, "name": "/x/\"q\""}]


def _rq_enqueue_many(conn: redis.Redis, record: RunRecord, task_path: str, name: str) -> None:
    """What piblade did before writing the records itself: RQ's enqueue_many with the same fields."""
    retry = Retry(max=record.retries) if record.retries else None
    datas = [
        Queue.prepare_data(
            task_path, kwargs=dict(task), job_id=runs.task_id(record.id, index), timeout=record.timeout,
            result_ttl=tasks.RESULT_TTL, failure_ttl=tasks.RESULT_TTL, retry=retry,
            description=f"{name} {index + 1}/{record.total}", meta=tasks.task_meta(record, index, "task"),
        )
        for index, task in enumerate(PLAN)
    ]
    with conn.pipeline() as pipe:
        tasks.queue(conn, record.queue).enqueue_many(datas, pipeline=pipe)
        pipe.execute()


def _snapshot(conn: redis.Redis) -> dict[bytes, object]:
    out: dict[bytes, object] = {}
    for key in conn.keys("*"):
        kind = conn.type(key)
        if kind == b"hash":
            out[key] = {k: v for k, v in conn.hgetall(key).items() if k not in (b"created_at", b"enqueued_at")}
        elif kind == b"list":
            out[key] = conn.lrange(key, 0, -1)
        elif kind == b"set":
            out[key] = conn.smembers(key)
        else:
            out[key] = kind
    return out


@pytest.mark.parametrize("retries", [0, 2])
def test_the_task_records_are_the_ones_rq_writes(redis_server, retries: int) -> None:
    conn = redis_server.admin
    record = _record(retries)
    conn.flushdb()
    with conn.pipeline() as pipe:
        tasks.enqueue_tasks(conn, pipe, record, "jobs.summary.task", "summary", PLAN)
        pipe.execute()
    ours = _snapshot(conn)
    conn.flushdb()
    _rq_enqueue_many(conn, record, "jobs.summary.task", "summary")
    theirs = _snapshot(conn)
    assert ours == theirs
    # And RQ reads them back as the jobs they were.
    conn.flushdb()
    with conn.pipeline() as pipe:
        tasks.enqueue_tasks(conn, pipe, record, "jobs.summary.task", "summary", PLAN)
        pipe.execute()
    for index, task in enumerate(PLAN):
        job = Job.fetch(runs.task_id(record.id, index), connection=conn, serializer=tasks.SERIALIZER)
        assert (job.func_name, list(job.args), job.kwargs) == ("jobs.summary.task", [], task)
        assert job.meta == tasks.task_meta(record, index, "task")
        assert job.get_status(refresh=False) == "queued" and job.origin == "photos"
        assert job.retries_left == (retries or None) and job.timeout == 90
        assert job.enqueued_at is not None and job.created_at is not None
