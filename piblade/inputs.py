"""The files a run will read from the share, checked before anything is enqueued.

A job parameter declared ``Param(..., path=True)`` names a file on the share
(the workers' data root). A missing file used to be found only by the worker,
after the run was queued: a failed task and a traceback for a typo. Where the
controller can see the share (the local cluster's data directory, or the NAS
over SMB), the CLI checks every such path first and refuses the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from piblade.errors import BadParameter
from piblade.registry import JobSpec, shown

if TYPE_CHECKING:  # a run without input files never opens the share
    from piblade.nas.share import Share


def input_paths(spec: JobSpec, params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(parameter, share path) for every path parameter of the validated ``params``. Pure."""
    return [(p.name, str(params[p.name])) for p in spec.params if p.path and params.get(p.name)]


def check_inputs(share: Share, spec: JobSpec, params: Mapping[str, Any]) -> None:
    """Refuse a run whose input files are not on ``share`` (one stat per path parameter)."""
    for name, path in input_paths(spec, params):
        entry = share.stat(path)
        if entry is None:
            raise BadParameter(
                f"{spec.name}: {name}={shown(path)} does not exist on the share ({share.description})",
                hint="`piblade nas ls DIR` shows what is there; `piblade nas put FILE DIR` uploads a file",
            )
        if entry.is_dir:
            raise BadParameter(
                f"{spec.name}: {name}={shown(path)} is a directory on the share, not a file",
                hint="to run once per file in it, use --over 'DIR/*'",
            )
