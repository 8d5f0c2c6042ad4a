"""Health agent footprint: `python -m piblade agent` vs a bare psutil + redis loop, same Redis, same interval.

Both run side by side at a 1 s interval against a throwaway redis-server; after
a short warm-up, each process's RSS is sampled every second and its CPU time
(all its threads, from /proc/PID/task/*/schedstat, plus children such as
vcgencmd on a Pi) is read at the start and end of the window. Also measured, for the record: `piblade agent` through the full
Typer CLI, and the Redis memory one node's 24-hour history costs.

Targets (issue 3): RSS < 35 MiB and < 0.5 % of one core at a 1 s interval.
Usage: python bench/agent.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
from _servers import env_for, redis_server, stop

from piblade import healthstore
from piblade.redisconn import connect

# What a user would write without piblade: the same psutil metrics, one SET per second.
PLAIN = r"""
import json, os, time, psutil, redis
r = redis.Redis(host="127.0.0.1", port=int(os.environ["PORT"]), username="piblade",
                password=open(os.environ["PIBLADE_REDIS_PASSWORD_FILE"]).read().strip())
psutil.cpu_percent(None); psutil.cpu_percent(None, percpu=True)
while True:
    temps = psutil.sensors_temperatures().get("cpu_thermal")
    freq = psutil.cpu_freq()
    sample = {
        "time": time.time(), "cpu": psutil.cpu_percent(None), "per_core": psutil.cpu_percent(None, percpu=True),
        "load": os.getloadavg(), "freq": freq.current if freq else None,
        "mem": psutil.virtual_memory()._asdict(), "swap": psutil.swap_memory()._asdict(),
        "disk": psutil.disk_usage("/")._asdict(), "net": psutil.net_io_counters()._asdict(),
        "uptime": time.time() - psutil.boot_time(), "procs": len(psutil.pids()),
        "temp": temps[0].current if temps else None,
    }
    r.set("plain:health:node", json.dumps(sample), ex=3)
    time.sleep(1)
"""


def cpu_seconds(proc: psutil.Process) -> float:
    """CPU time of every thread (nanoseconds from schedstat: cpu_times() ticks are 10 ms) plus waited-for children."""
    t = proc.cpu_times()
    children = t.children_user + t.children_system
    try:
        total = 0
        for task in Path(f"/proc/{proc.pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
        return total / 1e9 + children
    except (OSError, ValueError, IndexError):
        return t.user + t.system + children


def measure(procs: dict[str, subprocess.Popen[bytes]], seconds: float) -> dict[str, dict[str, float]]:
    handles = {name: psutil.Process(p.pid) for name, p in procs.items()}
    start_cpu = {name: cpu_seconds(h) for name, h in handles.items()}
    rss: dict[str, list[int]] = {name: [] for name in handles}
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        for name, h in handles.items():
            rss[name].append(h.memory_info().rss)
        time.sleep(1)
    wall = time.monotonic() - started
    out = {}
    for name, h in handles.items():
        if procs[name].poll() is not None:
            raise RuntimeError(f"{name} exited during the measurement")
        out[name] = {
            "rss_max": max(rss[name]) / 2**20,
            "rss_end": rss[name][-1] / 2**20,
            "uss": h.memory_full_info().uss / 2**20,
            "cpu": 100 * (cpu_seconds(h) - start_cpu[name]) / wall,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    args = parser.parse_args()
    python = sys.executable
    piblade_cli = str(Path(python).parent / "piblade")
    with redis_server() as (target, _password, tmp):
        env = env_for(target, tmp)
        env["PORT"] = str(target.port)
        env["PIBLADE_VCGENCMD"] = ""  # same sensors for both: none of the Pi's on this machine
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env, "start_new_session": True}
        procs = {
            "piblade": subprocess.Popen([python, "-m", "piblade", "agent", "--node", "bench", "--interval", "1"],
                                        **quiet),  # type: ignore[call-overload]
            "plain": subprocess.Popen([python, "-c", PLAIN], **quiet),  # type: ignore[call-overload]
        }
        if os.path.exists(piblade_cli):
            procs["cli"] = subprocess.Popen([piblade_cli, "agent", "--node", "bench-cli", "--interval", "1"], **quiet)  # type: ignore[call-overload]
        try:
            time.sleep(args.warmup)
            results = measure(procs, args.seconds)
            conn = connect(target)
            key = healthstore.HISTORY_KEY.format("bench")
            entries = conn.xlen(key)
            stream_bytes = conn.memory_usage(key, samples=0) or 0
            sample_bytes = len(conn.get(healthstore.SAMPLE_KEY.format("bench")) or b"")
            conn.close()
        finally:
            stop(list(procs.values()))

    p, b = results["piblade"], results["plain"]
    print(f"interval 1 s, {args.seconds:.0f} s window after {args.warmup:.0f} s warm-up, {os.cpu_count()} cores")
    print(f"{'':34} {'RSS max':>9} {'USS':>9} {'CPU % of 1 core':>16}")
    print(f"{'python -m piblade agent':34} {p['rss_max']:8.1f}M {p['uss']:8.1f}M {p['cpu']:15.3f}%")
    print(f"{'plain psutil + redis loop':34} {b['rss_max']:8.1f}M {b['uss']:8.1f}M {b['cpu']:15.3f}%")
    print(f"{'ratio piblade / plain':34} {p['rss_max'] / b['rss_max']:8.2f}x {p['uss'] / b['uss']:8.2f}x "
          f"{p['cpu'] / b['cpu'] if b['cpu'] else float('nan'):15.2f}x")
    if "cli" in results:
        c = results["cli"]
        print(f"{'piblade agent (full Typer CLI)':34} {c['rss_max']:8.1f}M {c['uss']:8.1f}M {c['cpu']:15.3f}%")
    print(f"targets: RSS < 35 MiB: {'met' if p['rss_max'] < 35 else 'NOT met'}; "
          f"CPU < 0.5 %: {'met' if p['cpu'] < 0.5 else 'NOT met'}")
    if entries:
        per_entry = stream_bytes / entries
        print(f"sample JSON: {sample_bytes} B; history: {per_entry:.0f} B/entry in Redis -> "
              f"{per_entry * healthstore.history_length(5) / 2**20:.1f} MiB per node for 24 h at the default 5 s")


if __name__ == "__main__":
    main()
