"""docs/settings.md, rendered from the two settings tables: ``python -m piblade.settingsdoc > docs/settings.md``.

A module of its own so that neither table's module imports the other.
"""

from __future__ import annotations

from piblade.envvars import ENV
from piblade.inventory import SETTINGS


def render_markdown() -> str:
    """docs/settings.md: the inventory's settings and the environment's, from their tables."""
    def cell(text: object) -> str:
        return str(text).replace("|", "\\|")

    lines = [
        "# Settings",
        "",
        "Rendered from `piblade.inventory.SETTINGS` and `piblade.envvars.ENV` by",
        "`python -m piblade.settingsdoc > docs/settings.md`; a test keeps it current.",
        "",
        "## Inventory variables (`piblade_*`, host or group vars)",
        "",
        "| name | type | default | scope | what it does |",
        "|---|---|---|---|---|",
    ]
    for s in SETTINGS:
        default = "" if s.default is None else ", ".join(s.default) if isinstance(s.default, tuple) else s.default
        lines.append(f"| `{s.name}` | {s.type} | {cell(default)} | {s.scope} | {cell(s.help)} |")
    lines += [
        "",
        "## Environment variables (`PIBLADE_*`)",
        "",
        "| name | default | read by | what it does |",
        "|---|---|---|---|",
    ]
    for v in ENV:
        lines.append(f"| `{v.name}` | {cell(v.default)} | {cell(v.read_by)} | {cell(v.help)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
