"""`put` and `get` of files and whole trees: plan first (what to copy, what is already there), then copy.

Semantics, the same both ways (like ``rsync -t`` without a trailing slash, so
running it twice is harmless):

* a file goes to DEST; if DEST is an existing directory (or ends with ``/``),
  into it under its own name; without DEST, to the share's root (put) or the
  current directory (get) under its own name;
* a directory SRC makes DEST a copy of it (DEST defaults to SRC's name);
  files only at DEST are left alone.

A file counts as *already there* when sizes match and modification times are
within :data:`MTIME_WINDOW` (copies keep the source's time), or with
``checksum=True`` when the SHA-256 of both sides match. Every copy goes to a
hidden temporary name and is renamed over the real one when complete; a copy
larger than one resume block that was interrupted (Ctrl-C, SIGTERM, SIGHUP,
SIGKILL, a lost network) goes on where it stopped next time
(:mod:`piblade.nas.resume`). Files of :data:`SMALL_FILE` or less are read whole
and handed to the share many at a time (:meth:`Share.write_many`,
:meth:`Share.read_many`: several in flight, compounded on SMB), with the same
temporary-name-then-rename rule per file.
"""

from __future__ import annotations

import hashlib
import os
import stat as st_mod
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from piblade.nas import resume as resumes
from piblade.nas.errors import NasError, RemoteExists, RemoteNotFound
from piblade.nas.paths import is_temp_name, join, name, parent, share_path
from piblade.nas.share import RemoteEntry, Share, SmallFile

#: Modification times closer than this count as equal: FAT/exFAT USB disks (common on a
#: Pi NAS) store times in 2-second steps. Use --checksum when that is not good enough.
MTIME_WINDOW_NS = 2_000_000_000
#: Temporary files of killed uploads older than this are removed by the next put into their directory.
STALE_TEMP_NS = 3600 * 1_000_000_000
#: Files up to this size are read whole and moved many at a time (one compound request for several on SMB).
SMALL_FILE = 1 << 20

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class FileCopy:
    """One file of a plan: where from, where to, and why it is skipped (None: copy it)."""

    source: str
    dest: str
    size: int
    skip: str | None = None
    #: The source's modification time, for a get: a resumed download checks it is unchanged.
    mtime_ns: int = 0


@dataclass(slots=True)
class TransferPlan:
    direction: str  # "put" or "get"
    files: list[FileCopy] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)  # to create at the destination (trees)
    stale: list[str] = field(default_factory=list)  # leftover temporary files to remove (put)

    @property
    def to_copy(self) -> list[FileCopy]:
        return [f for f in self.files if f.skip is None]

    @property
    def bytes_to_copy(self) -> int:
        return sum(f.size for f in self.to_copy)


@dataclass(frozen=True, slots=True)
class TransferReport:
    direction: str
    files: int
    copied: int
    skipped: int
    bytes: int
    seconds: float
    #: Bytes an interrupted copy had already moved, kept instead of sent again.
    resumed: int = 0

    @property
    def rate(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        return {"direction": self.direction, "files": self.files, "copied": self.copied, "skipped": self.skipped,
                "bytes": self.bytes, "resumed_bytes": self.resumed, "seconds": round(self.seconds, 3),
                "bytes_per_second": round(self.rate)}


def sha256_local(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class _HashSink:
    def __init__(self) -> None:
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return len(data)


def sha256_remote(share: Share, path: str) -> str:
    sink = _HashSink()
    share.read_file(path, sink, lambda _n: None)  # type: ignore[arg-type]
    return sink.digest.hexdigest()


def _same(size_a: int, mtime_a: int, size_b: int, mtime_b: int) -> bool:
    return size_a == size_b and abs(mtime_a - mtime_b) < MTIME_WINDOW_NS


# --------------------------------------------------------------------------- put


def _local_tree(root: Path) -> tuple[list[tuple[str, Path, os.stat_result]], list[str]]:
    """Regular files (symlinks to files followed) and directories under ``root``, as relative POSIX paths."""
    files: list[tuple[str, Path, os.stat_result]] = []
    dirs: list[str] = []
    for current, dirnames, filenames in os.walk(root):  # does not descend into symlinked directories
        rel_dir = Path(current).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        dirnames.sort()
        for d in dirnames:
            dirs.append(join(rel_dir, d))
        for f in sorted(filenames):
            path = Path(current) / f
            try:
                info = path.stat()
            except OSError:
                continue  # a dangling symlink
            if st_mod.S_ISREG(info.st_mode):
                files.append((join(rel_dir, f), path, info))
    return files, dirs


def _remote_listing(share: Share, path: str, cache: dict[str, dict[str, RemoteEntry]]) -> dict[str, RemoteEntry]:
    if path not in cache:
        try:
            cache[path] = {e.name: e for e in share.scandir(path)}
        except RemoteNotFound:
            cache[path] = {}
    return cache[path]


def plan_put(share: Share, local: Path, dest: str | None = None, *, checksum: bool = False) -> TransferPlan:
    """What ``put`` would do, without changing anything."""
    if not local.exists():
        raise NasError(f"{local}: no such local file or directory")
    plan = TransferPlan("put")
    listings: dict[str, dict[str, RemoteEntry]] = {}
    if local.is_dir():
        base = share_path(dest) if dest is not None else share_path(local.resolve().name)
        if not base:
            raise NasError(f"put {local}: say where on the share the directory goes",
                           hint=f"e.g. `piblade nas put {local} {local.resolve().name}`")
        existing = share.stat(base)
        if existing is not None and not existing.is_dir:
            raise RemoteExists(f"{base} is a file on the share; cannot copy the directory {local} over it")
        files, dirs = _local_tree(local)
        plan.dirs = [base] + [join(base, d) for d in dirs]
        items = [(join(base, rel), path, info) for rel, path, info in files]
    else:
        info = local.stat()
        target = share_path(dest) if dest is not None else ""
        into = dest is None or dest.endswith(("/", "\\")) or not target
        if not into:
            existing = share.stat(target)
            into = existing is not None and existing.is_dir
        items = [(join(target, local.name) if into else target, local, info)]
    now = time.time_ns()
    for remote, path, info in items:
        listing = _remote_listing(share, parent(remote), listings)
        there = listing.get(name(remote))
        skip = None
        if there is not None and there.is_dir:
            raise RemoteExists(f"{remote} is a directory on the share; cannot copy the file {path} over it")
        if there is not None and there.size == info.st_size:
            if checksum:
                skip = "same SHA-256" if sha256_local(path) == sha256_remote(share, remote) else None
            elif _same(info.st_size, info.st_mtime_ns, there.size, there.mtime_ns):
                skip = "same size and time"
        plan.files.append(FileCopy(str(path), remote, info.st_size, skip))
    # Resumed, not removed (only a file larger than one resume block has a part).
    ours = {resumes.upload_part(f.dest) for f in plan.files if f.size > resumes.BLOCK}
    for directory, listing in listings.items():
        plan.stale += [join(directory, e.name) for e in listing.values()
                       if not e.is_dir and is_temp_name(e.name) and now - e.mtime_ns > STALE_TEMP_NS
                       and join(directory, e.name) not in ours]
    return plan


def run_put(share: Share, plan: TransferPlan, progress: Progress, *, resume: bool = True) -> TransferReport:
    started = time.perf_counter()
    made: set[str] = set()
    for directory in plan.dirs:
        share.makedirs(directory)
        made.add(directory)
    small = [item for item in plan.to_copy if item.size <= SMALL_FILE]
    large = [item for item in plan.to_copy if item.size > SMALL_FILE]
    for folder in dict.fromkeys(parent(item.dest) for item in small):
        if folder not in made:
            share.makedirs(folder)
            made.add(folder)
    sent = [0]
    share.write_many(_read_small(small, large, sent), progress)
    moved, kept = sent[0], 0
    for item in large:
        folder = parent(item.dest)
        if folder not in made:
            share.makedirs(folder)
            made.add(folder)
        with open(item.source, "rb", buffering=0) as fh:
            info = os.fstat(fh.fileno())  # the file as it is now, not as planned
            start = _put_one(share, item, fh, info, progress) if resume else None
            if start is None:  # small, or another copy of it is running: a fresh, private part
                share.write_file(item.dest, fh, info.st_size, progress, mtime_ns=info.st_mtime_ns)
                start = 0
        moved += info.st_size - start
        kept += start
    for leftover in plan.stale:
        try:
            share.remove(leftover)
        except NasError:
            pass  # another upload may still own it; it is hidden either way
    return _report(plan, moved, started, kept)


def _read_small(items: list[FileCopy], grown: list[FileCopy], sent: list[int]) -> Iterator[SmallFile]:
    """Each small file read whole as it is now; one that has grown past SMALL_FILE is left for ``grown``."""
    for item in items:
        with open(item.source, "rb", buffering=0) as fh:
            info = os.fstat(fh.fileno())
            data = fh.read(SMALL_FILE + 1) if info.st_size else b""
        if len(data) > SMALL_FILE:
            grown.append(item)
            continue
        sent[0] += len(data)
        yield SmallFile(item.dest, data, info.st_mtime_ns)


def _put_one(share: Share, item: FileCopy, fh: BinaryIO, info: os.stat_result, progress: Progress) -> int | None:
    """Upload through this machine's resumable part; return where it went on from, or None to copy plainly."""
    if info.st_size <= resumes.BLOCK:
        return None
    slot = resumes.Slot(f"put {share.description} {item.dest}")
    if not slot.acquire():
        return None
    with slot:
        part = resumes.upload_part(item.dest)
        source = str(Path(item.source).resolve())
        there = share.stat(part)
        start, record = resumes.resume_point(slot, source, info.st_size, info.st_mtime_ns,
                                             there.size if there is not None else None,
                                             lambda offset, n: share.read_range(part, offset, n))
        recorder = resumes.Recorder(slot, record)
        fh.seek(start)
        progress(start)

        def acknowledged(n: int) -> None:
            recorder.acknowledged(n)
            progress(n)

        share.write_file(item.dest, resumes.HashingReader(fh, recorder.feed),  # type: ignore[arg-type]
                         info.st_size, acknowledged, mtime_ns=info.st_mtime_ns, part=part, start=start)
        slot.clear()
    return start


# --------------------------------------------------------------------------- get


def remote_tree(share: Share, root: str) -> tuple[list[RemoteEntry], list[str]]:
    """Files and directories below ``root`` (breadth first), leaving out transfers' temporary files."""
    files: list[RemoteEntry] = []
    dirs: list[str] = []
    pending = [root]
    while pending:
        current = pending.pop(0)
        for entry in sorted(share.scandir(current), key=lambda e: e.name):
            if entry.is_dir:
                dirs.append(entry.path)
                pending.append(entry.path)
            elif not is_temp_name(entry.name):
                files.append(entry)
    return files, dirs


def plan_get(share: Share, remote: str, local: Path | None = None, *, checksum: bool = False) -> TransferPlan:
    """What ``get`` would do, without changing anything."""
    source = share_path(remote)
    entry = share.stat(source) if source else RemoteEntry("", True, 0, 0)
    if entry is None:
        raise RemoteNotFound(f"{source}: no such file or directory on {share.description}")
    plan = TransferPlan("get")
    if entry.is_dir:
        if local is None:
            if not source:
                raise NasError("get of the whole share needs a local directory", hint="e.g. `piblade nas get / ./backup`")
            local = Path(name(source))
        if local.exists() and not local.is_dir():
            raise NasError(f"{local} is a file; cannot copy the directory {source or '/'} over it")
        files, dirs = remote_tree(share, source)
        prefix = len(source) + 1 if source else 0
        plan.dirs = [str(local)] + [str(local / d[prefix:]) for d in dirs]
        items = [(f, local / f.path[prefix:]) for f in files]
    else:
        if local is None:
            target = Path(name(source))
        elif local.is_dir() or str(local).endswith(os.sep):
            target = local / name(source)
        else:
            target = local
        items = [(entry, target)]
    for item, target in items:
        skip = None
        try:
            info = target.stat()
        except FileNotFoundError:
            info = None
        if info is not None and st_mod.S_ISDIR(info.st_mode):
            raise NasError(f"{target} is a directory; cannot copy the file {item.path} over it")
        if info is not None and info.st_size == item.size:
            if checksum:
                skip = "same SHA-256" if sha256_local(target) == sha256_remote(share, item.path) else None
            elif _same(info.st_size, info.st_mtime_ns, item.size, item.mtime_ns):
                skip = "same size and time"
        plan.files.append(FileCopy(item.path, str(target), item.size, skip, item.mtime_ns))
    return plan


def run_get(share: Share, plan: TransferPlan, progress: Progress, *, resume: bool = True) -> TransferReport:
    started = time.perf_counter()
    for directory in plan.dirs:
        Path(directory).mkdir(parents=True, exist_ok=True)
    small = {item.source: item for item in plan.to_copy if item.size <= SMALL_FILE}
    for folder in dict.fromkeys(Path(item.dest).parent for item in small.values()):
        folder.mkdir(parents=True, exist_ok=True)
    again: list[FileCopy] = []  # changed size since the listing: read the normal way
    moved = kept = 0
    for fetched in share.read_many((item.source, item.size) for item in small.values()):
        item = small[fetched.path]
        if fetched.data is None:
            again.append(item)
            continue
        _save(Path(item.dest), fetched.data, fetched.mtime_ns)
        moved += len(fetched.data)
        progress(len(fetched.data))
    for item in again + [item for item in plan.to_copy if item.size > SMALL_FILE]:
        target = Path(item.dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        got = _get_one(share, item, target, progress) if resume else None
        if got is not None:
            moved += got[0]
            kept += got[1]
            continue
        tmp = target.with_name(f".{target.name}.piblade-{os.getpid()}.part")
        try:
            with open(tmp, "wb") as fh:
                size, mtime_ns = share.read_file(item.source, fh, progress, size_hint=item.size)
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        moved += size
    return _report(plan, moved, started, kept)


def _save(target: Path, data: bytes, mtime_ns: int) -> None:
    """Write a downloaded file under a hidden name, stamp its time, rename it into place."""
    tmp = target.with_name(f".{target.name}.piblade-{os.getpid()}.part")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.utime(tmp, ns=(mtime_ns, mtime_ns))
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _get_one(share: Share, item: FileCopy, target: Path, progress: Progress) -> tuple[int, int] | None:
    """Download through this machine's resumable part; return (bytes moved, bytes kept), or None to copy plainly."""
    if item.size <= resumes.BLOCK:
        return None
    slot = resumes.Slot(f"get {share.description} {item.source} {target.resolve()}")
    if not slot.acquire():
        return None
    with slot:
        part = resumes.download_part(target)
        source = f"{share.description}/{item.source}"
        # The file as it is now, not as planned: a tree's plan is made before its first file is copied.
        entry = share.stat(item.source)
        if entry is None:
            raise RemoteNotFound(f"{item.source}: no such file on {share.description}")
        item = FileCopy(item.source, item.dest, entry.size, None, entry.mtime_ns)

        def read_block(offset: int, n: int) -> bytes:
            with open(part, "rb") as fh:
                fh.seek(offset)
                return fh.read(n)

        start, record = resumes.resume_point(slot, source, item.size, item.mtime_ns,
                                             part.stat().st_size if part.exists() else None, read_block)
        progress(start)
        with open(part, "r+b" if start else "wb") as fh:
            fh.truncate(start)
            fh.seek(start)

            def durable() -> None:
                fh.flush()
                os.fsync(fh.fileno())

            recorder = resumes.Recorder(slot, record, before_save=durable)

            def arrived(n: int) -> None:
                recorder.acknowledged(n)
                progress(n)

            size, mtime_ns = share.read_file(item.source, resumes.HashingWriter(fh, recorder.feed),  # type: ignore[arg-type]
                                             arrived, size_hint=item.size, start=start)
        # (A listing's time and an open file's differ by float rounding, never by a millisecond.)
        if size != item.size or abs(mtime_ns - item.mtime_ns) > 1_000_000:
            # Changed on the share while it was copied: the part may join two versions.
            part.unlink(missing_ok=True)
            slot.clear()
            raise NasError(f"{item.source} changed on {share.description} while it was copied",
                           hint="run the same command again to copy it as it is now")
        os.utime(part, ns=(mtime_ns, mtime_ns))
        os.replace(part, target)
        slot.clear()
    return size - start, start


def _report(plan: TransferPlan, moved: int, started: float, kept: int = 0) -> TransferReport:
    copied = len(plan.to_copy)
    return TransferReport(plan.direction, len(plan.files), copied, len(plan.files) - copied, moved,
                          time.perf_counter() - started, kept)


def remove(share: Share, path: str, *, recursive: bool = False) -> int:
    """Remove a file, or with ``recursive`` a directory and everything below it; return files removed."""
    target = share_path(path)
    if not target:
        raise NasError("refusing to remove the whole share", hint="name a file or directory on it")
    entry = share.stat(target)
    if entry is None:
        raise RemoteNotFound(f"{target}: no such file or directory on {share.description}")
    if not entry.is_dir:
        share.remove(target)
        return 1
    if not recursive:
        raise RemoteExists(f"{target} is a directory", hint=f"use `piblade nas rm -r {target}` to remove it and its contents")
    files: list[str] = []
    dirs: list[str] = []
    pending = [target]
    while pending:  # temporary files included: everything goes
        current = pending.pop()
        for e in share.scandir(current):
            (dirs if e.is_dir else files).append(e.path)
            if e.is_dir:
                pending.append(e.path)
    for f in files:
        share.remove(f)
    for d in sorted(dirs, key=lambda p: p.count("/"), reverse=True):
        share.rmdir(d)
    share.rmdir(target)
    return len(files)
