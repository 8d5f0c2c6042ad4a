#!/usr/bin/env bash
# `make demo`: a local cluster (real redis-server + warm workers), then the main job, with progress.
set -euo pipefail
cd "$(dirname "$0")/.."
piblade=.venv/bin/piblade

$piblade local up --workers 2
echo
echo "submitting: a 1600x1000 Mandelbrot image rendered as 64 tiles (one task per tile), assembled into a PNG"
started=$(date +%s.%N)
$piblade submit mandelbrot --param width=1600 --param height=1000 --param tiles=64 --wait
ended=$(date +%s.%N)
python3 -c "import sys; print(f\"demo job took {float(sys.argv[2]) - float(sys.argv[1]):.1f} s from submit to PNG\")" "$started" "$ended"
echo
echo "the local cluster keeps running:"
echo "  .venv/bin/piblade jobs list          # other jobs to try"
echo "  .venv/bin/piblade local status       # workers and queues"
echo "  .venv/bin/piblade local down         # stop it (running jobs finish first)"
