"""Where node health lives in Redis, written by agents and read by status/dashboard/workers.

Keys (all under ``piblade:health:``):

* ``piblade:health:<node>`` — the latest sample as JSON, with a TTL of about
  three heartbeat intervals. No key means no heartbeat: the node is *down*.
* ``piblade:health:<node>:history`` — a capped stream of samples, long enough
  for a 24-hour chart (``MAXLEN ~ 86400 / interval``).
* ``piblade:health:nodes`` — hash node → JSON ``{role, interval, last_seen}``, so
  a node that stopped beating is still listed, with when it was last seen.
* ``piblade:health:<node>:pause`` — why workers on the node must not take new
  jobs ("hot", "under-voltage", "throttled"); set by the agent with hysteresis,
  with the same TTL as the sample so a dead agent never pauses a node forever.
* ``piblade:health:worker:<worker>:lost`` — how a worker process died
  ("killed by SIGKILL"), set by its supervisor when it reaps it. RQ's key for
  that worker lives on until its TTL (35 s); readers show it as lost meanwhile.

Samples travel as plain dicts (``HealthSample.to_dict()``), so readers need not
import psutil; this module imports nothing but redis and the standard library.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import redis

from piblade.redisconn import text

SAMPLE_KEY = "piblade:health:{}"
HISTORY_KEY = "piblade:health:{}:history"
PAUSE_KEY = "piblade:health:{}:pause"
NODES_KEY = "piblade:health:nodes"
LOST_WORKER_KEY = "piblade:health:worker:{}:lost"
HISTORY_SECONDS = 24 * 3600


def ttl_for(interval: float) -> int:
    """Seconds a sample stays valid: three intervals, at least 2 s."""
    return max(2, math.ceil(3 * interval))


def history_length(interval: float) -> int:
    return max(10, math.ceil(HISTORY_SECONDS / interval))


def publish(
    conn: redis.Redis,
    node: str,
    sample: dict[str, Any],
    *,
    interval: float,
    role: str = "",
    pause: str | None = None,
    history_len: int | None = None,
) -> None:
    """One heartbeat: current sample, history entry, node index, pause flag — one round trip.

    The history is trimmed approximately (cheap: Redis drops whole stream nodes
    of ~100 entries), or to exactly ``history_len`` entries in the same XADD for
    an agent told to keep a short history.
    """
    payload = json.dumps(sample, separators=(",", ":"))
    ttl = ttl_for(interval)
    pipe = conn.pipeline(transaction=False)
    pipe.set(SAMPLE_KEY.format(node), payload, ex=ttl)
    pipe.xadd(HISTORY_KEY.format(node), {"j": payload}, maxlen=history_len or history_length(interval),
              approximate=history_len is None)
    pipe.hset(NODES_KEY, node, json.dumps({"role": role, "interval": interval, "last_seen": time.time()}))
    if pause:
        pipe.set(PAUSE_KEY.format(node), pause, ex=ttl)
    else:
        pipe.delete(PAUSE_KEY.format(node))
    pipe.execute()


def nodes(conn: redis.Redis) -> dict[str, dict[str, Any]]:
    """Every node that ever sent a heartbeat: name → {role, interval, last_seen}."""
    return {text(k): json.loads(v) for k, v in conn.hgetall(NODES_KEY).items()}


def current(conn: redis.Redis, names: list[str] | None = None) -> dict[str, dict[str, Any] | None]:
    """Latest sample per node; ``None`` for a node whose heartbeat expired (down)."""
    names = sorted(nodes(conn)) if names is None else names
    if not names:
        return {}
    raw = conn.mget([SAMPLE_KEY.format(n) for n in names])
    return {n: (json.loads(r) if r else None) for n, r in zip(names, raw, strict=True)}


def history(conn: redis.Redis, node: str, seconds: float = HISTORY_SECONDS, limit: int = 2000) -> list[dict[str, Any]]:
    """Samples of the last ``seconds``, oldest first, thinned to at most ``limit`` points."""
    start_ms = int((time.time() - seconds) * 1000)
    entries = conn.xrange(HISTORY_KEY.format(node), min=str(start_ms), max="+") or []
    if len(entries) > limit:
        step = math.ceil(len(entries) / limit)
        entries = entries[::step]
    return [json.loads(fields[b"j"]) for _, fields in entries if fields]


def window(conn: redis.Redis, node: str, start: float, end: float, limit: int = 2000) -> list[dict[str, Any]]:
    """Samples a node published between ``start`` and ``end`` (epoch seconds), oldest first, thinned to
    at most ``limit``: what a run report shows of the node during the run. Empty once the history
    has been trimmed past ``start`` (it keeps :data:`HISTORY_SECONDS`)."""
    entries = conn.xrange(HISTORY_KEY.format(node), min=str(int(start * 1000)), max=str(int(end * 1000) + 1)) or []
    if len(entries) > limit:
        step = math.ceil(len(entries) / limit)
        entries = entries[::step]
    return [json.loads(fields[b"j"]) for _, fields in entries if fields]


def read_pause(conn: redis.Redis, node: str) -> str | None:
    """Why workers on ``node`` should not take new jobs now, or None."""
    value = conn.get(PAUSE_KEY.format(node))
    return text(value) if value else None


def pauses(conn: redis.Redis, names: list[str]) -> dict[str, str | None]:
    """Pause reason per node in one round trip (``None``: the node may take jobs)."""
    if not names:
        return {}
    raw = conn.mget([PAUSE_KEY.format(n) for n in names])
    return {n: (text(r) if r else None) for n, r in zip(names, raw, strict=True)}


def report_lost_worker(conn: redis.Redis, worker: str, how: str, *, ttl: int) -> None:
    """Record that worker process ``worker`` (``<node>.<pid>``) died, and how."""
    conn.set(LOST_WORKER_KEY.format(worker), json.dumps({"how": how, "at": time.time()}), ex=ttl)


def lost_workers(conn: redis.Redis, names: list[str]) -> dict[str, str]:
    """worker -> how it died, for those of ``names`` that a supervisor reported lost (one round trip)."""
    if not names:
        return {}
    raw = conn.mget([LOST_WORKER_KEY.format(n) for n in names])
    return {n: str(json.loads(r).get("how", "lost")) for n, r in zip(names, raw, strict=True) if r}


def samples_between(
    conn: redis.Redis, windows: dict[str, tuple[float, float]]
) -> dict[str, list[tuple[float, float | None, int | None]]]:
    """Per node, ``(time, temp_c, throttled)`` of each sample in its ``(start, end)`` window (epoch s).

    All nodes in one round trip: the recorder asks once per batch of task records.
    """
    names = sorted(windows)
    pipe = conn.pipeline(transaction=False)
    for node in names:
        start, end = windows[node]
        pipe.xrange(HISTORY_KEY.format(node), min=str(int(start * 1000)), max=str(math.ceil(end * 1000)))
    out: dict[str, list[tuple[float, float | None, int | None]]] = {}
    for node, entries in zip(names, pipe.execute(), strict=True):
        samples = []
        for entry_id, fields in entries or []:
            sample = json.loads(fields[b"j"])
            when = sample.get("time") or int(text(entry_id).split("-")[0]) / 1000
            samples.append((float(when), sample.get("temp_c"), sample.get("throttled")))
        out[node] = samples
    return out
