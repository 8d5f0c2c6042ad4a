"""Tasks a worker took off the queue and has not started yet: its held batch, and getting them back.

Under load a worker takes several queued tasks of one run in one round trip
(:func:`take`) instead of one (RQ's LMOVE, then an HGETALL for the job). They
move, in one Lua script, from RQ's queue list to a list of the worker's own,
``piblade:held:<worker>:<queue key>``, and stay "queued" in RQ's eyes. A held
task is started only if it is still in that list: the removal and RQ's
start-up writes run in one script (:func:`run_then_claim`), together with the
end of the task before it. So a task is in exactly one place at any moment —
the queue, one worker's held list, or RQ's started registry, where RQ's
abandoned-job handling already covers a worker that dies.

Nothing is lost when a worker dies holding tasks, and none runs twice:

* Each held list has a lease, a key with a TTL that every start renews (and
  the keep-alive thread, while a long task runs).
* A worker's supervisor returns a dead process's lists to the front of their
  queue at once (:func:`give_back_worker`); when the whole node died, any
  worker's registry maintenance returns the lists whose lease expired
  (:func:`recover_expired`).
* A worker that was stalled past its lease finds its tasks gone: its next claim
  fails, and it gives back what is left of its batch (as it does when `jobs
  cancel` took a held task) and takes again.
* An idle worker blocks on the queue with BLMOVE straight into its held list
  (:func:`wait`), renewing the lease for the whole wait.

``rq info`` still reads the queue: RQ's keys are untouched, the queue list is
only shorter by what workers hold (a few tasks each, by design).

Keys: ``piblade:held`` hash, held-list key → queue key (which lists may hold
tasks, for recovery); ``piblade:held:<worker>:<queue key>`` list of job ids;
``<held list key>:lease`` the lease.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

from piblade.redisconn import text

HOLDERS_KEY = "piblade:held"
HELD_KEY = "piblade:held:{}:{}"
LEASE_SUFFIX = ":lease"

# Take queued ids from the first non-empty queue (KEYS[2..]) into the worker's held
# list for it and renew the lease. Up to ARGV[2] ids, all of the run ARGV[4] names
# (task ids are "<run>-NNNNN"); the first id of any other run, or of another shape,
# is taken alone. Returns {queue key, ids...}, or {} when every queue is empty.
# The worker takes only when it holds nothing: ids still in its held lists were
# taken by a call whose reply it never got (a Redis error), and go back first.
_TAKE = """
local holders = KEYS[1]
local prefix, count, lease_ms, want = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
for q = 2, #KEYS do
  while redis.call('RPOPLPUSH', prefix .. KEYS[q], KEYS[q]) do end
end
for q = 2, #KEYS do
  local queue = KEYS[q]
  local ids = redis.call('LRANGE', queue, 0, count - 1)
  if #ids > 0 then
    local run = string.match(ids[1], '^(.+)%-%d+$')
    local n = 1
    if run and run == want then
      while n < #ids and string.match(ids[n + 1], '^(.+)%-%d+$') == run do n = n + 1 end
    end
    redis.call('LTRIM', queue, n, -1)
    local held = prefix .. queue
    redis.call('RPUSH', held, unpack(ids, 1, n))
    redis.call('SET', held .. ':lease', '1', 'PX', lease_ms)
    redis.call('HSET', holders, held, queue)
    return {queue, unpack(ids, 1, n)}
  end
end
return {}
"""

# Move a held list (KEYS[1]) back to the front of its queue (KEYS[2]), in order.
_RETURN_HELD = "while redis.call('RPOPLPUSH', KEYS[1], KEYS[2]) do end return 0"

# Run the first group of commands unconditionally (the end of the previous task);
# then, if the job ARGV names is still in its held list and still queued in RQ's
# eyes, take it out, renew the lease and run the second group (its start) and return
# the job's hash. Groups are flattened as: count, then per command its argument count
# and arguments. Returns {claimed (1, 0: not held any more, -1: record gone or not
# queued: canceled with RQ's own API, say), replies of the first group (false for an
# error), the job hash}.
_RUN_THEN_CLAIM = """
local pos = 1
local function group()
  local count = tonumber(ARGV[pos]); pos = pos + 1
  local out = {}
  for i = 1, count do
    local n = tonumber(ARGV[pos]); pos = pos + 1
    local reply = redis.pcall(unpack(ARGV, pos, pos + n - 1))
    pos = pos + n
    if type(reply) == 'table' and reply.err then reply = false end
    out[i] = reply
  end
  return out
end
local first = group()
local held, job_id, job_key, lease_ms = ARGV[pos], ARGV[pos + 1], ARGV[pos + 2], ARGV[pos + 3]
pos = pos + 4
if held == '' or redis.call('LREM', held, 1, job_id) == 0 then return {0, first, {}} end
if redis.call('HGET', job_key, 'status') ~= 'queued' then return {-1, first, {}} end
redis.call('PEXPIRE', held .. ':lease', lease_ms)
group()
return {1, first, redis.call('HGETALL', job_key)}
"""

# Move held lists back to the front of their queues, in order: the lists named
# in ARGV (their worker is gone or stopping), or, with none named, every list
# whose lease expired. Returns how many tasks went back.
_GIVE_BACK = """
local holders = KEYS[1]
local lists = ARGV
local forced = #ARGV > 0
if not forced then lists = redis.call('HKEYS', holders) end
local moved = 0
for _, held in ipairs(lists) do
  if forced or redis.call('EXISTS', held .. ':lease') == 0 then
    local queue = redis.call('HGET', holders, held)
    if queue then
      while redis.call('RPOPLPUSH', held, queue) do moved = moved + 1 end
      redis.call('HDEL', holders, held)
      redis.call('DEL', held .. ':lease')
    end
  end
end
return moved
"""


@functools.cache
def _sha(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()


def _run(conn: redis.Redis, source: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
    """Run a script by its digest (EVALSHA), loading it first if the server does not know it.

    Nothing is kept per client: a cache keyed by client kept every short-lived
    connection (the supervisor's, one per dead worker) alive.
    """
    try:
        return conn.evalsha(_sha(source), len(keys), *keys, *args)
    except NoScriptError:
        conn.script_load(source)
        return conn.evalsha(_sha(source), len(keys), *keys, *args)


def held_key(worker: str, queue_key: str) -> str:
    return HELD_KEY.format(worker, queue_key)


def lease_key(held: str) -> str:
    return held + LEASE_SUFFIX


def take(conn: redis.Redis, queue_keys: Sequence[str], worker: str, count: int, lease_ms: int,
         run: str = "") -> tuple[str, list[str]] | None:
    """Move up to ``count`` queued tasks of ``run`` (one task of any other) to the worker's held list.

    Returns the queue they came from and their ids, or None when every queue is empty.
    """
    found = _run(conn, _TAKE, [HOLDERS_KEY, *queue_keys], [HELD_KEY.format(worker, ""), count, lease_ms, run])
    if not found:
        return None
    return text(found[0]), [text(i) for i in found[1:]]


def wait(conn: redis.Redis, queue_key: str, worker: str, timeout: int, lease_ms: int) -> str | None:
    """Block up to ``timeout`` seconds for one task, moved straight into the worker's held list.

    The lease is renewed first for the whole wait: a task that arrives at the
    end of it is held under a lease like any other. The worker waits only when
    it holds nothing: ids still in the list (the reply of an earlier wait was
    lost) go back to the front of the queue first.
    """
    held_list = held_key(worker, queue_key)
    with conn.pipeline(transaction=False) as pipe:
        pipe.eval(_RETURN_HELD, 2, held_list, queue_key)
        pipe.set(lease_key(held_list), 1, px=lease_ms + timeout * 1000)
        pipe.hset(HOLDERS_KEY, held_list, queue_key)
        pipe.blmove(queue_key, held_list, timeout, "LEFT", "RIGHT")
        job_id = pipe.execute()[-1]
    return text(job_id) if job_id else None


def _flatten(commands: Sequence[Sequence[Any]]) -> list[Any]:
    flat: list[Any] = [len(commands)]
    for args in commands:
        flat.append(len(args))
        flat.extend(args)
    return flat


def run_then_claim(
    conn: redis.Redis, first: Sequence[Sequence[Any]], held_list: str = "", job_id: str = "", job_key: str = "",
    then: Sequence[Sequence[Any]] = (), lease_ms: int = 0,
) -> tuple[int, list[Any], dict[bytes, bytes]]:
    """Run ``first``; then, if ``job_id`` is still in ``held_list``, take it out and run ``then``. One round trip.

    Returns 1 if the job was claimed (0: it is held no more, -1: its record is
    gone or it is not queued any more), the replies to ``first`` (False for an
    error reply) and the job's hash.
    """
    args = [*_flatten(first), held_list, job_id, job_key, lease_ms, *_flatten(then)]
    claimed, replies, flat = _run(conn, _RUN_THEN_CLAIM, [], args)
    raw = dict(zip(flat[::2], flat[1::2], strict=True)) if isinstance(flat, list) else dict(flat or {})
    return int(claimed), list(replies), raw


def give_back_worker(conn: redis.Redis, worker: str) -> int:
    """Return every list a dead or stopping worker holds to its queue. Returns how many tasks went back."""
    prefix = HELD_KEY.format(worker, "")
    mine = [text(f) for f in conn.hkeys(HOLDERS_KEY) if text(f).startswith(prefix)]
    if not mine:
        return 0
    return int(_run(conn, _GIVE_BACK, [HOLDERS_KEY], mine))


def lists_of(conn: redis.Redis, queue_key: str) -> list[str]:
    """The held lists that take from ``queue_key`` (any worker's)."""
    return [text(k) for k, v in conn.hgetall(HOLDERS_KEY).items() if text(v) == queue_key]


def recover_expired(conn: redis.Redis) -> int:
    """Return the held lists whose lease expired (their worker or node died). Returns how many tasks went back."""
    return int(_run(conn, _GIVE_BACK, [HOLDERS_KEY], []))


def renew(conn: redis.Redis, worker: str, queue_keys: Sequence[str], lease_ms: int) -> None:
    """Renew a worker's leases while it runs a long task with others held."""
    with conn.pipeline(transaction=False) as pipe:
        for queue_key in queue_keys:
            pipe.pexpire(lease_key(held_key(worker, queue_key)), lease_ms)
        pipe.execute()
