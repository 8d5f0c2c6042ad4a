"""The local cluster: a real redis-server and piblade workers on this machine.

``piblade local up`` starts one detached daemon (``piblade local run``) that
owns everything else as child processes — redis-server with ACL users and AOF
persistence, a PostgreSQL for run history with the recorder that fills it, the
worker supervisor, the health agent and the alert service (``piblade alertd``)
— and restarts any of them that dies. ``down`` sends that daemon SIGTERM:
workers finish the job in hand, the recorder its batch, PostgreSQL checkpoints,
Redis flushes its AOF, and the daemon's whole process group is checked to be gone.
No root is needed; all state lives under ``<state dir>/local``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from piblade.errors import LocalClusterError
from piblade.pgserver import STOP_SIGNAL
from piblade.redisconn import DEFAULT_USER, PASSWORD_FILE_ENV, URL_ENV, RedisTarget, acl_line
from piblade.state import ensure_secret, private_dir, state_dir, write_private

if TYPE_CHECKING:
    from piblade.pgserver import PgServer
    from piblade.resultsdb import ResultsTarget

#: Redis ACL rules of the piblade user: everything RQ needs, no admin commands.
#: RQ's worker uses CLIENT SETNAME/LIST and INFO; nothing uses CONFIG, DEBUG, SHUTDOWN or MODULE.
PIBLADE_ACL_RULES = "~* &* +@all -@admin +client +info +slowlog -flushall -flushdb -keys"


@dataclass(frozen=True, slots=True)
class LocalPaths:
    root: Path

    @classmethod
    def default(cls) -> LocalPaths:
        return cls(state_dir() / "local")

    @property
    def redis_dir(self) -> Path:
        return self.root / "redis"

    @property
    def redis_conf(self) -> Path:
        return self.redis_dir / "redis.conf"

    @property
    def acl_file(self) -> Path:
        return self.redis_dir / "users.acl"

    @property
    def password_file(self) -> Path:
        return self.root / "secrets" / "redis.password"

    @property
    def postgres_dir(self) -> Path:
        """The local results database: its data directory, its unix socket and its config."""
        return self.root / "postgres"

    @property
    def postgres_password_file(self) -> Path:
        return self.root / "secrets" / "postgres.password"

    @property
    def admin_password_file(self) -> Path:
        return self.root / "secrets" / "redis-admin.password"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def state_file(self) -> Path:
        return self.root / "cluster.json"

    @property
    def lock_file(self) -> Path:
        """flock'ed by the daemon and inherited by everything it starts: held while any of them lives."""
        return self.root / "cluster.lock"


@dataclass(frozen=True, slots=True)
class LocalConfig:
    port: int
    workers: int
    queues: tuple[str, ...]
    pid: int = 0
    started: float = 0.0
    bind: tuple[str, ...] = ("127.0.0.1",)
    node: str = ""
    #: The local PostgreSQL's port on 127.0.0.1; 0 for a cluster started before it had one.
    pg_port: int = 0
    #: A results database elsewhere that this daemon's recorder fills (a Pi cluster's controller:
    #: the NAS node's PostgreSQL), as ``postgresql://user@host:port/db``; its password is
    #: :attr:`LocalPaths.postgres_password_file`. "" for none.
    results_url: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {"port": self.port, "workers": self.workers, "queues": list(self.queues), "pid": self.pid,
             "started": self.started, "bind": list(self.bind), "node": self.node, "pg_port": self.pg_port,
             "results_url": self.results_url}
        )

    @classmethod
    def from_json(cls, text: str) -> LocalConfig:
        data = json.loads(text)
        return cls(data["port"], data["workers"], tuple(data["queues"]), data.get("pid", 0), data.get("started", 0.0),
                   tuple(data.get("bind", ["127.0.0.1"])), data.get("node", ""), data.get("pg_port", 0),
                   data.get("results_url", ""))

    @property
    def node_name(self) -> str:
        return self.node or socket.gethostname()


def read_config(paths: LocalPaths) -> LocalConfig | None:
    try:
        return LocalConfig.from_json(paths.state_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


def target(paths: LocalPaths | None = None) -> RedisTarget | None:
    """The Redis of the local cluster, if one was ever started here."""
    paths = paths or LocalPaths.default()
    config = read_config(paths)
    if config is None:
        return None
    return RedisTarget("127.0.0.1", config.port, DEFAULT_USER, paths.password_file)


def results_target(paths: LocalPaths | None = None) -> ResultsTarget | None:
    """The results database of the local cluster (its own, or the one its recorder fills), if it has one."""
    from piblade.resultsdb import ResultsTarget, target_from_url

    paths = paths or LocalPaths.default()
    config = read_config(paths)
    if config is not None and config.results_url:
        return target_from_url(config.results_url, paths.postgres_password_file)
    if config is None or not config.pg_port:
        return None
    return ResultsTarget("127.0.0.1", config.pg_port, password_file=paths.postgres_password_file)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive: look at /proc where we can.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def lock_held(paths: LocalPaths) -> bool:
    """True while the daemon or any process it started (which inherit the lock) is alive."""
    try:
        fd = os.open(paths.lock_file, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _session(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[4])
    except (OSError, IndexError, ValueError):
        return -1


def leftovers(paths: LocalPaths) -> list[int]:
    """PIDs of the processes of this cluster: those holding the lock file open, and their sessions."""
    if not lock_held(paths):
        return []
    lock = str(paths.lock_file.resolve())
    holders: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == lock:
                    holders.add(int(entry.name))
                    break
            except OSError:
                continue
    sessions = {_session(pid) for pid in holders} - {-1, 0, _session(os.getpid())}
    if sessions:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid() and _session(int(entry.name)) in sessions:
                holders.add(int(entry.name))
    return sorted(pid for pid in holders if pid_alive(pid))


def stop_leftovers(paths: LocalPaths, grace: float = 20.0) -> int:
    """Stop what a dead daemon left behind (SIGTERM: Redis flushes its AOF; then SIGKILL). Returns how many."""
    pids = leftovers(paths)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(pid_alive(pid) for pid in pids):
        time.sleep(0.1)
    for _ in range(50):
        rest = leftovers(paths)
        if not rest:
            break
        for pid in rest:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.1)
    return len(pids)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def find_redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise LocalClusterError(
            "redis-server is not installed",
            hint="install it with `sudo apt-get install redis-server` (Debian/Raspberry Pi OS), or run `make demo`",
        )
    return path


def write_redis_config(paths: LocalPaths, port: int, password: str, bind: tuple[str, ...] = ("127.0.0.1",)) -> None:
    """redis.conf and users.acl for a loopback-only, password-protected, AOF-persistent Redis.

    The ``default`` user stays enabled with full rights but behind its own random
    password that only this machine's state dir holds: Redis 7.0 replays the
    AOF's MULTI/EXEC blocks as the default user, and with ``user default off``
    every transaction is dropped on restart (measured: 136 keys came back as 5).
    Clients — the CLI and workers — use the restricted ``piblade`` user.
    """
    private_dir(paths.redis_dir)
    digest = hashlib.sha256(password.encode()).hexdigest()
    admin = hashlib.sha256(ensure_secret(paths.admin_password_file).encode()).hexdigest()
    write_private(
        paths.acl_file,
        acl_line("default", admin, "~* &* +@all") + "\n" + acl_line(DEFAULT_USER, digest, PIBLADE_ACL_RULES) + "\n",
    )
    conf = f"""# written by piblade local up; regenerated on every start
port {port}
bind {" ".join(bind)}
protected-mode yes
daemonize no
dir {paths.redis_dir}
aclfile {paths.acl_file}
appendonly yes
appendfsync everysec
save ""
logfile {paths.log_dir / "redis.log"}
"""
    write_private(paths.redis_conf, conf)


def up(
    workers: int,
    queues: tuple[str, ...] = ("default",),
    *,
    paths: LocalPaths | None = None,
    port: int | None = None,
    bind: tuple[str, ...] = ("127.0.0.1",),
    node: str = "",
    results: bool = True,
    results_url: str = "",
    wait_seconds: float = 120.0,
    on_wait: Callable[[str], None] | None = None,
    launch: Callable[[], Callable[[], int | None]] | None = None,
) -> tuple[LocalConfig, bool]:
    """Start the local cluster, or return the running one. Returns (config, started_now).

    ``workers=0`` runs only Redis and the health agent: the controller of a Pi
    cluster, whose Redis also listens on the cluster address given in ``bind``.
    ``results`` runs the cluster's own PostgreSQL (in ``<root>/postgres``, on a
    free port of 127.0.0.1) and the recorder that fills it; a Pi cluster's
    controller passes False (its results database is on the NAS node) and
    names that database in ``results_url``: the daemon then runs a recorder that
    fills it (and restarts it when it dies), and start-up does not wait for it.
    ``launch`` starts the daemon some other way than as our own child (the
    controller's systemd unit) and returns how to tell that it died (its exit
    code, or None while it runs); the daemon records its own pid on start.
    """
    paths = paths or LocalPaths.default()
    current = read_config(paths)
    if current is not None and pid_alive(current.pid) and lock_held(paths):
        return current, False
    find_redis_server()
    stop_leftovers(paths)  # a dead daemon's redis-server, supervisor and agent: never two on one AOF
    private_dir(paths.root)
    private_dir(paths.log_dir)
    paths.data_dir.mkdir(parents=True, exist_ok=True)
    password = ensure_secret(paths.password_file)
    if port is None:
        port = current.port if current is not None and port_free(current.port) else free_port()
    elif not port_free(port):
        raise LocalClusterError(f"port {port} is already in use", hint="stop what listens there or pick another port")
    write_redis_config(paths, port, password, bind)
    pg_port = 0
    if results:
        pg_port = current.pg_port if current is not None and current.pg_port and port_free(current.pg_port) else 0
        pg_port = pg_port or free_port()
        server = local_pg(paths)
        if not server.initialised:
            if on_wait:
                on_wait("creating the results database (first start)")
            server.initdb()
    config = LocalConfig(port=port, workers=workers, queues=queues, bind=bind, node=node, pg_port=pg_port,
                         results_url=results_url)
    write_private(paths.state_file, config.to_json())
    if launch is not None:
        exited = launch()
        _wait_ready(paths, config, exited, wait_seconds, on_wait)
        return read_config(paths) or config, True
    log = (paths.log_dir / "daemon.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "piblade", "local", "run", "--root", str(paths.root)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "PIBLADE_STATE_DIR": str(state_dir())},
        close_fds=True,
    )
    log.close()
    config = LocalConfig(port, workers, queues, proc.pid, time.time(), bind, node, pg_port, results_url)
    write_private(paths.state_file, config.to_json())
    _wait_ready(paths, config, proc.poll, wait_seconds, on_wait)
    return config, True


def _wait_ready(
    paths: LocalPaths,
    config: LocalConfig,
    exited: Callable[[], int | None],
    wait_seconds: float,
    on_wait: Callable[[str], None] | None,
) -> None:
    from piblade.errors import RedisUnavailable
    from piblade.healthstore import SAMPLE_KEY
    from piblade.redisconn import connect
    from piblade.tasks import workers_on

    deadline = time.monotonic() + wait_seconds
    tgt = RedisTarget("127.0.0.1", config.port, DEFAULT_USER, paths.password_file)
    phase = ""
    while time.monotonic() < deadline:
        code = exited()
        if code is not None:
            raise LocalClusterError(
                f"the local cluster exited during start-up (code {code})",
                hint=f"see {paths.log_dir / 'daemon.log'} and {paths.log_dir / 'redis.log'}",
            )
        try:
            conn = connect(tgt, timeout=1.0)
        except RedisUnavailable:
            phase = "starting redis-server"
        else:
            count = workers_on(conn, config.queues[0])
            beating = conn.exists(SAMPLE_KEY.format(config.node_name))
            conn.close()
            database = _results_ready(paths, config)
            if count >= config.workers and beating and database:
                return
            phase = (
                f"warming workers ({count}/{config.workers} ready)" if count < config.workers
                else "starting the health agent" if not beating else "starting PostgreSQL"
            )
        if on_wait:
            on_wait(phase)
        time.sleep(0.2)
    down(paths=paths)
    raise LocalClusterError(
        f"the local cluster did not become ready in {wait_seconds:.0f}s ({phase})",
        hint=f"see {paths.log_dir}",
    )


def _results_ready(paths: LocalPaths, config: LocalConfig) -> bool:
    """True when the cluster has no results database, or its own answers (schema brought forward)."""
    from piblade import resultsdb

    target = results_target(paths)
    if target is None or not config.pg_port:
        return True
    try:
        resultsdb.connect(target, timeout=1.0).close()
    except resultsdb.ResultsUnavailable:
        return False
    return True


def local_pg(paths: LocalPaths) -> PgServer:
    """The local cluster's own PostgreSQL server (see :mod:`piblade.pgserver`)."""
    from piblade.pgserver import PgServer

    return PgServer(paths.postgres_dir, paths.postgres_password_file)


def down(*, paths: LocalPaths | None = None, grace: float = 60.0) -> bool:
    """Stop the local cluster; True if one was running. Leaves no process behind."""
    paths = paths or LocalPaths.default()
    config = read_config(paths)
    if config is None or not pid_alive(config.pid):
        _kill_group(config.pid if config else 0)
        return stop_leftovers(paths) > 0
    os.kill(config.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and pid_alive(config.pid):
        time.sleep(0.1)
    _kill_group(config.pid)
    stop_leftovers(paths)
    return True


def _kill_group(pgid: int) -> None:
    """SIGKILL whatever is left in the daemon's session (it leads its own process group)."""
    if pgid <= 0:
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def status(paths: LocalPaths | None = None) -> dict[str, Any]:
    """What is running: daemon, Redis, workers and queue depths."""
    from piblade import healthstore, tasks
    from piblade.errors import RedisUnavailable
    from piblade.redisconn import connect

    paths = paths or LocalPaths.default()
    config = read_config(paths)
    info: dict[str, Any] = {"running": False, "state_dir": str(paths.root), "data_dir": str(paths.data_dir)}
    if config is None or not pid_alive(config.pid):
        left = leftovers(paths)
        if left:
            info.update(daemon="dead", leftovers=left)
        return info
    info.update(running=True, pid=config.pid, redis=f"127.0.0.1:{config.port}", queues={}, workers=[])
    results = results_target(paths)
    if results is not None:
        info["results"] = results.display
    try:
        conn = connect(RedisTarget("127.0.0.1", config.port, DEFAULT_USER, paths.password_file), timeout=2.0)
    except RedisUnavailable as exc:
        info["error"] = exc.message
        return info
    for name in config.queues:
        counts = tasks.queue_counts(conn, name)
        info["queues"][name] = {"queued": counts.queued, "failed": counts.failed}
    rq_workers = tasks.workers(conn)
    lost = healthstore.lost_workers(conn, [w.name for w in rq_workers])
    for worker in rq_workers:
        state = f"lost ({lost[worker.name]})" if worker.name in lost else worker.state
        info["workers"].append({"name": worker.name, "state": state, "job": worker.job})
    if results is not None:
        from piblade import recordstream

        info["records_waiting"] = recordstream.backlog(conn)
    conn.close()
    return info


class Daemon:
    """The process behind `piblade local run`: owns redis-server and the workers."""

    def __init__(self, paths: LocalPaths) -> None:
        self.paths = paths
        config = read_config(paths)
        if config is None:
            raise LocalClusterError("no local cluster configuration", hint="use `piblade local up`")
        self.config = config
        self.stopping = False
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.lock_fd = -1

    def _lock(self) -> None:
        """Hold the cluster lock; every child inherits it, so it outlives a SIGKILLed daemon."""
        fd = os.open(self.paths.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LocalClusterError(
                f"another local cluster still runs on {self.paths.root}", hint="run `piblade local down`"
            ) from None
        os.set_inheritable(fd, True)
        self.lock_fd = fd

    def _env(self) -> dict[str, str]:
        from piblade import resultsdb

        env = dict(os.environ)
        env[URL_ENV] = f"redis://{DEFAULT_USER}@127.0.0.1:{self.config.port}/0"
        env[PASSWORD_FILE_ENV] = str(self.paths.password_file)
        target = results_target(self.paths)
        if target is not None:
            env[resultsdb.URL_ENV] = target.display
            env[resultsdb.PASSWORD_FILE_ENV] = str(self.paths.postgres_password_file)
        return env

    def _start(self, name: str) -> None:
        log = (self.paths.log_dir / f"{name}.log").open("ab")
        if name == "redis":
            argv = [find_redis_server(), str(self.paths.redis_conf)]
        elif name == "postgres":
            argv = local_pg(self.paths).argv(self.config.pg_port)
        elif name == "recorder":
            argv = [sys.executable, "-m", "piblade", "recorder"]
        elif name == "agent":
            argv = [
                sys.executable, "-m", "piblade", "agent", "--node", self.config.node_name,
                "--role", "controller,workers" if self.config.workers else "controller", "--interval", os.environ.get("PIBLADE_HEALTH_INTERVAL", "5"),
            ]  # fmt: skip
        elif name == "alertd":
            argv = [sys.executable, "-m", "piblade", "alertd", "--root", str(self.paths.root)]
        else:
            argv = [
                sys.executable, "-m", "piblade", "worker",
                "--processes", str(self.config.workers),
                "--queues", ",".join(self.config.queues),
                "--data-dir", str(self.paths.data_dir),
            ]  # fmt: skip
        self.children[name] = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self._env(),
            pass_fds=(self.lock_fd,),
        )
        log.close()

    def _stop(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self._lock()
        if self.config.pid != os.getpid():  # started by systemd, not by `local up`: say who we are
            self.config = replace(self.config, pid=os.getpid(), started=time.time())
            write_private(self.paths.state_file, self.config.to_json())
        self._start("redis")
        if self.config.pg_port:
            self._start("postgres")
        if self.config.pg_port or self.config.results_url:
            self._start("recorder")
        if self.config.workers:
            self._start("workers")
        self._start("agent")
        self._start("alertd")
        restarts: dict[str, list[float]] = {}
        while not self.stopping:
            time.sleep(0.2)
            for name, proc in list(self.children.items()):
                if proc.poll() is not None and not self.stopping:
                    now = time.monotonic()
                    recent = [t for t in restarts.get(name, []) if now - t < 60] + [now]
                    restarts[name] = recent
                    if len(recent) > 5:
                        time.sleep(2)
                    self._start(name)
        self._shutdown()
        return 0

    def _shutdown(self) -> None:
        recorder = self.children.get("recorder")
        if recorder and recorder.poll() is None:
            recorder.send_signal(signal.SIGTERM)  # it ends after the batch in hand; the rest waits in Redis
        agent = self.children.get("agent")
        if agent and agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
        alertd = self.children.get("alertd")
        if alertd and alertd.poll() is None:
            alertd.send_signal(signal.SIGTERM)  # it hands its lead back at once
        workers = self.children.get("workers")
        if workers and workers.poll() is None:
            workers.send_signal(signal.SIGTERM)  # warm: finish the job in hand
            try:
                workers.wait(timeout=50)
            except subprocess.TimeoutExpired:
                workers.kill()
                workers.wait()
        for proc in (agent, alertd):
            if proc and proc.poll() is None:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for name, sig in (("recorder", signal.SIGTERM), ("postgres", STOP_SIGNAL)):
            proc = self.children.get(name)
            if proc and proc.poll() is None:
                proc.send_signal(sig)  # PostgreSQL: a fast shutdown, which checkpoints its data
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        redis_proc = self.children.get("redis")
        if redis_proc and redis_proc.poll() is None:
            redis_proc.send_signal(signal.SIGTERM)  # redis flushes its AOF on SIGTERM
            try:
                redis_proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                redis_proc.kill()
                redis_proc.wait()
