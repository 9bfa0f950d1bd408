#!/usr/bin/env bash
# Runs every check of pycri: set-up if needed, ruff, mypy --strict, then the whole pytest
# suite (unit tests and integration tests on a real containerd the tests start themselves).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
scripts/setup.sh
echo "== ruff" && .venv/bin/ruff check . && .venv/bin/ruff format --check --quiet .
echo "== mypy" && .venv/bin/mypy
echo "== pytest"
set +e
.venv/bin/pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$rc"
