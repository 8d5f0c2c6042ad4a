"""The results database against a real PostgreSQL: migrations, binary COPY, duplicates, errors."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from piblade import resultsdb
from piblade.history import TaskAttempt
from piblade.runs import RunRecord
from piblade.state import write_private
from tests.integration.conftest import PostgresServer


def _run(run_id: str, job: str = "mandelbrot", total: int = 3, created: float | None = None) -> RunRecord:
    return RunRecord(id=run_id, job=job, params={"tiles": total, "name": "é"}, total=total, queue="default",
                     created=created or time.time(), output=f"out/{run_id}", has_reduce=True, timeout=60,
                     retries=1, piblade="0.1.0+test")


def _attempt(run_id: str, index: int, state: str = "finished", ended: float | None = None, **kw: object) -> TaskAttempt:
    ended = ended or time.time()
    values: dict[str, object] = {
        "key": f"{run_id}-{index}-{state}-{ended}", "run_id": run_id, "task_id": f"{run_id}-{index:05d}", "phase": "task",
        "index": index, "state": state, "node": "n1", "worker": "n1.42", "enqueued": ended - 2, "started": ended - 1, "ended": ended,
    }
    values.update(kw)
    return TaskAttempt(**values)  # type: ignore[arg-type]


def test_an_older_schema_is_migrated_forward_and_keeps_its_rows(results: PostgresServer) -> None:
    with resultsdb.connect(results.target, migrate_schema=False) as db:
        assert resultsdb.migrate(db, upto=1) == [1]
        assert resultsdb.schema_version(db) == 1
        # An older piblade wrote history with schema 1 (no indexes yet).
        resultsdb.record(db, [_run("old-1")], [_attempt("old-1", 0)])
    with resultsdb.connect(results.target) as db:  # a newer piblade connects: it migrates on connect
        assert resultsdb.schema_version(db) == resultsdb.SCHEMA_VERSION
        versions = db.execute("SELECT version, piblade FROM piblade_schema ORDER BY version").fetchall()
        indexes = {r[0] for r in db.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
        (summary,) = resultsdb.list_runs(db)
    assert [v for v, _ in versions] == [m.version for m in resultsdb.MIGRATIONS]
    assert all(piblade for _, piblade in versions)
    assert {"runs_submitted", "runs_job_submitted", "task_attempts_run"} <= indexes
    assert (summary.id, summary.done, summary.params) == ("old-1", 1, {"tiles": 3, "name": "é"})
    with resultsdb.connect(results.target) as db:  # and the next start has nothing left to do
        assert resultsdb.migrate(db) == []


def test_a_migration_on_connect_is_committed_even_if_the_caller_never_commits(results: PostgresServer) -> None:
    resultsdb.connect(results.target).close()  # a reader that only looked (closing rolls back what is open)
    with resultsdb.connect(results.target, migrate_schema=False) as db:
        assert resultsdb.schema_version(db) == resultsdb.SCHEMA_VERSION
        held = db.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()
    assert held == (0,)


def test_a_database_from_a_newer_piblade_is_refused(results: PostgresServer) -> None:
    with resultsdb.connect(results.target) as db:
        db.execute("INSERT INTO piblade_schema (version, why, piblade) VALUES (%s, 'future', '9.9')",
                   (resultsdb.SCHEMA_VERSION + 1,))
        db.commit()
    with pytest.raises(resultsdb.SchemaTooNew) as caught:
        resultsdb.connect(results.target)
    assert caught.value.message == (
        f"the results database is at schema version {resultsdb.SCHEMA_VERSION + 1}; "
        f"this piblade knows up to {resultsdb.SCHEMA_VERSION}"
    )
    assert caught.value.hint == "upgrade piblade on this machine (the database was migrated by a newer one)"


def test_copy_loads_a_batch_once_however_often_it_is_sent(results: PostgresServer) -> None:
    now = time.time()
    runs = [_run("r-1", total=2, created=now - 100), _run("r-2", job="summary", total=1, created=now - 50)]
    attempts = [
        _attempt("r-1", 0, "retried", ended=now - 90, error="ValueError: flaky", max_temp_c=61.5, throttled=4),
        _attempt("r-1", 0, ended=now - 80),
        _attempt("r-1", 1, ended=now - 79),
        _attempt("r-2", 0, "failed", ended=now - 40, error='File "x.py", line 3, in f\nZeroDivisionError'),
    ]
    with resultsdb.connect(results.target) as db:
        assert resultsdb.record(db, runs, attempts) == (2, 4)
        # The recorder died after the commit, before trimming the stream: the same batch comes again.
        assert resultsdb.record(db, runs, attempts) == (0, 0)
        listed = resultsdb.list_runs(db)
        only_summary = resultsdb.list_runs(db, job="summary")
        recent = resultsdb.list_runs(db, since=now - 60)
        shown = resultsdb.show_run(db, "r-1")
        assert resultsdb.show_run(db, "nope") is None
    assert [r.id for r in listed] == ["r-2", "r-1"]
    assert [r.id for r in only_summary] == [r.id for r in recent] == ["r-2"]
    r2, r1 = listed
    assert (r1.state, r1.done, r1.failed, r1.attempts, r1.max_temp_c) == ("running", 2, 0, 3, 61.5)
    assert (r2.state, r2.failed) == ("failed", 1)
    assert shown is not None
    summary, rows = shown
    assert summary.id == "r-1"
    assert [(r.task_id, r.attempt, r.state) for r in rows] == [
        ("r-1-00000", 1, "retried"), ("r-1-00000", 2, "finished"), ("r-1-00001", 1, "finished")]
    assert (rows[0].error, rows[0].throttled, rows[0].seconds) == ("ValueError: flaky", 4, 1.0)


def test_a_wrong_password_is_reported_with_the_file_to_check(results: PostgresServer, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.password"
    write_private(wrong, "not-the-password\n")
    target = resultsdb.ResultsTarget("127.0.0.1", results.port, password_file=wrong)
    with pytest.raises(resultsdb.ResultsUnavailable) as caught:
        resultsdb.connect(target)
    assert caught.value.message == (
        f"the results database postgresql://piblade@127.0.0.1:{results.port}/piblade refused the password "
        "of user 'piblade'")
    assert caught.value.hint == f"check the password file {wrong}"
