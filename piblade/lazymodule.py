"""A module imported on its first use: for job modules the controller reads but never runs, and for a
library only some paths of a module need (PyYAML in ``piblade.inventory``: the local cluster has no inventory).

`piblade submit` imports every job module to learn each job's parameters and how
it splits; only workers run the tasks. numpy alone is ~60 ms of a command that
should start in a fraction of a second (several times that on a Pi), so a job
module whose numpy work happens inside its tasks writes::

    if TYPE_CHECKING:
        import numpy as np
    else:
        np = lazy_module("numpy")

and reads exactly as with a plain import: ``np.zeros(...)`` imports numpy the
first time it runs, in the worker. Not for names a ``@njit`` function reads as
globals (Numba must see the real module): Numba kernels import numpy normally
(``jobs/kernels/``), and job modules import those kernels inside their tasks.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


class _LazyModule(types.ModuleType):
    """Stands in for a module until an attribute is read, then takes on the module's names."""

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not copied yet; the import system's per-module lock makes a
        # first use from two threads at once import the module once.
        module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)
        return getattr(module, name)


def lazy_module(name: str) -> types.ModuleType:
    """``name``'s module if it is already imported, else a stand-in that imports it on first use."""
    return sys.modules.get(name) or _LazyModule(name)
