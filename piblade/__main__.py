"""`python -m piblade` runs the CLI (used for child processes: no PATH lookup needed)."""

import sys

if sys.argv[1:2] == ["agent"]:
    # The health agent's RSS budget (35 MiB) has no room for Typer, pydantic and rich.
    from piblade.cli.agent_cmd import main as agent_main

    sys.exit(agent_main(sys.argv[2:]))

from piblade.cli.app import main

main()
