"""Resolve a glob pattern against a share: ``photos/*.jpg``, ``photos/**/*.png``.

Runs on the controller (over SMB for a real NAS), listing only the directories
the pattern can reach: literal components are walked into directly, ``*``/``?``/
``[…]`` components list one directory, ``**`` lists the subtree below it.
Only files match. Names starting with ``.`` (and so transfers' temporary
files) match only a pattern component that starts with ``.`` too.
"""

from __future__ import annotations

from piblade.nas.errors import RemoteNotFound
from piblade.nas.paths import component_matches, has_magic, join, pattern_parts
from piblade.nas.share import RemoteEntry, Share


def expand(share: Share, pattern: str) -> list[RemoteEntry]:
    """Every file on ``share`` that matches ``pattern``, sorted by path."""
    parts = pattern_parts(pattern)
    listings: dict[str, list[RemoteEntry]] = {}
    found: dict[str, RemoteEntry] = {}

    def listing(directory: str) -> list[RemoteEntry]:
        if directory not in listings:
            try:
                listings[directory] = share.scandir(directory)
            except RemoteNotFound:
                listings[directory] = []
        return listings[directory]

    def walk(directory: str, i: int) -> None:
        part, last = parts[i], i == len(parts) - 1
        if part == "**":
            walk(directory, i + 1)  # zero directories
            for entry in listing(directory):
                if entry.is_dir and not entry.name.startswith("."):
                    walk(entry.path, i)  # one more
            return
        if not has_magic(part) and not last:
            walk(join(directory, part), i + 1)  # a missing directory lists as empty
            return
        for entry in listing(directory):
            if not component_matches(entry.name, part):
                continue
            if last and not entry.is_dir:
                found[entry.path] = entry
            elif not last and entry.is_dir:
                walk(entry.path, i + 1)

    walk("", 0)
    return [found[p] for p in sorted(found)]
