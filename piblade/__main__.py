"""`python -m piblade` runs the CLI (used for child processes: no PATH lookup needed)."""

from piblade.cli.app import main

main()
