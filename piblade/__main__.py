"""`python -m piblade` runs the CLI (used for child processes: no PATH lookup needed)."""

import sys

if sys.argv[1:2] == ["agent"]:
    # The health agent's RSS budget (35 MiB) has no room for Typer, pydantic and rich.
    from piblade.cli.agent_cmd import main as agent_main

    sys.exit(agent_main(sys.argv[2:]))
if sys.argv[1:2] == ["worker"]:
    # Each worker process is a fork of the supervisor: the full CLI would stay in all of them.
    from piblade.cli.worker_cmd import main as worker_main

    sys.exit(worker_main(sys.argv[2:]))

from piblade.cli.app import main

main()
