"""The recorder: drains the history stream from Redis into the results database, in batches.

One recorder per cluster (``piblade recorder``: a child of ``piblade local
up``, and of the controller's supervisor on a Pi cluster, which restarts it
when it dies). Each batch is read from
the front of the stream, given the health of each attempt's node while it ran
(from the 24 h of heartbeats in Redis, one round trip per batch), written with
binary COPY in one transaction, and only then trimmed from the stream. A crash
between commit and trim sends the batch again; the database skips what it has.

While PostgreSQL is down the recorder retries every few seconds and the
records wait in Redis (see :mod:`piblade.recordstream` for the bound).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
from redis.exceptions import RedisError

from piblade import healthstore, recordstream, resultsdb
from piblade.errors import PibladeError
from piblade.history import TaskAttempt, health_during

if TYPE_CHECKING:
    from piblade.redisconn import RedisTarget
    from piblade.resultsdb import ResultsTarget

log = logging.getLogger("piblade.recorder")

#: Records per COPY: large enough that a backlog drains fast, small enough for a Pi's memory.
BATCH = 5000
#: The longest an empty stream is waited on (a new record ends the wait at once); also how soon a stop is seen.
IDLE_SECONDS = 0.5
#: How long to wait before trying a database or Redis that failed again.
RETRY_SECONDS = 2.0
#: When a node's interval is unknown, a sample this old still counts for an attempt.
DEFAULT_INTERVAL = 5.0


def with_health(conn: redis.Redis, attempts: tuple[TaskAttempt, ...]) -> list[TaskAttempt]:
    """Each attempt with its node's highest temperature and throttle bits in [started - interval, ended]."""
    if not attempts:
        return []
    intervals = {name: float(info.get("interval") or DEFAULT_INTERVAL)
                 for name, info in healthstore.nodes(conn).items()}
    windows: dict[str, tuple[float, float]] = {}
    for a in attempts:
        start = (a.started if a.started is not None else a.ended) - intervals.get(a.node, DEFAULT_INTERVAL)
        low, high = windows.get(a.node, (start, a.ended))
        windows[a.node] = (min(low, start), max(high, a.ended))
    samples = healthstore.samples_between(conn, windows)
    return [a.with_health(*health_during(a, samples.get(a.node, []), intervals.get(a.node, DEFAULT_INTERVAL)))
            for a in attempts]


def drain_once(conn: redis.Redis, db: Any, *, batch: int = BATCH, copy: bool = True) -> int:
    """Write one batch from the front of the stream and trim it. Returns the records handled (0: empty)."""
    found = recordstream.read_batch(conn, batch)
    if found is None:
        return 0
    resultsdb.record(db, found.runs, with_health(conn, found.attempts), copy=copy)
    recordstream.trim_through(conn, found.last_id)
    return found.size


@dataclass(frozen=True, slots=True)
class RecorderConfig:
    redis: RedisTarget
    results: ResultsTarget
    batch: int = BATCH


def run(config: RecorderConfig, stop: threading.Event | None = None) -> int:
    """Drain until ``stop`` is set; survive Redis and PostgreSQL going away and coming back."""
    from piblade.redisconn import connect

    stop = stop or threading.Event()
    conn: redis.Redis | None = None
    db: Any = None
    outage = ""
    written = 0
    while not stop.is_set():
        try:
            if conn is None:
                conn = connect(config.redis)
            if db is None:
                db = resultsdb.connect(config.results)
                if outage:
                    log.warning("the results database answers again; writing the %d waiting records",
                                recordstream.backlog(conn))
                outage = ""
            count = drain_once(conn, db, batch=config.batch)
            written += count
            if count == 0:
                recordstream.wait_for_records(conn, IDLE_SECONDS)
        except resultsdb.ResultsUnavailable as exc:
            if exc.message != outage:
                log.warning("%s; records wait in Redis (%s)", exc.message, exc.hint or "")
                outage = exc.message
            _close(db)
            db = None
            stop.wait(RETRY_SECONDS)
        except (PibladeError, RedisError, OSError) as exc:
            log.warning("Redis: %s; trying again", exc)
            _close(conn)
            conn = None
            stop.wait(RETRY_SECONDS)
    _close(db)
    _close(conn)
    log.info("recorder stopped after writing %d records", written)
    return 0


def _close(client: Any) -> None:
    """Close a client (broken ones too: neither redis-py's nor psycopg's close raises)."""
    if client is not None:
        client.close()


def wait_until_drained(conn: redis.Redis, timeout: float) -> bool:
    """True once the stream is empty (everything written), False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while recordstream.backlog(conn):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
