"""The alert service (`piblade alertd`): one active per cluster, watching health and runs, telling the owner.

Every interval the active service reads an :class:`~piblade.alertrules.Observation`
(heartbeats from ``healthstore``, recent runs from ``dispatch``), lets the pure
rules decide which episodes start or end, records those changes and their notices
in Redis in one transaction (``alertstore``), then delivers the outbox through
Apprise (``notify``). A standby loops on ``SET NX`` of the leader key and takes
over within one TTL of the active one dying; it starts from the episodes in Redis,
so nothing already announced is announced again.

The service cannot report its own death: with a dead-man URL set, the active
service GETs it every ``deadman_interval`` seconds after a check that worked, and
the owner's monitoring (healthchecks.io or any such endpoint) alerts when the
pings stop.

Like the agent, it never exits because Redis went away; it logs once and retries.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis

from piblade import alertconfig, alertstore, dispatch, envvars, healthstore, notify, runs
from piblade.alertconfig import AlertConfig
from piblade.alertrules import Change, NodeView, Observation, RunView, Transition, evaluate, message
from piblade.alertstore import Notice, NotLeader
from piblade.errors import PibladeError
from piblade.redisconn import RedisTarget

log = logging.getLogger("piblade.alertd")

#: Runs looked at per check (newest first); older ones were judged while they were new.
RUNS_WATCHED = 50
#: A notice that could not reach a target for this long is given up (and logged).
GIVE_UP_AFTER = 24 * 3600.0
MAX_RETRY_DELAY = 300.0
#: Seconds before a failed run is read again (only a retry changes it).
FAILED_RECHECK = 60.0


def interval_from_env() -> float:
    raw = envvars.ALERT_INTERVAL.get() or envvars.ALERT_INTERVAL.default
    try:
        value = float(raw)
    except ValueError:
        raise PibladeError(f"{envvars.ALERT_INTERVAL.name}={raw!r} is not a number of seconds") from None
    if not value > 0:
        raise PibladeError(f"{envvars.ALERT_INTERVAL.name} must be more than 0 seconds")
    return value


def lock_ttl(interval: float) -> float:
    """How long the leader key lives unrenewed: three checks, at least 3 s."""
    return max(3.0, 3 * interval)


class RunCache:
    """What is known of recent runs, so a check does not re-read every task of every run.

    A run that finished cleanly never changes again; a failed one changes only if
    someone retries it, so it is read again every :data:`FAILED_RECHECK` seconds.
    """

    def __init__(self) -> None:
        self.ok: set[str] = set()
        self.failed: dict[str, tuple[RunView, float]] = {}


def observe(conn: redis.Redis, cache: RunCache, now: float | None = None) -> Observation:
    """Heartbeats and recent runs, read without side effects."""
    now = time.time() if now is None else now
    index = healthstore.nodes(conn)
    samples = healthstore.current(conn, sorted(index))
    nodes = tuple(
        NodeView(name, float(info.get("last_seen") or 0.0), float(info.get("interval") or 5.0), samples.get(name))
        for name, info in sorted(index.items())
    )
    views = []
    recent = runs.recent_runs(conn, RUNS_WATCHED)
    for record in recent:
        if record.id in cache.ok:
            continue
        known = cache.failed.get(record.id)
        if known is not None and now - known[1] < FAILED_RECHECK:
            views.append(known[0])
            continue
        status = dispatch.run_status(conn, record.id, details=False)
        view = RunView(record.id, record.job, status.state, status.failed, record.total, record.created)
        if status.state == "finished":
            cache.ok.add(record.id)
        if status.state == "failed":
            cache.failed[record.id] = (view, now)
        else:
            cache.failed.pop(record.id, None)
        views.append(view)
    watched = {r.id for r in recent}
    cache.ok &= watched
    for run_id in [r for r in cache.failed if r not in watched]:
        del cache.failed[run_id]
    return Observation(now, nodes, tuple(views))


class AlertService:
    """Leadership, the check loop, delivery and the dead-man ping of one alert service process."""

    def __init__(
        self,
        target: RedisTarget,
        load_config: Callable[[], AlertConfig],
        secrets_dir: Path,
        *,
        interval: float = 5.0,
    ) -> None:
        self.target = target
        self.load_config = load_config
        self.secrets_dir = secrets_dir
        self.interval = interval
        self.ttl = lock_ttl(interval)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.leading = False
        self.stopping = threading.Event()
        self.runs = RunCache()
        self.last_ping = 0.0
        self.client: redis.Redis | None = None

    def stop(self, *_: object) -> None:
        self.stopping.set()

    # -- one check -------------------------------------------------------------------

    def check(self, conn: redis.Redis) -> list[Transition]:
        """Observe, evaluate, record the changes with their notices. Raises NotLeader if it lost the lead."""
        config = self.load_config()
        firing = alertstore.firing(conn)
        transitions = evaluate(config.rules, observe(conn, self.runs), firing)
        if not transitions:
            return []
        targets = self._target_names(config)
        ids = iter(alertstore.next_ids(conn, sum(t.notify for t in transitions)))
        changes: list[tuple[Transition, Notice | None]] = []
        for transition in transitions:
            notice = None
            if transition.notify:
                title, body = message(config.cluster, transition)
                notice = Notice(next(ids), str(transition.change), transition.episode.key, title, body,
                                transition.at, targets)
            changes.append((transition, notice))
        alertstore.record(conn, self.owner, changes)
        for transition in transitions:
            if transition.change is Change.FIRE:
                log.warning("alert: %s", transition.episode.summary)
            elif transition.change is Change.CLEAR:
                log.warning("resolved: %s", transition.detail)
        return transitions

    def _target_names(self, config: AlertConfig) -> tuple[str, ...]:
        if config.targets is not None:
            return config.targets
        try:
            return tuple(sorted(alertconfig.load_targets(self.secrets_dir).urls))
        except PibladeError as exc:
            log.error("%s", exc.message)
            return ()

    def deliver(self, conn: redis.Redis) -> None:
        """Send every notice whose time has come to the targets it has not reached yet."""
        now = time.time()
        pending = [n for n in alertstore.outbox(conn) if n.next_try <= now]
        if not pending:
            return
        try:
            urls = alertconfig.load_targets(self.secrets_dir).urls
        except PibladeError as exc:
            log.error("cannot read the alert targets: %s", exc.message)
            return
        for notice in pending:
            if self.stopping.is_set() or not self.leading:
                return
            results = []
            left: list[str] = []
            errors: dict[str, str] = {}
            for name in notice.pending:
                url = urls.get(name)
                if url is None:
                    errors[name] = f"no URL stored for target {name!r}"
                    left.append(name)
                    continue
                delivery = notify.send(name, url, notice.title, notice.body)
                results.append(delivery.to_dict())
                if not delivery.ok:
                    errors[name] = delivery.error or "failed"
                    left.append(name)
            for name, error in errors.items():
                log.warning("notice %s (%s) not delivered to %s: %s", notice.id, notice.key, name, error)
            attempts = notice.attempts + 1
            give_up = bool(left) and now - notice.created > GIVE_UP_AFTER
            if give_up:
                log.error("giving up notice %s (%s) for %s after %d attempts", notice.id, notice.key,
                          ", ".join(left), attempts)
                results += [{"target": n, "ok": False, "error": errors.get(n, "")} for n in left]
            delay = min(MAX_RETRY_DELAY, self.interval * 2 ** min(attempts, 10))
            updated = Notice(notice.id, notice.change, notice.key, notice.title, notice.body, notice.created,
                             tuple(left), attempts, time.time() + delay, errors)
            alertstore.update_notice(conn, updated, results, done=not left or give_up)

    def deadman(self, config: AlertConfig) -> None:
        """Ping the dead-man URL when it is due (only after a check that worked)."""
        now = time.monotonic()
        if self.last_ping and now - self.last_ping < config.deadman_interval:
            return
        try:
            url = alertconfig.load_targets(self.secrets_dir).deadman
        except PibladeError:
            return
        if not url:
            return
        self.last_ping = now
        error = notify.ping(url)
        if error:
            log.warning("dead-man ping failed: %s", error)

    # -- the loop --------------------------------------------------------------------

    def _renewer(self) -> None:
        """Renew the lead every third of the TTL, also while a slow target holds up delivery."""
        while not self.stopping.wait(self.ttl / 3):
            client = self.client
            if not self.leading or client is None:
                continue
            try:
                if not alertstore.renew(client, self.owner, self.ttl):
                    log.warning("lost the lead (another alert service is active now)")
                    self.leading = False
            except (redis.RedisError, OSError):
                pass  # the main loop notices and reconnects

    def run(self, *, handle_signals: bool = True) -> int:
        if handle_signals:
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        log.info("alert service %s for %s, checking every %gs", self.owner, self.target.display, self.interval)
        renewer = threading.Thread(target=self._renewer, name="alertd-renew", daemon=True)
        renewer.start()
        failures = 0
        standby_said = ""
        while not self.stopping.is_set():
            try:
                if self.client is None:
                    self.client = self.target.client(timeout=min(5.0, max(1.0, self.interval)))
                conn = self.client
                if not self.leading:
                    self.leading = alertstore.acquire(conn, self.owner, self.ttl)
                    if self.leading:
                        log.warning("active: this alert service now watches the cluster")
                        standby_said = ""
                    else:
                        active = alertstore.leader(conn) or "?"
                        if active != standby_said:
                            log.info("standby: %s is active", active)
                            standby_said = active
                if self.leading:
                    try:
                        self.check(conn)
                        self.deliver(conn)
                    except NotLeader:
                        log.warning("lost the lead before recording a change; standing by")
                        self.leading = False
                    else:
                        self.deadman(self.load_config())
                if failures:
                    log.warning("Redis at %s is back", self.target.display)
                    failures = 0
            except (redis.RedisError, OSError) as exc:
                failures += 1
                if failures == 1:
                    log.warning("cannot reach Redis at %s (%s); retrying", self.target.display, type(exc).__name__)
                self._drop_client()
            except PibladeError as exc:
                log.error("%s%s", exc.message, f" ({exc.hint})" if exc.hint else "")
            except Exception:  # a monitor that dies stops telling anyone anything
                log.exception("unexpected error in an alert check; carrying on")
            self.stopping.wait(self.interval)
        if self.leading and self.client is not None:
            try:
                alertstore.release(self.client, self.owner)
            except (redis.RedisError, OSError):
                pass
        self._drop_client()
        log.info("alert service %s stopped", self.owner)
        return 0

    def _drop_client(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                client.close()
            except (redis.RedisError, OSError):
                pass


def service_for_root(root: Path, target: RedisTarget, interval: float) -> AlertService:
    """The service of the cluster whose state is ``root``: ``alerts.json`` there, secrets in ``root/secrets``."""
    return AlertService(target, lambda: alertconfig.read_config(root), root / "secrets", interval=interval)
