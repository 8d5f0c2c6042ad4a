"""The inventory: shipped files, Ansible's precedence, and one test per error kind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import FrozenInstanceError, fields
from pathlib import Path

import pytest
from typer.testing import CliRunner

from piblade import inventory
from piblade.cli.inventory_cmd import app
from piblade.errors import InventoryError, NotFound, PibladeError
from piblade.inventory import (
    SETTINGS,
    Cluster,
    NodeSettings,
    load_inventory,
    parse_inventory,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "inventory" / "example.yml"
#: An inventory for this machine alone (Ansible's local connection): controller and worker in one.
LOCAL_TEXT = """\
all:
  vars:
    piblade_cluster_name: here
  children:
    controller:
      hosts:
        localhost:
          ansible_host: 127.0.0.1
          ansible_connection: local
    workers:
      hosts:
        localhost:
"""

CONTROLLER = """\
all:
  children:
    controller:
      hosts:
        ctl.lan:
"""


def write(tmp_path: Path, text: str, name: str = "inv.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str) -> Cluster:
    return load_inventory(write(tmp_path, text))


def error(tmp_path: Path, text: str, *, line: int | None, key: str | None) -> InventoryError:
    """Load ``text`` expecting an InventoryError at ``line`` naming ``key``; return it."""
    path = write(tmp_path, text)
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    exc = info.value
    assert (exc.file, exc.line, exc.key) == (str(path), line, key)
    where = str(path) if line is None else f"{path}:{line}"
    assert str(exc).startswith(f"{where}: {key}: " if key else f"{where}: ")
    return exc


# --- shipped files ---------------------------------------------------------------------------


def test_example_inventory() -> None:
    cluster = load_inventory(EXAMPLE)
    assert cluster.name == "home"
    assert [n.name for n in cluster.nodes] == ["blade-ctl", "blade-nas", "blade-w1", "blade-w2", "blade-w3"]
    assert cluster.controller.name == "blade-ctl"
    assert cluster.controller.address == "192.168.1.10"
    assert cluster.controller.settings.redis_bind == "192.168.1.10"
    nas = cluster.nas
    assert nas is not None and nas.name == "blade-nas"
    assert nas.settings.nas_path == "/mnt/usb/piblade"
    assert nas.settings.share == "piblade"
    assert [w.name for w in cluster.workers] == ["blade-w1", "blade-w2", "blade-w3"]
    for node in cluster.nodes:
        assert node.user == "pi" and node.become is True and node.port == 22
        assert len(node.roles) == 1
    w1, w3 = cluster.node("blade-w1"), cluster.node("blade-w3")
    assert w1.settings.worker_processes == 4 and w3.settings.worker_processes == 1
    assert w1.settings.queues == ("high", "default")
    assert w1.settings.numba_threads == 1


def test_local_inventory(tmp_path: Path) -> None:
    path = tmp_path / "here.yml"
    path.write_text(LOCAL_TEXT)
    cluster = load_inventory(path)
    assert cluster.name == "here"
    assert cluster.nas is None
    (node,) = cluster.nodes
    assert node.name == "localhost" and node.address == "127.0.0.1"
    assert node.roles == frozenset({"controller", "workers"})
    assert cluster.controller is node and cluster.workers == (node,)
    assert node.is_local
    assert node.extra_vars["ansible_connection"] == "local"


# --- precedence --------------------------------------------------------------------------------

PRECEDENCE = """\
all:
  vars:
    ansible_user: pi
    piblade_max_temp: 70
    piblade_mount: /mnt/all
    piblade_python: python3.11
    colour: grey
  children:
    controller:
      hosts:
        ctl.lan:
          ansible_port: 2222
    workers:
      vars:
        piblade_max_temp: 75
        piblade_mount: /mnt/workers
        colour: blue
      children:
        fast:
          vars:
            piblade_mount: /mnt/fast
            piblade_worker_processes: 4
          hosts:
            w1.lan:
              piblade_worker_processes: 8
              ansible_user: root
            w2.lan:
      hosts:
        w3.lan:
"""


def test_all_vars_then_parent_then_child_then_host(tmp_path: Path) -> None:
    cluster = load(tmp_path, PRECEDENCE)
    ctl, w1, w2, w3 = (cluster.node(n) for n in ("ctl.lan", "w1.lan", "w2.lan", "w3.lan"))
    assert (ctl.settings.max_temp, ctl.settings.mount, ctl.port, ctl.user) == (70.0, "/mnt/all", 2222, "pi")
    assert ctl.extra_vars["colour"] == "grey"
    assert (w3.settings.max_temp, w3.settings.mount, w3.settings.worker_processes) == (75.0, "/mnt/workers", 0)
    assert w3.extra_vars["colour"] == "blue"
    assert (w2.settings.max_temp, w2.settings.mount, w2.settings.worker_processes) == (75.0, "/mnt/fast", 4)
    assert (w1.settings.worker_processes, w1.user) == (8, "root")
    assert all(n.settings.python == "python3.11" for n in cluster.nodes)
    assert w1.roles == frozenset({"workers"}) and w1.groups == frozenset({"workers", "fast"})
    assert cluster.name == "inv"  # file stem when piblade_cluster_name is unset


def test_host_in_several_groups_merges_its_vars(tmp_path: Path) -> None:
    cluster = load(tmp_path, """\
        all:
          children:
            controller:
              hosts:
                pi1:
                  ansible_host: 10.0.0.1
                  piblade_max_temp: 60
            workers:
              vars:
                piblade_max_temp: 90
              hosts:
                pi1:
                  piblade_worker_processes: 2
        """)
    (pi1,) = cluster.nodes
    assert pi1.roles == frozenset({"controller", "workers"})
    assert pi1.address == "10.0.0.1"
    assert (pi1.settings.max_temp, pi1.settings.worker_processes) == (60.0, 2)


def test_same_depth_groups_by_name_then_priority(tmp_path: Path) -> None:
    text = """\
        all:
          children:
            controller:
              hosts:
                ctl.lan:
            beta:
              vars: {piblade_share: from-beta%s}
              hosts: {ctl.lan: }
            alpha:
              vars: {piblade_share: from-alpha}
              hosts: {ctl.lan: }
        """
    assert load(tmp_path, text % "").controller.settings.share == "from-beta"
    assert load(tmp_path, text % ", ansible_group_priority: 0").controller.settings.share == "from-alpha"


def test_merge_keys_vault_and_frozen_extra_vars(tmp_path: Path) -> None:
    cluster = load(tmp_path, """\
        all:
          children:
            controller:
              hosts:
                ctl.lan: &defaults
                  piblade_max_temp: 65
                  ansible_become_password: !vault |
                    $ANSIBLE_VAULT;1.1;AES256
                    6162
                  mounts: [{path: /a}, {path: /b}]
            workers:
              hosts:
                w1.lan:
                  <<: *defaults
                  piblade_max_temp: 70
        """)
    ctl, w1 = cluster.nodes
    assert (ctl.settings.max_temp, w1.settings.max_temp) == (65.0, 70.0)
    assert w1.extra_vars["ansible_become_password"].startswith("$ANSIBLE_VAULT;1.1")
    assert w1.extra_vars["mounts"][1]["path"] == "/b"
    with pytest.raises(TypeError):
        w1.extra_vars["x"] = 1  # type: ignore[index]
    with pytest.raises(FrozenInstanceError):
        w1.port = 2  # type: ignore[misc]
    again = load_inventory(tmp_path / "inv.yml")
    assert again == cluster and hash(again) == hash(cluster)
    assert cluster.to_dict()["nodes"][1]["extra_vars"]["mounts"] == [{"path": "/a"}, {"path": "/b"}]


def test_addresses_that_need_no_ansible_host(tmp_path: Path) -> None:
    cluster = load(tmp_path, CONTROLLER + """\
    workers:
      hosts:
        pi1.lan:
        10.0.0.5:
        fe80::1:
        localhost:
        laptop:
          ansible_connection: local
""")
    assert [w.address for w in cluster.workers] == ["pi1.lan", "10.0.0.5", "fe80::1", "localhost", "laptop"]


def test_user_groups_are_carried(tmp_path: Path) -> None:
    cluster = load(tmp_path, CONTROLLER + """\
    gpu_workers:
      hosts:
        ctl.lan:
    rack1:
      hosts:
        ctl.lan:
""")
    assert cluster.controller.groups == frozenset({"controller", "gpu_workers", "rack1"})
    assert cluster.controller.roles == frozenset({"controller"})


# --- errors: file, line and key ----------------------------------------------------------------


def test_yaml_syntax_error(tmp_path: Path) -> None:
    exc = error(tmp_path, "all:\n  vars:\n    a: 1\n   b: 2\n", line=4, key=None)
    assert "invalid YAML" in str(exc)


def test_top_level_must_be_all(tmp_path: Path) -> None:
    error(tmp_path, "workers:\n  hosts:\n    w1.lan:\n", line=1, key="workers")
    exc = error(tmp_path, CONTROLLER + "extra:\n  hosts:\n", line=6, key="extra")
    assert "`all:`" in str(exc)
    error(tmp_path, "- a\n", line=1, key=None)


@pytest.mark.parametrize(("group", "suggestion"), [("worker", "workers"), ("contoller", "controller"), ("Workers", "workers")])
def test_typo_of_a_role_group(tmp_path: Path, group: str, suggestion: str) -> None:
    exc = error(tmp_path, CONTROLLER + f"    {group}:\n      hosts:\n        w1.lan:\n", line=6, key=group)
    assert f'did you mean "{suggestion}"?' in str(exc)
    assert exc.hint and "controller, nas and workers" in exc.hint


def test_unknown_group_key(tmp_path: Path) -> None:
    exc = error(tmp_path, CONTROLLER + "    workers:\n      host:\n        w1.lan:\n", line=7, key="host")
    assert 'did you mean "hosts"?' in str(exc)


def test_duplicate_host_in_one_group(tmp_path: Path) -> None:
    exc = error(tmp_path, CONTROLLER + "    workers:\n      hosts:\n        w1.lan:\n        w1.lan:\n", line=9, key="w1.lan")
    assert "duplicate host" in str(exc) and "first on line 8" in str(exc)


@pytest.mark.parametrize("port", ["70000", "0", "ssh", "true"])
def test_bad_ansible_port(tmp_path: Path, port: str) -> None:
    exc = error(tmp_path, CONTROLLER + f"          ansible_port: {port}\n", line=6, key="ansible_port")
    assert "expected a port number 1..65535" in str(exc)


def test_bad_redis_port(tmp_path: Path) -> None:
    exc = error(tmp_path, "all:\n  vars:\n    piblade_redis_port: 65536\n" + CONTROLLER[5:], line=3, key="piblade_redis_port")
    assert str(exc).endswith("expected a port number 1..65535, got 65536")


def test_worker_without_usable_address(tmp_path: Path) -> None:
    exc = error(tmp_path, CONTROLLER + "    workers:\n      hosts:\n        pi1:\n", line=8, key="pi1")
    assert "no ansible_host" in str(exc)
    assert exc.hint and "ansible_host" in exc.hint


def test_nas_without_usable_address(tmp_path: Path) -> None:
    error(tmp_path, CONTROLLER + "    nas:\n      hosts:\n        disk:\n          piblade_share: s\n", line=8, key="disk")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("piblade_worker_processes: four", "expected an integer >= 0, got 'four'"),
        ("piblade_worker_processes: -1", "expected an integer >= 0, got -1"),
        ("piblade_worker_processes: 2.5", "expected an integer >= 0, got 2.5"),
        ("piblade_health_interval: 0", "expected a number > 0, got 0"),
        ("piblade_max_temp: hot", "expected a number, got 'hot'"),
        ("piblade_queues: high", "expected a non-empty list of strings, got 'high'"),
        ("piblade_queues: []", "expected a non-empty list of strings, got []"),
        ("piblade_share: ''", "expected a non-empty string, got ''"),
    ],
)
def test_wrong_type_for_a_setting(tmp_path: Path, line: str, expected: str) -> None:
    key = line.split(":")[0]
    exc = error(tmp_path, CONTROLLER + f"          {line}\n", line=6, key=key)
    assert str(exc).endswith(expected)


def test_unknown_setting_with_did_you_mean(tmp_path: Path) -> None:
    exc = error(tmp_path, CONTROLLER + "          piblade_worker_proceses: 2\n", line=6, key="piblade_worker_proceses")
    assert 'unknown piblade setting (did you mean "piblade_worker_processes"?)' in str(exc)


def test_cluster_name_only_in_all_vars(tmp_path: Path) -> None:
    exc = error(tmp_path, CONTROLLER + "          piblade_cluster_name: x\n", line=6, key="piblade_cluster_name")
    assert "all: vars:" in str(exc)


RESULTS = """\
all:
  vars:
    {extra}
  children:
    controller:
      hosts:
        ctl.lan:
    nas:
      hosts:
        nas.lan:
"""


def test_results_database_is_on_the_nas_unless_a_node_is_named(tmp_path: Path) -> None:
    default = load(tmp_path, RESULTS.format(extra="piblade_cluster_name: c"))
    assert (default.results_node.name, default.results_port) == ("nas.lan", 5432)
    named = load(tmp_path, RESULTS.format(extra="piblade_results_host: ctl.lan\n    piblade_results_port: 6543"))
    assert (named.results_node.name, named.results_port) == ("ctl.lan", 6543)
    assert load(tmp_path, CONTROLLER).results_node.name == "ctl.lan"  # no NAS: the controller


def test_results_host_must_name_a_host(tmp_path: Path) -> None:
    exc = error(tmp_path, RESULTS.format(extra="piblade_results_host: nas"), line=3, key="piblade_results_host")
    assert str(exc).endswith("names no host of this inventory (did you mean \"nas.lan\"?)")
    assert exc.hint == "name the host whose PostgreSQL keeps run history, or leave it unset for the NAS node"


def test_more_than_one_nas(tmp_path: Path) -> None:
    exc = error(tmp_path, CONTROLLER + "    nas:\n      hosts:\n        a.lan:\n        b.lan:\n", line=9, key="nas")
    assert "a.lan, b.lan" in str(exc)


def test_more_than_one_controller(tmp_path: Path) -> None:
    error(tmp_path, CONTROLLER + "        ctl2.lan:\n", line=6, key="controller")


def test_no_controller(tmp_path: Path) -> None:
    exc = error(tmp_path, "all:\n  children:\n    workers:\n      hosts:\n        w1.lan:\n", line=1, key="controller")
    assert exc.hint and "controller" in exc.hint
    error(tmp_path, "all:\n  children:\n    controller:\n      hosts:\n", line=3, key="controller")


def test_missing_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(InventoryError) as info:
        load_inventory(tmp_path / "nope.yml")
    assert str(info.value) == f"{tmp_path / 'nope.yml'}: no such inventory file"
    assert info.value.hint and "-i" in info.value.hint
    error(tmp_path, "# nothing\n", line=None, key=None)


LAUGHS = "all:\n  vars:\n    l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10)
) + CONTROLLER.removeprefix("all:\n")


@pytest.mark.skipif(not shutil.which("prlimit"), reason="needs prlimit (util-linux)")
def test_billion_laughs_is_refused_in_256_mib(tmp_path: Path) -> None:
    """Nine levels of nine aliases (10**9 values from 700 bytes) fail fast with file:line, not MemoryError."""
    path = write(tmp_path, LAUGHS)
    assert path.stat().st_size < 1024
    limit = [str(shutil.which("prlimit")), f"--as={256 << 20}"]
    cmd = [*limit, sys.executable, "-m", "piblade", "inventory", "check", "-i", str(path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "300"})
    except subprocess.TimeoutExpired:
        pytest.fail("the aliases were expanded")
    assert proc.returncode == 1, proc.stderr
    assert f"{path}:8: aliases expand this to over" in proc.stderr
    assert "MemoryError" not in proc.stderr and "Traceback" not in proc.stderr


def test_non_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "inv.yml"
    path.write_bytes(CONTROLLER.encode().replace(b"ctl.lan", b"ct\xefl.lan"))
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    assert (info.value.file, info.value.line) == (str(path), 5)
    assert str(info.value) == f"{path}:5: not UTF-8: byte 0xef in column 11"


def test_file_too_large(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inventory, "MAX_INVENTORY_BYTES", 1 << 20)
    path = write(tmp_path, CONTROLLER + "# padding\n" * 110_000)
    with pytest.raises(InventoryError, match=r"larger than 1 MiB"):
        load_inventory(path)


def test_node_lookup_suggests(tmp_path: Path) -> None:
    cluster = load_inventory(EXAMPLE)
    with pytest.raises(NotFound, match='did you mean "blade-w1"'):
        cluster.node("blade-w11")


def test_parse_inventory_names_the_source() -> None:
    with pytest.raises(InventoryError, match=r"^<stdin>:1: "):
        parse_inventory("nodes: []\n", source="<stdin>")


# --- defaults and docs ------------------------------------------------------------------------


def test_without_an_inventory_every_command_means_the_local_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from piblade.context import resolve_cluster
    from piblade.local import LocalPaths

    monkeypatch.delenv("PIBLADE_INVENTORY", raising=False)
    monkeypatch.setenv("PIBLADE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inventory").mkdir()
    write(tmp_path / "inventory", CONTROLLER, "local.yml")  # a file here is not picked up by itself
    local = resolve_cluster()
    assert local.is_local and local.paths == LocalPaths.default() == LocalPaths(tmp_path / "state" / "local")
    monkeypatch.setenv("PIBLADE_INVENTORY", str(EXAMPLE))
    home = resolve_cluster()
    assert home.name == "home" and home.inventory is not None
    assert home.paths.root == tmp_path / "state" / "clusters" / "home"


def test_every_setting_is_documented() -> None:
    example = EXAMPLE.read_text()
    for setting in SETTINGS:
        assert setting.name.startswith("piblade_")
        assert setting.help.strip(), setting.name
        assert setting.name in example, f"{setting.name} is not described in inventory/example.yml"


def test_node_settings_match_the_table() -> None:
    node_settings = [s for s in SETTINGS if s.scope == "node"]
    assert [f.name for f in fields(NodeSettings)] == [s.field for s in node_settings]
    defaults = NodeSettings()
    for setting in node_settings:
        assert getattr(defaults, setting.field) == setting.default
        if setting.default is not None:
            assert setting.parse(setting.default) == setting.default


# --- CLI -----------------------------------------------------------------------------------------

runner = CliRunner()


def test_cli_check() -> None:
    result = runner.invoke(app, ["check", "-i", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert result.output == f'{EXAMPLE}: ok — cluster "home": 1 controller, 1 nas, 3 workers\n'


def test_cli_check_uses_the_inventory_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "here.yml"
    path.write_text(LOCAL_TEXT)
    monkeypatch.setenv("PIBLADE_INVENTORY", str(path))
    result = runner.invoke(app, ["check"])
    assert result.exit_code == 0, result.output
    assert result.output.endswith('cluster "here": 1 controller, 0 nas, 1 worker\n')
    monkeypatch.delenv("PIBLADE_INVENTORY")
    missing = runner.invoke(app, ["check"])
    assert missing.exit_code == 1 and str(missing.exception) == "no inventory was given"


def test_cli_show_json() -> None:
    result = runner.invoke(app, ["show", "--json", "-i", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["name"] == "home"
    assert (data["controller"], data["nas"], data["workers"]) == ("blade-ctl", "blade-nas", ["blade-w1", "blade-w2", "blade-w3"])
    w3 = data["nodes"][4]
    assert w3["name"] == "blade-w3" and w3["roles"] == ["workers"]
    assert w3["settings"]["worker_processes"] == 1 and w3["settings"]["queues"] == ["high", "default"]


def test_cli_show_table() -> None:
    result = runner.invoke(app, ["show", "-i", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert "blade-w3" in result.output and "blade-nas" in result.output


def test_cli_errors_propagate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = write(tmp_path, CONTROLLER + "          ansible_port: 0\n")
    result = runner.invoke(app, ["check", "-i", str(bad)])
    assert result.exit_code == 1
    assert isinstance(result.exception, InventoryError) and result.exception.line == 6

    monkeypatch.delenv("PIBLADE_INVENTORY", raising=False)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["show"])
    assert isinstance(result.exception, PibladeError)
    assert result.exception.hint and "-i FILE" in result.exception.hint
