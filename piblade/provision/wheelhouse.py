"""The wheelhouse the controller builds and pushes, so nodes install piblade without internet.

For each (architecture, Python version) the controller downloads binary wheels
of every dependency for that platform (aarch64 for real Pis) and builds
piblade's own wheel once. The result is cached under the state dir, keyed by a
hash of piblade's source, so an unchanged re-run does no building at all.
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
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from piblade.errors import PibladeError

#: Bumped when what goes into a wheelhouse changes, so cached ones are rebuilt.
FORMAT = "2"
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
    files = [root / "pyproject.toml"]
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


def _conditional_requirements(wheel: Path) -> set[str]:
    """Requirements of a wheel that depend on the Python version (``; python_version < …``)."""
    import zipfile

    found: set[str] = set()
    with zipfile.ZipFile(wheel) as archive:
        meta = next((n for n in archive.namelist() if n.endswith(".dist-info/METADATA")), None)
        if meta is None:
            return found
        for line in archive.read(meta).decode(errors="replace").splitlines():
            if not line.startswith("Requires-Dist:") or ";" not in line:
                continue
            requirement, marker = line.removeprefix("Requires-Dist:").split(";", 1)
            if ("python_version" in marker or "python_full_version" in marker) and "extra ==" not in marker:
                found.add(requirement.strip().replace(" ", ""))
    return found


def _add_conditional(directory: Path, platform_args: list[str], python: str, out: int | IO[bytes]) -> None:
    """Fetch dependencies that only some Python versions need.

    pip picks wheel *tags* for the node's Python but evaluates environment
    markers against the controller's own interpreter: a controller on 3.11.7
    skips ``async-timeout; python_full_version < "3.11.3"``, which a node on
    Debian's 3.11.2 needs. Downloading every such dependency is harmless (pip
    on the node installs only what its markers select).
    """
    seen: set[str] = set()
    for _ in range(3):
        wanted = set().union(*(_conditional_requirements(w) for w in directory.glob("*.whl"))) - seen
        if not wanted:
            return
        seen |= wanted
        base = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", *platform_args,
                "--python-version", python, "--implementation", "cp", "-d", str(directory)]
        if subprocess.run([*base, *sorted(wanted)], stdout=out, stderr=out).returncode != 0:
            # Some are for other Python versions only (no wheel for this one): take what exists.
            for requirement in sorted(wanted):
                subprocess.run([*base, requirement], stdout=out, stderr=out)


@contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """One builder at a time per cache (two provisioning runs, or Ansible's loop and a CLI run)."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def build(cache: Path, arch: str, python: str, *, log: Path | None = None) -> Wheelhouse:
    """Return the wheelhouse for ``arch``/``python``, building it if piblade's source changed."""
    if arch not in PLATFORMS:
        raise PibladeError(
            f"no wheels for the node architecture {arch!r}",
            hint="piblade nodes need a 64-bit OS (aarch64 on Raspberry Pi: Numba has no 32-bit ARM wheels)",
        )
    root = project_root()
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    key = f"{arch}-py{python}-{FORMAT}{source_hash(root)}"
    target = cache / key
    manifest_file = target / "MANIFEST"
    if manifest_file.exists():
        with contextlib.suppress(OSError):  # last use, for prune(): a used wheelhouse is kept
            os.utime(manifest_file)
        wheels = tuple(sorted(target.glob("*.whl")))
        return Wheelhouse(target, wheels, manifest_file.read_text().strip(), f"piblade=={version}")
    with _locked(cache):
        if not manifest_file.exists():  # nobody built it while this run waited for the lock
            _build_into(cache, root, key, arch, python, log)
    return build(cache, arch, python)


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


def _build_into(cache: Path, root: Path, key: str, arch: str, python: str, log: Path | None) -> None:
    target = cache / key
    building = cache / f".{key}.building"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    out = log.open("ab") if log else subprocess.DEVNULL
    try:
        pip = [sys.executable, "-m", "pip"]
        subprocess.run([*pip, "wheel", "--no-deps", "-q", "-w", str(building), str(root)],
                       check=True, stdout=out, stderr=out)
        requirements = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
        platform_args = [arg for tag in PLATFORMS[arch] for arg in ("--platform", tag)]
        subprocess.run(
            [*pip, "download", "-q", "--only-binary=:all:", *platform_args, "--python-version", python,
             "--implementation", "cp", "-d", str(building), *requirements],
            check=True, stdout=out, stderr=out,
        )
        _add_conditional(building, platform_args, python, out)
    except subprocess.CalledProcessError as exc:
        raise PibladeError(
            f"building the {arch} wheelhouse failed ({' '.join(exc.cmd[:4])} …)",
            hint=f"see {log}" if log else "run with -v for pip's output",
        ) from exc
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    wheels = sorted(building.glob("*.whl"))
    (building / "MANIFEST").write_text(_manifest(wheels) + "\n")
    building.rename(target)
    prune(cache, f"{arch}-py{python}-", keep=KEEP)
