"""`piblade report RUN`: one self-contained HTML page for a run, or a notebook of it (--notebook)."""

from __future__ import annotations

from pathlib import Path

import typer

from piblade.cli.common import InventoryOption, JsonOption
from piblade.cli.output import console, print_json


def register(app: typer.Typer) -> None:
    @app.command()
    def report(
        run_id: str = typer.Argument(..., metavar="RUN", help="Run id (see `piblade runs list`)."),
        output: Path = typer.Option(None, "--output", "-o", dir_okay=False,
                                    help="Write here instead of runs/<id>/report.html on the share."),
        notebook: bool = typer.Option(False, "--notebook", help="Write a Jupyter notebook that loads the run "
                                      "from the results database and draws the same charts "
                                      "(default file: <id>.ipynb here)."),
        as_json: bool = JsonOption,
        inventory: Path = InventoryOption,
    ) -> None:
        """Make a run's report: timeline, durations, node health, failures and result, in one offline page."""
        from piblade.context import resolve_cluster

        cluster = resolve_cluster(inventory)
        if notebook:
            from piblade.report import make
            from piblade.report import notebook as nb

            # The notebook reads health and result from the database: save them now, while Redis has them.
            found = make.load(cluster, run_id)
            path = output or Path(f"{run_id}.ipynb")
            from piblade.outputs import replace_into

            text = nb.dumps(nb.notebook(run_id, found.run.job, str(inventory) if inventory else None)).encode()
            replace_into(path, lambda handle: handle.write(text))
            where = str(path)
        else:
            from piblade.report.make import write_report

            where = write_report(cluster, run_id, output=output)
        if as_json:
            print_json({"run": run_id, "report": where, "notebook": notebook})
        else:
            label = "notebook" if notebook else "report"
            console.print(f"{label}: {where}", markup=False, highlight=False, soft_wrap=True)
