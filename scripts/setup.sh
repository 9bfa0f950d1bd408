#!/usr/bin/env bash
# Idempotent set-up for pycri on Debian (as root): system packages, the venv, and the
# containerd API stubs generated from Debian's packaged .proto files. Each step is skipped
# when its result is already in place, so running it again costs a second or two.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

# python3 and python3-venv are not on a minimal Debian 12 (runc only recommends python3, and
# recommends are not installed); the rest is what pycri runs containers and tests with (crun:
# the second runtime handler; criu: CheckpointContainer).
APT_PACKAGES=(python3 python3-venv containerd runc crun criu busybox-static
  containernetworking-plugins docker-registry iproute2 iptables)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian package starts a system containerd; pycri runs its own, so leave the system one
# alone but never depend on it.

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.pycri-deps
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing Python dependencies" >&2
  .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi

mkdir -p build/debs
chmod 755 build build/debs  # apt's sandbox user must be able to write the download dir
.venv/bin/python scripts/gen_containerd_api.py build
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$repo/build/gen" > "$site/pycri_containerd_api.pth"
