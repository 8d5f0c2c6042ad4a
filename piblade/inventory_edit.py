"""Add a host to an inventory file and keep everything else as the user wrote it.

PyYAML (which :mod:`piblade.inventory` reads with) drops comments and
re-flows a file it writes; ruamel.yaml's round-trip mode keeps comments, key
order, quoting, flow lists and the file's indentation, so an edit changes only
the lines of the new host. ruamel.yaml is only the writer here: the file is
first read by piblade's own reader (an inventory it refuses, e.g. one whose
aliases would expand to millions of values, is never edited), and the edited
text is loaded by that reader again before it replaces the file; anything it
refuses leaves the original untouched.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

from piblade.errors import InventoryError
from piblade.inventory import ROLES, Cluster, load_inventory
from piblade.state import write_atomic


@dataclass(frozen=True, slots=True)
class InventoryEdit:
    """The edited text and the cluster piblade's reader made of it (not yet written)."""

    path: Path
    text: str
    cluster: Cluster


def _layout(text: str) -> tuple[int, int]:
    """The file's mapping indent and block-sequence dash offset, as written (ruamel's guess mixes them)."""
    indent, offset = 0, -1
    previous: tuple[int, str] | None = None  # (column, text) of the last significant line
    for raw in text.splitlines():
        line = raw.rstrip()
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        column = len(line) - len(stripped)
        if previous is not None and previous[1].endswith(":"):
            if stripped.startswith("- ") and offset < 0:
                offset = column - previous[0]
            elif not stripped.startswith("- ") and column > previous[0] and not indent:
                indent = column - previous[0]
        previous = (column, stripped)
    return indent or 2, max(offset, 0)


def _round_trip(text: str, source: str) -> tuple[Any, YAML]:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    mapping, offset = _layout(text)
    yaml.indent(mapping=mapping, sequence=offset + 2, offset=offset)
    try:
        data = yaml.load(text)
    except YAMLError as exc:  # the reader accepted it, so this is a ruamel limit, not the user's error
        raise InventoryError(f"cannot edit this file while keeping its layout: {exc}", file=source) from exc
    return data, yaml


def _mapping(parent: CommentedMap, key: str) -> CommentedMap:
    """``parent[key]`` as a mapping, created (or filled in for an empty ``key:``) when missing."""
    value = parent.get(key)
    if value is None:
        value = CommentedMap()
        parent[key] = value
    return value


def _read_checked(path: Path) -> tuple[str, Cluster]:
    cluster = load_inventory(path)  # the reader's checks (alias bombs, size, layout) come first
    return path.read_text(), cluster


def _load_text(path: Path, text: str) -> Cluster:
    """piblade's reader on ``text`` as if it were ``path`` (a temporary file beside it)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".check")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        try:
            cluster = load_inventory(tmp)
        except InventoryError as exc:
            raise InventoryError(f"the edited inventory would not load: {exc.message}", file=str(path),
                                 hint="the file was left unchanged; please report this with the inventory") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
    return Cluster(name=cluster.name, source=str(path), nodes=cluster.nodes)


def plan_add_host(path: Path, name: str, role: str, host_vars: Mapping[str, Any]) -> InventoryEdit:
    """The file with ``name`` added under ``all: children: <role>: hosts:``, checked by the reader.

    A name or ``ansible_host`` already in the inventory is refused.
    """
    if role not in ROLES or role == "controller":
        raise InventoryError(f"role {role!r}: a new node is one of workers, nas", file=str(path), key=name)
    original, cluster = _read_checked(path)
    source = str(path)
    if any(node.name == name for node in cluster.nodes):
        raise InventoryError("a node of that name is already in the inventory", file=source, key=name,
                             hint="pick another name, or remove the old node from the inventory first")
    address = host_vars.get("ansible_host", name)
    taken = next((node for node in cluster.nodes if node.address == address), None)
    if taken is not None:
        raise InventoryError(f"address {address} is already used by node {taken.name!r}", file=source, key=name,
                             hint="pick a free address (--ip), or remove the old node from the inventory first")
    if role == "nas" and cluster.nas is not None:
        raise InventoryError(f"the cluster already has a NAS node ({cluster.nas.name})", file=source, key=name,
                             hint="piblade supports one NAS node; add this one with --role workers")
    data, yaml = _round_trip(original, source)
    children = _mapping(data["all"], "children")
    group = _mapping(children, role)
    hosts = _mapping(group, "hosts")
    entry = CommentedMap()
    for key, value in host_vars.items():
        entry[key] = value
    hosts[name] = entry
    out = io.StringIO()
    yaml.dump(data, out)
    text = out.getvalue()
    return InventoryEdit(path, text, _load_text(path, text))


def commit(edit: InventoryEdit) -> None:
    """Replace the inventory with the edited text atomically, keeping the file's mode."""
    write_atomic(edit.path, edit.text, edit.path.stat().st_mode & 0o7777)
