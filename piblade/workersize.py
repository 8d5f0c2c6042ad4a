"""How many worker processes a node runs when its inventory does not say: its cores, capped by its memory.

One process per core is right for a Pi 4 or 5, and wrong for a Pi Zero 2 W:
four cores, 512 MB, and a worker tree whose supervisor alone takes ≈ 110 MiB
once Numba and the kernels are loaded. So the default is

    processes = max(1, min(cores, (budget − WORKER_BASE_MIB) // WORKER_PROCESS_MIB))
    budget    = MEMORY_SHARE × (MemTotal − NODE_RESERVE_MIB)

* the worker tree at rest is ``WORKER_BASE_MIB + N × WORKER_PROCESS_MIB`` of
  PSS: the supervisor imports Numba and loads every job's kernels, then forks
  the N worker processes, which share its pages copy-on-write. So the base is
  paid once per node, and each worker process adds only the pages it made its
  own while running tasks;
* ``NODE_RESERVE_MIB`` is what the rest of the node needs first: the OS
  (systemd, journald, sshd, the network stack), piblade's health agent
  (≈ 32 MiB, bench/agent.py), and smbd or the share's cifs/sshfs mount;
* ``MEMORY_SHARE`` of what is left may go to the workers at rest; the other
  part is room for the data running tasks hold (a picture, a chunk of a file),
  one task per process, and for the page cache, so that a busy node does not
  meet the OOM killer.

The two measured figures come from ``bench/worker_memory.py`` ("worked": idle
after every process ran tasks of every kernel job; x86_64, Python 3.11,
numba 0.68), rounded up; see docs/benchmarks.md, "Worker memory on small
Pis". Re-measure them when piblade's imports, Numba or Python change. An
explicit ``piblade_worker_processes`` (``--processes N``) always wins. Pure:
the caller reads the node's cores and MemTotal (``os.cpu_count()`` and
/proc/meminfo, on the node itself when its worker starts; provisioning's facts
report the same two numbers).
"""

from __future__ import annotations

#: The worker tree's PSS at rest besides its processes' own (MiB): the supervisor with Numba and
#: every bundled job's kernels loaded. Measured 148–149 (the tree of one process minus one process).
WORKER_BASE_MIB = 150
#: PSS each further worker process adds once it ran tasks of every kernel job (MiB). Measured 13.1–13.7.
WORKER_PROCESS_MIB = 16
#: Memory kept for the OS, the health agent and smbd or the share's mount (MiB).
NODE_RESERVE_MIB = 160
#: Share of the rest that the workers may take at rest; the other half is for the data tasks hold.
MEMORY_SHARE = 0.5


def memory_budget_mib(mem_total_mib: int) -> int:
    """The MiB a node's workers may take at rest: ``MEMORY_SHARE`` of MemTotal after ``NODE_RESERVE_MIB``."""
    return max(0, int(MEMORY_SHARE * (mem_total_mib - NODE_RESERVE_MIB)))


def default_worker_processes(cores: int, mem_total_mib: int) -> int:
    """Worker processes for a node with ``cores`` CPUs and ``mem_total_mib`` of MemTotal: at least 1.

    An unknown MemTotal (0, say /proc/meminfo was unreadable) caps nothing:
    the node gets one process per core, as before there was a cap.
    """
    cores = max(1, cores)
    if mem_total_mib <= 0:
        return cores
    fits = (memory_budget_mib(mem_total_mib) - WORKER_BASE_MIB) // WORKER_PROCESS_MIB
    return max(1, min(cores, fits))


def parse_mem_total_mib(meminfo: str) -> int:
    """MemTotal from the text of /proc/meminfo, in MiB (0 when it has none)."""
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                return int(fields[1]) // 1024
    return 0
