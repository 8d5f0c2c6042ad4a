#!/usr/bin/env bash
# Refresh the lock files (`make lock`): the one place where dependency versions are decided.
#   requirements.lock       what running piblade needs (make demo, and every node's wheelhouse)
#   requirements-test.lock  that plus the test and tunnel extras (make test)
# Universal locks with hashes: one file covers x86_64 and aarch64 and every Python piblade supports,
# and the wheelhouse picks each node's lines by their markers. setuptools and wheel are locked too,
# because piblade's own wheel is built without build isolation (nothing unpinned is downloaded).
set -euo pipefail
cd "$(dirname "$0")/.."
uv=${UV:-.venv/bin/uv}
build_requirements=$'setuptools>=69\nwheel>=0.43'
common=(--quiet --universal --generate-hashes --python-version 3.11 --no-header)
"$uv" pip compile "${common[@]}" pyproject.toml - -o requirements.lock <<<"$build_requirements"
"$uv" pip compile "${common[@]}" pyproject.toml - --extra test --extra tunnel --extra notebook -o requirements-test.lock \
  <<<"$build_requirements"
echo "wrote requirements.lock ($(grep -c '^[a-zA-Z]' requirements.lock) packages)" \
     "and requirements-test.lock ($(grep -c '^[a-zA-Z]' requirements-test.lock) packages)"
