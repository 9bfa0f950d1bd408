#!/usr/bin/env bash
# Runs the pycri daemon with its own managed containerd (set-up first if needed).
# Extra arguments go to `pycri serve`, e.g. --socket, --root, --state, --log-format json.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/scripts/setup.sh"
exec "$repo/.venv/bin/pycri" serve "$@"
