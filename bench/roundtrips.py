"""Redis round trips and commands per task, by phase, for piblade's worker and RQ's own loop.

Two views of the same work, so neither has to be trusted alone:

* **the client's**: redis-py's ``send_packed_command`` is wrapped, so every
  write to the socket (one command, or a whole pipeline) counts as one round
  trip, and the commands in it are counted by parsing what was sent. Each
  round trip is put in a phase by the innermost known function on the stack
  (submit, dequeue, start, finish, heartbeat, ...).
* **the server's**: ``MONITOR`` on the same redis-server counts the commands it
  executed, per client connection.

The worker runs in this process (RQ's burst mode, one process) so that its
calls can be seen; the plain alternative is RQ's ``SimpleWorker`` on the same
tasks, the loop ``rq worker`` runs in each forked child minus the fork. Then a
cProfile of the piblade worker loop over the same tasks, as a table of where
its time goes.

Usage: python bench/roundtrips.py [--tasks 2000] [--profile-tasks 2000] [--no-profile]
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import pstats
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _servers import ROOT, redis_server
from redis.connection import AbstractConnection
from rq import Queue
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

from piblade import dispatch, local, tasks, worker
from piblade.redisconn import connect
from piblade.registry import load_registry

#: Innermost function on the stack -> phase. Worker set-up and tear-down are once per process.
PHASES = {
    "_enqueue_run": "submit",
    "enqueue_many": "submit",
    "check_room": "submit",
    "wait": "wait",
    "run_status": "check",
    "run_maintenance_tasks": "maintenance",
    "maintain_heartbeats": "heartbeat",
    "heartbeat": "heartbeat",
    "check_for_suspension": "checks",
    "node_pause": "checks",
    "register_birth": "worker set-up",
    "bootstrap": "worker set-up",
    "subscribe": "worker set-up",
    "register_death": "worker tear-down",
    "teardown": "worker tear-down",
    "unsubscribe": "worker tear-down",
    "return_held": "worker tear-down",
    "dequeue_job_and_maintain_ttl": "dequeue",
    "dequeue_any": "dequeue",
    "take_batch": "dequeue",
    "prepare_job_execution": "start",
    "prepare_execution": "start",
    "perform": "task",
    "handle_job_success": "finish",
    "handle_job_failure": "finish",
    "_finalize_success": "finish",
    "_finalize_failure": "finish",
    "handle_execution_ended": "finish",
    "execute_job": "finish",
}
ORDER = ["submit", "dequeue", "start", "task", "finish", "heartbeat", "checks", "maintenance", "wait", "other",
         "worker set-up", "worker tear-down", "check"]
PER_TASK = ["submit", "dequeue", "start", "task", "finish", "heartbeat", "checks", "maintenance", "other"]


def resp_commands(packed: Any) -> list[str]:
    """Command names in a packed RESP request (one command or a pipeline's)."""
    data = b"".join(bytes(p) for p in ([packed] if isinstance(packed, bytes | str) else packed))
    names, pos = [], 0
    while pos < len(data):
        assert data[pos : pos + 1] == b"*", data[pos : pos + 20]
        end = data.index(b"\r\n", pos)
        count = int(data[pos + 1 : end])
        pos = end + 2
        args = []
        for _ in range(count):
            end = data.index(b"\r\n", pos)
            size = int(data[pos + 1 : end])
            args.append(data[end + 2 : end + 2 + size])
            pos = end + 2 + size + 2
        names.append(args[0].decode().upper())
    return names


class Counter:
    """Round trips and commands by phase, from a wrapped ``send_packed_command``."""

    def __init__(self) -> None:
        self.trips: collections.Counter[str] = collections.Counter()
        self.commands: collections.Counter[str] = collections.Counter()
        self.names: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.lock = threading.Lock()

    def phase(self) -> str:
        frame = sys._getframe(2)
        while frame is not None:
            found = PHASES.get(frame.f_code.co_name)
            if found:
                return found
            frame = frame.f_back  # type: ignore[assignment]
        return "other"

    def note(self, packed: Any) -> None:
        phase = self.phase()
        names = resp_commands(packed)
        with self.lock:
            self.trips[phase] += 1
            # MULTI/EXEC are commands the server runs too; a pipeline is one trip whatever it holds.
            self.commands[phase] += len(names)
            self.names[phase].update(names)

    def reset(self) -> None:
        self.trips.clear()
        self.commands.clear()
        self.names.clear()


@contextmanager
def counting(counter: Counter) -> Iterator[None]:
    original = AbstractConnection.send_packed_command

    def send(self: Any, command: Any, check_health: bool = True) -> Any:
        counter.note(command)
        return original(self, command, check_health)

    AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
    try:
        yield
    finally:
        AbstractConnection.send_packed_command = original  # type: ignore[method-assign]


class Monitor(threading.Thread):
    """Commands the server executed, per client port, read off a raw MONITOR connection."""

    def __init__(self, port: int, password: str) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(f"AUTH default {password}\r\nMONITOR\r\n".encode())
        self.per_client: collections.Counter[str] = collections.Counter()
        self.names: collections.Counter[str] = collections.Counter()
        self.stopped = False

    def run(self) -> None:
        buffer = b""
        while not self.stopped:
            try:
                chunk = self.sock.recv(1 << 16)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\r\n")
            for line in lines:
                if not line.startswith(b"+") or b"[" not in line:
                    continue
                client = line.split(b"[", 1)[1].split(b"]", 1)[0].split(b" ")[-1].decode()
                self.per_client[client] += 1
                rest = line.split(b"] ", 1)[1]
                self.names[rest.split(b'"')[1].decode().upper()] += 1

    def total(self) -> int:
        return sum(self.per_client.values())

    def stop(self) -> None:
        self.stopped = True
        self.sock.close()


def run_piblade(conn: Any, registry: Any, n: int, tmp: Path, burst_worker: Callable[[], Any]) -> dict[str, Any]:
    record = dispatch.submit(conn, registry, "noop", {"count": n})
    w = burst_worker()
    w.work(burst=True, logging_level="ERROR", with_scheduler=False)
    status = dispatch.run_status(conn, record.id, details=False)
    assert status.done == n, status.counts
    return {"run": record.id}


def run_plain(conn: Any, n: int) -> None:
    queue = Queue("plain", connection=conn, serializer=JSONSerializer)
    with conn.pipeline() as pipe:
        queue.enqueue_many([Queue.prepare_data("bench._plain.noop", (i,)) for i in range(n)], pipeline=pipe)
        pipe.execute()
    w = SimpleWorker([queue], connection=conn, serializer=JSONSerializer, name=f"plain.{time.time_ns()}")
    w.work(burst=True, logging_level="ERROR", with_scheduler=False)
    assert queue.finished_job_registry.count == n, queue.finished_job_registry.count


def piblade_worker_factory(conn: Any) -> Callable[[], Any]:
    def make() -> Any:
        queues = [tasks.queue(conn, "default", job_class=worker.BladeJob)]
        return worker.BladeWorker(queues, connection=conn, name=f"bench.{time.time_ns()}", log_job_description=False)
    return make


def table(title: str, counter: Counter, n: int) -> list[str]:
    lines = [f"{title}: per task ({n} tasks); round trips / commands, and the commands sent"]
    trips = commands = 0.0
    for phase in ORDER:
        if phase not in counter.trips:
            continue
        t, c = counter.trips[phase], counter.commands[phase]
        names = ", ".join(f"{k} {v / n:.2g}" for k, v in counter.names[phase].most_common(12))
        if phase in PER_TASK:
            trips += t / n
            commands += c / n
            lines.append(f"  {phase:<12} {t / n:6.2f} / {c / n:6.2f}   {names}")
        else:
            lines.append(f"  {phase:<12} {t:6d} / {c:6d} in all   {names}")
    lines.append(f"  {'per task':<12} {trips:6.2f} / {commands:6.2f}")
    return lines


def profile_piblade(conn: Any, registry: Any, n: int, tmp: Path) -> list[str]:
    record = dispatch.submit(conn, registry, "noop", {"count": n})
    w = piblade_worker_factory(conn)()
    prof = cProfile.Profile()
    started = time.perf_counter()
    prof.enable()
    w.work(burst=True, logging_level="ERROR", with_scheduler=False)
    prof.disable()
    elapsed = time.perf_counter() - started
    assert dispatch.run_status(conn, record.id, details=False).done == n
    stats = pstats.Stats(prof)
    out = [(f"cProfile of the piblade worker loop, {n} no-op tasks in one process: {elapsed:.2f} s "
            f"({elapsed / n * 1e3:.3f} ms a task; cProfile itself adds ≈ 2x)")]
    # Self time grouped by where the code lives: what the CPU does per task.
    groups: collections.Counter[str] = collections.Counter()
    for (filename, _line, func), (_cc, _nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if func in ("<method 'recv_into' of '_socket.socket' objects>", "<method 'sendall' of '_socket.socket' objects>",
                    "<method 'recv' of '_socket.socket' objects>"):
            key = "socket send/recv (waiting for Redis)"
        elif "hiredis" in func or "hiredis" in filename:
            key = "hiredis (reply parsing, C)"
        elif "/redis/" in filename:
            key = "redis-py (command packing, pipelines, connection pool)"
        elif "/rq/" in filename:
            key = "rq (job state machine, registries, serialisation)"
        elif "/piblade/" in filename or "/jobs/" in filename:
            key = "piblade + the job"
        elif filename == "~":
            key = "builtins (" + ("json" if "json" in func else "other") + ")"
        else:
            key = "stdlib (" + Path(filename).name + ")"
        groups[key] += tt
    total = sum(groups.values())
    out.append(f"  {'where (self time)':<56} {'ms/task':>8} {'share':>6}")
    for key, tt in groups.most_common(12):
        out.append(f"  {key:<56} {tt / n * 1e3:8.3f} {tt / total:6.0%}")
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(30)
    keep = [line for line in buf.getvalue().splitlines() if line.strip()][-32:]
    out.append("  top 30 by cumulative time:")
    out.extend("    " + line for line in keep)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--profile-tasks", type=int, default=2000)
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()
    n = args.tasks
    sys.path.insert(0, str(ROOT / "bench"))
    registry = load_registry()
    report: list[str] = []
    with redis_server() as (target, _password, tmp):
        admin = local.LocalPaths(tmp / "local").admin_password_file.read_text().strip()
        worker.configure_runtime(worker.Runtime(node="bench", data_root=tmp / "data", threads=1))
        (tmp / "data").mkdir()
        conn = connect(target)
        counter = Counter()
        monitor = Monitor(target.port, admin)
        monitor.start()
        time.sleep(0.2)
        for title, body in (
            ("piblade (submit noop, BladeWorker)", lambda: run_piblade(conn, registry, n, tmp,
                                                                       piblade_worker_factory(conn))),
            ("plain RQ (enqueue_many, SimpleWorker)", lambda: run_plain(conn, n)),
        ):
            counter.reset()
            before = monitor.total()
            with counting(counter):
                body()
            time.sleep(0.3)  # let MONITOR catch up
            report.extend(table(title, counter, n))
            server = monitor.total() - before
            report.append(f"  server (MONITOR): {server / n:.2f} commands per task, all phases and set-up included")
            report.append("")
        monitor.stop()
        if not args.no_profile:
            report.extend(profile_piblade(conn, registry, args.profile_tasks, tmp))
        conn.close()
    print("\n".join(report))


if __name__ == "__main__":
    main()
