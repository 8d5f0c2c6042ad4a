"""Where piblade keeps its state on this machine, and how it stores secrets.

Secrets (the Redis password, later the dashboard token and Samba password) live
in files of mode 0600 inside a 0700 directory. They are written atomically and
never printed; readers refuse a file that others can read.
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from pathlib import Path

from piblade import envvars
from piblade.errors import SecretError

STATE_DIR_ENV = envvars.STATE_DIR.name


def state_dir() -> Path:
    """``$PIBLADE_STATE_DIR``, else ``$XDG_STATE_HOME/piblade``, else ``~/.local/state/piblade``."""
    explicit = os.environ.get(STATE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
    return base / "piblade"


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it 0700."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0600, in a 0700 directory."""
    private_dir(path.parent)
    write_atomic(path, text)


def write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Write ``text`` to a temporary sibling, flush it to disk, rename it over ``path``.

    The sibling is created 0600 (``mkstemp``) and only changed to ``mode`` when
    that differs, so it also works where modes cannot be set (a FAT boot partition).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        if mode != 0o600:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_secret(path: Path) -> str:
    """Read a secret, refusing one that group or others can read."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise SecretError(
            f"secret file {path} does not exist",
            hint="run `piblade local up` (local cluster) or `piblade provision` to create it",
        ) from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(
            f"secret file {path} is readable by other users (mode {stat.filemode(info.st_mode)})",
            hint=f"run `chmod 600 {path}`",
        )
    return path.read_text().strip()


def ensure_secret(path: Path, nbytes: int = 32) -> str:
    """Return the secret in ``path``, generating a random one (0600) the first time."""
    if path.exists():
        return read_secret(path)
    value = secrets.token_urlsafe(nbytes)
    write_private(path, value + "\n")
    return value
