"""Size of a run's report page: 128 and 2,048 tasks, piblade's plotly.js basic bundle vs the full one.

Starts a throwaway local cluster (`piblade local up` in a temporary state
directory: real redis-server, PostgreSQL, recorder, workers and health agent),
runs the demo's Mandelbrot image as 128 tiles and as 2,048 tiles with
`submit --wait` (which writes each run's report), and prints each page's size
beside the same page with the full plotly.js bundle that PyPI's `plotly`
carries (the plain alternative). The budget for 128 tasks is 1.5 MB.
Usage: python bench/report_size.py [--tiles 128,2048]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _servers import local_cluster

ROOT = Path(__file__).resolve().parents[1]
BUDGET_128 = 1_500_000
DEMO = {"width": "3200", "height": "2000", "max_iter": "1000"}


def piblade(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "piblade", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=1800)


def full_bundle_size(env: dict[str, str], run_id: str) -> int:
    """The same report rendered with the full plotly.js (PyPI plotly's), in a child with the cluster's env."""
    code = (
        "import sys, plotly.offline\n"
        "from piblade.context import resolve_cluster\n"
        "from piblade.report.make import load\n"
        "from piblade.report.render import render_html\n"
        "report = load(resolve_cluster(None), sys.argv[1])\n"
        "print(len(render_html(report, plotly.offline.get_plotlyjs()).encode()))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, run_id], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600, check=True)
    return int(done.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiles", default="128,2048")
    args = parser.parse_args()
    with local_cluster("piblade-bench-report-") as (_state, env, _target):
        print(f"{'tasks':>6} {'report':>10} {'full plotly.js':>15} {'ratio':>6} {'run s':>6}  budget")
        for tiles in (int(t) for t in args.tiles.split(",")):
            params = [a for k, v in {**DEMO, "tiles": str(tiles)}.items() for a in ("-p", f"{k}={v}")]
            done = piblade(env, "submit", "mandelbrot", *params, "--wait", "--json")
            if done.returncode:
                raise SystemExit(f"submit failed:\n{done.stdout}{done.stderr}")
            result = json.loads(done.stdout)
            page = Path(result["report"])
            size = page.stat().st_size
            full = full_bundle_size(env, result["run"])
            verdict = ("ok" if size <= BUDGET_128 else "OVER") if tiles <= 128 else "-"
            print(f"{tiles:>6} {size / 1e6:>8.2f}MB {full / 1e6:>13.2f}MB {full / size:>5.1f}x "
                  f"{result['seconds']:>6.1f}  {verdict}")


if __name__ == "__main__":
    main()
