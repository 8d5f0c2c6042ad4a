"""CSV into PostgreSQL: `piblade submit ingest` with 2 workers vs `psql \\copy`, psycopg 3 `executemany`
and psycopg2 `execute_values`, same run, same server.

The server is a private PostgreSQL made like the local cluster's (``piblade.pgserver``:
initdb, scram-sha-256, fsync on); the CSV files (10 x 1,000,000 rows by default:
int, timestamptz, float8, bool, text) sit in the local cluster's data directory,
which is the share of a local cluster. Each method loads into its own fresh
table after a CHECKPOINT:

* ``piblade``: the whole CLI, ``piblade submit ingest --over 'bench/*.csv' --wait``,
  2 warm worker processes, chunk_mb=16;
* ``\\copy``: one ``psql`` session, ``\\copy … (FORMAT csv, HEADER)`` file after file;
* ``executemany`` (psycopg 3) and ``execute_values`` (psycopg2, default page size
  100): the first ``--subset`` rows (one file) parsed with ``csv``, since
  row-by-row inserts of 10 M rows take too long to repeat.

Prints rows/s, the ratios, each worker's peak RSS (VmHWM) after a small ingest and
after the big one, and where piblade's time goes (task seconds, of which COPY).
Usage: python bench/ingest.py [--files 10] [--rows-per-file 1000000] [--subset 1000000]
Needs the PostgreSQL server binaries and redis-server (`make test` installs both).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from _servers import ROOT, env_for, redis_server, stop, wait_workers

from piblade import local, pgserver, resultsdb
from piblade.redisconn import connect
from piblade.resultsdb import ResultsTarget

COPY = "psql \\copy"
COLUMNS = "sensor integer, ts timestamptz, value double precision, ok boolean, note text"


def write_csv(path: Path, rows: int, seed: int) -> None:
    rnd = random.Random(seed)
    with path.open("w") as fh:
        fh.write("sensor,ts,value,ok,note\n")
        for start in range(0, rows, 100_000):
            fh.write("".join(
                f"{i % 500},2026-12-{i // 86400 % 28 + 1:02d} {i % 86400 // 3600:02d}:{i % 3600 // 60:02d}:"
                f"{i % 60:02d}+00,{rnd.random() * 100:.4f},{'t' if i % 3 else 'f'},note {i % 97}\n"
                for i in range(start, min(rows, start + 100_000))))


def csv_rows(path: Path, limit: int) -> Iterator[list[str]]:
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        for n, row in enumerate(reader):
            if n >= limit:
                return
            yield [v if v != "" else None for v in row]  # type: ignore[misc]


def peak_rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB: now, and the most it ever held."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def worker_pids(supervisor: int) -> list[int]:
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return sorted(int(c) for c in children)


def fresh_table(target: ResultsTarget, name: str) -> None:
    with resultsdb.connect(target) as db:
        db.execute(f"DROP TABLE IF EXISTS {name}")
        db.execute(f"CREATE TABLE {name} ({COLUMNS})")
        db.execute("DELETE FROM ingest_loads")
        db.commit()
        db.autocommit = True
        db.execute("CHECKPOINT")


def count(target: ResultsTarget, name: str) -> int:
    with resultsdb.connect(target) as db:
        row = db.execute(f"SELECT count(*) FROM {name}").fetchone()
        return int(row[0]) if row else 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--rows-per-file", type=int, default=1_000_000)
    parser.add_argument("--subset", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    total = args.files * args.rows_per_file
    with redis_server() as (target, _password, tmp):
        state = tmp / "state"
        share = state / "local" / "data"
        (share / "bench").mkdir(parents=True)
        small = share / "small" / "warm.csv"
        small.parent.mkdir()
        write_csv(small, 100_000, 99)
        files = [share / "bench" / f"readings-{i:02d}.csv" for i in range(args.files)]
        made = time.perf_counter()
        for i, f in enumerate(files):
            write_csv(f, args.rows_per_file, i)
        size = sum(f.stat().st_size for f in files)
        print(f"data: {args.files} files, {total:,} rows, {size / 1e6:.0f} MB (made in {time.perf_counter() - made:.0f}s)")

        pg = pgserver.PgServer(tmp / "postgres", tmp / "secrets" / "postgres.password")
        pg.initdb()
        port = local.free_port()
        server = subprocess.Popen(pg.argv(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        db_target = ResultsTarget("127.0.0.1", port, password_file=pg.password_file)
        deadline = time.monotonic() + 60
        while True:
            try:
                resultsdb.connect(db_target).close()
                break
            except resultsdb.ResultsUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        passfile = tmp / "secrets" / "pgpass"
        passfile.write_text(f"127.0.0.1:{port}:piblade:piblade:{pg.password_file.read_text().strip()}\n")
        passfile.chmod(0o600)
        env = {**env_for(target, tmp), resultsdb.URL_ENV: db_target.display,
               resultsdb.PASSWORD_FILE_ENV: str(pg.password_file), "COLUMNS": "200"}
        workers = subprocess.Popen(
            [sys.executable, "-m", "piblade", "worker", "--processes", str(args.workers), "--data-dir", str(share)],
            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        procs = [workers]
        try:
            conn = connect(target)
            wait_workers(conn, args.workers)
            pids = worker_pids(workers.pid)
            idle = {pid: peak_rss_mib(pid)[0] for pid in pids}

            def submit(pattern: str, table: str) -> tuple[float, dict[str, object]]:
                started = time.perf_counter()
                out = subprocess.run(
                    [sys.executable, "-m", "piblade", "submit", "ingest", "--over", pattern, "-p", f"table={table}",
                     "-p", "chunk_mb=16", "--wait", "--json"],
                    env=env, cwd=ROOT, capture_output=True, text=True, check=True)
                return time.perf_counter() - started, json.loads(out.stdout)

            fresh_table(db_target, "warm")
            submit("small/*.csv", "warm")
            after_small = {pid: peak_rss_mib(pid)[1] for pid in pids}

            results: dict[str, float] = {}
            fresh_table(db_target, "by_piblade")
            seconds, status = submit("bench/*.csv", "by_piblade")
            assert status["state"] == "finished", status
            assert count(db_target, "by_piblade") == total
            results["piblade"] = total / seconds
            after_big = {pid: peak_rss_mib(pid)[1] for pid in pids}
            result = status["result"]
            assert isinstance(result, dict)

            fresh_table(db_target, "by_copy")
            script = "".join(f"\\copy by_copy FROM '{f}' (FORMAT csv, HEADER)\n" for f in files)
            psql = shutil.which("psql") or str(pgserver.find_bin_dir() / "psql")
            started = time.perf_counter()
            subprocess.run([psql, "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port), "-U", "piblade",
                            "-d", "piblade"], input=script, text=True, check=True,
                           env={**os.environ, "PGPASSFILE": str(passfile)})
            results[COPY] = total / (time.perf_counter() - started)
            assert count(db_target, "by_copy") == total

            subset = min(args.subset, args.rows_per_file)
            fresh_table(db_target, "by_executemany")
            started = time.perf_counter()
            with resultsdb.connect(db_target) as db, db.cursor() as cur:
                cur.executemany("INSERT INTO by_executemany VALUES (%s, %s, %s, %s, %s)", csv_rows(files[0], subset))
                db.commit()
            results["psycopg 3 executemany"] = subset / (time.perf_counter() - started)

            import psycopg2
            from psycopg2.extras import execute_values

            fresh_table(db_target, "by_execute_values")
            started = time.perf_counter()
            with psycopg2.connect(host="127.0.0.1", port=port, user="piblade", dbname="piblade",
                                  passfile=str(passfile)) as db2, db2.cursor() as cur2:
                execute_values(cur2, "INSERT INTO by_execute_values VALUES %s", csv_rows(files[0], subset))
            db2.close()
            results["psycopg2 execute_values"] = subset / (time.perf_counter() - started)
            assert count(db_target, "by_execute_values") == subset
        finally:
            stop(procs)
            server.send_signal(pgserver.STOP_SIGNAL)
            server.wait(timeout=120)

    print(f"{'method':26} {'rows':>11} {'rows/s':>11}  vs piblade")
    for name, rate in results.items():
        rows = total if name in ("piblade", COPY) else subset
        print(f"{name:26} {rows:>11,} {rate:>11,.0f}  {results['piblade'] / rate:6.2f}x")
    print(f"piblade / {COPY}: {results['piblade'] / results[COPY]:.2f}x; "
          f"piblade / execute_values: {results['piblade'] / results['psycopg2 execute_values']:.1f}x")
    print(f"piblade's {result['chunks']} tasks: {result['seconds']}s in all, of which COPY {result['copy_s']}s "
          f"(the rest: connecting, the chunk's record, the commit)")
    for pid in pids:
        print(f"worker {pid}: RSS idle {idle[pid]:.0f} MiB, peak after a 100k-row file {after_small[pid]:.0f} MiB, "
              f"after {total:,} rows {after_big[pid]:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
