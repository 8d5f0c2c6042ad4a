"""The health agent: sample this node every interval and publish a heartbeat to Redis.

A light process of its own, apart from the workers (which carry Numba): it
imports psutil, redis and the standard library only. Each beat is one pipelined
round trip (``healthstore.publish``): the current sample with a TTL of about
three intervals, a history entry, the node index and the pause flag.

Redis going away is normal (the controller reboots, Wi-Fi drops): the agent
logs it once, keeps trying with exponential backoff (capped at 30 s, or one
interval if that is longer), and says when Redis is back. It never exits
because of Redis, nor because of an unexpected error in one beat (that is
logged with its traceback): an agent that dies makes a healthy node look down. SIGTERM or SIGINT end it after the beat in hand.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time
from dataclasses import dataclass, replace

import redis

from piblade import healthstore
from piblade.errors import PibladeError
from piblade.health import Sampler, SensorPaths
from piblade.healthmodel import DEFAULT_MAX_TEMP, HealthSample, PauseGate
from piblade.redisconn import RedisTarget

log = logging.getLogger("piblade.agent")

#: Longest wait between two attempts while Redis is unreachable (unless the interval is longer).
MAX_BACKOFF = 30.0
#: While Redis stays unreachable, repeat the warning this often.
REWARN_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class AgentConfig:
    node: str
    role: str = ""
    interval: float = 5.0
    max_temp: float = DEFAULT_MAX_TEMP
    mount: str | None = None
    #: Keep exactly this many history entries; None keeps 24 hours (healthstore's default).
    history_len: int | None = None


def backoff(failures: int, interval: float) -> float:
    """Seconds to wait after ``failures`` failed beats in a row: interval, 2x, 4x ... capped."""
    cap = max(MAX_BACKOFF, interval)
    return float(min(cap, interval * 2.0 ** max(0, failures - 1)))


class Agent:
    """Owns the sampler, the pause gate and the Redis client; :meth:`run` is the loop."""

    def __init__(self, config: AgentConfig, target: RedisTarget, *, sensors: SensorPaths | None = None) -> None:
        self.config = config
        self.target = target
        self.sampler = Sampler(
            config.node, config.role, mount=config.mount, max_temp=config.max_temp, sensors=sensors
        )
        self.gate = PauseGate(config.max_temp)
        self.client: redis.Redis | None = None
        self.stopping = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def stop(self, *_: object) -> None:
        """Ask the loop to end; safe from a signal handler or another thread."""
        self.stopping = True
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:  # pipe full: the flag is enough
                pass

    def _sleep(self, seconds: float) -> None:
        """Wait up to ``seconds``, waking at once on :meth:`stop`."""
        if seconds > 0 and not self.stopping:
            select.select([self._wake_r], [], [], seconds)
        try:
            while os.read(self._wake_r, 64):
                pass
        except BlockingIOError:
            pass

    def sample(self) -> HealthSample:
        """One sample with the pause decision folded in."""
        sample = self.sampler.sample()
        return replace(sample, paused=self.gate.update(sample.temp_c, sample.flags))

    def beat(self) -> HealthSample:
        """Sample and publish once; Redis errors propagate (``run`` handles them)."""
        sample = self.sample()
        if self.client is None:
            self.client = self.target.client(timeout=min(5.0, max(1.0, self.config.interval)))
        healthstore.publish(
            self.client,
            self.config.node,
            sample.to_dict(),
            interval=self.config.interval,
            role=self.config.role,
            pause=sample.paused,
            history_len=self.config.history_len,
        )
        return sample

    def run(self, *, handle_signals: bool = True) -> int:
        if handle_signals:
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        cfg = self.config
        log.info("agent for %s (%s) reporting to %s every %gs", cfg.node, cfg.role or "no role",
                 self.target.display, cfg.interval)
        failures = 0
        warned_at = 0.0
        last_paused: str | None = None
        next_beat = time.monotonic()
        while not self.stopping:
            try:
                sample = self.beat()
            except Exception as exc:  # a monitor that dies makes its node look down
                failures += 1
                now = time.monotonic()
                if failures == 1 or now - warned_at >= REWARN_SECONDS:
                    if isinstance(exc, redis.RedisError | OSError | PibladeError):
                        log.warning("cannot publish to Redis at %s (%s: %s); retrying with backoff",
                                    self.target.display, type(exc).__name__, exc)
                    else:
                        log.exception("unexpected error in a heartbeat; retrying with backoff")
                    warned_at = now
                self._drop_client()
                self._sleep(backoff(failures, cfg.interval))
                next_beat = time.monotonic()
                continue
            if failures:
                log.warning("Redis at %s is back after %d failed beat(s)", self.target.display, failures)
                failures = 0
            if sample.paused != last_paused:
                if sample.paused:
                    log.warning("pausing work on %s: %s (temperature %s C)", cfg.node, sample.paused, sample.temp_c)
                else:
                    log.warning("resuming work on %s (temperature %s C)", cfg.node, sample.temp_c)
                last_paused = sample.paused
            next_beat += cfg.interval
            delay = next_beat - time.monotonic()
            if delay < 0:  # late (slow vcgencmd, suspended VM): do not try to catch up
                next_beat = time.monotonic()
                delay = 0.0
            self._sleep(delay)
        self._drop_client()
        wake_r, wake_w, self._wake_w = self._wake_r, self._wake_w, -1
        os.close(wake_w)
        os.close(wake_r)
        log.info("agent for %s stopped", cfg.node)
        return 0

    def _drop_client(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except (redis.RedisError, OSError):
                pass
            self.client = None
