#!/usr/bin/env bash
# `make demo`: a local cluster (real redis-server, PostgreSQL + warm workers), then the main job, with
# progress, and the run as its history in PostgreSQL records it.
set -euo pipefail
cd "$(dirname "$0")/.."
piblade=.venv/bin/piblade

$piblade local up --workers 2
echo
echo "submitting: a 3200x2000 Mandelbrot image (1,000 iterations) rendered as 128 tiles (one task per tile), assembled into a PNG"
out=$(mktemp)
shown=$(mktemp)
trap 'rm -f "$out" "$shown"' EXIT
started=$(date +%s.%N)
$piblade submit mandelbrot --param width=3200 --param height=2000 --param max_iter=1000 --param tiles=128 --wait \
  | tee "$out"
ended=$(date +%s.%N)
python3 -c "import sys; print(f\"demo job took {float(sys.argv[2]) - float(sys.argv[1]):.1f} s from submit to PNG and report\")" "$started" "$ended"
echo
echo "recorded in the local cluster's PostgreSQL, where runs stay after Redis forgets them:"
$piblade runs list --limit 3
run=$($piblade runs list --limit 1 --json | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["id"])')
$piblade runs show "$run" >"$shown"
head -n 9 "$shown"
echo "  ... one line per task: .venv/bin/piblade runs show $run"
echo
echo "the local cluster keeps running:"
echo "  .venv/bin/piblade jobs list          # other jobs to try"
echo "  .venv/bin/piblade local status       # workers and queues"
echo "  .venv/bin/piblade local down         # stop it (running jobs finish first)"
report=$(sed -n 's/^report: //p' "$out" | tail -1)
if [ -n "$report" ]; then
  echo
  echo "the run's report (open it in a browser; it needs no network):"
  echo "  $report"
fi
