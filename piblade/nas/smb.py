"""The SMB seam: the only place piblade talks SMB (through smbprotocol's ``smbclient``).

One :class:`SmbShare` is one TCP connection, one authenticated session and one
tree connect to one share, in its own ``connection_cache`` (never smbprotocol's
process-wide pool) and closed on exit. Sessions are not shared across
``fork()``: a child that used its parent's session hung and killed the
parent's connection (FIELD-NOTES), so a share refuses to be used from any
process but the one that opened it.

Small files go many at a time (:meth:`SmbShare.write_many`, :meth:`SmbShare.read_many`):
:mod:`piblade.nas._compound` packs several files into one compound request and keeps
several requests in flight; a file the server refuses is reported here by name.

Every smbprotocol exception is translated here into :mod:`piblade.nas.errors`.
The tree is connected explicitly at open, so a wrong share name is reported as
such (smbclient's own path would first try a DFS referral and say "not found").
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO, Self

import smbclient
from smbclient._io import SMBFileIO, SMBFileTransaction, set_info
from smbprotocol.connection import Dialects
from smbprotocol.exceptions import (
    SMBAuthenticationError,
    SMBConnectionClosed,
    SMBException,
    SMBOSError,
    SMBResponseException,
)
from smbprotocol.file_info import (
    FileAttributes,
    FileBasicInformation,
    FileRenameInformation,
)
from smbprotocol.header import NtStatus
from smbprotocol.open import FilePipePrinterAccessMask as Access
from smbprotocol.structure import DateTimeField
from smbprotocol.tree import TreeConnect

from piblade.nas import _compound, _wire
from piblade.nas.errors import (
    EncryptionUnavailable,
    NasAuthFailed,
    NasDiskFull,
    NasError,
    NasPermissionDenied,
    NasUnreachable,
    RemoteExists,
    RemoteNotFound,
    ShareNotFound,
)
from piblade.nas.paths import join, temp_name, to_unc
from piblade.nas.share import DiskUsage, FetchedFile, Progress, RemoteEntry, SmallFile
from piblade.nas.target import SmbTarget

# NTSTATUS codes, grouped by what the user has to do about them.
_AUTH = {
    0xC000006D,  # STATUS_LOGON_FAILURE
    0xC000006A,  # STATUS_WRONG_PASSWORD
    0xC0000071,  # STATUS_PASSWORD_EXPIRED
    0xC0000072,  # STATUS_ACCOUNT_DISABLED
    0xC000006E,  # STATUS_ACCOUNT_RESTRICTION
    0xC0000193,  # STATUS_ACCOUNT_EXPIRED
}
_NOT_FOUND = {0xC0000034, 0xC000003A, 0xC000000F, 0xC0000225}  # object name/path not found, no such file, not found
_DISK_FULL = {0xC000007F, 0xC0000044}  # disk full, quota exceeded
_DENIED = {0xC0000022, 0xC0000043, 0xC0000056, 0xC0000121}  # access denied, sharing violation, delete pending, cannot delete
_IN_THE_WAY = {0xC0000035: "already exists", 0xC00000BA: "is a directory", 0xC0000103: "is not a directory",
               0xC0000101: "is a directory that is not empty"}
_BAD_NETWORK_NAME = 0xC00000CC
_GONE = {0xC00000C9, 0xC0000203}  # network name deleted, user session deleted

#: Access for the temporary file of an upload: write it, stamp its time, rename it (DELETE) on the same handle.
_UPLOAD_ACCESS = (Access.FILE_WRITE_DATA | Access.FILE_WRITE_ATTRIBUTES | Access.FILE_READ_ATTRIBUTES
                  | Access.DELETE | Access.SYNCHRONIZE)


#: NTSTATUS value -> its name, for messages about answers piblade parsed itself.
_STATUS_NAMES = {v: k for k, v in vars(NtStatus).items() if k.startswith("STATUS_") and isinstance(v, int)}


def _filetime(ns: int) -> int:
    return ns // 100 + DateTimeField.EPOCH_FILETIME


def _ns(value: Any) -> int:
    """smbprotocol's datetimes (UTC, microseconds) as nanoseconds since the epoch."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    return int(value)


class SmbShare:
    """One share on one SMB server, as a :class:`piblade.nas.share.Share`. Use as a context manager."""

    def __init__(self, target: SmbTarget, *, timeout: float = 10.0) -> None:
        self.target = target
        self.timeout = timeout
        self._cache: dict[str, Any] = {}
        self._pid = os.getpid()
        self._session: Any = None
        self._tree: Any = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        t = self.target
        self._pid = os.getpid()
        with self._errors(""):
            session = smbclient.register_session(
                t.server, username=t.user, password=t.password, port=t.port, encrypt=t.encrypt,
                connection_timeout=self.timeout, connection_cache=self._cache,
            )
            if session.connection.dialect < Dialects.SMB_3_0_0:
                raise NasError(
                    f"{t.display} only speaks SMB {session.connection.dialect:#x}; piblade needs SMB3",
                    hint="set `server min protocol = SMB3` on the NAS (`piblade provision` does)",
                )
            _wire.no_delay(session.connection)
            tree = TreeConnect(session, to_unc(t.server, t.share, ""))
            tree.connect(require_secure_negotiate=smbclient.ClientConfig().require_secure_negotiate)
        self._session, self._tree = session, tree
        if t.encrypt and not self.encrypted:
            self.close()
            raise EncryptionUnavailable(
                f"{t.display} did not agree to encrypt the session",
                hint="set `server smb encrypt = desired` on the NAS, or pass --no-encrypt on a trusted LAN",
            )
        _wire.use_lean_receiver(session, tree)

    def close(self) -> None:
        if self._cache and os.getpid() == self._pid:
            smbclient.reset_connection_cache(fail_on_error=False, connection_cache=self._cache)
        self._cache = {}
        self._session = self._tree = None

    @property
    def description(self) -> str:
        return self.target.display

    @property
    def encrypted(self) -> bool:
        """True when every message of this session is encrypted (SMB3 session or share encryption)."""
        return bool(self._session is not None and (self._session.encrypt_data or self._tree.encrypt_data))

    @property
    def dialect(self) -> str:
        d = self._session.connection.dialect if self._session is not None else 0
        return f"{d >> 8}.{(d >> 4) & 0xF}.{d & 0xF}"

    # ------------------------------------------------------------------ plumbing

    def _unc(self, path: str) -> str:
        return to_unc(self.target.server, self.target.share, path)

    def _kw(self) -> dict[str, Any]:
        if os.getpid() != self._pid:
            raise NasError(
                "an SMB session cannot be used in a forked child process",
                hint="open a new piblade.nas share in the child (sessions are per process)",
            )
        if self._session is None:
            raise NasError("the share is not open", hint="use SmbShare as a context manager")
        t = self.target
        return {"username": t.user, "password": t.password, "port": t.port,
                "connection_timeout": self.timeout, "connection_cache": self._cache}

    @contextlib.contextmanager
    def _errors(self, path: str) -> Iterator[None]:
        """Translate smbprotocol's exceptions into piblade's, naming the path and the server."""
        where = self.target.display
        try:
            yield
        except NasError:
            raise
        except SMBOSError as exc:
            raise self._status_error(exc.ntstatus, path, str(exc.strerror)) from exc
        except SMBResponseException as exc:
            raise self._status_error(exc.status, path, exc.message) from exc
        except SMBAuthenticationError as exc:
            raise self._auth_error() from exc
        except SMBConnectionClosed as exc:
            raise NasUnreachable(f"{where} closed the connection", hint="is smbd still running on the NAS?") from exc
        except _wire.ShortTransfer as exc:
            raise NasError(f"{path}: {exc}") from exc
        except SMBException as exc:
            if "encrypt" in str(exc).lower():
                raise EncryptionUnavailable(
                    f"{where} cannot encrypt SMB traffic",
                    hint="enable SMB3 encryption on the NAS (`server smb encrypt = desired`), "
                    "or pass --no-encrypt on a trusted LAN",
                ) from exc
            raise NasError(f"{where}: {exc}") from exc
        except ValueError as exc:
            if "Failed to connect" not in str(exc):
                raise
            reason = str(exc).rpartition(": ")[2]
            raise NasUnreachable(
                f"cannot reach the NAS at {self.target.server}:{self.target.port}: {reason}",
                hint=f"is the NAS up and smbd running? ({self.target.source or 'server'} names it)",
            ) from exc
        except (ConnectionError, TimeoutError) as exc:
            raise NasUnreachable(
                f"lost the connection to {where}: {exc}", hint="is the NAS up and smbd running?"
            ) from exc

    def _auth_error(self) -> NasAuthFailed:
        return NasAuthFailed(
            f"{self.target.display} refused user {self.target.user!r}: wrong user name or password",
            hint="check the password in PIBLADE_SMB_PASSWORD_FILE (or the cluster's samba.password, "
            "which `piblade provision` installs on the NAS) and --user",
        )

    def _status_error(self, status: int, path: str, text: str) -> NasError:
        shown = path or "/"
        if status in _AUTH:
            return self._auth_error()
        if status == _BAD_NETWORK_NAME:
            return ShareNotFound(
                f"{self.target.server} has no share {self.target.share!r}",
                hint="check --share (or the nas node's piblade_share); `smbclient -L` lists the shares",
            )
        if status in _NOT_FOUND:
            return RemoteNotFound(f"{shown}: no such file or directory on {self.target.display}")
        if status in _DISK_FULL:
            return NasDiskFull(
                f"{shown}: the NAS's disk is full", hint="free some space on the share (`piblade nas df`)"
            )
        if status in _DENIED:
            return NasPermissionDenied(
                f"{shown}: the NAS refused access ({text})",
                hint="another program may have the file open, or the share is read-only for this user",
            )
        if status in _IN_THE_WAY:
            return RemoteExists(f"{shown} {_IN_THE_WAY[status]} on {self.target.display}")
        if status in _GONE:
            return NasUnreachable(f"{self.target.display} ended the session", hint="run the command again")
        return NasError(f"{shown}: {text} (NTSTATUS {status:#010x})")

    # ------------------------------------------------------------------ Share operations

    def _entry(self, path: str, is_dir: bool, size: int, mtime: Any) -> RemoteEntry:
        return RemoteEntry(path, is_dir, 0 if is_dir else int(size), _ns(mtime))

    def scandir(self, path: str) -> list[RemoteEntry]:
        pipe = self._compound_pipeline()
        if pipe is not None:  # one compound request instead of smbprotocol's structures per name
            with self._errors(path):
                listed = _compound.list_dir(pipe, path)
            if isinstance(listed, _compound.Failure):
                raise self._failed([listed])
            if listed is not None:
                return [RemoteEntry(join(path, e.name), e.is_dir, 0 if e.is_dir else e.size, e.mtime_ns)
                        for e in listed]
        with self._errors(path), smbclient.scandir(self._unc(path), **self._kw()) as entries:
            out = []
            for e in entries:
                info = e.smb_info
                is_dir = bool(info.file_attributes & FileAttributes.FILE_ATTRIBUTE_DIRECTORY)
                out.append(self._entry(join(path, e.name), is_dir, info.end_of_file, info.last_write_time))
            return out

    def stat(self, path: str) -> RemoteEntry | None:
        import stat as st_mod

        try:
            with self._errors(path):
                st = smbclient.stat(self._unc(path), **self._kw())
        except RemoteNotFound:
            return None
        is_dir = st_mod.S_ISDIR(st.st_mode)
        return RemoteEntry(path, is_dir, 0 if is_dir else st.st_size, st.st_mtime_ns)

    def makedirs(self, path: str) -> None:
        if path:
            with self._errors(path):
                smbclient.makedirs(self._unc(path), exist_ok=True, **self._kw())

    def remove(self, path: str) -> None:
        with self._errors(path):
            smbclient.remove(self._unc(path), **self._kw())

    def rmdir(self, path: str) -> None:
        with self._errors(path):
            smbclient.rmdir(self._unc(path), **self._kw())

    def replace(self, src: str, dst: str) -> None:
        with self._errors(dst):
            smbclient.replace(self._unc(src), self._unc(dst), **self._kw())

    def set_mtime(self, path: str, mtime_ns: int) -> None:
        with self._errors(path):
            smbclient.utime(self._unc(path), ns=(mtime_ns, mtime_ns), **self._kw())

    def disk_usage(self) -> DiskUsage:
        with self._errors(""):
            volume = smbclient.stat_volume(self._unc(""), **self._kw())
        return DiskUsage(int(volume.total_size), int(volume.caller_available_size))

    def write_file(self, path: str, source: BinaryIO, size: int, progress: Progress, mtime_ns: int | None = None,
                   *, part: str | None = None, start: int = 0) -> None:
        """Write ``size`` bytes to a temporary sibling, then stamp ``mtime_ns`` and rename it over ``path``.

        ``part`` names that sibling for a resumable upload (``piblade.nas.resume``):
        with ``start`` > 0 the existing part is written on from there, and a
        failure leaves it in place for the next attempt. Without ``part`` the
        sibling has a random name and is removed on failure.

        The time stamp and the rename travel with the CLOSE in one compound
        request on the same handle, and a file of SMALL_FILE (1 MiB) or less is sent in
        the same compound as its CREATE: two round trips for a small file, and
        the rename is only sent once the data is known to be written. An
        interrupted upload leaves at most the hidden temporary file, never a
        partial file under ``path``; a failure seen here removes that too.
        """
        tmp = part or temp_name(path)
        with self._errors(path):
            raw = SMBFileIO(self._unc(tmp), mode="r+b" if start else "wb", share_access="rwd",
                            desired_access=_UPLOAD_ACCESS, **self._kw())
            done = False
            try:
                if size <= _wire.SMALL_FILE and not start:
                    data = source.read(size) if size else b""
                    if len(data) != size:
                        raise _wire.ShortTransfer("the local file became shorter while being sent")
                    transaction = SMBFileTransaction(raw)
                    raw.open(transaction=transaction)
                    if size:
                        transaction += raw.fd.write(data, offset=0, send=False)
                    transaction.commit()
                    if size and transaction.results[1] != size:
                        raise _wire.ShortTransfer(f"the server wrote {transaction.results[1]} of {size} bytes")
                    progress(size)
                else:
                    raw.open()
                    _wire.write_from(raw.fd, source, size, progress, start=start)
                with SMBFileTransaction(raw) as transaction:
                    if mtime_ns is not None:
                        basic = FileBasicInformation()
                        basic["last_write_time"] = _filetime(mtime_ns)
                        set_info(transaction, basic)
                    rename = FileRenameInformation()
                    rename["replace_if_exists"] = True
                    rename["file_name"] = path.replace("/", "\\")
                    set_info(transaction, rename)
                    raw.close(transaction=transaction)
                done = True
            finally:
                if not raw.closed:
                    with contextlib.suppress(Exception):
                        raw.close()
                if not done and part is None:
                    with contextlib.suppress(Exception):
                        smbclient.remove(self._unc(tmp), **self._kw())

    def _compound_pipeline(self) -> _compound.Pipeline | None:
        self._kw()  # the same process that opened the share, and still open
        if not _compound.usable(self._session, self._tree):
            return None
        return _compound.Pipeline(self._session, self._tree)

    def _failed(self, failures: list[_compound.Failure]) -> NasError:
        """The first failure as piblade's error, saying how many more files failed with it."""
        first = failures[0]
        text = first.text or _STATUS_NAMES.get(first.status, "")
        if first.status:
            error = self._status_error(first.status, first.path, text)
        else:
            error = NasError(f"{first.path}: {text}")
        if len(failures) > 1:
            error.message += f" (and {len(failures) - 1} more file(s) failed; the others were copied)"
            error.args = (error.message,)
        return error

    def write_many(self, files: Iterable[SmallFile], progress: Progress) -> None:
        """Upload small files as :meth:`write_file` does, many per compound request (:mod:`~piblade.nas._compound`).

        Without an encrypted AES-GCM session (``--no-encrypt``, or
        ``PIBLADE_SMB_LEAN_WRITE=0``) they go one at a time through :meth:`write_file`.
        """
        pipe = self._compound_pipeline()
        if pipe is None:
            for f in files:
                self.write_file(f.dest, io.BytesIO(f.data), len(f.data), progress, mtime_ns=f.mtime_ns)
            return
        uploads = (_compound.Upload(f.dest, temp_name(f.dest), f.data, f.mtime_ns) for f in files)
        with self._errors(""):
            failures, leftovers = _compound.put_many(pipe, uploads, progress)
        for tmp in leftovers:
            with contextlib.suppress(Exception):
                smbclient.remove(self._unc(tmp), **self._kw())
        if failures:
            raise self._failed(failures)

    def read_many(self, files: Iterable[tuple[str, int]]) -> Iterator[FetchedFile]:
        """Small files read whole, many per compound request (CREATE+READ+CLOSE each); see :meth:`write_many`."""
        pipe = self._compound_pipeline()
        if pipe is None:
            for path, size in files:
                sink = io.BytesIO()
                _, mtime_ns = self.read_file(path, sink, lambda _n: None, size_hint=size)
                yield FetchedFile(path, sink.getvalue(), mtime_ns)
            return
        failures: list[_compound.Failure] = []
        with self._errors(""):
            for got in _compound.get_many(pipe, iter(files), failures):
                yield FetchedFile(got.path, got.data, got.mtime_ns)
        if failures:
            raise self._failed(failures)

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of ``path``: what a resumed upload checks its part by."""
        with self._errors(path), smbclient.open_file(self._unc(path), mode="rb", share_access="rwd",
                                                     **self._kw()) as opened:
            opened.seek(offset)
            chunks = []
            while length > 0 and (data := opened.read(min(length, 1 << 20))):
                chunks.append(data)
                length -= len(data)
            return b"".join(chunks)

    def read_file(self, path: str, sink: BinaryIO, progress: Progress, size_hint: int | None = None,
                  *, start: int = 0) -> tuple[int, int]:
        """Copy the file at ``path`` (from byte ``start``) into ``sink``; return its size and modification time (ns).

        With a ``size_hint`` of SMALL_FILE (1 MiB) or less (the size a listing showed),
        CREATE, READ and CLOSE go in one compound request: one round trip. If
        the file turns out to have another size, it is read again the normal way.
        """
        with self._errors(path):
            if size_hint is not None and size_hint <= _wire.SMALL_FILE and not start:
                raw = SMBFileIO(self._unc(path), mode="rb", share_access="rw", **self._kw())
                transaction = SMBFileTransaction(raw)
                if size_hint:
                    transaction += raw.fd.read(0, size_hint, send=False)
                transaction.commit()  # opens and closes around the read
                data = transaction.results[0] if size_hint else b""
                if raw.fd.end_of_file == len(data):
                    sink.write(data)
                    progress(len(data))
                    return len(data), _ns(raw.fd.last_write_time)
            with smbclient.open_file(self._unc(path), mode="rb", buffering=0, share_access="rw", **self._kw()) as opened:
                size, mtime_ns = int(opened.fd.end_of_file), _ns(opened.fd.last_write_time)
                return start + _wire.read_into(opened.fd, sink, size, progress, start=start), mtime_ns
