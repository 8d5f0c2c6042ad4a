"""The tree an aarch64 node gets: built on this machine from wheels, unpacked into a fresh venv on the node."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from piblade.inventory import parse_inventory
from piblade.provision import roles, sitetree
from piblade.provision.facts import parse_facts
from piblade.provision.steps import Change, ChangeKind, Ok, SiteInstall, VenvInstall
from piblade.provision.wheelhouse import Wheelhouse
from tests.unit.test_provision import INVENTORY, PI_FACTS

MINOR = f"{sys.version_info.major}.{sys.version_info.minor}"


def make_wheel(directory: Path, name: str, version: str, *, requires: tuple[str, ...] = (),
               scripts: dict[str, str] | None = None, module: str = "") -> Path:
    """A minimal pure-Python wheel, as a build backend writes one."""
    dist = f"{name.replace('-', '_')}-{version}.dist-info"
    files = {f"{dist}/METADATA": "Metadata-Version: 2.1\nName: " + name + "\nVersion: " + version + "\n"
             + "".join(f"Requires-Dist: {r}\n" for r in requires),
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    if scripts:
        files[f"{dist}/entry_points.txt"] = "[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in scripts.items())
    if module:
        files[f"{name.replace('-', '_')}_mod.py"] = module
    files[f"{dist}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{dist}/RECORD"])
    path = directory / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


def test_the_closure_follows_requirements_markers_and_extras_for_the_node(tmp_path: Path) -> None:
    wheels = (
        make_wheel(tmp_path, "piblade", "0.1.0", requires=("redis>=5", "psycopg[binary]>=3", "colorama; os_name == 'nt'",
                                                            "extra-only; extra == 'docs'")),
        make_wheel(tmp_path, "redis", "8.0", requires=("async-timeout; python_full_version < '3.11.3'",)),
        make_wheel(tmp_path, "psycopg", "3.3", requires=("psycopg-binary==3.3; extra == 'binary'",)),
        make_wheel(tmp_path, "psycopg_binary", "3.3"),
        make_wheel(tmp_path, "async_timeout", "5.0"),
        make_wheel(tmp_path, "wheel", "0.48"),  # in the lock for the build only
    )
    from piblade.provision.wheelhouse import node_environment

    debian = sitetree.closure(wheels, "piblade", node_environment("aarch64", "3.11.2"))
    assert debian == {"piblade", "redis", "psycopg", "psycopg-binary", "async-timeout"}
    # The controller's own 3.11.7 would not need async-timeout; the node's Python decides.
    assert "async-timeout" not in sitetree.closure(wheels, "piblade", node_environment("aarch64", "3.11.7"))


def test_a_console_script_runs_the_entry_point_with_the_venvs_python(tmp_path: Path) -> None:
    (tmp_path / "tool_mod.py").write_text("import sys\ndef main():\n    print('ran', sys.argv[1:])\n    return 3\n")
    script = tmp_path / "tool"
    script.write_text(sitetree.console_script("/opt/piblade/venv", "tool_mod:main"))
    assert script.read_text().startswith("#!/opt/piblade/venv/bin/python\n")
    run = subprocess.run([sys.executable, str(script), "x"], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(tmp_path)})
    assert (run.returncode, run.stdout) == (3, "ran ['x']\n")


def _house(tmp_path: Path) -> Wheelhouse:
    directory = tmp_path / "wheelhouse" / "aarch64-py3.11-5abc"
    directory.mkdir(parents=True)
    wheels = (make_wheel(directory, "piblade", "0.1.0", scripts={"piblade": "piblade_mod:main"},
                         module="def main():\n    print('piblade from the tree')\n"),)
    return Wheelhouse(directory, wheels, "manifest1", "piblade==0.1.0")


def test_the_tree_is_built_once_from_the_wheelhouse_with_scripts_for_the_nodes_venv(tmp_path: Path) -> None:
    house = _house(tmp_path)
    tree = sitetree.build(house, "aarch64", "3.11.2", "/opt/piblade/venv")
    assert tree.distributions == ("piblade==0.1.0",) and tree.minor == "3.11"
    assert tree.key == sitetree.tree_key("manifest1", "3.11.2", "/opt/piblade/venv") != sitetree.tree_key(
        "manifest1", "3.11.4", "/opt/piblade/venv")
    with tarfile.open(tree.tar) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert "site-packages/piblade_mod.py" in members and "site-packages/piblade-0.1.0.dist-info/METADATA" in members
        assert {(m.uid, m.gid, m.uname) for m in members.values()} == {(0, 0, "root")}
        assert members["bin/piblade"].mode == 0o755
        assert tar.extractfile("bin/piblade").read().startswith(b"#!/opt/piblade/venv/bin/python\n")  # type: ignore[union-attr]
    mtime = tree.tar.stat().st_mtime_ns
    assert sitetree.build(house, "aarch64", "3.11.2", "/opt/piblade/venv") == tree
    assert tree.tar.stat().st_mtime_ns == mtime  # cached, not built again


def test_site_install_makes_a_fresh_venv_from_the_tree_and_then_finds_nothing_to_do(tmp_path: Path) -> None:
    house = _house(tmp_path)
    venv = tmp_path / "node" / "venv"
    tree = sitetree.build(house, "aarch64", f"{MINOR}.0", str(venv))
    step = SiteInstall(str(venv), tree.tar, tree.key, tree.minor, python=sys.executable)
    venv.mkdir(parents=True)
    (venv / "left-over-from-pip").write_text("x")  # an earlier install: nothing of it stays
    first = step.decide("none")
    assert isinstance(first, Change) and first.kind is ChangeKind.INSTALL
    assert [u.name for u in first.uploads] == ["site.tar"] and first.uploads[0].local == tree.tar
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "site.tar").write_bytes(tree.tar.read_bytes())
    done = subprocess.run(["sh", "-c", f"set -e; {first.script}"], env={"STAGE": str(stage), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not (venv / "left-over-from-pip").exists() and not (venv / "bin" / "pip").exists()
    assert (venv / "lib" / f"python{MINOR}" / "site-packages" / "piblade_mod.py").exists()
    ran = subprocess.run([str(venv / "bin" / "piblade")], capture_output=True, text=True)
    assert ran.stdout == "piblade from the tree\n", ran.stderr
    marker = (venv / ".piblade-wheelhouse").read_text()
    assert isinstance(step.decide(marker), Ok)


def test_an_aarch64_node_gets_the_tree_and_an_x86_64_node_the_wheelhouse(tmp_path: Path) -> None:
    secrets = roles.Secrets("redispw", "smbpw", "-----KEY-----\n", "ssh-ed25519 AAAA test", "pgpw")
    ctx = roles.Context(parse_inventory(INVENTORY, source="lab.yml"), "redis://piblade@10.199.0.1:6390/0", secrets,
                        "10.199.0.10 ssh-ed25519 AAAA\n")
    house = _house(tmp_path)
    tree = sitetree.SiteTree(tmp_path / "t.tar", "site-k", "3.11.2", ("piblade==0.1.0",))
    node = ctx.cluster.node("w1")
    facts = parse_facts(PI_FACTS + "python_full=3.11.2\n")
    assert facts.python_full == "3.11.2"
    with_tree, _ = roles.plan(node, facts, ctx, tree)
    with_house, _ = roles.plan(node, facts, ctx, house)
    assert [s for s in with_tree if isinstance(s, SiteInstall)] == [
        SiteInstall(roles.VENV, tree.tar, "site-k", "3.11", notify=("piblade-agent", "piblade-worker"),
                    tags=frozenset({"services", "venv"}))]
    assert [type(s) for s in with_house if isinstance(s, (SiteInstall, VenvInstall))] == [VenvInstall]


def test_wheelhouses_give_a_tree_only_to_aarch64_nodes_with_a_known_python(tmp_path: Path) -> None:
    from piblade.provision.engine import Wheelhouses

    house = _house(tmp_path)
    houses = Wheelhouses(tmp_path / "wheelhouse")
    for platform in ("aarch64", "x86_64"):
        houses.built[(platform, "3.11")] = house
    x86 = parse_facts(PI_FACTS.replace("aarch64", "x86_64") + "python_full=3.11.2\n")
    assert houses.install_for(x86, "/opt/piblade/venv") is house
    assert houses.install_for(parse_facts(PI_FACTS), "/opt/piblade/venv") is house  # no full version: pip
    tree = houses.install_for(parse_facts(PI_FACTS + "python_full=3.11.2\n"), "/opt/piblade/venv")
    assert isinstance(tree, sitetree.SiteTree) and tree.python == "3.11.2"
    assert hashlib.sha256(tree.tar.read_bytes()).hexdigest()
