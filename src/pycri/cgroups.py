"""cgroup paths of pods and containers (cgroupfs driver), and reading their counters.

Each container's cgroup is ``<pod cgroup parent>/<container id>``; pods without a parent
(crictl) go under ``/pycri``. The paths are derived, not stored, so exit handling and stats
find them from the metadata alone. Reading a counter is a small file read on cgroupfs:
callers on the event loop run it in a thread.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_PARENT = "/pycri"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroups_path(cgroup_parent: str, object_id: str) -> str:
    """The cgroup (relative to each hierarchy's root) of a pod's pause or app container."""
    parent = cgroup_parent or DEFAULT_PARENT
    if not parent.startswith("/"):
        parent = "/" + parent
    return f"{parent.rstrip('/')}/{object_id}"


def is_v2() -> bool:
    return (CGROUP_ROOT / "cgroup.controllers").exists()


def oom_kill_count(path: str) -> int:
    """How many OOM kills the kernel made in this cgroup (0 when unknown)."""
    rel = path.lstrip("/")
    files = (
        [CGROUP_ROOT / rel / "memory.events"]
        if is_v2()
        else [CGROUP_ROOT / "memory" / rel / "memory.oom_control"]
    )
    for f in files:
        try:
            for line in f.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            continue
    return 0
