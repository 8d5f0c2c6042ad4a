"""CLI start: whole-process time of `piblade submit --wait` and `piblade status` beside the floor and `rq enqueue`.

Starts a throwaway local cluster (`piblade local up` in a temporary state
directory: redis-server, PostgreSQL, the recorder, 2 workers, the health agent)
and runs, interleaved in a shuffled order each round so load on the machine
falls on all of them alike:

* floor: a bare ``python -c`` that imports redis-py, connects as the cluster's
  ACL user, does one enqueue (LPUSH) and one poll (LLEN) — the least any Python
  CLI that talks to Redis can cost;
* the typer floor: the same enqueue and poll inside a one-command Typer app
  with submit's kind of arguments (what the CLI framework itself costs: Typer
  0.29 checks every option's value with a pydantic TypeAdapter);
* ``rq enqueue``: RQ's own command line enqueueing one job (it does not wait);
* ``python -c pass``: the interpreter's own start, for reference;
* ``piblade submit noop -p count=1 --wait`` (which also writes the run's report),
  ``piblade submit noop -p count=1`` (no wait, no report) and ``piblade status``.

Each row gives the wall time (median and p90) and the CPU time (user + sys,
median), which moves far less than wall time when other processes share the
cores. The ratios are piblade's median over the floor's and over rq enqueue's,
for wall time and for CPU time.
Then each piblade command runs a few times under ``python -X importtime`` and
the import time is summed by package, to show where it goes, and its Redis
round trips are counted (redis-py's sends, in a child that patches them).
Usage: python bench/cli_start.py [--rounds 40]
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _servers import local_cluster

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TARGETS = {"piblade submit --wait": 0.15, "piblade status": 0.2}

#: One enqueue and one poll, the plain way; the password comes from the cluster's 0600 file, never argv.
FLOOR = (
    "import os, redis\n"
    "r = redis.Redis(port=int(os.environ['BENCH_REDIS_PORT']), username='piblade',\n"
    "                password=open(os.environ['BENCH_REDIS_PASSWORD_FILE']).read().strip())\n"
    "r.lpush('bench:floor', '{\"job\": \"noop\"}')\n"
    "r.llen('bench:floor')\n"
)
#: The floor inside a one-command Typer app with submit's kind of options: what Typer itself adds.
TYPER_FLOOR = (
    "import typer\n"
    "from pathlib import Path\n"
    "app = typer.Typer(add_completion=False)\n"
    "@app.command()\n"
    "def submit(job: str, param: list[str] = typer.Option([], '-p'), inventory: Path = typer.Option(None)) -> None:\n"
    + "".join("    " + line + "\n" for line in FLOOR.splitlines())
    + "app()\n"
)


def variants() -> dict[str, list[str]]:
    py, piblade = str(Path(sys.executable)), str(BIN / "piblade")
    return {
        "python -c pass": [py, "-c", "pass"],
        "floor: python -c (redis-py, 1 enqueue + 1 poll)": [py, "-c", FLOOR],
        "typer floor: the floor in a 1-command Typer app": [py, "-c", TYPER_FLOOR, "noop", "-p", "count=1"],
        "rq enqueue": [str(BIN / "rq"), "enqueue", "-q", "bench-rq", "-S", "json", "--quiet", "bench._plain.noop"],
        "piblade submit --wait": [piblade, "submit", "noop", "-p", "count=1", "--wait"],
        "piblade submit (no wait)": [piblade, "submit", "noop", "-p", "count=1"],
        "piblade status": [piblade, "status"],
    }


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + sys) seconds of one whole process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"{' '.join(argv[:3])} exited {done.returncode}:\n{done.stdout.decode()}{done.stderr.decode()}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _package(module: str) -> str | None:
    top = module.split(".")[0]
    return None if top in sys.stdlib_module_names or top.startswith("_") else top


def import_shares(argv: list[str], env: dict[str, str], runs: int) -> dict[str, float]:
    """Median seconds of import per package of ``piblade ARGV``, self times so that they add up.

    A standard-library module counts for the package that imported it (asyncio
    under redis-py counts as redis), or as "standard library" when nothing did.
    """
    shares: dict[str, list[float]] = {}
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "piblade", *argv], env=env, cwd=ROOT,
                              capture_output=True, text=True)
        totals: dict[str, float] = {}
        stack: list[str] = []  # the import chain of the line being read (parents come after children)
        for line in reversed(done.stderr.splitlines()):
            fields = line.split("|")
            if not line.startswith("import time:") or not fields[0].split(":")[1].strip().isdigit():
                continue
            name = fields[2].rstrip()
            depth = (len(name) - len(name.lstrip())) // 2
            stack[depth:] = [name.strip()]
            owner = next((p for p in map(_package, reversed(stack)) if p), "standard library")
            totals[owner] = totals.get(owner, 0.0) + int(fields[0].split(":")[1]) / 1e6
        for group, seconds in totals.items():
            shares.setdefault(group, []).append(seconds)
    return {group: statistics.median(v + [0.0] * (runs - len(v))) for group, v in shares.items()}


#: The CLI in a child whose redis-py counts what it sends: one send is one round trip (a pipeline is one).
COUNT_ROUND_TRIPS = """
import atexit, sys
import redis.connection as rc
sent = [0]
send_packed = rc.AbstractConnection.send_packed_command
def counting_send(self, command, check_health=True):
    sent[0] += 1
    return send_packed(self, command, check_health)
rc.AbstractConnection.send_packed_command = counting_send
atexit.register(lambda: print(f"ROUND TRIPS {sent[0]}", file=sys.stderr))
sys.argv = ["piblade", *sys.argv[1:]]
from piblade.cli.entry import main
main()
"""


def round_trips(argv: list[str], env: dict[str, str]) -> int:
    """Redis round trips of one ``piblade ARGV``."""
    done = subprocess.run([sys.executable, "-c", COUNT_ROUND_TRIPS, *argv], env=env, cwd=ROOT, capture_output=True,
                          text=True)
    return int(next(x for x in done.stderr.splitlines() if x.startswith("ROUND TRIPS")).split()[2])


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--import-runs", type=int, default=5, help="runs under -X importtime per command")
    args = parser.parse_args()
    with local_cluster("piblade-bench-cli-") as (_state, env, target):
        # Byte-code caches as an installed piblade has them (the warm-up run writes the checkout's).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        assert target.password_file is not None
        password = target.password_file.read_text().strip()
        env.update(BENCH_REDIS_PORT=str(target.port), BENCH_REDIS_PASSWORD_FILE=str(target.password_file),
                   RQ_REDIS_URL=f"redis://piblade:{password}@127.0.0.1:{target.port}/0")
        runs = variants()
        walls: dict[str, list[float]] = {name: [] for name in runs}
        cpus: dict[str, list[float]] = {name: [] for name in runs}
        for name, argv in runs.items():  # one warm-up each: byte-code caches, page cache
            timed(argv, env)
        for _ in range(args.rounds):
            order = list(runs.items())
            random.shuffle(order)
            for name, argv in order:
                wall, cpu = timed(argv, env)
                walls[name].append(wall)
                cpus[name].append(cpu)
        floor_name = "floor: python -c (redis-py, 1 enqueue + 1 poll)"
        floor, rq = statistics.median(walls[floor_name]), statistics.median(walls["rq enqueue"])
        floor_cpu, rq_cpu = statistics.median(cpus[floor_name]), statistics.median(cpus["rq enqueue"])
        print(f"{args.rounds} rounds, interleaved; seconds per whole process (wall, and CPU = user + sys)\n")
        print(f"{'':48} {'wall med':>8} {'wall p90':>8} {'cpu med':>7} {'wall/floor':>10} {'wall/rq':>7} "
              f"{'cpu/floor':>9} {'cpu/rq':>6}  target (wall)")
        for name in runs:
            med, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
            target_s = TARGETS.get(name)
            verdict = "" if target_s is None else f"<= {target_s:.2f} s: {'met' if med <= target_s else 'NOT met'}"
            print(f"{name:48} {med:8.3f} {p90(walls[name]):8.3f} {cpu:7.3f} {med / floor:9.2f}x {med / rq:6.2f}x "
                  f"{cpu / floor_cpu:8.2f}x {cpu / rq_cpu:5.2f}x  {verdict}")
        print("\nwhere the import time goes (-X importtime self times by package, median; importtime's own"
              " overhead inflates them)")
        for argv in (["submit", "noop", "-p", "count=1", "--wait"], ["status"]):
            shares = import_shares(argv, env, args.import_runs)
            top = sorted(shares.items(), key=lambda kv: -kv[1])
            trips = round_trips(argv, env)
            print(f"  piblade {' '.join(argv)}: {sum(shares.values()):.3f} s in all; "
                  + ", ".join(f"{group} {seconds * 1000:.0f} ms" for group, seconds in top[:9])
                  + f"; {trips} Redis round trips")


if __name__ == "__main__":
    main()
