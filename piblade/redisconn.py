"""The one seam to Redis: where it is, how we authenticate, and its errors in our terms.

Redis holds the queues, heartbeats and run records. It always runs with ACL
users (``user default off``) and a generated password kept in a 0600 file; the
password never appears on a command line, in a URL we print, or in a log.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from piblade import envvars
from piblade.errors import PibladeError, RedisUnavailable
from piblade.state import read_secret

if TYPE_CHECKING:  # redis-py costs ~80 ms to import: only the commands that talk to Redis pay it
    import redis

#: Environment a worker or agent is started with (systemd env file, local cluster).
URL_ENV = envvars.REDIS_URL.name
PASSWORD_FILE_ENV = envvars.REDIS_PASSWORD_FILE.name
DEFAULT_USER = "piblade"


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where a Redis server is and which credential to use. Holds no secret itself."""

    host: str
    port: int
    username: str = DEFAULT_USER
    password_file: Path | None = None
    db: int = 0

    @property
    def display(self) -> str:
        """A URL safe to print: it never contains the password."""
        return f"redis://{self.username}@{self.host}:{self.port}/{self.db}"

    def url(self) -> str:
        """The URL without password, as written to env files (the password travels in its own file)."""
        return self.display

    def client(self, *, timeout: float = 10.0) -> redis.Redis:
        """A client for RQ (bytes responses), authenticated but not yet checked."""
        import redis

        password = read_secret(self.password_file) if self.password_file else None
        return redis.Redis(
            host=self.host,
            port=self.port,
            db=self.db,
            username=self.username if password else None,
            password=password,
            socket_connect_timeout=timeout,
            socket_keepalive=True,
            health_check_interval=30,
            client_name="piblade",
        )


def target_from_url(url: str, password_file: str | Path | None) -> RedisTarget:
    """Parse ``redis://user@host:port/db``; a password inside the URL is refused."""
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        raise PibladeError(f"not a redis:// URL: {url!r}", hint="use redis://USER@HOST:PORT/DB")
    if parts.password:
        raise PibladeError(
            "a password inside the Redis URL is refused (it would show up in process lists and logs)",
            hint=f"put it in a 0600 file and set {PASSWORD_FILE_ENV} to its path",
        )
    db = int(parts.path.lstrip("/") or 0)
    return RedisTarget(
        host=parts.hostname,
        port=parts.port or 6379,
        username=parts.username or DEFAULT_USER,
        password_file=Path(password_file) if password_file else None,
        db=db,
    )


def target_from_env() -> RedisTarget | None:
    url = os.environ.get(URL_ENV)
    if not url:
        return None
    return target_from_url(url, os.environ.get(PASSWORD_FILE_ENV))


def connect(target: RedisTarget, *, timeout: float = 10.0) -> redis.Redis:
    """Connect and check with PING; translate failures into errors that say what to do."""
    import redis

    client = target.client(timeout=timeout)
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise RedisUnavailable(
            f"Redis at {target.host}:{target.port} refused the credentials of user {target.username!r}",
            hint=f"check the password file {target.password_file}",
        ) from exc
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "NOPERM" in str(exc):
            raise RedisUnavailable(
                f"Redis at {target.host}:{target.port} wants authentication: {exc}",
                hint=f"set {PASSWORD_FILE_ENV} or start the cluster with `piblade local up`",
            ) from exc
        raise
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise RedisUnavailable(
            f"cannot reach Redis at {target.host}:{target.port} ({exc.__class__.__name__})",
            hint="start the local cluster with `piblade local up`, or check the controller is running",
        ) from exc
    return client


def acl_line(username: str, password_sha256: str, rules: str) -> str:
    """One ``users.acl`` line. The file stores only the SHA-256 of the password."""
    return f"user {username} on #{password_sha256} {rules}"


def text(value: bytes | str) -> str:
    """A Redis reply as text: piblade's clients return bytes, redis-py's types allow str too."""
    return value.decode() if isinstance(value, bytes) else value
