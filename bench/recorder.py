"""Run history's cost: worker throughput with task recording on vs off, and COPY vs one INSERT per task.

Same run, same Redis, same PostgreSQL (a private server made like `piblade local up`'s, fsync on):

1. N no-op tasks through 2 warm piblade worker processes with PIBLADE_RECORD_TASKS=0, then the same
   with recording on and the recorder process draining into PostgreSQL meanwhile; the clock runs from
   submit to the last task finished (and, for "on", until every record is in the database too).
2. M task attempt records loaded by `resultsdb.record` with binary COPY (what the recorder does) vs
   one INSERT per record (the plain way), each into empty tables, one transaction each.
3. The recorder end to end (read from Redis, health look-up, COPY, commit, trim), and Redis memory
   per waiting record (what the bound of PIBLADE_RECORDS_BOUND costs).
Usage: python bench/recorder.py [--tasks 2000] [--records 20000] [--processes 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from _servers import env_for, piblade_workers, redis_server, stop, wait_workers

from piblade import dispatch, local, pgserver, recorder, recordstream, resultsdb
from piblade.history import TaskAttempt
from piblade.redisconn import connect
from piblade.registry import load_registry
from piblade.runs import RunRecord


def start_postgres(tmp: Path) -> tuple[subprocess.Popen[bytes], resultsdb.ResultsTarget]:
    server = pgserver.PgServer(tmp / "postgres", tmp / "secrets" / "postgres.password")
    server.initdb(sync=False)
    port = local.free_port()
    log = (tmp / "postgres.log").open("ab")
    proc = subprocess.Popen(server.argv(port), stdout=log, stderr=subprocess.STDOUT)
    target = resultsdb.ResultsTarget("127.0.0.1", port, password_file=server.password_file)
    deadline = time.monotonic() + 60
    while True:
        try:
            resultsdb.connect(target, timeout=2).close()
            return proc, target
        except resultsdb.ResultsUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def attempts(count: int) -> list[TaskAttempt]:
    now = time.time()
    return [
        TaskAttempt(key=f"k{i}", run_id="bench-run", task_id=f"bench-run-{i:05d}", phase="task", index=i,
                    state="finished", node="node1", worker="node1.1234", enqueued=now - 2, started=now - 1,
                    ended=now, max_temp_c=55.5, throttled=0)
        for i in range(count)
    ]


def timed_load(target: resultsdb.ResultsTarget, rows: list[TaskAttempt], *, copy: bool) -> float:
    with resultsdb.connect(target) as db:
        db.execute("TRUNCATE task_attempts")
        db.commit()
        started = time.perf_counter()
        resultsdb.record(db, [], rows, copy=copy)
        seconds = time.perf_counter() - started
        (count,) = db.execute("SELECT count(*) FROM task_attempts").fetchone() or (0,)
        assert count == len(rows), count
    return len(rows) / seconds


def workers_rate(conn, registry, redis_target, results, tmp, args, mode: str) -> tuple[float, float | None]:
    """Tasks/s of one run of ``args.tasks`` no-op tasks on warm workers; for "on" also until all are recorded."""
    os.environ["PIBLADE_RECORD_TASKS"] = "0" if mode == "off" else "1"
    pool = piblade_workers(redis_target, tmp, args.processes)
    os.environ.pop("PIBLADE_RECORD_TASKS")
    rec = None
    if mode == "on":
        env = {**env_for(redis_target, tmp), resultsdb.URL_ENV: results.display,
               resultsdb.PASSWORD_FILE_ENV: str(results.password_file)}
        rec = subprocess.Popen([sys.executable, "-m", "piblade", "recorder"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_workers(conn, args.processes)
        warm = dispatch.submit(conn, registry, "noop", {"count": 50})
        dispatch.wait(conn, warm.id, poll=0.01)
        if rec is not None:
            assert recorder.wait_until_drained(conn, 120)
        conn.delete(recordstream.STREAM_KEY)
        started = time.perf_counter()
        run = dispatch.submit(conn, registry, "noop", {"count": args.tasks})
        status = dispatch.wait(conn, run.id, poll=0.01)
        rate = args.tasks / (time.perf_counter() - started)
        assert status.done == args.tasks, status.counts
        if rec is None:
            assert recordstream.backlog(conn) == 1  # only the run's own record: no task was recorded
            conn.delete(recordstream.STREAM_KEY)
            return rate, None
        assert recorder.wait_until_drained(conn, 120)
        recorded_rate = args.tasks / (time.perf_counter() - started)
        with resultsdb.connect(results) as db:
            found = resultsdb.show_run(db, run.id)
        assert found is not None and found[0].done == args.tasks, found
        return rate, recorded_rate
    finally:
        stop([pool] + ([rec] if rec else []))
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    registry = load_registry()
    out: dict[str, float] = {}
    with redis_server() as (redis_target, _password, tmp):
        pg, results = start_postgres(tmp)
        conn = connect(redis_target)
        try:
            # 1. Workers, recording off and on (the recorder draining meanwhile), in turns: the best
            #    of each, so a neighbour's burst of CPU on this machine does not decide the ratio.
            for round_ in range(args.rounds):
                for mode in ("off", "on"):
                    rate, recorded_rate = workers_rate(conn, registry, redis_target, results, tmp, args, mode)
                    out[f"workers_{mode}"] = max(out.get(f"workers_{mode}", 0.0), rate)
                    if recorded_rate:
                        out["workers_on_recorded"] = max(out.get("workers_on_recorded", 0.0), recorded_rate)
                    print(f"round {round_ + 1}, recording {mode}: {rate:.0f} tasks/s", file=sys.stderr)
            conn.delete(recordstream.STREAM_KEY)

            # 2. COPY vs one INSERT per record.
            rows = attempts(args.records)
            out["insert"] = timed_load(results, rows, copy=False)
            out["copy"] = timed_load(results, rows, copy=True)

            # 3. The recorder end to end, and Redis memory per waiting record.
            with resultsdb.connect(results) as db:
                db.execute("TRUNCATE task_attempts")
                db.commit()
            before = int(conn.info("memory")["used_memory"])
            pipe = conn.pipeline(transaction=False)
            recordstream.add_run(pipe, RunRecord("bench-run", "noop", {"count": args.records}, args.records,
                                                 "default", time.time(), "", False, 60, 0, "bench"))
            for a in rows:
                recordstream.add_attempt(pipe, a)
            pipe.execute()
            out["bytes_per_record"] = (int(conn.info("memory")["used_memory"]) - before) / (len(rows) + 1)
            with resultsdb.connect(results) as db:
                started = time.perf_counter()
                while recorder.drain_once(conn, db):
                    pass
                out["recorder"] = (len(rows) + 1) / (time.perf_counter() - started)
                (count,) = db.execute("SELECT count(*) FROM task_attempts").fetchone() or (0,)
                assert count == len(rows), count
        finally:
            conn.close()
            pg.send_signal(pgserver.STOP_SIGNAL)
            pg.wait(timeout=60)

    print(f"tasks: {args.tasks}, worker processes: {args.processes}, best of {args.rounds} rounds, "
          f"records loaded: {args.records}")
    print(f"workers, recording off:            {out['workers_off']:8.0f} tasks/s")
    print(f"workers, recording on:             {out['workers_on']:8.0f} tasks/s "
          f"({out['workers_on'] / out['workers_off']:.2f}x of off)")
    print(f"  ... until every record is in PostgreSQL: {out['workers_on_recorded']:8.0f} tasks/s")
    print(f"one INSERT per record:             {out['insert']:8.0f} records/s")
    print(f"binary COPY (staging + ON CONFLICT): {out['copy']:6.0f} records/s "
          f"({out['copy'] / out['insert']:.1f}x INSERT)")
    print(f"recorder, Redis -> PostgreSQL:     {out['recorder']:8.0f} records/s")
    print(f"Redis memory per waiting record:   {out['bytes_per_record']:8.0f} bytes "
          f"(the default bound of {recordstream.DEFAULT_BOUND:,}: "
          f"{out['bytes_per_record'] * recordstream.DEFAULT_BOUND / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
