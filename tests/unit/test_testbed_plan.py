"""The testbed as data: host checks, node plan, generated inventory, nspawn command, image key.

No root and no nspawn needed; the booted testbed is tested in tests/e2e/test_testbed.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from piblade.inventory import parse_inventory
from piblade.testbed import BRIDGE, Testbed, TestbedError, check_host
from piblade.testbed.image import PACKAGES, image_key
from piblade.testbed.inventory_file import render_inventory
from piblade.testbed.node import network_file, nspawn_argv, plan_nodes


def _all_tools(tool: str) -> str:
    return f"/usr/bin/{tool}"


def test_a_non_root_user_is_told_to_use_root() -> None:
    with pytest.raises(TestbedError) as info:
        check_host(euid=1000, system="Linux", which=_all_tools)
    assert str(info.value) == (
        "the testbed needs root: it creates a network bridge, mounts node images and boots them with systemd-nspawn"
    )
    assert info.value.hint == "run it as root, e.g. `sudo piblade testbed up` (or `sudo make test` for the e2e tests)"


def test_another_os_is_told_it_needs_linux() -> None:
    with pytest.raises(TestbedError, match=r"^the testbed needs Linux .*this machine runs Darwin$"):
        check_host(euid=0, system="Darwin", which=_all_tools)


def test_missing_tools_name_the_debian_packages() -> None:
    with pytest.raises(TestbedError) as info:
        check_host(euid=0, system="Linux", which=lambda t: None if t in ("systemd-nspawn", "debootstrap") else "/x")
    assert str(info.value) == "the testbed needs these Debian packages: debootstrap systemd-container"
    assert info.value.hint == (
        "install them with `apt-get install -y debootstrap systemd-container` (`make test-packages` does it)"
    )


def test_up_checks_the_host_before_touching_anything(tmp_path: Path) -> None:
    def refuse() -> None:
        check_host(euid=1000, system="Linux", which=_all_tools)

    with pytest.raises(TestbedError, match="needs root"):
        Testbed(tmp_path / "tb", inventory=tmp_path / "inv.yml", check=refuse).up()
    assert not (tmp_path / "tb").exists() and not (tmp_path / "inv.yml").exists()


def test_nodes_and_addresses() -> None:
    assert [(n.name, n.address, n.role) for n in plan_nodes(2)] == [
        ("tb-nas", "10.199.0.10", "nas"), ("tb-w1", "10.199.0.11", "worker"), ("tb-w2", "10.199.0.12", "worker"),
    ]
    with pytest.raises(TestbedError, match="between 0 and 20"):
        plan_nodes(21)


def test_the_generated_inventory_is_a_valid_piblade_inventory(tmp_path: Path) -> None:
    key, known = tmp_path / "id_ed25519", tmp_path / "known_hosts"
    cluster = parse_inventory(render_inventory(plan_nodes(3), key=key, known_hosts=known), source="testbed.yml")
    assert cluster.name == "testbed"
    assert (cluster.controller.name, cluster.controller.address, cluster.controller.is_local) == (
        "tb-ctl", "10.199.0.1", True)
    assert (cluster.controller.settings.redis_port, cluster.controller.settings.redis_bind) == (6390, "10.199.0.1")
    assert cluster.nas is not None and (cluster.nas.name, cluster.nas.address) == ("tb-nas", "10.199.0.10")
    assert [w.name for w in cluster.workers] == ["tb-w1", "tb-w2", "tb-w3"]
    for node in cluster.nodes:
        assert (node.user, node.become) == ("pi", True)
        assert node.extra_vars["ansible_ssh_private_key_file"] == str(key)
        assert node.settings.known_hosts == str(known)
    assert parse_inventory(render_inventory(plan_nodes(0), key=key, known_hosts=known), source="t.yml").workers == ()


def test_nspawn_command_and_network_config() -> None:
    node = plan_nodes(1)[1]
    argv = nspawn_argv(node, Path("/tb/nodes/tb-w1/root"))
    for flag in ("--boot", "--register=no", "--keep-unit", f"--network-bridge={BRIDGE}", "--bind=/dev/fuse"):
        assert flag in argv
    assert argv[argv.index("--machine") + 1] == "tb-w1"
    config = network_file(node)
    assert "Address=10.199.0.11/24" in config and "Gateway" not in config


def test_the_image_is_rebuilt_exactly_when_its_recipe_changes() -> None:
    assert image_key() == image_key(tuple(reversed(PACKAGES)))
    assert image_key() != image_key((*PACKAGES, "vim"))
    assert image_key() != image_key(fmt=999)


def test_the_image_build_closes_the_pipe_of_its_debootstrap(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A pipe left open was a ResourceWarning, an error here, and only on a machine's first image build."""
    import gc

    from piblade.testbed import image

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "debootstrap"  # stands in for the download: prints progress lines like the real one
    fake.write_text("#!/bin/sh\necho 'I: Retrieving Release'\necho 'I: Base system installed successfully.'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    seen: list[str] = []
    image._debootstrap(tmp_path / "target", tmp_path / "debs", tmp_path / "build.log", seen.append)
    gc.collect()
    assert len(seen) == 2 and "Retrieving Release" in seen[0]
    assert "Base system installed" in (tmp_path / "build.log").read_text()
