"""The ``ingest`` job against a real PostgreSQL: types, a refused row, a re-run, a worker killed mid-file."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs import ingest
from piblade import dispatch, resultsdb, runs
from piblade.registry import TaskContext, load_registry
from tests.integration.conftest import PostgresServer, RedisServer, start_workers

pytestmark = pytest.mark.integration


def context(root: Path, results: PostgresServer, run_id: str = "run-1") -> TaskContext:
    return TaskContext(run_id=run_id, index=0, total=1, node="here", data_root=root, output_dir=root,
                       results=results.target)


def load(root: Path, results: PostgresServer, path: str, table: str, *, schema: str = "", header: bool = True,
         chunk_mb: int = 0, run_id: str = "run-1") -> list[dict[str, Any]]:
    """Run every task of the file as ``submit --over`` plans them, in this process."""
    params = load_registry().get("ingest").validate(
        {"path": path, "table": table, "schema": schema, "header": header, "chunk_mb": chunk_mb})
    tasks = ingest.split_file(params, (root / path).stat().st_size)
    return [ingest.task(context(root, results, run_id), **kwargs) for kwargs in tasks]


def query(results: PostgresServer, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with resultsdb.connect(results.target) as db:
        return db.execute(sql, params or None).fetchall()


def test_types_come_from_the_header_and_a_sample_or_from_the_declared_schema(results: PostgresServer, tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "a.csv").write_text(
        "Sensor,When,Value,OK,Day,Local time,Note\n"
        "1,2026-12-04 10:00:00+00,20.5,t,2026-12-04,2026-12-04T10:00:00,\"hello, world\"\n"
        "2,2026-12-04 10:00:01+01,,false,2026-12-05,2026-12-04T10:00:01,\n"
        "3,2026-12-04T10:00:02Z,1e3,yes,2026-12-06,2026-12-04 10:00:02,plain\n"
    )
    done = load(tmp_path, results, "logs/a.csv", "readings")
    assert [(d["rows"], d["already_loaded"]) for d in done] == [(3, False)]
    columns = query(results, "SELECT column_name, data_type FROM information_schema.columns"
                             " WHERE table_name = 'readings' ORDER BY ordinal_position")
    assert columns == [("sensor", "bigint"), ("when", "timestamp with time zone"), ("value", "double precision"),
                       ("ok", "boolean"), ("day", "date"), ("local_time", "timestamp without time zone"),
                       ("note", "text")]
    rows = query(results, "SELECT sensor, \"when\", value, ok, day, note FROM readings ORDER BY sensor")
    utc = dt.UTC
    assert rows == [
        (1, dt.datetime(2026, 12, 4, 10, tzinfo=utc), 20.5, True, dt.date(2026, 12, 4), "hello, world"),
        (2, dt.datetime(2026, 12, 4, 9, 0, 1, tzinfo=utc), None, False, dt.date(2026, 12, 5), None),
        (3, dt.datetime(2026, 12, 4, 10, 0, 2, tzinfo=utc), 1000.0, True, dt.date(2026, 12, 6), "plain"),
    ]

    # Declared: the header's columns in any order, types as given.
    (tmp_path / "logs" / "b.csv").write_text("value,sensor\n1.5,7\n2.5,8\n")
    load(tmp_path, results, "logs/b.csv", "lab.declared", schema="sensor:int, value:real")
    assert query(results, "SELECT column_name, data_type FROM information_schema.columns"
                          " WHERE table_schema = 'lab' AND table_name = 'declared' ORDER BY ordinal_position") == [
        ("sensor", "integer"), ("value", "real")]
    assert query(results, "SELECT sensor, value FROM lab.declared ORDER BY sensor") == [(7, 1.5), (8, 2.5)]


def test_a_refused_row_names_its_file_line_and_column_and_nothing_of_its_chunk_is_kept(
    results: PostgresServer, tmp_path: Path
) -> None:
    lines = ["id,value"] + [f"{i},{i * 0.5}" for i in range(100_000)]
    bad = 87_654  # a line of the file, 1-based, in its third 512 KiB chunk or later
    lines[bad - 1] = f"{bad - 2},not-a-number"
    (tmp_path / "big.csv").write_text("\n".join(lines) + "\n")
    params = load_registry().get("ingest").validate({"path": "big.csv", "table": "t", "schema": "id:int,value:float"})
    tasks = [{**ingest.split(params)[0], "part": i, "parts": 4} for i in range(4)]  # four chunks of ~400 KiB
    outcomes: list[Any] = []
    for kwargs in tasks:
        try:
            outcomes.append(ingest.task(context(tmp_path, results), **kwargs)["rows"])
        except ingest.RowRefused as exc:
            outcomes.append(exc.message)
    message = f'ingest: big.csv:{bad}:2 (column value): invalid input syntax for type double precision: "not-a-number"'
    assert message in outcomes
    refused = outcomes.index(message)
    assert refused >= 2
    loaded = sum(o for o in outcomes if isinstance(o, int))
    assert query(results, "SELECT count(*) FROM t") == [(loaded,)]
    assert query(results, "SELECT count(*) FROM ingest_loads WHERE part = %s", refused) == [(0,)]
    assert 100_000 - loaded > 0


def test_a_rerun_of_the_same_file_adds_nothing_and_a_changed_file_loads_again(
    results: PostgresServer, tmp_path: Path
) -> None:
    path = tmp_path / "day.csv"
    path.write_text("id,v\n" + "".join(f"{i},{i}\n" for i in range(300_000)))
    chunks = -(-path.stat().st_size // ingest.MIB)
    first = load(tmp_path, results, "day.csv", "days", chunk_mb=1)
    assert len(first) == chunks > 1 and sum(d["rows"] for d in first) == 300_000
    assert not any(d["already_loaded"] for d in first)
    again = load(tmp_path, results, "day.csv", "days", chunk_mb=1, run_id="run-2")
    assert [d["already_loaded"] for d in again] == [True] * chunks
    assert query(results, "SELECT count(*), count(DISTINCT id) FROM days") == [(300_000, 300_000)]

    with pytest.raises(resultsdb.TableMismatch, match=rf"was loaded into days before in {chunks} chunk\(s\), now in 1"):
        load(tmp_path, results, "day.csv", "days", chunk_mb=0)

    with path.open("a") as fh:  # the file grew: it is another file now
        fh.write("300000,300000\n")
    load(tmp_path, results, "day.csv", "days", chunk_mb=1, run_id="run-3")
    assert query(results, "SELECT count(*) FROM days") == [(300_000 + 300_001,)]


def test_bad_parameters_are_refused_before_anything_is_enqueued(redis_server: RedisServer, conn: redis.Redis) -> None:
    registry = load_registry()
    cases = {
        "table=runs": "ingest: table=runs is one of piblade's own tables in the results database",
        "table=Readings; drop": "ingest: table=Readings; drop is not a table name",
        "schema=a:int,b": "ingest: schema entry b is not NAME:TYPE",
        "schema=a:integr": "ingest: schema column 'a' has an unknown type integr",
    }
    for given, message in cases.items():
        key, _, value = given.partition("=")
        params = {"table": "readings", key: value}
        with pytest.raises(Exception) as caught:
            dispatch.submit_over(conn, registry, "ingest", params, ["a.csv"], pattern="*.csv", sizes={"a.csv": 10})
        assert getattr(caught.value, "message", None) == message
    assert redis_server.admin.dbsize() == 0


def test_a_worker_killed_mid_file_loses_nothing_and_duplicates_nothing(
    redis_server: RedisServer, conn: redis.Redis, results: PostgresServer, tmp_path: Path
) -> None:
    rows = 1_200_000
    data = tmp_path / "shared"
    (data / "logs").mkdir(parents=True)
    with (data / "logs" / "big.csv").open("w") as fh:
        fh.write("id,sensor,value\n")
        for start in range(0, rows, 100_000):
            fh.write("".join(f"{i},{i % 97},{i * 0.25}\n" for i in range(start, start + 100_000)))
    size = (data / "logs" / "big.csv").stat().st_size
    env = {resultsdb.URL_ENV: results.target.display,
           resultsdb.PASSWORD_FILE_ENV: str(results.target.password_file)}
    for pool in ("doomed", "survivor"):  # both nodes mount the same share
        (tmp_path / pool).mkdir()
        (tmp_path / pool / "data").symlink_to(data)
    doomed = start_workers(redis_server, tmp_path / "doomed", processes=1, node="doomed", env=env)
    record = dispatch.submit_over(conn, load_registry(), "ingest", {"table": "big", "chunk_mb": "4"}, ["logs/big.csv"],
                                  pattern="logs/*.csv", sizes={"logs/big.csv": size}, retries=1)
    assert record.total == -(-size // (4 * ingest.MIB)) > 3
    with resultsdb.connect(results.target) as db:  # wait until a chunk is half way through its COPY
        deadline = time.monotonic() + 60
        while not db.execute("SELECT count(*) FROM pg_stat_progress_copy WHERE tuples_processed > 1000").fetchone()[0]:
            assert time.monotonic() < deadline, "no COPY started"
            db.commit()
            time.sleep(0.02)
    os.killpg(doomed.proc.pid, signal.SIGKILL)  # the node dies: no cleanup, the connection just drops
    doomed.proc.wait()
    ids = [runs.task_id(record.id, i) for i in range(record.total)]
    assert [conn.hget(f"rq:job:{i}", "status") for i in ids].count(b"started") == 1  # killed with a chunk in hand
    survivor = start_workers(redis_server, tmp_path / "survivor", processes=2, node="survivor", env=env)
    try:
        status = dispatch.wait(conn, record.id, timeout=120)
    finally:
        survivor.stop()
    assert status.state == "finished", status.failures
    assert query(results, "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM big") == [
        (rows, rows, 0, rows - 1)]
    assert query(results, "SELECT count(*), sum(rows) FROM ingest_loads WHERE tbl = 'big'") == [(record.total, rows)]


def test_jobs_emit_rows_through_the_task_context_once_per_task(results: PostgresServer, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from jobs import imaging, summary

    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8)).save(tmp_path / "pic.png")
    for attempt in range(2):  # RQ may run a task twice: its rows are there once
        ctx = TaskContext(run_id="r1", index=3, total=5, node="here", data_root=tmp_path,
                          output_dir=tmp_path / "out", results=results.target)
        imaging.task(ctx, path="pic.png", op="grayscale", size=1024, sigma=2.0, radius=0, table="pictures")
    assert query(results, "SELECT run_id, task, input, output, op, width, height FROM pictures") == [
        ("r1", 3, "pic.png", "out/pic.png", "grayscale", 8, 6)]

    params = {"path": "data.f8", "lo": 0.0, "hi": 0.0, "bins": 20, "table": "stats"}
    parts = [{**summary.empty_stats(), "count": 2, "sum": 3.0, "mean": 1.5, "m2": 0.5, "min": 1.0, "max": 2.0}]
    ctx = TaskContext(run_id="r2", index=1, total=1, node="here", data_root=tmp_path, output_dir=tmp_path,
                      results=results.target)
    summary.reduce(ctx, params, parts)
    summary.reduce(ctx, params, parts)
    assert query(results, "SELECT run_id, task, path, count, mean, std, min, max, sum, skipped FROM stats") == [
        ("r2", 1, "data.f8", 2, 1.5, 0.5, 1.0, 2.0, 3.0, 0)]
    with pytest.raises(resultsdb.ResultsUnavailable, match="knows of no results database"):
        summary.reduce(TaskContext(run_id="r3", index=1, total=1, node="here", data_root=tmp_path,
                                   output_dir=tmp_path), params, parts)


def test_rows_the_table_has_already_are_refused_or_skipped_through_staging(results: PostgresServer, tmp_path: Path) -> None:
    with resultsdb.connect(results.target) as db:
        db.execute("CREATE TABLE keyed (id integer PRIMARY KEY, v text)")
        db.execute("INSERT INTO keyed VALUES (2, 'old'), (4, 'old')")
        db.commit()
    (tmp_path / "k.csv").write_text("id,v\n1,new\n2,new\n3,new\n4,new\n")
    with pytest.raises(ingest.RowRefused) as caught:
        load(tmp_path, results, "k.csv", "keyed")
    assert caught.value.message.startswith('ingest: k.csv:3: duplicate key value violates unique constraint "keyed_pkey"')
    params = load_registry().get("ingest").validate({"path": "k.csv", "table": "keyed", "duplicates": "skip"})
    (done,) = [ingest.task(context(tmp_path, results), **t) for t in ingest.split_file(params, 40)]
    assert (done["rows"], done["duplicates"]) == (2, 2)
    assert query(results, "SELECT id, v FROM keyed ORDER BY id") == [(1, "new"), (2, "old"), (3, "new"), (4, "old")]
