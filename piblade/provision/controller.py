"""The controller role, applied on this machine: the cluster's Redis and its alert service.

The controller runs Redis for the whole cluster, bound to loopback and to the
cluster address the workers use, with ACL users, a generated password and AOF.
It is the same supervised redis-server as `piblade local up`, kept in the
cluster's own state directory (``<state>/clusters/<name>``) and with no local
workers. The same supervisor runs the alert service (``piblade alertd``), whose
settings this role renders from the inventory into ``alerts.json`` there, and
the recorder (``piblade recorder``) that drains the cluster's run records into
the results node's PostgreSQL; it restarts either when it dies.

Where this machine runs systemd, the supervisor itself runs as a unit
(:mod:`piblade.provision.controllerunit`), so all of it comes back after a
restart or a crash of the supervisor; elsewhere piblade starts it directly and
the recap says how to start it again after a restart.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from piblade import alertconfig, local, localsystemd, resultsdb
from piblade.errors import PibladeError, RedisUnavailable
from piblade.inventory import Cluster
from piblade.provision.controllerunit import ControllerUnit, controller_unit
from piblade.provision.engine import EventFn, HostResult, StepResult
from piblade.provision.steps import ChangeKind
from piblade.redisconn import DEFAULT_USER, RedisTarget, connect
from piblade.state import state_dir


def desired(cluster: Cluster) -> tuple[int, tuple[str, ...]]:
    controller = cluster.controller
    bind = controller.settings.redis_bind or controller.address
    addresses = ("127.0.0.1",) if bind in ("127.0.0.1", "localhost") else ("127.0.0.1", bind)
    return controller.settings.redis_port, addresses


def _alert_settings(cluster: Cluster, paths: local.LocalPaths, check: bool) -> StepResult:
    """The alert service's settings (``alerts.json``), rendered from the inventory; it re-reads them every check."""
    config = alertconfig.from_cluster(cluster)
    step = "alert settings (alerts.json)"
    try:
        current = (paths.root / alertconfig.CONFIG_FILE).read_text()
    except FileNotFoundError:
        current = None
    if current == config.to_json():
        return StepResult(step, "ok", reason="alerts.json matches the inventory's piblade_alert_* settings")
    if not check:
        alertconfig.write_config(paths.root, config)
    return StepResult(step, "changed", "write alerts.json from the inventory",
                      kind=ChangeKind.CREATE if current is None else ChangeKind.UPDATE)


def converge_controller(cluster: Cluster, paths: local.LocalPaths, check: bool, emit: EventFn) -> HostResult:
    unit = None
    unit_step: tuple[StepResult, ...] = ()
    restart = False  # a new or rewritten unit takes over a supervisor started without it
    notes: tuple[str, ...] = ()
    if localsystemd.running():
        unit = controller_unit(cluster.name, root=paths.root, state_dir=state_dir(), python=sys.executable,
                               uid=os.getuid(), home=Path.home())
        try:
            installed, restart = _install_unit(unit, check)
            unit_step = (installed,)
        except PibladeError as exc:
            return HostResult(cluster.controller.name, (StepResult(f"systemd unit {unit.name}", "failed",
                                                                   output=exc.message),),
                              error=exc.message, hint=exc.hint)
        if unit.user_manager and not localsystemd.lingers(os.getuid()):
            notes = (f"{unit.name} starts at boot after `sudo loginctl enable-linger {_user()}`",)
    else:
        notes = ("no systemd here: after a restart, run `piblade provision --tags controller`",)
    result = _converge_redis(cluster, paths, check, emit, unit, restart)
    result = replace(result, steps=(*unit_step, *result.steps), notes=(*result.notes, *notes))
    if result.error:
        return result
    return replace(result, steps=(*result.steps, _alert_settings(cluster, paths, check)))


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def _install_unit(unit: ControllerUnit, check: bool) -> tuple[StepResult, bool]:
    """The unit file written and enabled, and whether its content changed (the Redis step then restarts under it)."""
    step = f"systemd unit {unit.path}"
    try:
        current = unit.path.read_bytes()
    except FileNotFoundError:
        current = None
    enabled = current is not None and localsystemd.enabled(unit.user_manager, unit.name)
    if current == unit.content and enabled:
        return StepResult(step, "ok", reason="the unit matches and is enabled, so the controller starts at boot"), False
    if not check:
        unit.path.parent.mkdir(parents=True, exist_ok=True)
        unit.path.write_bytes(unit.content)
        unit.path.chmod(0o644)
        localsystemd.systemctl(unit.user_manager, "daemon-reload")
        localsystemd.systemctl(unit.user_manager, "enable", unit.name)
    if current is None:
        return StepResult(step, "changed", "install and enable the controller's unit", kind=ChangeKind.CREATE), True
    if current != unit.content:
        return StepResult(step, "changed", "rewrite the controller's unit", kind=ChangeKind.UPDATE), True
    return StepResult(step, "changed", "enable the controller's unit", kind=ChangeKind.UPDATE), False


def results_url(cluster: Cluster) -> str:
    """The results database the controller's recorder fills: the results node's PostgreSQL ("" if it is this machine).

    The recorder runs under the controller's supervisor beside Redis (as
    ``piblade recorder`` would under systemd), which restarts it when it dies;
    while the database is away the records wait in Redis.
    """
    node = cluster.results_node
    if node.is_local:
        return ""
    return f"postgresql://{resultsdb.DEFAULT_USER}@{node.address}:{cluster.results_port}/{resultsdb.DEFAULT_DB}"


def _converge_redis(cluster: Cluster, paths: local.LocalPaths, check: bool, emit: EventFn,
                    unit: ControllerUnit | None = None, restart: bool = False) -> HostResult:
    started = time.monotonic()
    name = cluster.controller.name
    port, bind = desired(cluster)
    url = results_url(cluster)
    step = f"redis for cluster {cluster.name} on {', '.join(f'{a}:{port}' for a in bind)}"
    if url:
        step += f", recorder into {url}"
    emit(name, "checking redis")
    current = local.read_config(paths)
    running = current is not None and local.pid_alive(current.pid)
    right = (running and current is not None and current.port == port and tuple(current.bind) == bind
             and current.results_url == url and not restart
             and (unit is None or localsystemd.main_pid(unit.user_manager, unit.name) == current.pid))
    if right:
        try:
            connect(RedisTarget(bind[-1], port, DEFAULT_USER, paths.password_file), timeout=2).close()
        except RedisUnavailable:
            right = False
    if right:
        reason = f"redis answers on {', '.join(f'{a}:{port}' for a in bind)} with the cluster's password"
        if url:
            reason += "; its supervisor runs the recorder"
        return HostResult(name, (StepResult(step, "ok", reason=reason),), notes=("controller: this machine",),
                          seconds=time.monotonic() - started)
    if running:
        kind, summary = ChangeKind.RESTART, "restart redis with the cluster's settings"
        if unit is not None:
            summary += f" (under {unit.name})"
    else:
        kind, summary = ChangeKind.START, "start redis (password, ACL, AOF)" + (" and the recorder" if url else "")
    if check:
        return HostResult(name, (StepResult(step, "changed", summary, kind=kind),), seconds=time.monotonic() - started)
    try:
        if running:
            local.down(paths=paths)
        emit(name, "starting redis")
        local.up(0, paths=paths, port=port, bind=bind, node=name, results=False, results_url=url,
                 launch=None if unit is None else _launcher(unit))
    except PibladeError as exc:
        return HostResult(name, (StepResult(step, "failed", summary, output=exc.message, kind=kind),), error=exc.message,
                          hint=exc.hint, seconds=time.monotonic() - started)
    return HostResult(name, (StepResult(step, "changed", summary, kind=kind),), notes=("controller: this machine",),
                      seconds=time.monotonic() - started)


def _launcher(unit: ControllerUnit) -> Callable[[], Callable[[], int | None]]:
    """Start the supervisor as the unit; while waiting, a unit systemd gave up on counts as exited."""

    def launch() -> Callable[[], int | None]:
        localsystemd.systemctl(unit.user_manager, "restart", unit.name)
        return lambda: 1 if localsystemd.failed(unit.user_manager, unit.name) else None

    return launch
