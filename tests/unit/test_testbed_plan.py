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
from piblade.testbed.node import TestbedNode, network_file, nspawn_argv, plan_nodes


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


def test_more_worker_nodes_than_cores_get_one_worker_process_each(tmp_path: Path) -> None:
    key, known = tmp_path / "id_ed25519", tmp_path / "known_hosts"
    cores = len(os.sched_getaffinity(0))
    crowded = parse_inventory(render_inventory(plan_nodes(cores + 1), key=key, known_hosts=known), source="t.yml")
    assert [w.settings.worker_processes for w in crowded.workers] == [1] * (cores + 1)
    roomy = parse_inventory(render_inventory(plan_nodes(cores), key=key, known_hosts=known), source="t.yml")
    assert [w.settings.worker_processes for w in roomy.workers] == [0] * cores  # one per core, as on a Pi


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
    image._debootstrap(tmp_path / "target", tmp_path / "debs", tmp_path / "build.log", seen.append,
                      image.debian_arch(), image.PACKAGES)
    gc.collect()
    assert len(seen) == 2 and "Retrieving Release" in seen[0]
    assert "Base system installed" in (tmp_path / "build.log").read_text()


def test_arm64_workers_are_aarch64_nodes_with_addresses_of_their_own() -> None:
    nodes = plan_nodes(1, 2, native="x86_64")
    assert [(n.name, n.address, n.role, n.machine, n.arch) for n in nodes] == [
        ("tb-nas", "10.199.0.10", "nas", "x86_64", "amd64"), ("tb-w1", "10.199.0.11", "worker", "x86_64", "amd64"),
        ("tb-arm1", "10.199.0.41", "worker", "aarch64", "arm64"),
        ("tb-arm2", "10.199.0.42", "worker", "aarch64", "arm64"),
    ]
    with pytest.raises(TestbedError, match="--arm64 must be between 0 and 4"):
        plan_nodes(1, 5)
    # state.json from before nodes had a machine: a native node.
    assert TestbedNode.from_dict({"name": "tb-w1", "address": "10.199.0.11", "role": "worker"}, "x86_64").machine == (
        "x86_64")


def test_an_emulated_worker_runs_one_process_and_warms_only_the_mandelbrot(tmp_path: Path) -> None:
    import platform

    key, known = tmp_path / "id_ed25519", tmp_path / "known_hosts"
    nodes = plan_nodes(1, 1, native=platform.machine())
    cluster = parse_inventory(render_inventory(nodes, key=key, known_hosts=known), source="testbed.yml")
    arm, native = cluster.node("tb-arm1"), cluster.node("tb-w1")
    assert "workers" in arm.roles and arm.address == "10.199.0.41"
    if platform.machine() != "aarch64":
        assert (arm.settings.worker_processes, arm.settings.warm) == (1, ("mandelbrot",))
    assert (native.settings.worker_processes, native.settings.warm) == (0, None)


def test_the_arm64_image_has_its_own_small_recipe_and_the_x86_image_keeps_its_key() -> None:
    from piblade.testbed.image import ARM64_PACKAGES, packages_for

    assert image_key(arch="amd64") == "ec747bb7f99c553c"  # the x86_64 image is unchanged by arm64 nodes
    assert image_key(ARM64_PACKAGES, arch="arm64") != image_key(ARM64_PACKAGES, arch="amd64")
    # What provisioning's worker role checks with apt is baked in; the NAS's Samba and PostgreSQL are not.
    from piblade.provision.roles import BASE_PACKAGES

    assert set(BASE_PACKAGES) | {"sshfs", "fuse3", "openssh-server", "sudo"} <= set(ARM64_PACKAGES)
    assert not {"samba", "postgresql", "cloud-init"} & set(ARM64_PACKAGES)
    if platform_machine() == "x86_64":
        assert packages_for("arm64") == ARM64_PACKAGES and packages_for(None) == PACKAGES


def platform_machine() -> str:
    import platform

    return platform.machine()


def _binfmt(tmp_path: Path, rule: str | None) -> Path:
    binfmt = tmp_path / "binfmt_misc"
    binfmt.mkdir()
    (binfmt / "register").write_text("")
    (binfmt / "status").write_text("enabled\n")
    if rule is not None:
        (binfmt / "qemu-aarch64").write_text(rule)
    return binfmt


def test_a_registered_rule_is_read_and_one_without_the_f_flag_is_refused_saying_why(tmp_path: Path) -> None:
    from piblade.testbed.emulation import _usable, rule_state

    binfmt = _binfmt(tmp_path, "enabled\ninterpreter /bin/sh\nflags: OCF\noffset 0\nmagic 7f454c46\n")
    assert rule_state(binfmt) == {"enabled": "enabled", "interpreter": "/bin/sh", "flags": "OCF", "offset": "0",
                                  "magic": "7f454c46"}
    assert _usable(rule_state(binfmt) or {}, mounted=False).registered is False
    with pytest.raises(TestbedError) as info:
        _usable({"enabled": "enabled", "interpreter": "/usr/bin/qemu-aarch64", "flags": "OC"}, mounted=False)
    assert "lacks the F flag" in str(info.value) and "echo -1 >" in (info.value.hint or "")
    with pytest.raises(TestbedError, match="is disabled"):
        _usable({"enabled": "disabled", "flags": "F"}, mounted=False)
    (binfmt / "qemu-aarch64").unlink()
    assert rule_state(binfmt) is None


def test_down_removes_only_the_rule_and_mount_the_testbed_made(tmp_path: Path) -> None:
    from piblade.testbed.emulation import Emulation, release

    binfmt = _binfmt(tmp_path, "enabled\ninterpreter /bin/sh\nflags: F\n")
    assert release(Emulation(mounted=False, registered=False), binfmt) == []
    assert (binfmt / "qemu-aarch64").read_text().startswith("enabled")  # the host's own rule stays
    assert release(Emulation(mounted=False, registered=True), binfmt) == []
    assert (binfmt / "qemu-aarch64").read_text() == "-1\n"  # what the kernel takes as "remove this rule"
    assert Emulation.from_dict({"mounted": True, "registered": True}) == Emulation(True, True)
    assert Emulation.from_dict(None) == Emulation()


def test_a_host_without_qemu_user_static_is_told_what_to_install(tmp_path: Path) -> None:
    from piblade.testbed.emulation import ensure_aarch64, native_aarch64

    if native_aarch64():
        return  # an aarch64 host runs arm64 nodes natively and needs nothing
    with pytest.raises(TestbedError) as info:
        ensure_aarch64(_binfmt(tmp_path, None), rule_file=tmp_path / "qemu-aarch64.conf")
    assert str(info.value) == f"arm64 nodes need qemu-user-static (no {tmp_path / 'qemu-aarch64.conf'} on this machine)"
    assert info.value.hint == "apt-get install -y qemu-user-static (`make test-packages` does it)"


def test_an_emulated_node_sets_its_address_without_networkd_and_still_has_no_gateway(tmp_path: Path) -> None:
    from piblade.testbed.node import emulated_network_unit

    arm = plan_nodes(0, 1)[1]
    unit = emulated_network_unit(arm)
    assert "ExecStart=/sbin/ip addr replace 10.199.0.41/24 dev host0" in unit
    assert "route" not in unit and "Gateway" not in unit


def test_a_detached_node_process_holds_none_of_its_callers_descriptors(tmp_path: Path) -> None:
    """A lock the caller holds (``flock LOCK piblade testbed up``) must not live on in a node."""
    import time

    from piblade.testbed.system import alive, spawn_detached

    lock = os.open(tmp_path / "lock", os.O_CREAT | os.O_RDWR)
    os.set_inheritable(lock, True)
    log = tmp_path / "out.log"
    try:
        proc = spawn_detached(["/bin/sh", "-c", f"test -e /proc/self/fd/{lock} && echo leaked || echo closed"], log)
        deadline = time.monotonic() + 30
        while alive(proc) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        os.close(lock)
    assert log.read_text().strip() == "closed"


def test_the_inotify_limit_grows_with_the_nodes_and_is_never_lowered() -> None:
    from piblade.testbed.system import INOTIFY_HOST, INOTIFY_PER_NODE, inotify_instances_needed

    assert inotify_instances_needed(20, 128) == INOTIFY_HOST + 20 * INOTIFY_PER_NODE
    assert inotify_instances_needed(3, 128) > 128
    assert inotify_instances_needed(20, 100_000) == 100_000  # a host set higher keeps its setting


def test_a_process_that_exited_after_it_was_listed_is_no_stray() -> None:
    """`testbed status` lists processes, then reads each one's PID namespace: one gone between is no stray."""
    import subprocess

    from piblade.testbed.system import Proc, pidns, proc_of, strays

    child = subprocess.Popen(["sleep", "30"])
    try:
        listed = proc_of(child.pid)
        assert listed is not None
        me = proc_of(os.getpid())
        assert me is not None
        host_ns = pidns(os.getpid())
        assert host_ns is not None
        # Alive, in no node's namespace and accounted for by none: a stray.
        assert strays([listed, me], accounted=(), namespaces=()) == [listed, me]
        # Accounted for, or in a running node's namespace: not one.
        assert strays([listed], accounted={listed}, namespaces=()) == []
        assert strays([listed], accounted=(), namespaces={host_ns}) == []
    finally:
        child.kill()
        child.wait()
    # The same process once it has exited, and a pid reused by another process since: not strays.
    assert strays([listed], accounted=(), namespaces=()) == []
    assert strays([Proc(os.getpid(), me.start + 1)], accounted=(), namespaces=()) == []
