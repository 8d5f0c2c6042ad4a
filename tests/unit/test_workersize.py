"""The default number of worker processes: a node's cores, capped by its memory (piblade.workersize)."""

from __future__ import annotations

import pytest

from piblade.cli.worker_cmd import build_parser
from piblade.workersize import (
    NODE_RESERVE_MIB,
    WORKER_BASE_MIB,
    WORKER_PROCESS_MIB,
    default_worker_processes,
    memory_budget_mib,
    parse_mem_total_mib,
)

# MemTotal as the kernel reports it: the firmware keeps the GPU's share out of it.
ZERO_2_W = 427  # 512 MB
PI_3 = 906  # 1 GB
PI_4 = 3796  # 4 GB
PI_5 = 8052  # 8 GB


@pytest.mark.parametrize(
    ("cores", "mem_total_mib", "expected"),
    [
        (4, ZERO_2_W, 1),  # four cores, but room for one worker beside the OS
        (4, PI_3, 4),
        (4, PI_4, 4),
        (4, PI_5, 4),
        (2, PI_5, 2),  # cores cap a large node
        (2, ZERO_2_W, 1),
    ],
)
def test_default_per_node(cores: int, mem_total_mib: int, expected: int) -> None:
    assert default_worker_processes(cores, mem_total_mib) == expected


def test_what_fits_is_the_budget_after_the_supervisor_divided_by_the_process_cost() -> None:
    budget = memory_budget_mib(PI_3)
    assert budget < PI_3 - NODE_RESERVE_MIB
    fits = (budget - WORKER_BASE_MIB) // WORKER_PROCESS_MIB
    assert default_worker_processes(64, PI_3) == fits
    assert default_worker_processes(fits - 1, PI_3) == fits - 1


def test_never_fewer_than_one_and_never_more_than_the_cores() -> None:
    for mem in (0, 1, 64, NODE_RESERVE_MIB, 300, 512, 1024, 4096, 16384, 10**6):
        for cores in (1, 2, 3, 4, 8):
            assert 1 <= default_worker_processes(cores, mem) <= cores
    assert default_worker_processes(0, 4096) == 1  # os.cpu_count() may say None (0 here)


def test_more_memory_never_means_fewer_processes() -> None:
    counts = [default_worker_processes(16, mem) for mem in range(200, 8200, 50)]
    assert counts == sorted(counts) and counts[0] == 1 and counts[-1] == 16


def test_an_unknown_memtotal_leaves_one_per_core() -> None:
    assert default_worker_processes(4, 0) == 4


def test_memtotal_is_read_from_proc_meminfo() -> None:
    text = "MemTotal:         437412 kB\nMemFree:          201000 kB\nMemAvailable:     300000 kB\n"
    assert parse_mem_total_mib(text) == 427
    assert parse_mem_total_mib("MemFree: 1 kB\n") == 0
    assert parse_mem_total_mib("") == 0
    with open("/proc/meminfo") as handle:
        assert parse_mem_total_mib(handle.read()) > 0


def test_worker_options_parse_as_documented() -> None:
    args = build_parser().parse_args(["-p", "3", "--threads", "2", "-q", "high,default", "--warm", "mandelbrot"])
    assert (args.processes, args.threads, args.queues, args.warm) == (3, 2, "high,default", "mandelbrot")
    assert build_parser().parse_args([]).processes == 0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--processes", "-1"])
