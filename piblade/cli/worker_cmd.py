"""`piblade worker`: run warm worker processes on this node."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import typer

from piblade.errors import PibladeError


def register(app: typer.Typer) -> None:
    @app.command()
    def worker(
        queues: str = typer.Option("default", "--queues", "-q", help="Comma-separated queues, in priority order."),
        processes: int = typer.Option(0, "--processes", "-p", help="Worker processes (0: one per core)."),
        threads: int = typer.Option(0, "--threads", help="Numba threads per process (0: cores / processes)."),
        data_dir: Path = typer.Option(
            None, "--data-dir", envvar="PIBLADE_DATA_DIR", help="Shared data root (the NAS mount on a Pi)."
        ),
        node: str = typer.Option(None, "--node", envvar="PIBLADE_NODE", help="Node name reported with results."),
        burst: bool = typer.Option(False, "--burst", help="Exit when the queues are empty."),
        warm: str = typer.Option(
            None, "--warm", help="Comma-separated jobs whose kernels to compile before serving (default: every job)."
        ),
    ) -> None:
        """Run piblade workers: warm every Numba kernel once, then serve registered jobs only."""
        from piblade.redisconn import target_from_env
        from piblade.worker import WorkerConfig, run_workers

        target = target_from_env()
        if target is None:
            raise PibladeError(
                "no Redis to work for",
                hint="set PIBLADE_REDIS_URL and PIBLADE_REDIS_PASSWORD_FILE (the local cluster and provisioned nodes do)",
            )
        if processes < 0 or threads < 0:
            raise PibladeError("--processes and --threads must be 0 or more")
        names = tuple(q.strip() for q in queues.split(",") if q.strip())
        if not names:
            raise PibladeError("--queues names no queue")
        config = WorkerConfig(
            queues=names,
            processes=processes or (os.cpu_count() or 1),
            data_root=(data_dir or Path.cwd() / "piblade-data").resolve(),
            node=node or socket.gethostname(),
            threads=threads,
            burst=burst,
            warm=tuple(w.strip() for w in warm.split(",") if w.strip()) if warm else None,
        )
        raise typer.Exit(run_workers(config, target))
