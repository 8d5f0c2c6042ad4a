"""Tasks enqueued by other piblade code, and workers that say which code they run (real Redis, real workers).

A run submitted before an upgrade is run by the new workers: its tasks either
still fit the job (they run) or fail with "job changed since this run was
submitted", never with a TypeError from inside the job.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from piblade import dispatch, healthstore, runs, tasks
from piblade.clusterstatus import gather
from piblade.registry import code_version, load_registry
from piblade.runs import RunRecord
from tests.integration.conftest import TEST_JOBS, WorkerPool

pytestmark = pytest.mark.integration

OLDER = "0.0.9+0123456789abcdef"


@pytest.fixture(scope="module")
def registry():  # type: ignore[no-untyped-def]
    return load_registry([TEST_JOBS])


def enqueue_as_older_code(conn: redis.Redis, job: str, params: dict[str, Any], plan: list[dict[str, Any]],
                          function: str | None = None) -> RunRecord:
    """A run as an older piblade would have enqueued it: its own parameters and task kwargs."""
    spec = load_registry([TEST_JOBS]).get(job)
    record = RunRecord(id=runs.new_run_id(), job=job, params=params, total=len(plan), queue="default",
                       created=time.time(), output="", has_reduce=spec.reduce is not None, timeout=30, retries=0,
                       piblade=OLDER)
    with conn.pipeline(transaction=True) as pipe:
        runs.save_run(pipe, record)
        tasks.enqueue_tasks(conn, pipe, record, function or spec.task_path, job, plan)
        pipe.execute()
    return record


def test_a_run_records_the_code_that_submitted_it(conn: redis.Redis, registry) -> None:  # type: ignore[no-untyped-def]
    record = dispatch.submit(conn, registry, "test-sleep", {"count": "2"})
    assert runs.load_run(conn, record.id).piblade == code_version()
    assert code_version().startswith("0.1.0+") and len(code_version().split("+")[1]) == 16


def test_a_task_that_still_fits_the_job_runs(conn: redis.Redis, workers: WorkerPool) -> None:
    record = enqueue_as_older_code(conn, "test-sleep", {"count": 3, "seconds": 0.0},
                                   [{"i": i, "seconds": 0.0} for i in range(3)])
    status = dispatch.wait(conn, record.id, timeout=60)
    assert status.state == "finished", status.to_dict()
    assert status.result == {"tasks": 3, "sum": 3}
    (done,) = tasks.fetch_results(conn, [runs.task_id(record.id, 0)])
    assert done is not None and done.value["piblade"] == code_version()


def test_a_task_whose_parameters_changed_fails_with_a_clear_reason(conn: redis.Redis, workers: WorkerPool) -> None:
    # The older code called the parameter "secs"; the task function now takes "seconds".
    record = enqueue_as_older_code(conn, "test-sleep", {"count": 1, "secs": 0.0}, [{"i": 0, "secs": 0.0}])
    status = dispatch.wait(conn, record.id, timeout=60)
    assert status.state == "failed"
    (failure,) = status.failures
    assert failure.summary == (
        f"piblade.registry.JobChanged: job changed since this run was submitted (run {record.id} by piblade "
        f"{OLDER}, this worker runs {code_version()}): test-sleep: its task takes no argument 'secs'; "
        "its task needs 'seconds', which the run does not give"
    )
    assert "TypeError" not in failure.traceback


def test_a_job_that_is_gone_fails_with_a_clear_reason(conn: redis.Redis, workers: WorkerPool) -> None:
    record = enqueue_as_older_code(conn, "test-sleep", {"count": 1, "seconds": 0.0}, [{"i": 0, "seconds": 0.0}],
                                   function="tests.integration.testjobs.renamed_task")
    status = dispatch.wait(conn, record.id, timeout=60)
    (failure,) = status.failures
    assert failure.summary.startswith("piblade.registry.JobChanged: job changed since this run was submitted")
    assert failure.summary.endswith("tests.integration.testjobs.renamed_task is no longer a registered job")


def test_a_reduce_whose_run_parameters_changed_fails_with_a_clear_reason(
    conn: redis.Redis, workers: WorkerPool
) -> None:
    record = enqueue_as_older_code(conn, "test-sleep", {"count": 2, "seconds": 0.0, "colour": "red"},
                                   [{"i": i, "seconds": 0.0} for i in range(2)])
    status = dispatch.wait(conn, record.id, timeout=60)
    assert status.done == 2 and status.state == "failed", status.to_dict()
    (failure,) = status.failures
    assert failure.job_id == runs.reduce_id(record.id)
    assert "job changed since this run was submitted" in failure.summary
    assert "test-sleep: unknown parameter 'colour'" in failure.summary


def test_workers_publish_the_code_they_run(conn: redis.Redis, workers: WorkerPool) -> None:
    assert {w.version for w in tasks.workers(conn)} == {code_version()}
    healthstore.publish(conn, "testnode", {"node": "testnode"}, interval=5)  # as its agent would
    snapshot = gather(conn)
    assert snapshot.versions == {code_version(): ("testnode",)}
    assert snapshot.to_dict()["versions"] == {code_version(): ["testnode"]}
