"""Writing job outputs safely: a temporary sibling name, then an atomic rename.

RQ delivers at least once, so the same task may run twice, even at the same
time on two nodes. Each attempt writes to its own temporary name and renames it
into place, so a reader never sees half a file and duplicates do no harm.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def temporary_name(path: Path) -> Path:
    """A hidden sibling of ``path``, unique to this attempt."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def replace_into(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` with a file opened under a temporary name, then rename it to ``path``."""
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
