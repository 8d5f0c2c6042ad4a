"""Ansible-YAML inventory -> a validated, frozen description of the cluster.

Why Ansible's format: users already have one, and ``ansible-playbook -i`` reads
the same file. piblade's own settings are host/group vars prefixed ``piblade_``
(the table :data:`SETTINGS`); every other var is carried untouched in
``Node.extra_vars``. Variable precedence is Ansible's: ``all`` vars < parent
group < child group (same depth: ``ansible_group_priority``, then name) < host
vars; a host listed in several groups merges its host vars in file order.

We compose PyYAML's node tree ourselves instead of loading plain dicts, so every
key keeps its line and every error names ``file:line: key``. Rules beyond
Ansible's, each because silently accepting the file would run the wrong cluster:

- The top level is exactly ``all:`` (other groups go under ``all: children:``).
- Role groups are ``controller`` (exactly one host: it runs Redis), ``nas`` (at
  most one host) and ``workers``; membership through child groups counts, as in
  Ansible. Other groups are carried in ``Node.groups`` unless the name is a near
  miss of a role (difflib ratio >= 0.8 ignoring case, e.g. ``worker``,
  ``Workers``, ``contoller``) and does not contain the role as a ``_``/``-``/``.``
  separated word (``gpu_workers`` is fine): a typo would leave hosts roleless.
- A host in ``workers`` or ``nas`` needs an address other nodes can reach:
  ``ansible_host``, ``ansible_connection: local``, or an inventory name that is
  ``localhost``, an IP address or a DNS name with a dot (``pi1.lan``). A bare
  ``pi1`` is refused: it may resolve only through the user's own SSH config.
- A key twice in one mapping (e.g. a host twice under one group's ``hosts:``) is
  an error; PyYAML would silently keep the last one.
- ``piblade_cluster_name``, ``piblade_results_host`` and ``piblade_results_port`` are
  cluster-wide, so only ``all: vars:`` may set them.
- Host ranges (``pi[1:3]``) are not expanded; they are refused.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from piblade import envvars
from piblade.errors import InventoryError, NotFound
from piblade.healthmodel import DEFAULT_MAX_TEMP
from piblade.lazymodule import lazy_module
from piblade.registry import did_you_mean

if TYPE_CHECKING:
    import yaml
else:  # PyYAML loads when an inventory is read: commands on the local cluster never pay for it
    yaml = lazy_module("yaml")

ROLES = ("controller", "nas", "workers")
INVENTORY_ENV = envvars.INVENTORY.name
_GROUP_KEYS = ("hosts", "vars", "children")
_CONSUMED = frozenset({"ansible_host", "ansible_port", "ansible_user", "ansible_become"})
_DNS_NAME = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))+\.?$")
_TRUE, _FALSE = {"yes", "true", "on", "1"}, {"no", "false", "off", "0"}
MAX_INVENTORY_BYTES = 64 << 20  # ~1M hosts; anything bigger is not an inventory
# Aliases share one composed node, but every consumer (merge keys, vars, `show`) expands them:
# a 1 KB "billion laughs" file would expand to 10**9 nodes. We allow this many nodes beyond
# the ones written in the file, plus a few per written node (a `<<: *defaults` on every host).
_ALIAS_ALLOWANCE = 100_000
_ALIAS_PER_NODE = 4


@dataclass(frozen=True, slots=True)
class Setting:
    """One ``piblade_`` variable. Docs are generated from this table, and a test checks them."""

    name: str
    type: str  # "str" | "int" | "float" | "port" | "list[str]"
    default: Any
    help: str
    min: float | None = None
    min_exclusive: bool = False
    scope: str = "node"  # "cluster": only all.vars may set it

    @property
    def field(self) -> str:
        return self.name.removeprefix("piblade_")

    @property
    def expected(self) -> str:
        if self.type == "port":
            return "a port number 1..65535"
        if self.type == "list[str]":
            return "a non-empty list of strings"
        text = {"str": "a non-empty string", "int": "an integer", "float": "a number"}[self.type]
        if self.min is not None:
            text += f" {'>' if self.min_exclusive else '>='} {self.min:g}"
        return text

    def parse(self, value: Any) -> Any:
        """Return the typed value or raise ValueError; the caller knows file and line."""
        if value is None and self.default is None:
            return None
        if self.type == "port":
            return _port(value)
        if self.type == "list[str]":
            if isinstance(value, list | tuple) and value and all(isinstance(v, str) and v.strip() for v in value):
                return tuple(value)
            raise ValueError(value)
        if self.type == "str":
            if isinstance(value, str) and value.strip():
                return value
            raise ValueError(value)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(value)
        if self.type == "int" and not isinstance(value, int):
            raise ValueError(value)
        if self.min is not None and (value <= self.min if self.min_exclusive else value < self.min):
            raise ValueError(value)
        return float(value) if self.type == "float" else value


SETTINGS: tuple[Setting, ...] = (
    Setting("piblade_cluster_name", "str", None, "Name shown by status and the dashboard; "
            "defaults to the inventory file's name without extension.", scope="cluster"),
    Setting("piblade_worker_processes", "int", 0, "Worker processes on this node; 0 means one per CPU core, "
            "fewer where memory is short (piblade/workersize.py; per Pi model in README, Workers).", min=0),
    Setting("piblade_queues", "list[str]", ("default",), "Queues this node's workers listen to, highest first."),
    Setting("piblade_redis_port", "port", 6379, "Port of the Redis server; read from the controller node."),
    Setting("piblade_redis_bind", "str", None, "Address Redis listens on; unset means the controller's address."),
    Setting("piblade_share", "str", "piblade", "Samba share name; read from the NAS node."),
    Setting("piblade_nas_path", "str", "/srv/piblade", "Directory on the NAS node's disk that the share exports."),
    Setting("piblade_nas_device", "str", None, "The NAS node's data disk as LABEL=... or UUID=...; mounted at "
            "piblade_nas_path with nofail, so the Pi still boots when the disk is missing. Unset: a plain directory."),
    Setting("piblade_mount", "str", "/mnt/piblade", "Where this node mounts the share."),
    Setting("piblade_health_interval", "float", 5.0, "Seconds between health heartbeats from this node.",
            min=0, min_exclusive=True),
    Setting("piblade_max_temp", "float", DEFAULT_MAX_TEMP, "CPU temperature in degrees C above which this node shows as hot."),
    Setting("piblade_numba_threads", "int", 0, "Numba threads per worker process; 0 means automatic.", min=0),
    Setting("piblade_warm", "list[str]", None, "Jobs whose Numba kernels workers compile before they take tasks; "
            "unset means every job. Others compile on first use (for slow nodes, e.g. an emulated one)."),
    Setting("piblade_python", "str", "python3", "Python interpreter used to create the node's virtualenv."),
    Setting("piblade_results_host", "str", None, "The node whose PostgreSQL keeps run history; unset means the "
            "NAS node (else the controller).", scope="cluster"),
    Setting("piblade_results_port", "port", 5432, "Port of the results database (PostgreSQL) on the results node.",
            scope="cluster"),
    Setting("piblade_alert_targets", "list[str]", None, "Names of the alert targets to notify (`piblade alerts "
            "set-target NAME` stores each one's Apprise URL in the cluster's 0600 secrets, never here); unset: "
            "every target stored.", scope="cluster"),
    Setting("piblade_alert_down_after", "int", 3, "A node is down (and alerted) after this many heartbeat "
            "intervals without a heartbeat.", min=1, scope="cluster"),
    Setting("piblade_alert_disk_percent", "float", 90.0, "Alert when a node's root disk is this full (percent).",
            min=0, min_exclusive=True, scope="cluster"),
    Setting("piblade_alert_share_percent", "float", 90.0, "Alert when the NAS share is this full (percent).",
            min=0, min_exclusive=True, scope="cluster"),
    Setting("piblade_alert_deadman_interval", "float", 60.0, "Seconds between dead-man pings, when a dead-man "
            "URL is set (`piblade alerts set-target --deadman`).", min=0, min_exclusive=True, scope="cluster"),
    Setting("piblade_known_hosts", "str", None, "known_hosts file on the controller that this node's SSH host key "
            "is checked against and `piblade trust` adds it to; unset means ~/.ssh/known_hosts. Usually set "
            "once under all: vars:."),
)
_SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}
_NODE_SETTINGS = tuple(s for s in SETTINGS if s.scope == "node")
_NODE_FIELDS = tuple((s.field, s.name, s.default) for s in _NODE_SETTINGS)


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """The typed ``piblade_`` values of one node (cluster-scope settings live on :class:`Cluster`)."""

    worker_processes: int = 0
    queues: tuple[str, ...] = ("default",)
    redis_port: int = 6379
    redis_bind: str | None = None
    share: str = "piblade"
    nas_path: str = "/srv/piblade"
    nas_device: str | None = None
    mount: str = "/mnt/piblade"
    health_interval: float = 5.0
    max_temp: float = DEFAULT_MAX_TEMP
    numba_threads: int = 0
    warm: tuple[str, ...] | None = None
    python: str = "python3"
    known_hosts: str | None = None


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """The typed cluster-wide ``piblade_alert_*`` values (only ``all: vars:`` sets them)."""

    alert_targets: tuple[str, ...] | None = None
    alert_down_after: int = 3
    alert_disk_percent: float = 90.0
    alert_share_percent: float = 90.0
    alert_deadman_interval: float = 60.0


_CLUSTER_FIELDS = tuple((s.field, s.name, s.default) for s in SETTINGS if s.name.startswith("piblade_alert_"))


class FrozenVars(Mapping[str, Any]):
    """Read-only, hashable vars, so a frozen Node can be hashed and shared safely.

    Nested lists become tuples, dicts become FrozenVars and sets frozensets.
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[Any, Any] | None = None) -> None:
        self._data = {str(k): _freeze(v) for k, v in (data or {}).items()}

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return f"FrozenVars({self._data!r})"

    def to_plain(self) -> dict[str, Any]:
        return {k: _thaw(v) for k, v in self._data.items()}


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return FrozenVars(value)
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return frozenset(value) if isinstance(value, set) else value


def _thaw(value: Any) -> Any:
    if isinstance(value, FrozenVars):
        return value.to_plain()
    if isinstance(value, tuple | frozenset):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Node:
    """One host of the cluster with everything piblade needs to reach and configure it."""

    name: str
    address: str
    port: int = 22
    user: str | None = None
    become: bool = False
    roles: frozenset[str] = frozenset()
    settings: NodeSettings = field(default_factory=NodeSettings)
    extra_vars: FrozenVars = field(default_factory=FrozenVars)
    groups: frozenset[str] = frozenset()  # every group it is in, roles included, `all` excluded

    @property
    def is_local(self) -> bool:
        return self.extra_vars.get("ansible_connection") == "local"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.address,
            "port": self.port,
            "user": self.user,
            "become": self.become,
            "roles": sorted(self.roles),
            "groups": sorted(self.groups),
            "settings": {f.name: _thaw(getattr(self.settings, f.name)) for f in fields(NodeSettings)},
            "extra_vars": self.extra_vars.to_plain(),
        }


@dataclass(frozen=True, slots=True)
class Cluster:
    """A validated inventory: exactly one controller, at most one NAS, any number of workers."""

    name: str
    source: str
    nodes: tuple[Node, ...]
    #: The node named by ``piblade_results_host`` (checked to exist), None for the default.
    results_host: str | None = None
    results_port: int = 5432
    settings: ClusterSettings = field(default_factory=ClusterSettings)

    @property
    def results_node(self) -> Node:
        """Where the results database (PostgreSQL) runs: the named node, else the NAS node, else the controller."""
        if self.results_host is not None:
            return self.node(self.results_host)
        return self.nas or self.controller

    @property
    def controller(self) -> Node:
        for node in self.nodes:
            if "controller" in node.roles:
                return node
        raise NotFound(f"{self.source} has no controller", hint="add a `controller` group with one host")

    @property
    def nas(self) -> Node | None:
        return next((n for n in self.nodes if "nas" in n.roles), None)

    @property
    def workers(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if "workers" in n.roles)

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise NotFound(
            f"no node {name!r} in {self.source}{did_you_mean(name, (n.name for n in self.nodes))}",
            hint="`piblade inventory show` lists the nodes",
        )

    def to_dict(self) -> dict[str, Any]:
        nas = self.nas
        return {
            "name": self.name,
            "source": self.source,
            "controller": self.controller.name,
            "nas": nas.name if nas else None,
            "results": {"node": self.results_node.name, "port": self.results_port},
            "workers": [n.name for n in self.workers],
            "nodes": [n.to_dict() for n in self.nodes],
            "settings": {f.name: _thaw(getattr(self.settings, f.name)) for f in fields(ClusterSettings)},
        }


def load_inventory(path: str | Path) -> Cluster:
    """Read and validate an inventory file; every problem is an :class:`InventoryError`."""
    source = str(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_INVENTORY_BYTES + 1)
    except FileNotFoundError:
        raise InventoryError(
            "no such inventory file", file=source, hint="pass -i FILE, or copy inventory/example.yml and edit it"
        ) from None
    except OSError as exc:
        raise InventoryError(f"cannot read the inventory: {exc}", file=source) from None
    if len(data) > MAX_INVENTORY_BYTES:
        raise InventoryError(
            f"the file is larger than {MAX_INVENTORY_BYTES >> 20} MiB; refusing to read it", file=source,
            hint="is this really an inventory? split a cluster this size into several",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise InventoryError(
            f"not UTF-8: byte 0x{data[exc.start]:02x} in column {column}", file=source, line=line,
            hint="save the file as UTF-8",
        ) from None
    return parse_inventory(text, source=source)


def parse_inventory(text: str, *, source: str) -> Cluster:
    """Validate inventory ``text``; ``source`` names it in errors and gives the default cluster name."""
    return _Parser(text, source).parse()


def _port(value: Any) -> int:
    """Ansible accepts ``"2222"`` as well as ``2222``, so we do too."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(value)
    return value


def _looks_like_address(name: str) -> bool:
    if name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return bool(_DNS_NAME.match(name)) and not name.replace(".", "").isdigit()


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


_STR, _MERGE = "tag:yaml.org,2002:str", "tag:yaml.org,2002:merge"


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _verbatim(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    return str(loader.construct_scalar(node))  # type: ignore[arg-type]


@functools.cache
def _loader_class() -> type[yaml.SafeLoader]:
    """SafeLoader used to compose the node tree only; :class:`_Parser` walks it for line numbers.

    Made on first use: a command on the local cluster reads no inventory and does not import PyYAML.
    """
    base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10x faster

    class _Loader(base):  # type: ignore[valid-type,misc]
        pass

    # Ansible's own tags: we never decrypt vaulted values, we only carry them.
    _Loader.add_constructor("!vault", _verbatim)
    _Loader.add_constructor("!unsafe", _verbatim)
    return _Loader


_Var = tuple[Any, int]  # (value, line)


@dataclass(slots=True)
class _Group:
    name: str
    line: int
    parents: set[str] = field(default_factory=set)
    vars: dict[str, _Var] = field(default_factory=dict)


@dataclass(slots=True)
class _Host:
    name: str
    line: int
    groups: dict[str, int] = field(default_factory=dict)  # direct group -> line listed there
    vars: dict[str, _Var] = field(default_factory=dict)


class _Parser:
    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.loader = _loader_class()(text)
        self.groups: dict[str, _Group] = {}
        self.hosts: dict[str, _Host] = {}

    def error(
        self, message: str, line: int | None = None, key: str | None = None, hint: str | None = None
    ) -> InventoryError:
        return InventoryError(message, file=self.source, line=line, key=key, hint=hint)

    def parse(self) -> Cluster:
        try:
            try:
                root = self.loader.get_single_node()
                if root is None:
                    raise self.error("the file is empty", hint="start from inventory/example.yml")
                self._check_aliases(root)
                return self._build(root)
            finally:
                self.loader.dispose()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else None
            raise self.error(f"invalid YAML: {exc.problem or exc.context}", line=line) from exc
        except yaml.YAMLError as exc:
            raise self.error(f"invalid YAML: {exc}") from exc

    def _check_aliases(self, root: yaml.Node) -> None:
        """Refuse a tree whose aliases expand far beyond what is written (a "billion laughs")."""
        expanded: dict[int, int] = {}  # id(node) -> its node count with every alias expanded
        open_: set[int] = set()
        written = 0

        def size(node: yaml.Node) -> int:
            nonlocal written
            if isinstance(node, yaml.ScalarNode):  # holds no alias; an aliased one counts as written again
                written += 1
                return 1
            known = expanded.get(id(node))
            if known is not None:
                return known
            if id(node) in open_:
                raise self.error("an alias refers to its own anchor (a recursive structure)", line=_line(node))
            written += 1
            total = 1
            if isinstance(node, yaml.SequenceNode | yaml.MappingNode):
                open_.add(id(node))
                children = node.value if isinstance(node, yaml.SequenceNode) else [n for kv in node.value for n in kv]
                for child in children:
                    total += size(child)
                    if total > _ALIAS_ALLOWANCE and total > _ALIAS_PER_NODE * written + _ALIAS_ALLOWANCE:
                        raise self.error(
                            f"aliases expand this to over {total:,} values; refusing", line=_line(node),
                            hint="YAML anchors (&name) and aliases (*name) here nest too deep: write the values out",
                        )
                open_.discard(id(node))
            expanded[id(node)] = total
            return total

        try:
            total = size(root)
        except RecursionError:
            raise self.error("the YAML nests too deep", line=_line(root)) from None
        if total > _ALIAS_PER_NODE * written + _ALIAS_ALLOWANCE:
            raise self.error(
                f"aliases expand the file to {total:,} values; refusing", line=_line(root),
                hint="YAML anchors (&name) and aliases (*name) here nest too deep: write the values out",
            )

    def _value(self, node: yaml.Node) -> Any:
        if node.tag == _STR and isinstance(node, yaml.ScalarNode):  # most values: skip the constructor
            return node.value
        try:
            return self.loader.construct_object(node, deep=True)
        except (ValueError, TypeError) as exc:  # PyYAML lets e.g. `!!int x` escape as ValueError
            raise self.error(f"invalid YAML value: {exc}", line=_line(node)) from None

    def _key(self, node: yaml.Node) -> str:
        value = self._value(node) if isinstance(node, yaml.ScalarNode) else None
        if value is None or value == "":
            raise self.error("expected a name here", line=_line(node))
        return str(value)

    def _pairs(self, node: yaml.Node, what: str, dup: str = "duplicate key") -> list[tuple[str, int, yaml.Node]]:
        """The (key, line, value node) of a mapping, merge keys applied, duplicates refused."""
        if _is_null(node):
            return []
        if not isinstance(node, yaml.MappingNode):
            found = "a list" if isinstance(node, yaml.SequenceNode) else f"{self._value(node)!r}"
            raise self.error(f"expected a mapping (`name:` lines) for {what}, found {found}", line=_line(node))
        seen: dict[str, int] = {}
        pairs: list[tuple[str, int, yaml.Node]] = []
        merges = False
        for knode, vnode in node.value:
            if knode.tag == _MERGE:
                merges = True
                continue
            key = self._key(knode)
            line = _line(knode)
            if key in seen:
                raise self.error(f"{dup} in {what} (first on line {seen[key]})", line=line, key=key)
            seen[key] = line
            pairs.append((key, line, vnode))
        if not merges:
            return pairs
        self.loader.flatten_mapping(node)
        merged = {self._key(k): (_line(k), v) for k, v in node.value}
        return [(key, line, value) for key, (line, value) in merged.items()]

    def _build(self, root: yaml.Node) -> Cluster:
        top = self._pairs(root, "the top level") if isinstance(root, yaml.MappingNode) else []
        if [key for key, _, _ in top] != ["all"]:
            key, line = next(((k, ln) for k, ln, _ in top if k != "all"), (None, _line(root)))
            raise self.error(
                "the top level must be a single `all:` group", line=line, key=key,
                hint="put your groups under all: children: (Ansible's YAML inventory layout)",
            )
        _, all_line, all_node = top[0]
        self._group("all", all_line, all_node, ())
        return self._resolve(all_line)

    def _group(self, name: str, line: int, node: yaml.Node, stack: tuple[str, ...]) -> None:
        group = self.groups.setdefault(name, _Group(name, line))
        if stack:
            group.parents.add(stack[-1])
        for key, kline, value in self._pairs(node, f"group {name!r}"):
            if key == "vars":
                for var, vline, vnode in self._pairs(value, f"{name} vars"):
                    group.vars[var] = self._var(var, vline, vnode, scope=name)
            elif key == "hosts":
                for host, hline, hnode in self._pairs(value, f"{name} hosts", dup="duplicate host"):
                    self._host(host, hline, hnode, name)
            elif key == "children":
                for child, cline, cnode in self._pairs(value, f"{name} children", dup="duplicate group"):
                    self._check_group_name(child, cline, stack + (name,))
                    self._group(child, cline, cnode, stack + (name,))
            else:
                raise self.error(
                    f"unknown key in group {name!r}{did_you_mean(key, _GROUP_KEYS)}", line=kline, key=key,
                    hint="a group has only hosts:, vars: and children:",
                )

    def _check_group_name(self, name: str, line: int, ancestors: tuple[str, ...]) -> None:
        if name in ancestors:
            raise self.error(f"group {name!r} contains itself", line=line, key=name)
        lowered, words = name.lower(), re.split(r"[_.\-]", name.lower())
        if name in ROLES or (len(words) > 1 and set(words) & set(ROLES)):
            return
        if difflib.get_close_matches(lowered, ROLES, n=1, cutoff=0.8):
            raise self.error(
                f"group {name!r} is not a piblade role{did_you_mean(lowered, ROLES)}", line=line, key=name,
                hint="the role groups are controller, nas and workers; rename your own group if it is not a typo",
            )

    def _host(self, name: str, line: int, node: yaml.Node, group: str) -> None:
        if re.search(r"\[.*:.*\]", name):
            raise self.error("host ranges are not supported; list each host", line=line, key=name)
        host = self.hosts.setdefault(name, _Host(name, line))
        host.groups.setdefault(group, line)
        for var, vline, vnode in self._pairs(node, f"host {name!r}"):
            if var in _GROUP_KEYS:
                raise self.error(
                    f"host {name!r} has a {var}: key", line=vline, key=var,
                    hint="host vars go directly under the host name; groups go under children:",
                )
            host.vars[var] = self._var(var, vline, vnode, scope="host")

    def _var(self, key: str, line: int, node: yaml.Node, scope: str) -> _Var:
        """Type-check a var where it is written, so the error points at that line."""
        value = self._value(node)
        if key.startswith("piblade_"):
            setting = _SETTINGS_BY_NAME.get(key)
            if setting is None:
                raise self.error(
                    f"unknown piblade setting{did_you_mean(key, _SETTINGS_BY_NAME)}", line=line, key=key,
                    hint="inventory/example.yml documents every piblade_ setting",
                )
            if setting.scope == "cluster" and scope != "all":
                raise self.error("is cluster-wide: set it under all: vars:", line=line, key=key)
            try:
                return setting.parse(value), line
            except ValueError:
                raise self.error(f"expected {setting.expected}, got {value!r}", line=line, key=key) from None
        if key == "ansible_port":
            try:
                return _port(value), line
            except ValueError:
                raise self.error(f"expected a port number 1..65535, got {value!r}", line=line, key=key) from None
        if key == "ansible_become":
            text = str(value).lower()
            if isinstance(value, bool) or text in _TRUE | _FALSE:
                return (value if isinstance(value, bool) else text in _TRUE), line
            raise self.error(f"expected true or false, got {value!r}", line=line, key=key)
        if key in ("ansible_host", "ansible_user") and not (isinstance(value, str) and value.strip()):
            raise self.error(f"expected a non-empty string, got {value!r}", line=line, key=key)
        return value, line

    def _ancestors(self, name: str) -> set[str]:
        found = {name}
        for parent in self.groups[name].parents:
            found |= self._ancestors(parent)
        return found

    def _depth(self, name: str) -> int:
        return 1 + max((self._depth(p) for p in self.groups[name].parents), default=-1)

    def _priority(self, name: str) -> int:
        value = self.groups[name].vars.get("ansible_group_priority", (1, 0))[0]
        return value if isinstance(value, int) else 1

    def _resolve(self, all_line: int) -> Cluster:
        cluster_name = self.groups["all"].vars.get("piblade_cluster_name", (None, 0))[0]
        nodes: list[Node] = []
        role_lines: dict[str, list[tuple[int, str]]] = {role: [] for role in ROLES}
        # Hosts listed in the same groups share their group closure and group vars: compute them once.
        memo: dict[tuple[str, ...], tuple[dict[str, set[str]], set[str], dict[str, _Var]]] = {}
        for host in self.hosts.values():
            direct = tuple(host.groups)
            if direct not in memo:
                closure = {g: self._ancestors(g) for g in host.groups}
                member = set().union(*closure.values())
                ordered = sorted(member, key=lambda g: (self._depth(g), self._priority(g), g))
                group_vars: dict[str, _Var] = {}
                for group in ordered:
                    group_vars.update(self.groups[group].vars)
                memo[direct] = closure, member, group_vars
            closure, member, group_vars = memo[direct]
            merged = dict(group_vars)
            merged.update(host.vars)
            values = {key: value for key, (value, _) in merged.items()}
            roles = frozenset(member & set(ROLES))
            for role in roles:
                role_lines[role].append((min(ln for g, ln in host.groups.items() if role in closure[g]), host.name))
            local = values.get("ansible_connection") == "local"
            reachable = "ansible_host" in values or local or _looks_like_address(host.name)
            if roles & {"workers", "nas"} and not reachable:
                raise self.error(
                    "no ansible_host, and the name is not an IP address, localhost or a DNS name with a dot",
                    line=host.line, key=host.name,
                    hint="add ansible_host: <IP or DNS name> so the other nodes can reach it",
                )
            nodes.append(Node(
                name=host.name,
                address=values.get("ansible_host", host.name),
                port=values.get("ansible_port", 22),
                user=values.get("ansible_user"),
                become=values.get("ansible_become", False),
                roles=roles,
                settings=NodeSettings(**{f: values.get(name, default) for f, name, default in _NODE_FIELDS}),
                extra_vars=FrozenVars({k: v for k, v in values.items() if k not in _CONSUMED and k[:8] != "piblade_"}),
                groups=frozenset(member - {"all"}),
            ))
        if not role_lines["controller"]:
            empty = self.groups.get("controller")
            raise self.error(
                "no controller: the `controller` group must list the host that runs Redis",
                line=empty.line if empty else all_line, key="controller",
                hint="add under all: children: a `controller:` group with `hosts:` and one host",
            )
        for role in ("controller", "nas"):
            found = sorted(role_lines[role])
            if len(found) > 1:
                raise self.error(
                    f"more than one host in {role} ({found[0][1]}, {found[1][1]}); piblade supports one",
                    line=found[1][0], key=role,
                )
        results_host, results_line = self.groups["all"].vars.get("piblade_results_host", (None, 0))
        if results_host is not None and results_host not in {n.name for n in nodes}:
            raise self.error(
                f"names no host of this inventory{did_you_mean(str(results_host), (n.name for n in nodes))}",
                line=results_line, key="piblade_results_host",
                hint="name the host whose PostgreSQL keeps run history, or leave it unset for the NAS node",
            )
        results_port = self.groups["all"].vars.get("piblade_results_port", (5432, 0))[0]
        all_vars = self.groups["all"].vars
        settings = ClusterSettings(**{f: all_vars.get(name, (default, 0))[0] for f, name, default in _CLUSTER_FIELDS})
        return Cluster(name=cluster_name or Path(self.source).stem, source=self.source, nodes=tuple(nodes),
                       results_host=results_host, results_port=results_port, settings=settings)
