"""`python -m piblade` runs the CLI (used for child processes: no PATH lookup needed)."""

from piblade.cli.entry import main

main()
