"""Adding a host keeps the user's file as written, and piblade's reader (and Ansible) still read it."""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from piblade.errors import InventoryError
from piblade.inventory import load_inventory
from piblade.inventory_edit import commit, plan_add_host

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_INVENTORY = Path(sys.executable).parent / "ansible-inventory"


def only_lines_added(before: str, after: str) -> list[str]:
    """The added lines, after checking that nothing was changed or removed."""
    added: list[str] = []
    a, b = before.splitlines(), after.splitlines()
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        assert op in ("equal", "insert"), f"{op}: {a[i1:i2]} -> {b[j1:j2]}"
        if op == "insert":
            added += b[j1:j2]
    return added


def ansible_hosts(path: Path) -> dict[str, object]:
    run = subprocess.run([str(ANSIBLE_INVENTORY), "-i", str(path), "--list"], capture_output=True, text=True,
                         env={**os.environ, "ANSIBLE_NOCOLOR": "1"}, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "WARNING" not in run.stderr, run.stderr
    data: dict[str, object] = json.loads(run.stdout)
    return data


def test_the_example_keeps_every_comment_and_gains_two_lines(tmp_path: Path) -> None:
    path = tmp_path / "home.yml"
    original = (ROOT / "inventory" / "example.yml").read_text()
    path.write_text(original)
    edit = plan_add_host(path, "blade-w4", "workers", {"ansible_host": "192.168.1.24"})
    assert path.read_text() == original  # planned, not written
    commit(edit)
    after = path.read_text()
    assert only_lines_added(original, after) == ["        blade-w4:", "          ansible_host: 192.168.1.24"]
    cluster = load_inventory(path)
    node = cluster.node("blade-w4")
    assert node.address == "192.168.1.24" and node.roles == {"workers"}
    assert node.settings.worker_processes == 4  # the workers group vars apply
    assert edit.cluster.source == str(path)
    hostvars = ansible_hosts(path)["_meta"]["hostvars"]  # type: ignore[index]
    assert hostvars["blade-w4"]["ansible_host"] == "192.168.1.24"
    assert hostvars["blade-w4"]["piblade_queues"] == ["high", "default"]


def test_a_four_space_file_with_indented_lists_and_quotes_stays_so(tmp_path: Path) -> None:
    path = tmp_path / "lab.yml"
    original = """\
# my lab
all:
    vars:
        ansible_user: "pi"   # quoted on purpose
        piblade_queues:
            - high
            - default
    children:
        controller:
            hosts:
                ctl: {ansible_host: 10.0.0.2, ansible_connection: local}
        workers:
            hosts:
                w1:
                    ansible_host: '10.0.0.21'
        # more to come
"""
    path.write_text(original)
    commit(plan_add_host(path, "w2", "workers", {"ansible_host": "10.0.0.22", "ansible_user": "pi"}))
    after = path.read_text()
    assert only_lines_added(original, after) == [
        "                w2:", "                    ansible_host: 10.0.0.22", "                    ansible_user: pi",
    ]
    assert load_inventory(path).node("w2").address == "10.0.0.22"
    assert set(ansible_hosts(path)["workers"]["hosts"]) == {"w1", "w2"}  # type: ignore[index]


def test_a_missing_role_group_is_created(tmp_path: Path) -> None:
    path = tmp_path / "small.yml"
    path.write_text("all:\n  children:\n    controller:\n      hosts:\n        ctl: {ansible_connection: local}\n")
    commit(plan_add_host(path, "nas1", "nas", {"ansible_host": "10.0.0.9"}))
    assert load_inventory(path).nas.name == "nas1"  # type: ignore[union-attr]
    path.write_text("all:\n  children:\n    controller:\n      hosts:\n        ctl: {ansible_connection: local}\n"
                    "    workers:\n      hosts:\n")
    commit(plan_add_host(path, "w1", "workers", {"ansible_host": "10.0.0.21"}))
    assert [n.name for n in load_inventory(path).workers] == ["w1"]
    ansible_hosts(path)


@pytest.mark.parametrize(("name", "host", "message"), [
    ("blade-w1", "192.168.1.99", "home.yml: blade-w1: a node of that name is already in the inventory"),
    ("blade-w9", "192.168.1.22", "home.yml: blade-w9: address 192.168.1.22 is already used by node 'blade-w2'"),
])
def test_a_name_or_address_already_there_is_refused(tmp_path: Path, name: str, host: str, message: str) -> None:
    path = tmp_path / "home.yml"
    original = (ROOT / "inventory" / "example.yml").read_text()
    path.write_text(original)
    with pytest.raises(InventoryError) as err:
        plan_add_host(path, name, "workers", {"ansible_host": host})
    assert err.value.message == f"{path.parent}/{message}"
    assert path.read_text() == original


def test_a_second_nas_and_a_controller_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "home.yml"
    path.write_text((ROOT / "inventory" / "example.yml").read_text())
    with pytest.raises(InventoryError, match=r"already has a NAS node \(blade-nas\)"):
        plan_add_host(path, "nas2", "nas", {"ansible_host": "192.168.1.12"})
    with pytest.raises(InventoryError, match="a new node is one of workers, nas"):
        plan_add_host(path, "c2", "controller", {"ansible_host": "192.168.1.13"})


def test_a_file_the_reader_refuses_is_not_edited(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yml"
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    bomb = "all:\n  vars:\n" + "".join(f"    {line}\n" for line in levels) + (
        "  children:\n    controller:\n      hosts:\n        ctl: {ansible_connection: local}\n")
    path.write_text(bomb)
    with pytest.raises(InventoryError, match="aliases expand"):
        plan_add_host(path, "w1", "workers", {"ansible_host": "10.0.0.21"})
    assert path.read_text() == bomb
    assert [p.name for p in tmp_path.iterdir()] == ["bomb.yml"]  # no temporary file left behind


def test_an_edit_the_reader_would_refuse_leaves_the_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "home.yml"
    original = (ROOT / "inventory" / "example.yml").read_text()
    path.write_text(original)
    with pytest.raises(InventoryError) as err:
        plan_add_host(path, "w9", "workers", {"ansible_host": "10.0.0.29", "piblade_worker_proceses": 2})
    assert "the edited inventory would not load" in err.value.message
    assert 'did you mean "piblade_worker_processes"' in err.value.message
    assert path.read_text() == original
    assert [p.name for p in tmp_path.iterdir()] == ["home.yml"]


def test_commit_keeps_the_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "home.yml"
    path.write_text((ROOT / "inventory" / "example.yml").read_text())
    path.chmod(0o640)
    commit(plan_add_host(path, "blade-w4", "workers", {"ansible_host": "192.168.1.24"}))
    assert path.stat().st_mode & 0o777 == 0o640
