"""One host's provisioning plan, as a value: built without a connection, decided by one probe.

A plan is the host's steps in order, each carrying its desired state (from the
node, its facts and the roles: :func:`host_plan`, pure). Probing decides it
(:meth:`HostPlan.decide`): every step gets a :class:`~piblade.provision.steps.Change`
of a typed :class:`~piblade.provision.steps.ChangeKind`, or an
:class:`~piblade.provision.steps.Ok` that says why nothing is needed. The
restarts follow from the decisions: a service is restarted when a step that
notifies it changed, unless this run starts it anyway (``ChangeKind.START``).
``--check`` prints a decided plan; the engine applies its :attr:`HostPlan.changes`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from piblade.inventory import Node
from piblade.provision import roles
from piblade.provision.facts import NodeFacts
from piblade.provision.sitetree import SiteTree
from piblade.provision.steps import Change, ChangeKind, Decision, Service, Step
from piblade.provision.wheelhouse import Wheelhouse


@dataclass(frozen=True, slots=True)
class HostPlan:
    """The steps for one host, and once probed, each step's decision."""

    host: str
    steps: tuple[Step, ...]
    notes: tuple[str, ...] = ()
    #: One per step, in order, once probed; None before.
    decisions: tuple[Decision, ...] | None = None
    #: Services notified by a step that changed in an earlier stage of this run (they restart here).
    earlier: frozenset[str] = frozenset()

    def decide(self, outputs: Sequence[str]) -> HostPlan:
        """This plan decided from each step's probe output (one string per step, in order)."""
        return replace(self, decisions=tuple(s.decide(out) for s, out in zip(self.steps, outputs, strict=True)))

    @property
    def decided(self) -> tuple[Decision, ...]:
        if self.decisions is None:
            raise ValueError(f"the plan of {self.host} has not been probed yet")
        return self.decisions

    @property
    def notified(self) -> frozenset[str]:
        """Services (without ``.service``) that a changed step of this plan, or an earlier stage, notifies."""
        return self.earlier | frozenset(
            name.removesuffix(".service")
            for step, decision in zip(self.steps, self.decided, strict=True) if isinstance(decision, Change)
            for name in step.notify
        )

    @property
    def restarts(self) -> tuple[Change, ...]:
        """Restarts of the notified services this plan manages, except those it starts anyway."""
        notified = self.notified
        return tuple(
            step.restart() for step, decision in zip(self.steps, self.decided, strict=True)
            if isinstance(step, Service) and step.unit.removesuffix(".service") in notified
            and not (isinstance(decision, Change) and decision.kind is ChangeKind.START)
        )

    @property
    def changes(self) -> tuple[Change, ...]:
        """What applying the plan runs, in this order: each step's change, then the restarts."""
        return tuple(d for d in self.decided if isinstance(d, Change)) + self.restarts

    @property
    def outcome(self) -> tuple[Decision, ...]:
        """Every decision in step order, then the restarts: what --check lists."""
        return self.decided + self.restarts

    def split(self, later: Callable[[Step], bool]) -> tuple[HostPlan, HostPlan]:
        """Two stages of this plan: the other steps first (with the notes), then those ``later`` selects."""
        return (replace(self, steps=tuple(s for s in self.steps if not later(s)), decisions=None),
                replace(self, steps=tuple(s for s in self.steps if later(s)), notes=(), decisions=None))


def host_plan(node: Node, facts: NodeFacts, ctx: roles.Context, wheelhouse: Wheelhouse | SiteTree,
              tags: frozenset[str] = frozenset()) -> HostPlan:
    """The plan for a remote node: its roles' steps (only those with one of ``tags``, if any) and notes."""
    steps, notes = roles.plan(node, facts, ctx, wheelhouse)
    return HostPlan(node.name, tuple(roles.filter_tags(steps, tags)), tuple(notes))
