"""The wheelhouse the controller builds and pushes, so nodes install piblade without internet.

For each (architecture, Python version) the controller downloads binary wheels
of every dependency for that platform (aarch64 for real Pis) and builds
piblade's own wheel once. The versions and hashes come from ``requirements.lock``,
the same file ``make demo``/``make test`` install from, so a Pi runs exactly what
CI tested: the lock is universal, and each node gets the lines whose markers hold
for its architecture and Python. The result is cached under the state dir, keyed
by a hash of piblade's source and the lock, so an unchanged re-run builds nothing.

piblade's wheel is built from a copy of the source with that hash written into
it (``piblade/_build.py``): a node's workers report ``<version>+<hash>``
(:func:`piblade.registry.code_version`), which changes with every change of the
code even when pyproject's version does not, and equals what a checkout of the
same source computes. A new wheelhouse whose dependencies did not change takes
them from the last one built, without asking the package index.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from piblade.errors import PibladeError

#: Bumped when what goes into a wheelhouse changes, so cached ones are rebuilt.
FORMAT = "4"
#: The lock file, beside pyproject.toml: the one place where versions are decided.
LOCK = "requirements.lock"
#: Wheelhouses kept per architecture and Python: two checkouts (or a branch
#: switch) each keep theirs instead of deleting the other's on every build.
KEEP = 3

PLATFORMS = {
    "x86_64": ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "manylinux_2_34_x86_64"),
    "aarch64": ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_28_aarch64",
                "manylinux_2_34_aarch64"),
}


@dataclass(frozen=True, slots=True)
class Wheelhouse:
    directory: Path
    wheels: tuple[Path, ...]
    manifest: str
    requirement: str
    #: What workers installed from it report: ``<pyproject version>+<source hash>``.
    version: str = ""


def project_root() -> Path:
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").exists():
        raise PibladeError(
            "cannot build the wheelhouse: piblade is not installed from a source checkout",
            hint="run provisioning from a clone of the piblade repository (pip install -e .)",
        )
    return root


def source_hash(root: Path) -> str:
    """A hash of everything that goes into piblade's wheel (code, jobs, templates, metadata)."""
    digest = hashlib.sha256()
    files = [root / "pyproject.toml", root / LOCK]
    for package in ("piblade", "jobs"):
        files += sorted(p for p in (root / package).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in files:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _manifest(wheels: list[Path]) -> str:
    digest = hashlib.sha256()
    for wheel in sorted(wheels):
        digest.update(wheel.name.encode())
        digest.update(hashlib.sha256(wheel.read_bytes()).digest())
    return digest.hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class LockedRequirement:
    """One ``name==version ; marker`` entry of the lock, with the hashes of every file of it."""

    line: str  # the requirement as written, without hashes
    marker: str | None
    hashes: tuple[str, ...]


def read_lock(text: str) -> list[LockedRequirement]:
    """Parse a hashed requirements file as ``uv pip compile --generate-hashes`` writes it."""
    entries: list[LockedRequirement] = []
    logical = ""
    for raw in [*text.splitlines(), ""]:
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        if logical.strip():
            tokens = logical.split()
            hashes = tuple(t.removeprefix("--hash=") for t in tokens if t.startswith("--hash="))
            requirement = " ".join(t for t in tokens if not t.startswith("--hash="))
            spec, _, marker = requirement.partition(";")
            entries.append(LockedRequirement(spec.strip(), marker.strip() or None, hashes))
        logical = ""
    return entries


def node_environment(arch: str, python: str) -> dict[str, str]:
    """PEP 508 marker values of a Linux node running CPython ``python`` (``3.11.2``) on ``arch``."""
    return {
        "implementation_name": "cpython", "platform_python_implementation": "CPython",
        "platform_machine": arch, "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
        "python_version": ".".join(python.split(".")[:2]), "python_full_version": python,
        "implementation_version": python,
    }


def requirements_for(lock_text: str, arch: str, python: str) -> str:
    """The lock's entries that a node of ``arch`` with ``python`` installs, hashes kept, markers resolved.

    pip evaluates markers against the interpreter it runs in, not the ``--python-version`` it
    downloads for (a controller on 3.11.7 would skip ``async-timeout; python_full_version <
    "3.11.3"``, which Debian's 3.11.2 needs): so the markers are decided here, for the node.
    """
    from packaging.markers import Marker

    # A node known only by major.minor may run any patch release: take what any of them needs
    # (pip on the node installs only what its own markers select from the wheelhouse).
    versions = [python] if python.count(".") == 2 else [f"{python}.0", f"{python}.99"]
    environments = [node_environment(arch, version) for version in versions]
    lines = []
    for entry in read_lock(lock_text):
        if entry.marker and not any(Marker(entry.marker).evaluate(env) for env in environments):
            continue
        lines.append(" ".join([entry.line, *(f"--hash={h}" for h in entry.hashes)]))
    return "\n".join(lines) + "\n"


@contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """One builder at a time per cache (two provisioning runs, or Ansible's loop and a CLI run)."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


#: What ``uname -m`` says on 32-bit ARM systems (Raspberry Pi OS 32-bit, older boards).
ARM32 = ("armv6l", "armv7l", "armv8l", "armhf", "arm")


def refuse_unsupported(arch: str, python: str, *, userland_bits: int = 0) -> None:
    """Refuse a node the wheelhouse has no wheels for, saying what to install instead.

    Called with the node's facts before anything is pushed to it. ``userland_bits``
    is ``getconf LONG_BIT`` (a 32-bit OS on a 64-bit kernel says aarch64 in uname).
    """
    if arch in ARM32 or (arch in PLATFORMS and userland_bits == 32):
        raise PibladeError(
            f"the node runs a 32-bit OS ({arch}{', 32-bit userland' if arch in PLATFORMS else ''}); "
            "piblade has no wheels for it",
            hint="piblade nodes need a 64-bit OS: flash Raspberry Pi OS Lite (64-bit) with Raspberry Pi Imager "
                 "(Numba and llvmlite have no 32-bit ARM wheels)",
        )
    if arch not in PLATFORMS:
        raise PibladeError(
            f"no wheels for the node architecture {arch!r}",
            hint=f"piblade nodes run a 64-bit OS on {' or '.join(sorted(PLATFORMS))} "
                 "(Raspberry Pi OS Lite 64-bit on a Pi)",
        )
    from packaging.specifiers import SpecifierSet

    wanted = SpecifierSet(tomllib.loads((project_root() / "pyproject.toml").read_text())["project"]["requires-python"])
    if not python:
        raise PibladeError("the node has no python3", hint="install it: sudo apt-get install -y python3 python3-venv")
    if python not in wanted:
        raise PibladeError(
            f"the node's Python is {python}; the wheelhouse has wheels for Python {wanted} only "
            "(the versions requirements.lock pins)",
            hint=f"install an OS whose python3 is {str(wanted).removeprefix('>=')} or newer: Raspberry Pi OS "
                 "(64-bit) bookworm or later, or Debian 12 or later",
        )


def build(cache: Path, arch: str, python: str, *, log: Path | None = None) -> Wheelhouse:
    """Return the wheelhouse for ``arch``/``python``, building it if piblade's source changed."""
    if arch not in PLATFORMS:
        refuse_unsupported(arch, python)
    root = project_root()
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    source = source_hash(root)
    key = f"{arch}-py{python}-{FORMAT}{source}"
    target = cache / key
    manifest_file = target / "MANIFEST"
    if manifest_file.exists():
        with contextlib.suppress(OSError):  # last use, for prune(): a used wheelhouse is kept
            os.utime(manifest_file)
        wheels = tuple(sorted(target.glob("*.whl")))
        return Wheelhouse(target, wheels, manifest_file.read_text().strip(), f"piblade=={version}",
                          f"{version}+{source}")
    with _locked(cache):
        if not manifest_file.exists():  # nobody built it while this run waited for the lock
            _build_into(cache, root, key, arch, python, log, source)
    return build(cache, arch, python)


#: What goes into piblade's wheel, copied to build it with the source hash stamped in.
WHEEL_SOURCES = ("pyproject.toml", "README.md", "piblade", "jobs")


def stamped_copy(root: Path, into: Path, source: str) -> Path:
    """A copy of what piblade's wheel is built from, with ``piblade/_build.py`` naming ``source``."""
    for name in WHEEL_SOURCES:
        path = root / name
        if path.is_dir():
            shutil.copytree(path, into / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.exists():
            shutil.copy2(path, into / name)
    (into / "piblade" / "_build.py").write_text(
        '"""Written by the wheelhouse build: the hash of the source this wheel was built from."""\n\n'
        f"BUILD = {source!r}\n")
    return into


def _previous(cache: Path, arch: str, python: str, key: str) -> Path | None:
    """The most recently used other wheelhouse for this architecture and Python, if any."""
    built = sorted((d for d in cache.glob(f"{arch}-py{python}-*") if d.name != key and (d / "MANIFEST").exists()),
                   key=lambda d: (d / "MANIFEST").stat().st_mtime, reverse=True)
    return built[0] if built else None


def prune(cache: Path, prefix: str, keep: int) -> list[Path]:
    """Delete all but the ``keep`` most recently used wheelhouses named ``prefix…``; return the deleted."""
    built = sorted((d for d in cache.glob(f"{prefix}*") if (d / "MANIFEST").exists()),
                   key=lambda d: (d / "MANIFEST").stat().st_mtime, reverse=True)
    for stale in built[keep:]:
        shutil.rmtree(stale, ignore_errors=True)
    return built[keep:]


def archive(house: Wheelhouse) -> Path:
    """The wheelhouse as one uncompressed tar (wheels are zip files already), made once.

    For the Ansible roles: ``unarchive`` sends one file, where a ``copy`` per
    wheel costs a round trip of modules each (≈ 34 s for 49 wheels on the testbed).
    Members are plain names owned by root, mode 0644, as piblade's own push leaves them.
    """
    path = house.directory / "wheels.tar"
    if path.exists():
        return path
    with _locked(house.directory.parent):
        if path.exists():
            return path
        partial = path.with_name(".wheels.tar.partial")
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            for wheel in house.wheels:
                info = tar.gettarinfo(str(wheel), arcname=wheel.name)
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                info.mode = 0o644
                with wheel.open("rb") as handle:
                    tar.addfile(info, handle)
        partial.rename(path)
    return path


def _build_into(cache: Path, root: Path, key: str, arch: str, python: str, log: Path | None,
                source: str) -> None:
    target = cache / key
    building = cache / f".{key}.building"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    out = log.open("ab") if log else subprocess.DEVNULL
    try:
        pip = [sys.executable, "-m", "pip"]
        with tempfile.TemporaryDirectory(prefix="piblade-wheel-") as tmp:
            copy = stamped_copy(root, Path(tmp), source)
            subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(building), str(copy)],
                           check=True, stdout=out, stderr=out)
        lock = root / LOCK
        if not lock.exists():
            raise PibladeError(f"{lock} is missing", hint="run `make lock` in the piblade checkout")
        requirements = building / "requirements.txt"
        requirements.write_text(requirements_for(lock.read_text(), arch, python))
        platform_args = [arg for tag in PLATFORMS[arch] for arg in ("--platform", tag)]
        download = [*pip, "download", "-q", "--no-deps", "--require-hashes", "--only-binary=:all:", *platform_args,
                    "--python-version", python, "--implementation", "cp", "-d", str(building), "-r",
                    str(requirements)]
        previous = _previous(cache, arch, python, key)
        # A code-only change: the locked dependencies are all in the last wheelhouse (hashes checked).
        offline = previous is not None and subprocess.run(
            [*download, "--no-index", "--find-links", str(previous)], check=False, stdout=out, stderr=out,
        ).returncode == 0
        if not offline:
            subprocess.run(download, check=True, stdout=out, stderr=out)
        requirements.unlink()
    except subprocess.CalledProcessError as exc:
        raise PibladeError(
            f"building the {arch} wheelhouse for Python {python} failed ({' '.join(exc.cmd[:4])} …)",
            hint=(f"see {log}" if log else "run with -v for pip's output") + "; if pip found no "
                 f"{arch} wheel of a locked version for Python {python}, run the node on a Python those "
                 "versions publish wheels for (Debian 12 / Raspberry Pi OS bookworm: 3.11)",
        ) from exc
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    wheels = sorted(building.glob("*.whl"))
    (building / "MANIFEST").write_text(_manifest(wheels) + "\n")
    building.rename(target)
    prune(cache, f"{arch}-py{python}-", keep=KEEP)
