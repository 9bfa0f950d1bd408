#!/usr/bin/env bash
# Runs the whole benchmark comparison (pycri vs containerd's CRI plugin) and writes the report
# to bench/results/ and docs/benchmarks.md. Set-up first if needed; arguments go to bench.run
# (--quick, --repetitions N, --no-profile, --pycri-commit REV, ...).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/scripts/setup.sh"
cd "$repo"
exec "$repo/.venv/bin/python" -m bench.run "$@"
