"""containerd's shim processes, found by their command line (``/proc/<pid>/cmdline``).

A shim (``containerd-shim-runc-v2 -namespace k8s.io -id <id> -address <socket>``) is
started by containerd for a task's create. When containerd dies in the middle of that
create, the shim may already run while containerd never recorded the task: the next
containerd finds no shim address for it, cleans the task's bundle and forgets it, and the
shim lives on, known to nobody. Nothing in containerd's API reaches such a shim, so the
undo of a half-made object (``service/undo.py``) and ``pycri gc`` find it here, by the
object's ID and pycri's containerd socket, and kill it.

Blocking (reads /proc): callers on the event loop use ``asyncio.to_thread``.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

PROC = Path("/proc")


def _argument(argv: list[str], flag: str) -> str:
    try:
        return argv[argv.index(flag) + 1]
    except (ValueError, IndexError):
        return ""


def shims(address: str, *, proc: Path = PROC) -> dict[int, str]:
    """pid → shim ID (``-id``) of every shim serving the containerd at ``address``."""
    found: dict[int, str] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if not argv or not os.path.basename(argv[0]).startswith("containerd-shim"):
            continue
        if _argument(argv, "-address") == address:
            found[int(entry.name)] = _argument(argv, "-id")
    return found


def kill_shims(address: str, shim_id: str, *, proc: Path = PROC) -> list[int]:
    """SIGKILL the shims of ``address`` whose ID is ``shim_id``; the pids signalled."""
    killed = []
    for pid, found_id in shims(address, proc=proc).items():
        if found_id != shim_id:
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        killed.append(pid)
    return killed
