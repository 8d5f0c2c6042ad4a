"""Run provisioning: all hosts in parallel, a result for every host, never stop at the first failure.

Per host, in round trips: connect (host key verified) → facts → its plan
(:mod:`piblade.provision.plan`, no round trip) → all probes in one script, which
decide the plan → (unless --check) uploads over one SFTP session and all changes
in one script. An unchanged host therefore costs three round trips. A worker's
steps that wait for the NAS node are probed in that same script; they are probed
again after the NAS node only if it, or the worker, changed something
(:func:`probes_still_hold`).

Phases across hosts: 1) connect and gather facts everywhere (so an unknown host
key is found before anything changes); 2) build what hosts share (secrets, the
NAS host key for sshfs mounts, one wheelhouse per architecture); 3) plan, probe
and apply everywhere.
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from piblade.errors import PibladeError
from piblade.inventory import Node
from piblade.provision.facts import FACTS_SCRIPT, NodeFacts, parse_facts
from piblade.provision.plan import HostPlan
from piblade.provision.rolling import Rolling
from piblade.provision.sitetree import SiteTree
from piblade.provision.ssh import DEFAULT_KNOWN_HOSTS, Session, SshTarget
from piblade.provision.steps import Change, ChangeKind, Decision, Ok, Step
from piblade.provision.wheelhouse import Wheelhouse, refuse_unsupported

EventFn = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class StepResult:
    """One step's outcome: ok with the reason nothing was needed, or a change that was (would be) made or failed."""

    name: str
    status: str  # ok | changed | failed
    summary: str = ""  # what changed (or would)
    diff: str | None = None
    output: str = ""
    kind: ChangeKind | None = None  # of a change
    reason: str = ""  # of an ok: why nothing was needed

    @classmethod
    def of(cls, decision: Decision, status: str = "changed", output: str = "") -> StepResult:
        if isinstance(decision, Ok):
            return cls(decision.step, "ok", reason=decision.reason)
        return cls(decision.step, status, decision.summary, decision.diff, output, decision.kind)

    def to_dict(self) -> dict[str, object]:
        if self.status == "ok":
            return {"step": self.name, "status": self.status, "reason": self.reason}
        return {"step": self.name, "status": self.status, "kind": self.kind.value if self.kind else None,
                "summary": self.summary}


@dataclass(frozen=True, slots=True)
class HostResult:
    """The outcome on one host: counts, what changed, facts, or the error that stopped it."""

    name: str
    steps: tuple[StepResult, ...] = ()
    facts: NodeFacts | None = None
    notes: tuple[str, ...] = ()
    error: str | None = None
    hint: str | None = None
    seconds: float = 0.0
    #: Services that steps of this run asked to restart (carried into a later stage).
    notified: frozenset[str] = frozenset()

    def then(self, later: HostResult) -> HostResult:
        """This stage's result followed by a later stage's, on the same host."""
        return HostResult(self.name, self.steps + later.steps, self.facts or later.facts, self.notes + later.notes,
                          later.error, later.hint, later.seconds, self.notified | later.notified)

    def count(self, status: str) -> int:
        return sum(1 for s in self.steps if s.status == status)

    @property
    def ok(self) -> int:
        return self.count("ok")

    @property
    def changed(self) -> int:
        return self.count("changed")

    @property
    def failed(self) -> int:
        return self.count("failed") + (1 if self.error and not self.count("failed") else 0)

    def to_dict(self) -> dict[str, object]:
        return {
            "host": self.name,
            "ok": self.ok,
            "changed": self.changed,
            "failed": self.failed,
            "error": self.error,
            "facts": None if self.facts is None else self.facts.summary(),
            "notes": list(self.notes),
            "seconds": round(self.seconds, 3),
            "changes": [s.to_dict() for s in self.steps if s.status != "ok"],
            "plan": [s.to_dict() for s in self.steps],
        }


@dataclass(slots=True)
class HostRun:
    node: Node
    target: SshTarget
    session: Session | None = None
    facts: NodeFacts | None = None
    started: float = field(default_factory=time.monotonic)


def probe_script(steps: list[Step]) -> str:
    parts = [f'echo "@@probe {i}"; {{ {step.probe()} ; }} 2>&1' for i, step in enumerate(steps)]
    return "\n".join(parts) + "\necho @@end\n"


def split_probes(output: str, count: int) -> list[str]:
    """Cut the probe script's output into one string per step."""
    chunks: dict[int, list[str]] = {}
    current: int | None = None
    for line in output.splitlines():
        if line.startswith("@@probe "):
            current = int(line.split()[1])
            chunks[current] = []
        elif line == "@@end":
            current = None
        elif current is not None:
            chunks[current].append(line)
    missing = [i for i in range(count) if i not in chunks]
    if missing:
        raise PibladeError(f"the probe script stopped early (no output for step {missing[0]})")
    return ["\n".join(chunks[i]) for i in range(count)]


def apply_script(changes: list[Change], stage: str | None) -> str:
    """One script that applies every change in order and stops at the first failure, naming it."""
    head = [f"STAGE={shlex.quote(stage)}" if stage else 'STAGE=$(mktemp -d /tmp/piblade-apply.XXXXXX)',
            "export STAGE", "umask 022"]
    body = []
    for i, change in enumerate(changes):
        body.append(
            f'echo "@@step {i}"\n'
            f'if ! ( set -e; {change.script} ) > "$STAGE/.log.{i}" 2>&1; then\n'
            f'  echo "@@failed {i}"; cat "$STAGE/.log.{i}"; rm -rf "$STAGE"; exit 1\nfi'
        )
    return "\n".join(head + body + ['rm -rf "$STAGE"', "echo @@done"]) + "\n"


def parse_apply(output: str, count: int) -> tuple[int, int | None, str]:
    """(steps done, index of the failed step or None, output of the failed step)."""
    done, failed, tail = 0, None, []
    for line in output.splitlines():
        if failed is not None:
            tail.append(line)
        elif line.startswith("@@step "):
            done = int(line.split()[1])
        elif line.startswith("@@failed "):
            failed = int(line.split()[1])
    if failed is None and "@@done" in output:
        done = count
    return done, failed, "\n".join(tail)


def target_for(node: Node) -> SshTarget:
    """How to reach a node: the inventory alone decides (piblade reads no ~/.ssh/config).

    ``piblade_known_hosts`` is the node's own setting (Ansible precedence, so
    usually one value under all: vars): its key is verified in, and `piblade
    trust` writes to, that file.
    """
    key = node.extra_vars.get("ansible_ssh_private_key_file")
    known = node.settings.known_hosts
    return SshTarget(
        name=node.name,
        address=node.address,
        port=node.port,
        user=node.user,
        key_file=Path(str(key)).expanduser() if key else None,
        become=node.become,
        known_hosts=Path(known or DEFAULT_KNOWN_HOSTS).expanduser(),
    )


def connect_and_gather(run: HostRun, accept_new: bool, emit: EventFn) -> None:
    emit(run.node.name, "connecting")
    run.session = Session(run.target, accept_new=accept_new).open()
    emit(run.node.name, "gathering facts")
    result = run.session.script(FACTS_SCRIPT, root=False)
    if not result.ok:
        raise PibladeError(f"{run.node.name}: gathering facts failed: {result.stderr.strip()}")
    run.facts = parse_facts(result.stdout)
    if not run.facts.systemd:
        raise PibladeError(
            f"{run.node.name}: the node does not run systemd (PID 1 is {run.facts.virtualization!r})",
            hint="piblade nodes run Raspberry Pi OS / Debian with systemd",
        )
    # Before anything is pushed: a node the wheelhouse cannot serve is refused here.
    refuse_unsupported(run.facts.wheel_platform, run.facts.python, userland_bits=run.facts.userland_bits)


def probe(run: HostRun, steps: Sequence[Step], emit: EventFn) -> list[str]:
    """Every step's probe output, in step order, from one round trip."""
    assert run.session is not None
    emit(run.node.name, f"checking {len(steps)} steps")
    probed = run.session.script(probe_script(list(steps)))
    try:
        return split_probes(probed.stdout, len(steps))
    except PibladeError as exc:  # the script did not run through: say what the node said
        said = (probed.stderr.strip() or probed.stdout.strip())[-500:]
        raise PibladeError(f"{exc.message} (exit {probed.exit_code}{': ' + said if said else ''})") from exc


def probes_still_hold(first: HostResult, nas: HostResult | None) -> bool:
    """Whether a worker's after-NAS steps may be decided from outputs probed before the NAS node converged.

    Only when nothing changed in between: ``first`` (the worker's own earlier stage)
    changed nothing and the NAS node converged (``nas``; None: it did not finish) with
    nothing changed and nothing failed. Otherwise those steps are probed again, so a
    step that must follow a change on the NAS node is never decided from before it.
    """
    return (first.changed == 0 and first.error is None and nas is not None
            and nas.changed == 0 and nas.failed == 0 and nas.error is None)


def converge(run: HostRun, plan: HostPlan, *, check: bool, emit: EventFn, rolling: Rolling | None = None,
             outputs: Sequence[str] | None = None) -> HostResult:
    """Probe every step of the plan, then (unless check) apply what differs. Returns the host's result.

    ``outputs``: the plan's probe outputs when they were already taken (in an
    earlier round trip of this run, on a node that has not changed since), so
    the plan is decided without probing again.

    With ``rolling``, a restart of the worker service waits for its turn after
    the other changes (:mod:`piblade.provision.rolling`): one node at a time.
    """
    assert run.session is not None
    session = run.session
    plan = plan.decide(probe(run, plan.steps, emit) if outputs is None else outputs)
    changes = plan.changes
    held = tuple(c for c in changes if rolling is not None and rolling.holds(c))
    if check or not changes:
        results = [StepResult.of(d) for d in plan.outcome]
        if rolling is not None:
            results = [replace(r, summary=rolling.describe(d)) if isinstance(d, Change) and d in held else r
                       for r, d in zip(results, plan.outcome, strict=True)]
        return _result(run, results, plan)
    now = tuple(c for c in changes if c not in held)
    failed: int | None = None
    output = ""
    if now:
        failed, output = _apply(run, session, now, emit)
    rolled: dict[str, StepResult] = {}
    if failed is None and rolling is not None:
        for change in held:
            ok, what = rolling.restart(session, run.node.name, change, emit)
            rolled[change.step] = (replace(StepResult.of(change), summary=f"{change.summary}: {what}") if ok
                                   else StepResult.of(change, "failed", what))
    results, index = [], 0  # index: of the next change, in apply order
    for decision in plan.outcome:
        if isinstance(decision, Ok):
            results.append(StepResult.of(decision))
            continue
        if decision in held:
            if decision.step in rolled:
                results.append(rolled[decision.step])
            continue
        if failed is None or index < failed:
            results.append(StepResult.of(decision))
        elif index == failed:
            results.append(StepResult.of(decision, "failed", output.strip()))
        index += 1
    error = None
    if failed is not None:
        error = f"{now[failed].step}: {output.strip().splitlines()[-1] if output.strip() else 'failed'}"
    else:
        error = next((f"{r.name}: {r.output}" for r in rolled.values() if r.status == "failed"), None)
    return _result(run, results, plan, error)


def _apply(run: HostRun, session: Session, changes: tuple[Change, ...], emit: EventFn) -> tuple[int | None, str]:
    """Upload what the changes need and run them in one script: (index of the failed change or None, its output)."""
    uploads = [u for c in changes for u in c.uploads]
    stage = None
    if uploads:
        emit(run.node.name, f"uploading {len(uploads)} file(s)")
        made = session.script("mktemp -d /tmp/piblade-stage.XXXXXX", root=False)
        stage = made.stdout.strip()
        for upload in uploads:
            if upload.data is not None:
                session.put_bytes(upload.data, f"{stage}/{upload.name}")
            elif upload.local is not None:
                session.put_file(upload.local, f"{stage}/{upload.name}")
    emit(run.node.name, f"applying {len(changes)} change(s)")
    applied = session.script(apply_script(list(changes), stage), timeout=1800)
    done, failed, output = parse_apply(applied.stdout, len(changes))
    if failed is None and not applied.ok:
        failed, output = done, applied.stderr
    return failed, output


def _result(run: HostRun, steps: list[StepResult], plan: HostPlan, error: str | None = None) -> HostResult:
    accepted: tuple[str, ...] = ()
    if run.session is not None:  # report each newly trusted key once, not again in a later stage
        accepted = tuple(f"trusted new host key {k}" for k in run.session.accepted)
        run.session.accepted.clear()
    return HostResult(run.node.name, tuple(steps), run.facts, plan.notes + accepted, error,
                      seconds=time.monotonic() - run.started, notified=plan.notified)


#: Architectures whose nodes get a tree built on the controller (:mod:`piblade.provision.sitetree`)
#: instead of running pip themselves: a Pi's CPU is the slowest of the cluster (and an emulated
#: one ≈ 15× slower still); x86_64 nodes install the wheelhouse with pip, as Ansible's role does.
TREE_PLATFORMS = frozenset({"aarch64"})


@dataclass(slots=True)
class Wheelhouses:
    """One wheelhouse per (arch, Python), built by the first host that needs it; trees per full Python."""

    cache: Path
    log: Path | None = None
    built: dict[tuple[str, str], Wheelhouse] = field(default_factory=dict)
    trees: dict[tuple[str, str, str], SiteTree] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, facts: NodeFacts) -> Wheelhouse:
        from piblade.provision.wheelhouse import build

        key = (facts.wheel_platform, facts.python)
        with self.lock:
            if key not in self.built:
                self.built[key] = build(self.cache, *key, log=self.log)
            return self.built[key]

    def install_for(self, facts: NodeFacts, venv: str) -> Wheelhouse | SiteTree:
        """What the node's venv is installed from: a tree for an aarch64 node, else the wheelhouse."""
        house = self.get(facts)
        if facts.wheel_platform not in TREE_PLATFORMS or not facts.python_full:
            return house
        from piblade.provision import sitetree

        key = (facts.wheel_platform, facts.python_full, venv)
        with self.lock:
            tree = self.trees.get(key)
        if tree is None:  # built outside the lock: other hosts need not wait (sitetree locks its cache)
            tree = sitetree.build(house, *key, log=self.log)
            with self.lock:
                self.trees[key] = tree
        return tree


#: Hosts worked on at once. Each is mostly waiting on its node, so a 20-Pi cluster goes in one
#: wave (with 16, the last four hosts of a 20-node re-run waited for a whole second round).
PARALLEL_HOSTS = 32


def run_parallel(items: list[HostRun], fn: Callable[[HostRun], HostResult | None]) -> list[HostResult | None]:
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(PARALLEL_HOSTS, len(items)), thread_name_prefix="provision") as pool:
        return list(pool.map(fn, items))
