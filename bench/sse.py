"""Dashboard bandwidth: the live stream's bytes per minute, new (deltas, gzip) vs old (whole snapshots).

One cluster for both, measured in the same window: a real redis-server, two real health agents
(`piblade agent`, a heartbeat every 5 s), one worker node with a long run in progress (a task
every 2 s, so the runs table and queue counts change all the time), an hour of history per node,
and a real `piblade dashboard` process. Three clients read /events side by side for the window,
reconnecting when the server ends a stream (every 10 min) as a browser does:

* old: ``/events?full=1`` — the whole snapshot on every change, as before deltas;
* new: ``/events`` with ``Accept-Encoding: gzip`` — what a browser gets now;
* new, no gzip: ``/events`` with ``Accept-Encoding: identity`` — the deltas alone.

Bytes are counted as they come off the socket after HTTP chunking (the gzip stream itself for
the new one). "First load" is the page, its three static files and one hour of history for each
node, as a browser with gzip fetches them.

Usage: python bench/sse.py [--minutes 10]
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import random
import re
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

from _servers import ROOT, env_for, redis_server, stop

from piblade import dispatch, healthstore, local
from piblade.redisconn import connect
from piblade.registry import load_registry

NODES = ("pi-a", "pi-b")
TEST_JOBS = "tests.integration.testjobs"


def count_stream(url: str, token: str, encoding: str, until: float, out: dict[str, int]) -> None:
    parts = urlsplit(url)
    while time.monotonic() < until:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=max(1.0, until - time.monotonic()))
        try:
            conn.request("GET", parts.path + ("?" + parts.query if parts.query else ""),
                         headers={"Authorization": f"Bearer {token}", "Accept-Encoding": encoding})
            response = conn.getresponse()
            assert response.status == 200, response.status
            out["connections"] += 1
            while time.monotonic() < until:
                conn.sock.settimeout(max(0.1, until - time.monotonic()))  # type: ignore[union-attr]
                chunk = response.read1(65536)
                if not chunk:
                    break  # the server ended the stream: reconnect, as EventSource does
                out["bytes"] += len(chunk)
        except TimeoutError:
            pass
        finally:
            conn.close()


def first_load(base: str, token: str) -> dict[str, int]:
    parts = urlsplit(base)
    sizes: dict[str, int] = {}
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    headers = {"Authorization": f"Bearer {token}", "Accept-Encoding": "gzip, deflate, br"}

    def get(path: str) -> bytes:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (path, response.status)
        sizes[path.split("?")[0]] = len(body)
        return body

    page = get("/")
    text = gzip.decompress(page).decode() if page[:2] == b"\x1f\x8b" else page.decode()
    for src in re.findall(r'(?:src|href)="(/static/[^"]+)"', text):
        get(src)
    for node in NODES:
        get(f"/api/nodes/{node}/history?seconds=3600")
    conn.close()
    return sizes


def seed_history(conn, node: str, seconds: float = 3600, step: float = 5.0) -> None:
    """An hour of this node's own heartbeats, as if its agent had run that long (noisy readings:
    random numbers compress about as badly as real ones, a repeating pattern would flatter gzip)."""
    sample = json.loads(conn.get(healthstore.SAMPLE_KEY.format(node)))
    now = time.time()
    key = healthstore.HISTORY_KEY.format(node)
    pipe = conn.pipeline(transaction=True)  # stream ids are times: the past goes in before the agent's next beat
    pipe.delete(key)
    for i in range(int(seconds / step), 0, -1):
        t = now - i * step
        old = dict(sample, time=round(t, 3), cpu_percent=round(random.uniform(0, 100), 1),
                   mem_percent=round(random.uniform(20, 60), 1), temp_c=round(random.uniform(40, 80), 1))
        pipe.xadd(key, {"j": json.dumps(old, separators=(",", ":"))}, id=f"{int(t * 1000)}-0")
    pipe.execute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()
    window = args.minutes * 60
    procs: list[subprocess.Popen[bytes]] = []
    with redis_server() as (target, _password, tmp):
        env = env_for(target, tmp)
        env["PIBLADE_JOB_MODULES"] = TEST_JOBS
        env["PYTHONPATH"] = str(ROOT)
        quiet = {"env": env, "cwd": ROOT, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL,
                 "start_new_session": True}
        try:
            for node in NODES:
                procs.append(subprocess.Popen([sys.executable, "-m", "piblade", "agent", "--node", node,
                                               "--interval", "5"], **quiet))  # type: ignore[call-overload]
            procs.append(subprocess.Popen([sys.executable, "-m", "piblade", "worker", "--processes", "1",
                                           "--node", NODES[0], "--data-dir", str(tmp / "data")],
                                          **quiet))  # type: ignore[call-overload]
            conn = connect(target)
            deadline = time.monotonic() + 60
            while not all(conn.exists(healthstore.SAMPLE_KEY.format(n)) for n in NODES):
                if time.monotonic() > deadline:
                    raise RuntimeError("the agents sent no heartbeat")
                time.sleep(0.2)
            for node in NODES:
                seed_history(conn, node)
            registry = load_registry([TEST_JOBS])
            tasks = int(window / 2) + 60
            run = dispatch.submit(conn, registry, "test-sleep", {"count": str(tasks), "seconds": "2"})
            port = local.free_port()
            procs.append(subprocess.Popen([sys.executable, "-m", "piblade", "dashboard", "--port", str(port)],
                                          **quiet))  # type: ignore[call-overload]
            base = f"http://127.0.0.1:{port}"
            token_file = tmp / "state" / "dashboard.token"
            deadline = time.monotonic() + 30
            while True:
                try:
                    probe = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    probe.request("GET", "/healthz")
                    if probe.getresponse().status == 200 and token_file.exists():
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the dashboard did not start")
                time.sleep(0.2)
            token = token_file.read_text().strip()
            while dispatch.run_status(conn, run.id).state != "running":
                time.sleep(0.2)

            results = {name: {"bytes": 0, "connections": 0} for name in ("old", "new", "new_plain")}
            until = time.monotonic() + window
            threads = [
                threading.Thread(target=count_stream, args=(base + "/events?full=1", token, "identity", until,
                                                            results["old"])),
                threading.Thread(target=count_stream, args=(base + "/events", token, "gzip", until, results["new"])),
                threading.Thread(target=count_stream, args=(base + "/events", token, "identity", until,
                                                            results["new_plain"])),
            ]
            print(f"measuring {args.minutes:g} min: 2 agents (5 s), run {run.id} in progress "
                  f"({tasks} tasks of 2 s on 1 worker)...", flush=True)
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            still = dispatch.run_status(conn, run.id).state
            load = first_load(base, token)
            conn.close()
        finally:
            stop(procs)
    minutes = window / 60
    old, new, plain = (results[k]["bytes"] / minutes for k in ("old", "new", "new_plain"))
    print(f"run still in progress at the end: {still == 'running'} ({still})")
    print(f"{'stream':34} {'bytes/min':>10} {'KB/min':>8} {'connections':>12}")
    for label, key, value in (("old: whole snapshot per change", "old", old),
                              ("new: deltas, gzip per event", "new", new),
                              ("new: deltas, no gzip", "new_plain", plain)):
        print(f"{label:34} {value:10.0f} {value / 1000:8.2f} {results[key]['connections']:12d}")
    print(f"ratio old/new (gzip): {old / new:.1f}x   old/new (no gzip): {old / plain:.1f}x")
    total = sum(load.values())
    print(f"first load (gzip): {total / 1000:.1f} KB = " + ", ".join(f"{k} {v / 1000:.1f}" for k, v in load.items()))


if __name__ == "__main__":
    main()
