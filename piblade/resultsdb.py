"""The one seam to PostgreSQL: where the results database is, its schema, and bulk loads.

Redis forgets a run after a week; the results database keeps it. Every cluster
has one PostgreSQL database ``piblade`` owned by the user ``piblade``, on the
NAS node unless ``piblade_results_host`` names another node (the local cluster
runs its own server in its state directory). The password is generated like
Redis's into the cluster's 0600 secrets (``secrets/postgres.password``) and is
never part of a URL, an argv or a log line; servers accept it with
``scram-sha-256`` only.

* **The schema is piblade's.** :data:`MIGRATIONS` is the whole history of the
  schema, one numbered step each; :func:`migrate` (run by every writer and
  reader on connect) applies the steps a database has not seen yet, under an
  advisory lock, and records each in ``piblade_schema``. A newer piblade meets
  an older database and brings it forward; an older piblade meeting a newer
  database refuses to write instead of guessing (:class:`SchemaTooNew`).
* **Bulk loads are binary COPY with declared types** (:func:`copy_rows`): the
  fast path of psycopg 3 (``cursor.copy`` + ``set_types``), one round trip per
  batch instead of one per row.
* **CSV files go to the server as CSV** (:func:`load_csv`, the ``ingest``
  job): PostgreSQL's own parser is faster than any parsing in Python, and its
  error context names the line and column of a refused row.

psycopg is imported here and nowhere else; its errors leave this module as
:class:`ResultsUnavailable` (a :class:`~piblade.errors.ClusterError`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from piblade import envvars
from piblade.errors import ClusterError, PibladeError
from piblade.state import read_secret

if TYPE_CHECKING:  # psycopg costs ~60 ms to import: only commands that talk to the database pay it
    import psycopg

    from piblade.history import AttemptRow, RunSummary, TaskAttempt
    from piblade.runs import RunRecord

DEFAULT_PORT = 5432
DEFAULT_DB = "piblade"
DEFAULT_USER = "piblade"
#: The file, in a cluster's secrets directory, that holds the results database's password.
PASSWORD_FILE_NAME = "postgres.password"
URL_ENV = envvars.RESULTS_URL.name
PASSWORD_FILE_ENV = envvars.RESULTS_PASSWORD_FILE.name
#: Serialises migrations of one database between processes (any constant of our own).
_MIGRATION_LOCK = 0x70B1ADE


class ResultsUnavailable(ClusterError):
    """The results database does not answer, refuses our password, or failed a statement."""


class SchemaTooNew(ResultsUnavailable):
    """The database was migrated by a newer piblade than this one."""


@dataclass(frozen=True, slots=True)
class ResultsTarget:
    """Where the results database is and which credential to use. Holds no secret itself."""

    host: str
    port: int = DEFAULT_PORT
    dbname: str = DEFAULT_DB
    user: str = DEFAULT_USER
    password_file: Path | None = None

    @property
    def display(self) -> str:
        """A URL safe to print: never the password."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"

    def conninfo(self) -> dict[str, Any]:
        """psycopg's keyword arguments, the password read from its 0600 file only now."""
        kwargs: dict[str, Any] = {
            "host": self.host, "port": self.port, "dbname": self.dbname, "user": self.user,
            "application_name": "piblade",
        }
        if self.password_file is not None:
            kwargs["password"] = read_secret(self.password_file)
        return kwargs


def target_from_url(url: str, password_file: str | Path | None) -> ResultsTarget:
    """Parse ``postgresql://user@host:port/db``; a password inside the URL is refused."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise PibladeError(f"not a postgresql:// URL: {url!r}", hint="use postgresql://USER@HOST:PORT/DB")
    if parts.password:
        raise PibladeError(
            "a password inside the results database URL is refused (it would show up in process lists and logs)",
            hint=f"put it in a 0600 file and set {PASSWORD_FILE_ENV} to its path",
        )
    return ResultsTarget(
        host=parts.hostname,
        port=parts.port or DEFAULT_PORT,
        dbname=parts.path.lstrip("/") or DEFAULT_DB,
        user=parts.username or DEFAULT_USER,
        password_file=Path(password_file) if password_file else None,
    )


def target_from_env() -> ResultsTarget | None:
    url = os.environ.get(URL_ENV)
    if not url:
        return None
    return target_from_url(url, os.environ.get(PASSWORD_FILE_ENV))


def connect(target: ResultsTarget, *, timeout: float = 10.0, migrate_schema: bool = True) -> psycopg.Connection[Any]:
    """Connect, and bring the schema forward unless told not to; failures say what to do."""
    import psycopg

    try:
        conn = psycopg.connect(**target.conninfo(), connect_timeout=max(1, int(timeout)))
    except psycopg.OperationalError as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else exc.__class__.__name__
        if "password authentication failed" in str(exc):
            raise ResultsUnavailable(
                f"the results database {target.display} refused the password of user {target.user!r}",
                hint=f"check the password file {target.password_file}",
            ) from exc
        raise ResultsUnavailable(
            f"cannot reach the results database {target.display} ({detail})",
            hint="start the local cluster with `piblade local up`, or check PostgreSQL on the results node",
        ) from exc
    if migrate_schema:
        try:
            migrate(conn)
        except BaseException:
            conn.close()
            raise
    return conn


# -- the schema ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the schema's history. Steps are never edited once released: add a new one."""

    version: int
    why: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "runs and task attempts", """
        CREATE TABLE runs (
            id          text PRIMARY KEY,
            job         text NOT NULL,
            params      jsonb NOT NULL,
            queue       text NOT NULL,
            tasks       integer NOT NULL,
            has_reduce  boolean NOT NULL,
            output      text NOT NULL,
            timeout_s   integer NOT NULL,
            retries     integer NOT NULL,
            piblade     text NOT NULL,
            submitted   timestamptz NOT NULL
        );
        -- One row per attempt of a task that ended. `key` is made by the worker
        -- and travels with the record, so a batch loaded twice (the recorder died
        -- between commit and trimming the stream) is a no-op the second time.
        CREATE TABLE task_attempts (
            key         text PRIMARY KEY,
            run_id      text NOT NULL,
            task_id     text NOT NULL,
            phase       text NOT NULL,
            idx         integer NOT NULL,
            state       text NOT NULL,
            node        text NOT NULL,
            worker      text NOT NULL,
            enqueued    timestamptz,
            started     timestamptz,
            ended       timestamptz NOT NULL,
            seconds     double precision,
            max_temp_c  real,
            throttled   integer,
            error       text
        );
    """),
    Migration(2, "indexes for `runs list --job --since` and `runs show`", """
        CREATE INDEX runs_submitted ON runs (submitted DESC);
        CREATE INDEX runs_job_submitted ON runs (job, submitted DESC);
        CREATE INDEX task_attempts_run ON task_attempts (run_id, task_id, ended);
    """),
    Migration(3, "ingest: the chunks of files already loaded into a table", """
        -- A chunk is part `part` of `parts` of the file as it was (size, mtime);
        -- its row is written in the transaction that moves its rows into `tbl`,
        -- so a chunk is in the table exactly when it has a row here.
        CREATE TABLE ingest_loads (
            tbl         text NOT NULL,
            path        text NOT NULL,
            size        bigint NOT NULL,
            mtime_ns    bigint NOT NULL,
            parts       integer NOT NULL,
            part        integer NOT NULL,
            rows        bigint NOT NULL,
            run_id      text NOT NULL,
            loaded      timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tbl, path, size, mtime_ns, parts, part)
        );
    """),
    Migration(4, "run reports: the nodes' health during a run and the job's result, saved by the first report", """
        -- What `piblade report` shows beyond the run history, copied from Redis (which keeps health
        -- 24 hours and results a week) when a run's report is first made.
        CREATE TABLE report_extras (
            run_id  text PRIMARY KEY,
            data    jsonb NOT NULL,
            saved   timestamptz NOT NULL DEFAULT now()
        );
    """),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The newest migration this database has seen; 0 for an empty database."""
    # Committed on every path: an open transaction would turn migrate()'s into a savepoint,
    # and its advisory lock would be held until this connection ends.
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('piblade_schema') IS NOT NULL")
        row = cur.fetchone()
        if row and row[0]:
            cur.execute("SELECT coalesce(max(version), 0) FROM piblade_schema")
            row = cur.fetchone()
        else:
            row = (0,)
    conn.commit()
    return int(row[0]) if row else 0


def migrate(conn: psycopg.Connection[Any], upto: int | None = None) -> list[int]:
    """Apply the migrations this database lacks (up to ``upto``), each in its own transaction.

    Two processes starting at once (the recorder and a CLI command) take turns
    on an advisory lock; the second finds nothing left to do. Returns the
    versions applied.
    """
    import psycopg

    from piblade.registry import code_version

    target = SCHEMA_VERSION if upto is None else upto
    applied: list[int] = []
    try:
        current = schema_version(conn)
        if current > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the results database is at schema version {current}; this piblade knows up to {SCHEMA_VERSION}",
                hint="upgrade piblade on this machine (the database was migrated by a newer one)",
            )
        if current >= target:
            return applied
        with conn.transaction(), conn.cursor() as cur:
            # Bounded: a process stuck holding the lock must not hang every later start.
            cur.execute("SET LOCAL lock_timeout = '60s'")
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            cur.execute(
                "CREATE TABLE IF NOT EXISTS piblade_schema ("
                " version integer PRIMARY KEY, why text NOT NULL,"
                " applied timestamptz NOT NULL DEFAULT now(), piblade text NOT NULL)"
            )
            cur.execute("SELECT coalesce(max(version), 0) FROM piblade_schema")
            row = cur.fetchone()
            current = int(row[0]) if row else 0
            for step in MIGRATIONS:
                if current < step.version <= target:
                    cur.execute(step.sql.encode())
                    cur.execute(
                        "INSERT INTO piblade_schema (version, why, piblade) VALUES (%s, %s, %s)",
                        (step.version, step.why, code_version()),
                    )
                    applied.append(step.version)
    except psycopg.Error as exc:
        raise ResultsUnavailable(f"migrating the results database failed: {exc}",
                                 hint="see the PostgreSQL log on the results node") from exc
    return applied


# -- bulk loads ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Column:
    """A column a COPY writes, with the PostgreSQL type its binary values are sent as."""

    name: str
    type: str


def _table_sql(table: str) -> Any:
    """``name`` or ``schema.name`` as a quoted identifier."""
    from psycopg import sql

    return sql.Identifier(*table.split("."))


def copy_rows(
    cur: psycopg.Cursor[Any], table: str, columns: Sequence[Column], rows: Iterable[Sequence[Any]]
) -> int:
    """``COPY table (columns) FROM STDIN (FORMAT BINARY)`` with declared types. Returns the rows sent.

    Binary COPY needs every value's type up front (``set_types``): a Python
    value of another type fails the row instead of being guessed at.
    """
    from psycopg import sql

    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        _table_sql(table), sql.SQL(", ").join(sql.Identifier(c.name) for c in columns)
    )
    count = 0
    with cur.copy(statement) as copy:
        copy.set_types([c.type for c in columns])
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


def insert_rows(
    cur: psycopg.Cursor[Any], table: str, columns: Sequence[Column], rows: Iterable[Sequence[Any]]
) -> int:
    """One ``INSERT`` per row: the plain alternative :func:`copy_rows` is measured against."""
    from psycopg import sql

    statement = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(table),
        sql.SQL(", ").join(sql.Identifier(c.name) for c in columns),
        sql.SQL(", ").join(sql.SQL("%s::{}").format(sql.SQL(c.type)) for c in columns),
    )
    count = 0
    for row in rows:
        cur.execute(statement, row)
        count += 1
    return count


# -- run history: written by the recorder, read by `piblade runs` and the dashboard ----------

RUN_COLUMNS = (
    Column("id", "text"), Column("job", "text"), Column("params", "jsonb"), Column("queue", "text"),
    Column("tasks", "int4"), Column("has_reduce", "bool"), Column("output", "text"),
    Column("timeout_s", "int4"), Column("retries", "int4"), Column("piblade", "text"),
    Column("submitted", "timestamptz"),
)
ATTEMPT_COLUMNS = (
    Column("key", "text"), Column("run_id", "text"), Column("task_id", "text"), Column("phase", "text"),
    Column("idx", "int4"), Column("state", "text"), Column("node", "text"), Column("worker", "text"),
    Column("enqueued", "timestamptz"), Column("started", "timestamptz"), Column("ended", "timestamptz"),
    Column("seconds", "float8"), Column("max_temp_c", "float4"), Column("throttled", "int4"),
    Column("error", "text"),
)


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def run_row(run: RunRecord) -> tuple[Any, ...]:
    from psycopg.types.json import Jsonb

    return (run.id, run.job, Jsonb(run.params), run.queue, run.total, run.has_reduce, run.output,
            run.timeout, run.retries, run.piblade, _ts(run.created))


def attempt_row(a: TaskAttempt) -> tuple[Any, ...]:
    return (a.key, a.run_id, a.task_id, a.phase, a.index, a.state, a.node, a.worker, _ts(a.enqueued),
            _ts(a.started), _ts(a.ended), a.seconds, a.max_temp_c, a.throttled, a.error or None)


def record(
    conn: psycopg.Connection[Any], runs: Sequence[RunRecord], attempts: Sequence[TaskAttempt], *, copy: bool = True
) -> tuple[int, int]:
    """Load a batch in one transaction; rows already there (same run id, same attempt key) are skipped.

    Rows go by binary COPY into temporary staging tables, then into the real
    ones with ``ON CONFLICT DO NOTHING``: COPY alone cannot skip duplicates,
    and a batch is loaded again whenever the recorder died between the commit
    and trimming the stream. Returns (runs, attempts) newly written.
    ``copy=False`` sends one INSERT per row instead (the benchmark's baseline).
    """
    import psycopg

    write = copy_rows if copy else insert_rows
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE IF NOT EXISTS staging_runs (LIKE runs) ON COMMIT DELETE ROWS")
            cur.execute("CREATE TEMP TABLE IF NOT EXISTS staging_attempts (LIKE task_attempts) ON COMMIT DELETE ROWS")
            new_runs = new_attempts = 0
            if runs:
                write(cur, "staging_runs", RUN_COLUMNS, (run_row(r) for r in runs))
                cur.execute("INSERT INTO runs SELECT * FROM staging_runs ON CONFLICT (id) DO NOTHING")
                new_runs = cur.rowcount
            if attempts:
                write(cur, "staging_attempts", ATTEMPT_COLUMNS, (attempt_row(a) for a in attempts))
                cur.execute("INSERT INTO task_attempts SELECT * FROM staging_attempts ON CONFLICT (key) DO NOTHING")
                new_attempts = cur.rowcount
    except psycopg.Error as exc:
        raise ResultsUnavailable(f"writing run history failed: {exc.__class__.__name__}: {exc}",
                                 hint="the records stay in Redis and are written again") from exc
    return new_runs, new_attempts


_SUMMARY_SQL = """
SELECT r.id, r.job, r.params, r.queue, r.tasks, r.has_reduce, r.submitted, a.started, a.ended,
       coalesce(s.done, 0), coalesce(s.failed, 0), coalesce(a.attempts, 0), coalesce(a.nodes, '{}'),
       a.max_temp, r.piblade, r.output
FROM runs r
LEFT JOIN LATERAL (
    SELECT min(t.started) AS started, max(t.ended) AS ended, count(*) AS attempts,
           array_agg(DISTINCT t.node ORDER BY t.node) AS nodes, max(t.max_temp_c) AS max_temp
    FROM task_attempts t WHERE t.run_id = r.id
) a ON true
LEFT JOIN LATERAL (
    -- each task's outcome: a finished attempt wins, else its latest attempt's state
    SELECT count(*) FILTER (WHERE l.state = 'finished') AS done,
           count(*) FILTER (WHERE l.state IN ('failed', 'stopped')) AS failed
    FROM (SELECT DISTINCT ON (t.task_id) t.state FROM task_attempts t WHERE t.run_id = r.id
          ORDER BY t.task_id, (t.state = 'finished') DESC, t.ended DESC) l
) s ON true
"""


def _summary(row: Sequence[Any]) -> RunSummary:
    from piblade.history import RunSummary

    params = row[2] if isinstance(row[2], dict) else json.loads(row[2])
    return RunSummary(
        id=row[0], job=row[1], params=params, queue=row[3], tasks=row[4], has_reduce=row[5],
        submitted=row[6].timestamp(), started=_epoch(row[7]), ended=_epoch(row[8]), done=int(row[9]),
        failed=int(row[10]), attempts=int(row[11]), nodes=tuple(row[12]),
        max_temp_c=None if row[13] is None else round(float(row[13]), 1), piblade=row[14], output=row[15],
    )


def list_runs(
    conn: psycopg.Connection[Any], *, job: str | None = None, since: float | None = None, limit: int = 50
) -> list[RunSummary]:
    """Newest first, optionally of one job and submitted since ``since`` (epoch seconds)."""
    import psycopg

    try:
        rows = conn.execute(
            _SUMMARY_SQL + " WHERE (%(job)s::text IS NULL OR r.job = %(job)s)"
            " AND (%(since)s::timestamptz IS NULL OR r.submitted >= %(since)s)"
            " ORDER BY r.submitted DESC LIMIT %(limit)s",
            {"job": job, "since": _ts(since), "limit": limit},
        ).fetchall()
        conn.commit()
    except psycopg.Error as exc:
        raise ResultsUnavailable(f"reading run history failed: {exc}") from exc
    return [_summary(row) for row in rows]


def show_run(conn: psycopg.Connection[Any], run_id: str) -> tuple[RunSummary, list[AttemptRow]] | None:
    """One run and every attempt of its tasks (numbered per task), or None if history has no such run."""
    import psycopg

    from piblade.history import AttemptRow

    try:
        found = conn.execute(_SUMMARY_SQL + " WHERE r.id = %s", (run_id,)).fetchone()
        if found is None:
            conn.commit()
            return None
        rows = conn.execute(
            "SELECT task_id, row_number() OVER (PARTITION BY task_id ORDER BY ended), state, node, worker,"
            " enqueued, started, ended, seconds, max_temp_c, throttled, coalesce(error, '')"
            " FROM task_attempts WHERE run_id = %s ORDER BY task_id, ended",
            (run_id,),
        ).fetchall()
        conn.commit()
    except psycopg.Error as exc:
        raise ResultsUnavailable(f"reading run history failed: {exc}") from exc
    attempts = [
        AttemptRow(task_id=r[0], attempt=int(r[1]), state=r[2], node=r[3], worker=r[4], enqueued=_epoch(r[5]),
                   started=_epoch(r[6]), ended=r[7].timestamp(), seconds=r[8],
                   max_temp_c=None if r[9] is None else round(float(r[9]), 1), throttled=r[10], error=r[11])
        for r in rows
    ]
    return _summary(found), attempts


# -- ingest: CSV files into a table of the user's ----------------------------------------------

#: A table name piblade creates for a job: what PostgreSQL takes unquoted (lower case, at most 63 bytes).
TABLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
#: Tables of piblade's own, never a job's: every table a migration creates, and anything named piblade_*.
OWN_TABLES = frozenset({"runs", "task_attempts", "ingest_loads", "piblade_schema"})


def check_table_name(job: str, table: str) -> str:
    """``name`` or ``schema.name`` of plain lower-case identifiers, and none of piblade's own tables. Pure.

    Checked before anything is enqueued; names are also quoted as identifiers
    wherever they reach SQL, so this is about clear refusals, not injection.
    """
    from piblade.errors import BadParameter

    parts = table.split(".")
    if len(parts) > 2 or not all(TABLE_NAME.fullmatch(p) for p in parts):
        raise BadParameter(
            f"{job}: table={table[:60]} is not a table name",
            hint="give table=NAME or table=SCHEMA.NAME: lower-case letters, digits and '_', starting with a letter",
        )
    name = parts[-1]
    if (len(parts) == 1 or parts[0] == "public") and (name in OWN_TABLES or name.startswith("piblade_")):
        raise BadParameter(
            f"{job}: table={table} is one of piblade's own tables in the results database",
            hint="give a table of your own, e.g. table=readings",
        )
    return table


#: Session memory for the staging table before it spills to disk (PostgreSQL's default is 8 MB).
STAGING_BUFFERS = "64MB"


@dataclass(frozen=True, slots=True)
class LoadKey:
    """Which bytes a load is: part ``part`` of ``parts`` of a file as it was (size, mtime), into ``table``."""

    table: str
    path: str
    size: int
    mtime_ns: int
    part: int
    parts: int


@dataclass(frozen=True, slots=True)
class Loaded:
    """What :func:`load_csv` did: rows written into the table now, or ``already`` loaded by an earlier run.

    ``duplicates``: rows left out because the table had them (``skip_duplicates``).
    ``copy_s`` and ``move_s``: seconds of the COPY and of the move from staging, where the time goes.
    ``columns``: the table's (name, type) pairs, as PostgreSQL names the types.
    """

    rows: int
    already: bool
    duplicates: int = 0
    copy_s: float = 0.0
    move_s: float = 0.0
    columns: tuple[tuple[str, str], ...] = ()


class CopyRefused(PibladeError):
    """PostgreSQL refused a row: its line in the COPY stream (1-based) and, when it says, the column."""

    def __init__(self, detail: str, line: int, column: str, position: int) -> None:
        super().__init__(detail)
        self.detail, self.line, self.column, self.position = detail, line, column, position


class TableMismatch(PibladeError):
    """The file's columns are not the target table's, or the file was loaded before in other chunks."""


_COPY_CONTEXT = re.compile(r"COPY \S+, line (\d+)(?:, column (\w+))?")


def table_columns(conn: psycopg.Connection[Any], table: str) -> list[tuple[str, str]] | None:
    """The table's columns and types in order, or None when there is no such table."""
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
        " WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (table,),
    ).fetchall()
    return [(str(n), str(t)) for n, t in rows] or None


def ensure_table(
    conn: psycopg.Connection[Any], table: str, create: Callable[[], Sequence[tuple[str, str]]]
) -> list[tuple[str, str]]:
    """The table's columns; a missing table is created first with ``create()``'s (name, type) columns.

    Several tasks of a run meet a missing table at once: they take turns on an
    advisory lock, and the first one creates it.
    """
    from psycopg import sql

    with conn.transaction():
        found = table_columns(conn, table)
        if found is not None:
            return found
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("piblade-ingest-create " + table,))
        found = table_columns(conn, table)
        if found is not None:
            return found
        wanted = create()
        if "." in table:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(table.split(".")[0])))
        conn.execute(sql.SQL("CREATE TABLE {} ({})").format(
            _table_sql(table),
            sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in wanted)))
        return table_columns(conn, table) or []


def load_csv(
    target: ResultsTarget,
    key: LoadKey,
    columns: Sequence[str],
    data: Iterable[bytes],
    *,
    create: Callable[[], Sequence[tuple[str, str]]],
    skip_header: bool,
    run_id: str,
    skip_duplicates: bool = False,
) -> Loaded:
    """Load CSV bytes into ``key.table`` once, in one transaction with the record of the chunk.

    The bytes go to ``COPY … FROM STDIN (FORMAT csv)`` straight into the table;
    with ``skip_duplicates`` into a temporary staging table first, then
    ``INSERT … SELECT … ON CONFLICT DO NOTHING``, which is what a staging
    table buys (COPY cannot skip a row) and what it costs: the move inserts
    row by row, where COPY inserts a thousand at a time (about 40% of a
    load's time in the benchmark). ``columns`` are the file's columns in file order (empty: the table's, in
    table order); ``create()`` gives (name, type) pairs when the table does not
    exist yet (their types are the only place they matter). The chunk is
    recorded in ``ingest_loads`` in the same transaction as its rows, under an
    advisory lock on the chunk, so a chunk loaded before (or by a task running
    at the same time) is skipped, and a connection cut mid-COPY leaves nothing.
    A refused row raises :class:`CopyRefused`.
    """
    import psycopg

    names = list(columns)
    try:
        with connect(target) as conn:
            conn.execute(f"SET temp_buffers = '{STAGING_BUFFERS}'")  # before the session's first temp table
            existing = ensure_table(conn, key.table, create)
            names = names or [n for n, _ in existing]
            missing = [n for n in names if n not in dict(existing)]
            if missing:
                raise TableMismatch(
                    f"ingest: {key.path} has column(s) {', '.join(missing)}, which table {key.table} does not "
                    f"(its columns: {', '.join(n for n, _ in existing)})",
                    hint="load into a new table, or give header=false with a schema to load by position",
                )
            loaded = _load_chunk(conn, key, names, data, skip_header=skip_header, run_id=run_id,
                                 skip_duplicates=skip_duplicates)
            return dataclasses.replace(loaded, columns=tuple(existing))
    except psycopg.Error as exc:
        context = _COPY_CONTEXT.search(getattr(exc.diag, "context", None) or "")
        detail = exc.diag.message_primary or str(exc)
        if context is not None:
            column = context.group(2) or ""
            position = names.index(column) + 1 if column in names else 0
            raise CopyRefused(detail, int(context.group(1)), column, position) from None
        if isinstance(exc, psycopg.OperationalError):
            raise ResultsUnavailable(f"loading {key.path} into {key.table} failed: {detail}",
                                     hint="nothing of this chunk was kept; run it again when the database is back") from exc
        raise TableMismatch(f"ingest: loading {key.path} into {key.table} failed: {detail}",
                            hint="nothing of this chunk was kept") from exc


def _load_chunk(
    conn: psycopg.Connection[Any], key: LoadKey, names: list[str], data: Iterable[bytes], *, skip_header: bool,
    run_id: str, skip_duplicates: bool,
) -> Loaded:
    from psycopg import sql

    where = (key.table, key.path, key.size, key.mtime_ns)
    cols = sql.SQL(", ").join(sql.Identifier(n) for n in names)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                     ("piblade-ingest " + " ".join(map(str, (*where, key.parts, key.part))),))
        earlier = conn.execute(
            "SELECT parts, part, rows FROM ingest_loads WHERE tbl = %s AND path = %s AND size = %s AND mtime_ns = %s",
            where,
        ).fetchall()
        for parts, part, rows in earlier:
            if (parts, part) == (key.parts, key.part):
                return Loaded(int(rows), already=True)
        if any(parts != key.parts for parts, _, _ in earlier):
            raise TableMismatch(
                f"ingest: {key.path} was loaded into {key.table} before in {earlier[0][0]} chunk(s), "
                f"now in {key.parts}",
                hint="submit it with the chunk_mb of the first load, so its chunks are known",
            )
        into = sql.Identifier("ingest_staging") if skip_duplicates else _table_sql(key.table)
        if skip_duplicates:
            conn.execute(sql.SQL("CREATE TEMP TABLE ingest_staging (LIKE {}) ON COMMIT DROP").format(
                _table_sql(key.table)))
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv, HEADER {}, ENCODING 'UTF8')").format(
            into, cols, sql.SQL("true" if skip_header else "false"))
        started = time.perf_counter()
        with conn.cursor() as cur:
            with cur.copy(statement) as copy:
                for block in data:
                    copy.write(block)
            copied = moved = cur.rowcount
            done_copy = time.perf_counter()
            if skip_duplicates:
                cur.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM ingest_staging ON CONFLICT DO NOTHING").format(
                    _table_sql(key.table), cols, cols))
                moved = cur.rowcount
        conn.execute(
            "INSERT INTO ingest_loads (tbl, path, size, mtime_ns, parts, part, rows, run_id)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (*where, key.parts, key.part, moved, run_id),
        )
    return Loaded(moved, already=False, duplicates=copied - moved, copy_s=done_copy - started,
                  move_s=time.perf_counter() - done_copy)


# -- rows a task emits (TaskContext.emit) ----------------------------------------------------

#: The columns every emitted row starts with: which run and which task (or reduce) wrote it.
EMIT_KEY = (Column("run_id", "text"), Column("task", "int4"))


def emit_rows(
    target: ResultsTarget, table: str, columns: Sequence[Column], rows: Iterable[Sequence[Any]], *,
    run_id: str, task: int,
) -> int:
    """A task's rows into ``table``, replacing what an earlier attempt of the same task wrote.

    Binary COPY with declared types (the worker made the values, so no text
    is parsed on either side), after deleting the task's old rows, in one
    transaction: a task that RQ runs twice leaves its rows once. The table is
    created with ``run_id``, ``task`` and ``columns`` when missing. Returns the rows written.
    """
    import psycopg
    from psycopg import sql

    every = (*EMIT_KEY, *columns)
    try:
        with connect(target) as conn:
            ensure_table(conn, table, lambda: [(c.name, c.type) for c in every])
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(sql.SQL("DELETE FROM {} WHERE run_id = %s AND task = %s").format(_table_sql(table)),
                            (run_id, task))
                count = copy_rows(cur, table, every, ((run_id, task, *row) for row in rows))
    except psycopg.Error as exc:
        raise ResultsUnavailable(f"writing rows into {table} failed: {exc.__class__.__name__}: {exc}",
                                 hint="check the table's columns against the job's (a table made by hand may differ)") from exc
    return count


# -- run reports: what `piblade report` keeps beyond the run history ---------------------------


def save_report_extras(conn: psycopg.Connection[Any], run_id: str, data: Mapping[str, Any]) -> None:
    """Keep (or replace) a run's report extras: ``{"health": [...], "result": ...}`` as JSON."""
    import psycopg
    from psycopg.types.json import Jsonb

    try:
        conn.execute(
            "INSERT INTO report_extras (run_id, data) VALUES (%s, %s)"
            " ON CONFLICT (run_id) DO UPDATE SET data = excluded.data, saved = now()",
            (run_id, Jsonb(dict(data))),
        )
        conn.commit()
    except psycopg.Error as exc:
        conn.rollback()
        raise ResultsUnavailable(f"saving the report data of run {run_id} failed: {exc}") from exc


def load_report_extras(conn: psycopg.Connection[Any], run_id: str) -> dict[str, Any] | None:
    """A run's report extras as saved by its first report, or None."""
    import psycopg

    try:
        row = conn.execute("SELECT data FROM report_extras WHERE run_id = %s", (run_id,)).fetchone()
        conn.commit()
    except psycopg.Error as exc:
        conn.rollback()
        raise ResultsUnavailable(f"reading the report data of run {run_id} failed: {exc}") from exc
    if row is None:
        return None
    data = row[0] if isinstance(row[0], dict) else json.loads(row[0])
    return dict(data)
