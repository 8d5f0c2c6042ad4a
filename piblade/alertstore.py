"""Where the alert service keeps its state in Redis: who is active, what is firing, what is still to send.

Keys (all under ``piblade:alerts:``), RQ-style module constants:

* ``piblade:alerts:leader`` — the active service's id (``host:pid:random``), with a TTL it
  renews. ``SET NX PX``: one active per cluster; a standby takes over when it expires.
* ``piblade:alerts:episodes`` — hash key → episode JSON: what is firing now. A restarted
  or standby service reads it, so it never announces an episode a second time.
* ``piblade:alerts:outbox`` — hash id → notice JSON: announcements not yet delivered to
  every target, with the targets still to go. A notice is written in the same transaction
  as its episode change and removed (or trimmed to the targets that failed) only after
  Apprise said it was delivered: a crash between the two can repeat one notice, never lose it.
* ``piblade:alerts:sent`` — the last :data:`SENT_KEPT` notices with their per-target results
  (``alerts list`` and the dashboard show the newest).

Every write of the active service checks, inside the transaction, that it is
still the leader (``WATCH``): one that was paused past its TTL cannot write over
its successor.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from piblade.alertrules import Change, Episode, Transition
from piblade.redisconn import text

LEADER_KEY = "piblade:alerts:leader"
EPISODES_KEY = "piblade:alerts:episodes"
OUTBOX_KEY = "piblade:alerts:outbox"
OUTBOX_SEQ_KEY = "piblade:alerts:outbox:seq"
SENT_KEY = "piblade:alerts:sent"
SENT_KEPT = 200

_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class NotLeader(Exception):
    """This service lost its leadership before a write; the write did not happen."""


@dataclass(frozen=True, slots=True)
class Notice:
    """One announcement (an episode fired or cleared) and the targets it has yet to reach."""

    id: str
    change: str
    key: str
    title: str
    body: str
    created: float
    pending: tuple[str, ...]
    attempts: int = 0
    next_try: float = 0.0
    errors: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "change": self.change, "key": self.key, "title": self.title,
                           "body": self.body, "created": self.created, "pending": list(self.pending),
                           "attempts": self.attempts, "next_try": self.next_try, "errors": dict(self.errors)})

    @classmethod
    def from_json(cls, raw: str | bytes) -> Notice:
        d = json.loads(raw)
        return cls(d["id"], d["change"], d["key"], d["title"], d["body"], float(d["created"]), tuple(d["pending"]),
                   int(d.get("attempts", 0)), float(d.get("next_try", 0.0)), dict(d.get("errors") or {}))


# -- leadership ------------------------------------------------------------------


def acquire(conn: redis.Redis, owner: str, ttl: float) -> bool:
    return bool(conn.set(LEADER_KEY, owner, nx=True, px=int(ttl * 1000)))


def renew(conn: redis.Redis, owner: str, ttl: float) -> bool:
    return bool(conn.eval(_RENEW, 1, LEADER_KEY, owner, int(ttl * 1000)))


def release(conn: redis.Redis, owner: str) -> None:
    conn.eval(_RELEASE, 1, LEADER_KEY, owner)


def leader(conn: redis.Redis) -> str | None:
    value = conn.get(LEADER_KEY)
    return text(value) if value else None


# -- episodes and the outbox ----------------------------------------------------------


def firing(conn: redis.Redis) -> dict[str, Episode]:
    return {text(k): Episode.from_dict(json.loads(v)) for k, v in conn.hgetall(EPISODES_KEY).items()}


def record(conn: redis.Redis, owner: str, changes: Iterable[tuple[Transition, Notice | None]]) -> None:
    """Apply episode changes and queue their notices in one transaction, if ``owner`` still leads."""
    changes = list(changes)
    if not changes:
        return
    with conn.pipeline(transaction=True) as pipe:
        pipe.watch(LEADER_KEY)
        if text(pipe.get(LEADER_KEY) or b"") != owner:
            raise NotLeader
        pipe.multi()
        for transition, notice in changes:
            episode = transition.episode
            if transition.change is Change.FIRE:
                pipe.hset(EPISODES_KEY, episode.key, json.dumps(episode.to_dict()))
            else:
                pipe.hdel(EPISODES_KEY, episode.key)
            if notice is not None:
                pipe.hset(OUTBOX_KEY, notice.id, notice.to_json())
        try:
            pipe.execute()
        except redis.WatchError:
            raise NotLeader from None


def next_ids(conn: redis.Redis, count: int) -> list[str]:
    """Ids for ``count`` new notices, increasing, so the outbox delivers in order."""
    if count <= 0:
        return []
    last = int(conn.incrby(OUTBOX_SEQ_KEY, count))
    return [f"{n:012d}" for n in range(last - count + 1, last + 1)]


def outbox(conn: redis.Redis) -> list[Notice]:
    return sorted((Notice.from_json(v) for v in conn.hvals(OUTBOX_KEY)), key=lambda n: n.id)


def update_notice(conn: redis.Redis, notice: Notice, results: list[dict[str, Any]], *, done: bool) -> None:
    """Keep a partly delivered notice with the targets still to go, or move a finished one to the sent log."""
    pipe = conn.pipeline(transaction=True)
    if done:
        pipe.hdel(OUTBOX_KEY, notice.id)
        entry = {"id": notice.id, "change": notice.change, "key": notice.key, "title": notice.title,
                 "created": notice.created, "finished": time.time(), "results": results}
        pipe.lpush(SENT_KEY, json.dumps(entry))
        pipe.ltrim(SENT_KEY, 0, SENT_KEPT - 1)
    else:
        pipe.hset(OUTBOX_KEY, notice.id, notice.to_json())
    pipe.execute()


def sent(conn: redis.Redis, limit: int = 20) -> list[dict[str, Any]]:
    """The newest delivered (or given-up) notices first."""
    return [json.loads(v) for v in conn.lrange(SENT_KEY, 0, limit - 1)]
