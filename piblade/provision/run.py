"""`piblade provision` as a library call: secrets, the controller, then every node in parallel."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from piblade import resultsdb
from piblade.context import cluster_state
from piblade.errors import PibladeError
from piblade.inventory import Cluster
from piblade.local import LocalPaths
from piblade.provision import roles
from piblade.provision.engine import (
    EventFn,
    HostResult,
    HostRun,
    Wheelhouses,
    connect_and_gather,
    converge,
    probe,
    probes_still_hold,
    run_parallel,
    target_for,
)
from piblade.provision.plan import HostPlan, host_plan
from piblade.provision.rolling import Rolling
from piblade.provision.ssh import known_hosts_lines
from piblade.redisconn import RedisTarget
from piblade.state import ensure_secret, private_dir, read_secret, state_dir, write_private


def cluster_paths(cluster: Cluster) -> LocalPaths:
    """The controller's state for one cluster: its Redis (AOF, ACL, password) and secrets."""
    return cluster_state(cluster.name)


def load_secrets(cluster: Cluster) -> roles.Secrets:
    """The cluster's secrets, generated on first use into 0600 files under the state dir."""
    paths = cluster_paths(cluster)
    secrets_dir = private_dir(paths.password_file.parent)
    key_file = secrets_dir / "nas_mount_key"
    if not key_file.exists():
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption()).decode()
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
        write_private(key_file, private)
        write_private(secrets_dir / "nas_mount_key.pub", f"{public} piblade-nas-mount@{cluster.name}\n")
    return roles.Secrets(
        redis_password=ensure_secret(paths.password_file),
        smb_password=ensure_secret(secrets_dir / "samba.password", 24),
        mount_key_private=read_secret(key_file) + "\n",
        mount_key_public=(secrets_dir / "nas_mount_key.pub").read_text().strip(),
        postgres_password=ensure_secret(secrets_dir / resultsdb.PASSWORD_FILE_NAME),
    )


def nas_host_keys(cluster: Cluster) -> str:
    """known_hosts lines for the NAS node (for sshfs mounts), from the known_hosts its key is verified in."""
    nas = cluster.nas
    if nas is None:
        return ""
    return known_hosts_lines(target_for(nas).known_hosts, nas.address, nas.port)


@dataclass(frozen=True, slots=True)
class Options:
    check: bool = False
    tags: frozenset[str] = frozenset()
    limit: frozenset[str] = frozenset()
    accept_new: bool = False


def provision(cluster: Cluster, options: Options, emit: EventFn = lambda host, what: None) -> list[HostResult]:
    """Bring every selected node to its role's state. Returns one result per host, inventory order."""
    unknown = options.limit - {n.name for n in cluster.nodes}
    if unknown:
        cluster.node(min(unknown))  # raises NotFound with a did-you-mean
    selected = [n for n in cluster.nodes if not options.limit or n.name in options.limit]
    secrets = load_secrets(cluster)
    results: dict[str, HostResult] = {}

    controller = cluster.controller
    if controller in selected and controller.is_local and (not options.tags or "controller" in options.tags):
        from piblade.provision.controller import converge_controller

        results[controller.name] = converge_controller(cluster, cluster_paths(cluster), options.check, emit)

    runs = [HostRun(n, target_for(n)) for n in selected if not n.is_local]

    def phase_connect(run: HostRun) -> HostResult | None:
        try:
            connect_and_gather(run, options.accept_new, emit)
        except PibladeError as exc:
            return HostResult(run.node.name, error=exc.message, hint=exc.hint,
                              seconds=time.monotonic() - run.started)
        return None

    for run, failure in zip(runs, run_parallel(runs, phase_connect), strict=True):
        if failure is not None:
            results[run.node.name] = failure
            emit(run.node.name, "failed")
    ready = [r for r in runs if r.node.name not in results]
    ctx = roles.Context(
        cluster=cluster,
        redis_url=f"redis://piblade@{controller.address}:{controller.settings.redis_port}/0",
        secrets=secrets,
        nas_host_keys=nas_host_keys(cluster),
    )
    # Worker restarts take turns, one node at a time, so a run in progress keeps going.
    host = "127.0.0.1" if controller.is_local else controller.address
    rolling = Rolling.for_cluster(RedisTarget(host=host, port=controller.settings.redis_port,
                                              password_file=cluster_paths(cluster).password_file))
    wheelhouses = Wheelhouses(state_dir() / "wheelhouse", log=cluster_paths(cluster).log_dir / "wheelhouse.log")
    private_dir(cluster_paths(cluster).log_dir)

    # Workers mount the NAS share: they do everything else in parallel with the
    # NAS node, and wait for it only for the steps that need it ready.
    nas_name = cluster.nas.name if cluster.nas is not None else None
    nas_done = threading.Event()
    nas_results: list[HostResult] = []  # the NAS node's, if it converged without an exception
    if nas_name not in {r.node.name for r in ready} or options.check:
        nas_done.set()

    def stages(run: HostRun, plan: HostPlan) -> HostResult:
        first, later = plan.split(lambda step: step.after_nas)
        if nas_done.is_set() or run.node.name == nas_name or not later.steps:
            return converge(run, plan, check=options.check, emit=emit, rolling=rolling)
        # The later steps are probed in the same round trip as the others. Their outputs
        # still hold once the NAS node has converged if neither it nor this node changed
        # anything meanwhile (a no-change re-run): then no second probe. Otherwise the
        # later steps are probed again, after the NAS node.
        outputs = probe(run, first.steps + later.steps, emit)
        result = converge(run, first, check=options.check, emit=emit, rolling=rolling,
                          outputs=outputs[:len(first.steps)])
        if result.error:
            return result
        emit(run.node.name, "waiting for the NAS node")
        nas_done.wait(timeout=3600)
        nas = nas_results[0] if nas_results else None
        still = outputs[len(first.steps):] if probes_still_hold(result, nas) else None
        later = replace(later, earlier=result.notified)
        return result.then(converge(run, later, check=options.check, emit=emit, rolling=rolling, outputs=still))

    def phase_converge(run: HostRun) -> HostResult:
        assert run.facts is not None
        try:
            emit(run.node.name, "planning")
            wheelhouse = wheelhouses.install_for(run.facts, roles.VENV)
            result = stages(run, host_plan(run.node, run.facts, ctx, wheelhouse, options.tags))
            if run.node.name == nas_name:
                nas_results.append(result)  # before nas_done is set (finally)
        except PibladeError as exc:
            result = HostResult(run.node.name, facts=run.facts, error=exc.message, hint=exc.hint,
                                seconds=time.monotonic() - run.started)
        except Exception as exc:  # noqa: BLE001 - one host's bug must not hide the others' results
            result = HostResult(run.node.name, facts=run.facts, error=f"{type(exc).__name__}: {exc}",
                                seconds=time.monotonic() - run.started)
        finally:
            if run.session is not None:
                run.session.close()
            if run.node.name == nas_name:
                nas_done.set()
        emit(run.node.name, "failed" if result.failed else "done")
        return result

    for run, result in zip(ready, run_parallel(ready, phase_converge), strict=True):
        assert result is not None
        results[run.node.name] = result
    return [results[n.name] for n in selected if n.name in results]
