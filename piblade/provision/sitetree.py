"""A node's finished site-packages, installed on the controller from the wheelhouse and pushed as one tar.

Why: ``pip install`` of the aarch64 wheelhouse on an aarch64 node is mostly
unzipping and byte-compiling numpy, Numba and llvmlite, on the node's CPU. On a
Pi that is the slowest CPU of the cluster; on the testbed's emulated arm64 node
it took 289–318 s (19.5 s natively). The controller does the same work natively:
``pip install --target`` for the node's platform (``--platform manylinux…_aarch64
--python-version --implementation cp --abi cp3XX --only-binary=:all:``), from the
wheelhouse only (``--no-index``), every requirement pinned by the lock with its
hashes (``--require-hashes``; piblade's own wheel by the hash of the file built),
no resolution by pip (``--no-deps``): the set is what ``pip install piblade``
would pick, piblade's requirements followed through the wheels' metadata for the
node (:func:`closure`), so the venv holds the same distributions and versions as
one pip made on the node, less pip itself. The node then only unpacks a tar into
a fresh ``python3 -m venv --without-pip``.

The lock's markers are decided for the node's full Python version (Debian's
3.11.2 needs ``async-timeout``, the controller's 3.11.7 does not): see
:func:`piblade.provision.wheelhouse.requirements_for`. The byte-code is compiled
by the controller's CPython of the same minor version (same magic number);
tar keeps the sources' modification times, which the ``.pyc`` files name.

Console scripts are written here, not by pip: pip's ``--target`` scripts name
the controller's interpreter. Each names ``<venv>/bin/python``, as pip's would.

The tar is cached beside the wheelhouse it came from, one per (Python, venv),
and its key (wheelhouse manifest, Python, venv, format) is what the node
remembers, so a re-run with nothing new pushes nothing.
"""

from __future__ import annotations

import configparser
import email.message
import email.parser
import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from piblade.errors import PibladeError
from piblade.provision.wheelhouse import (
    LOCK,
    PLATFORMS,
    Wheelhouse,
    _locked,
    node_environment,
    project_root,
    requirements_for,
)

#: Bumped when what goes into a tree changes, so cached tars are rebuilt and nodes re-pushed.
FORMAT = "2"


@dataclass(frozen=True, slots=True)
class SiteTree:
    """A tar of ``site-packages/`` and ``bin/`` for a venv at ``venv`` on a node with ``python``."""

    tar: Path
    #: What the node remembers once it is installed: a new key means a new push.
    key: str
    #: The node's full Python version (``3.11.2``); the venv's ``lib/python3.11``.
    python: str
    #: ``name==version`` of every distribution in it, sorted.
    distributions: tuple[str, ...]

    @property
    def minor(self) -> str:
        return ".".join(self.python.split(".")[:2])


def tree_key(manifest: str, python: str, venv: str) -> str:
    return "site-" + hashlib.sha256(f"{FORMAT}\0{manifest}\0{python}\0{venv}".encode()).hexdigest()[:24]


def console_script(venv: str, target: str) -> str:
    """The console script pip writes for ``module:attr`` (``attr`` may be dotted), run by the venv's python."""
    module, _, attr = target.partition(":")
    head = attr.split(".")[0] if attr else ""
    call = f"{attr.strip()}()" if attr else "None"
    return (f"#!{venv}/bin/python\n# -*- coding: utf-8 -*-\nimport re\nimport sys\n"
            f"from {module.strip()} import {head.strip()}\n"
            "if __name__ == '__main__':\n"
            "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
            f"    sys.exit({call})\n")


def console_scripts(site: Path) -> dict[str, str]:
    """``name -> module:attr`` of every ``[console_scripts]`` entry point of the distributions in ``site``."""
    scripts: dict[str, str] = {}
    for entry_points in sorted(site.glob("*.dist-info/entry_points.txt")):
        parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string(entry_points.read_text())
        if parser.has_section("console_scripts"):
            scripts.update({name: value.split("[")[0].strip() for name, value in parser["console_scripts"].items()})
    return scripts


def distributions(site: Path) -> tuple[str, ...]:
    """``name==version`` of the distributions installed in ``site`` (from their METADATA)."""
    found = []
    for metadata in site.glob("*.dist-info/METADATA"):
        fields = {}
        for line in metadata.read_text(errors="replace").splitlines():
            if not line:
                break
            key, sep, value = line.partition(": ")
            if sep and key in ("Name", "Version"):
                fields[key] = value.strip()
        found.append(f"{fields.get('Name', metadata.parent.name)}=={fields.get('Version', '?')}")
    return tuple(sorted(found, key=str.lower))


def build(house: Wheelhouse, arch: str, python: str, venv: str, *, log: Path | None = None) -> SiteTree:
    """The tree of ``house`` for a node of ``arch`` running CPython ``python`` (full version), built once."""
    if python.count(".") != 2:
        raise PibladeError(f"the node's Python version {python!r} is not major.minor.patch",
                           hint="the node's python3 must print its version with `python3 -c 'import platform; "
                                "print(platform.python_version())'`")
    key = tree_key(house.manifest, python, venv)
    tar = house.directory / f"{key}.tar"
    listing = tar.with_suffix(".dists")
    if not tar.exists():
        with _locked(house.directory.parent):
            if not tar.exists():
                _build_into(house, arch, python, venv, tar, listing, log)
    return SiteTree(tar, key, python, tuple(listing.read_text().split()))


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        return email.parser.BytesParser().parsebytes(archive.read(name), headersonly=True)


def closure(wheels: tuple[Path, ...], root: str, environment: dict[str, str]) -> set[str]:
    """Canonical names of ``root`` and everything it requires on a node with ``environment``, from the wheels.

    What ``pip install piblade`` on the node would install (the lock also holds
    entries only the build uses, such as ``wheel``, which the node's venv does not get).
    """
    from packaging.requirements import Requirement

    requires = {_canonical(w.name.split("-")[0]): _metadata(w).get_all("Requires-Dist") or [] for w in wheels}
    wanted: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [(_canonical(root), frozenset())]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        wanted.add(name)
        for line in requires.get(name, []):
            requirement = Requirement(line)
            if requirement.marker is not None and not any(
                    requirement.marker.evaluate({**environment, "extra": extra}) for extra in ("", *extras)):
                continue
            todo.append((_canonical(requirement.name), frozenset(requirement.extras)))
    return wanted


def _requirements(house: Wheelhouse, arch: str, python: str) -> str:
    """The lock's entries piblade needs on the node (hashes kept) and piblade's own wheel by its hash."""
    own = next((w for w in house.wheels if w.name.startswith("piblade-")), None)
    if own is None:
        raise PibladeError(f"the wheelhouse {house.directory} has no piblade wheel",
                           hint="delete it; the next provisioning builds it again")
    needed = closure(house.wheels, "piblade", node_environment(arch, python))
    lines = [line for line in requirements_for((project_root() / LOCK).read_text(), arch, python).splitlines()
             if _canonical(line.split("==")[0]) in needed]
    return "\n".join([*lines, f"{house.requirement} --hash=sha256:{hashlib.sha256(own.read_bytes()).hexdigest()}"]) + "\n"


def _build_into(house: Wheelhouse, arch: str, python: str, venv: str, tar: Path, listing: Path,
                log: Path | None) -> None:
    minor = ".".join(python.split(".")[:2])
    out = log.open("ab") if log else subprocess.DEVNULL
    try:
        with tempfile.TemporaryDirectory(prefix="piblade-site-", dir=house.directory.parent) as tmp:
            work = Path(tmp)
            requirements = work / "requirements.txt"
            requirements.write_text(_requirements(house, arch, python))
            site = work / "site-packages"
            platform_args = [arg for tag in PLATFORMS[arch] for arg in ("--platform", tag)]
            try:
                subprocess.run(
                    [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(house.directory),
                     "--no-deps", "--require-hashes", "--only-binary=:all:", *platform_args,
                     "--python-version", minor, "--implementation", "cp", "--abi", f"cp{minor.replace('.', '')}",
                     "--target", str(site), "-r", str(requirements)],
                    check=True, stdout=out, stderr=out)
            except subprocess.CalledProcessError as exc:
                raise PibladeError(
                    f"installing the {arch} wheelhouse for Python {python} into a tree for the node failed",
                    hint=(f"see {log}" if log else "run with -v for pip's output")
                    + "; delete the wheelhouse under the state dir if its wheels do not match the lock",
                ) from exc
            shutil.rmtree(site / "bin", ignore_errors=True)  # pip's scripts name this machine's interpreter
            bin_dir = work / "bin"
            bin_dir.mkdir()
            for name, target in sorted(console_scripts(site).items()):
                script = bin_dir / name
                script.write_text(console_script(venv, target))
                script.chmod(0o755)
            listing.with_name(f".{listing.name}.partial").write_text("\n".join(distributions(site)) + "\n")
            partial = tar.with_name(f".{tar.name}.partial")
            with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as archive:
                archive.add(str(site), arcname="site-packages", filter=_as_root)
                archive.add(str(bin_dir), arcname="bin", filter=_as_root)
            listing.with_name(f".{listing.name}.partial").rename(listing)
            partial.rename(tar)
    finally:
        if log:
            out.close()  # type: ignore[union-attr]


def _as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Owned by root, writable by root only, as pip run by root on the node leaves them."""
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode &= 0o755
    return info
