"""The share as every SMB3 client sees it: dialects, encryption, alternate data streams.

A real smbd configured from piblade's provisioning template (tests/integration/smbd.py),
spoken to with smbprotocol's own connection and session objects rather than piblade's client,
so what is tested is the server's configuration, as a Windows or Linux client meets it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import smbclient
from smbprotocol.connection import Connection, Dialects
from smbprotocol.exceptions import SMBException
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from tests.integration.smbd import SHARE, SambaServer, start_smbd

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smbd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SambaServer]:
    server = start_smbd(tmp_path_factory.mktemp("smb-protocol"))
    yield server
    server.stop()


def session_with(server: SambaServer, dialect: int) -> tuple[Connection, Session]:
    conn = Connection(uuid.uuid4(), "127.0.0.1", server.port, require_signing=True)
    conn.connect(dialect, timeout=10)
    session = Session(conn, server.user, server.password, require_encryption=True)
    try:
        session.connect()
    except BaseException:
        conn.disconnect(True)
        raise
    return conn, session


@pytest.mark.parametrize("dialect", [Dialects.SMB_3_0_0, Dialects.SMB_3_0_2, Dialects.SMB_3_1_1],
                         ids=["3.0", "3.0.2", "3.1.1"])
def test_every_smb3_dialect_gets_an_encrypted_session(smbd: SambaServer, dialect: int) -> None:
    conn, session = session_with(smbd, dialect)
    try:
        assert conn.dialect == dialect
        tree = TreeConnect(session, rf"\\127.0.0.1\{SHARE}")
        tree.connect()
        assert session.encrypt_data  # SMB 3.0 with encryption is still SMB3
        tree.disconnect()
    finally:
        conn.disconnect(True)


@pytest.mark.parametrize("dialect", [Dialects.SMB_2_0_2, Dialects.SMB_2_1_0], ids=["2.0.2", "2.1"])
def test_smb2_is_refused(smbd: SambaServer, dialect: int) -> None:
    conn = Connection(uuid.uuid4(), "127.0.0.1", smbd.port, require_signing=True)
    try:
        with pytest.raises((SMBException, ValueError, OSError)):
            conn.connect(dialect, timeout=10)
    finally:
        conn.disconnect(True)


def test_an_alternate_data_stream_round_trips(smbd: SambaServer) -> None:
    cache: dict[str, object] = {}
    kwargs = {"username": smbd.user, "password": smbd.password, "port": smbd.port, "encrypt": True,
              "connection_cache": cache}
    base = rf"\\127.0.0.1\{SHARE}\notes.txt"
    try:
        with smbclient.open_file(base, mode="w", **kwargs) as fh:
            fh.write("the file itself")
        with smbclient.open_file(base + ":piblade.meta", mode="w", **kwargs) as fh:
            fh.write("tags: holiday, 2026")
        with smbclient.open_file(base + ":piblade.meta", mode="r", **kwargs) as fh:
            assert fh.read() == "tags: holiday, 2026"
        with smbclient.open_file(base, mode="r", **kwargs) as fh:
            assert fh.read() == "the file itself"
    finally:
        smbclient.reset_connection_cache(connection_cache=cache)
    # On the server the stream is an extended attribute of the file (streams_xattr), not a second file.
    on_disk = Path(smbd.share_dir) / "notes.txt"
    assert sorted(p.name for p in Path(smbd.share_dir).iterdir()) == ["notes.txt"]
    assert any("piblade.meta" in name for name in os.listxattr(on_disk))
