"""The operations piblade needs from a share, and a plain-directory implementation.

:class:`Share` is what the transfer and glob code are written against. The
real one is :class:`piblade.nas.smb.SmbShare` (the SMB seam);
:class:`LocalShare` is a directory on this machine, used for the local cluster
(whose data directory plays the share) and by the unit tests of the transfer
logic, which need no server.

All paths are share paths as :func:`piblade.nas.paths.share_path` returns them.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from piblade.nas.errors import (
    NasDiskFull,
    NasError,
    NasPermissionDenied,
    RemoteExists,
    RemoteNotFound,
)
from piblade.nas.paths import join, temp_name

#: Called with the number of bytes just moved.
Progress = Callable[[int], None]

#: Bytes per read/write request. 64 KiB (smbprotocol's default) is ~4x slower on SMB.
CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class RemoteEntry:
    """One file or directory on the share."""

    path: str
    is_dir: bool
    size: int
    mtime_ns: int

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "name": self.name, "type": "dir" if self.is_dir else "file",
                "size": self.size, "mtime": self.mtime_ns / 1e9}


@dataclass(frozen=True, slots=True)
class DiskUsage:
    total: int
    free: int

    @property
    def used(self) -> int:
        return self.total - self.free

    def to_dict(self) -> dict[str, int | float]:
        return {"total": self.total, "used": self.used, "free": self.free,
                "percent": round(100.0 * self.used / self.total, 1) if self.total else 0.0}


@dataclass(frozen=True, slots=True)
class SmallFile:
    """A small local file already read, on its way to ``dest`` (see :meth:`Share.write_many`)."""

    dest: str
    data: bytes
    mtime_ns: int | None


@dataclass(frozen=True, slots=True)
class FetchedFile:
    """A small file read whole from the share; ``data`` None: its size changed, read it with ``read_file``."""

    path: str
    data: bytes | None
    mtime_ns: int


class Share(Protocol):
    """A share: a tree of files reachable by share paths."""

    @property
    def description(self) -> str: ...

    @property
    def encrypted(self) -> bool: ...

    def scandir(self, path: str) -> list[RemoteEntry]: ...

    def stat(self, path: str) -> RemoteEntry | None: ...

    def makedirs(self, path: str) -> None: ...

    def remove(self, path: str) -> None: ...

    def rmdir(self, path: str) -> None: ...

    def replace(self, src: str, dst: str) -> None: ...

    def set_mtime(self, path: str, mtime_ns: int) -> None: ...

    def disk_usage(self) -> DiskUsage: ...

    def write_file(
        self, path: str, source: BinaryIO, size: int, progress: Progress, mtime_ns: int | None = None,
        *, part: str | None = None, start: int = 0,
    ) -> None:
        """Write ``size`` bytes to a temporary name, stamp ``mtime_ns``, rename over ``path``.

        ``part``: the temporary name of a resumable upload, kept on failure; ``start``: where to go on in it.
        """
        ...

    def read_file(
        self, path: str, sink: BinaryIO, progress: Progress, size_hint: int | None = None, *, start: int = 0
    ) -> tuple[int, int]:
        """Copy ``path`` from byte ``start`` into ``sink``; return (size, modification time in ns).

        ``size_hint``: the size a listing showed.
        """
        ...

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of ``path``."""
        ...

    def write_many(self, files: Iterable[SmallFile], progress: Progress) -> None:
        """Upload each small file as :meth:`write_file` does (temporary name, time, rename).

        Several may be in flight at once. After a failure no new file is
        started; those already started are completed, then the first failure is raised.
        """
        ...

    def read_many(self, files: Iterable[tuple[str, int]]) -> Iterator[FetchedFile]:
        """Each (path, size a listing showed) read whole, in any order; several may be in flight at once.

        A failure is raised once the files already asked for have come back (and been yielded).
        """
        ...


def _translate(exc: OSError, path: str) -> NasError:
    import errno

    if exc.errno == errno.ENOENT:
        return RemoteNotFound(f"{path or '/'}: no such file or directory on the share")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NasDiskFull(f"{path}: the share's disk is full", hint="free some space (`piblade nas df`)")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return NasPermissionDenied(f"{path}: permission denied")
    if exc.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENOTEMPTY):
        return RemoteExists(f"{path}: {exc.strerror}")
    return NasError(f"{path}: {exc.strerror or exc}")


class LocalShare:
    """A directory used as a share (the local cluster's data directory, tests)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def description(self) -> str:
        return str(self.root)

    @property
    def encrypted(self) -> bool:
        return False  # nothing crosses a network

    def _p(self, path: str) -> Path:
        return self.root / path if path else self.root

    def _entry(self, path: str, st: os.stat_result) -> RemoteEntry:
        import stat as st_mod

        is_dir = st_mod.S_ISDIR(st.st_mode)
        return RemoteEntry(path, is_dir, 0 if is_dir else st.st_size, st.st_mtime_ns)

    def scandir(self, path: str) -> list[RemoteEntry]:
        try:
            with os.scandir(self._p(path)) as it:
                return [self._entry(join(path, e.name), e.stat()) for e in it]
        except OSError as exc:
            raise _translate(exc, path) from exc

    def stat(self, path: str) -> RemoteEntry | None:
        try:
            return self._entry(path, self._p(path).stat())
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _translate(exc, path) from exc

    def _call(self, path: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except OSError as exc:
            raise _translate(exc, path) from exc

    def makedirs(self, path: str) -> None:
        self._call(path, lambda: self._p(path).mkdir(parents=True, exist_ok=True))

    def remove(self, path: str) -> None:
        self._call(path, lambda: self._p(path).unlink())

    def rmdir(self, path: str) -> None:
        self._call(path, lambda: self._p(path).rmdir())

    def replace(self, src: str, dst: str) -> None:
        self._call(dst, lambda: os.replace(self._p(src), self._p(dst)))

    def set_mtime(self, path: str, mtime_ns: int) -> None:
        self._call(path, lambda: os.utime(self._p(path), ns=(mtime_ns, mtime_ns)))

    def disk_usage(self) -> DiskUsage:
        usage = shutil.disk_usage(self.root)
        return DiskUsage(usage.total, usage.free)

    def write_file(
        self, path: str, source: BinaryIO, size: int, progress: Progress, mtime_ns: int | None = None,
        *, part: str | None = None, start: int = 0,
    ) -> None:
        tmp = self._p(part or temp_name(path))

        def copy() -> None:
            try:
                with open(tmp, "r+b" if start else "wb") as out:
                    out.seek(start)
                    out.truncate()
                    remaining = size - start
                    while remaining > 0:
                        block = source.read(min(CHUNK, remaining))
                        if not block:
                            raise NasError(f"{path}: the local file became shorter while being copied")
                        out.write(block)
                        remaining -= len(block)
                        progress(len(block))
                if mtime_ns is not None:
                    os.utime(tmp, ns=(mtime_ns, mtime_ns))
                os.replace(tmp, self._p(path))
            except BaseException:
                if part is None:
                    tmp.unlink(missing_ok=True)
                raise

        self._call(path, copy)

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        data = b""

        def read() -> None:
            nonlocal data
            with open(self._p(path), "rb") as src:
                src.seek(offset)
                data = src.read(length)

        self._call(path, read)
        return data

    def write_many(self, files: Iterable[SmallFile], progress: Progress) -> None:
        for f in files:
            self.write_file(f.dest, io.BytesIO(f.data), len(f.data), progress, mtime_ns=f.mtime_ns)

    def read_many(self, files: Iterable[tuple[str, int]]) -> Iterator[FetchedFile]:
        for path, _size in files:
            sink = io.BytesIO()
            _, mtime_ns = self.read_file(path, sink, lambda _n: None)
            yield FetchedFile(path, sink.getvalue(), mtime_ns)

    def read_file(
        self, path: str, sink: BinaryIO, progress: Progress, size_hint: int | None = None, *, start: int = 0
    ) -> tuple[int, int]:
        total = start
        mtime_ns = 0

        def copy() -> None:
            nonlocal total, mtime_ns
            with open(self._p(path), "rb") as src:
                mtime_ns = os.fstat(src.fileno()).st_mtime_ns
                src.seek(start)
                while block := src.read(CHUNK):
                    sink.write(block)
                    total += len(block)
                    progress(len(block))

        self._call(path, copy)
        return total, mtime_ns
