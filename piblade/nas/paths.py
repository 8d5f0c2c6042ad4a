"""Paths on the share, and glob patterns over them. Pure: no I/O.

A *share path* is a POSIX-style path relative to the share's root: ``photos/a.jpg``,
``''`` for the root itself. It is what users type, what jobs receive as their
``path`` parameter, and what the worker resolves under its mount of the share.
Backslashes are accepted and a leading ``/`` means the share's root (as in
Samba's own ``smbclient``); ``..`` may move around inside the share but never
above its root, so every path the seam builds stays inside the share.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
import secrets

from piblade.nas.errors import PathOutsideShare

#: ``:`` selects an NTFS alternate data stream in an SMB path; control characters are never valid.
_BAD_CHARS = re.compile(r"[:\x00-\x1f]")
_MAGIC = re.compile(r"[*?\[]")


def share_path(path: str) -> str:
    """Normalise ``path`` to ``a/b/c`` (``''`` is the share root); refuse paths outside the share."""
    raw = path.replace("\\", "/")
    if raw.startswith("//"):
        raise PathOutsideShare(
            f"{path!r} looks like a UNC path (//server/share/...)",
            hint="give paths relative to the share's root, e.g. photos/2024/a.jpg",
        )
    parts: list[str] = []
    for part in raw.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise PathOutsideShare(
                    f"{path!r} is outside the share",
                    hint="paths are relative to the share's root and cannot climb above it with '..'",
                )
            parts.pop()
            continue
        if _BAD_CHARS.search(part):
            raise PathOutsideShare(
                f"{path!r} has a character SMB does not allow in a name (':' or a control character)",
                hint="rename the file, or leave it out",
            )
        parts.append(part)
    return "/".join(parts)


def join(*parts: str) -> str:
    """Join share paths, skipping empty ones (the root)."""
    return "/".join(p for p in parts if p)


def parent(path: str) -> str:
    return posixpath.dirname(path)


def name(path: str) -> str:
    return posixpath.basename(path)


def to_unc(server: str, share: str, path: str) -> str:
    """``\\\\server\\share\\a\\b`` for the share path ``a/b`` (already normalised)."""
    base = rf"\\{server}\{share}"
    return base + ("\\" + path.replace("/", "\\") if path else "")


def has_magic(component: str) -> bool:
    return _MAGIC.search(component) is not None


def pattern_parts(pattern: str) -> list[str]:
    """Split a glob pattern into components; refuse patterns that would look outside the share.

    ``**`` matches any number of directories (zero included); a trailing ``**``
    means every file below. ``..`` is refused outright: a pattern names files
    inside the share.
    """
    raw = pattern.replace("\\", "/")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if not parts:
        raise PathOutsideShare(f"pattern {pattern!r} matches nothing", hint="for example 'photos/*.jpg'")
    if ".." in parts:
        raise PathOutsideShare(
            f"pattern {pattern!r} climbs out with '..'",
            hint="patterns are relative to the share's root, e.g. 'photos/**/*.png'",
        )
    for part in parts:
        if _BAD_CHARS.search(part):
            raise PathOutsideShare(f"pattern {pattern!r} has a character SMB does not allow in a name")
    if parts[-1] == "**":
        parts.append("*")
    return parts


def component_matches(entry: str, component: str) -> bool:
    """Shell rules: case-sensitive, and names starting with '.' match only a pattern that does too."""
    if entry.startswith(".") and not component.startswith("."):
        return False
    return fnmatch.fnmatchcase(entry, component)


def temp_name(path: str) -> str:
    """A hidden sibling of ``path`` that only this attempt writes, renamed over ``path`` when complete."""
    return join(parent(path), f".{name(path)}.piblade-{secrets.token_hex(4)}.part")


def is_temp_name(entry_name: str) -> bool:
    """True for the hidden temporary files of transfers (left behind only by a killed transfer)."""
    return entry_name.startswith(".") and entry_name.endswith(".part") and ".piblade-" in entry_name
